"""TensorParallelRunner: the ModelRunner contract over a model split across
tensor_parallel_size ranks. Rank 0 runs in the executor's process (its scheduler and
sampler see one runner); ranks 1..N-1 are worker processes (tp_worker.py) started with a
fresh interpreter, never forked from this threaded one. Each call that touches weights
or the KV cache goes to every worker over its own socket (pickled, in order), then runs
here; a forward's all-reduces keep the ranks in step."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import torch

from llmserve.child_command import child_env, module_command
from llmserve.core import errors
from llmserve.core.errors import ServerError, Unavailable

from .attention import SeqChunk
from .config import ArchConfig, load_arch_config
from .runner import ModelRunner
from .tensor_parallel import (
    ProcessGroup,
    Shard,
    check_divisible,
    collective_timeout_s,
    master_store,
    rank_devices,
)

logger = logging.getLogger(__name__)

_POLL_S = 0.1
_CLOSE_WAIT_S = 5.0


class _Worker:
    """One worker rank's process and the socket to it."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        ours, theirs = socket.socketpair()
        with theirs:  # the child imports this very llmserve, wherever it was imported from
            self.proc = subprocess.Popen(
                module_command(sys.executable, "llmserve.llm.engine.tp_worker",
                               str(theirs.fileno())),
                pass_fds=(theirs.fileno(),), env=child_env(), stdin=subprocess.DEVNULL)
        self.conn = Connection(ours.detach())

    def send(self, message: tuple) -> None:
        self.conn.send(message)

    def expect(self, kind: str) -> None:
        """Waits for `kind` from the worker, for as long as it lives; raises its error."""
        while not self.conn.poll(_POLL_S):
            if self.proc.poll() is not None:
                raise Unavailable(f"tensor-parallel rank {self.rank} exited with code "
                                  f"{self.proc.returncode}{self.last_error()}")
        message = self.conn.recv()
        if message[0] == "error":
            raise _as_error(self.rank, message)
        if message[0] != kind:
            raise Unavailable(f"tensor-parallel rank {self.rank}: expected '{kind}', "
                              f"got '{message[0]}'")

    def exit_code(self, wait_s: float = 1.0) -> int | None:
        """The exit code, waiting up to wait_s for one; None while it runs."""
        try:
            return self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            return None

    def last_error(self) -> str:
        """': <message>' when the worker reported why it stopped, else ''."""
        try:
            while self.conn.poll(0):
                message = self.conn.recv()
                if message[0] == "error":
                    return f": {message[1]}: {message[2]}"
        except (EOFError, OSError):
            pass
        return ""

    def stop(self, kill: bool = False) -> None:
        if not kill and self.proc.poll() is None:
            try:
                self.conn.send(("close",))
            except OSError:
                pass
            try:
                self.proc.wait(_CLOSE_WAIT_S)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.conn.close()


def _as_error(rank: int, message: tuple) -> ServerError:
    """A worker's ("error", type name, text) as the same llmserve error (a bad checkpoint
    stays INVALID_ARG), anything else as UNAVAILABLE."""
    _, name, text = message
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, ServerError)):
        cls, text = Unavailable, f"{name}: {text}"
    return cls(f"tensor-parallel rank {rank}: {text}")


def _shutdown(workers: list[_Worker], group: list[ProcessGroup | None], kill: bool) -> None:
    for worker in workers:
        worker.stop(kill)
    if group[0] is not None:
        group[0].close()
        group[0] = None


class TensorParallelRunner:
    """Rank 0 of a tensor-parallel model; obeys the ModelRunner contract."""

    def __init__(self, model_path: str | Path, *, size: int, dtype: str = "auto",
                 device: str = "cpu", weight_only_precision: str | None = None,
                 device_ids: list[int] | None = None) -> None:
        check_divisible(load_arch_config(model_path), size)  # before any process starts
        devices = rank_devices(device, size, device_ids)
        timeout_s = collective_timeout_s()
        store = master_store(size, timeout_s)
        threads = max(1, torch.get_num_threads() // size)
        self._failure: str | None = None
        self._group: list[ProcessGroup | None] = [None]
        self._workers = [_Worker(rank) for rank in range(1, size)]
        self._finalizer = weakref.finalize(self, _shutdown, self._workers, self._group, True)
        try:
            for worker in self._workers:
                worker.send(("init", {
                    "model_path": str(model_path), "dtype": dtype,
                    "device": devices[worker.rank], "rank": worker.rank, "size": size,
                    "weight_only_precision": weight_only_precision, "port": store.port,
                    "timeout_s": timeout_s, "threads": threads}))
            self.local = ModelRunner(model_path, dtype=dtype, device=devices[0],
                                     weight_only_precision=weight_only_precision,
                                     shard=Shard(0, size))
            for worker in self._workers:
                worker.expect("loaded")
            for worker in self._workers:
                worker.send(("join",))
            self._group[0] = ProcessGroup(store.port, Shard(0, size), self.local.device,
                                          timeout_s, store=store)
            for worker in self._workers:
                worker.expect("ready")
        except BaseException:
            self._finalizer()
            raise
        self.local.model.group = self._group[0]
        self.size = size
        # called once with the reason when the ranks fail (the serving model turns
        # UNAVAILABLE with it)
        self.on_failure: Callable[[str], None] | None = None
        logger.info("tensor parallelism: %d ranks on %s (rank 0 in this process, workers "
                    "pid %s), collectives time out after %.0f s", size, ", ".join(devices),
                    ", ".join(str(w.proc.pid) for w in self._workers), timeout_s)

    # -- the ModelRunner contract -------------------------------------------------------

    @property
    def arch(self) -> ArchConfig:
        return self.local.arch

    @property
    def num_blocks(self) -> int:
        return self.local.num_blocks

    @property
    def block_size(self) -> int:
        return self.local.block_size

    def kv_cache_bytes_per_block(self, block_size: int) -> int:
        """One rank's share (its KV heads): what each rank allocates per block."""
        return self.local.kv_cache_bytes_per_block(block_size)

    def available_memory_bytes(self) -> int:
        return self.local.available_memory_bytes()

    def allocate_kv_cache(self, num_blocks: int, block_size: int) -> None:
        self._call("allocate_kv_cache", num_blocks, block_size, reply=True)

    def set_attention_windows(self, windows: list[int | None], sink_tokens: int = 0) -> None:
        self.local.set_attention_windows(windows, sink_tokens)  # checks them first
        self._broadcast("set_attention_windows", (windows, sink_tokens), reply=True)

    def allocate_host_kv_cache(self, num_blocks: int) -> None:
        self._call("allocate_host_kv_cache", num_blocks, reply=True)

    def offload_block(self, block: int, slot: int) -> None:
        self._call("offload_block", block, slot)

    def onboard_block(self, slot: int, block: int) -> None:
        self._call("onboard_block", slot, block)

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        self._call("copy_blocks", pairs)

    def set_lora_source(self, source: object) -> None:
        """LoRA is refused with tensor parallelism (the executor checks requests)."""

    def forward(self, chunks: list[SeqChunk]) -> torch.Tensor:
        self._check_alive()
        if not chunks:
            return self.local.forward(chunks)
        # every check before the ranks start: a step one rank refuses would leave the
        # others waiting in its first all-reduce
        self.local.validate(chunks)
        if any(c.lora_task_id is not None for c in chunks):
            raise errors.Unsupported("LoRA is not supported with tensor parallelism")
        self._broadcast("forward", ([_portable(c) for c in chunks],))
        try:
            return self.local.forward(chunks)
        except Exception as exc:
            raise self._broken(f"the step failed on rank 0: {exc}") from exc

    def close(self) -> None:
        """Stops the worker ranks (the executor shuts down)."""
        self._failure = self._failure or "the model was unloaded"
        self._finalizer.detach()
        _shutdown(self._workers, self._group, kill=False)

    # -- the ranks ----------------------------------------------------------------------

    def _call(self, name: str, *args: object, reply: bool = False) -> None:
        self._check_alive()
        self._broadcast(name, args, reply)
        try:
            getattr(self.local, name)(*args)
        except Exception as exc:
            raise self._broken(f"{name} failed on rank 0: {exc}") from exc

    def _broadcast(self, name: str, args: tuple, reply: bool = False) -> None:
        try:
            for worker in self._workers:
                worker.send(("call", name, args, reply))
            if reply:
                for worker in self._workers:
                    worker.expect("ok")
        except (OSError, ServerError) as exc:
            raise self._broken(str(exc)) from exc

    def _check_alive(self) -> None:
        if self._failure is not None:
            raise Unavailable(self._failure)
        for worker in self._workers:
            if worker.proc.poll() is not None:
                raise self._broken(f"tensor-parallel rank {worker.rank} exited with code "
                                   f"{worker.proc.returncode}{worker.last_error()}")

    def _broken(self, reason: str) -> Unavailable:
        """Ends every rank after a failure (their steps are out of step now); this and
        every later call fail with the reason."""
        if self._failure is None:
            # a collective fails as soon as a peer's socket closes, maybe before that
            # peer's exit is visible: name the ranks that exited first
            codes = [(w, w.exit_code()) for w in self._workers]
            reasons = [f"tensor-parallel rank {w.rank} exited with code {code}{w.last_error()}"
                       for w, code in codes
                       if code is not None and f"rank {w.rank} exited" not in reason]
            reasons.append(reason)
            reported = [(w.rank, w.last_error()) for w in self._workers]
            reasons += [f"rank {rank}{text}" for rank, text in reported if text]
            self._failure = ("tensor-parallel model failed (reload it to serve again): "
                             + "; ".join(reasons))
            logger.error("%s", self._failure)
            self._finalizer.detach()
            _shutdown(self._workers, self._group, kill=True)
            if self.on_failure is not None:
                try:
                    self.on_failure(self._failure)
                except Exception:  # noqa: BLE001 - the requests still get the error
                    logger.exception("tensor parallelism: the on_failure callback failed")
        return Unavailable(self._failure)


def make_runner(model_path: str | Path | None, config) -> ModelRunner | TensorParallelRunner:
    """The engine an ExecutorConfig asks for: one ModelRunner, or tensor_parallel_size
    ranks. Combinations tensor parallelism does not support are refused here, at load."""
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = config.tensor_parallel_size
    if size == 1:
        return ModelRunner(model_path, dtype=config.dtype, device=device,
                           weight_only_precision=config.weight_only_precision)
    if config.lora_config is not None:
        # each rank would need its slice of every adapter: not implemented
        raise errors.Unsupported("LoRA (a PEFT cache config) is not supported with "
                                 f"tensor_parallel_size {size}")
    return TensorParallelRunner(model_path, size=size, dtype=config.dtype, device=device,
                                weight_only_precision=config.weight_only_precision,
                                device_ids=config.device_ids)


def _portable(chunk: SeqChunk) -> SeqChunk:
    """The chunk as sent to a worker: a prompt table on the GPU travels as a host copy."""
    table = chunk.prompt_table
    if table is None or table.device.type == "cpu":
        return chunk
    return SeqChunk(chunk.token_ids, chunk.start_pos, chunk.block_table, chunk.logits,
                    chunk.lora_task_id, table.cpu())
