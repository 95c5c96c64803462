"""EngineWorker: every executor's torch work (loads and steps) runs on one process-wide
thread with its own intra-op thread count, executors stepped in turn."""

import threading

import pytest
import torch

from llmserve.llm.engine_thread import EngineWorker, engine_num_threads


@pytest.fixture
def worker():
    return EngineWorker("t-engine", num_threads=1)  # a daemon thread, idle after the test


def test_call_runs_on_the_engine_thread_and_returns(worker):
    assert worker.call(lambda: threading.current_thread().name) == "t-engine"
    assert worker.call(torch.get_num_threads) == 1


def test_call_raises_the_callers_error(worker):
    with pytest.raises(ZeroDivisionError):
        worker.call(lambda: 1 / 0)
    assert worker.call(lambda: 2) == 2  # still serving calls


class FakeClient:
    def __init__(self, name, steps, log):
        self.name, self.left, self.log = name, steps, log

    def _wants_tick(self):
        return self.left > 0

    def _tick(self):
        self.log.append((self.name, threading.current_thread().name))
        self.left -= 1
        return True


def test_registered_clients_are_stepped_in_turn(worker):
    log = []
    a, b = FakeClient("a", 3, log), FakeClient("b", 2, log)
    with worker.cond:  # registered together, so the first round sees both
        worker._clients += [a, b]
        worker.cond.notify_all()
    worker.call(lambda: None)  # queued behind the rounds already due
    deadline = threading.Event()
    for _ in range(100):
        if a.left == b.left == 0:
            break
        deadline.wait(0.01)
    assert [name for name, _ in log] == ["a", "b", "a", "b", "a"]
    assert {thread for _, thread in log} == {"t-engine"}
    worker.unregister(a)
    worker.unregister(b)


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


def test_executors_load_and_step_on_the_shared_engine_thread(exec_ckpt):
    from llmserve.llm import Executor, ExecutorConfig, KvCacheConfig, Request
    from llmserve.llm.engine import runner as runner_module

    threads = []
    original = runner_module.ModelRunner.__init__

    def spy(self, *args, **kwargs):
        threads.append(threading.current_thread().name)
        original(self, *args, **kwargs)

    runner_module.ModelRunner.__init__ = spy
    try:
        config = ExecutorConfig(kv_cache_config=KvCacheConfig(max_tokens=256))
        with Executor(exec_ckpt, executor_config=config) as one, \
                Executor(exec_ckpt, executor_config=config) as two:
            assert one._thread is two._thread
            ids = [ex.enqueue_request(Request([5, 6, 7], 4)) for ex in (one, two)]
            for ex, rid in zip((one, two), ids, strict=True):
                responses = []
                while not (responses and responses[-1].is_final):
                    responses += ex.await_responses(rid, 30)
                assert not responses[-1].has_error()
                assert len(responses[-1].result.output_token_ids[0]) == 3 + 4
    finally:
        runner_module.ModelRunner.__init__ = original
    assert threads == [one._thread.name] * 2


class BrokenClient(FakeClient):
    crashed = None

    def _tick(self):
        raise RuntimeError("boom")

    def _crashed(self, exc):
        self.crashed = exc


def test_a_failing_executor_does_not_stop_the_others(worker):
    log = []
    broken, good = BrokenClient("x", 1, log), FakeClient("g", 3, log)
    worker.register(broken)
    worker.register(good)
    for _ in range(200):
        if good.left == 0 and broken.crashed is not None:
            break
        threading.Event().wait(0.01)
    assert isinstance(broken.crashed, RuntimeError) and good.left == 0
    assert broken not in worker._clients
    worker.unregister(good)


def test_executor_whose_loop_raises_fails_its_requests(make_executor, monkeypatch):
    from llmserve.llm import Request

    bad, ok = make_executor(), make_executor()
    monkeypatch.setattr(bad._stepper, "add", lambda state: 1 / 0)
    rid = bad.enqueue_request(Request([5, 6, 7], 4))
    responses = bad.await_responses(rid, 30)
    assert responses and responses[-1].has_error()
    assert "executor failed" in responses[-1].error_msg
    bad.shutdown()  # returns: the executor is stopped
    rid = ok.enqueue_request(Request([5, 6, 7], 4))
    out = []
    while not (out and out[-1].is_final):
        out += ok.await_responses(rid, 30)
    assert not out[-1].has_error()


def test_a_forked_child_starts_its_own_engine_thread():
    import os

    parent = EngineWorker.shared()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's worker thread does not exist here
        try:
            child = EngineWorker.shared()
            ok = child is not parent and child.call(lambda: 7) == 7
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    assert EngineWorker.shared() is parent
