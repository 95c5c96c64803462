"""LoRA through the whole inflight_batcher_llm set over real sockets: ensemble and
tensorrt_llm_bls with tritonclient HTTP and gRPC (streaming), the generate endpoint,
weights sent on first use then the task id alone, a prefetched adapter, and the unknown
task error. Every output equals transformers with the adapter merged by PEFT."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import tritonclient.grpc as tg
import tritonclient.http as th
from e2e_live import LiveServer, e2e_options
from llm_e2e_helpers import ROOT, grpc_stream, grpc_text_inputs
from llm_fixtures import EOS_ID, make_tiny_checkpoint
from lora_fixtures import lora_tensors, make_peft_adapter, merged_model
from safetensors.torch import load_file, save_file
from tritonclient.utils import InferenceServerException

sys.path.insert(0, str(ROOT / "scripts"))
import fill_demo_repository as fill  # noqa: E402

PROMPT = "The quick brown fox"
MAX_TOKENS = 8
TASK_SENT, TASK_PREFETCHED = 11, 21


def _fp16_exact_adapter(ckpt, folder, seed: int):
    """An adapter whose A/B are exact in float16, so the FP16 lora_weights input carries
    exactly the weights the merged reference uses."""
    make_peft_adapter(ckpt, folder, seed=seed, r=4, alpha=8)
    path = folder / "adapter_model.safetensors"
    save_file({k: v.half().float() for k, v in load_file(str(path)).items()}, str(path))
    return folder


class LoraE2E:
    def __init__(self, base):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.ckpt = make_tiny_checkpoint(base / "ckpt", max_position_embeddings=1024)
        sent = _fp16_exact_adapter(self.ckpt, base / "adapter_sent", seed=5)
        prefetched = _fp16_exact_adapter(self.ckpt, base / "adapter_prefetched", seed=6)
        folder = base / "prefetch" / str(TASK_PREFETCHED)
        folder.mkdir(parents=True)
        w, c = lora_tensors(prefetched, "float16")
        np.save(folder / "model.lora_weights.npy", w[None])
        np.save(folder / "model.lora_config.npy", c[None])
        self.weights, self.config = lora_tensors(sent, "float16")
        lora = {"lora_cache_max_adapter_size": "8",
                "lora_cache_host_memory_bytes": str(64 << 20),
                "lora_prefetch_dir": str(base / "prefetch")}
        # decoupled_mode false: tritonclient's HTTP and unary gRPC infer take the models
        repo = fill.fill_repository(base / "repo", self.ckpt, max_batch_size=8,
                                    decoupled=False, extra={"tensorrt_llm": lora})
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.ckpt))
        self.models = {
            None: AutoModelForCausalLM.from_pretrained(str(self.ckpt)).eval(),
            TASK_SENT: merged_model(self.ckpt, sent),
            TASK_PREFETCHED: merged_model(self.ckpt, prefetched),
        }
        self.live = LiveServer(e2e_options(model_repositories=[repo]))

    def expected(self, task: int | None) -> str:
        """transformers greedy text (stopping after eos, as the executor does)."""
        ids, out = self.tokenizer.encode(PROMPT), []
        with torch.inference_mode():
            for _ in range(MAX_TOKENS):
                token = int(self.models[task](torch.tensor([ids])).logits[0, -1].argmax())
                ids.append(token)
                out.append(token)
                if token == EOS_ID:
                    break
        return self.tokenizer.decode(out, skip_special_tokens=True)

    def close(self) -> None:
        self.live.stop()


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    server = LoraE2E(tmp_path_factory.mktemp("lora_e2e"))
    yield server
    server.close()


def _http_infer(lora, model: str, task: int | None, with_weights: bool) -> str:
    values = {"text_input": np.array([[PROMPT.encode()]], dtype=object),
              "max_tokens": np.array([[MAX_TOKENS]], np.int32)}
    if task is not None:
        values["lora_task_id"] = np.array([[task]], np.uint64)
    if with_weights:
        values["lora_weights"], values["lora_config"] = lora.weights[None], lora.config[None]
    client = th.InferenceServerClient(lora.live.http_url)
    try:
        inputs = []
        for name, value in values.items():
            tensor = th.InferInput(name, list(value.shape),
                                   {"O": "BYTES", "i": "INT32", "u": "UINT64",
                                    "f": "FP16"}[value.dtype.kind])
            tensor.set_data_from_numpy(value, binary_data=True)
            inputs.append(tensor)
        result = client.infer(model, inputs)
    finally:
        client.close()
    return "".join(x.decode() for x in result.as_numpy("text_output").reshape(-1))


def test_references_differ(lora):
    texts = {task: lora.expected(task) for task in (None, TASK_SENT, TASK_PREFETCHED)}
    assert len(set(texts.values())) == 3, texts


def test_ensemble_http_weights_on_first_use_then_task_id(lora):
    want = lora.expected(TASK_SENT)
    assert _http_infer(lora, "ensemble", TASK_SENT, with_weights=True) == want
    assert _http_infer(lora, "ensemble", TASK_SENT, with_weights=False) == want
    assert _http_infer(lora, "ensemble", None, with_weights=False) == lora.expected(None)


def test_bls_grpc_stream_mixed_adapters_in_one_batch(lora):
    one = np.array([[False]])  # one response per request on the bidirectional stream
    requests = {
        "base": grpc_text_inputs(PROMPT, MAX_TOKENS, stream=one),
        "sent": grpc_text_inputs(PROMPT, MAX_TOKENS, stream=one,
                                 lora_task_id=np.array([[TASK_SENT]], np.uint64),
                                 lora_weights=lora.weights[None],
                                 lora_config=lora.config[None]),
        "prefetched": grpc_text_inputs(PROMPT, MAX_TOKENS, stream=one,
                                       lora_task_id=np.array([[TASK_PREFETCHED]], np.uint64)),
    }
    texts = grpc_stream(lora, "tensorrt_llm_bls", requests)
    assert texts == {"base": lora.expected(None), "sent": lora.expected(TASK_SENT),
                     "prefetched": lora.expected(TASK_PREFETCHED)}


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_generate_endpoint_with_task_id(lora, model):
    import httpx

    body = {"text_input": PROMPT, "max_tokens": MAX_TOKENS, "lora_task_id": TASK_PREFETCHED}
    r = httpx.post(f"http://{lora.live.http_url}/v2/models/{model}/generate", json=body,
                   timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["text_output"] == lora.expected(TASK_PREFETCHED)


def test_unknown_task_is_a_clear_error_over_http_and_grpc(lora):
    message = "LoRA task 99 not found in cache. Please send LoRA weights with request"
    with pytest.raises(InferenceServerException, match=message):
        _http_infer(lora, "ensemble", 99, with_weights=False)
    client = tg.InferenceServerClient(lora.live.grpc_url)
    try:
        inputs = grpc_text_inputs(PROMPT, MAX_TOKENS, stream=np.array([[False]]),
                                  lora_task_id=np.array([[99]], np.uint64))
        with pytest.raises(InferenceServerException, match=message) as err:
            client.infer("tensorrt_llm_bls", inputs)
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    finally:
        client.close()


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_openai_completions_with_lora_task_id(lora, model):
    import openai

    client = openai.OpenAI(base_url=f"http://{lora.live.http_url}/v1", api_key="unused")
    try:
        out = client.completions.create(model=model, prompt=PROMPT, max_tokens=MAX_TOKENS,
                                        temperature=0,
                                        extra_body={"lora_task_id": TASK_PREFETCHED})
        assert out.choices[0].text == lora.expected(TASK_PREFETCHED)
        plain = client.completions.create(model=model, prompt=PROMPT, max_tokens=MAX_TOKENS,
                                          temperature=0)
        assert plain.choices[0].text == lora.expected(None)
        with pytest.raises(openai.BadRequestError, match="LoRA task 99 not found"):
            client.completions.create(model=model, prompt=PROMPT, max_tokens=MAX_TOKENS,
                                      extra_body={"lora_task_id": 99})
    finally:
        client.close()
