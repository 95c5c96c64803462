"""The C kernels of cpu_kernels.py as torch operators (`torch.ops.llmserve.*`), so that
they compose with torch.compile (each has a fake implementation for tracing) and can be
called from outside the engine: every argument's dtype, device, rank, shape and layout
is checked here before the kernel sees a pointer.

The engine's own eager forward calls the cpu_kernels functions directly: a custom op's
dispatch costs ~10 us a call on this project's CPUs, against ~1.5 us for the kernel
itself, and the engine builds the tensors these checks would look at.
"""

from __future__ import annotations

import torch
from torch.library import custom_op

from . import cpu_kernels


def _fail(op: str, what: str) -> ValueError:
    return ValueError(f"llmserve::{op}: {what}")


def _cpu_f32(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def _available(op: str) -> None:
    if cpu_kernels.kernels() is None:
        raise RuntimeError(f"llmserve::{op}: the CPU kernels are not available (no C "
                           "compiler, or LLMSERVE_CPU_KERNELS=0)")


@custom_op("llmserve::paged_decode", mutates_args=())
def paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float,
                 window: int, sink: int = 0) -> torch.Tensor:
    """Decode attention over the paged cache: q [B, Hq, D]; k/v_cache [blocks, bs, Hkv,
    D]; block_tables [B, W] int64; context_lens [B] int64; window 0 = none, else the
    first `sink` keys and the last window - sink. ValueError for a bad tensor or size,
    IndexError for a length or block id out of range."""
    _available("paged_decode")
    if not (q.dim() == 3 and k_cache.dim() == 4 and _cpu_f32(q, k_cache, v_cache)):
        raise _fail("paged_decode", "q [B, Hq, D] and the caches [blocks, bs, Hkv, D] must "
                    "be float32 CPU tensors")
    batch, num_heads, head_dim = q.shape
    if k_cache.shape[3] != head_dim or v_cache.shape != k_cache.shape:
        raise _fail("paged_decode", f"caches {tuple(k_cache.shape)} and "
                    f"{tuple(v_cache.shape)} must match each other and q's head size")
    tables_ok = (block_tables.dim() == 2 and block_tables.shape[0] == batch
                 and context_lens.shape == (batch,))
    if not (tables_ok and block_tables.dtype == context_lens.dtype == torch.int64
            and block_tables.device.type == context_lens.device.type == "cpu"):
        raise _fail("paged_decode", f"block_tables [{batch}, W] and context_lens [{batch}] "
                    "must be int64 CPU tensors")
    return cpu_kernels.paged_decode(q, k_cache.contiguous(), v_cache.contiguous(),
                                    block_tables.contiguous(), context_lens.contiguous(),
                                    scale, window or None, sink)


@paged_decode.register_fake
def _(q, k_cache, v_cache, block_tables, context_lens, scale, window, sink=0):
    return q.new_empty(q.shape)


@custom_op("llmserve::paged_prefill", mutates_args=())
def paged_prefill(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  block_tables: torch.Tensor, starts: torch.Tensor, lens: torch.Tensor,
                  rows: torch.Tensor, scale: float, window: int, sink: int = 0) -> torch.Tensor:
    """Causal attention of multi-token chunks over the paged cache (their own keys written
    already): q [T, Hq, D]; k/v_cache [blocks, bs, Hkv, D]; block_tables [C, W] int64;
    starts, lens, rows [C] int64 (keys cached before chunk c, its tokens, its first row of
    q). Returns [T, Hq, D], zero in rows outside every chunk. ValueError for a bad tensor
    or size, IndexError for a length, row or block id out of range."""
    _available("paged_prefill")
    if not (q.dim() == 3 and k_cache.dim() == 4 and _cpu_f32(q, k_cache, v_cache)):
        raise _fail("paged_prefill", "q [T, Hq, D] and the caches [blocks, bs, Hkv, D] must "
                    "be float32 CPU tensors")
    if k_cache.shape[3] != q.shape[2] or v_cache.shape != k_cache.shape:
        raise _fail("paged_prefill", f"caches {tuple(k_cache.shape)} and "
                    f"{tuple(v_cache.shape)} must match each other and q's head size")
    chunks = block_tables.shape[0] if block_tables.dim() == 2 else -1
    columns = (starts, lens, rows)
    if not (chunks >= 0 and all(c.shape == (chunks,) for c in columns)
            and all(t.dtype == torch.int64 and t.device.type == "cpu"
                    for t in (block_tables, *columns))):
        raise _fail("paged_prefill", "block_tables [C, W] and starts, lens, rows [C] must be "
                    "int64 CPU tensors")
    out = torch.zeros(q.shape, dtype=q.dtype)
    cpu_kernels.paged_prefill(out, q, k_cache.contiguous(), v_cache.contiguous(),
                              block_tables.contiguous(), starts.contiguous(),
                              lens.contiguous(), rows.contiguous(), scale, window or None,
                              sink)
    return out


@paged_prefill.register_fake
def _(q, k_cache, v_cache, block_tables, starts, lens, rows, scale, window, sink=0):
    return q.new_empty(q.shape)


@custom_op("llmserve::rms_norm", mutates_args=("x",))
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             delta: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm of x [rows, dim] times weight [dim]; with delta, first x += delta in place."""
    _available("rms_norm")
    tensors = (x, weight) if delta is None else (x, weight, delta)
    if not (_cpu_f32(*tensors) and x.dim() == 2 and x.is_contiguous()
            and weight.shape == x.shape[1:]
            and (delta is None or (delta.shape == x.shape))):
        raise _fail("rms_norm", "x [rows, dim] (contiguous: it is updated in place), delta "
                    "like x and weight [dim] must be float32 CPU tensors")
    return cpu_kernels.rms_norm(x, weight.contiguous(), eps,
                                None if delta is None else delta.contiguous())


@rms_norm.register_fake
def _(x, weight, eps, delta=None):
    return torch.empty_like(x)


@custom_op("llmserve::silu_mul", mutates_args=())
def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of gate_up = [gate | up]: [rows, 2 * inter] -> [rows, inter]."""
    _available("silu_mul")
    if not (_cpu_f32(gate_up) and gate_up.dim() == 2 and gate_up.shape[1] % 2 == 0):
        raise _fail("silu_mul", "gate_up must be a float32 CPU tensor [rows, 2 * inter]")
    return cpu_kernels.silu_mul(gate_up.contiguous())


@silu_mul.register_fake
def _(gate_up):
    return gate_up.new_empty(gate_up.shape[0], gate_up.shape[1] // 2)


@custom_op("llmserve::rope", mutates_args=())
def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary embedding of x [T, heads, head_dim] with cos, sin [T, head_dim]."""
    _available("rope")
    if not (_cpu_f32(x, cos, sin) and x.dim() == 3 and x.shape[2] % 2 == 0
            and cos.shape == sin.shape == (x.shape[0], x.shape[2])):
        raise _fail("rope", "x [T, heads, head_dim] (head_dim even), cos and sin "
                    "[T, head_dim] must be float32 CPU tensors")
    if x.stride(2) != 1 or x.stride(1) != x.shape[2]:
        x = x.contiguous()  # the kernel reads each row's heads as one run
    return cpu_kernels.rope(x, cos.contiguous(), sin.contiguous())


@rope.register_fake
def _(x, cos, sin):
    return x.new_empty(x.shape)
