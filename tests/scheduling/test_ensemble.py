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
