"""Streamed tokens held back while the reader is behind, sent as one response.

At high concurrency the per-response path after the engine (an ensemble's
postprocessing step, the OpenAI chunk, the SSE write) costs more than the engine's
step: a reader that falls behind would queue one response per token and never catch up.
While the reader has not taken the previous response (ResponseSink.behind), a stream's
new tokens accumulate here and leave as one response when it has (vLLM's output
collector merges a slow reader's deltas the same way). A reader that keeps up sees one
response per engine step, as before. The final response always leaves at once, with
whatever was held.

Only plain deltas merge: one beam (beam search streams whole beams), no logits (their
shapes are per step) and no perf metrics (per response). Log probs concatenate like the
tokens; cumulative log probs, finish reasons and counts are the latest result's.
"""

from __future__ import annotations

import dataclasses

from llmserve.backends.tensorrtllm.request_mapping import ItemOptions
from llmserve.llm.request import Result


def can_merge(options: ItemOptions) -> bool:
    return options.beam_width == 1 and not (
        options.return_context_logits or options.return_generation_logits
        or options.return_perf_metrics)


class HeldTokens:
    """The tokens (and log probs) of one sequence not yet sent."""

    __slots__ = ("result", "ids", "log_probs", "num_output_tokens")

    def __init__(self, result: Result, ids: list[list[int]], num_output_tokens: int):
        self.result = result
        self.ids = [list(b) for b in ids]
        self.log_probs = [list(p) for p in result.log_probs] if result.log_probs else None
        self.num_output_tokens = num_output_tokens

    @property
    def sequence_index(self) -> int:
        return self.result.sequence_index

    def add(self, result: Result, ids: list[list[int]], num_output_tokens: int) -> None:
        for mine, new in zip(self.ids, ids, strict=False):
            mine.extend(new)
        if self.log_probs is not None and result.log_probs:
            for mine, new in zip(self.log_probs, result.log_probs, strict=False):
                mine.extend(new)
        self.result = result
        self.num_output_tokens = num_output_tokens

    def merged(self) -> Result:
        """The latest result carrying every held log prob."""
        if self.log_probs is None:
            return self.result
        return dataclasses.replace(self.result, log_probs=self.log_probs)
