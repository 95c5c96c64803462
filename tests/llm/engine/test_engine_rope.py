"""Rope frequencies equal transformers' ROPE_INIT_FUNCTIONS for every supported type,
and the cos/sin table grows past its first size with the same values."""

from __future__ import annotations

import json

import pytest
import torch
from llm_fixtures import tiny_hf_config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from llmserve.core.errors import Unsupported
from llmserve.llm.engine import load_arch_config
from llmserve.llm.engine.rope import RopeTable, cos_sin, inv_freq_for

CASES = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 3.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    },
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
    "yarn_mscale": {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 32,
        "mscale": 0.707,
        "mscale_all_dim": 1.0,
        "beta_fast": 16,
    },
}


def _arch(tmp_path, rope_scaling):
    config = tiny_hf_config("llama", rope_scaling=rope_scaling, max_position_embeddings=128)
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    return config, load_arch_config(tmp_path)


@pytest.mark.parametrize("case", list(CASES))
def test_inv_freq_matches_transformers(tmp_path, case):
    config, arch = _arch(tmp_path, CASES[case])
    rope_type = arch.rope_parameters["rope_type"]
    for seq_len in (None, 300):
        ours, our_scale = inv_freq_for(arch, seq_len)
        if rope_type == "default":
            theirs = 1.0 / (10000.0 ** (torch.arange(0, 16, 2).float() / 16))
            their_scale = 1.0
        else:
            theirs, their_scale = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu", seq_len=seq_len)
        torch.testing.assert_close(ours, theirs.float(), rtol=1e-6, atol=0)
        assert our_scale == pytest.approx(their_scale)


def test_table_grows_with_identical_rows(tmp_path):
    _config, arch = _arch(tmp_path, CASES["llama3"])
    table = RopeTable(arch, torch.float32, "cpu")
    first = table.cos.shape[0]
    table.ensure(first * 3 + 1)
    assert table.cos.shape[0] >= first * 3 + 1
    cos, sin = cos_sin(table.inv_freq, table.scaling, torch.arange(table.cos.shape[0]))
    assert torch.equal(table.cos, cos) and torch.equal(table.sin, sin)


def test_unknown_rope_type_is_rejected(tmp_path):
    _config, arch = _arch(tmp_path, None)
    arch.rope_parameters = {"rope_type": "longrope"}
    with pytest.raises(Unsupported, match="longrope"):
        inv_freq_for(arch)
