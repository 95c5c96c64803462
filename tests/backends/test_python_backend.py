"""The Python backend through InferenceServer: default/decoupled/async modes, errors,
BLS, auto-complete, cancellation, rescheduling, module isolation, custom metrics."""

import asyncio
import time

import numpy as np
import pytest
from inproc_server import collect, make_request

from llmserve.core import prometheus_text
from llmserve.core.errors import ErrorCode


def test_add_sub(backend_server):
    a = np.array([[1, 2, 3, 4]], np.float32)
    b = np.array([[4, 3, 2, 1]], np.float32)
    [resp] = backend_server.run(collect(backend_server, make_request("add_sub", {"INPUT0": a, "INPUT1": b})))
    assert resp.final and resp.error is None
    np.testing.assert_array_equal(resp.output("OUTPUT0").data, a + b)
    np.testing.assert_array_equal(resp.output("OUTPUT1").data, a - b)
    assert resp.model_version == 1


def test_requested_outputs_filter(backend_server):
    from llmserve.core.types import RequestedOutput

    a = np.ones((2, 4), np.float32)
    req = make_request("add_sub", {"INPUT0": a, "INPUT1": a}, requested_outputs=[RequestedOutput("OUTPUT1")])
    [resp] = backend_server.run(collect(backend_server, req))
    assert [t.name for t in resp.outputs] == ["OUTPUT1"]
    assert resp.output("OUTPUT1").data.shape == (2, 4)


def test_decoupled_repeat_streams_then_final(backend_server):
    resps = backend_server.run(collect(backend_server, make_request("repeat", {"IN": np.array([7, 8, 9], np.int32)})))
    assert [int(r.output("OUT").data[0]) for r in resps[:-1]] == [7, 8, 9]
    assert all(not r.final for r in resps[:-1])
    assert resps[-1].final and not resps[-1].outputs


def test_decoupled_zero_responses(backend_server):
    resps = backend_server.run(collect(backend_server, make_request("repeat", {"IN": np.array([], np.int32)})))
    assert len(resps) == 1 and resps[0].final and not resps[0].outputs and resps[0].error is None


def test_bls_sync_async_and_decoupled(backend_server):
    x = np.array([1, 2, 3, 4], np.float32)
    # bytes_*: the target named by a numpy bytes element, as Triton's bls example does
    for mode in ("sync", "async", "bytes_sync", "bytes_async"):
        [resp] = backend_server.run(collect(backend_server, make_request("bls", {"MODE": np.array([mode]), "X": x})))
        assert resp.error is None, resp.error
        np.testing.assert_array_equal(resp.output("Y").data, x * 2)
    [resp] = backend_server.run(collect(backend_server, make_request("bls", {"MODE": np.array(["decoupled"]), "X": x})))
    np.testing.assert_array_equal(resp.output("Y").data, x)
    [resp] = backend_server.run(collect(backend_server, make_request("bls_sync", {"X": np.array([5, 6], np.int32)})))
    np.testing.assert_array_equal(resp.output("Y").data, [5, 6])


def test_bls_async_exec_decoupled_walks_with_plain_for(backend_server):
    x = np.array([1, 2, 3, 4], np.float32)
    req = make_request("bls", {"MODE": np.array(["decoupled_for"]), "X": x})
    [resp] = backend_server.run(collect(backend_server, req))
    assert resp.error is None, resp.error
    np.testing.assert_array_equal(resp.output("Y").data, x)


def test_bls_error_surfaces_as_response_error(backend_server):
    x = np.ones(4, np.float32)
    [resp] = backend_server.run(collect(backend_server, make_request("bls", {"MODE": np.array(["missing"]), "X": x})))
    assert resp.error is not None
    assert resp.error.message == "Failed for execute the inference request. Model 'no_such_model' is not ready."


def test_custom_counter_keeps_its_exact_name(backend_server):
    import triton_python_backend_utils as pb_utils

    family = pb_utils.MetricFamily("test_latency_ns", "time spent", pb_utils.MetricFamily.COUNTER)
    family.Metric(labels={"model": "m", "version": "1"}).increment(7)
    gauge = pb_utils.MetricFamily("test_depth", "queue depth", pb_utils.MetricFamily.GAUGE)
    gauge.Metric(labels={"model": "m"}).set(3)
    text = prometheus_text.render(backend_server.metrics_registry).decode()
    assert "# HELP test_latency_ns time spent\n# TYPE test_latency_ns counter\n" in text
    assert 'test_latency_ns{model="m",version="1"} 7.0' in text
    assert "test_latency_ns_total" not in text
    assert "# TYPE test_depth gauge\n" in text and 'test_depth{model="m"} 3.0' in text
    # Triton's own per-model counters print the same way
    assert "# TYPE nv_inference_request_success counter\n" in text


def test_auto_complete_config(backend_server):
    config = backend_server.model_config("auto")
    assert config.max_batch_size == 4
    assert [i.name for i in config.input] == ["A"]
    [resp] = backend_server.run(collect(backend_server, make_request("auto", {"A": np.array([[1, 2]], np.int64)})))
    np.testing.assert_array_equal(resp.output("B").data, [[10, 20]])


def test_initialize_error_makes_model_unavailable(backend_server):
    rows = [r for r in backend_server.repository_index() if r["name"] == "init_error"]
    assert rows and rows[0]["state"] == "UNAVAILABLE"
    assert rows[0]["reason"] == "RuntimeError: cannot open weights file"
    assert not backend_server.model_ready("init_error")
    with pytest.raises(Exception) as info:
        backend_server.run(collect(backend_server, make_request("init_error", {"MODE": np.array(["ok"])})))
    assert "init_error" in str(info.value)


def _errors(server, mode):
    return server.run(collect(server, make_request("errors", {"MODE": np.array([mode])})))


def test_execute_raise_fails_request_only(backend_server):
    [resp] = _errors(backend_server, "raise")
    assert resp.error is not None
    assert "Failed to process the request(s) for model" in resp.error.message
    assert "ValueError: model blew up" in resp.error.message
    [ok] = _errors(backend_server, "ok")
    assert ok.error is None and ok.output("OUT").data[0] == b"ok"


@pytest.mark.parametrize("mode", ["short_list", "none", "none_item"])
def test_response_list_rule(backend_server, mode):
    [resp] = _errors(backend_server, mode)
    assert resp.error is not None and resp.final


def test_triton_error_codes_map(backend_server):
    [resp] = _errors(backend_server, "not_found")
    assert resp.error.code == ErrorCode.NOT_FOUND and resp.error.message == "file not found"
    [resp] = _errors(backend_server, "code:3")
    assert resp.error.code == ErrorCode.INVALID_ARG
    [resp] = _errors(backend_server, "code:4")
    assert resp.error.code == ErrorCode.UNAVAILABLE


def test_cancellation_reaches_model(backend_server):
    async def run():
        req = make_request("wait_cancel", {"X": np.array([1], np.int32)})
        gen = backend_server.infer(req)
        first = await gen.__anext__()
        assert first.output("Y") is not None
        await gen.aclose()  # the consumer goes away -> request.cancel
        assert req.cancel.is_cancelled()
        await _metric_shows(backend_server, 'test_cancelled_total{model="wait_cancel"} 1.0',
                            "the model never saw is_cancelled()")

    backend_server.run(run())


async def _metric_shows(server, line: str, failure: str, tries: int = 200) -> None:
    for _ in range(tries):
        if line in prometheus_text.render(server.metrics_registry).decode():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(failure)


def test_client_gone_cancels_a_decoupled_bls_call(backend_server):
    """The model never checks is_cancelled(): once its only request is cancelled, its
    decoupled BLS call to wait_cancel (which would stream for 10 s) is cancelled too and
    the iteration ends quietly."""
    async def run():
        req = make_request("bls_forward", {"X": np.array([1], np.int32)})
        gen = backend_server.infer(req)
        first = await gen.__anext__()
        assert first.error is None and first.output("Y") is not None
        await gen.aclose()
        await _metric_shows(backend_server, 'test_bls_forward_ended_total{model="bls_forward"} 1.0',
                            "the BLS call kept running after its request was cancelled", 150)

    backend_server.run(run())


def test_async_execute_runs_requests_concurrently(backend_server):
    async def run():
        reqs = [make_request("async_sleep", {"X": np.array([i], np.int32)}) for i in range(4)]
        start = asyncio.get_running_loop().time()
        results = await asyncio.gather(*(collect(backend_server, r) for r in reqs))
        elapsed = asyncio.get_running_loop().time() - start
        assert [int(r[0].output("Y").data[0]) for r in results] == [1, 2, 3, 4]
        assert elapsed < 1.0, elapsed  # 4 x 0.3 s would take 1.2 s on one instance

    backend_server.run(run())


def test_rescheduling_decoupled(backend_server):
    resps = backend_server.run(collect(backend_server, make_request("resched", {"IN": np.array([3], np.int32)}, id="r1")))
    assert [int(r.output("OUT").data[0]) for r in resps] == [2, 1, 0]
    assert resps[-1].final and all(not r.final for r in resps[:-1])


def test_rescheduling_default_mode(backend_server):
    [resp] = backend_server.run(collect(backend_server, make_request("resched_default", {"IN": np.array([3], np.int32)}, id="q")))
    assert int(resp.output("RUNS").data[0]) == 3


def test_model_modules_are_isolated(backend_server):
    [a] = backend_server.run(collect(backend_server, make_request("helper_a", {"X": np.array([1], np.int32)})))
    [b] = backend_server.run(collect(backend_server, make_request("helper_b", {"X": np.array([1], np.int32)})))
    assert a.output("Y").data[0] == b"HELPER_A|helper_a_0|CPU"
    assert b.output("Y").data[0] == b"HELPER_B|helper_b_0|CPU"


def test_imports_inside_initialize_and_execute_find_the_models_own_modules(backend_server):
    """lazy_import imports helper, lib.tools and (relatively) lib.case only when called;
    helper_a and helper_b have same-named modules of their own."""
    def ask(model):
        [resp] = backend_server.run(collect(backend_server, make_request(model, {"X": np.array([1], np.int32)})))
        assert resp.error is None, resp.error
        return resp.output("Y").data[0]

    for _ in range(2):  # the second round is served from each model's module table
        assert ask("lazy_import") == b"LAZY!|lazy"
        assert ask("helper_a") == b"HELPER_A|helper_a_0|CPU"
        assert ask("helper_b") == b"HELPER_B|helper_b_0|CPU"
    import sys

    assert "helper" not in sys.modules and "lib" not in sys.modules


def test_bad_inputs_raise_before_first_response(backend_server):
    from llmserve.core.errors import InvalidArgument

    a = np.ones((1, 4), np.float32)
    with pytest.raises(InvalidArgument, match="INPUT1"):
        backend_server.run(collect(backend_server, make_request("add_sub", {"INPUT0": a})))
    with pytest.raises(InvalidArgument, match="unexpected shape"):
        backend_server.run(collect(backend_server, make_request("add_sub", {"INPUT0": np.ones((1, 3), np.float32), "INPUT1": np.ones((1, 3), np.float32)})))
    with pytest.raises(InvalidArgument, match="data-type"):
        backend_server.run(collect(backend_server, make_request("add_sub", {"INPUT0": a.astype(np.float64), "INPUT1": a})))
    with pytest.raises(InvalidArgument, match="unknown model"):
        backend_server.run(collect(backend_server, make_request("nope", {"INPUT0": a})))


def test_a_models_namespace_package_stays_in_its_table(tmp_path):
    """A `lib/` folder without __init__.py (tensorrtllm_backend's tensorrt_llm_bls has one)
    is a namespace package with no __file__: it must join the model's table and leave
    sys.modules, or the next model's `lib` imports would find it."""
    import sys

    from llmserve.backends.python.loader import import_model_module

    folder = tmp_path / "ns_model" / "1"
    (folder / "lib").mkdir(parents=True)
    (folder / "lib" / "tools.py").write_text("VALUE = 'mine'\n")
    (folder / "model.py").write_text("from lib.tools import VALUE\n")
    module = import_model_module(folder / "model.py", "ns_model", 1)
    assert module.VALUE == "mine"
    assert "lib" not in sys.modules and "lib.tools" not in sys.modules


def _stub_mode(server) -> bool:
    return server.options.backend_config["python"]["execution-mode"] == "stub"


def test_large_inputs_reach_a_stub_without_a_copy(backend_server):
    """A stub reads a large input as a numpy view of shared memory (torch's DLPack view is
    the same memory); its output comes back the same way, and the blocks are returned."""
    for size in (1 << 18, 3 << 20):  # the second outgrows the first 1 MiB segment
        x = np.random.rand(size).astype(np.float32)
        [resp] = backend_server.run(collect(backend_server, make_request("shm_probe", {"X": x})))
        assert resp.error is None, resp.error
        np.testing.assert_array_equal(resp.output("Y").data, x + 1)
        over_shm, dlpack_shares, writable = resp.output("INFO").data.tolist()
        assert dlpack_shares and writable
        assert over_shm == _stub_mode(backend_server)
    if _stub_mode(backend_server):
        [inst] = backend_server.models.resolve("shm_probe")._instances
        del resp
        deadline = time.monotonic() + 5
        while inst.link.arena.in_use():  # the stub gives the input blocks back
            assert time.monotonic() < deadline, inst.link.arena.in_use()
            time.sleep(0.05)
        assert inst.link.arena.size() >= (1 << 20) + (3 << 20)


def test_model_control_from_inside_a_model(backend_server):
    def ask(mode):
        [resp] = backend_server.run(collect(backend_server, make_request("control", {"MODE": np.array([mode])})))
        assert resp.error is None, resp.error
        return resp.output("OUT").data[0].decode()

    assert ask("ready:add_sub") == "True"
    assert ask("ready:no_such_model") == "False"
    # this server's control mode is none: the server's refusal reaches the model as is
    assert ask("load:add_sub") == "explicit model load / unload is not allowed in model control mode 'none'"
    assert ask("unload:add_sub").startswith("explicit model load / unload is not allowed")


def test_a_models_own_is_ready_decides_its_readiness(backend_server):
    assert backend_server.model_ready("add_sub")
    assert not backend_server.model_ready("not_ready")


def test_finished_requests_and_bls_calls_leave_no_reference_cycles(backend_server):
    """A decoupled model's request (its state and response sender) and a decoupled BLS
    call walked to its end (its iterator, its responses, the callback it left on the
    calling request's cancellation) are freed by reference counting in the model's
    process, not left as cycles for the garbage collector (core/gc_freeze.py)."""
    def ask(mode):
        resps = backend_server.run(collect(backend_server, make_request(
            "gc_probe", {"MODE": np.array([mode])})))
        assert resps[-1].final and resps[0].error is None, resps[0].error
        return int(resps[0].output("COUNT").data[0])

    ask("bls")  # the first call may fill caches that live on
    ask("start")
    assert [ask("bls") for _ in range(3)] == [3, 3, 3]
    assert ask("count") == 0
