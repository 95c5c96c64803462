"""The PyTorch engine: loads Hugging Face Llama-family checkpoints and runs batched
forwards over a paged KV cache (the B -> C contract: SeqChunk, ModelRunner, ArchConfig)."""

from . import kernel_ops  # noqa: F401  (registers torch.ops.llmserve.*)
from .attention import SeqChunk
from .config import ArchConfig, load_arch_config
from .kv_cache import KVCache, kv_cache_bytes_per_block
from .runner import ModelRunner

__all__ = [
    "ArchConfig",
    "KVCache",
    "ModelRunner",
    "SeqChunk",
    "kv_cache_bytes_per_block",
    "load_arch_config",
]
