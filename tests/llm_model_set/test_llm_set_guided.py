"""The model set's guided decoding: tensorrt_llm reads guided_decoding_backend,
xgrammar_tokenizer_info_path (and llmserve's guided_decoding_json_whitespace) into a
GuidedDecodingConfig and the guided_decoding_guide_type / _guide inputs into
GuidedDecodingParams; the templates declare the inputs as the newest model set does."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from model_set_helpers import MODEL_SET

from llmserve.backends.tensorrtllm import parameters as P
from llmserve.backends.tensorrtllm import request_mapping as rm
from llmserve.core.errors import InvalidArgument
from llmserve.llm import GuidedDecodingParams

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "conformance"))
from conformance_paths import stock_model_set  # noqa: E402

GUIDE_INPUTS = ("guided_decoding_guide_type", "guided_decoding_guide")


def test_backend_parameters(tmp_path):
    engine = str(tmp_path)
    s = P.read_settings({"gpt_model_path": engine, "guided_decoding_backend": "${x}"})
    g = s.executor_config.guided_decoding_config
    assert s.guided_decoding and g.tokenizer_dir == engine and not g.json_any_whitespace
    s = P.read_settings({"gpt_model_path": engine, "guided_decoding_backend": "xgrammar",
                         "tokenizer_dir": engine + "/tok",
                         "guided_decoding_json_whitespace": "any"})
    g = s.executor_config.guided_decoding_config
    assert g.tokenizer_dir == engine + "/tok" and g.json_any_whitespace and not s.warnings
    s = P.read_settings({"gpt_model_path": engine, "guided_decoding_backend": "none"})
    assert s.executor_config.guided_decoding_config is None and not s.guided_decoding
    with pytest.raises(InvalidArgument, match="xgrammar or none"):
        P.read_settings({"gpt_model_path": engine, "guided_decoding_backend": "llguidance"})
    with pytest.raises(InvalidArgument, match="compact or any"):
        P.read_settings({"gpt_model_path": engine, "guided_decoding_json_whitespace": "x"})


def test_xgrammar_tokenizer_info_path(tmp_path):
    info = {"encoded_vocab": ["a", "b", "</s>"], "tokenizer_str": "{}", "stop_token_ids": [2]}
    (tmp_path / "info.json").write_text(json.dumps(info))
    s = P.read_settings({"gpt_model_path": str(tmp_path), "guided_decoding_backend": "xgrammar",
                         "xgrammar_tokenizer_info_path": "info.json"}, model_dir=tmp_path)
    g = s.executor_config.guided_decoding_config
    assert (g.encoded_vocab, g.tokenizer_str, g.stop_token_ids) == (["a", "b", "</s>"], "{}", [2])
    with pytest.raises(InvalidArgument, match="xgrammar_tokenizer_info_path"):
        P.read_settings({"gpt_model_path": str(tmp_path),
                         "xgrammar_tokenizer_info_path": str(tmp_path / "missing.json")})


def _item(**values) -> dict[str, np.ndarray]:
    return {k: np.array([v.encode()], dtype=object) for k, v in values.items()}


def test_guide_inputs_become_guided_decoding_params():
    p = rm.guided_params(_item(guided_decoding_guide_type="json_schema",
                               guided_decoding_guide='{"type": "object"}'))
    assert p == GuidedDecodingParams(GuidedDecodingParams.GuideType.JSON_SCHEMA,
                                     '{"type": "object"}')
    assert rm.guided_params(_item(guided_decoding_guide_type="json")).guide is None
    assert rm.guided_params(_item(guided_decoding_guide_type="", guided_decoding_guide="")) is None
    with pytest.raises(InvalidArgument, match="needs 'guided_decoding_guide_type'"):
        rm.guided_params(_item(guided_decoding_guide="a+"))
    with pytest.raises(InvalidArgument, match="unknown guide type"):
        rm.guided_params(_item(guided_decoding_guide_type="xml"))


def _declared(path: Path, name: str) -> dict[str, str]:
    """data_type, dims and optional of one input of a config.pbtxt."""
    text = path.read_text()
    block = re.search(r'\{\s*name: "' + name + r'"(.*?)\}', text, re.S)
    assert block, f"{path} does not declare {name}"
    fields = dict(re.findall(r"(\w+): (\S.*)", block.group(1)))
    return {k: fields.get(k) for k in ("data_type", "dims", "optional")}


@pytest.mark.parametrize("model", ["tensorrt_llm", "ensemble", "tensorrt_llm_bls"])
def test_templates_declare_the_inputs_as_the_newest_model_set(model):
    for name in GUIDE_INPUTS:
        ours = _declared(MODEL_SET / model / "config.pbtxt", name)
        assert ours == _declared(stock_model_set() / model / "config.pbtxt", name)
    if model == "ensemble":  # and hands them to tensorrt_llm
        text = (MODEL_SET / model / "config.pbtxt").read_text()
        for name in GUIDE_INPUTS:
            assert f'key: "{name}"\n        value: "{name}"' in text
