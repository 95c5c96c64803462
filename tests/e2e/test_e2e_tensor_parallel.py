"""A tensorrt_llm model served with tensor_parallel_size 2 (CPU ranks over gloo; its
executor in an engine process of its own, which starts the worker rank) answers
tritonclient with exactly the greedy tokens of the same checkpoint served whole and of
transformers; when its worker rank dies, requests fail with the reason and the model
turns UNAVAILABLE (the engine process exits), and no rank outlives the server."""

from __future__ import annotations

import time

import numpy as np
import psutil
import pytest
import torch
import tritonclient.http as th
from e2e_live import LiveServer, e2e_options
from llm_e2e_helpers import _copy_model, fill
from llm_fixtures import load_hf_model, make_tiny_checkpoint
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

TP2 = ('parameters: { key: "tensor_parallel_size" value: { string_value: "2" } }\n'
       'parameters: { key: "engine_process" value: { string_value: "true" } }\n')


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("tensor_parallel")
    ckpt = make_tiny_checkpoint(base / "ckpt", "qwen2")
    values = fill.model_values(ckpt, decoupled=False, max_batch_size=4)["tensorrt_llm"]
    values.update(max_tokens_in_paged_kv_cache="512", engine_dtype="float32",
                  exclude_input_in_output="true")
    repo = base / "repo"
    for name in ("tp1_llm", "tp2_llm"):
        _copy_model(repo, "tensorrt_llm", name, values,
                    {'name: "tensorrt_llm"': f'name: "{name}"'})
    config = repo / "tp2_llm" / "config.pbtxt"
    config.write_text(config.read_text() + TP2)
    live = LiveServer(e2e_options(model_repositories=[repo]))
    client = th.InferenceServerClient(live.http_url)
    stopped: list[bool] = []

    def stop() -> None:
        if not stopped:
            stopped.append(True)
            client.close()
            live.stop()

    yield client, stop, load_hf_model(ckpt)
    stop()


def _infer(client, model: str, ids: list[int], n: int) -> list[int]:
    values = {"input_ids": np.array([ids], np.int32),
              "input_lengths": np.array([[len(ids)]], np.int32),
              "request_output_len": np.array([[n]], np.int32)}
    inputs = []
    for name, value in values.items():
        tensor = th.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return client.infer(model, inputs).as_numpy("output_ids")[0, 0].tolist()[:n]


def _hf_greedy(model, ids: list[int], n: int) -> list[int]:
    seq = list(ids)
    with torch.inference_mode():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(ids):]


def _workers() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True)
            if "llmserve.llm.engine.tp_worker" in " ".join(p.cmdline())]


def _ids(seed: int, length: int) -> list[int]:
    return torch.randint(4, 300, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_tp2_model_serves_the_greedy_tokens_of_tp1(served):
    client, _, hf = served
    for seed, length in ((1, 6), (2, 23)):
        ids = _ids(seed, length)
        whole = _infer(client, "tp1_llm", ids, 8)
        assert _infer(client, "tp2_llm", ids, 8) == whole == _hf_greedy(hf, ids, 8)
    assert len(_workers()) == 1  # rank 1, started by the engine process


def test_a_dead_rank_fails_requests_and_the_model_turns_unavailable(served):
    client, stop, _ = served
    (worker,) = _workers()
    worker.kill()
    with pytest.raises(InferenceServerException, match="tensor-parallel rank 1 exited"):
        _infer(client, "tp2_llm", _ids(3, 5), 4)
    deadline = time.monotonic() + 60
    while client.is_model_ready("tp2_llm") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not client.is_model_ready("tp2_llm")
    assert client.is_model_ready("tp1_llm")
    assert _infer(client, "tp1_llm", _ids(3, 5), 4)  # the other model serves on
    stop()
    assert _workers() == []
