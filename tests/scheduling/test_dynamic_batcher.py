"""Dynamic batching, queue policies, priorities, ordering, reshape and ragged batches,
through InferenceServer with Python test models."""

import asyncio

import numpy as np
import pytest
from inproc_server import collect, make_request

from llmserve.core.errors import ErrorCode, InvalidArgument, ServerError


def _x(v, batch=1):
    return {"X": np.full((batch, 1), v, np.int32)}


async def _one(server, model, v, **kw):
    try:
        [resp] = await collect(server, make_request(model, _x(v), **kw))
        return resp
    except ServerError as exc:
        return exc


def test_concurrent_requests_execute_as_one_batch(sched_server):
    async def run():
        before = sched_server.statistics("batcher")["model_stats"][0]["execution_count"]
        resps = await asyncio.gather(*(_one(sched_server, "batcher", i) for i in range(4)))
        assert [int(r.output("Y").data[0, 0]) for r in resps] == [0, 1, 2, 3]
        assert {int(r.output("SEEN").data[0, 0]) for r in resps} == {4}
        for _ in range(100):  # statistics are recorded right after execute returns
            stats = sched_server.statistics("batcher")["model_stats"][0]
            if stats["execution_count"] > before:
                break
            await asyncio.sleep(0.01)
        assert stats["execution_count"] - before == 1
        assert any(b["batch_size"] == 4 for b in stats["batch_stats"])

    sched_server.run(run())


def test_batch_dimension_split_per_request(sched_server):
    async def run():
        reqs = [make_request("batcher", _x(i, batch=i + 1)) for i in range(3)]
        results = await asyncio.gather(*(collect(sched_server, r) for r in reqs))
        for i, [resp] in enumerate(results):
            assert resp.output("Y").data.shape == (i + 1, 1)
            assert (resp.output("Y").data == i).all()
            assert int(resp.output("TOTAL").data[0, 0]) == 6

    sched_server.run(run())


def test_preferred_batch_size_sends_before_delay(sched_server):
    async def run():
        loop = asyncio.get_running_loop()
        start = loop.time()
        resps = await asyncio.gather(*(_one(sched_server, "preferred", i) for i in range(2)))
        assert loop.time() - start < 2.0  # the 5 s delay was not waited out
        assert {int(r.output("SEEN").data[0, 0]) for r in resps} == {2}

    sched_server.run(run())


def test_queue_full_is_rejected(sched_server):
    async def run():
        first = asyncio.create_task(_one(sched_server, "slow_queue", 1))
        await asyncio.sleep(0.1)  # executing now; the queue is empty
        second = asyncio.create_task(_one(sched_server, "slow_queue", 2))
        await asyncio.sleep(0.05)
        third = await _one(sched_server, "slow_queue", 3)
        assert isinstance(third, ServerError) and third.code == ErrorCode.UNAVAILABLE
        assert "Exceeds maximum queue size" in third.message
        assert int((await first).output("Y").data[0, 0]) == 1
        assert int((await second).output("Y").data[0, 0]) == 2

    sched_server.run(run())


def test_queue_timeout_rejects(sched_server):
    async def run():
        first = asyncio.create_task(_one(sched_server, "slow_timeout", 1))
        await asyncio.sleep(0.05)
        second = await _one(sched_server, "slow_timeout", 2)
        assert second.error is not None and second.error.code == ErrorCode.UNAVAILABLE
        assert "Request timeout expired" in second.error.message
        assert (await first).error is None

    sched_server.run(run())


def test_timeout_delay_runs_late_and_override(sched_server):
    async def run():
        first = asyncio.create_task(_one(sched_server, "slow_delay", 1))
        await asyncio.sleep(0.05)
        delayed = asyncio.create_task(_one(sched_server, "slow_delay", 2))  # times out -> delayed
        await asyncio.sleep(0.2)
        patient = asyncio.create_task(_one(sched_server, "slow_delay", 3, timeout_us=10_000_000))
        order = {int(r.output("Y").data[0, 0]): int(r.output("ORDER").data[0, 0])
                 for r in await asyncio.gather(first, delayed, patient)}
        assert order[3] < order[2]  # the delayed request ran after the one still in time

    sched_server.run(run())


def test_priority_levels(sched_server):
    async def run():
        first = asyncio.create_task(_one(sched_server, "slow_priority", 1))
        await asyncio.sleep(0.05)
        low = asyncio.create_task(_one(sched_server, "slow_priority", 2))  # default level 2
        await asyncio.sleep(0.02)
        high = asyncio.create_task(_one(sched_server, "slow_priority", 3, priority=1))
        results = await asyncio.gather(first, low, high)
        order = {int(r.output("Y").data[0, 0]): int(r.output("ORDER").data[0, 0]) for r in results}
        assert order[3] < order[2]
        bad = await _one(sched_server, "slow_priority", 4, priority=7)
        assert isinstance(bad, InvalidArgument)

    sched_server.run(run())


def test_preserve_ordering(sched_server):
    async def run():
        got = []

        async def one(ms):
            [resp] = await collect(sched_server, make_request("ordered", _x(ms)))
            got.append(int(resp.output("Y").data[0, 0]))

        tasks = []
        for ms in (300, 10, 150):
            tasks.append(asyncio.create_task(one(ms)))
            await asyncio.sleep(0.02)
        await asyncio.gather(*tasks)
        assert got == [300, 10, 150]

    sched_server.run(run())


def test_reshape_in_and_out(sched_server):
    req = make_request("reshape", {"X": np.array([[1.5], [2.5]], np.float32),
                                   "M": np.zeros((2, 2, 3), np.float32)})
    [resp] = sched_server.run(collect(sched_server, req))
    np.testing.assert_array_equal(resp.output("SHAPES").data, [[1, 6], [1, 6]])
    assert resp.output("Y").data.shape == (2, 1)
    np.testing.assert_array_equal(resp.output("Y").data, [[3.0], [5.0]])


def test_ragged_batch_groups_different_shapes(sched_server):
    async def run():
        reqs = [make_request("ragged", {"X": np.zeros((1, n), np.int32)}) for n in (1, 2, 3)]
        results = await asyncio.gather(*(collect(sched_server, r) for r in reqs))
        assert [int(r[0].output("LEN").data[0, 0]) for r in results] == [1, 2, 3]
        assert {int(r[0].output("SEEN").data[0, 0]) for r in results} == {3}

    sched_server.run(run())


def test_non_ragged_shapes_not_mixed():
    from tritonclient.grpc import model_config_pb2 as mc

    from llmserve.core.types import Tensor
    from llmserve.scheduling.batcher import RequestQueue
    from llmserve.scheduling.request import ResponseSink, SchedRequest

    cfg = mc.ModelConfig(name="m", max_batch_size=8)
    cfg.dynamic_batching.SetInParent()
    inp = cfg.input.add(name="X", data_type=mc.TYPE_INT32)
    inp.dims.append(-1)
    q = RequestQueue(cfg)
    for n in (2, 2, 3):
        t = Tensor("X", "INT32", np.zeros((1, n), np.int32))
        q.enqueue(SchedRequest(make_request("m", {}), {"X": t}, 1, [], ResponseSink(lambda r: None)))
    assert len(q.next_batch()) == 2
    assert len(q.next_batch()) == 1


def test_batch_size_over_max_rejected(sched_server):
    with pytest.raises(InvalidArgument, match="batch-size must be <= 8"):
        sched_server.run(collect(sched_server, make_request("batcher", _x(1, batch=9))))
