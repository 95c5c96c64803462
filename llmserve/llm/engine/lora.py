"""LoRA in the engine: TensorRT-LLM's LoRA module ids and where each lands in our fused
linears, an adapter's per-layer low-rank weights, and the per-step LoraBatch that adds each
token's adapter delta to the shared base outputs (all adapters of a step fused)."""

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


@dataclass(slots=True)
class _FusedLinear:
    """Every module of every adapter of a step on one fused linear of one layer."""

    a: torch.Tensor  # [R, in]: the modules' "in" weights stacked (R = their total rank)
    b: torch.Tensor  # [width, R]: "out" weights at their output slices, zeros elsewhere
    owner: torch.Tensor  # [R] which adapter of the step each rank column belongs to


class FusedAdapters:
    """The adapters of a step fused per layer and linear, so that a step applies LoRA
    with two GEMMs per linear whatever the number of adapters (vLLM's punica idea in
    plain torch): shrink every token by every adapter, zero the columns of adapters
    that are not the token's, expand."""

    def __init__(self, adapters: list[LoraAdapter]):
        self.adapters = adapters  # held: the key of the builder's cache uses their ids
        num_layers = len(adapters[0].layers)
        owners: dict[tuple[int, ...], torch.Tensor] = {}
        self.layers: list[dict[str, _FusedLinear]] = []
        for layer in range(num_layers):
            by_linear: dict[str, list[tuple[int, LoraWeight]]] = {}
            for index, adapter in enumerate(adapters):
                for linear, weights in adapter.layers[layer].items():
                    by_linear.setdefault(linear, []).extend((index, w) for w in weights)
            fused = {}
            for linear, items in by_linear.items():
                a = torch.cat([w.a for _, w in items])
                width = max(w.target.out_offset + w.target.out_dim for _, w in items)
                b = a.new_zeros(width, a.shape[0])
                col, owner = 0, []
                for index, w in items:
                    rank, t = w.a.shape[0], w.target
                    b[t.out_offset : t.out_offset + t.out_dim, col : col + rank] = w.b
                    owner.extend([index] * rank)
                    col += rank
                key = tuple(owner)
                if key not in owners:  # shared by layers with the same modules
                    owners[key] = torch.tensor(owner, device=a.device)
                fused[linear] = _FusedLinear(a, b, owners[key])
            self.layers.append(fused)


class LoraBatch:
    """One step's LoRA: the fused adapters and which adapter each token row uses."""

    def __init__(self, fused: FusedAdapters, token_adapter: torch.Tensor | None):
        self.fused = fused
        self.token_adapter = token_adapter  # [T], -1 = no adapter; None: all rows adapter 0
        self._masks: dict[int, torch.Tensor] = {}

    def _mask(self, owner: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        mask = self._masks.get(id(owner))
        if mask is None:
            assert self.token_adapter is not None
            mask = (self.token_adapter[:, None] == owner[None, :]).to(dtype)
            self._masks[id(owner)] = mask
        return mask

    def apply(self, layer: int, linear: str, x: torch.Tensor, y: torch.Tensor) -> None:
        """Adds each row's adapter delta of `linear` (input x, base output y) into y."""
        f = self.fused.layers[layer].get(linear)
        if f is None:
            return
        shrunk = F.linear(x, f.a)
        if self.token_adapter is not None:
            shrunk.mul_(self._mask(f.owner, shrunk.dtype))
        y[:, : f.b.shape[0]].addmm_(shrunk, f.b.t())


class LoraBatchBuilder:
    """Builds each step's LoraBatch, keeping the fused weights of the last few adapter
    sets: consecutive steps nearly always use the same adapters."""

    def __init__(self, capacity: int = 4):
        self.capacity = capacity
        self._cache: dict[tuple, FusedAdapters] = {}

    def _fused(self, adapters: list[LoraAdapter]) -> FusedAdapters:
        key = tuple((a.task_id, id(a)) for a in adapters)
        fused = self._cache.pop(key, None)
        if fused is None:
            fused = FusedAdapters(adapters)
        self._cache[key] = fused  # most recent last
        while len(self._cache) > self.capacity:
            del self._cache[next(iter(self._cache))]
        return fused

    def build(self, chunks: list[SeqChunk], chunk_rows: list[int],
              source: LoraSource | None, device: torch.device) -> LoraBatch | None:
        """Groups the step's token rows (stream order, chunk_rows[i] = first row of
        chunk i) by lora_task_id; None when no chunk has an adapter."""
        by_task: dict[int, list[int]] = {}
        for chunk, first in zip(chunks, chunk_rows, strict=True):
            task = chunk.lora_task_id
            if task is not None:
                by_task.setdefault(int(task), []).extend(
                    range(first, first + len(chunk.token_ids)))
        if not by_task:
            return None
        if source is None:
            raise Unsupported("a step has LoRA task ids but no LoRA cache is attached to "
                              "the engine")
        tasks = sorted(by_task)
        found = source.adapters(tasks)
        fused = self._fused([found[t] for t in tasks])
        total = sum(len(c.token_ids) for c in chunks)
        if len(tasks) == 1 and len(by_task[tasks[0]]) == total:
            return LoraBatch(fused, None)
        token_adapter = [-1] * total
        for index, task in enumerate(tasks):
            for row in by_task[task]:
                token_adapter[row] = index
        return LoraBatch(fused, torch.tensor(token_adapter, device=device))
