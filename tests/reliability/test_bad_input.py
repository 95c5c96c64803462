"""Regressions of issue 16's careful-user run, one request each: client errors that
answered 500 (lone surrogates, deep JSON, an oversized stop word, IMAGE, negative token
ids, an overlong model name, a NUL in a load parameter) and invalid values that answered
200 (NaN / inf / 1e308 temperature, NaN penalties, beam_width 0, an empty prompt)."""

from __future__ import annotations

import base64
import json

import pytest

S = "\ud800"  # a lone UTF-16 surrogate: json.dumps writes it as the escape "\ud800"
GEN = "/v2/models/ensemble/generate"
DEEP = "[" * 100000 + "]" * 100000
HI = {"text_input": "hi", "max_tokens": 2}
OAI = {"model": "ensemble", "prompt": "hi", "max_tokens": 2}


def _infer(*inputs: tuple[str, str, list, list]) -> str:
    return json.dumps({"inputs": [{"name": n, "datatype": d, "shape": s, "data": v}
                                  for n, d, s, v in inputs]})


SURROGATE_CASES = [
    (GEN, json.dumps({**HI, "text_input": S})),
    (GEN, json.dumps({**HI, "id": S})),
    (GEN, json.dumps({**HI, "stop_words": [S]})),
    (GEN, json.dumps({**HI, "bad_words": [S]})),
    (GEN, json.dumps({**HI, "embedding_bias_words": [S], "embedding_bias_weights": [1.0]})),
    (GEN, json.dumps({**HI, "decoder_text_input": S})),
    ("/v2/models/ensemble/generate_stream", json.dumps({**HI, "text_input": S})),
    ("/v1/completions", json.dumps({**OAI, "stop": S})),
    ("/v1/completions", json.dumps({**OAI, "model": S})),
    ("/v1/completions", json.dumps({**OAI, "prompt": S})),
    ("/v1/chat/completions", json.dumps({"model": "ensemble", "max_tokens": 2,
                                         "messages": [{"role": "user", "content": S}]})),
    ("/v2/models/preprocessing/infer", _infer(("QUERY", "BYTES", [1, 1], [S]),
                                              ("REQUEST_OUTPUT_LEN", "INT32", [1, 1], [2]))),
    ("/v1/completions", DEEP),
    ("/v1/chat/completions", DEEP),
    (GEN, DEEP),
]


@pytest.mark.parametrize("path,body", SURROGATE_CASES)
def test_malformed_text_is_a_client_error(llm, path, body):
    with llm.client() as c:
        r = c.post(path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        assert "error" in r.json()
        # the same keep-alive connection still serves
        assert c.get("/v2/health/live").status_code == 200


def test_stop_word_of_200_kib_is_not_a_server_error(llm):
    with llm.client() as c:
        r = c.post(GEN, json={**HI, "stop_words": ["x" * 204800]})
    assert r.status_code < 500, r.text


def test_image_input_is_unsupported(llm):
    body = _infer(("QUERY", "BYTES", [1, 1], ["hi"]),
                  ("REQUEST_OUTPUT_LEN", "INT32", [1, 1], [2]),
                  ("IMAGE", "UINT8", [1, 1, 1, 1, 1], [0]))
    with llm.client() as c:
        r = c.post("/v2/models/preprocessing/infer", content=body)
    assert r.status_code == 501, r.text
    assert "IMAGE" in r.json()["error"]


@pytest.mark.parametrize("tokens,lengths", [([-5, 3], [2]), ([3, 4], [7]), ([3, 4], [-1])])
def test_bad_token_ids_to_postprocessing(llm, tokens, lengths):
    body = _infer(("TOKENS_BATCH", "INT32", [1, 1, 2], tokens),
                  ("SEQUENCE_LENGTH", "INT32", [1, 1], lengths))
    with llm.client() as c:
        r = c.post("/v2/models/postprocessing/infer", content=body)
    assert r.status_code == 400, r.text


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("field,value", [
    ("temperature", NAN), ("temperature", INF), ("temperature", 1e308), ("temperature", -INF),
    ("repetition_penalty", NAN), ("presence_penalty", NAN), ("frequency_penalty", NAN),
    ("length_penalty", NAN), ("top_p", NAN), ("beam_width", 0),
])
def test_invalid_sampling_value_is_refused_by_name(llm, field, value):
    body = json.dumps({**HI, field: value})
    with llm.client() as c:
        r = c.post(GEN, content=body)
    assert r.status_code == 400, r.text
    assert field.split("_penalty")[0] in r.json()["error"], r.text


@pytest.mark.parametrize("field,value", [("temperature", NAN), ("presence_penalty", NAN),
                                         ("frequency_penalty", INF), ("top_p", NAN)])
def test_openai_refuses_non_finite_values(llm, field, value):
    body = json.dumps({**OAI, field: value})
    with llm.client() as c:
        r = c.post("/v1/completions", content=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field


def test_empty_prompt_is_refused(llm):
    with llm.client() as c:
        r = c.post(GEN, json={"text_input": "", "max_tokens": 2})
    assert r.status_code == 400, r.text
    assert "text_input" in r.json()["error"]


def test_overlong_model_name_and_nul_in_load_parameter(llm):
    with llm.client() as c:
        r = c.post(f"/v2/repository/models/{'m' * 5000}/load")
        assert r.status_code == 400, r.text
        files = {"config": json.dumps({"backend": "python"}),
                 "file:1/mo\x00del.py": base64.b64encode(b"x = 1").decode()}
        r = c.post("/v2/repository/models/nul_model/load", json={"parameters": files})
        assert r.status_code == 400, r.text
        r = c.post("/v2/repository/models/nul_model/load",
                   json={"parameters": {"config": '{"backend": "python\\u0000"}'}})
        assert r.status_code == 400, r.text
        names = {row["name"] for row in c.post("/v2/repository/index").json()}
    assert "nul_model" not in names and not any(len(n) > 255 for n in names)
