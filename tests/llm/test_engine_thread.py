"""EngineWorker: every executor's steps run on one process-wide thread with its own
intra-op thread count, executors stepped in turn; loads run beside it."""

import threading

import pytest
import torch

from llmserve.llm.engine_thread import EngineWorker, engine_num_threads


@pytest.fixture
def worker():
    return EngineWorker("t-engine", num_threads=1)  # a daemon thread, idle after the test


def test_load_runs_on_a_loader_thread_with_the_engine_thread_count(worker):
    assert worker.load(lambda: threading.current_thread().name) == "llmserve-load"
    assert worker.load(torch.get_num_threads) == 1


def test_load_raises_the_callers_error(worker):
    with pytest.raises(ZeroDivisionError):
        worker.load(lambda: 1 / 0)
    assert worker.load(lambda: 2) == 2


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


def _finish(ex, rid):
    responses = []
    while not (responses and responses[-1].is_final):
        responses += ex.await_responses(rid, 30)
    assert not responses[-1].has_error()
    return responses


def test_executors_load_beside_and_step_on_the_shared_engine_thread(exec_ckpt, monkeypatch):
    from llmserve.llm import Executor, ExecutorConfig, KvCacheConfig, Request
    from llmserve.llm.engine import runner as runner_module
    from llmserve.llm.executor import Executor as ExecutorClass

    loads, ticks = [], set()
    original_init, original_tick = runner_module.ModelRunner.__init__, ExecutorClass._tick

    def spy_init(self, *args, **kwargs):
        loads.append(threading.current_thread().name)
        original_init(self, *args, **kwargs)

    def spy_tick(self):
        ticks.add(threading.current_thread().name)
        return original_tick(self)

    monkeypatch.setattr(runner_module.ModelRunner, "__init__", spy_init)
    monkeypatch.setattr(ExecutorClass, "_tick", spy_tick)
    config = ExecutorConfig(kv_cache_config=KvCacheConfig(max_tokens=256))
    with Executor(exec_ckpt, executor_config=config) as one, \
            Executor(exec_ckpt, executor_config=config) as two:
        assert one._thread is two._thread
        ids = [ex.enqueue_request(Request([5, 6, 7], 4)) for ex in (one, two)]
        for ex, rid in zip((one, two), ids, strict=True):
            assert len(_finish(ex, rid)[-1].result.output_token_ids[0]) == 3 + 4
    assert loads == ["llmserve-load"] * 2
    assert ticks == {one._thread.name}


def test_an_executor_streams_on_while_another_model_loads(exec_ckpt, monkeypatch):
    """A load (here held for a second) must not stall the executors already serving."""
    from llmserve.llm import Executor, ExecutorConfig, KvCacheConfig, Request
    from llmserve.llm.engine import runner as runner_module

    config = ExecutorConfig(kv_cache_config=KvCacheConfig(max_tokens=1024))
    serving = Executor(exec_ckpt, executor_config=config)
    original = runner_module.ModelRunner.__init__
    held = threading.Event()

    def slow_init(self, *args, **kwargs):
        held.set()
        threading.Event().wait(1.0)
        original(self, *args, **kwargs)

    monkeypatch.setattr(runner_module.ModelRunner, "__init__", slow_init)
    loaded = []
    loader = threading.Thread(
        target=lambda: loaded.append(Executor(exec_ckpt, executor_config=config)))
    loader.start()
    try:
        assert held.wait(30)
        rid = serving.enqueue_request(Request([5, 6, 7], 40, streaming=True))
        responses = _finish(serving, rid)
        assert loader.is_alive()  # all 40 tokens came while the other model loaded
        assert len(responses) == 40
    finally:
        loader.join()
        serving.shutdown()
        for ex in loaded:
            ex.shutdown()


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
            client = FakeClient("c", 2, [])
            child.register(client)  # stepped by the child's own thread
            for _ in range(500):
                if client.left == 0:
                    break
                threading.Event().wait(0.01)
            ok = child is not parent and client.left == 0
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    assert EngineWorker.shared() is parent


def test_engine_nice_reads_the_environment(monkeypatch):
    from llmserve.llm.engine_thread import NICE_ENV, engine_nice

    monkeypatch.delenv(NICE_ENV, raising=False)
    assert engine_nice() is None
    for value, expected in (("0", None), ("-10", -10), (" 5 ", 5), ("", None)):
        monkeypatch.setenv(NICE_ENV, value)
        assert engine_nice() == expected
    for bad in ("high", "-21", "20", "1.5"):
        monkeypatch.setenv(NICE_ENV, bad)
        with pytest.raises(ValueError, match=NICE_ENV):
            engine_nice()
        # a bad value fails on the thread that builds the worker, not on the engine thread
        with pytest.raises(ValueError, match=NICE_ENV):
            EngineWorker("t-bad-nice", num_threads=1)


def _on_a_thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append((fn(), threading.get_native_id())))
    t.start()
    t.join()
    return out[0]


def test_apply_engine_nice_sets_the_calling_thread_only():
    import os

    from engine_nice import can_lower_nice

    from llmserve.llm.engine_thread import apply_engine_nice

    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert _on_a_thread(lambda: apply_engine_nice(None))[0] is False
    if can_lower_nice():
        seen = []

        def apply_and_read():
            ok = apply_engine_nice(base - 2)
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            child = _on_a_thread(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            seen.append(child[0])  # a thread it starts (an OpenMP team) inherits it
            return ok

        assert _on_a_thread(apply_and_read)[0] is True
        assert seen == [base - 2, base - 2]
    # the thread that asked keeps its value
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base


def test_apply_engine_nice_without_permission_warns_and_goes_on(monkeypatch, caplog):
    import logging
    import os

    def refuse(*args):
        raise PermissionError(1, "Operation not permitted")

    from llmserve.llm.engine_thread import apply_engine_nice

    monkeypatch.setattr(os, "setpriority", refuse)
    with caplog.at_level(logging.WARNING, logger="llmserve.llm.engine_thread"):
        assert _on_a_thread(lambda: apply_engine_nice(-10))[0] is False
    assert "LLMSERVE_ENGINE_NICE=-10 not applied (Operation not permitted)" in caplog.text
    assert "CAP_SYS_NICE" in caplog.text
