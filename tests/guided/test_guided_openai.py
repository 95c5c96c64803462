"""Structured output through the openai client: 50 samples at temperature 1.0 of each
guide type all validate (sync, async and streaming calls; completions and chat), a batch
mixing guided and unguided requests leaves the unguided greedy outputs as they are alone,
and malformed or conflicting requests are 400s in OpenAI's error shape."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from guided_cases import CITY, GRAMMAR, PERSON, REGEX, TAG, validate

N = 50
MESSAGES = [{"role": "user", "content": "Answer in the format asked."}]


def test_json_object_sync_chat(client):
    texts = []
    for batch in range(5):  # n=10 choices per call: ten sequences of one request
        r = client.chat.completions.create(
            model="ensemble", messages=MESSAGES, n=10, temperature=1.0, seed=batch * 10,
            max_tokens=40, response_format={"type": "json_object"})
        texts += [c.message.content for c in r.choices]
    assert len(texts) == N
    for text in texts:
        assert isinstance(json.loads(text), dict), text


def _sampled_completions(aclient, model: str, prompt: str, max_tokens: int,
                         extra_body: dict) -> list[str]:
    """N completions at temperature 1.0 (seeds 0..N-1), all at once, async client."""
    async def run():
        c = aclient()
        rs = await asyncio.gather(*(c.completions.create(
            model=model, prompt=prompt, temperature=1.0, seed=i, max_tokens=max_tokens,
            extra_body=extra_body) for i in range(N)))
        return [r.choices[0].text for r in rs]

    return asyncio.run(run())


def test_json_schema_async_completions(aclient):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON,
                                                  "strict": True}}
    for text in _sampled_completions(aclient, "ensemble", "A person:", 100,
                                     {"response_format": fmt}):
        validate("json_schema", text)


def test_regex_streamed_chat(aclient):
    async def one(c, i):
        stream = await c.chat.completions.create(
            model="ensemble", messages=MESSAGES, temperature=1.0, seed=i, max_tokens=24,
            stream=True, extra_body={"structured_outputs": {"regex": REGEX}})
        text, finish = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        return text, finish

    async def run():
        c = aclient()
        return await asyncio.gather(*(one(c, i) for i in range(N)))

    for text, finish in asyncio.run(run()):
        validate("regex", text)
        assert finish in ("stop", "length")


def test_ebnf_grammar_async_completions_bls(aclient):
    for text in _sampled_completions(aclient, "tensorrt_llm_bls", "Sum:", 24,
                                     {"guided_grammar": GRAMMAR}):
        validate("ebnf_grammar", text)


def test_structural_tag_sync_chat(client):
    fmt = dict(TAG)
    texts = []
    for batch in range(2):
        r = client.chat.completions.create(
            model="ensemble", messages=MESSAGES, n=25, temperature=1.0, seed=100 + batch,
            max_tokens=40, response_format=fmt)
        texts += [c.message.content for c in r.choices]
    assert len(texts) == N
    for text in texts:
        validate("structural_tag", text)


def test_guided_next_to_unguided_leaves_greedy_outputs_unchanged(aclient):
    prompts = ["The quick brown fox", "Hello world! This", "Paged attention keeps",
               "Once upon a time"]
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}}

    async def plain(c, prompt):
        r = await c.completions.create(model="ensemble", prompt=prompt, temperature=0,
                                       max_tokens=16)
        return r.choices[0].text

    async def run():
        c = aclient()
        alone = [await plain(c, p) for p in prompts]
        guided = [c.completions.create(model="ensemble", prompt=p, temperature=1.0, seed=i,
                                       max_tokens=30, extra_body={"response_format": fmt})
                  for i, p in enumerate(prompts * 2)]
        mixed = await asyncio.gather(*(plain(c, p) for p in prompts), *guided)
        return alone, mixed

    alone, mixed = asyncio.run(run())
    assert mixed[: len(prompts)] == alone
    for r in mixed[len(prompts):]:
        json.loads(r.choices[0].text)


@pytest.mark.parametrize("body,param,words", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "response_format.json_schema", "json_schema.schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "foo"}}}},
     None, "Unsupported type"),
    ({"structured_outputs": {"regex": "a(b"}}, None, "regex"),
    ({"guided_grammar": "root ::= x"}, None, "not defined"),
    ({"guided_json": "{not json"}, "guided_json", "not valid JSON"),
    ({"response_format": {"type": "json_object"}, "guided_regex": "a+"}, "guided_regex",
     "only one kind"),
    ({"response_format": {"type": "xml"}}, "response_format.type", "Input should be"),
])
def test_bad_structured_output_is_a_400(client, body, param, words):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="ensemble", prompt="x", max_tokens=4, extra_body=body)
    error = info.value.body
    assert info.value.status_code == 400 and words in error["message"], error
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
