"""Dense projections of the engine. On CPU, large fp32/bf16 weights are prepacked once
for oneDNN, whose GEMM runs 2-3x faster than torch's default (MKL sgemm) on AMD and
similar CPUs (vLLM's CPU build does the same); small ones stay on F.linear, whose
per-call cost is lower at one row. Small weights are kept both ways and each
call picks by its row count. Elsewhere plain F.linear is used. oneDNN compiles and
caches a kernel per input shape, so row counts are bucketed and its caches bounded."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

from llmserve.core.errors import Unsupported

from .quant import Bf16Weight, Int8Weight, int8_supported

logger = logging.getLogger(__name__)

# LLMSERVE_CPU_ONEDNN=0 turns the prepacked path off (benchmarks, debugging).
_ENV = "LLMSERVE_CPU_ONEDNN"

# Weights of at most 2^17 elements are also kept dense: at one row (batch-1 decode) their
# F.linear call costs 4-8 us against oneDNN's 14-21 us; from two rows on oneDNN is as
# fast or faster, 2-2.5x from 16 rows. Larger weights go through oneDNN even at one row:
# with a whole model's weights streaming through the cache, its GEMV reads 42 GB/s
# against MKL's 19-31 GB/s (measured on a 2-core Zen 5, docs/BENCHMARKS.md).
MIN_PACKED_ELEMENTS = 2**17 + 1
DENSE_MAX_ROWS = 1

# oneDNN JIT-compiles a primitive for every input shape it meets (a few ms each) and
# keeps it in two LRU caches, oneDNN's own and ideep's (per thread), of 1,024 entries by
# default; each holds about 0.6 MB of code and buffers whatever its shape, and leaves
# memory only when both caches drop it. A server's steps come in every row count, so
# its memory grew by hundreds of MB over thousands of requests (issue 18). So row counts
# from 16 up are padded to one of 8 sizes per power of two (at most 1/8 more rows; 88
# sizes up to 8,192 rows), which keeps the shapes in use few, and both caches hold 128
# primitives (~80 MB): memory stays flat whatever the traffic, and in the soak runs
# (docs/RELIABILITY.md) no slower than with 1,024. Users may still set either variable.
# (Splitting large GEMMs into fixed-size pieces needs fewer sizes still, but measured
# slower: the concatenation.)
EXACT_ROWS = 16
ONEDNN_CACHE_CAPACITY = 128
_CACHE_ENV = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")

# torch._weight_int8pack_mm reads input features in groups of 16 and segfaults on a
# weight whose K is not a multiple (say a tensor-parallel slice of an MLP of 688).
INT8_K_MULTIPLE = 16


def bucket_rows(rows: int) -> int:
    """The row count a prepacked GEMM runs at: exact below EXACT_ROWS, then rounded up
    to a multiple of 1/8 of rows' power of two."""
    if rows < EXACT_ROWS:
        return rows
    step = 1 << (rows.bit_length() - 4)
    return -(-rows // step) * step


def bound_onednn_caches() -> None:
    """Bound oneDNN's and ideep's primitive caches (read from the environment when the
    first primitive is made, so this must run before any oneDNN call)."""
    for name in _CACHE_ENV:
        os.environ.setdefault(name, str(ONEDNN_CACHE_CAPACITY))


def _packed_linear(x: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor | None) -> torch.Tensor:
    rows = x.shape[0]
    padded = bucket_rows(rows)
    if padded != rows and x.dim() == 2:
        xp = x.new_empty((padded, x.shape[1]))
        xp[:rows] = x
        xp[rows:].zero_()
        return torch.ops.mkldnn._linear_pointwise(xp, weight, bias, "none", [], "")[:rows]
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class DualWeight:
    """A small weight kept dense and prepacked; the linear picks by row count."""

    __slots__ = ("dense", "packed")

    def __init__(self, dense: torch.Tensor, packed: torch.Tensor) -> None:
        self.dense, self.packed = dense, packed

    @property
    def shape(self) -> torch.Size:
        return self.dense.shape


Weight = torch.Tensor | DualWeight | Int8Weight | Bf16Weight
LinearFn = Callable[[torch.Tensor, Weight, torch.Tensor | None], torch.Tensor]


def _onednn_linear(x: torch.Tensor, weight: Weight,
                   bias: torch.Tensor | None) -> torch.Tensor:
    if type(weight) is DualWeight:
        weight = weight.dense if x.shape[0] <= DENSE_MAX_ROWS else weight.packed
    if weight.is_mkldnn:
        return _packed_linear(x, weight, bias)
    return F.linear(x, weight, bias)


def _weight_only_linear(x: torch.Tensor, weight: Weight,
                        bias: torch.Tensor | None) -> torch.Tensor:
    if type(weight) is Int8Weight:
        return weight.linear(x, bias)
    if type(weight) is Bf16Weight:  # float32 in, float32 out, the bias added in that op
        y = _packed_linear(x.to(torch.bfloat16), weight.packed, None)
        return y.float() if bias is None else torch.add(bias, y)
    return _onednn_linear(x, weight, bias)


class Linears:
    """Picks the GEMM for a model's device and dtype; pack() converts a weight for it.
    On CPU with float32 activations the weights may be kept in a weight-only format:
    weight_dtype bfloat16 (every GEMM weight) and/or quantize "int8" (the weights packed
    with quantize=True: the decoder layers', not the LM head's)."""

    def __init__(self, device: torch.device, dtype: torch.dtype,
                 weight_dtype: torch.dtype | None = None, quantize: str | None = None) -> None:
        self.packed = device.type == "cpu" and self._supported(dtype)
        self.fn: LinearFn = _onednn_linear if self.packed else F.linear
        if self.packed:
            bound_onednn_caches()  # before the first oneDNN call
        self.bf16_weights = weight_dtype == torch.bfloat16 and dtype == torch.float32
        self.int8 = quantize == "int8"
        self.int8_skipped = 0  # weights int8 would take but whose shape the kernel cannot
        cpu_f32 = device.type == "cpu" and dtype == torch.float32
        if self.bf16_weights and not (cpu_f32 and self._supported(torch.bfloat16)):
            raise Unsupported("bf16 weights under float32 activations need oneDNN's bf16 "
                              "GEMM on CPU")
        if self.int8 and not (cpu_f32 and int8_supported()):
            raise Unsupported("int8 weights need float32 activations on CPU and "
                              "torch._weight_int8pack_mm")
        if self.int8:
            self.fn = _weight_only_linear
            logger.info("CPU linears: float32 activations, int8 layer weights, %s LM head",
                        "bf16" if self.bf16_weights else "float32")
        elif self.bf16_weights:
            self.fn = _weight_only_linear
            logger.info("CPU linears: float32 activations, bf16 weights")
        elif self.packed:
            logger.info("CPU linears: oneDNN with prepacked %s weights", dtype)

    @staticmethod
    def _supported(dtype: torch.dtype) -> bool:
        if os.environ.get(_ENV, "1") == "0":
            logger.info("%s=0: CPU linears use torch's default GEMM", _ENV)
            return False
        if not torch.backends.mkldnn.is_available():
            return False
        if not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
            return False
        if dtype == torch.float32:
            return True
        if dtype == torch.bfloat16:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        return False

    def pack(self, weight: torch.Tensor, quantize: bool = True) -> Weight:
        """The weight ready for self.fn: on CPU a prepacked copy (the caller drops the
        dense one to keep memory flat), or both forms for a small weight; the weight
        itself elsewhere. quantize=False keeps it out of int8 (the LM head)."""
        if self.int8 and quantize:
            if weight.shape[1] % INT8_K_MULTIPLE == 0:
                return Int8Weight(weight)
            if not self.int8_skipped:  # once per model
                logger.warning("weights of %d input features (first: %s) stay out of int8: "
                               "torch's int8 GEMM needs multiples of %d",
                               weight.shape[1], tuple(weight.shape), INT8_K_MULTIPLE)
            self.int8_skipped += 1
        if self.bf16_weights:
            return Bf16Weight(weight)
        if not self.packed:
            return weight
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), None)
        except RuntimeError as exc:  # an unsupported shape: stay dense for this one
            logger.warning("oneDNN could not prepack a %s weight (%s); using F.linear",
                           tuple(weight.shape), exc)
            return weight
        if weight.numel() < MIN_PACKED_ELEMENTS:
            return DualWeight(weight, packed)
        return packed
