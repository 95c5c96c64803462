"""Rotary position embeddings as transformers computes them: inverse frequencies for
the rope types default / linear / dynamic / yarn / llama3, a cos/sin table that grows
on demand, and the rotation itself (rotate-half convention)."""

from __future__ import annotations

import math

import torch

from llmserve.core.errors import Unsupported

from .config import ArchConfig

SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")


def _base_inv_freq(theta: float, dim: int) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def _yarn(arch: ArchConfig, params: dict, dim: int) -> tuple[torch.Tensor, float]:
    base = arch.rope_theta
    original = params.get("original_max_position_embeddings") or arch.max_position_embeddings
    factor = params.get("factor") or arch.max_position_embeddings / original
    attention_factor = params.get("attention_factor")
    mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")

    def get_mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
        else:
            attention_factor = get_mscale(factor)
    beta_fast = params.get("beta_fast") or 32
    beta_slow = params.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    keep = 1 - ramp
    return interpolation * (1 - keep) + extrapolation * keep, float(attention_factor)


def _llama3(arch: ArchConfig, params: dict, dim: int) -> torch.Tensor:
    inv_freq = _base_inv_freq(arch.rope_theta, dim)
    factor = params["factor"]
    low_ff, high_ff = params["low_freq_factor"], params["high_freq_factor"]
    old_len = params.get("original_max_position_embeddings") or arch.max_position_embeddings
    low_wavelen, high_wavelen = old_len / low_ff, old_len / high_ff
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low_ff) / (high_ff - low_ff)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def inv_freq_for(arch: ArchConfig, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """(inverse frequencies [head_dim/2] fp32, cos/sin scaling). `seq_len` matters only
    for "dynamic" (NTK), as in transformers' dynamic_rope_update."""
    params = arch.rope_parameters
    rope_type = params.get("rope_type", "default")
    dim = arch.head_dim
    if rope_type == "default":
        return _base_inv_freq(arch.rope_theta, dim), 1.0
    if rope_type == "linear":
        return _base_inv_freq(arch.rope_theta, dim) / params["factor"], 1.0
    if rope_type == "dynamic":
        max_pos = arch.max_position_embeddings
        length = max(seq_len or max_pos, max_pos)
        factor = params["factor"]
        base = arch.rope_theta * ((factor * length / max_pos) - (factor - 1)) ** (dim / (dim - 2))
        return _base_inv_freq(base, dim), 1.0
    if rope_type == "llama3":
        return _llama3(arch, params, dim), 1.0
    if rope_type == "yarn":
        return _yarn(arch, params, dim)
    raise Unsupported(
        f"rope type '{rope_type}' is not supported ({', '.join(SUPPORTED_ROPE_TYPES)})"
    )


def cos_sin(
    inv_freq: torch.Tensor, scaling: float, positions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [len(positions), head_dim] in fp32 (transformers' layout)."""
    freqs = positions.float()[:, None] * inv_freq[None, :].to(positions.device)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * scaling, emb.sin() * scaling


class RopeTable:
    """Precomputed cos/sin rows per position in the model dtype, grown by doubling.
    "dynamic" rope only uses the table inside max_position_embeddings; beyond it the
    runner asks `for_sequence` with the sequence's current length, as transformers does
    for a single sequence (cached keys keep the rotation they were written with)."""

    def __init__(self, arch: ArchConfig, dtype: torch.dtype, device: torch.device | str):
        self.arch = arch
        self.dtype = dtype
        self.device = torch.device(device)
        self.inv_freq, self.scaling = inv_freq_for(arch)
        self.dynamic = arch.rope_parameters.get("rope_type") == "dynamic"
        self.cos = torch.empty(0, arch.head_dim, dtype=dtype, device=self.device)
        self.sin = torch.empty(0, arch.head_dim, dtype=dtype, device=self.device)
        self.ensure(min(arch.max_position_embeddings, 4096))

    def ensure(self, length: int) -> None:
        if length <= self.cos.shape[0]:
            return
        size = max(length, 2 * self.cos.shape[0], 256)
        positions = torch.arange(size, dtype=torch.int64)
        cos, sin = cos_sin(self.inv_freq, self.scaling, positions)
        self.cos = cos.to(self.dtype).to(self.device)
        self.sin = sin.to(self.dtype).to(self.device)

    def needs_dynamic(self, seq_len: int) -> bool:
        return self.dynamic and seq_len > self.arch.max_position_embeddings

    def for_sequence(
        self, positions: torch.Tensor, seq_len: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq, scaling = inv_freq_for(self.arch, seq_len)
        cos, sin = cos_sin(inv_freq, scaling, positions.cpu())
        return cos.to(self.dtype).to(self.device), sin.to(self.dtype).to(self.device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, heads, head_dim]; cos/sin: [T, head_dim]. Rotate-half convention."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]
