"""Weight-only formats of the CPU linears, for float32 activations: bf16 weights
(a bf16 checkpoint kept as stored) through oneDNN, and int8 weights with one scale per
output channel (TensorRT-LLM's `weight_only_precision int8`, W8A16) through torch's
_weight_int8pack_mm. Batch-1 decode reads every weight once per token, so halving or
quartering the bytes read is what lifts it above the float32 memory-bandwidth bound.
Norms, attention, the KV cache and the residual stream stay float32.
"""

from __future__ import annotations

import torch

from llmserve.core.errors import InvalidArgument, Unsupported

from .config import ArchConfig, resolve_dtype

# TensorRT-LLM's names (convert_checkpoint.py --use_weight_only --weight_only_precision);
# int4 and int4_awq are not implemented here.
WEIGHT_ONLY_PRECISIONS = ("int8",)
_NOT_IMPLEMENTED = ("int4", "int4_awq", "int4_gptq", "w4a16", "w4a16_awq", "w4a16_gptq")


def parse_weight_only_precision(value: str | None) -> str | None:
    """None (off) or "int8", from a config value; "" / "none" / "off" mean off."""
    if value is None:
        return None
    key = str(value).strip().lower()
    if key in ("", "none", "off", "false", "float", "fp32"):
        return None
    if key in ("w8a16",):
        key = "int8"
    if key in WEIGHT_ONLY_PRECISIONS:
        return key
    if key in _NOT_IMPLEMENTED:
        raise Unsupported(f"weight_only_precision '{value}' is not supported (int8 is)")
    raise InvalidArgument(f"weight_only_precision '{value}': expected int8 or none")


class Int8Weight:
    """W [N, K] as int8 rows times a per-row scale: W ~= qweight * scales[:, None]. The
    scales are bf16 (what the kernel takes with bf16 activations), and each row is
    quantised against its rounded scale so the product is exactly what the kernel uses."""

    __slots__ = ("qweight", "scales")

    def __init__(self, weight: torch.Tensor) -> None:
        w = weight.detach().float()
        scales = (w.abs().amax(dim=1) / 127.0).to(torch.bfloat16)
        scales = torch.where(scales > 0, scales, torch.ones_like(scales))  # all-zero rows
        q = torch.round(w / scales.float()[:, None]).clamp_(-127, 127)
        self.qweight = q.to(torch.int8).contiguous()
        self.scales = scales

    @property
    def shape(self) -> torch.Size:
        return self.qweight.shape

    def dequantize(self) -> torch.Tensor:
        return self.qweight.float() * self.scales.float()[:, None]

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # The kernel's float32-activation path is 6x slower than its bf16 one here
        # (scripts/bench/linear_gemv.py), so activations go in as bf16 and come back as
        # float32, the bias added in the same op.
        y = torch._weight_int8pack_mm(x.to(torch.bfloat16), self.qweight, self.scales)
        return y.float() if bias is None else torch.add(bias, y)


class Bf16Weight:
    """A bf16 weight prepacked for oneDNN, applied to float32 activations by linear.py
    (through its row-count buckets, which bound oneDNN's primitive caches)."""

    __slots__ = ("packed", "_shape")

    def __init__(self, weight: torch.Tensor) -> None:
        dense = weight.detach().to(torch.bfloat16).contiguous()
        self._shape = dense.shape
        self.packed = torch.ops.mkldnn._reorder_linear_weight(dense, None)

    @property
    def shape(self) -> torch.Size:
        return self._shape


def bf16_weights_supported() -> bool:
    """oneDNN's bf16 GEMM is there and on (not LLMSERVE_CPU_ONEDNN=0): without it bf16
    weights would run through torch's slow default bf16 GEMM."""
    from .linear import Linears  # linear.py imports this module

    return Linears._supported(torch.bfloat16)


def int8_supported() -> bool:
    return hasattr(torch, "_weight_int8pack_mm")


def resolve_weight_formats(requested: str, arch: ArchConfig, device: str,
                           weight_only_precision: str | None,
                           ) -> tuple[torch.dtype, torch.dtype | None, str | None]:
    """(activation dtype, GEMM weight dtype when it differs, "int8" or None).

    dtype "auto" on CPU with a bf16 checkpoint: float32 activations over the stored bf16
    weights, where oneDNN has a bf16 GEMM; the float32 kernels (paged decode attention,
    fused norms, RoPE) then apply, which all-bf16 compute cannot use. An explicit dtype is
    followed as before. int8 needs float32 activations on CPU."""
    precision = parse_weight_only_precision(weight_only_precision)
    dtype = resolve_dtype(requested, arch, device)
    weight_dtype = None
    auto = requested in ("auto", "", None)
    if device == "cpu" and auto and dtype == torch.bfloat16 and bf16_weights_supported():
        dtype, weight_dtype = torch.float32, torch.bfloat16
    if precision is not None:
        if device != "cpu":
            raise Unsupported(f"weight_only_precision {precision} runs on CPU only "
                              f"(device '{device}')")
        if dtype != torch.float32:
            raise InvalidArgument(f"weight_only_precision {precision} runs with float32 "
                                  f"activations; dtype '{requested}' asks for {dtype}")
        if not int8_supported():
            raise Unsupported("weight_only_precision int8 needs torch._weight_int8pack_mm "
                              "(torch >= 2.3)")
    return dtype, weight_dtype, precision


def weight_format_note(arch: ArchConfig) -> str:
    """A log suffix naming a weight-only format, "" when there is none."""
    parts = []
    if arch.weight_only_precision:
        parts.append(f"{arch.weight_only_precision} layer weights")
    if arch.weight_dtype is not None:
        parts.append(f"{arch.weight_dtype} weights".replace("torch.", ""))
    return f" ({', '.join(parts)})" if parts else ""
