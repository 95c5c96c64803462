"""Helpers for the inflight_batcher_llm model set tests: load a model.py by path, build
a tiny tokenizer, make pb_utils requests."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
MODEL_SET = REPO / "all_models" / "inflight_batcher_llm"


def load_model_py(model: str):
    path = MODEL_SET / model / "1" / "model.py"
    spec = importlib.util.spec_from_file_location(f"llm_set_{model}_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def init_model(model: str, parameters: dict[str, str], **config):
    module = load_model_py(model)
    instance = module.TritonPythonModel()
    cfg = {"name": model, "parameters": {k: {"string_value": v} for k, v in parameters.items()}}
    cfg.update(config)
    instance.initialize({"model_config": json.dumps(cfg), "model_name": model})
    return instance


def request(pb_utils, **inputs):
    tensors = [pb_utils.Tensor(name, np.asarray(value)) for name, value in inputs.items()]
    return pb_utils.InferenceRequest(model_name="x", inputs=tensors, requested_output_names=[])


def outputs(response) -> dict[str, np.ndarray]:
    assert not response.has_error(), response.error().message()
    return {t.name(): t.as_numpy() for t in response.output_tensors()}


def metaspace_tokenizer(out_dir: Path):
    """A small SentencePiece-style (Metaspace) BPE tokenizer with byte fallback."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    bytes_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<s>", "</s>", "<unk>"] + bytes_tokens,
        show_progress=False,
    )
    tok.train_from_iterator(["hello world the quick brown fox", "world hello again"], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(str(out_dir))
    return fast


class RouterExecutor:
    """An executor stand-in for the tensorrtllm backend's dispatcher: responses come from
    self.router, which the test (or a subclass's enqueue_request) feeds."""

    vocab_size = 320

    def __init__(self) -> None:
        from llmserve.llm.responses import ResponseRouter

        self.router = ResponseRouter()

    def await_responses(self, id=None, timeout=None):  # noqa: A002
        from llmserve.llm.responses import timeout_seconds

        return self.router.await_responses(id, timeout_seconds(timeout))

    def cancel_request(self, id) -> None:  # noqa: A002
        pass

    def get_latest_iteration_stats(self) -> list:
        return []

    def shutdown(self) -> None:
        pass
