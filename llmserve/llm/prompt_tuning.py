"""p-tuning requests (TensorRT-LLM's PromptTuningConfig): checks a request's prompt
table and extra ids against the model, and moves the table to the engine once."""

from __future__ import annotations

import torch

from llmserve.core.errors import InvalidArgument
from llmserve.llm.request import PromptTuningConfig


def prepare_prompt_table(config: PromptTuningConfig, prompt: list[int], vocab_size: int,
                         hidden_size: int, dtype: torch.dtype,
                         device: str | torch.device) -> PromptTuningConfig:
    """The config with its table on the engine's device and dtype; raises InvalidArgument
    for a table of the wrong shape, prompt ids past it, or extra ids of the wrong length."""
    table = torch.as_tensor(config.embedding_table)
    if table.dim() == 3 and table.shape[0] == 1:
        table = table[0]  # [1, rows, hidden], as the Triton input carries it
    if table.dim() != 2 or table.shape[0] < 1 or table.shape[1] != hidden_size:
        raise InvalidArgument(
            f"prompt_embedding_table must have shape [rows, {hidden_size}] (the model's "
            f"hidden size), got {list(table.shape)}")
    if not table.is_floating_point():
        raise InvalidArgument("prompt_embedding_table must hold floating-point values")
    limit = vocab_size + table.shape[0]
    if max(prompt) >= limit:
        raise InvalidArgument(
            f"input_token_ids must be in [0, {limit}): the vocabulary ({vocab_size}) plus "
            f"the prompt table's {table.shape[0]} rows")
    extra = config.input_token_extra_ids
    if extra is not None:
        extra = [int(t) for t in extra]
        if len(extra) != len(prompt):
            raise InvalidArgument(
                f"prompt_table_extra_ids has {len(extra)} values for {len(prompt)} input "
                "tokens")
        if min(extra, default=0) < 0:
            raise InvalidArgument("prompt_table_extra_ids must be >= 0")
    return PromptTuningConfig(table.to(device=device, dtype=dtype), extra)
