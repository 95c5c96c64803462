"""Ensembles of Python models: chained steps, decoupled steps streaming through, errors."""

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
