"""tensorrtllm_backend's own inflight_batcher_llm model set (commit c2e65b8), unchanged and
filled with its own fill_template.py, served by llmserve behind the real frontends: the
ensemble and the BLS answer HTTP generate / generate_stream, tritonclient gRPC streams and
the openai client with transformers' greedy text, stop and bad words, real log probs,
several sequences, beams, output lengths fitted to max_seq_len, dropped streams that free
their KV blocks, and concurrent requests."""

from __future__ import annotations

import concurrent.futures
import filecmp
import queue
import time

import numpy as np
import pytest
import tritonclient.grpc as tg
from conformance_paths import stock_model_set
from llm_e2e_helpers import grpc_stream, grpc_text_inputs
from llm_fixtures import EOS_ID
from stock_set_server import CONTEXT, MODELS, StockSet
from test_e2e_llm_beam import NEW, WIDTH, beam_texts  # noqa: F401 (a fixture on our llm)
from test_e2e_llm_generate import _clean_word, stream_text
from test_e2e_llm_lifecycle import generated_tokens, open_stream, read_events, wait_blocks_free

PROMPT = "The server answers"
TEXT_MODELS = ["ensemble", "tensorrt_llm_bls"]
EXCLUDE = {"exclude_input_in_output": True}
N = 8
LONG = CONTEXT - 32  # tokens a stream would run to if nothing stopped it


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    served = StockSet(tmp_path_factory.mktemp("stock_set"))
    yield served
    served.close()


@pytest.fixture(scope="module")
def oai(llm):
    return llm.openai()


def test_the_served_files_are_the_stock_files(llm):
    for model in MODELS:
        cmp = filecmp.dircmp(stock_model_set() / model / "1", llm.repo / model / "1",
                             ignore=["__pycache__"])
        assert not (cmp.diff_files or cmp.left_only or cmp.right_only), model
        config = (llm.repo / model / "config.pbtxt").read_text()
        assert "${triton_max_batch_size}" not in config
    trtllm = (llm.repo / "tensorrt_llm" / "config.pbtxt").read_text()
    assert 'backend: "tensorrtllm"' in trtllm and "decoupled: true" in trtllm
    assert '"${exclude_input_in_output}"' in trtllm  # left unset, as the docs fill it


# -- greedy text over every route ---------------------------------------------------------
@pytest.mark.parametrize("model", TEXT_MODELS)
def test_http_generate_and_stream_equal_transformers(llm, model):
    want = llm.greedy_text(PROMPT, N)
    body = {"text_input": PROMPT, "max_tokens": N}
    assert llm.generate(model, dict(body, **EXCLUDE))["text_output"] == want
    # the tensorrt_llm config leaves exclude_input_in_output unset: TensorRT-LLM's default
    # returns the prompt with the completion when not streaming
    assert llm.generate(model, body)["text_output"] == PROMPT + want
    events = llm.generate_stream(model, dict(body, stream=True))
    assert len([e for e in events if e.get("text_output")]) > 1
    assert stream_text(events) == want


@pytest.mark.parametrize("model", TEXT_MODELS)
@pytest.mark.parametrize("stream", [True, False])
def test_grpc_stream_infer_equals_transformers(llm, model, stream):
    prompts = {"a": PROMPT, "b": "Hello world"}
    extra = {"stream": np.array([[stream]]), "exclude_input_in_output": np.array([[True]])}
    texts = grpc_stream(llm, model, {rid: grpc_text_inputs(p, N, **extra)
                                     for rid, p in prompts.items()})
    assert texts == {rid: llm.greedy_text(p, N) for rid, p in prompts.items()}


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_openai_completions_are_the_completion_alone(llm, oai, model):
    """The OpenAI layer sets the ensemble's exclude_input_in_output: no echoed prompt,
    and only completion tokens counted."""
    ids = llm.encode(PROMPT)
    want = llm.greedy_text(PROMPT, N)
    r = oai.completions.create(model=model, prompt=PROMPT, max_tokens=N, temperature=0)
    assert r.choices[0].text == want and r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), N)
    chunks = list(oai.completions.create(model=model, prompt=PROMPT, max_tokens=N,
                                         temperature=0, stream=True,
                                         stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want
    assert chunks[-1].usage.completion_tokens == N
    echoed = oai.completions.create(model=model, prompt=PROMPT, max_tokens=N, temperature=0,
                                    echo=True)
    assert echoed.choices[0].text == PROMPT + want


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_openai_chat_is_the_reply_alone(llm, oai, model):
    messages = [{"role": "user", "content": PROMPT}]
    ids = llm.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    want = llm.tokenizer.decode(llm.greedy_ids(ids, N), skip_special_tokens=True)
    r = oai.chat.completions.create(model=model, messages=messages, max_tokens=N, temperature=0)
    assert r.choices[0].message.content == want
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), N)
    chunks = list(oai.chat.completions.create(model=model, messages=messages, max_tokens=N,
                                              temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want


# -- stop words, bad words ------------------------------------------------------------------
def _stop_word(llm, gen: list[int]) -> str:
    return next(w for i, t in enumerate(gen[1:], 1)
                if (w := _clean_word(llm, t)) and w not in llm.tokenizer.decode(gen[:i]))


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_stop_words(llm, oai, model):
    gen = llm.greedy_ids(llm.encode(PROMPT), 16)
    full = llm.tokenizer.decode(gen, skip_special_tokens=True)
    stop = _stop_word(llm, gen)
    cut = full.index(stop)
    body = {"text_input": PROMPT, "max_tokens": 16, "stop_words": [stop], **EXCLUDE}
    assert llm.generate(model, body)["text_output"] == full[: cut + len(stop)]
    assert stream_text(llm.generate_stream(model, dict(body, stream=True))) == full[: cut + len(stop)]
    r = oai.completions.create(model=model, prompt=PROMPT, max_tokens=16, temperature=0,
                               stop=[stop])
    assert r.choices[0].text == full[:cut] and r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_openai_stop_string_with_a_comma_is_one_stop_string(llm, oai, model):
    """Each `stop` string reaches the model as one word (no CSV split): "zz,<word>" never
    occurs, so generation runs to max_tokens; a comma-holding string that does occur
    stops it."""
    gen = llm.greedy_ids(llm.encode(PROMPT), 16)
    full = llm.tokenizer.decode(gen, skip_special_tokens=True)
    word = _stop_word(llm, gen)
    for stream in (False, True):
        r = oai.completions.create(model=model, prompt=PROMPT, max_tokens=16, temperature=0,
                                   stop=[f"zz,{word}"], stream=stream)
        chunks = list(r) if stream else [r]
        assert "".join(c.choices[0].text for c in chunks if c.choices) == full
        assert chunks[-1].choices[0].finish_reason == "length"
    prompt = next(p for p in ("Hello world", "Hello world! This is", "Once upon a time")
                  if "," in llm.greedy_text(p, 16)[1:])
    text = llm.greedy_text(prompt, 16)
    at = text.index(",", 1)
    r = oai.completions.create(model=model, prompt=prompt, max_tokens=16, temperature=0,
                               stop=[text[at - 1: at + 2]])
    assert r.choices[0].text == text[: at - 1] and r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_bad_words(llm, model):
    ids = llm.encode(PROMPT)
    gen = llm.greedy_ids(ids, N)
    bad = next(t for t in gen if _clean_word(llm, t))
    want = llm.tokenizer.decode(llm.greedy_ids(ids, N, banned=(bad,)), skip_special_tokens=True)
    assert want != llm.tokenizer.decode(gen, skip_special_tokens=True)
    body = {"text_input": PROMPT, "max_tokens": N, "bad_words": [_clean_word(llm, bad)], **EXCLUDE}
    assert llm.generate(model, body)["text_output"] == want
    assert stream_text(llm.generate_stream(model, dict(body, stream=True))) == want


# -- log probs ------------------------------------------------------------------------------
@pytest.mark.parametrize("model", TEXT_MODELS)
def test_log_probs_are_transformers(llm, oai, model):
    ids = llm.encode(PROMPT)
    gen = llm.greedy_ids(ids, N, stop_at_eos=False)
    want = llm.log_probs(ids, gen)
    assert all(v < -1e-3 for v in want)
    body = {"text_input": PROMPT, "max_tokens": N, "end_id": -1, "return_log_probs": True}
    out = llm.generate(model, body)
    np.testing.assert_allclose(np.asarray(out["output_log_probs"]).reshape(-1), want, atol=2e-3)
    assert out["cum_log_probs"] == pytest.approx(sum(want), abs=1e-2)
    events = llm.generate_stream(model, dict(body, stream=True))
    streamed = [v for e in events for v in np.asarray(e["output_log_probs"]).reshape(-1)]
    np.testing.assert_allclose(streamed, want, atol=2e-3)
    r = oai.completions.create(model=model, prompt=PROMPT, max_tokens=N, temperature=0,
                               logprobs=1, extra_body={"ignore_eos": True})
    np.testing.assert_allclose(r.choices[0].logprobs.token_logprobs, want, atol=2e-3)
    r = oai.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}],
                                    max_tokens=N, temperature=0, logprobs=True)
    assert all(e.logprob < -1e-3 for e in r.choices[0].logprobs.content)


# -- several sequences, beams -----------------------------------------------------------------
def test_ensemble_num_return_sequences(llm):
    events = llm.generate_stream("ensemble", {"text_input": PROMPT, "max_tokens": N,
                                              "num_return_sequences": 2, "stream": True})
    texts = {0: "", 1: ""}
    for e in events:
        texts[e["sequence_index"]] += e["text_output"]
    assert texts == {0: llm.greedy_text(PROMPT, N), 1: llm.greedy_text(PROMPT, N)}


def test_bls_passes_no_num_return_sequences_on(llm):
    """The stock BLS declares num_return_sequences but never forwards it to tensorrt_llm
    (its TritonDecoder.input_names lack it): one sequence comes back, as on Triton."""
    events = llm.generate_stream("tensorrt_llm_bls", {"text_input": PROMPT, "max_tokens": N,
                                                      "num_return_sequences": 2, "stream": True})
    assert {e["sequence_index"] for e in events} == {0}
    assert stream_text(events) == llm.greedy_text(PROMPT, N)


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_openai_n_choices(llm, oai, model):
    r = oai.completions.create(model=model, prompt=PROMPT, max_tokens=N, temperature=0, n=2)
    assert [c.text for c in r.choices] == [llm.greedy_text(PROMPT, N)] * 2
    assert r.usage.completion_tokens == 2 * N


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_beam_search_equals_transformers(llm, beam_texts, model):  # noqa: F811
    body = {"text_input": "The quick brown fox", "max_tokens": NEW, "beam_width": WIDTH,
            "end_id": EOS_ID, **EXCLUDE}
    assert llm.generate(model, body)["text_output"] == beam_texts


# -- output length fitted to max_seq_len ------------------------------------------------------
def _long_prompt(llm, tokens: int) -> str:
    sentence = "The server answers requests over HTTP and gRPC. "
    text = sentence * (tokens // len(llm.encode(sentence)) + 1)
    while len(llm.encode(text)) > tokens:
        text = text[:-1]
    return text


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_output_length_lowered_to_fit_max_seq_len(llm, model):
    """As TensorRT-LLM: prompt + max_tokens over max_seq_len generates max_seq_len -
    prompt tokens (a warning, not an error); only a prompt alone too long fails."""
    prompt = _long_prompt(llm, CONTEXT - 10)
    ids = llm.encode(prompt)
    body = {"text_input": prompt, "max_tokens": 64, "end_id": -1, "return_log_probs": True,
            **EXCLUDE}
    out = llm.generate(model, body)
    assert len(out["output_log_probs"]) == CONTEXT - len(ids)
    gen = llm.greedy_ids(ids, CONTEXT - len(ids), stop_at_eos=False)
    assert out["text_output"] == llm.tokenizer.decode(gen, skip_special_tokens=True)
    too_long = _long_prompt(llm, CONTEXT + 20)
    r = llm.http.post(f"/v2/models/{model}/generate", json={"text_input": too_long, "max_tokens": 4})
    assert r.status_code in (400, 500) and "exceeds maximum input length" in r.json()["error"]


# -- dropped streams, concurrency -------------------------------------------------------------
def _drop_http(llm, model: str, executor) -> None:
    body = {"text_input": PROMPT, "max_tokens": LONG, "end_id": -1, "stream": True}
    with open_stream(llm, model, body) as s:
        read_events(s, 2)
        assert executor.get_kv_cache_stats().used_num_blocks > 0  # still generating


def _drop_grpc(llm, model: str, executor) -> None:
    q: queue.Queue = queue.Queue()
    client = tg.InferenceServerClient(llm.live.grpc_url)
    client.start_stream(callback=lambda result, error: q.put((result, error)))
    try:
        client.async_stream_infer(model, grpc_text_inputs(
            PROMPT, LONG, end_id=np.array([[-1]], np.int32)))
        for _ in range(2):
            assert q.get(timeout=30)[1] is None
        assert executor.get_kv_cache_stats().used_num_blocks > 0
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()


def _drop_openai(llm, model: str, executor) -> None:
    stream = llm.openai().completions.create(model=model, prompt=PROMPT, max_tokens=LONG,
                                             stream=True, extra_body={"ignore_eos": True})
    next(stream), next(stream)
    assert executor.get_kv_cache_stats().used_num_blocks > 0
    stream.close()


@pytest.mark.parametrize("model", TEXT_MODELS)
@pytest.mark.parametrize("drop", [_drop_http, _drop_grpc, _drop_openai],
                         ids=["http", "grpc", "openai"])
def test_dropped_stream_frees_kv_blocks_then_serves(llm, model, drop):
    executor = llm.executor()
    total = executor.get_kv_cache_stats().free_num_blocks
    before = generated_tokens(llm)
    drop(llm, model, executor)
    stats = wait_blocks_free(executor, total)
    assert (stats.used_num_blocks, stats.free_num_blocks) == (0, total)
    time.sleep(0.3)  # the metrics thread catches up
    assert 0 < generated_tokens(llm) - before < LONG - 50  # cancelled, not run to the end
    assert llm.generate(model, {"text_input": PROMPT, "max_tokens": N, **EXCLUDE})["text_output"] \
        == llm.greedy_text(PROMPT, N)


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_8_concurrent_requests_each_correct(llm, model):
    # texts without NUL: the stock postprocessing makes np.array(bytes), whose fixed-width
    # dtype drops a streamed piece's trailing b"\0" (on Triton too)
    wants = {p: w for i in range(32)
             if "\0" not in (w := llm.greedy_text(p := f"{PROMPT} {i}", 6))}
    prompts = list(wants)[:8]

    def one(i: int) -> str:
        body = {"text_input": prompts[i], "max_tokens": 6, **EXCLUDE}
        if i % 2:
            return stream_text(llm.generate_stream(model, dict(body, stream=True)))
        return llm.generate(model, body)["text_output"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(one, range(8)))
    assert got == [wants[p] for p in prompts]

