"""Stop conditions of a sequence: end id, multi-token stop words, max_tokens.

The end id token is not part of the output (as TensorRT-LLM); a matched stop word is.
A stop word matches only within the generated tokens, ending at the newest one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmserve.llm.request import FinishReason


@dataclass(slots=True)
class StopCriteria:
    max_tokens: int
    end_ids: frozenset[int] = frozenset()
    stop_words: list[list[int]] = field(default_factory=list)

    @classmethod
    def build(cls, max_tokens: int, end_id: int | None,
              stop_words: list[list[int]] | None) -> StopCriteria:
        end_ids = frozenset([int(end_id)]) if end_id is not None and end_id >= 0 else frozenset()
        words = stop_words if stop_words is not None else []
        return cls(int(max_tokens), end_ids, [[int(t) for t in w] for w in words if len(w)])

    def is_end(self, token: int) -> bool:
        return token in self.end_ids

    def after_append(self, output_ids: list[int]) -> FinishReason:
        """Reason to stop once output_ids (generated tokens) got a new last token."""
        for word in self.stop_words:
            if len(word) <= len(output_ids) and output_ids[-len(word):] == word:
                return FinishReason.STOP_WORDS
        if len(output_ids) >= self.max_tokens:
            return FinishReason.LENGTH
        return FinishReason.NOT_FINISHED
