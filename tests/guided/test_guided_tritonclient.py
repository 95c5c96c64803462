"""Guided decoding through tritonclient over real sockets: the model set's
guided_decoding_guide_type / guided_decoding_guide inputs on the ensemble (gRPC
streaming: 50 samples at temperature 1.0 per guide type, all valid), the BLS (HTTP
generate) and tensorrt_llm itself (gRPC); a malformed guide is INVALID_ARGUMENT."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as tg
from guided_cases import MODEL_SET_GUIDES, validate
from llm_e2e_helpers import grpc_stream, grpc_text_inputs
from tritonclient.utils import InferenceServerException

N = 50
MAX_TOKENS = {"json": 40, "json_schema": 100, "regex": 24, "ebnf_grammar": 24,
              "structural_tag": 40}


def _guide_inputs(kind: str) -> dict[str, np.ndarray]:
    guide_type, guide = MODEL_SET_GUIDES[kind]
    return {"guided_decoding_guide_type": np.array([[guide_type.encode()]], dtype=object),
            "guided_decoding_guide": np.array([[guide.encode()]], dtype=object)}


@pytest.mark.parametrize("kind", list(MODEL_SET_GUIDES))
def test_ensemble_grpc_stream_samples_validate(guided, kind):
    requests = {
        f"{kind}-{i}": grpc_text_inputs(
            "Write it:", MAX_TOKENS[kind], temperature=np.array([[1.0]], np.float32),
            top_p=np.array([[1.0]], np.float32), seed=np.array([[i]], np.uint64),
            **_guide_inputs(kind))
        for i in range(N)}
    texts = grpc_stream(guided, "ensemble", requests, timeout=120)
    assert len(texts) == N
    for text in texts.values():
        validate(kind, text)


def test_bls_http_generate(guided):
    import httpx

    guide_type, guide = MODEL_SET_GUIDES["json_schema"]
    body = {"text_input": "A person:", "max_tokens": 100, "temperature": 1.0, "top_p": 1.0,
            "seed": 7, "guided_decoding_guide_type": guide_type, "guided_decoding_guide": guide}
    r = httpx.post(f"http://{guided.live.http_url}/v2/models/tensorrt_llm_bls/generate",
                   json=body, timeout=60)
    assert r.status_code == 200, r.text
    validate("json_schema", r.json()["text_output"])


def test_tensorrt_llm_direct_grpc(guided):
    """input_ids in, output_ids out: the tokens decode to a valid document."""
    ids = guided.tokenizer.encode("Numbers:")
    values = {"input_ids": np.array([ids], np.int32),
              "input_lengths": np.array([[len(ids)]], np.int32),
              "request_output_len": np.array([[24]], np.int32),
              "end_id": np.array([[guided.tokenizer.eos_token_id]], np.int32),
              **_guide_inputs("ebnf_grammar")}
    client = tg.InferenceServerClient(guided.live.grpc_url)
    inputs = []
    for name, value in values.items():
        t = tg.InferInput(name, list(value.shape), "BYTES" if value.dtype == object else "INT32")
        t.set_data_from_numpy(value)
        inputs.append(t)
    got = []
    client.start_stream(callback=lambda result, error: got.append((result, error)))
    try:
        client.async_stream_infer("tensorrt_llm", inputs, enable_empty_final_response=True)
        import time

        deadline = time.monotonic() + 60
        while not any(r is not None and r.get_response().parameters[
                "triton_final_response"].bool_param for r, _ in got):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        client.stop_stream()
        client.close()
    assert all(e is None for _, e in got), got
    out = [r.as_numpy("output_ids") for r, _ in got if r.as_numpy("output_ids") is not None]
    tokens = [int(t) for o in out for t in o.reshape(-1)]
    validate("ebnf_grammar", guided.tokenizer.decode(tokens, skip_special_tokens=True))


@pytest.mark.parametrize("guide_type,guide,words", [
    ("json_schema", '{"type": "foo"}', "Unsupported type"),
    ("regex", "a(b", "regex"),
    ("yaml", "x", "unknown guide type"),
    ("", "a+", "needs 'guided_decoding_guide_type'"),
    ("json_schema", "", "needs a guide"),
])
def test_bad_guides_are_invalid_argument(guided, guide_type, guide, words):
    inputs = grpc_text_inputs("x", 4, guided_decoding_guide_type=np.array(
        [[guide_type.encode()]], dtype=object), guided_decoding_guide=np.array(
        [[guide.encode()]], dtype=object))
    client = tg.InferenceServerClient(guided.live.grpc_url)
    errors = []
    client.start_stream(callback=lambda result, error: errors.append(error))
    try:
        client.async_stream_infer("tensorrt_llm_bls", inputs)
        import time

        deadline = time.monotonic() + 30
        while not any(e is not None for e in errors):
            assert time.monotonic() < deadline, errors
            time.sleep(0.05)
    finally:
        client.stop_stream()
        client.close()
    error = next(e for e in errors if e is not None)
    assert isinstance(error, InferenceServerException) and words in error.message(), error
