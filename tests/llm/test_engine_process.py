"""The executor in an engine process (llmserve/llm/engine_process): the same responses as
the in-process Executor (greedy, streaming, beams, sequences, logits, request drafts, a
draft model inside the engine), cancellation freeing blocks, LoRA weights once then by task id, stats,
queue limits, errors raised with their type, load errors, and no orphan process."""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
import zmq
from executor_helpers import TIMEOUT, collect, greedy_request, hf_reference, prompt, tokens_of
from lora_fixtures import lora_tensors, make_peft_adapter, merged_model

from llmserve.core.errors import InvalidArgument, Unavailable
from llmserve.llm import (
    Executor,
    ExecutorConfig,
    ExternalDraftTokensConfig,
    FinishReason,
    IterationStats,
    KvCacheConfig,
    KvEventsConfig,
    LoraConfig,
    ModelType,
    OutputConfig,
    PeftCacheConfig,
    Request,
    RequestStage,
    SamplingConfig,
    SpeculativeDecodingConfig,
    SpeculativeDecodingMode,
)
from llmserve.llm.engine_process import EngineProcessExecutor

P = prompt(11, 7)
ENGINE_NICE = -3
ROOT = Path(__file__).resolve().parents[2]


def engine_config(ckpt: Path, events: str | None = None) -> ExecutorConfig:
    """Beams, LoRA, request stats, KV block reuse and a draft model inside the engine (the
    checkpoint drafts for itself: speculation never changes greedy output); KV cache
    events published on the ipc:// endpoint `events`."""
    return ExecutorConfig(
        kv_cache_config=KvCacheConfig(max_tokens=2048, enable_block_reuse=True),
        tokens_per_block=8, max_beam_width=2, max_batch_size=4, max_queue_size=64,
        request_stats_max_iterations=50, lora_config=PeftCacheConfig(),
        speculative_decoding_config=SpeculativeDecodingConfig(
            mode=SpeculativeDecodingMode.DRAFT_MODEL, draft_model_path=str(ckpt),
            num_draft_tokens=3),
        kv_events_config=None if events is None else KvEventsConfig(
            enable_kv_cache_events=True, endpoint=events, topic="kv"))


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie has exited too: only its parent's wait is missing
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1].startswith("Z")


def wait_gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return gone(pid)


@pytest.fixture(scope="module")
def events_endpoint(tmp_path_factory) -> str:
    return f"ipc://{tmp_path_factory.mktemp('kv_events')}/events"


@pytest.fixture(scope="module")
def engine(exec_ckpt, events_endpoint):
    """One engine process for the module (starting one imports torch: seconds)."""
    env = {"LLMSERVE_ENGINE_THREADS": "1",  # tiny model on a shared 2-core box
           "LLMSERVE_ENGINE_NICE": str(ENGINE_NICE)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        ex = EngineProcessExecutor(exec_ckpt, ModelType.DECODER_ONLY,
                                   engine_config(exec_ckpt, events_endpoint), name="t")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v
    yield ex
    ex.shutdown()
    assert wait_gone(ex.pid), "the engine process outlived shutdown()"
    assert not ex.can_enqueue_requests()


@pytest.fixture(scope="module")
def local(exec_ckpt, exec_runner):
    ex = Executor(exec_ckpt, ModelType.DECODER_ONLY, engine_config(exec_ckpt), runner=exec_runner)
    yield ex
    ex.shutdown()


def wait_idle(ex, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while ex.get_kv_cache_stats().used_num_blocks and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ex.get_kv_cache_stats().used_num_blocks == 0


def comparable(responses) -> list[dict]:
    """A response list without what differs between runs (ids, clocks)."""
    out = []
    for r in responses:
        assert not r.has_error(), r.error_msg
        res = r.result
        perf = res.request_perf_metrics
        out.append({
            "final": (res.is_final, res.is_sequence_final, res.sequence_index),
            "tokens": res.output_token_ids, "reasons": res.finish_reasons,
            "cum": None if res.cum_log_probs is None else np.round(res.cum_log_probs, 4).tolist(),
            "lp": None if res.log_probs is None else [np.round(x, 4).tolist() for x in res.log_probs],
            "ctx": None if res.context_logits is None else res.context_logits.shape,
            "gen": None if res.generation_logits is None else res.generation_logits.shape,
            "kv": None if perf is None else perf.kv_cache_metrics,
            "spec": None if perf is None else perf.speculative_decoding,
        })
    return out


def cases(exec_hf) -> dict[str, Request]:
    ref = hf_reference(exec_hf, P, 16)
    every_output = OutputConfig(return_log_probs=True, return_context_logits=True,
                                return_generation_logits=True, return_perf_metrics=True)
    draft_logits = torch.randn(3, 320, generator=torch.Generator().manual_seed(3))
    return {
        "streaming": greedy_request(P, 16, streaming=True),
        "whole": Request(P, 16),
        "outputs": Request(P, 6, output_config=every_output),
        "stream_outputs": Request(P, 6, streaming=True, output_config=every_output),
        "stop_end": greedy_request(P, 16, end_id=ref[5], stop_words=[[ref[2], ref[3]]]),
        "sequences": greedy_request(P, 8, sampling_config=SamplingConfig(
            top_k=20, top_p=0.9, seed=5, num_return_sequences=2)),
        "beams": greedy_request(P, 8, sampling_config=SamplingConfig(beam_width=2),
                                output_config=OutputConfig(return_log_probs=True)),
        "drafts": greedy_request(P, 12, external_draft_tokens_config=ExternalDraftTokensConfig(
            ref[:3], draft_logits, 0.5)),
        "bias": greedy_request(P, 6, embedding_bias=torch.linspace(-3, 3, 320)),
    }


def run_alone(ex, request: Request) -> list:
    rid = ex.enqueue_request(request)
    return collect(ex, [rid])[rid]


def test_responses_equal_the_in_process_executor(engine, local, exec_hf):
    ref = hf_reference(exec_hf, P, 16)
    for name, request in cases(exec_hf).items():
        remote, here = run_alone(engine, request), run_alone(local, request)
        assert comparable(remote) == comparable(here), name
        for a, b in zip(remote, here, strict=True):
            for field in ("context_logits", "generation_logits"):
                x, y = getattr(a.result, field), getattr(b.result, field)
                assert (x is None) == (y is None) and (x is None or torch.allclose(x, y)), name
        if name == "streaming":
            # the draft model's accepted tokens arrive several per step
            assert tokens_of(remote) == ref and len(remote) < 16
    assert engine.vocab_size == local.vocab_size and engine.max_seq_len == local.max_seq_len
    wait_idle(engine)


def test_cancel_frees_blocks_and_asyncio_early_exit(engine):
    total = engine.get_kv_cache_stats().free_num_blocks
    rid = engine.enqueue_request(Request(P, 200, streaming=True))
    first = engine.await_responses(rid, TIMEOUT)
    assert first and not first[-1].is_final
    assert engine.get_kv_cache_stats().used_num_blocks > 0
    engine.cancel_request(rid)
    last = collect(engine, [rid])[rid][-1]
    assert last.result.finish_reasons == [FinishReason.CANCELLED]
    wait_idle(engine)
    assert engine.get_kv_cache_stats().free_num_blocks == total

    async def leave_early():
        other = engine.enqueue_request(greedy_request(P, 200, streaming=True))
        async for _ in engine.iter_responses(other):
            break  # leaving early cancels the request

    asyncio.run(leave_early())
    wait_idle(engine)
    with pytest.raises(InvalidArgument, match="unknown or has already been completed"):
        engine.await_responses(rid, datetime.timedelta(milliseconds=10))


def test_lora_weights_once_then_task_id(engine, exec_ckpt, exec_hf, tmp_path):
    adapter = make_peft_adapter(exec_ckpt, tmp_path / "a", seed=1, r=4, alpha=8)
    w, c = (torch.from_numpy(x) for x in lora_tensors(adapter))
    p = prompt(12, 1)
    want = hf_reference(merged_model(exec_ckpt, adapter), p, 10)
    first = run_alone(engine, greedy_request(p, 10, lora_config=LoraConfig(7, w, c)))
    again = run_alone(engine, greedy_request(p, 10, lora_config=LoraConfig(7)))
    assert tokens_of(first) == tokens_of(again) == want != hf_reference(exec_hf, p, 10)
    with pytest.raises(InvalidArgument, match="LoRA task 99 not found in cache"):
        engine.enqueue_request(greedy_request(p, 4, lora_config=LoraConfig(99)))


def test_the_engine_thread_alone_takes_the_engine_nice_value(engine):
    """LLMSERVE_ENGINE_NICE reaches the engine process's stepping thread only (its
    channel threads keep the process's priority), where lowering nice is permitted."""
    from engine_nice import can_lower_nice, thread_nices

    base = os.getpriority(os.PRIO_PROCESS, 0)
    permitted = can_lower_nice()
    deadline = time.monotonic() + 10  # the engine thread sets it as it starts
    nices = thread_nices(engine.pid)
    while permitted and ENGINE_NICE not in nices and time.monotonic() < deadline:
        time.sleep(0.05)
        nices = thread_nices(engine.pid)
    if permitted:
        assert sorted(nices) == sorted([ENGINE_NICE] + [base] * (len(nices) - 1)), nices
    else:  # not permitted here: every thread keeps the priority (and the log says why)
        assert set(nices) == {base}, nices


def test_the_engine_process_keeps_its_loaded_heap_out_of_garbage_collection(engine):
    """Frozen once the executor is built (core/gc_freeze.py): torch's and the model's
    objects are never walked by a full collection while the engine steps."""
    assert engine.gc_frozen > 10_000


def test_stats_and_errors_cross_the_process(engine):
    engine.get_latest_iteration_stats()
    engine.get_latest_request_stats()
    fresh = prompt(11, 4242)  # no cached prefix to reuse
    run_alone(engine, Request(fresh, 4))
    iters = engine.get_latest_iteration_stats()
    assert iters and all(isinstance(s, IterationStats) for s in iters)
    assert iters[0].num_tokens == len(fresh) and iters[0].kv_cache_stats.alloc_new_blocks == 2
    assert engine.get_latest_iteration_stats() == []  # drained, as in-process
    held = engine.get_current_stats()  # what the idle gauges read between steps
    assert held.num_active_requests == 0 and held.kv_cache_stats.used_num_blocks == 0
    per_request = engine.get_latest_request_stats()
    assert per_request[0].request_stats[0].stage is RequestStage.GENERATION_IN_PROGRESS
    with pytest.raises(InvalidArgument, match="exceeds maximum input length"):
        engine.enqueue_request(Request(prompt(300, 1), 4))
    with pytest.raises(InvalidArgument, match="max_beam_width"):
        engine.enqueue_request(Request(P, 4, sampling_config=SamplingConfig(beam_width=3)))


def test_kv_cache_events_come_from_the_engine_process(engine, events_endpoint):
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"kv")
    sub.connect(events_endpoint)
    try:
        time.sleep(0.3)  # a SUB socket misses what is published before it has joined
        run_alone(engine, Request(prompt(20, 99), 2))
        stored = []
        while not stored and sub.poll(10_000):
            _topic, _seq, payload = sub.recv_multipart()
            stored = [e for e in msgpack.unpackb(payload)["events"] if e["type"] == "BlockStored"]
        assert stored and stored[0]["block_size"] == 8
    finally:
        sub.close(linger=0)


def test_full_queue_raises_unavailable(engine):
    ids = []
    with pytest.raises(Unavailable, match="Maximum queue size of 64"):
        for _ in range(80):
            ids.append(engine.enqueue_request(Request(P, 200, streaming=True)))
    assert len(ids) >= 64
    for rid in ids:
        engine.cancel_request(rid)
    got = collect(engine, ids)
    assert all(g[-1].result.finish_reasons == [FinishReason.CANCELLED] for g in got.values())
    wait_idle(engine)


def test_load_error_is_the_engines(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "llama", "hidden_size": 64}')
    with pytest.raises(Exception) as here:
        Executor(bad, ModelType.DECODER_ONLY, ExecutorConfig())
    with pytest.raises(Exception) as there:
        EngineProcessExecutor(bad, ModelType.DECODER_ONLY, ExecutorConfig(), name="bad")
    assert str(here.value) in str(there.value)


def test_engine_exits_when_its_server_is_killed(exec_ckpt, tmp_path):
    """SIGKILL of the server process: the engine notices its lifeline, removes its channel
    folder and exits."""
    script = textwrap.dedent(f"""
        import os, sys, time
        from llmserve.llm import ExecutorConfig, KvCacheConfig
        from llmserve.llm.engine_process import EngineProcessExecutor
        ex = EngineProcessExecutor({str(exec_ckpt)!r}, executor_config=ExecutorConfig(
            kv_cache_config=KvCacheConfig(max_tokens=256), tokens_per_block=8))
        print(ex.pid, flush=True)
        time.sleep(600)
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT), LLMSERVE_ENGINE_THREADS="1")
    server = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              env=env, text=True)
    try:
        line = server.stdout.readline()
        assert line.strip().isdigit(), f"no engine pid from the server process: {line!r}"
        engine_pid = int(line)
        assert not gone(engine_pid)
        argv = Path(f"/proc/{engine_pid}/cmdline").read_text().split("\0")
        channel = Path(argv[argv.index("--channel") + 1])
        assert channel.is_dir()
        server.send_signal(signal.SIGKILL)
        server.wait(30)
        assert wait_gone(engine_pid, 15), "an orphan engine process survived its server"
        assert not channel.exists(), "the engine left its channel folder behind"
    finally:
        server.kill()
        server.wait()
