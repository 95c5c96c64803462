"""The Llama family (Llama, Mistral, Qwen2) in one file: weights fused at load (q/k/v
into one matrix, gate/up into one), RMSNorm, rotary embeddings, paged attention and a
SwiGLU MLP over a flat [tokens, hidden] stream with no padding."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmserve.core.errors import InvalidArgument

from .. import cpu_kernels
from ..attention import StepMetadata, paged_attention
from ..config import ArchConfig
from ..kv_cache import KVCache
from ..linear import Linears
from ..lora import LINEAR_DOWN, LINEAR_GATE_UP, LINEAR_O, LINEAR_QKV, LoraBatch
from ..rope import apply_rope
from ..tensor_parallel import ProcessGroup, Shard, shard_arch

logger = logging.getLogger(__name__)

_ACT = {
    "silu": F.silu,
    "swish": F.silu,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
}


@dataclass(slots=True)
class LayerWeights:
    input_norm: torch.Tensor
    qkv: torch.Tensor  # [q_size + 2 * kv_size, hidden]
    qkv_bias: torch.Tensor | None
    o_proj: torch.Tensor
    o_bias: torch.Tensor | None
    post_norm: torch.Tensor
    gate_up: torch.Tensor  # [2 * intermediate, hidden]
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None


class _Loader:
    """Takes tensors out of a checkpoint state dict, converted and moved, noting what
    was used so leftovers can be reported. Under tensor parallelism, split="column" or
    "row" keeps only this rank's share of a weight."""

    def __init__(self, state: dict[str, torch.Tensor], dtype: torch.dtype, device: torch.device,
                 weight_dtype: torch.dtype | None = None, shard: Shard | None = None):
        self.state, self.dtype, self.device = state, dtype, device
        self.weight_dtype = weight_dtype or dtype  # the GEMM weights' (weight=True)
        self.shard = shard
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.state

    def get(self, name: str, weight: bool = False, split: str | None = None) -> torch.Tensor:
        if name not in self.state:
            raise InvalidArgument(f"checkpoint is missing tensor '{name}'")
        self.used.add(name)
        dtype = self.weight_dtype if weight else self.dtype
        tensor = self.state[name]
        if self.shard is not None and split is not None:
            tensor = self.shard.column(tensor) if split == "column" else self.shard.row(tensor)
        return tensor.to(device=self.device, dtype=dtype).contiguous()

    def opt(self, name: str) -> torch.Tensor | None:
        return self.get(name) if name in self.state else None

    def cat(self, names: list[str], weight: bool = False,
            split: str | None = None) -> torch.Tensor | None:
        present = [n for n in names if n in self.state]
        if not present:
            return None
        if len(present) != len(names):
            missing = sorted(set(names) - set(present))
            raise InvalidArgument(f"checkpoint has some but not all of {missing}")
        return torch.cat([self.get(n, weight, split) for n in names], dim=0).contiguous()


class LlamaModel:
    """Decoder-only Llama-family transformer working on a paged KV cache. With a shard
    it is one rank of a tensor-parallel group: q/k/v and gate/up column-parallel (its
    heads, its slice of the MLP), o and down row-parallel with their outputs summed over
    the ranks by `group` (set once the group exists); embedding and norms whole on every
    rank, the LM head only on rank 0, which alone samples."""

    def __init__(
        self,
        arch: ArchConfig,
        state: dict[str, torch.Tensor],
        dtype: torch.dtype,
        device: torch.device,
        shard: Shard | None = None,
    ):
        if shard is not None:
            arch = shard_arch(arch, shard)  # this rank's heads and MLP width
        self.arch = arch
        self.shard = shard
        self.group: ProcessGroup | None = None
        self.dtype = dtype
        self.device = device
        self.act = _ACT[arch.hidden_act]
        self.scale = arch.head_dim**-0.5
        self.eps = arch.rms_norm_eps
        load = _Loader(state, dtype, device, arch.weight_dtype, shard)
        self.embed = load.get("embed_tokens.weight")
        if self.embed.shape != (arch.vocab_size, arch.hidden_size):
            raise InvalidArgument(
                f"embed_tokens.weight has shape {tuple(self.embed.shape)}, config says "
                f"({arch.vocab_size}, {arch.hidden_size})"
            )
        self.layers = [self._load_layer(load, i) for i in range(arch.num_layers)]
        self.norm = load.get("norm.weight")
        if shard is not None and shard.rank > 0:
            load.used.add("lm_head.weight")  # rank 0 computes the logits
            self.lm_head = None
        elif load.has("lm_head.weight") and not arch.tie_word_embeddings:
            self.lm_head = load.get("lm_head.weight", weight=True)
        elif load.has("lm_head.weight") and not torch.equal(
            state["lm_head.weight"], state["embed_tokens.weight"]
        ):
            # Config says tied but the checkpoint stores a distinct head: transformers
            # would tie (and ignore it); follow transformers.
            logger.warning("tie_word_embeddings is set; ignoring the stored lm_head.weight")
            load.used.add("lm_head.weight")
            self.lm_head = self.embed
        else:
            if not arch.tie_word_embeddings and not load.has("lm_head.weight"):
                logger.warning("checkpoint has no lm_head.weight; tying it to embed_tokens")
            load.used.add("lm_head.weight")
            self.lm_head = self.embed
        unused = sorted(set(state) - load.used)
        if unused:
            logger.warning("ignoring %d checkpoint tensors: %s", len(unused), unused[:8])
        self.windows = arch.layer_windows
        self.window_set: set[int | None] = set(self.windows)
        # GEMM weights in the layout of the device's fastest linear (prepacked on CPU)
        # (or a weight-only format: bf16 or int8 weights under float32 activations)
        self.linears = Linears(device, dtype, arch.weight_dtype, arch.weight_only_precision)
        for layer in self.layers:
            for name in ("qkv", "o_proj", "gate_up", "down"):
                setattr(layer, name, self.linears.pack(getattr(layer, name)))
        # the LM head stays out of int8: its rounding would go straight into the logits
        self.head = None if self.lm_head is None else self.linears.pack(self.lm_head,
                                                                        quantize=False)
        # fused C row kernels (RMSNorm with its residual add, SiLU * up, RoPE) on CPU fp32
        self.row_kernels = (device.type == "cpu" and dtype == torch.float32
                            and cpu_kernels.rows_supported(self.norm))
        self.fused_silu = self.row_kernels and self.act is F.silu

    def _load_layer(self, load: _Loader, i: int) -> LayerWeights:
        p = f"layers.{i}."
        attn, mlp = p + "self_attn.", p + "mlp."
        col = "column"
        qkv = load.cat([attn + "q_proj.weight", attn + "k_proj.weight", attn + "v_proj.weight"],
                       weight=True, split=col)
        gate_up = load.cat([mlp + "gate_proj.weight", mlp + "up_proj.weight"], weight=True,
                           split=col)
        assert qkv is not None and gate_up is not None
        arch = self.arch
        expected = (arch.q_size + 2 * arch.kv_size, arch.hidden_size)
        if tuple(qkv.shape) != expected:
            raise InvalidArgument(f"layer {i}: q/k/v weights {tuple(qkv.shape)} != {expected}")
        return LayerWeights(
            input_norm=load.get(p + "input_layernorm.weight"),
            qkv=qkv,
            qkv_bias=load.cat([attn + "q_proj.bias", attn + "k_proj.bias", attn + "v_proj.bias"],
                              split=col),
            o_proj=load.get(attn + "o_proj.weight", weight=True, split="row"),
            o_bias=load.opt(attn + "o_proj.bias"),
            post_norm=load.get(p + "post_attention_layernorm.weight"),
            gate_up=gate_up,
            gate_up_bias=load.cat([mlp + "gate_proj.bias", mlp + "up_proj.bias"], split=col),
            down=load.get(mlp + "down_proj.weight", weight=True, split="row"),
            down_bias=load.opt(mlp + "down_proj.bias"),
        )

    def add_rms_norm(self, x: torch.Tensor, delta: torch.Tensor | None,
                     weight: torch.Tensor) -> torch.Tensor:
        """x += delta in place (the residual stream; x is the forward's own tensor), then
        the RMSNorm of x."""
        if self.row_kernels and (delta is None or delta.is_contiguous()) and x.is_contiguous():
            return cpu_kernels.rms_norm(x, weight, self.eps, delta)
        if delta is not None:
            x.add_(delta)
        return self.rms_norm(x, weight)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), weight, self.eps)
        # transformers normalises in fp32, rounds to the model dtype, then scales.
        normed = F.rms_norm(x.float(), (x.shape[-1],), None, self.eps)
        return weight * normed.to(x.dtype)

    def forward(
        self,
        meta: StepMetadata,
        cache: KVCache,
        cos: torch.Tensor,
        sin: torch.Tensor,
        lora: LoraBatch | None = None,
        embeds: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Runs every layer over the step's tokens; returns the final hidden states of
        the rows that need logits [num_logit_rows, hidden] (after the final norm).
        lora adds the per-token adapter deltas to the q/k/v, o, gate/up and down outputs;
        embeds (rows, vectors) replaces those rows' token embeddings (p-tuning)."""
        arch = self.arch
        num_tokens = meta.input_ids.shape[0]
        q_size, kv_size, head_dim = arch.q_size, arch.kv_size, arch.head_dim
        num_qk_heads = arch.num_heads + arch.num_kv_heads
        linear = self.linears.fn
        x = F.embedding(meta.input_ids, self.embed)  # the residual stream, updated in place
        if embeds is not None:
            x.index_copy_(0, embeds[0], embeds[1])
        delta: torch.Tensor | None = None  # the last MLP output, not yet added to x
        for i, layer in enumerate(self.layers):
            h = self.add_rms_norm(x, delta, layer.input_norm)
            qkv = linear(h, layer.qkv, layer.qkv_bias)
            if lora is not None:
                lora.apply(i, LINEAR_QKV, h, qkv)
            # q and k share the per-token rotation: rotate them in one op.
            qk = qkv[:, : q_size + kv_size].view(num_tokens, num_qk_heads, head_dim)
            if self.row_kernels and qk.stride(1) == head_dim and qk.stride(2) == 1:
                qk = cpu_kernels.rope(qk, cos, sin)
            else:
                qk = apply_rope(qk, cos, sin)
            q = qk[:, : arch.num_heads]
            k = qk[:, arch.num_heads :]
            v = qkv[:, q_size + kv_size :].view(num_tokens, arch.num_kv_heads, head_dim)
            o = paged_attention(i, q, k, v, cache, meta, self.scale, self.windows[i])
            o = o.reshape(num_tokens, q_size)
            attn_out = self._row_parallel(o, layer.o_proj, layer.o_bias)
            if lora is not None:
                lora.apply(i, LINEAR_O, o, attn_out)
            h = self.add_rms_norm(x, attn_out, layer.post_norm)
            gate_up = linear(h, layer.gate_up, layer.gate_up_bias)
            if lora is not None:
                lora.apply(i, LINEAR_GATE_UP, h, gate_up)
            if self.fused_silu and gate_up.is_contiguous():
                act = cpu_kernels.silu_mul(gate_up)
            else:
                gate, up = gate_up.chunk(2, dim=-1)
                act = self.act(gate) * up
            mlp_out = self._row_parallel(act, layer.down, layer.down_bias)
            if lora is not None:
                lora.apply(i, LINEAR_DOWN, act, mlp_out)
            delta = mlp_out
        if meta.logit_rows is not None:
            if delta is not None:
                x.add_(delta)
            return self.rms_norm(x.index_select(0, meta.logit_rows), self.norm)
        return self.add_rms_norm(x, delta, self.norm)

    def _row_parallel(self, x: torch.Tensor, weight, bias: torch.Tensor | None) -> torch.Tensor:
        """x @ weight.T + bias; under tensor parallelism each rank holds a slice of x's
        features and of weight's columns, so the partial products are summed over the
        ranks and the bias is added once, after the sum."""
        if self.group is None:
            return self.linears.fn(x, weight, bias)
        out = self.linears.fn(x, weight, None)
        self.group.all_reduce(out)
        return out if bias is None else out.add_(bias)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linears.fn(hidden, self.head, None).float()
