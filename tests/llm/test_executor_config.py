"""Executor construction: KV cache sizing, config validation, policies end to end,
and a failing engine step failing its requests (not the executor)."""

from __future__ import annotations

import pytest
from executor_helpers import collect, greedy_request, hf_reference, prompt, run, tokens_of

from llmserve.core.errors import InvalidArgument, Unsupported
from llmserve.llm import (
    BatchingType,
    CapacitySchedulerPolicy,
    Executor,
    ExecutorConfig,
    KvCacheConfig,
    ModelType,
    Request,
    SchedulerConfig,
)


def test_kv_cache_sized_from_max_tokens_and_capped_on_cpu(exec_ckpt, exec_runner):
    cfg = ExecutorConfig(kv_cache_config=KvCacheConfig(max_tokens=100), tokens_per_block=16)
    with Executor(exec_ckpt, ModelType.DECODER_ONLY, cfg, runner=exec_runner) as ex:
        assert ex.block_manager.num_blocks == 7  # ceil(100 / 16)
        assert exec_runner.num_blocks == 7 and exec_runner.block_size == 16
    # free-memory fraction on CPU: never more than max_batch_size max-length sequences
    cfg = ExecutorConfig(max_batch_size=3, max_seq_len=64, tokens_per_block=16)
    with Executor(exec_ckpt, ModelType.DECODER_ONLY, cfg, runner=exec_runner) as ex:
        assert ex.block_manager.num_blocks == 3 * 4
        assert ex.max_seq_len == 64


def test_config_validation(exec_ckpt, exec_runner):
    with pytest.raises(InvalidArgument, match="free_gpu_memory_fraction"):
        Executor(exec_ckpt, ModelType.DECODER_ONLY, ExecutorConfig(
            kv_cache_config=KvCacheConfig(free_gpu_memory_fraction=1.5)), runner=exec_runner)
    with pytest.raises(Unsupported, match="ENCODER_DECODER"):
        Executor(exec_ckpt, ModelType.ENCODER_DECODER, ExecutorConfig(), runner=exec_runner)


@pytest.mark.parametrize("policy", list(CapacitySchedulerPolicy))
def test_every_policy_gives_transformers_greedy(make_executor, exec_hf, policy):
    prompts = [prompt(9, 40 + i) for i in range(3)]
    reference = [hf_reference(exec_hf, p, 10) for p in prompts]
    ex = make_executor(kv_tokens=96, scheduler_config=SchedulerConfig(policy))
    outs = run(ex, [greedy_request(p, 10) for p in prompts])
    assert [tokens_of(o) for o in outs] == reference


def test_static_batching_type_waits_for_the_batch(make_executor):
    ex = make_executor(batching_type=BatchingType.STATIC)
    first = ex.enqueue_request(Request(prompt(5, 1), 30, streaming=True))
    ex.await_responses(first)
    late = ex.enqueue_request(Request(prompt(5, 2), 2))
    got = collect(ex, [first, late])
    stats = ex.get_latest_iteration_stats()
    assert max(s.inflight_batching_stats.num_scheduled_requests for s in stats) == 1
    assert got[late][-1].is_final


class FailingRunner:
    """Delegates to the real runner but fails the forward calls it is told to."""

    def __init__(self, runner, fail_calls: set[int]):
        self._runner = runner
        self._fail = fail_calls
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def forward(self, chunks):
        self.calls += 1
        if self.calls in self._fail:
            raise RuntimeError("device lost")
        return self._runner.forward(chunks)


def test_failed_step_fails_its_requests_and_executor_keeps_serving(exec_ckpt, exec_runner,
                                                                   exec_hf):
    runner = FailingRunner(exec_runner, {2})
    cfg = ExecutorConfig(kv_cache_config=KvCacheConfig(max_tokens=512))
    p = prompt(6, 3)
    with Executor(exec_ckpt, ModelType.DECODER_ONLY, cfg, runner=runner) as ex:
        (failed,) = run(ex, [Request(p, 5)])
        assert failed[-1].has_error() and "device lost" in failed[-1].error_msg
        assert ex.get_kv_cache_stats().used_num_blocks == 0
        (ok,) = run(ex, [greedy_request(p, 5)])
        assert tokens_of(ok) == hf_reference(exec_hf, p, 5)


@pytest.mark.parametrize("normalize", [None, False, True])
def test_normalize_log_probs_follows_tensorrt_llm(make_executor, normalize):
    """Unset or false: log P(token | vocabulary) (negative for a tiny random model);
    true: over the set each token was sampled from, so 0.0 for greedy picks."""
    from llmserve.llm import OutputConfig

    ex = make_executor(normalize_log_probs=normalize)
    req = greedy_request(prompt(6, 3), 4, output_config=OutputConfig(
        exclude_input_from_output=True, return_log_probs=True))
    [responses] = run(ex, [req])
    log_probs = [lp for r in responses for lp in (r.result.log_probs or [[]])[0]]
    assert len(log_probs) == 4
    if normalize:
        assert log_probs == [0.0] * 4
    else:
        assert all(lp < 0.0 for lp in log_probs)


def test_weight_only_int8_from_the_executor_config(exec_ckpt, exec_hf, exec_runner):
    cfg = ExecutorConfig(kv_cache_config=KvCacheConfig(max_tokens=256), tokens_per_block=8,
                         device="cpu", weight_only_precision="int8")
    with Executor(exec_ckpt, ModelType.DECODER_ONLY, cfg) as ex:  # builds its own runner
        assert ex.runner.arch.weight_only_precision == "int8"
        prompts = [prompt(9, 70 + i) for i in range(3)]
        outs = run(ex, [greedy_request(p, 6) for p in prompts])
    # int8 logits differ slightly (test_quant.py): the first greedy tokens agree
    assert [tokens_of(o)[0] for o in outs] == [hf_reference(exec_hf, p, 1)[0] for p in prompts]
    assert all(len(tokens_of(o)) == 6 for o in outs)
    with pytest.raises(InvalidArgument, match="weight_only_precision"):
        Executor(exec_ckpt, ModelType.DECODER_ONLY,
                 ExecutorConfig(weight_only_precision="int3"), runner=exec_runner)
