"""The prefix-aware router's keys and index without Ray: the prompt read from each API's
body (OpenAI, generate, KServe infer in JSON and binary), chained chunk hashes that agree
exactly on shared prefixes, and the longest-prefix match over replicas."""

from __future__ import annotations

import json

import numpy as np
import tritonclient.http as th

from llmserve.ray_serve.forward import ForwardedRequest
from llmserve.ray_serve.prefix import PrefixIndex, chunk_hashes, request_prompt


def _post(path: str, body: dict | bytes, headers: list | None = None) -> ForwardedRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return ForwardedRequest("POST", path, headers=headers or [], body=raw)


def test_prompt_of_each_api():
    assert request_prompt(_post("/v1/completions", {"model": "m", "prompt": "abc"})) == ("m", "abc")
    assert request_prompt(_post("/v1/completions", {"model": "m", "prompt": [[5, 6]]})) == ("m", [5, 6])
    chat = {"model": "m", "messages": [{"role": "system", "content": "S"},
                                       {"role": "user", "content": [{"type": "text", "text": "U"}]}]}
    assert request_prompt(_post("/v1/chat/completions", chat)) == ("m", "system\nS\nuser\nU\n")
    assert request_prompt(_post("/v2/models/e/generate", {"text_input": "hi"})) == ("e", "hi")
    assert request_prompt(_post("/v2/models/t/versions/1/generate_stream",
                                {"input_ids": [1, 2, 3]})) == ("t", [1, 2, 3])
    infer = {"inputs": [{"name": "text_input", "shape": [1, 1], "datatype": "BYTES",
                         "data": ["x y"]}]}
    assert request_prompt(_post("/v2/models/e/infer", infer)) == ("e", "x y")
    # not inference, or not readable: no key (the replica answers the bad body itself)
    assert request_prompt(ForwardedRequest("GET", "/v2/health/ready")) is None
    assert request_prompt(_post("/v2/models/e/generate", b"{not json")) is None


def test_prompt_of_binary_kserve_infer_as_tritonclient_sends_it():
    ids = th.InferInput("input_ids", [1, 4], "INT32")
    ids.set_data_from_numpy(np.array([[7, 8, 9, 10]], np.int32), binary_data=True)
    text = th.InferInput("text_input", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[b"hello"]], dtype=object), binary_data=True)
    for inputs, want in (([ids], [7, 8, 9, 10]), ([text, ids], "hello")):
        body, header_len = th.InferenceServerClient.generate_request_body(inputs)
        req = _post("/v2/models/m/infer", body,
                    [(b"inference-header-content-length", str(header_len).encode())])
        assert request_prompt(req) == ("m", want)


def test_chunk_hashes_agree_exactly_on_shared_prefixes():
    def hashes(prompt: str, model: str = "m") -> list[int]:
        return chunk_hashes(_post("/v1/completions", {"model": model, "prompt": prompt}), 4, 2)

    a, b = hashes("aaaabbbbcccc"), hashes("aaaabbbbdddd")
    assert len(a) == 3 and a[:2] == b[:2] and a[2] != b[2]
    assert hashes("aaaabbbbccc") == a[:2]  # only full chunks
    assert hashes("aaaa", model="other") != a[:1]  # each model has its own cache
    ids = chunk_hashes(_post("/v2/models/t/generate", {"input_ids": [1, 2, 3, 4, 5]}), 4, 2)
    assert len(ids) == 2


def test_index_finds_the_replicas_with_the_longest_prefix():
    index = PrefixIndex(capacity=100)
    index.insert([1, 2, 3], "A")
    index.insert([1, 2], "B")
    assert index.match([1, 2, 3, 4], ["A", "B"]) == ({"A"}, 3)
    assert index.match([1, 2, 9], ["A", "B"]) == ({"A", "B"}, 2)
    assert index.match([1, 2, 3], ["B"]) == ({"B"}, 2)
    assert index.match([7], ["A", "B"]) == (set(), 0)
    index.drop("A")
    assert index.match([1, 2, 3], ["A", "B"]) == ({"B"}, 2)
    small = PrefixIndex(capacity=2)
    small.insert([1, 2, 3], "A")  # the oldest chunk ages out
    assert len(small) == 2 and small.match([1, 2, 3], ["A"]) == (set(), 0)
