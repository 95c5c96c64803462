"""ArchConfig: the model architecture the engine needs, read from a Hugging Face
checkpoint's config.json (and generation_config.json for end tokens), plus the
dtype/device choice the runner resolved."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmserve.core.errors import InvalidArgument, NotFound, Unsupported

logger = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
_ACTIVATIONS = ("silu", "swish", "gelu", "gelu_pytorch_tanh", "gelu_new", "relu")


@dataclass(slots=True)
class ArchConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    # Normalised rope parameters: {"rope_type": ..., "factor": ..., ...}; type "default"
    # when the checkpoint has no scaling.
    rope_parameters: dict[str, Any]
    tie_word_embeddings: bool
    hidden_act: str
    # Per-layer attention window in tokens (None = full attention).
    layer_windows: list[int | None]
    eos_token_ids: list[int]
    bos_token_id: int | None
    pad_token_id: int | None
    checkpoint_dtype: torch.dtype | None
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    # GEMM weights kept in another dtype than `dtype` (bf16 under float32 activations)
    weight_dtype: torch.dtype | None = None
    weight_only_precision: str | None = None  # "int8": the layers' GEMM weights quantised
    architectures: list[str] = field(default_factory=list)

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """Maps a dtype name ("bfloat16", "fp16", "torch.float32", ...) to a torch dtype."""
    if name is None or isinstance(name, torch.dtype):
        return name
    key = str(name).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise InvalidArgument(f"unsupported dtype '{name}' (float32, bfloat16, float16)")
    return _DTYPES[key]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"{path}: invalid JSON: {exc}") from exc


def _as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]


def _rope_parameters(cfg: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    # transformers 5 writes "rope_parameters" (rope_theta inside); older checkpoints
    # write "rope_theta" and "rope_scaling" (with "type" or "rope_type").
    params = dict(cfg.get("rope_parameters") or {})
    scaling = cfg.get("rope_scaling") or {}
    if scaling and not params.get("rope_type"):
        params.update(scaling)
    theta = float(params.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    if rope_type == "su":
        rope_type = "longrope"
    if rope_type == "mrope":
        rope_type = "default"
    params["rope_type"] = rope_type
    return theta, params


def _layer_windows(cfg: dict[str, Any], num_layers: int) -> list[int | None]:
    window = cfg.get("sliding_window")
    layer_types = cfg.get("layer_types")
    model_type = cfg.get("model_type")
    if not window:
        return [None] * num_layers
    if layer_types:
        return [int(window) if t == "sliding_attention" else None for t in layer_types]
    if model_type == "qwen2":
        if not cfg.get("use_sliding_window", False):
            return [None] * num_layers
        first = int(cfg.get("max_window_layers", num_layers))
        return [int(window) if i >= first else None for i in range(num_layers)]
    return [int(window)] * num_layers


def load_arch_config(model_path: str | Path) -> ArchConfig:
    """Reads config.json (+ generation_config.json) from a checkpoint folder."""
    path = Path(model_path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise NotFound(f"no config.json in model folder '{path}'")
    cfg = _read_json(config_file)
    if "text_config" in cfg and "hidden_size" not in cfg:
        cfg = {**cfg, **cfg["text_config"]}
    model_type = cfg.get("model_type", "")
    if "pretrained_config" in cfg or "build_config" in cfg or any(path.glob("*.engine")):
        raise Unsupported(
            f"'{path}' is a TensorRT-LLM engine folder; llmserve runs the Hugging Face "
            "checkpoint the engine was built from: point gpt_model_path (engine_dir) at "
            "that checkpoint folder (config.json, *.safetensors, tokenizer files)")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise Unsupported(
            f"{config_file}: model_type '{model_type}' is not supported "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    try:
        hidden = int(cfg["hidden_size"])
        num_heads = int(cfg["num_attention_heads"])
        num_layers = int(cfg["num_hidden_layers"])
        vocab = int(cfg["vocab_size"])
        intermediate = int(cfg["intermediate_size"])
    except KeyError as exc:
        raise InvalidArgument(f"{config_file}: missing field {exc}") from exc
    num_kv = int(cfg.get("num_key_value_heads") or num_heads)
    head_dim = int(cfg.get("head_dim") or hidden // num_heads)
    if num_heads % num_kv:
        raise InvalidArgument(
            f"{config_file}: num_attention_heads {num_heads} is not a multiple of "
            f"num_key_value_heads {num_kv}"
        )
    act = cfg.get("hidden_act", "silu")
    if act not in _ACTIVATIONS:
        raise Unsupported(f"{config_file}: hidden_act '{act}' is not supported")
    if float(cfg.get("partial_rotary_factor", 1.0)) != 1.0:
        raise Unsupported(f"{config_file}: partial_rotary_factor is not supported")
    theta, rope = _rope_parameters(cfg)
    if float(rope.get("partial_rotary_factor", 1.0)) != 1.0:
        raise Unsupported(f"{config_file}: partial_rotary_factor is not supported")

    eos = _as_id_list(cfg.get("eos_token_id"))
    bos = cfg.get("bos_token_id")
    pad = cfg.get("pad_token_id")
    gen_file = path / "generation_config.json"
    if gen_file.is_file():
        gen = _read_json(gen_file)
        eos = _as_id_list(gen.get("eos_token_id")) or eos
        bos = gen.get("bos_token_id", bos)
        pad = gen.get("pad_token_id", pad)
    dtype_name = cfg.get("dtype") or cfg.get("torch_dtype")
    return ArchConfig(
        model_type=model_type,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv,
        head_dim=head_dim,
        max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_parameters=rope,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        hidden_act=act,
        layer_windows=_layer_windows(cfg, num_layers),
        eos_token_ids=eos,
        bos_token_id=None if bos is None else int(bos),
        pad_token_id=None if pad is None else int(pad),
        checkpoint_dtype=parse_dtype(dtype_name) if dtype_name else None,
        architectures=list(cfg.get("architectures") or []),
    )


def resolve_dtype(requested: str, arch: ArchConfig, device: str) -> torch.dtype:
    """Picks the compute dtype: "auto" follows the checkpoint, except fp16 on CPU."""
    if requested in ("auto", "", None):
        dtype = arch.checkpoint_dtype or torch.float32
        if dtype == torch.float16 and not device.startswith("cuda"):
            logger.warning("checkpoint is float16; float16 matmuls on CPU are slow, using float32")
            dtype = torch.float32
        return dtype
    dtype = parse_dtype(requested)
    assert dtype is not None
    if dtype == torch.float16 and not device.startswith("cuda"):
        logger.warning("float16 on CPU was requested explicitly; expect slow matmuls")
    return dtype
