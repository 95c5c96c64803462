"""OpenAI error shapes and statuses (404 unknown model, 400 naming the parameter, 503
queue full) and cancellation of generations whose client disconnects."""

import threading
import time

import httpx
import openai
import pytest

PROMPT = "The quick brown fox"


def body(err):
    return err.value.body


def test_unknown_model_404(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    assert body(err)["code"] == "model_not_found" and body(err)["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


@pytest.mark.parametrize("field,value", [
    ("temperature", 5.0), ("n", 0), ("logprobs", 30), ("top_p", 0.0),
    ("presence_penalty", 3.0), ("max_tokens", -1),
])
def test_bad_parameter_400_names_it(client, field, value):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="ensemble", prompt="x", **{field: value})
    assert body(err)["param"] == field
    assert body(err)["type"] == "invalid_request_error" and field in body(err)["message"]


def test_model_specific_400s(client):
    cases = [
        (dict(model="preprocessing", prompt="x"), "model"),  # not a text model
        (dict(model="oai_script", prompt="x", extra_body={"top_k": 5}), "top_k"),
        (dict(model="oai_script", prompt="x", logprobs=1), "logprobs"),
        (dict(model="ensemble", prompt="x", suffix="y"), "suffix"),
        (dict(model="ensemble", prompt="word " * 300), "prompt"),  # over the context
        (dict(model="ensemble", prompt="x", max_tokens=1000), "max_tokens"),
        (dict(model="ensemble", prompt="x", stop=[""]), "stop"),
        (dict(model="ensemble", prompt=[10**6]), "prompt"),
    ]
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(**kwargs)
        assert body(err)["param"] == param, (kwargs, body(err))


def test_invalid_json_and_shape(oai):
    r = httpx.post(f"{oai.base_url}/completions", content=b"{not json")
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.post(f"{oai.base_url}/chat/completions", json={"model": "ensemble"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_queue_full_503(oai):
    results = []

    def call():
        r = httpx.post(f"{oai.base_url}/completions", timeout=30,
                       json={"model": "oai_slow", "prompt": "x", "max_tokens": 4})
        results.append((r.status_code, r.json()))

    threads = [threading.Thread(target=call) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(s for s, _ in results)
    assert statuses[0] == 200 and statuses[-1] == 503
    rejected = next(doc for s, doc in results if s == 503)
    assert "queue" in rejected["error"]["message"]


def _generated(oai):
    labels = {"model": "tensorrt_llm", "version": "1"}
    return oai.server.metrics_registry.get_sample_value("nv_llm_generated_tokens_total",
                                                        labels) or 0


def test_disconnected_stream_cancels_generation(oai):
    executor = oai.executor()
    before = _generated(oai)
    payload = {"model": "ensemble", "prompt": PROMPT, "max_tokens": 200, "stream": True,
               "ignore_eos": True, "temperature": 0}
    with httpx.stream("POST", f"{oai.base_url}/completions", json=payload, timeout=30) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        seen = [next(lines) for _ in range(3)]
    assert any(line.startswith("data: {") for line in seen)
    deadline = time.monotonic() + 10
    while executor.get_kv_cache_stats().used_num_blocks and time.monotonic() < deadline:
        time.sleep(0.02)
    assert executor.get_kv_cache_stats().used_num_blocks == 0  # request gone, blocks freed
    time.sleep(0.2)
    assert 0 < _generated(oai) - before < 200


def test_disconnected_non_streaming_call_cancels(oai):
    # oai_slow takes 100 ms a piece and has one instance: it stays busy for 3 s unless the
    # abandoned request is cancelled
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{oai.base_url}/completions", timeout=0.3,
                   json={"model": "oai_slow", "prompt": "x", "max_tokens": 30})
    start = time.monotonic()
    r = httpx.post(f"{oai.base_url}/completions", timeout=30,
                   json={"model": "oai_slow", "prompt": "x", "max_tokens": 1})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "Hello"
    assert time.monotonic() - start < 1.5
