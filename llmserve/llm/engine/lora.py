"""LoRA in the engine: TensorRT-LLM's LoRA module ids and where each lands in our fused
linears, an adapter's per-layer low-rank weights, and the per-step LoraBatch that adds
each token's adapter delta (tokens grouped by adapter) to the shared base outputs."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F

from llmserve.core.errors import Unsupported

from .attention import SeqChunk
from .config import ArchConfig

# The fused linears of a Llama layer that LoRA modules add to.
LINEAR_QKV = "qkv"
LINEAR_O = "o"
LINEAR_GATE_UP = "gate_up"
LINEAR_DOWN = "down"


class LoraModule(enum.IntEnum):
    """TensorRT-LLM's LoraModule::ModuleType values (the first column of lora_config)."""

    ATTN_QKV = 0
    ATTN_Q = 1
    ATTN_K = 2
    ATTN_V = 3
    ATTN_DENSE = 4
    MLP_H_TO_4H = 5  # Llama's gate_proj (the activated half)
    MLP_4H_TO_H = 6  # Llama's down_proj
    MLP_GATE = 7  # Llama's up_proj


# The modules a typical Llama adapter targets (attn_qkv is the fused alternative to
# q/k/v); the cache sizes its pages for an adapter on all of them.
STANDARD_MODULES = (
    LoraModule.ATTN_Q, LoraModule.ATTN_K, LoraModule.ATTN_V, LoraModule.ATTN_DENSE,
    LoraModule.MLP_H_TO_4H, LoraModule.MLP_4H_TO_H, LoraModule.MLP_GATE,
)


@dataclass(frozen=True, slots=True)
class ModuleTarget:
    """Where a module's delta goes: a column slice of one fused linear's output."""

    linear: str
    in_dim: int
    out_dim: int
    out_offset: int

    @property
    def row_elems_per_rank(self) -> int:
        """Elements one unit of adapter rank takes in a weight row (in + out)."""
        return self.in_dim + self.out_dim


def module_targets(arch: ArchConfig) -> dict[int, ModuleTarget]:
    """Every supported module id of this architecture -> its target slice."""
    h, q, kv, inter = arch.hidden_size, arch.q_size, arch.kv_size, arch.intermediate_size
    return {
        LoraModule.ATTN_QKV: ModuleTarget(LINEAR_QKV, h, q + 2 * kv, 0),
        LoraModule.ATTN_Q: ModuleTarget(LINEAR_QKV, h, q, 0),
        LoraModule.ATTN_K: ModuleTarget(LINEAR_QKV, h, kv, q),
        LoraModule.ATTN_V: ModuleTarget(LINEAR_QKV, h, kv, q + kv),
        LoraModule.ATTN_DENSE: ModuleTarget(LINEAR_O, q, h, 0),
        LoraModule.MLP_H_TO_4H: ModuleTarget(LINEAR_GATE_UP, h, inter, 0),
        LoraModule.MLP_GATE: ModuleTarget(LINEAR_GATE_UP, h, inter, inter),
        LoraModule.MLP_4H_TO_H: ModuleTarget(LINEAR_DOWN, inter, h, 0),
    }


def module_name(module_id: int) -> str:
    try:
        return LoraModule(module_id).name.lower()
    except ValueError:
        return f"module {module_id}"


@dataclass(slots=True)
class LoraWeight:
    """One module of one layer: delta = x @ a.T @ b.T, added to the target slice."""

    a: torch.Tensor  # [rank, in_dim]  ("in" weights, alpha/r already folded into b)
    b: torch.Tensor  # [out_dim, rank] ("out" weights)
    target: ModuleTarget


@dataclass(slots=True)
class LoraAdapter:
    """An adapter's weights on the compute device, per layer and fused linear."""

    task_id: int
    layers: list[dict[str, list[LoraWeight]]] = field(default_factory=list)

    @classmethod
    def from_rows(cls, task_id: int, num_layers: int,
                  rows: Sequence[tuple[int, int, int, torch.Tensor]],
                  targets: dict[int, ModuleTarget]) -> LoraAdapter:
        """rows: (module_id, layer, rank, flat) with flat holding TensorRT-LLM's row
        layout: "in" [rank, in_dim] then "out" [out_dim, rank], row-major (views kept)."""
        adapter = cls(task_id, [{} for _ in range(num_layers)])
        for module_id, layer, rank, flat in rows:
            t = targets[module_id]
            a = flat[: rank * t.in_dim].view(rank, t.in_dim)
            b = flat[rank * t.in_dim : rank * (t.in_dim + t.out_dim)].view(t.out_dim, rank)
            adapter.layers[layer].setdefault(t.linear, []).append(LoraWeight(a, b, t))
        return adapter


class LoraSource(Protocol):
    """What the runner asks for the adapters of a step (the executor's LoRA cache)."""

    def adapters(self, task_ids: list[int]) -> dict[int, LoraAdapter]: ...


class LoraBatch:
    """The adapters of one forward and the token rows of each (None: every row)."""

    def __init__(self, groups: list[tuple[LoraAdapter, torch.Tensor | None]]):
        self.groups = groups

    def apply(self, layer: int, linear: str, x: torch.Tensor, y: torch.Tensor) -> None:
        """Adds every group's low-rank delta of `linear` (input x, base output y) into y,
        in place, on that group's rows only."""
        for adapter, rows in self.groups:
            weights = adapter.layers[layer].get(linear)
            if not weights:
                continue
            xs = x if rows is None else x.index_select(0, rows)
            for w in weights:
                delta = F.linear(F.linear(xs, w.a), w.b)
                out = y[:, w.target.out_offset : w.target.out_offset + w.target.out_dim]
                if rows is None:
                    out += delta
                else:
                    out.index_add_(0, rows, delta)


def build_lora_batch(chunks: list[SeqChunk], chunk_rows: list[int],
                     source: LoraSource | None, device: torch.device) -> LoraBatch | None:
    """Groups the step's token rows (stream order, chunk_rows[i] = first row of chunk i)
    by lora_task_id; None when no chunk has an adapter."""
    by_task: dict[int, list[int]] = {}
    for chunk, first in zip(chunks, chunk_rows, strict=True):
        task = getattr(chunk, "lora_task_id", None)
        if task is not None:
            by_task.setdefault(int(task), []).extend(range(first, first + len(chunk.token_ids)))
    if not by_task:
        return None
    if source is None:
        raise Unsupported("a step has LoRA task ids but no LoRA cache is attached to the engine")
    adapters = source.adapters(list(by_task))
    total = sum(len(c.token_ids) for c in chunks)
    groups = []
    for task, rows in by_task.items():
        index = None if len(rows) == total else torch.tensor(rows, device=device)
        groups.append((adapters[task], index))
    return LoraBatch(groups)
