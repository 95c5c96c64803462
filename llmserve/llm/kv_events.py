"""KV cache events in vLLM's format, for KV-aware routers (NVIDIA Dynamo, llm-d):
BlockStored when full blocks enter the prefix cache, BlockRemoved when they are evicted,
AllBlocksCleared on a reset. Each engine step's events go out as one batch
{ts, events, data_parallel_rank}, msgpack-encoded, over a ZMQ PUB socket as the frames
(topic, 8-byte big-endian sequence number, payload); a ROUTER socket replays buffered
batches from a sequence number, ending with sequence -1 and an empty payload."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from itertools import count
from typing import Any

logger = logging.getLogger(__name__)

MEDIUM = "GPU"  # vLLM's name for the device tier, also used on CPU engines
HOST_MEDIUM = "CPU"  # vLLM's name for blocks offloaded to host memory
_MASK = (1 << 64) - 1
END_SEQ = (-1).to_bytes(8, "big", signed=True)


def external_hash(block_hash: int) -> int:
    """Block hashes on the wire are unsigned 64-bit integers."""
    return block_hash & _MASK


@dataclass(slots=True)
class KvEventsConfig:
    """vLLM's --kv-events-config keys."""

    enable_kv_cache_events: bool = False
    publisher: str = "zmq"  # zmq | null
    endpoint: str = "tcp://*:5557"
    replay_endpoint: str | None = None
    buffer_steps: int = 10_000
    hwm: int = 100_000
    max_queue_size: int = 100_000
    topic: str = ""
    data_parallel_rank: int = 0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> KvEventsConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown kv events setting(s): {', '.join(unknown)}")
        return cls(**values)


def block_stored(hashes: list[int], parent: int | None, token_ids: list[int],
                 block_size: int, lora_id: int | None, medium: str = MEDIUM) -> dict[str, Any]:
    return {"type": "BlockStored", "block_hashes": [external_hash(h) for h in hashes],
            "parent_block_hash": None if parent is None else external_hash(parent),
            "token_ids": token_ids, "block_size": block_size, "lora_id": lora_id,
            "medium": medium, "lora_name": None if lora_id is None else str(lora_id)}


def block_removed(hashes: list[int], medium: str = MEDIUM) -> dict[str, Any]:
    return {"type": "BlockRemoved", "block_hashes": [external_hash(h) for h in hashes],
            "medium": medium}


def all_blocks_cleared() -> dict[str, Any]:
    return {"type": "AllBlocksCleared"}


class ZmqEventPublisher:
    """Publishes event batches from a thread of its own, so the engine step never waits."""

    def __init__(self, config: KvEventsConfig) -> None:
        import msgpack
        import zmq

        self._pack = msgpack.Packer(use_bin_type=True)
        self._rank = config.data_parallel_rank
        self._topic = config.topic.encode()
        self._queue: queue.Queue[dict | None] = queue.Queue(maxsize=config.max_queue_size)
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=max(1, config.buffer_steps))
        self._seq = count()
        self._ctx = zmq.Context.instance()
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.set_hwm(config.hwm)
        endpoint = config.endpoint
        # vLLM's rule: bind a wildcard/ipc/inproc address, connect to anything else
        if "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://")):
            self._pub.bind(endpoint)
        else:
            self._pub.connect(endpoint)
        self._replay = None
        if config.replay_endpoint:
            self._replay = self._ctx.socket(zmq.ROUTER)
            self._replay.bind(config.replay_endpoint)
        self.endpoint = self._pub.getsockopt_string(zmq.LAST_ENDPOINT) or endpoint
        self._running = True
        self._thread = threading.Thread(target=self._run, name="kv-events", daemon=True)
        self._thread.start()
        logger.info("KV cache events published on %s (topic %r)", self.endpoint, config.topic)

    def publish(self, events: list[dict[str, Any]]) -> None:
        batch = {"ts": time.time(), "events": events, "data_parallel_rank": self._rank}
        try:
            self._queue.put_nowait(batch)
        except queue.Full:
            logger.warning("KV events queue is full; a batch of %d events was dropped",
                           len(events))

    def shutdown(self) -> None:
        self._running = False
        self._queue.put(None)
        self._thread.join(timeout=2)
        self._pub.close(linger=0)
        if self._replay is not None:
            self._replay.close(linger=0)

    def _run(self) -> None:
        while self._running or not self._queue.empty():
            if self._replay is not None and self._replay.poll(0):
                try:
                    self._serve_replay()
                except Exception:
                    logger.exception("KV events replay failed")
            try:
                batch = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if batch is None:
                break
            seq = next(self._seq)
            payload = self._pack.pack(batch)
            self._pub.send_multipart((self._topic, seq.to_bytes(8, "big"), payload))
            self._buffer.append((seq, payload))

    def _serve_replay(self) -> None:
        assert self._replay is not None
        frames = self._replay.recv_multipart()
        if len(frames) != 3:
            logger.warning("invalid KV events replay request (%d frames)", len(frames))
            return
        client, _, start = frames
        first = int.from_bytes(start, "big")
        for seq, payload in list(self._buffer):
            if seq >= first:
                self._replay.send_multipart((client, b"", seq.to_bytes(8, "big"), payload))
        self._replay.send_multipart((client, b"", END_SEQ, b""))


def make_publisher(config: KvEventsConfig | None) -> ZmqEventPublisher | None:
    if config is None or not config.enable_kv_cache_events or config.publisher == "null":
        return None
    if config.publisher != "zmq":
        raise ValueError(f"unknown KV events publisher '{config.publisher}' (zmq or null)")
    return ZmqEventPublisher(config)
