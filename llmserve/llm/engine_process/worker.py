"""The engine process: one Executor and its engine loop, serving the server's messages.

Run as `python -m llmserve.llm.engine_process.worker` by EngineProcessExecutor. The main
thread receives requests, cancels and queries and answers them at once; the engine
thread steps the executor and sends each step's responses as one StepOutputs message.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import zmq

from llmserve.core.gc_freeze import freeze_loaded_heap
from llmserve.llm.engine_process import messages as m
from llmserve.llm.engine_process.channel import (
    RANKS_FAILED_EXIT,
    watch_parent,
    worker_sockets,
)
from llmserve.llm.executor import Executor

logger = logging.getLogger("llmserve.engine_process")

_RANKS_FAILED_LINGER_S = 0.5
QUERIES = frozenset({"get_latest_iteration_stats", "get_latest_request_stats",
                     "get_kv_cache_stats", "get_current_stats"})


class Outbox:
    """The socket to the server, shared by the main thread (replies) and the engine
    thread (step outputs). Holding `lock` across an enqueue and its reply keeps the
    reply ahead of the request's first responses."""

    def __init__(self, sock: zmq.Socket):
        self.sock = sock
        self.lock = threading.Lock()

    def send(self, message) -> None:
        frame = m.encode(message)
        with self.lock:
            self.sock.send(frame)

    def send_locked(self, message) -> None:
        self.sock.send(m.encode(message))


class _StepRouter:
    """Stands in for the executor's ResponseRouter: collects what a step delivers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list = []

    def register(self, request_id: int) -> None:
        return None

    def deliver(self, response) -> None:
        with self._lock:
            self._items.append(response)

    def take(self) -> list:
        with self._lock:
            items, self._items = self._items, []
        return items


class EngineExecutor(Executor):
    """The real Executor whose responses leave as one message per flush (per step)."""

    def __init__(self, init: m.Init, outbox: Outbox):
        self._outbox = outbox
        super().__init__(init.model_path, init.model_type, init.config)

    def _build(self, model_path, runner) -> None:
        super()._build(model_path, runner)
        self._router = _StepRouter()
        self._ranks_failed: str | None = None
        if hasattr(self.runner, "on_failure"):  # tensor parallelism's ranks
            self.runner.on_failure = self._on_ranks_failed

    def _on_ranks_failed(self, reason: str) -> None:
        self._ranks_failed = reason

    def _flush(self) -> None:
        super()._flush()
        self.publish()
        if self._ranks_failed is not None:
            # this engine cannot step any more: its requests have their errors; leaving
            # lets the server mark the model UNAVAILABLE (the exit code says why)
            logger.error("%s; the engine process exits", self._ranks_failed)
            time.sleep(_RANKS_FAILED_LINGER_S)  # let ZMQ's I/O thread send those errors
            logging.shutdown()
            os._exit(RANKS_FAILED_EXIT)

    def _crashed(self, exc: BaseException) -> None:
        super()._crashed(exc)
        self.publish()

    def publish(self) -> None:
        # taken and sent under one lock: two threads publishing never swap batches
        with self._outbox.lock:
            responses = self._router.take()
            if responses:
                self._outbox.send_locked(m.StepOutputs(responses))

    def info(self) -> m.EngineInfo:
        return m.EngineInfo(os.getpid(), self.vocab_size, self.max_seq_len,
                            self.max_batch_size, self.max_num_tokens, self.tokens_per_block)


def serve(executor: EngineExecutor, pull: zmq.Socket, outbox: Outbox) -> None:
    """Answer the server's messages until Shutdown."""
    while True:
        msg = m.decode(pull.recv())
        if isinstance(msg, m.CancelRequest):
            executor.cancel_request(msg.request_id)
        elif isinstance(msg, m.EnqueueRequests):
            _enqueue(executor, msg, outbox)
        elif isinstance(msg, m.Query):
            _query(executor, msg, outbox)
        elif isinstance(msg, m.Shutdown):
            executor.shutdown(msg.wait_for_requests, msg.timeout_s)
            outbox.send(m.Reply(msg.call))
            return
        else:
            logger.error("unexpected message %s", type(msg).__name__)


def _enqueue(executor: EngineExecutor, msg: m.EnqueueRequests, outbox: Outbox) -> None:
    reply = m.EnqueueReply(msg.call, [])
    with outbox.lock:
        for request in msg.requests:
            try:
                reply.ids.append(executor.enqueue_request(request))
            except Exception as exc:  # noqa: BLE001 - raised again in the server
                reply.error = m.wire_error(exc)
                break
        outbox.send_locked(reply)
    executor.publish()  # an error answer the enqueue itself delivered


def _query(executor: EngineExecutor, msg: m.Query, outbox: Outbox) -> None:
    reply = m.Reply(msg.call)
    try:
        if msg.method not in QUERIES:
            raise ValueError(f"unknown query {msg.method!r}")
        reply.value = getattr(executor, msg.method)()
    except Exception as exc:  # noqa: BLE001 - raised again in the server
        reply.error = m.wire_error(exc)
    outbox.send(reply)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="llmserve.llm.engine_process.worker")
    p.add_argument("--channel", required=True)
    p.add_argument("--lifeline", type=int, required=True)
    p.add_argument("--alive", type=int, required=True)
    p.add_argument("--name", default="llm")
    p.add_argument("--log-level", type=int, default=logging.INFO)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    # the server decides when the engine stops: Ctrl-C in a terminal reaches the whole
    # process group, and the server's shutdown then stops this process in order
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname).1s engine[{args.name}] "
                               "%(name)s] %(message)s")

    folder = Path(args.channel)

    def parent_gone() -> None:
        logger.warning("the server process is gone; the engine process exits")
        shutil.rmtree(folder, ignore_errors=True)  # the server could not
        os._exit(0)

    watch_parent(args.lifeline, parent_gone)
    ctx = zmq.Context()
    push, pull = worker_sockets(ctx, folder)
    outbox = Outbox(push)
    init = m.decode((folder / m.INIT_FILE).read_bytes())
    try:
        executor = EngineExecutor(init, outbox)
    except BaseException as exc:  # noqa: BLE001 - the load's error goes to the server
        logger.error("engine load failed: %s", exc)
        outbox.send(m.LoadFailed(m.wire_error(exc)))
        _exit(ctx, 1)
    info = executor.info()
    info.gc_frozen = freeze_loaded_heap("engine process")
    outbox.send(m.Ready(info))
    logger.info("engine process %d ready for '%s'", os.getpid(), init.model_path)
    try:
        serve(executor, pull, outbox)
    except BaseException:
        logger.exception("engine process failed")
        _exit(ctx, 1)
    _exit(ctx, 0)


def _exit(ctx: zmq.Context, code: int) -> None:
    # deliver what was sent, then leave without the interpreter's teardown (torch's
    # threads can make it slow)
    ctx.destroy(linger=5000)
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    main()
