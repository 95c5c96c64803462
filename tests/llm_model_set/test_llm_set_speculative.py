"""Speculative decoding through the model set behind the real HTTP/gRPC frontends: the
BLS draft-model path (use_draft_logits false and true), draft_input_ids/draft_logits on
tensorrt_llm, and a tensorrt_llm with speculative_decoding_mode prompt_lookup; greedy
output equals transformers' and the acceptance outputs come back."""

from __future__ import annotations

import asyncio
import queue
import shutil
import sys
import threading

import httpx
import numpy as np
import pytest
import torch
import tritonclient.grpc as tg
from llm_fixtures import EOS_ID, make_tiny_checkpoint
from model_set_helpers import REPO
from safetensors.torch import load_file, save_file

from llmserve.backends.tensorrtllm.parameters import read_settings
from llmserve.core.errors import InvalidArgument
from llmserve.frontends import start_frontends
from llmserve.llm.config import SpeculativeDecodingMode
from llmserve.llm.speculative import verify_drafts
from llmserve.options import ServerOptions
from llmserve.server import InferenceServer

sys.path.insert(0, str(REPO / "scripts"))
import fill_demo_repository as fill  # noqa: E402

PROMPT = "The quick brown fox"
LOOKUP_PARAMS = {"speculative_decoding_mode": "prompt_lookup", "prompt_lookup_num_tokens": "4",
                 "prompt_lookup_max_matching_ngram_size": "3",
                 "prompt_lookup_min_matching_ngram_size": "1"}


def perturbed_draft(ckpt, out, scale: float = 0.03):
    """The target with noise on lm_head: a draft that agrees often, not always."""
    shutil.copytree(ckpt, out)
    weights = load_file(str(out / "model.safetensors"))
    gen = torch.Generator().manual_seed(7)
    head = weights["lm_head.weight"]
    weights["lm_head.weight"] = head + scale * torch.randn(head.shape, generator=gen)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


class SpecServer:
    def __init__(self, base):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.ckpt = make_tiny_checkpoint(base / "ckpt")
        draft = perturbed_draft(self.ckpt, base / "draft")
        repo = fill.fill_repository(base / "repo", self.ckpt, draft_dir=draft, max_batch_size=8)
        lookup = repo / "tensorrt_llm_lookup"
        shutil.copytree(repo / "tensorrt_llm", lookup)
        config = lookup / "config.pbtxt"
        config.write_text(config.read_text().replace('name: "tensorrt_llm"',
                                                     'name: "tensorrt_llm_lookup"'))
        fill.fill_file(config, LOOKUP_PARAMS)
        inside = repo / "tensorrt_llm_inside"
        shutil.copytree(repo / "tensorrt_llm", inside)
        config = inside / "config.pbtxt"
        config.write_text(config.read_text().replace('name: "tensorrt_llm"',
                                                     'name: "tensorrt_llm_inside"'))
        fill.fill_file(config, {"speculative_decoding_mode": "draft_model",
                                "draft_model_dir": str(draft), "draft_model_num_tokens": "3"})
        options = ServerOptions(model_repositories=[repo], http_address="127.0.0.1", http_port=0,
                                grpc_address="127.0.0.1", grpc_port=0, allow_metrics=False,
                                exit_timeout_secs=5.0)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = InferenceServer(options)
        self.call(self.server.start(), 120)
        self.frontends = self.call(start_frontends(self.server, options))
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.frontends.http_port}",
                                 timeout=60)
        self.grpc_url = f"127.0.0.1:{self.frontends.grpc_port}"
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.ckpt))
        self.hf = AutoModelForCausalLM.from_pretrained(str(self.ckpt)).eval()

    def call(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.http.close()
        try:
            self.call(self.server.stop())
            self.call(self.frontends.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)

    def greedy_ids(self, ids: list[int], n: int) -> list[int]:
        ids, out = list(ids), []
        with torch.inference_mode():
            for _ in range(n):
                token = int(self.hf(torch.tensor([ids])).logits[0, -1].argmax())
                ids.append(token)
                out.append(token)
                if token == EOS_ID:
                    break
        return out

    def greedy_text(self, prompt: str, n: int) -> str:
        ids = self.greedy_ids(self.tokenizer.encode(prompt), n)
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate(self, model: str, body: dict) -> dict:
        r = self.http.post(f"/v2/models/{model}/generate", json=body)
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    s = SpecServer(tmp_path_factory.mktemp("llm_spec"))
    yield s
    s.close()


@pytest.mark.parametrize("use_logits", [False, True])
def test_bls_draft_model_http_greedy_equals_transformers(spec, use_logits):
    body = {"text_input": PROMPT, "max_tokens": 16, "num_draft_tokens": 3,
            "use_draft_logits": use_logits, "return_perf_metrics": True}
    out = spec.generate("tensorrt_llm_bls", body)
    assert out["text_output"] == spec.greedy_text(PROMPT, 16)
    drafted, accepted = out["total_draft_tokens"], out["total_accepted_draft_tokens"]
    assert drafted > 0 and 0 < accepted < drafted  # the perturbed draft is right, not always
    assert out["acceptance_rate"] == pytest.approx(accepted / drafted)


def grpc_inputs(values: dict) -> list:
    inputs = []
    for name, value in values.items():
        value = np.asarray(value)
        dtype = {"O": "BYTES", "b": "BOOL", "i": "INT32", "f": "FP32", "u": "UINT64"}[value.dtype.kind]
        tensor = tg.InferInput(name, list(value.shape), dtype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return inputs


def grpc_stream_text(spec, model: str, values: dict) -> tuple[str, list]:
    q: queue.Queue = queue.Queue()
    client = tg.InferenceServerClient(spec.grpc_url)
    client.start_stream(callback=lambda result, error: q.put((result, error)))
    text, results = "", []
    try:
        client.async_stream_infer(model, grpc_inputs(values), request_id="s1",
                                  enable_empty_final_response=True)
        while True:
            result, error = q.get(timeout=60)
            assert error is None, error
            results.append(result)
            out = result.as_numpy("text_output")
            if out is not None:
                text += "".join(t.decode() for t in out.reshape(-1))
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
    finally:
        client.stop_stream()
        client.close()
    return text, results


@pytest.mark.parametrize("use_logits", [False, True])
def test_bls_draft_model_grpc_streaming(spec, use_logits):
    values = {"text_input": np.array([[PROMPT.encode()]], dtype=object),
              "max_tokens": np.array([[12]], np.int32), "stream": np.array([[True]]),
              "num_draft_tokens": np.array([[4]], np.int32),
              "use_draft_logits": np.array([[use_logits]])}
    text, _ = grpc_stream_text(spec, "tensorrt_llm_bls", values)
    assert text == spec.greedy_text(PROMPT, 12)


@pytest.mark.parametrize("use_logits", [False, True])
def test_bls_sampled_draft_logits_reach_the_target(spec, monkeypatch, use_logits):
    import llmserve.llm.stepper as stepper

    seen = []

    def spy(*args, **kw):
        seen.append(kw.get("draft_logits") is not None)
        return verify_drafts(*args, **kw)

    monkeypatch.setattr(stepper, "verify_drafts", spy)
    body = {"text_input": PROMPT, "max_tokens": 12, "num_draft_tokens": 3,
            "use_draft_logits": use_logits, "top_k": 5, "temperature": 0.8, "seed": 11}
    first = spec.generate("tensorrt_llm_bls", body)["text_output"]
    assert first and spec.generate("tensorrt_llm_bls", body)["text_output"] == first
    assert seen and set(seen) == {use_logits}


def ids_of(out: dict) -> list[int]:
    return np.asarray(out["output_ids"]).reshape(-1).tolist()


def token_body(ids: list[int], n: int, **extra) -> dict:
    return {"input_ids": ids, "input_lengths": [len(ids)], "request_output_len": [n],
            "end_id": [EOS_ID], "return_perf_metrics": [True], **extra}


def test_tensorrt_llm_draft_inputs_over_http(spec):
    ids = spec.tokenizer.encode(PROMPT)
    want = spec.greedy_ids(ids, 10)
    vocab = spec.hf.config.vocab_size
    wrong = [(t + 1) % vocab for t in want[:4]]
    logits = np.zeros((4, vocab), np.float32)
    for drafts, accepted, with_logits in ((want[:4], 4, False), (want[:2] + wrong[2:], 2, True),
                                          (wrong, 0, False)):
        extra = {"draft_input_ids": drafts}
        if with_logits:
            extra["draft_logits"] = logits.tolist()
        out = spec.generate("tensorrt_llm", token_body(ids, 10, **extra))
        assert ids_of(out) == want
        assert (out["total_draft_tokens"], out["total_accepted_draft_tokens"]) == (4, accepted)


def test_prompt_lookup_model_equals_plain_greedy(spec):
    ids = spec.tokenizer.encode("the fox and the dog, the fox and the dog, the fox")
    want = spec.greedy_ids(ids, 24)
    out = spec.generate("tensorrt_llm_lookup", token_body(ids, 24))
    assert ids_of(out) == want
    assert out["total_draft_tokens"] > 0
    plain = spec.generate("tensorrt_llm", token_body(ids, 24))
    assert ids_of(plain) == want and plain["total_draft_tokens"] == 0


def test_draft_model_inside_the_executor_equals_plain_greedy(spec):
    ids = spec.tokenizer.encode(PROMPT)
    want = spec.greedy_ids(ids, 20)
    out = spec.generate("tensorrt_llm_inside", token_body(ids, 20))
    assert ids_of(out) == want
    assert out["total_draft_tokens"] > 0 and out["total_accepted_draft_tokens"] > 0


def test_draft_model_parameters(tmp_path):
    draft = make_tiny_checkpoint(tmp_path / "model" / "draft")
    params = {"gpt_model_path": str(tmp_path / "model"),
              "speculative_decoding_mode": "draft_model", "draft_model_dir": "draft"}
    spec_cfg = read_settings(params, model_dir=tmp_path / "model")
    spec_cfg = spec_cfg.executor_config.speculative_decoding_config
    assert spec_cfg.mode is SpeculativeDecodingMode.DRAFT_MODEL
    assert (spec_cfg.draft_model_path, spec_cfg.num_draft_tokens) == (str(draft), 4)
    with pytest.raises(InvalidArgument, match="needs parameter 'draft_model_dir'"):
        read_settings({**params, "draft_model_dir": "${draft_model_dir}"})
    with pytest.raises(InvalidArgument, match="no checkpoint in"):
        read_settings({**params, "draft_model_dir": str(tmp_path / "nowhere")})


def test_speculative_parameters(tmp_path):
    settings = read_settings({"gpt_model_path": str(tmp_path), **LOOKUP_PARAMS})
    spec_cfg = settings.executor_config.speculative_decoding_config
    assert spec_cfg.mode is SpeculativeDecodingMode.PROMPT_LOOKUP and not spec_cfg.fast_logits
    lookup = spec_cfg.prompt_lookup
    assert (lookup.max_draft_tokens, lookup.max_matching_ngram_size,
            lookup.min_matching_ngram_size) == (4, 3, 1)
    unset = read_settings({"gpt_model_path": str(tmp_path),
                           "speculative_decoding_mode": "${speculative_decoding_mode}"})
    assert unset.executor_config.speculative_decoding_config is None
    with pytest.raises(InvalidArgument, match="speculative_decoding_mode"):
        read_settings({"gpt_model_path": str(tmp_path), "speculative_decoding_mode": "medusa"})
    with pytest.raises(InvalidArgument, match="n-gram sizes"):
        read_settings({"gpt_model_path": str(tmp_path), **LOOKUP_PARAMS,
                       "prompt_lookup_min_matching_ngram_size": "5"})
