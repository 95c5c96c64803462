"""/v1/chat/completions with the openai client: chat template prompts, greedy equal to
transformers, streaming deltas (role first, finish_reason last, usage chunk), n,
logprobs / top_logprobs in OpenAI's shape, and a clear 400 without a chat template."""

import asyncio
import math

import openai
import pytest

MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello to the quick brown fox."}]


@pytest.fixture(scope="module")
def chat_ids(hf):
    ids = hf[0].apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_chat_greedy_equals_transformers(client, greedy, chat_ids, model):
    text, ids = greedy(chat_ids, 10)
    r = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=10,
                                       temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == text
    assert r.usage.prompt_tokens == len(chat_ids)
    assert r.usage.completion_tokens == len(ids)


def test_chat_stream_role_first_finish_last_usage(client, greedy, chat_ids):
    text, ids = greedy(chat_ids, 8)
    chunks = list(client.chat.completions.create(
        model="ensemble", messages=MESSAGES, max_completion_tokens=8, temperature=0,
        stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:] if c.choices)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and not any(finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(ids)
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_stream_n_indices(client):
    chunks = list(client.chat.completions.create(
        model="oai_script", messages=MESSAGES, max_tokens=4, n=2, stream=True))
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices[0].index == index]
        assert mine[0].delta.role == "assistant"
        assert "".join(c.delta.content or "" for c in mine) == "Hello world!"
        assert mine[-1].finish_reason == "length"


def test_chat_logprobs_shape(client, hf, chat_ids):
    r = client.chat.completions.create(model="ensemble", messages=MESSAGES, max_tokens=4,
                                       temperature=0, logprobs=True, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0 and item.bytes == list(item.token.encode())
        assert len(item.top_logprobs) == 2
        assert math.isclose(item.top_logprobs[0].logprob, item.logprob, abs_tol=1e-3)
    plain = client.chat.completions.create(model="ensemble", messages=MESSAGES, max_tokens=2,
                                           temperature=0)
    assert plain.choices[0].logprobs is None


def test_no_chat_template_is_400(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="oai_slow", messages=MESSAGES, max_tokens=2)
    assert "chat template" in err.value.body["message"]
    assert err.value.body["param"] == "messages"


def test_async_chat_stream(aclient, greedy, chat_ids):
    text, _ = greedy(chat_ids, 6)

    async def main():
        client = aclient()
        stream = await client.chat.completions.create(
            model="tensorrt_llm_bls", messages=MESSAGES, max_tokens=6, temperature=0,
            stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream])

    assert asyncio.run(main()) == text
