"""Tensor parallelism (llmserve/llm/engine/tp_runner.py): a tiny Llama and a tiny Qwen2
(q/k/v biases) split across 2 CPU ranks (gloo on 127.0.0.1) give exactly the greedy
tokens of the whole model through the Executor, chunked prefill, beam search and KV
block reuse included; combinations it
does not support are refused at load; a rank that hangs or dies fails requests with a
clear error instead of hanging the executor."""

from __future__ import annotations

import os
import signal
import time

import pytest
from executor_helpers import collect, greedy_request, prompt, tokens_of
from llm_fixtures import make_tiny_checkpoint

from llmserve.core.errors import InvalidArgument, Unsupported
from llmserve.llm import (
    Executor,
    ExecutorConfig,
    KvCacheConfig,
    ModelType,
    PeftCacheConfig,
    Request,
    SamplingConfig,
)
from llmserve.llm.engine.tensor_parallel import Shard

# a rank that stops answering fails the step after this long (default 120 s)
TIMEOUT_S = "10"


def _config(tp: int) -> ExecutorConfig:
    return ExecutorConfig(tensor_parallel_size=tp, tokens_per_block=8, max_beam_width=2,
                          max_num_tokens=48, enable_chunked_context=True,
                          kv_cache_config=KvCacheConfig(max_tokens=1024,
                                                        enable_block_reuse=True))


def _requests() -> list[Request]:
    # prompts longer than max_num_tokens are prefilled in chunks, in one batch with the
    # others' decode steps; the beam request copies KV blocks between its beams
    reqs = [greedy_request(prompt(n, seed), 10) for n, seed in ((3, 1), (19, 2), (70, 3))]
    reqs.append(greedy_request(prompt(9, 4), 6, sampling_config=SamplingConfig(beam_width=2)))
    return reqs


def _outputs(ex: Executor) -> list[list[int]]:
    ids = ex.enqueue_requests(_requests())
    got = collect(ex, ids, timeout_s=120)
    return [tokens_of(got[i]) for i in ids]


def _executor(ckpt, tp: int) -> Executor:
    saved = os.environ.get("LLMSERVE_TP_TIMEOUT_S")
    os.environ["LLMSERVE_TP_TIMEOUT_S"] = TIMEOUT_S
    try:
        return Executor(ckpt, ModelType.DECODER_ONLY, _config(tp))
    finally:
        if saved is None:
            os.environ.pop("LLMSERVE_TP_TIMEOUT_S")
        else:
            os.environ["LLMSERVE_TP_TIMEOUT_S"] = saved


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def family(request, tmp_path_factory):
    """(checkpoint, tp 1 outputs, the tp 2 executor) of one family."""
    ckpt = make_tiny_checkpoint(tmp_path_factory.mktemp(f"tp_{request.param}"), request.param,
                                with_tokenizer=False)
    with Executor(ckpt, ModelType.DECODER_ONLY, _config(1)) as ex:
        reference = _outputs(ex)
    ex2 = _executor(ckpt, 2)
    yield ckpt, reference, ex2
    ex2.shutdown()


def test_tp2_greedy_and_beams_equal_tp1(family):
    _, reference, ex = family
    assert [len(t) for t in reference] == [10, 10, 10, 6]
    assert _outputs(ex) == reference
    assert _outputs(ex) == reference  # again, from the KV blocks the first run left cached
    assert ex.get_latest_iteration_stats()[-1].kv_cache_stats.cached_num_blocks > 0
    # the worker rank holds half of the KV heads: rank 0's cache is half of tp 1's
    runner = ex.runner
    assert runner.local.local_arch.num_kv_heads * 2 == runner.arch.num_kv_heads
    assert runner.local.kv_cache.data.shape[-2] == runner.arch.num_kv_heads // 2


def test_a_rank_that_dies_fails_requests_clearly(family):
    ckpt, _, ex = family
    worker = ex.runner._workers[0]
    if ckpt.name.startswith("tp_llama"):
        # hung (stopped): the step's all-reduce times out
        os.kill(worker.proc.pid, signal.SIGSTOP)
        expected = "tensor-parallel model failed"
    else:
        worker.proc.kill()
        worker.proc.wait()
        expected = "tensor-parallel rank 1 exited with code"
    reasons: list[str] = []
    ex.runner.on_failure = reasons.append  # the served model turns UNAVAILABLE with it
    start = time.monotonic()
    rid = ex.enqueue_request(greedy_request(prompt(5, 9), 4))
    (final,) = collect(ex, [rid], timeout_s=120)[rid]
    assert final.has_error() and expected in final.error_msg, final.error_msg
    assert time.monotonic() - start < float(TIMEOUT_S) + 60
    assert worker.proc.poll() is not None  # a hung rank is ended, not left behind
    assert len(reasons) == 1 and reasons[0] in final.error_msg
    # later requests fail at once with the same reason
    rid = ex.enqueue_request(greedy_request(prompt(5, 10), 4))
    (final,) = collect(ex, [rid], timeout_s=30)[rid]
    assert final.has_error() and "reload it" in final.error_msg, final.error_msg


def test_unsupported_combinations_are_refused_at_load(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path, "llama", with_tokenizer=False)  # 4 heads, 2 kv
    with pytest.raises(Unsupported, match="LoRA"):
        Executor(ckpt, ModelType.DECODER_ONLY,
                 ExecutorConfig(tensor_parallel_size=2, lora_config=PeftCacheConfig()))
    with pytest.raises(InvalidArgument, match="does not divide.*num_key_value_heads 2"):
        Executor(ckpt, ModelType.DECODER_ONLY, ExecutorConfig(tensor_parallel_size=4))
    with pytest.raises(InvalidArgument, match="tensor_parallel_size must be >= 1"):
        ExecutorConfig(tensor_parallel_size=0).validate()


def test_shards_cut_heads_and_mlp():
    import torch

    w = torch.arange(24.0).reshape(4, 6)
    assert Shard(1, 2).column(w).tolist() == w[2:].tolist()
    assert Shard(0, 2).row(w).tolist() == w[:, :3].tolist()
