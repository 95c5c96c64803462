"""KV cache events in vLLM's format over ZMQ: a subscriber that rebuilds the executor's
prefix cache from BlockStored/BlockRemoved/AllBlocksCleared matches the block manager's own
cache, and the replay socket resends buffered batches from a sequence number."""

from __future__ import annotations

import msgpack
import pytest
import zmq
from executor_helpers import greedy_request, prompt, run, wait_idle

from llmserve.llm import KvEventsConfig
from llmserve.llm.kv_events import END_SEQ, external_hash


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Subscriber:
    def __init__(self, endpoint: str, topic: bytes = b"kv"):
        self.sock = zmq.Context.instance().socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        self.sock.connect(endpoint)
        self.blocks: set[int] = set()
        self.seqs: list[int] = []

    def drain(self, timeout_ms: int = 1500) -> list[dict]:
        batches = []
        while self.sock.poll(timeout_ms):
            topic, seq, payload = self.sock.recv_multipart()
            self.seqs.append(int.from_bytes(seq, "big"))
            batch = msgpack.unpackb(payload)
            batches.append(batch)
            for event in batch["events"]:
                if event["type"] == "BlockStored":
                    self.blocks.update(event["block_hashes"])
                elif event["type"] == "BlockRemoved":
                    self.blocks.difference_update(event["block_hashes"])
                elif event["type"] == "AllBlocksCleared":
                    self.blocks.clear()
            timeout_ms = 300
        return batches

    def close(self) -> None:
        self.sock.close(linger=0)


@pytest.fixture
def events_executor(make_executor, tmp_path):
    # an ipc:// endpoint binds (vLLM's rule: bind wildcard/ipc addresses, connect others)
    endpoint = f"ipc://{tmp_path}/kv-events"
    replay = f"tcp://127.0.0.1:{_free_port()}"
    config = KvEventsConfig(enable_kv_cache_events=True, endpoint=endpoint,
                            replay_endpoint=replay, topic="kv")
    ex = make_executor(kv_tokens=160, reuse=True, kv_events_config=config)
    sub = Subscriber(endpoint)
    yield ex, sub, replay
    sub.close()


def _cached(ex) -> set[int]:
    return {external_hash(h) for h in ex.block_manager.cached}


def test_subscriber_rebuilds_the_prefix_cache(events_executor):
    ex, sub, _ = events_executor
    import time

    time.sleep(0.2)  # the SUB socket's subscription reaches the publisher
    shared = prompt(40, 1)
    run(ex, [greedy_request(shared + prompt(9, 2), 4)])
    run(ex, [greedy_request(shared + prompt(9, 3), 4)])  # reuses the shared blocks
    wait_idle(ex)
    batches = sub.drain()
    stored = [e for b in batches for e in b["events"] if e["type"] == "BlockStored"]
    assert stored and all(e["block_size"] == 8 and e["medium"] == "GPU" for e in stored)
    assert len(stored[0]["token_ids"]) == 8 * len(stored[0]["block_hashes"])
    assert sub.blocks == _cached(ex) and sub.blocks
    # 160 tokens of KV cache: new long prompts evict cached blocks (BlockRemoved)
    for seed in range(4, 9):
        run(ex, [greedy_request(prompt(60, seed), 4)])
    wait_idle(ex)
    batches = sub.drain()
    assert any(e["type"] == "BlockRemoved" for b in batches for e in b["events"])
    assert sub.blocks == _cached(ex)
    assert sub.seqs == list(range(len(sub.seqs)))  # one batch per step, in order


def test_replay_resends_buffered_batches(events_executor):
    ex, sub, replay_endpoint = events_executor
    import time

    time.sleep(0.2)
    run(ex, [greedy_request(prompt(30, 11), 2)])
    wait_idle(ex)
    live = sub.drain()
    assert live
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.connect(replay_endpoint)
    try:
        dealer.send_multipart((b"", (0).to_bytes(8, "big")))
        replayed = []
        while dealer.poll(3000):
            _, seq, payload = dealer.recv_multipart()
            if seq == END_SEQ:
                break
            replayed.append(msgpack.unpackb(payload))
    finally:
        dealer.close(linger=0)
    assert [b["events"] for b in replayed] == [b["events"] for b in live]
