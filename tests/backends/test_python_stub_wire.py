"""The server <-> stub wire without processes: framed messages over a socket pair (tensors
as out-of-band buffers, file descriptors, the writer's backlog, plain data only), the
shared-memory arena and the peer's views, the Python backend's settings."""

import gc
import os
import pickle
import socket
import threading

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from llmserve.backends.python.stub_channel import Channel, ChannelClosed
from llmserve.backends.python.stub_settings import (
    MIB,
    PythonBackendSettings,
    execution_mode,
    parse_settings,
)
from llmserve.backends.python.stub_shm import (
    INLINE_MAX_BYTES,
    Arena,
    PeerSegments,
    pack_tensor,
    unpack_tensor,
)
from llmserve.core.errors import InvalidArgument


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    left, right = Channel(a), Channel(b)
    yield left, right
    left.close()
    right.close()


def test_tensors_arrive_as_writable_views_of_the_received_frame(pair):
    left, right = pair
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    empty = np.zeros((0, 5), np.int64)
    left.send(("t", {"k": [1, 2.5, None, "s", b"b"]}, pickle.PickleBuffer(data),
               pickle.PickleBuffer(empty)))
    kind, plain, buf, nothing = right.recv()
    assert (kind, plain) == ("t", {"k": [1, 2.5, None, "s", b"b"]})
    got = np.frombuffer(buf, np.float32).reshape(3, 4)
    np.testing.assert_array_equal(got, data)
    assert got.flags.writeable and got.ctypes.data % 16 == 0
    assert nothing.nbytes == 0


def test_file_descriptors_travel_with_their_message(pair):
    left, right = pair
    fd = os.memfd_create("probe")
    os.write(fd, b"shared")
    left.send(("seg", 0, 6), (fd,))
    os.close(fd)
    assert right.recv() == ("seg", 0, 6)
    received = right.take_fd()
    assert os.pread(received, 6, 0) == b"shared"
    os.close(received)


def test_a_message_naming_a_class_is_refused(pair):
    left, right = pair
    left.send(("evil", InvalidArgument("x")))  # pickles as a class reference
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        right.recv()


def test_a_send_the_socket_cannot_take_queues_without_blocking_and_keeps_order(pair):
    left, right = pair
    big = np.ones(8 << 20, np.uint8)  # far more than a socket buffer holds
    done = threading.Event()

    def send() -> None:
        left.send(("big", pickle.PickleBuffer(big)))
        left.send(("after",))
        done.set()

    threading.Thread(target=send).start()
    assert done.wait(5), "send blocked on a peer that does not read"
    kind, buf = right.recv()
    assert kind == "big" and buf.nbytes == big.nbytes and bytes(buf[-3:]) == b"\x01\x01\x01"
    assert right.recv() == ("after",)


def test_end_of_file_is_channel_closed(pair):
    left, right = pair
    left.close()
    with pytest.raises(ChannelClosed):
        right.recv()


def test_arena_reuses_freed_blocks_and_grows_by_segments():
    announced = []
    arena = Arena("t_", MIB, MIB, lambda seg, size, fd: announced.append((seg, size)))
    a = arena.alloc(600_000)
    b = arena.alloc(300_000)
    assert announced == [(0, MIB)] and (a[0], b[0]) == (0, 0)
    c = arena.alloc(2 * MIB)  # does not fit: a segment of its own size
    assert announced[-1] == (1, 2 * MIB) and c[:2] == (1, 0)
    arena.free([(a[0], a[1]), (b[0], b[1])])
    d = arena.alloc(900_000)  # the two freed neighbours merged into one block
    assert d[:2] == (0, 0) and len(announced) == 2
    arena.free([(d[0], d[1]), (c[0], c[1])])
    assert arena.in_use() == 0 and arena.size() == 3 * MIB
    arena.close()


def test_a_peer_view_returns_its_block_when_the_last_array_goes():
    peer = PeerSegments()
    arena = Arena("o_", MIB, MIB, lambda seg, size, fd: peer.add(seg, size, os.dup(fd)))
    data = np.arange(INLINE_MAX_BYTES, dtype=np.float64)  # over the inline limit
    wire = pack_tensor("x", "FP64", data, arena)
    assert wire[4][0] == "s"
    name, datatype, got = unpack_tensor(wire, peer)
    assert (name, datatype) == ("x", "FP64")
    np.testing.assert_array_equal(got, data)
    arena_view = np.frombuffer(arena._segments[0].mm, np.float64, data.size, wire[4][2])
    arena_view[0] = -1.0  # the peer's array is the very same memory
    assert got[0] == -1.0
    view = got[10:20]  # a view keeps the block
    del got
    gc.collect()
    assert not peer.released
    del view
    gc.collect()
    assert peer.take_released() == [(wire[4][1], wire[4][2])]
    small = pack_tensor("s", "INT32", np.arange(4, dtype=np.int32), arena)
    assert isinstance(small[4], pickle.PickleBuffer)  # small tensors ride inline
    arena.close()


def test_settings_default_to_tritons_and_check_values():
    assert parse_settings({}) == PythonBackendSettings()
    s = parse_settings({"shm-default-byte-size": str(4 * MIB), "shm-growth-byte-size": "4096",
                        "stub-timeout-seconds": "5", "shm-region-prefix-name": "p_",
                        "thread-pool-size": "2", "execution-mode": "in-process"})
    assert (s.shm_default_byte_size, s.shm_growth_byte_size, s.stub_timeout_seconds) == (
        4 * MIB, 4096, 5.0)
    assert (s.shm_region_prefix_name, s.thread_pool_size, s.execution_mode) == ("p_", 2, "in_process")
    with pytest.raises(InvalidArgument, match="must at least contain one character"):
        parse_settings({"shm-region-prefix-name": ""})
    with pytest.raises(InvalidArgument, match="not an integer"):
        parse_settings({"stub-timeout-seconds": "soon"})


def test_execution_mode_per_model():
    config = mc.ModelConfig(name="m")
    assert execution_mode(config, PythonBackendSettings()) == "stub"
    assert execution_mode(config, PythonBackendSettings(execution_mode="in_process")) == "in_process"
    config.parameters["PYTHON_EXECUTION_MODE"].string_value = "in_process"
    assert execution_mode(config, PythonBackendSettings()) == "in_process"
    config.parameters["EXECUTION_ENV_PATH"].string_value = "/envs/a"
    with pytest.raises(InvalidArgument, match="needs its own interpreter"):
        execution_mode(config, PythonBackendSettings())
    del config.parameters["PYTHON_EXECUTION_MODE"]
    assert execution_mode(config, PythonBackendSettings(execution_mode="in_process")) == "stub"


def test_read_notes_ride_with_the_next_message_and_reach_the_calls_sink():
    """A stub notes each BLS response its model takes; the notes leave in the same write
    as its next message (or with the periodic flush), and the server's services call the
    read() of each call's sink, once per note."""
    from llmserve.backends.python.stub_link import Link
    from llmserve.backends.python.stub_services import StubServices

    a, b = socket.socketpair()
    stub = Link(Channel(a), "test_reads", MIB, MIB)
    server = Link(Channel(b), "test_reads_srv", MIB, MIB)
    try:
        stub.note_read(7)
        stub.note_read(7)
        stub.note_read(9)
        stub.send(("log", "x", 20, "text"))
        assert server.channel.recv() == ("bls_read", [7, 7, 9])
        assert server.channel.recv() == ("log", "x", 20, "text")
        stub.note_read(9)
        stub.flush_notes()
        assert server.channel.recv() == ("bls_read", [9])

        services = StubServices(None, "m", server, None)
        reads: list[int] = []
        services._reads = {7: lambda: reads.append(7), 9: lambda: reads.append(9)}
        services.handle(("bls_read", [7, 7, 9, 11]))  # 11: a call that already ended
        assert reads == [7, 7, 9]
    finally:
        stub.close()
        server.close()
