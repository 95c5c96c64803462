"""Tokenizer-side helpers of the inflight_batcher_llm model set.

Stop/bad word strings to the [batch, 2, L] ids/offsets form, embedding-bias words to a
vocab-sized bias, and streaming detokenization that never splits a UTF-8 character
(Utf8HoldBack for token deltas, IncrementalDecoder with decode offsets for the BLS).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

REPLACEMENT_CHAR = "\ufffd"
# A UTF-8 character is at most 4 bytes; byte-fallback tokens carry one byte each, so
# holding back more tokens than this can only wait on a real U+FFFD.
MAX_HELD_TOKENS = 8


def load_tokenizer(tokenizer_dir: str | Path):
    """AutoTokenizer from a local folder (never the network)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)


def as_text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def word_list(elements: Sequence) -> list[str]:
    """Word strings of one batch item: each BYTES element is one word, commas and all,
    as tensorrtllm_backend's preprocessing (_to_word_list_format) and BLS take them;
    empty elements are skipped."""
    return [text for text in map(as_text, elements) if text]


def words_to_ids_offsets(tokenizer, batch: Sequence[Sequence] | None, batch_size: int) -> np.ndarray:
    """[batch, 2, L] INT32: row 0 the concatenated ids padded with 0, row 1 the cumulative
    end offsets padded with -1. Each word is encoded without special tokens."""
    flat_ids: list[list[int]] = []
    offsets: list[list[int]] = []
    for i in range(batch_size):
        elements = [] if batch is None else list(np.asarray(batch[i], dtype=object).reshape(-1))
        ids: list[int] = []
        ends: list[int] = []
        for word in word_list(elements):
            word_ids = tokenizer.encode(word, add_special_tokens=False)
            if word_ids:
                ids.extend(int(t) for t in word_ids)
                ends.append(len(ids))
        flat_ids.append(ids)
        offsets.append(ends)
    width = max((max(len(a), len(b)) for a, b in zip(flat_ids, offsets, strict=True)), default=0)
    out = np.zeros((batch_size, 2, width), dtype=np.int32)
    out[:, 1, :] = -1
    for i, (ids, ends) in enumerate(zip(flat_ids, offsets, strict=True)):
        out[i, 0, : len(ids)] = ids
        out[i, 1, : len(ends)] = ends
    return out


def model_vocab_size(tokenizer, engine_dir: str | Path | None) -> int:
    """The model's vocab size (config.json of engine_dir) or else the tokenizer's."""
    if engine_dir:
        config = Path(engine_dir) / "config.json"
        if config.is_file():
            data = json.loads(config.read_text())
            size = data.get("vocab_size") or data.get("text_config", {}).get("vocab_size")
            if size:
                return int(size)
    return len(tokenizer)


def embedding_bias(
    tokenizer, words: Sequence | None, weights: Sequence | None, batch_size: int, vocab_size: int
) -> np.ndarray:
    """[batch, vocab] FP32 bias (every token of a word gets the word's weight), or
    [batch, 0] when no words are given."""
    if words is None or weights is None:
        return np.zeros((batch_size, 0), dtype=np.float32)
    out = np.zeros((batch_size, vocab_size), dtype=np.float32)
    for i in range(batch_size):
        item_words = list(np.asarray(words[i], dtype=object).reshape(-1))
        item_weights = np.asarray(weights[i], dtype=np.float32).reshape(-1)
        if len(item_words) != len(item_weights):
            raise ValueError(
                "Embedding bias words must have the same number of elements as embedding "
                f"bias weights ({len(item_words)} != {len(item_weights)})"
            )
        for word, weight in zip(item_words, item_weights, strict=True):
            for token in tokenizer.encode(as_text(word), add_special_tokens=False):
                if 0 <= token < vocab_size:
                    out[i, token] += weight
    return out


def _anchor(tokenizer) -> tuple[list[int], str]:
    """A fixed one-token text to decode behind, and its own text (cached per tokenizer)."""
    cached = getattr(tokenizer, "_llmserve_anchor", None)
    if cached is None:
        ids = tokenizer.encode("a", add_special_tokens=False)
        head = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        cached = (list(ids), head)
        tokenizer._llmserve_anchor = cached
    return cached


def decode_continuation(tokenizer, ids: Sequence[int], skip_special_tokens: bool) -> str:
    """Text of `ids` as they read in the middle of a text: SentencePiece tokenizers drop
    the leading space of a text's first token, so decode behind a fixed anchor and cut it."""
    anchor, head = _anchor(tokenizer)
    if not anchor or not ids:
        return tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
    kwargs = {"skip_special_tokens": skip_special_tokens, "clean_up_tokenization_spaces": False}
    full = tokenizer.decode(anchor + list(ids), **kwargs)
    if head and full.startswith(head):
        return full[len(head) :]
    return tokenizer.decode(list(ids), **kwargs)


def incomplete_token_ids(tokenizer) -> frozenset[int]:
    """Ids whose text alone is not whole characters (byte-fallback and partial byte-level
    BPE tokens decode to U+FFFD): only these can end a delta in a split character."""
    cached = getattr(tokenizer, "_llmserve_incomplete", None)
    if cached is None:
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))],
                                       clean_up_tokenization_spaces=False)
        cached = frozenset(i for i, t in enumerate(texts) if REPLACEMENT_CHAR in t)
        tokenizer._llmserve_incomplete = cached
    return cached


class Utf8HoldBack:
    """Holds back streamed tokens until they decode to complete characters, so every
    delta a client decodes on its own is valid text. One instance per sequence."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self._incomplete = incomplete_token_ids(tokenizer)
        self._pending: list[int] = []

    def push(self, tokens: Sequence[int], final: bool) -> list[int]:
        """Tokens to emit now (all pending ones when final)."""
        if not self._pending and not any(int(t) in self._incomplete for t in tokens):
            return [int(t) for t in tokens]  # whole characters: no decode needed
        self._pending.extend(int(t) for t in tokens)
        if not final and len(self._pending) < MAX_HELD_TOKENS and self._pending:
            text = self._tokenizer.decode(self._pending, clean_up_tokenization_spaces=False)
            if text.endswith(REPLACEMENT_CHAR):
                return []
        out, self._pending = self._pending, []
        return out


class IncrementalDecoder:
    """Streaming detokenization with decode offsets (prefix/read, as vLLM and TGI do):
    every delta is decode(tokens[prefix:]) minus decode(tokens[prefix:read]), emitted only
    when it does not end in an incomplete character. `decode_many` decodes several id
    lists at once (the BLS sends them to the postprocessing model as one batch)."""

    def __init__(self, decode_many: Callable[[list[list[int]]], list[str]]) -> None:
        self._decode_many = decode_many
        self.tokens: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, tokens: Sequence[int], final: bool = False) -> str:
        self.tokens.extend(int(t) for t in tokens)
        if self._read == len(self.tokens):
            return ""
        before, after = self._decode_many(
            [self.tokens[self._prefix : self._read], self.tokens[self._prefix :]]
        )
        if not final and (len(after) <= len(before) or after.endswith(REPLACEMENT_CHAR)):
            if len(self.tokens) - self._read < MAX_HELD_TOKENS:
                return ""
        delta = after[len(before) :] if after.startswith(before) else after
        self._prefix, self._read = self._read, len(self.tokens)
        return delta
