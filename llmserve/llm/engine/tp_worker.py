"""A tensor-parallel worker rank (1..N-1): its own Python process, started by rank 0's
TensorParallelRunner with `python -m llmserve.llm.engine.tp_worker FD`. It loads its
shard, joins the process group and then runs, in order, the runner calls rank 0 sends
over the socket FD; the collectives inside forward keep the ranks in step."""

from __future__ import annotations

import logging
import os
import sys
from multiprocessing.connection import Connection

import torch

logger = logging.getLogger("llmserve.llm.engine.tp_worker")

# the runner methods rank 0 may call here (everything that touches weights or the cache)
CALLS = frozenset({"forward", "allocate_kv_cache", "set_attention_windows",
                   "allocate_host_kv_cache", "offload_block", "onboard_block", "copy_blocks"})


def _error(exc: BaseException) -> tuple[str, str, str]:
    return ("error", type(exc).__name__, str(exc) or repr(exc))


def _serve(conn: Connection, runner) -> None:
    while True:
        message = conn.recv()
        if message[0] == "close":
            return
        _, name, args, reply = message
        if name not in CALLS:
            raise ValueError(f"tensor-parallel worker: unknown call '{name}'")
        getattr(runner, name)(*args)
        if reply:
            conn.send(("ok",))


def _start(conn: Connection) -> None:
    from llmserve.llm.engine.runner import ModelRunner
    from llmserve.llm.engine.tensor_parallel import ProcessGroup, Shard

    kind, init = conn.recv()
    assert kind == "init", kind
    torch.set_num_threads(init["threads"])
    shard = Shard(init["rank"], init["size"])
    runner = ModelRunner(init["model_path"], dtype=init["dtype"], device=init["device"],
                         weight_only_precision=init["weight_only_precision"], shard=shard)
    conn.send(("loaded",))
    kind = conn.recv()[0]
    if kind != "join":  # rank 0 gave up (another rank failed)
        return
    runner.model.group = ProcessGroup(init["port"], shard, runner.device, init["timeout_s"])
    conn.send(("ready",))
    _serve(conn, runner)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=os.environ.get("LLMSERVE_TP_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s tp-worker %(levelname)s %(name)s: %(message)s")
    conn = Connection(int(args[0]))
    try:
        _start(conn)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return 0  # rank 0 is gone: nothing left to serve
    except BaseException as exc:  # noqa: BLE001 - reported to rank 0, then this rank ends
        logger.exception("tensor-parallel worker failed")
        try:
            conn.send(_error(exc))
        except OSError:
            pass
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
