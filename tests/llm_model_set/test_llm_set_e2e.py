"""End to end through InferenceServer.infer on a tiny checkpoint: ensemble, BLS and
tensorrt_llm give transformers' greedy output; streaming, stop words, concurrency,
cancellation and speculative decoding through the BLS."""

import asyncio
import re
import shutil
import time

import numpy as np
import pytest
from llm_set_server import ServedModelSet, text_of, text_request

PROMPT = "The quick brown fox"
# the filled BLS decodes text itself (its tokenizer_dir is set); this copy of it leaves
# tokenizer_dir unset and so decodes through the postprocessing model, as the stock BLS
BLS_VIA_POST = "bls_via_postprocessing"
BLS_MODELS = ["tensorrt_llm_bls", BLS_VIA_POST]


def _add_bls_via_postprocessing(repo):
    bls = repo / "tensorrt_llm_bls" / "config.pbtxt"  # one instance, whatever the CPU count
    bls.write_text(re.sub(r"count: \d+", "count: 1", bls.read_text(), count=1))
    copy = repo / BLS_VIA_POST
    shutil.copytree(repo / "tensorrt_llm_bls", copy)
    config = (copy / "config.pbtxt").read_text()
    config = config.replace('name: "tensorrt_llm_bls"', f'name: "{BLS_VIA_POST}"')
    config = re.sub(r'(key: "tokenizer_dir"\s*value: \{\s*string_value: )"[^"]*"',
                    r'\1"${tokenizer_dir}"', config)
    config = re.sub(r"count: \d+", "count: 2", config, count=1)
    assert "${tokenizer_dir}" in config
    (copy / "config.pbtxt").write_text(config)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = ServedModelSet(tmp_path_factory.mktemp("llmset"), prepare=_add_bls_via_postprocessing)
    yield s
    s.close()


def expected_text(served, prompt, n):
    return served.tokenizer.decode(served.greedy(prompt, n), skip_special_tokens=True)


@pytest.mark.parametrize("model", ["ensemble", *BLS_MODELS])
def test_greedy_equals_transformers(served, model):
    responses = served.infer(model, text_request(PROMPT, 12))
    assert text_of(responses) == expected_text(served, PROMPT, 12)


@pytest.mark.parametrize("model", ["ensemble", *BLS_MODELS])
def test_streaming_concatenates_to_full_text(served, model):
    responses = served.infer(model, text_request(PROMPT, 12, stream=[[True]]))
    assert len([r for r in responses if r.output("text_output") is not None]) > 1
    assert text_of(responses) == expected_text(served, PROMPT, 12)


def test_bls_decodes_itself_only_with_its_tokenizer_dir(served):
    def post_count():
        [stats] = served.server.statistics("postprocessing")["model_stats"]
        return stats["inference_stats"]["success"]["count"]

    def chunks(responses):
        return len([r for r in responses if r.output("text_output") is not None])

    before = post_count()
    assert chunks(served.infer("tensorrt_llm_bls", text_request(PROMPT, 12, stream=[[True]]))) > 1
    time.sleep(0.2)
    assert post_count() == before  # no postprocessing request at all
    n = chunks(served.infer(BLS_VIA_POST, text_request(PROMPT, 12, stream=[[True]])))
    deadline = time.monotonic() + 5  # a Python model's execution is counted after it answers
    while post_count() - before < n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert post_count() - before >= n  # at least one round trip per streamed chunk


def test_one_decoupled_bls_instance_serves_its_streams_at_once(served):
    """Our BLS streams each request on a thread of its own: with one instance, four
    streams are all under way before the first of them ends (the stock BLS would serve
    them one after another), and each is the text it has alone."""
    prompts = [f"{PROMPT} {i}" for i in range(4)]
    firsts, finals = {}, {}

    async def stream(i):
        request = served.core_request("tensorrt_llm_bls", text_request(prompts[i], 24, stream=[[True]]))
        out = []
        async for resp in served.server.infer(request):
            assert resp.error is None, resp.error
            firsts.setdefault(i, time.monotonic())
            out.append(resp)
        finals[i] = time.monotonic()
        return text_of(out)

    async def all_at_once():
        return await asyncio.gather(*(stream(i) for i in range(4)))

    texts = served.run(all_at_once())
    assert texts == [expected_text(served, p, 24) for p in prompts]
    assert max(firsts.values()) < min(finals.values())


def test_tensorrt_llm_token_ids(served):
    ids = served.tokenizer.encode(PROMPT)
    gen = served.greedy(PROMPT, 8)
    base = {"input_ids": np.array([ids], np.int32), "input_lengths": np.array([[len(ids)]], np.int32),
            "request_output_len": np.array([[8]], np.int32), "end_id": np.array([[2]], np.int32)}
    (resp,) = [r for r in served.infer("tensorrt_llm", base) if r.output("output_ids") is not None]
    assert resp.output("output_ids").data.tolist() == [[gen]]  # exclude_input_in_output=true
    with_input = dict(base, exclude_input_in_output=np.array([[False]]))
    (resp,) = [r for r in served.infer("tensorrt_llm", with_input) if r.output("output_ids") is not None]
    assert resp.output("output_ids").data.tolist() == [[ids + gen]]
    assert resp.output("sequence_length").data.tolist() == [[len(ids) + len(gen)]]


def test_end_token_first_gives_empty_text(served):
    """A request whose first generated token is its end_id ends with no tokens (a final
    of shape [1, 1, 0]): every model of the set answers an empty text, streamed or not
    (the BLS's non-streamed path once failed to reshape it: a fuzz-found 500)."""
    first = served.greedy(PROMPT, 1)[0]
    for model in ("ensemble", *BLS_MODELS):
        for stream in (False, True):
            request = text_request(PROMPT, 4, end_id=np.array([[first]], np.int32),
                                   stream=[[stream]])
            assert text_of(served.infer(model, request)) == "", (model, stream)


def test_stop_words(served):
    gen = served.greedy(PROMPT, 16)
    full = served.tokenizer.decode(gen, skip_special_tokens=True)
    stop = served.stop_word(gen)
    want = full[: full.index(stop) + len(stop)]
    assert want != full
    for model in ("ensemble", *BLS_MODELS):
        for stream in (False, True):
            request = text_request(PROMPT, 16, stop_words=np.array([[stop.encode()]], dtype=object),
                                   stream=[[stream]])
            assert text_of(served.infer(model, request)) == want, (model, stream)


def test_concurrent_requests_equal_solo(served):
    prompts = [f"{PROMPT} {i}" for i in range(16)]
    solo = [expected_text(served, p, 6) for p in prompts]

    async def all_at_once():
        return await asyncio.gather(*(served.ainfer("ensemble", text_request(p, 6)) for p in prompts))

    results = served.run(all_at_once())
    assert [text_of(r) for r in results] == solo


def test_bls_speculative_with_draft_model(served):
    responses = served.infer("tensorrt_llm_bls", text_request(PROMPT, 10, num_draft_tokens=np.array([[3]], np.int32)))
    assert text_of(responses) == expected_text(served, PROMPT, 10)


@pytest.mark.parametrize("model", ["ensemble", *BLS_MODELS])
def test_dropped_stream_cancels_and_frees_kv_blocks(served, model):
    executor = served.server.models.resolve("tensorrt_llm")._backend_model.model.executor
    total = executor.get_kv_cache_stats().free_num_blocks
    labels = {"model": "tensorrt_llm", "version": "1"}

    def generated():
        return served.server.metrics_registry.get_sample_value("nv_llm_generated_tokens_total", labels) or 0

    before = generated()
    # end_id -1: no eos, the request would run all 200 tokens unless cancelled
    request = text_request(PROMPT, 200, stream=[[True]], end_id=np.array([[-1]], np.int32))
    responses = served.run(served.ainfer(model, request, stop_after=2))
    assert len(responses) == 2
    deadline = time.monotonic() + 10
    while executor.get_kv_cache_stats().used_num_blocks and time.monotonic() < deadline:
        time.sleep(0.02)
    stats = executor.get_kv_cache_stats()
    assert stats.used_num_blocks == 0 and stats.free_num_blocks == total
    time.sleep(0.2)
    assert 0 < generated() - before < 200


def test_guided_in_process_and_refused_with_bls_draft_model(served):
    """A JSON-schema guide through the in-process executor (the guided suite's server runs
    it in an engine process); the BLS's draft-model path would restart the guide at each
    step, so it refuses guides."""
    import json

    schema = {"type": "object", "properties": {"w": {"type": "string", "maxLength": 5}},
              "required": ["w"], "additionalProperties": False}
    guide = {"guided_decoding_guide_type": np.array([[b"json_schema"]], dtype=object),
             "guided_decoding_guide": np.array([[json.dumps(schema).encode()]], dtype=object)}
    for model in ("ensemble", "tensorrt_llm_bls"):
        text = text_of(served.infer(model, text_request(PROMPT, 30, **guide)))
        assert set(json.loads(text)) == {"w"}, text
    with pytest.raises(AssertionError, match="num_draft_tokens is not supported"):
        served.infer("tensorrt_llm_bls", text_request(
            PROMPT, 10, num_draft_tokens=np.array([[3]], np.int32), **guide))
