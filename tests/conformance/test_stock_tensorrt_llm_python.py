"""tensorrtllm_backend's stock model set with its Python-backend tensorrt_llm model
(`triton_backend:python`: the stock tensorrt_llm/1/model.py, unchanged, on llmserve's
tensorrt_llm stand-in), filled with the stock fill_template.py and served over real
sockets: the ensemble and the stock BLS through HTTP generate / generate_stream,
tritonclient gRPC streaming and the openai client give transformers' greedy text; stop
and bad words, log probs, num_return_sequences, beam search, a dropped stream and
concurrent requests.

Streamed text is compared with the tokens decoded one response at a time: the stock
postprocessing decodes each response on its own (TensorRT-LLM's behaviour), and the tiny
random model emits bytes that only make whole characters together.
"""

from __future__ import annotations

import concurrent.futures
import json
import queue
import re
import sys
import time

import httpx
import numpy as np
import pytest
import torch
import tritonclient.grpc as tg
import tritonclient.http as th
from llm_fixtures import EOS_ID
from stock_python_repo import StockPythonServer, grpc_text_inputs
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

PROMPT = "The quick brown fox"
BEAM_PROMPT = "The server answers"  # its two beams differ as text
TEXT_MODELS = ["ensemble", "tensorrt_llm_bls"]


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    server = StockPythonServer(tmp_path_factory.mktemp("stock_python"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def http(stock):
    with httpx.Client(base_url=f"http://{stock.live.http_url}", timeout=120) as client:
        yield client


def generate(http, model: str, body: dict) -> dict:
    r = http.post(f"/v2/models/{model}/generate", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def generate_stream(http, model: str, body: dict) -> list[dict]:
    r = http.post(f"/v2/models/{model}/generate_stream", json=dict(body, stream=True))
    assert r.status_code == 200, r.text
    events = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
    assert all("error" not in e for e in events), events
    return events


def streamed(events: list[dict]) -> str:
    return "".join(e["text_output"] for e in events if "text_output" in e)


def per_token(stock, ids: list[int]) -> str:
    return "".join(stock.text([t]) for t in ids)


# -- the stock file runs on the stand-in ----------------------------------------------------
def test_stock_model_py_runs_on_the_stand_in(stock):
    from conformance_paths import stock_model_set

    served = stock.repo / "tensorrt_llm" / "1" / "model.py"
    assert served.read_bytes() == (stock_model_set() / "tensorrt_llm/1/model.py").read_bytes()
    config = stock.live.server.models.resolve("tensorrt_llm").config
    assert config.backend == "python"
    model = stock.model_object()
    assert type(model).__module__.startswith("_llmserve_model_tensorrt_llm")
    trtllm = type(model).initialize.__globals__["trtllm"]
    assert trtllm.__name__ == "llmserve.compat.tensorrt_llm.bindings.executor"
    assert "tensorrt_llm" not in sys.modules  # served to that model only
    assert model.awaiter_thread.is_alive() and model.cancellation_thread.is_alive()
    # what the stand-in cannot honour was said at load
    assert any("cuda_graph_mode=True" in w for w in model.executor.warnings)


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_stock_metrics_loop_reads_the_stats(stock, http):
    """The stock model's metrics thread sets its gauges from the executor's iteration
    stats: every attribute it reads exists (a missing one would leave a gauge at 0)."""
    generate(http, "ensemble", {"text_input": PROMPT, "max_tokens": 4})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = httpx.get(stock.live.metrics_url).text
        if (metric(text, "nv_trt_llm_general_metrics", general_type="iteration_counter") or 0) > 0:
            break
        time.sleep(0.2)
    common = {"model": "tensorrt_llm", "version": "1"}
    kv = stock.model_object().executor.inner.get_kv_cache_stats()
    assert metric(text, "nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="max",
                  **common) == kv.max_num_blocks
    assert metric(text, "nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="tokens_per",
                  **common) == kv.tokens_per_block
    memory = [metric(text, "nv_trt_llm_runtime_memory_metrics", memory_type=kind, **common)
              for kind in ("cpu", "gpu")]
    assert sum(memory) > 0  # the engine's tensors: on the host, or on its GPU
    assert metric(text, "nv_trt_llm_request_metrics", request_type="max", **common) > 0
    assert metric(text, "nv_trt_llm_general_metrics", general_type="timestamp", **common) > 1e9
    assert metric(text, "nv_llm_input_token_len_count", **common) >= 1


def test_non_decoupled_model_answers_from_its_awaiter_thread(stock):
    """decoupled_mode false: execute returns None and the model's own thread sends the one
    response later (Triton's response sender in default mode). normalize_log_probs is
    passed to the executor."""
    ids = stock.tokenizer.encode(PROMPT)
    values = {"input_ids": np.array([ids], np.int32),
              "input_lengths": np.array([[len(ids)]], np.int32),
              "request_output_len": np.array([[8]], np.int32),
              "end_id": np.array([[EOS_ID]], np.int32)}
    client = th.InferenceServerClient(stock.live.http_url)
    try:
        result = client.infer("nd_tensorrt_llm", http_inputs(values))
        assert result.as_numpy("output_ids").reshape(-1).tolist() == stock.greedy_ids(ids, 8)
        # normalize_log_probs true (TensorRT-LLM's own default): log probs within the kept
        # set, which for a greedy token is the token alone
        values["return_log_probs"] = np.array([[True]])
        result = client.infer("nd_tensorrt_llm", http_inputs(values))
        assert result.as_numpy("output_log_probs").reshape(-1).tolist() == [0.0] * 8
        del values["return_log_probs"]
        values["streaming"] = np.array([[True]])
        with pytest.raises(InferenceServerException, match="only supported in decoupled mode"):
            client.infer("nd_tensorrt_llm", http_inputs(values))
    finally:
        client.close()


def http_inputs(values: dict[str, np.ndarray]) -> list:
    inputs = []
    for name, value in values.items():
        tensor = th.InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype))
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    return inputs


# -- greedy text ----------------------------------------------------------------------------
@pytest.mark.parametrize("model", TEXT_MODELS)
def test_http_generate_and_stream_equal_transformers(stock, http, model):
    ids = stock.greedy_ids(stock.tokenizer.encode(PROMPT), 12)
    out = generate(http, model, {"text_input": PROMPT, "max_tokens": 12})
    assert out["text_output"] == stock.text(ids)
    events = generate_stream(http, model, {"text_input": PROMPT, "max_tokens": 12})
    assert len([e for e in events if e.get("text_output")]) > 1  # really streamed
    assert streamed(events) == per_token(stock, ids)


def grpc_inputs(prompt: str, max_tokens: int, stream: bool, **extra) -> list:
    return grpc_text_inputs(prompt, max_tokens, stream=np.array([[stream]]),
                            **{k: np.asarray(v) for k, v in extra.items()})


def grpc_stream(stock, model: str, requests: dict[str, list]) -> dict[str, list]:
    """ModelStreamInfer: every request on one stream; per request id its responses."""
    q: queue.Queue = queue.Queue()
    client = tg.InferenceServerClient(stock.live.grpc_url)
    client.start_stream(callback=lambda result, error: q.put((result, error)))
    got: dict[str, list] = {rid: [] for rid in requests}
    pending = set(requests)
    try:
        for rid, inputs in requests.items():
            client.async_stream_infer(model, inputs, request_id=rid,
                                      enable_empty_final_response=True)
        while pending:
            result, error = q.get(timeout=60)
            assert error is None, error
            response = result.get_response()
            if result.as_numpy("text_output") is not None:
                got[response.id].append(result)
            if response.parameters["triton_final_response"].bool_param:
                pending.discard(response.id)
    finally:
        client.stop_stream()
        client.close()
    return got


def texts_of(results: list) -> list[str]:
    return [x.decode("utf-8", "replace") for r in results
            for x in r.as_numpy("text_output").reshape(-1)]


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_grpc_model_stream_infer(stock, model):
    prompts = {"a": PROMPT, "b": "Hello world"}
    want = {rid: stock.greedy_ids(stock.tokenizer.encode(p), 10) for rid, p in prompts.items()}
    got = grpc_stream(stock, model, {f"{rid}-s": grpc_inputs(p, 10, True)
                                     for rid, p in prompts.items()})
    for rid in prompts:
        assert len(got[f"{rid}-s"]) > 1
        assert "".join(texts_of(got[f"{rid}-s"])) == per_token(stock, want[rid])
    got = grpc_stream(stock, model, {rid: grpc_inputs(p, 10, False) for rid, p in prompts.items()})
    assert {rid: texts_of(rs) for rid, rs in got.items()} == {
        rid: [stock.text(ids)] for rid, ids in want.items()}


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_openai_completions_and_chat(stock, model):
    from openai import OpenAI

    client = OpenAI(base_url=f"http://{stock.live.http_url}/v1", api_key="unused")
    ids = stock.greedy_ids(stock.tokenizer.encode(PROMPT), 10)
    r = client.completions.create(model=model, prompt=PROMPT, max_tokens=10, temperature=0)
    assert r.choices[0].text == stock.text(ids)
    chunks = client.completions.create(model=model, prompt=PROMPT, max_tokens=10,
                                       temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == per_token(stock, ids)

    messages = [{"role": "user", "content": "Hello world"}]
    # the template's text, tokenized by the stock preprocessing
    rendered = stock.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                   tokenize=False)
    want = stock.greedy_ids(stock.tokenizer.encode(rendered), 10)
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=10,
                                       temperature=0)
    assert r.choices[0].message.content == stock.text(want)
    chunks = client.chat.completions.create(model=model, messages=messages, max_tokens=10,
                                            temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == per_token(stock, want)


# -- stop words, bad words, log probs -------------------------------------------------------
def clean_word(stock, token: int) -> str | None:
    """The text of `token` when it is printable ASCII that encodes back to just [token]."""
    word = stock.text([token])
    if not (word.strip() and word.isascii() and word.isprintable()) or any(c in word for c in ',"'):
        return None
    return word if stock.tokenizer.encode(word, add_special_tokens=False) == [token] else None


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_stop_words(stock, http, model):
    gen = stock.greedy_ids(stock.tokenizer.encode(PROMPT), 16)
    i, stop = next((i, w) for i, t in enumerate(gen[1:], 1)
                   if (w := clean_word(stock, t)) and w not in stock.text(gen[:i]))
    body = {"text_input": PROMPT, "max_tokens": 16, "stop_words": [stop]}
    assert generate(http, model, body)["text_output"] == stock.text(gen[: i + 1])
    assert streamed(generate_stream(http, model, body)) == per_token(stock, gen[: i + 1])


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_bad_words(stock, http, model):
    ids = stock.tokenizer.encode(PROMPT)
    gen = stock.greedy_ids(ids, 10)
    bad = next(t for t in gen if clean_word(stock, t))
    want = stock.greedy_ids(ids, 10, banned=(bad,))
    assert want != gen
    body = {"text_input": PROMPT, "max_tokens": 10, "bad_words": [clean_word(stock, bad)]}
    assert generate(http, model, body)["text_output"] == stock.text(want)
    assert streamed(generate_stream(http, model, body)) == per_token(stock, want)


def test_embedding_bias(stock, http):
    """The stock preprocessing's bias covers the tokenizer's 300 ids; the stand-in pads it
    to the model's 320. A large negative weight on a generated word bans it."""
    ids = stock.tokenizer.encode(PROMPT)
    gen = stock.greedy_ids(ids, 10)
    bad = next(t for t in gen if clean_word(stock, t))
    want = stock.greedy_ids(ids, 10, banned=(bad,))
    assert want != gen
    body = {"text_input": PROMPT, "max_tokens": 10,
            "embedding_bias_words": [clean_word(stock, bad)], "embedding_bias_weights": [-1e4]}
    assert generate(http, "ensemble", body)["text_output"] == stock.text(want)


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_return_log_probs(stock, http, model):
    ids = stock.tokenizer.encode(PROMPT)
    gen = stock.greedy_ids(ids, 8)
    want = stock.log_probs(ids, gen)
    body = {"text_input": PROMPT, "max_tokens": 8, "return_log_probs": True}
    out = generate(http, model, body)
    got = np.asarray(out["output_log_probs"], np.float64).reshape(-1)
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=1e-3)
    assert float(np.asarray(out["cum_log_probs"]).reshape(-1)[0]) == pytest.approx(sum(want), abs=1e-2)
    events = generate_stream(http, model, body)
    per_step = [v for e in events if "output_log_probs" in e
                for v in np.asarray(e["output_log_probs"], np.float64).reshape(-1)]
    np.testing.assert_allclose(per_step, want, atol=2e-3, rtol=1e-3)  # one per new token
    assert "output_log_probs" not in generate(http, model, {"text_input": PROMPT, "max_tokens": 4})


# -- several sequences ----------------------------------------------------------------------
def test_num_return_sequences(stock):
    """Each sequence comes as its own responses, told apart by sequence_index."""
    ids = stock.greedy_ids(stock.tokenizer.encode(PROMPT), 8)
    n = np.array([[2]], np.int32)
    got = grpc_stream(stock, "ensemble", {"g": grpc_inputs(PROMPT, 8, False, num_return_sequences=n)})
    by_index = {int(r.as_numpy("sequence_index").reshape(-1)[0]): texts_of([r]) for r in got["g"]}
    assert by_index == {0: [stock.text(ids)], 1: [stock.text(ids)]}  # greedy: both the same

    sampled = dict(num_return_sequences=np.array([[3]], np.int32), top_k=np.array([[50]], np.int32),
                   temperature=np.array([[1.0]], np.float32), seed=np.array([[7]], np.uint64))
    got = grpc_stream(stock, "ensemble", {"s": grpc_inputs(PROMPT, 8, False, **sampled)})
    texts = {int(r.as_numpy("sequence_index").reshape(-1)[0]): texts_of([r])[0] for r in got["s"]}
    assert sorted(texts) == [0, 1, 2] and len(set(texts.values())) > 1


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_beam_width_2_equals_transformers_beam_search(stock, http, model):
    """The stock model passes num_return_sequences 1 when the request has none, and
    TensorRT-LLM then returns the best beam only; asked for 2, both beams (through the
    ensemble: the stock BLS does not forward num_return_sequences)."""
    ids = stock.tokenizer.encode(BEAM_PROMPT)
    with torch.inference_mode():
        out = stock.hf.generate(
            torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            num_beams=2, num_return_sequences=2, do_sample=False, max_new_tokens=8,
            eos_token_id=EOS_ID, pad_token_id=stock.tokenizer.pad_token_id, length_penalty=0.0,
            early_stopping=True)
    want = []
    for row in out[:, len(ids):].tolist():
        want.append(stock.text(row[: row.index(EOS_ID)] if EOS_ID in row else row))
    assert want[0] != want[1]
    body = {"text_input": BEAM_PROMPT, "max_tokens": 8, "beam_width": 2}
    assert generate(http, model, body)["text_output"] == want[0]
    body["num_return_sequences"] = 2
    assert generate(http, model, body)["text_output"] == (want if model == "ensemble" else want[0])


# -- cancellation and load ------------------------------------------------------------------
def output_tokens_observed(stock) -> float:
    """The stock model's nv_llm_output_token_len histogram sum: tokens of finished requests."""
    text = httpx.get(stock.live.metrics_url).text
    match = re.search(r'^nv_llm_output_token_len_sum\{[^}]*model="tensorrt_llm"[^}]*\} (\S+)$',
                      text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_dropped_stream_is_cancelled_and_the_next_request_is_correct(stock, http):
    model = stock.model_object()
    executor = model.executor.inner
    before = output_tokens_observed(stock)
    body = {"text_input": PROMPT, "max_tokens": 480, "stream": True, "end_id": -1}
    with httpx.Client(base_url=http.base_url, timeout=60) as client:
        with client.stream("POST", "/v2/models/ensemble/generate_stream", json=body) as r:
            seen = 0
            for line in r.iter_lines():
                seen += line.startswith("data:")
                if seen >= 3:
                    break
    deadline = time.monotonic() + 30  # the model polls cancellation every 20 ms here
    while (model.req_id_to_request_data or executor.get_kv_cache_stats().used_num_blocks) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not model.req_id_to_request_data, "the dropped request still runs"
    assert executor.get_kv_cache_stats().used_num_blocks == 0
    assert 3 <= output_tokens_observed(stock) - before < 480  # it ended early: cancelled
    assert model.awaiter_thread.is_alive()
    ids = stock.greedy_ids(stock.tokenizer.encode("Hello world"), 8)
    assert generate(http, "ensemble", {"text_input": "Hello world", "max_tokens": 8})[
        "text_output"] == stock.text(ids)


def test_8_concurrent_requests_each_correct(stock, http):
    prompts = [f"{PROMPT} {i}" for i in range(8)]
    want = [stock.text(stock.greedy_ids(stock.tokenizer.encode(p), 6)) for p in prompts]

    def one(i: int) -> str:
        model = TEXT_MODELS[i % 2]
        return generate(http, model, {"text_input": prompts[i], "max_tokens": 6})["text_output"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(8))) == want


# -- LoRA -----------------------------------------------------------------------------------
def test_lora_adapter_sent_then_cached(stock, tmp_path):
    """Weights with the first request, the task id alone with the next (the executor's
    LoRA cache): both equal transformers with the adapter merged by PEFT."""
    from lora_fixtures import lora_tensors, make_peft_adapter, merged_model
    from safetensors.torch import load_file, save_file

    folder = make_peft_adapter(stock.ckpt, tmp_path / "adapter", seed=5, r=4, alpha=8)
    path = folder / "adapter_model.safetensors"  # exact in float16, the ensemble's dtype
    save_file({k: v.half().float() for k, v in load_file(str(path)).items()}, str(path))
    weights, config = lora_tensors(folder, "float16")
    merged = merged_model(stock.ckpt, folder)
    ids, want = stock.tokenizer.encode(PROMPT), []
    with torch.inference_mode():
        for _ in range(8):
            token = int(merged(torch.tensor([ids + want])).logits[0, -1].argmax())
            want.append(token)
            if token == EOS_ID:
                break
    assert want != stock.greedy_ids(ids, 8)
    task = np.array([[31]], np.uint64)
    first = grpc_inputs(PROMPT, 8, True, lora_task_id=task, lora_weights=weights[None],
                        lora_config=config[None])
    again = grpc_inputs(PROMPT, 8, False, lora_task_id=task)
    got = grpc_stream(stock, "ensemble", {"first": first})
    assert "".join(texts_of(got["first"])) == per_token(stock, want)
    got = grpc_stream(stock, "ensemble", {"again": again})
    assert texts_of(got["again"]) == [stock.text(want)]


# -- draft tokens ---------------------------------------------------------------------------
def test_draft_tokens_are_checked_and_counted(stock, http):
    """draft_input_ids straight to the stock tensorrt_llm model: right drafts are accepted,
    the output stays transformers' greedy one, and the perf metrics count them."""
    ids = stock.tokenizer.encode(PROMPT)
    gen = stock.greedy_ids(ids, 8)
    body = {"input_ids": ids, "input_lengths": len(ids), "request_output_len": 8,
            "end_id": EOS_ID, "return_perf_metrics": True}
    for drafts, accepted in ((gen[:3], 3), ([gen[0], (gen[1] + 1) % 300], 1)):
        out = generate(http, "tensorrt_llm", dict(body, draft_input_ids=drafts))
        assert out["output_ids"] == gen
        assert out["total_draft_tokens"] == len(drafts)
        assert out["total_accepted_draft_tokens"] == accepted
        assert 0 < out["arrival_time_ns"] <= out["first_token_time_ns"] <= out["last_token_time_ns"]
