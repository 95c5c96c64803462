"""/v1/completions with the openai client (sync and async, streaming and not) on the
model set over a tiny checkpoint: greedy equals transformers, real usage counts, n,
echo, token-id prompts, stop strings, logprobs in OpenAI's shape."""

import asyncio
import math

import pytest

PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def prompt_ids(hf):
    return hf[0].encode(PROMPT)


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_greedy_equals_transformers(client, greedy, prompt_ids, model):
    text, ids = greedy(prompt_ids, 12)
    r = client.completions.create(model=model, prompt=PROMPT, max_tokens=12, temperature=0)
    assert r.object == "text_completion" and len(r.choices) == 1
    assert r.choices[0].text == text
    assert r.choices[0].finish_reason == ("length" if len(ids) == 12 else "stop")
    assert r.usage.prompt_tokens == len(prompt_ids)
    assert r.usage.completion_tokens == len(ids)
    assert r.usage.total_tokens == len(prompt_ids) + len(ids)


def test_streaming_matches_and_usage_chunk_only_at_end(client, greedy, prompt_ids):
    text, ids = greedy(prompt_ids, 10)
    chunks = list(client.completions.create(
        model="ensemble", prompt=PROMPT, max_tokens=10, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert len([c for c in chunks if c.choices and c.choices[0].text]) > 2  # really streamed
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(ids)
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in chunks[:-2])
    plain = list(client.completions.create(model="ensemble", prompt=PROMPT, max_tokens=4,
                                           temperature=0, stream=True))
    assert all(c.usage is None and c.choices for c in plain)


def test_default_max_tokens_is_context_left(client, prompt_ids):
    r = client.completions.create(model="ensemble", prompt=PROMPT, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 256 - len(prompt_ids)
    assert r.choices[0].finish_reason == "length"


def test_list_and_token_prompts_n_and_echo(client, greedy, prompt_ids):
    text, _ = greedy(prompt_ids, 6)
    other = "Hello world"
    r = client.completions.create(model="ensemble", prompt=[PROMPT, other], max_tokens=6,
                                  temperature=0, n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text == text
    assert r.choices[2].text == r.choices[3].text
    by_ids = client.completions.create(model="ensemble", prompt=prompt_ids, max_tokens=6,
                                       temperature=0, echo=True)
    assert by_ids.choices[0].text == PROMPT + text
    assert by_ids.usage.prompt_tokens == len(prompt_ids)


def test_sampling_n_with_seed_is_reproducible(client):
    kw = dict(model="ensemble", prompt=PROMPT, max_tokens=8, temperature=1.0, n=3, seed=7)
    a = [c.text for c in client.completions.create(**kw).choices]
    b = [c.text for c in client.completions.create(**kw).choices]
    assert a == b
    assert len(set(a)) > 1  # distinct seeds per choice


def test_stop_string_across_responses_never_emitted(client):
    # oai_script streams "Hello", " wor", "ld", "!", ... : "world" spans two responses
    for stream in (False, True):
        r = client.completions.create(model="oai_script", prompt="x", max_tokens=8,
                                      stop=["world", "zzz"], stream=stream)
        chunks = list(r) if stream else [r]
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        assert text == "Hello "
        assert chunks[-1].choices[0].finish_reason == "stop"
    r = client.completions.create(model="oai_script", prompt="x", max_tokens=3, stop="!")
    assert r.choices[0].text == "Hello world" and r.choices[0].finish_reason == "length"


def test_stop_on_real_model_truncates_greedy_text(client, greedy, prompt_ids):
    text, _ = greedy(prompt_ids, 16)
    stop = next(text[i:i + 2] for i in range(2, len(text) - 2) if text[i:i + 2].strip())
    want = text[: text.index(stop)]
    for model in ("ensemble", "tensorrt_llm_bls"):
        r = client.completions.create(model=model, prompt=PROMPT, max_tokens=16,
                                      temperature=0, stop=[stop])
        assert r.choices[0].text == want and r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_stop_string_with_a_comma_is_one_word_for_the_model_set(client, hf, greedy, prompt_ids,
                                                                model):
    """A `stop` string reaches the model set as one word, commas and all (as the stock
    preprocessing and BLS take it): "zz,<a generated word>" never occurs, so nothing stops."""
    tok = hf[0]
    text, ids = greedy(prompt_ids, 16)
    word = next(w for k, t in enumerate(ids[1:], 1)
                if (w := tok.decode([t])).strip() and w.isascii() and w.isprintable()
                and "," not in w and tok.encode(w, add_special_tokens=False) == [t]
                and w not in tok.decode(ids[:k]))
    for stream in (False, True):
        r = client.completions.create(model=model, prompt=PROMPT, max_tokens=16, temperature=0,
                                      stop=[f"zz,{word}"], stream=stream)
        chunks = list(r) if stream else [r]
        assert "".join(c.choices[0].text for c in chunks if c.choices) == text


def test_logprobs_shape_and_values(client, hf, prompt_ids):
    import torch

    tok, model = hf
    r = client.completions.create(model="ensemble", prompt=PROMPT, max_tokens=5,
                                  temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(5)]
    ids = tok.encode(PROMPT)
    for i in range(5):
        with torch.inference_mode():
            logits = model(torch.tensor([ids])).logits[0, -1]
        ref = torch.log_softmax(logits.float(), -1)
        nxt = int(ref.argmax())
        assert math.isclose(lp.token_logprobs[i], float(ref[nxt]), abs_tol=1e-3)
        top = lp.top_logprobs[i]
        # the 3 most likely, plus the chosen token's own entry (as vLLM) when its text differs
        assert len(top) in (3, 4)
        assert math.isclose(max(top.values()), lp.token_logprobs[i], abs_tol=1e-3)
        assert all(any(math.isclose(float(v), x, abs_tol=1e-3) for x in top.values())
                   for v in ref.topk(3).values[:2])  # (the 3rd may share a text with another)
        ids.append(nxt)


def test_echo_logprobs_scores_prompt(client, prompt_ids):
    r = client.completions.create(model="ensemble", prompt=PROMPT, max_tokens=0, echo=True,
                                  logprobs=1, temperature=0)
    c = r.choices[0]
    assert c.text == PROMPT
    assert len(c.logprobs.tokens) == len(prompt_ids)
    assert c.logprobs.token_logprobs[0] is None and c.logprobs.top_logprobs[0] is None
    assert all(v < 0 for v in c.logprobs.token_logprobs[1:])


def test_best_of_picks_n(client):
    r = client.completions.create(model="ensemble", prompt=PROMPT, max_tokens=4,
                                  temperature=1.0, n=1, best_of=3, seed=1)
    assert len(r.choices) == 1 and r.choices[0].logprobs is None


def test_async_client_concurrent_and_streaming(aclient, greedy, prompt_ids):
    text, _ = greedy(prompt_ids, 8)

    async def main():
        client = aclient()
        many = await asyncio.gather(*(client.completions.create(
            model="tensorrt_llm_bls", prompt=PROMPT, max_tokens=8, temperature=0)
            for _ in range(4)))
        stream = await client.completions.create(model="ensemble", prompt=PROMPT,
                                                  max_tokens=8, temperature=0, stream=True)
        parts = [c.choices[0].text async for c in stream]
        return [m.choices[0].text for m in many], "".join(parts)

    many, streamed = asyncio.run(main())
    assert many == [text] * 4 and streamed == text


def test_logit_bias_forces_a_token(client, hf):
    tok = hf[0]
    token = tok.encode(" fox", add_special_tokens=False)[-1]
    r = client.completions.create(model="ensemble", prompt=PROMPT, max_tokens=4,
                                  temperature=0, logit_bias={str(token): 100})
    assert r.choices[0].text == tok.decode([token] * 4)
