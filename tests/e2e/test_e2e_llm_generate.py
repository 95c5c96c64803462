"""End to end over real sockets for the inflight_batcher_llm set on a tiny checkpoint:
HTTP generate / generate_stream, tritonclient gRPC streaming and tritonclient HTTP infer
(non-decoupled copies) give transformers' greedy output for ensemble and BLS; concurrency,
stop and bad words, seeded sampling, log probs and exclude_input_in_output."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest
import tritonclient.http as th
from llm_e2e_helpers import grpc_stream, grpc_text_inputs, shared_llm_e2e

PROMPT = "The quick brown fox"
TEXT_MODELS = ["ensemble", "tensorrt_llm_bls"]


@pytest.fixture(scope="module")
def llm(request, tmp_path_factory):
    return shared_llm_e2e(request.config, tmp_path_factory)


def stream_text(events: list[dict]) -> str:
    assert all("error" not in e for e in events), events
    return "".join(e["text_output"] for e in events if "text_output" in e)


# -- greedy equals transformers -------------------------------------------------------------
@pytest.mark.parametrize("model", TEXT_MODELS)
def test_http_generate_and_stream_equal_transformers(llm, model):
    want = llm.greedy_text(PROMPT, 12)
    assert llm.generate(model, {"text_input": PROMPT, "max_tokens": 12})["text_output"] == want
    events = llm.generate_stream(model, {"text_input": PROMPT, "max_tokens": 12, "stream": True})
    assert len([e for e in events if e.get("text_output")]) > 1  # really streamed
    assert stream_text(events) == want


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_grpc_stream_equals_transformers(llm, model):
    prompts = {"a": PROMPT, "b": "Hello world"}
    texts = grpc_stream(llm, model, {rid: grpc_text_inputs(p, 10) for rid, p in prompts.items()})
    assert texts == {rid: llm.greedy_text(p, 10) for rid, p in prompts.items()}


@pytest.mark.parametrize("model", ["nd_ensemble", "nd_tensorrt_llm_bls"])
def test_http_infer_non_decoupled(llm, model):
    client = th.InferenceServerClient(llm.live.http_url)
    try:
        assert not client.get_model_config(model).get("model_transaction_policy", {}).get("decoupled")
        inputs = [th.InferInput("text_input", [1, 1], "BYTES"), th.InferInput("max_tokens", [1, 1], "INT32")]
        inputs[0].set_data_from_numpy(np.array([[PROMPT.encode()]], dtype=object))
        inputs[1].set_data_from_numpy(np.array([[12]], np.int32))
        result = client.infer(model, inputs, outputs=[th.InferRequestedOutput("text_output")])
    finally:
        client.close()
    out = result.as_numpy("text_output").reshape(-1)
    assert [x.decode("utf-8", "replace") for x in out] == [llm.greedy_text(PROMPT, 12)]
    assert [o["name"] for o in result.get_response()["outputs"]] == ["text_output"]


# -- concurrency ----------------------------------------------------------------------------
def test_16_concurrent_http_requests_equal_solo(llm):
    prompts = [f"{PROMPT} {i}" for i in range(16)]
    body = lambda p: {"text_input": p, "max_tokens": 6}  # noqa: E731
    solo = [llm.generate("ensemble", body(p))["text_output"] for p in prompts]
    assert solo == [llm.greedy_text(p, 6) for p in prompts]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda p: llm.generate("ensemble", body(p))["text_output"], prompts))
    assert together == solo


def test_16_concurrent_grpc_stream_requests_equal_solo(llm):
    prompts = {f"r{i}": f"Hello world {i}" for i in range(16)}
    solo = {rid: llm.greedy_text(p, 6) for rid, p in prompts.items()}
    together = grpc_stream(llm, "tensorrt_llm_bls", {rid: grpc_text_inputs(p, 6) for rid, p in prompts.items()})
    assert together == solo


# -- stop words, bad words ------------------------------------------------------------------
def _clean_word(llm, token: int) -> str | None:
    """The text of `token` when it is printable ASCII that encodes back to just [token]."""
    word = llm.tokenizer.decode([token])
    if not (word.strip() and word.isascii() and word.isprintable()) or any(c in word for c in ',"'):
        return None
    return word if llm.tokenizer.encode(word, add_special_tokens=False) == [token] else None


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_stop_words(llm, model):
    gen = llm.greedy_ids(llm.encode(PROMPT), 16)
    full = llm.tokenizer.decode(gen, skip_special_tokens=True)
    stop = next(w for i, t in enumerate(gen[1:], 1)
                if (w := _clean_word(llm, t)) and w not in llm.tokenizer.decode(gen[:i]))
    want = full[: full.index(stop) + len(stop)]
    assert want != full
    body = {"text_input": PROMPT, "max_tokens": 16, "stop_words": [stop]}
    assert llm.generate(model, body)["text_output"] == want
    assert stream_text(llm.generate_stream(model, dict(body, stream=True))) == want


def _two_token_stop(llm, gen: list[int]) -> tuple[int, str]:
    """(i, word): the text of gen[i:i+2], both clean tokens, that encodes back to them."""
    for i in range(1, len(gen) - 1):
        a, b = _clean_word(llm, gen[i]), _clean_word(llm, gen[i + 1])
        if a and b and len(a + b) > 2 and (a + b) not in llm.tokenizer.decode(gen[:i]):
            if llm.tokenizer.encode(a + b, add_special_tokens=False) == gen[i:i + 2]:
                return i, a + b
    raise AssertionError("no two-token stop word in the greedy continuation")


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_stop_word_spanning_tokens(llm, model):
    gen = llm.greedy_ids(llm.encode(PROMPT), 30)
    full = llm.tokenizer.decode(gen, skip_special_tokens=True)
    _, stop = _two_token_stop(llm, gen)
    want = full[: full.index(stop) + len(stop)]
    body = {"text_input": PROMPT, "max_tokens": 30, "stop_words": [stop]}
    assert llm.generate(model, body)["text_output"] == want
    assert stream_text(llm.generate_stream(model, dict(body, stream=True))) == want


def test_bls_stop_string_across_a_token_boundary(llm):
    """A stop string that starts inside one token and ends in the next: the BLS checks
    text, cuts right after it and never streams past it."""
    gen = llm.greedy_ids(llm.encode(PROMPT), 30)
    full = llm.tokenizer.decode(gen, skip_special_tokens=True)
    # last character of one token + first of the next, which has more: no token boundary
    # at the stop string's end, so only a text check can find it
    stop = next(a[-1] + b[0] for i in range(1, len(gen) - 1)
                if (a := _clean_word(llm, gen[i])) and (b := _clean_word(llm, gen[i + 1]))
                and len(b) > 1 and (a[-1] + b[0]) not in llm.tokenizer.decode(gen[:i]))
    want = full[: full.index(stop) + len(stop)]
    assert want != full
    body = {"text_input": PROMPT, "max_tokens": 30, "stop_words": [stop]}
    assert llm.generate("tensorrt_llm_bls", body)["text_output"] == want
    events = llm.generate_stream("tensorrt_llm_bls", dict(body, stream=True))
    assert stream_text(events) == want


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_bad_words(llm, model):
    ids = llm.encode(PROMPT)
    gen = llm.greedy_ids(ids, 10)
    bad = next(t for t in gen if _clean_word(llm, t))
    want = llm.tokenizer.decode(llm.greedy_ids(ids, 10, banned=(bad,)), skip_special_tokens=True)
    assert want != llm.tokenizer.decode(gen, skip_special_tokens=True)
    body = {"text_input": PROMPT, "max_tokens": 10, "bad_words": [_clean_word(llm, bad)]}
    assert llm.generate(model, body)["text_output"] == want
    assert stream_text(llm.generate_stream(model, dict(body, stream=True))) == want


# -- sampling, log probs ----------------------------------------------------------------------
@pytest.mark.parametrize("model", TEXT_MODELS)
def test_seeded_sampling_reproducible(llm, model):
    def sample(seed, stream=False):
        body = {"text_input": PROMPT, "max_tokens": 12, "top_k": 50, "top_p": 0.95,
                "temperature": 1.0, "seed": seed}
        if stream:
            return stream_text(llm.generate_stream(model, dict(body, stream=True)))
        return llm.generate(model, body)["text_output"]

    first = sample(1234)
    assert sample(1234) == first
    assert sample(1234, stream=True) == first
    others = {sample(seed) for seed in (1, 2, 3)}
    assert others - {first}, "different seeds should give different samples"


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_log_probs_match_transformers(llm, model):
    ids = llm.encode(PROMPT)
    gen = llm.greedy_ids(ids, 8, stop_at_eos=False)
    want = llm.log_probs(ids, gen)
    body = {"text_input": PROMPT, "max_tokens": 8, "end_id": -1, "return_log_probs": True}
    out = llm.generate(model, body)
    got = np.asarray(out["output_log_probs"], np.float64).reshape(-1)[: len(gen)]
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=1e-3)
    assert float(np.asarray(out["cum_log_probs"]).reshape(-1)[0]) == pytest.approx(sum(want), abs=1e-2)
    events = llm.generate_stream(model, dict(body, stream=True))
    streamed = [v for e in events if "output_log_probs" in e
                for v in np.asarray(e["output_log_probs"], np.float64).reshape(-1)]
    np.testing.assert_allclose(streamed, want, atol=2e-3, rtol=1e-3)  # one per new token


# -- exclude_input_in_output ------------------------------------------------------------------
def test_exclude_input_in_output_token_ids(llm):
    ids = llm.encode(PROMPT)
    gen = llm.greedy_ids(ids, 8, stop_at_eos=False)
    body = {"input_ids": ids, "input_lengths": len(ids), "request_output_len": 8, "end_id": -1}
    out = llm.generate("tensorrt_llm", body)  # the config's default: exclude_input_in_output true
    assert out["output_ids"] == gen and out["sequence_length"] == len(gen)
    out = llm.generate("tensorrt_llm", dict(body, exclude_input_in_output=True))
    assert out["output_ids"] == gen
    out = llm.generate("tensorrt_llm", dict(body, exclude_input_in_output=False))
    assert out["output_ids"] == ids + gen and out["sequence_length"] == len(ids) + len(gen)
    events = llm.generate_stream("tensorrt_llm", dict(body, exclude_input_in_output=False, streaming=True))
    streamed = [t for e in events if "output_ids" in e for t in np.asarray(e["output_ids"]).reshape(-1)]
    assert streamed == gen  # streaming sends only new tokens


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_exclude_input_in_output_text(llm, model):
    ids = llm.encode(PROMPT)
    gen = llm.greedy_ids(ids, 8, stop_at_eos=False)
    body = {"text_input": PROMPT, "max_tokens": 8, "end_id": -1}
    excluded = llm.generate(model, dict(body, exclude_input_in_output=True))["text_output"]
    assert excluded == llm.tokenizer.decode(gen, skip_special_tokens=True)
    included = llm.generate(model, dict(body, exclude_input_in_output=False))["text_output"]
    assert included == llm.tokenizer.decode(ids + gen, skip_special_tokens=True)


# -- KV cache reuse, non-decoupled streaming error -----------------------------------------
def test_kv_cache_reuse_keeps_greedy_output(llm):
    prompt = ("Paged attention keeps keys and values in fixed-size blocks. "
              "The server answers requests over HTTP and gRPC.")  # > 2 blocks of 32 tokens
    body = {"text_input": prompt, "max_tokens": 6, "return_kv_cache_reuse_stats": True}
    first = llm.generate("ensemble", body)
    second = llm.generate("ensemble", body)
    assert second["kv_cache_reused_blocks"] > 0
    assert first["text_output"] == second["text_output"] == llm.greedy_text(prompt, 6)


@pytest.mark.parametrize("model", ["nd_ensemble", "nd_tensorrt_llm_bls"])
def test_streaming_needs_decoupled_mode(llm, model):
    for route in ("generate", "generate_stream"):
        r = llm.http.post(f"/v2/models/{model}/{route}",
                          json={"text_input": PROMPT, "max_tokens": 4, "stream": True})
        assert r.status_code == 400
        assert "Streaming is only supported if model is deployed using decoupled mode" in r.json()["error"]
