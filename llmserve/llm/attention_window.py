"""Per-layer attention windows from KvCacheConfig (TensorRT-LLM's max_attention_window
and sink_token_length) combined with the checkpoint's own sliding windows.

A window counts the keys a query attends to, its own included (transformers'
sliding_window); with sink tokens, the first sink_token_length tokens stay attended and
the window's other window - sink keys are the most recent ones. One value applies to
every layer; a list is repeated over the layers (TensorRT-LLM's rule).
"""

from __future__ import annotations

from llmserve.core.errors import InvalidArgument
from llmserve.llm.config import KvCacheConfig


def layer_windows(kv: KvCacheConfig, checkpoint: list[int | None],
                  max_seq_len: int) -> tuple[list[int | None], int]:
    """(window per layer, None for full attention; sink tokens)."""
    num_layers = len(checkpoint)
    configured: list[int | None] = [None] * num_layers
    value = kv.max_attention_window
    if value is not None:
        values = [value] if isinstance(value, int) else [int(v) for v in value]
        if not values or min(values) < 1:
            raise InvalidArgument(
                f"kv_cache_config.max_attention_window must be >= 1, got {value}")
        configured = [values[i % len(values)] for i in range(num_layers)]
    windows: list[int | None] = []
    for own, cfg in zip(checkpoint, configured, strict=True):
        both = [w for w in (own, cfg) if w is not None]
        window = min(both) if both else None
        windows.append(None if window is None or window >= max_seq_len else window)
    sink = kv.sink_token_length or 0
    if sink < 0:
        raise InvalidArgument(f"kv_cache_config.sink_token_length must be >= 0, got {sink}")
    narrowest = min((w for w in windows if w is not None), default=None)
    if sink and narrowest is not None and sink >= narrowest:
        raise InvalidArgument(
            f"sink_token_length ({sink}) must be smaller than the attention window "
            f"({narrowest})")
    return windows, sink


def widest_window(windows: list[int | None]) -> int | None:
    """The window that bounds which blocks a sequence still needs (None: all of them)."""
    if not windows or None in windows:
        return None
    return max(w for w in windows if w is not None)
