"""Tensor parallelism's pieces shared by rank 0 and the worker ranks: the process group
(gloo on CPU, NCCL on CUDA, rendezvous over a TCPStore on 127.0.0.1), how a rank's
share of the heads and of the MLP is cut, and where each rank runs."""

from __future__ import annotations

import dataclasses
import datetime
import logging

import torch

from llmserve.core.env_numbers import env_number
from llmserve.core.errors import InvalidArgument, Unavailable

from .config import ArchConfig

logger = logging.getLogger(__name__)

# LLMSERVE_TP_TIMEOUT_S bounds every collective and the rendezvous: a rank that hangs
# fails the step after this long instead of stalling the server forever (a rank that
# dies fails it at once: gloo and NCCL see the closed connection).
_TIMEOUT_ENV = "LLMSERVE_TP_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 120.0


def collective_timeout_s() -> float:
    try:
        seconds = env_number(_TIMEOUT_ENV, float, lambda s: s > 0, "a number of seconds > 0")
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    return DEFAULT_TIMEOUT_S if seconds is None else seconds


@dataclasses.dataclass(frozen=True, slots=True)
class Shard:
    """This process's place in a tensor-parallel group."""

    rank: int
    size: int

    def column(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a column-parallel weight (its output features)."""
        return tensor.chunk(self.size, dim=0)[self.rank]

    def row(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's columns of a row-parallel weight (its input features)."""
        return tensor.chunk(self.size, dim=1)[self.rank]


def check_divisible(arch: ArchConfig, size: int) -> None:
    """Refuses a tensor_parallel_size that does not split the heads and the MLP."""
    parts = {"num_attention_heads": arch.num_heads, "num_key_value_heads": arch.num_kv_heads,
             "intermediate_size": arch.intermediate_size}
    bad = [f"{name} {value}" for name, value in parts.items() if value % size]
    if bad:
        raise InvalidArgument(f"tensor_parallel_size {size} does not divide the model's "
                              f"{', '.join(bad)}")


def shard_arch(arch: ArchConfig, shard: Shard) -> ArchConfig:
    """The architecture one rank computes: its heads and its slice of the MLP (head_dim,
    hidden size and vocabulary stay whole)."""
    check_divisible(arch, shard.size)
    return dataclasses.replace(
        arch, num_heads=arch.num_heads // shard.size,
        num_kv_heads=arch.num_kv_heads // shard.size,
        intermediate_size=arch.intermediate_size // shard.size,
        layer_windows=list(arch.layer_windows), eos_token_ids=list(arch.eos_token_ids),
        rope_parameters=dict(arch.rope_parameters), architectures=list(arch.architectures))


def rank_devices(device: str, size: int, device_ids: list[int] | None) -> list[str]:
    """The device of each rank: on CUDA rank i runs on GPU device_ids[i] (default: GPU
    i, or from the index of `device` on); on CPU every rank is a CPU process."""
    if not device.startswith("cuda"):
        return ["cpu"] * size
    if device_ids is None:
        first = torch.device(device).index or 0
        device_ids = list(range(first, first + size))
    if len(device_ids) != size:
        raise InvalidArgument(f"tensor_parallel_size {size} needs {size} GPU device ids, "
                              f"got {device_ids}")
    if len(set(device_ids)) != size:
        raise InvalidArgument(f"GPU device ids {device_ids} repeat a GPU: each rank needs "
                              "its own")
    available = torch.cuda.device_count()
    missing = [i for i in device_ids if not 0 <= i < available]
    if missing:
        raise Unavailable(f"GPU device ids {missing} do not exist ({available} GPUs visible)")
    return [f"cuda:{i}" for i in device_ids]


class ProcessGroup:
    """One tensor-parallel group's collectives. Built on torch.distributed's process
    group classes directly rather than init_process_group, whose one default group per
    process would allow only one tensor-parallel model per server."""

    def __init__(self, port: int, shard: Shard, device: torch.device, timeout_s: float,
                 store: object | None = None) -> None:
        import torch.distributed as dist

        timeout = datetime.timedelta(seconds=timeout_s)
        if store is None:
            store = dist.TCPStore("127.0.0.1", port, shard.size, False, timeout)
        prefixed = dist.PrefixStore("llmserve_tp/", store)
        if device.type == "cuda":
            torch.cuda.set_device(device)
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout
            self.pg = dist.ProcessGroupNCCL(prefixed, shard.rank, shard.size, options)
        else:
            options = dist.ProcessGroupGloo._Options()
            options._devices = [dist.ProcessGroupGloo.create_device(hostname="127.0.0.1")]
            options._timeout = timeout
            self.pg = dist.ProcessGroupGloo(prefixed, shard.rank, shard.size, options)
        self.store = store  # rank 0's keeps the rendezvous server alive
        self.shard = shard

    def all_reduce(self, tensor: torch.Tensor) -> None:
        """Sums tensor over the ranks, in place."""
        self.pg.allreduce([tensor]).wait()

    def close(self) -> None:
        # dropping the gloo group after a peer died avoids an abort at interpreter exit
        self.pg = None  # type: ignore[assignment]


def master_store(size: int, timeout_s: float) -> object:
    """Rank 0's rendezvous store on a free port of 127.0.0.1 (its .port)."""
    import torch.distributed as dist

    return dist.TCPStore("127.0.0.1", 0, size, True, datetime.timedelta(seconds=timeout_s),
                         wait_for_workers=False)
