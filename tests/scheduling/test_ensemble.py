"""Ensembles of Python models: chained steps, decoupled steps streaming through, errors."""

import time

import numpy as np
from inproc_server import collect, make_request


def test_ensemble_chains_steps(sched_server):
    a = np.array([[1, 2, 3, 4]], np.float32)
    b = np.array([[0.5, 0.5, 1, 1]], np.float32)
    [resp] = sched_server.run(collect(sched_server, make_request("ens", {"A": a, "B": b})))
    assert resp.final and resp.error is None
    np.testing.assert_allclose(resp.output("TWO_A").data, 2 * a)
    np.testing.assert_allclose(resp.output("TWO_B").data, 2 * b)
    assert resp.model_name == "ens"


def test_decoupled_step_streams_through_ensemble(sched_server):
    resps = sched_server.run(collect(sched_server, make_request("ens_stream", {"IN": np.array([1, 2, 3], np.int32)})))
    data = [r for r in resps if r.outputs]
    assert [int(r.output("OUT").data[0]) for r in data] == [10, 20, 30]
    assert [int(r.output("IDX").data[0]) for r in data] == [0, 1, 2]
    assert resps[-1].final and all(not r.final for r in data)


def test_ensemble_step_error_names_step(sched_server):
    [resp] = sched_server.run(collect(sched_server, make_request("ens_fail", {"IN": np.array([1], np.int32)})))
    assert resp.error is not None and resp.final
    assert "fail_step" in resp.error.message and "step exploded" in resp.error.message


def test_stream_keeps_its_order_through_a_multi_instance_step(sched_server):
    """repeat streams 1..5; slow_scale (4 instances) finishes the early ones last; the
    ensemble still emits them in the order the decoupled step produced them."""
    values = np.array([1, 2, 3, 4, 5], np.int32)
    resps = sched_server.run(collect(sched_server, make_request("ens_ordered", {"IN": values})))
    data = [r for r in resps if r.outputs]
    assert [int(r.output("OUT").data[0]) for r in data] == [10, 20, 30, 40, 50]
    assert [int(r.output("IDX").data[0]) for r in data] == [0, 1, 2, 3, 4]
    assert resps[-1].final and resps[-1].error is None


def test_a_step_runs_without_an_optional_input_that_upstream_did_not_produce(sched_server):
    """partial_out declares EXTRA but makes it only for negative X; opt_in takes it as an
    optional input. As in Triton, the missing tensor is absent: opt_in still runs, and the
    ensemble's response leaves EXTRA out."""
    [resp] = sched_server.run(collect(sched_server, make_request("ens_optional", {"X": np.array([4], np.int32)})))
    assert resp.error is None and resp.final
    assert int(resp.output("OUT").data[0]) == 50
    assert resp.output("EXTRA") is None
    [resp] = sched_server.run(collect(sched_server, make_request("ens_optional", {"X": np.array([-2], np.int32)})))
    assert int(resp.output("OUT").data[0]) == -10 - 200
    assert int(resp.output("EXTRA").data[0]) == -200


def test_ensemble_requests_are_counted_in_its_statistics(sched_server):
    def counts():
        [stats] = sched_server.statistics("ens", "")["model_stats"]
        return (stats["inference_stats"]["success"]["count"], stats["inference_stats"]["fail"]["count"],
                stats["inference_count"], stats["execution_count"])

    before = counts()
    a = np.array([[1, 2, 3, 4]], np.float32)
    sched_server.run(collect(sched_server, make_request("ens", {"A": a, "B": a})))
    success, fail, inferences, executions = counts()
    assert (success, inferences, executions) == (before[0] + 1, before[2] + 1, before[3] + 1)
    assert fail == before[1]
    [resp] = sched_server.run(collect(sched_server, make_request("ens_fail", {"IN": np.array([1], np.int32)})))
    [stats] = sched_server.statistics("ens_fail", "")["model_stats"]
    assert stats["inference_stats"]["fail"]["count"] >= 1 and stats["inference_stats"]["fail"]["ns"] > 0


def test_a_failed_request_is_logged_with_model_id_and_error(sched_server, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="llmserve.server")
    request = make_request("ens_fail", {"IN": np.array([1], np.int32)})
    request.id = "req-42\r\nforged"
    sched_server.run(collect(sched_server, request))
    lines = [r.getMessage() for r in caplog.records if "request failed" in r.getMessage()]
    assert any("'ens_fail'" in line and "req-42\\r\\nforged" in line and "step exploded" in line
               for line in lines), lines
    assert all("\n" not in line for line in lines)


def test_a_step_is_asked_only_for_outputs_a_later_step_or_the_client_reads():
    """Per streamed token an unread output would be built and dropped: a step asks for
    the outputs other steps take and those the client requested (all when none is read)."""
    from pathlib import Path

    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from llmserve.core.types import InferenceRequest
    from llmserve.scheduling.ensemble import EnsembleRun

    config = text_format.Parse(
        (Path(__file__).parent / "models" / "ens" / "config.pbtxt").read_text(), mc.ModelConfig())
    config.name = "ens"

    class Server:
        def is_decoupled(self, name, version):
            return False

    def asked(output_names):
        run = EnsembleRun(Server(), config, 1, InferenceRequest("ens", {}), {}, output_names)
        return [sorted(o.name for o in outs) for outs in run.step_outputs]

    assert asked(["TWO_A", "TWO_B"]) == [["OUTPUT0", "OUTPUT1"], ["OUTPUT0", "OUTPUT1"]]
    assert asked(["TWO_A"]) == [["OUTPUT0", "OUTPUT1"], ["OUTPUT0"]]


def test_a_streamed_ensemble_leaves_no_step_callbacks_on_the_request(sched_server):
    """Each step of each streamed response hangs a cancel callback on the request; it
    goes when the step ends, so a long stream does not pile them up."""
    request = make_request("ens_stream", {"IN": np.array([1, 2, 3], np.int32)})
    resps = sched_server.run(collect(sched_server, request))
    assert resps[-1].final and resps[-1].error is None
    assert request.cancel._callbacks == []


def _ordered_config():
    from pathlib import Path

    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    config = text_format.Parse(
        (Path(__file__).parent / "models" / "ens_ordered" / "config.pbtxt").read_text(),
        mc.ModelConfig())
    config.name = "ens_ordered"
    return config


class _OrderedServer:
    """ens_ordered's two steps without models: `repeat` streams its input's values at
    once, `slow_scale` takes 10 ms; active = [running slow_scale steps, most at once]."""

    def __init__(self, log: list[str] | None = None):
        self.log = log if log is not None else []
        self.active = [0, 0]

    def is_decoupled(self, name, version):
        return name == "repeat"

    async def infer_internal(self, request):
        import asyncio

        from llmserve.core.types import InferenceResponse, Tensor

        if request.model_name == "repeat":
            for i, v in enumerate(request.inputs["IN"].data.tolist()):
                self.log.append(f"up {v}")
                yield InferenceResponse("repeat", 1, "", [
                    Tensor("OUT", "INT32", np.array([v], np.int32)),
                    Tensor("IDX", "UINT32", np.array([i], np.uint32))], final=False)
            yield InferenceResponse("repeat", 1, "", [], final=True)
            return
        self.active[0] += 1
        self.active[1] = max(self.active)
        await asyncio.sleep(0.01)
        self.active[0] -= 1
        yield InferenceResponse("slow_scale", 1, "", [
            Tensor("Y", "INT32", request.inputs["X"].data * 10)])


def test_a_decoupled_step_is_paced_by_the_ensembles_reader():
    """The next response of a decoupled step goes down the pipeline only once the previous
    one has been through it and its ensemble response was read: one postprocessing per
    stream at a time, in order, so a producer that merges its tokens (tensorrt_llm) can
    do so while the reader is behind. Nothing is lost or reordered."""
    import asyncio

    from llmserve.core.types import InferenceRequest, Tensor
    from llmserve.scheduling.ensemble import EnsembleRun

    config = _ordered_config()
    log: list[str] = []
    server = _OrderedServer(log)

    async def read_slowly():
        inputs = {"IN": Tensor("IN", "INT32", np.array([1, 2, 3, 4], np.int32))}
        run = EnsembleRun(server, config, 1, InferenceRequest("ens_ordered", inputs), inputs,
                          ["OUT", "IDX"])
        got = []
        async for resp in run.responses():
            if resp.outputs:
                got.append(int(resp.output("OUT").data[0]))
                log.append(f"read {got[-1]}")
                await asyncio.sleep(0.02)  # a slow reader
        return got

    assert asyncio.run(read_slowly()) == [10, 20, 30, 40]
    assert server.active[1] == 1
    # the upstream's next response is taken only after the previous one was read
    assert log == ["up 1", "read 10", "up 2", "read 20", "up 3", "read 30", "up 4", "read 40"]


def test_max_inflight_requests_bounds_each_step_across_requests():
    """ensemble_scheduling.max_inflight_requests (Triton): at most N requests in flight
    at each step, shared by all of the ensemble's requests; without it, no bound."""
    import asyncio

    from llmserve.core.types import InferenceRequest, Tensor
    from llmserve.scheduling.ensemble import EnsembleRun
    from llmserve.scheduling.step_limiter import limiters_for

    config = _ordered_config()

    def most_at_once(limit: int) -> int:
        config.ensemble_scheduling.max_inflight_requests = limit
        limiters = limiters_for(config)
        assert (limiters is None) == (limit == 0)
        server = _OrderedServer()

        async def one(n: int) -> list[int]:
            inputs = {"IN": Tensor("IN", "INT32", np.arange(1, n + 1, dtype=np.int32))}
            run = EnsembleRun(server, config, 1, InferenceRequest("ens_ordered", inputs),
                              inputs, ["OUT", "IDX"], limiters)
            return [int(r.output("OUT").data[0]) async for r in run.responses() if r.outputs]

        async def many():
            return await asyncio.gather(*(one(3) for _ in range(6)))

        assert asyncio.run(many()) == [[10, 20, 30]] * 6
        return server.active[1]

    assert most_at_once(0) == 6  # one per stream (paced), every stream at once
    assert most_at_once(2) == 2
    assert most_at_once(1) == 1


def test_finished_requests_leave_no_reference_cycles(sched_server):
    """What a request builds (its scheduler entry, response sink, cancellation callbacks,
    an ensemble's branch per streamed response with its tensors) is freed by reference
    counting when it finishes. A cycle among them would leave one batch of garbage per
    streamed token for the collector, whose full passes stalled a busy server for
    hundreds of ms (core/gc_freeze.py)."""
    import collections
    import gc

    ours = {"SchedRequest", "ResponseSink", "InferenceRequest", "CancellationToken",
            "_Branch", "EnsembleRun", "Tensor"}

    def run_all():
        values = np.array([1, 2, 3, 4, 5], np.int32)
        a = np.array([[1, 2, 3, 4]], np.float32)
        for model, inputs in [("ens_stream", {"IN": values}), ("ens_ordered", {"IN": values}),
                              ("ens", {"A": a, "B": a}), ("repeat", {"IN": values}),
                              ("ens_fail", {"IN": np.array([1], np.int32)})]:
            resps = sched_server.run(collect(sched_server, make_request(model, inputs)))
            assert resps[-1].final

    run_all()  # first requests may fill caches that live on
    time.sleep(0.2)  # the models' threads book their last executions
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        run_all()
        time.sleep(0.2)
        gc.collect()
        kinds = collections.Counter(type(o).__name__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert {k: n for k, n in kinds.items() if k in ours} == {}
