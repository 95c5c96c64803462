"""LoRA through the tensorrt_llm model (tensorrtllm backend, InferenceServer.infer):
lora_task_id + lora_weights (FP16) + lora_config on first use, the task id alone later,
lora_prefetch_dir adapters, the unknown-task error, and a concurrent mixed batch."""

from __future__ import annotations

import asyncio
import shutil
import sys
import threading

import numpy as np
import pytest
import torch
from llm_fixtures import make_tiny_checkpoint
from lora_fixtures import lora_tensors, make_peft_adapter, merged_model
from model_set_helpers import MODEL_SET, REPO
from safetensors.torch import load_file, save_file

from llmserve.core.errors import ServerError
from llmserve.core.types import InferenceRequest, Tensor
from llmserve.options import ServerOptions
from llmserve.server import InferenceServer

sys.path.insert(0, str(REPO / "scripts"))
import fill_demo_repository  # noqa: E402

PROMPT = [1, 40, 77, 123, 9, 250, 31]
MAX_TOKENS = 6


def _fp16_adapter(ckpt, folder, seed: int):
    """An adapter whose weights are exact in float16 (alpha = 2r: the folded scale is 2),
    so the FP16 lora_weights input carries exactly what the merged reference uses."""
    make_peft_adapter(ckpt, folder, seed=seed, r=4, alpha=8)
    path = folder / "adapter_model.safetensors"
    save_file({k: v.half().float() for k, v in load_file(str(path)).items()}, str(path))
    return folder


def _greedy(model, ids: list[int], n: int) -> list[int]:
    ids = list(ids)
    with torch.inference_mode():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[-n:]


class LoraServer:
    def __init__(self, base):
        self.ckpt = make_tiny_checkpoint(base / "ckpt", with_tokenizer=False)
        self.adapters = {name: _fp16_adapter(self.ckpt, base / name, seed)
                         for name, seed in (("a", 5), ("b", 6))}
        prefetch = base / "prefetch" / "21"
        prefetch.mkdir(parents=True)
        w, c = lora_tensors(self.adapters["b"], "float16")
        np.save(prefetch / "model.lora_weights.npy", w[None])
        np.save(prefetch / "model.lora_config.npy", c[None])
        self.tensors_a = lora_tensors(self.adapters["a"], "float16")
        self.repo = base / "repo"
        shutil.copytree(MODEL_SET / "tensorrt_llm", self.repo / "tensorrt_llm",
                        ignore=shutil.ignore_patterns("__pycache__"))
        config = self.repo / "tensorrt_llm" / "config.pbtxt"
        values = fill_demo_repository.model_values(self.ckpt, decoupled=False)["tensorrt_llm"]
        del values["tokenizer_dir"]
        values.update({
            "max_tokens_in_paged_kv_cache": "2048", "lora_cache_max_adapter_size": "8",
            "lora_cache_host_memory_bytes": str(64 << 20),
            "lora_prefetch_dir": str(base / "prefetch"),
        })
        fill_demo_repository.fill_file(config, values)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = InferenceServer(ServerOptions(model_repositories=[self.repo]))
        self.run(self.server.start())

    def run(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    async def generate(self, task: int | None = None, with_weights: bool = False) -> list[int]:
        inputs = {"input_ids": np.array([PROMPT], np.int32),
                  "input_lengths": np.array([[len(PROMPT)]], np.int32),
                  "request_output_len": np.array([[MAX_TOKENS]], np.int32)}
        if task is not None:
            inputs["lora_task_id"] = np.array([[task]], np.uint64)
        if with_weights:
            w, c = self.tensors_a
            inputs["lora_weights"], inputs["lora_config"] = w[None], c[None]
        types = {np.dtype(np.int32): "INT32", np.dtype(np.uint64): "UINT64",
                 np.dtype(np.float16): "FP16"}
        tensors = {k: Tensor(k, types[v.dtype], v) for k, v in inputs.items()}
        out = []
        async for resp in self.server.infer(InferenceRequest("tensorrt_llm", inputs=tensors)):
            if resp.error is not None:
                raise resp.error
            ids = resp.output("output_ids")
            if ids is not None:
                out.append(ids.data.reshape(-1).tolist())
        (tokens,) = out
        return tokens[-MAX_TOKENS:]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = LoraServer(tmp_path_factory.mktemp("lora_set"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def refs(served):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(served.ckpt)).eval()
    return {"a": _greedy(merged_model(served.ckpt, served.adapters["a"]), PROMPT, MAX_TOKENS),
            "b": _greedy(merged_model(served.ckpt, served.adapters["b"]), PROMPT, MAX_TOKENS),
            None: _greedy(base, PROMPT, MAX_TOKENS)}


def test_weights_on_first_use_then_task_id_only(served, refs):
    assert served.run(served.generate(11, with_weights=True)) == refs["a"]
    assert served.run(served.generate(11)) == refs["a"]
    assert refs["a"] != refs[None]


def test_prefetched_adapter_and_unknown_task(served, refs):
    assert served.run(served.generate(21)) == refs["b"]
    with pytest.raises(ServerError, match="LoRA task 12 not found in cache. Please send LoRA"):
        served.run(served.generate(12))


def test_concurrent_mixed_adapters(served, refs):
    async def all_three():
        return await asyncio.gather(served.generate(11, with_weights=True),
                                    served.generate(21), served.generate(None))

    assert served.run(all_three()) == [refs["a"], refs["b"], refs[None]]


def test_lora_parameters_and_inputs_mapping(tmp_path):
    from llmserve.backends.tensorrtllm import parameters as P
    from llmserve.backends.tensorrtllm import request_mapping as rm
    from llmserve.core.errors import InvalidArgument

    (tmp_path / "adapters").mkdir()
    raw = {"gpt_model_path": str(tmp_path), "lora_prefetch_dir": "adapters",
           "lora_cache_max_adapter_size": "16", "lora_cache_host_memory_bytes": "1000000"}
    settings = P.read_settings(raw, model_dir=tmp_path)
    peft = settings.executor_config.lora_config
    assert peft.lora_prefetch_dir == str(tmp_path / "adapters")
    assert (peft.max_adapter_size, peft.host_cache_size, peft.optimal_adapter_size) == (
        16, 1000000, 8)
    assert settings.warnings == []
    with pytest.raises(InvalidArgument, match="lora_prefetch_dir"):
        P.read_settings({"gpt_model_path": str(tmp_path), "lora_prefetch_dir": "missing"})

    base = {"input_ids": np.array([3, 4]), "request_output_len": np.array([2])}
    weights = np.ones((2, 10), np.float16)
    config = np.array([[1, 0, 1], [2, 0, 1]], np.int32)
    request, _ = rm.build_request({**base, "lora_task_id": np.array([7], np.uint64),
                                   "lora_weights": weights, "lora_config": config},
                                  0, decoupled=False, default_exclude_input=False)
    lc = request.lora_config
    assert lc.task_id == 7 and lc.weights.shape == (2, 10) and lc.config.tolist() == [
        [1, 0, 1], [2, 0, 1]]
    request, _ = rm.build_request({**base, "lora_task_id": np.array([7], np.uint64),
                                   "lora_weights": np.zeros((0, 0), np.float16)},
                                  0, decoupled=False, default_exclude_input=False)
    assert request.lora_config.weights is None and request.lora_config.config is None
    with pytest.raises(InvalidArgument, match="need a lora_task_id"):
        rm.build_request({**base, "lora_weights": weights, "lora_config": config},
                         0, decoupled=False, default_exclude_input=False)
