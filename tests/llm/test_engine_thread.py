"""EngineThread: all of an executor's torch work runs on one thread with its own
intra-op thread count."""

import threading

import pytest
import torch

from llmserve.llm.engine_thread import EngineThread, engine_num_threads


def test_call_runs_on_the_engine_thread_and_returns():
    engine = EngineThread("t-engine", num_threads=1)
    try:
        name = engine.call(lambda: threading.current_thread().name)
        assert name == "t-engine"
        assert engine.call(torch.get_num_threads) == 1
    finally:
        engine.stop()
        engine.join(5)
    assert not engine.thread.is_alive()


def test_call_raises_the_callers_error():
    engine = EngineThread("t-engine-err", num_threads=1)
    try:
        with pytest.raises(ZeroDivisionError):
            engine.call(lambda: 1 / 0)
        assert engine.call(lambda: 2) == 2  # still serving calls
    finally:
        engine.stop()
        engine.join(5)


def test_run_loop_takes_over_the_thread():
    engine = EngineThread("t-engine-loop", num_threads=1)
    seen = []
    engine.run_loop(lambda: seen.append(threading.current_thread().name))
    engine.join(5)
    assert seen == ["t-engine-loop"]


def test_thread_count_from_env(monkeypatch):
    monkeypatch.setenv("LLMSERVE_ENGINE_THREADS", "3")
    assert engine_num_threads() == 3
    monkeypatch.setenv("LLMSERVE_ENGINE_THREADS", "zero")
    with pytest.raises(ValueError, match="positive integer"):
        engine_num_threads()
    monkeypatch.setenv("LLMSERVE_ENGINE_THREADS", "0")
    with pytest.raises(ValueError, match="positive integer"):
        engine_num_threads()
    monkeypatch.delenv("LLMSERVE_ENGINE_THREADS")
    assert engine_num_threads() == torch.get_num_threads()


def test_executor_loads_its_model_on_its_loop_thread(exec_ckpt):
    from llmserve.llm import Executor, ExecutorConfig, KvCacheConfig
    from llmserve.llm.engine import runner as runner_module

    threads = []
    original = runner_module.ModelRunner.__init__

    def spy(self, *args, **kwargs):
        threads.append(threading.current_thread().name)
        original(self, *args, **kwargs)

    runner_module.ModelRunner.__init__ = spy
    try:
        config = ExecutorConfig(kv_cache_config=KvCacheConfig(max_tokens=256))
        with Executor(exec_ckpt, executor_config=config) as executor:
            assert executor._thread.name == "llmserve-executor"
    finally:
        runner_module.ModelRunner.__init__ = original
    assert threads == ["llmserve-executor"]
