"""Per-token log probs from model outputs (output_log_probs for the chosen tokens,
generation_logits / context_logits for the top alternatives and the prompt) in the
shapes of OpenAI's completions (`logprobs`) and chat (`logprobs.content`) APIs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmserve.core.types import InferenceResponse
from llmserve.frontends.openai.protocol import (
    ChatLogprobs,
    ChatTokenLogprob,
    CompletionLogprobs,
    TopLogprob,
)


@dataclass(slots=True)
class TokenLogprob:
    token: str
    logprob: float | None  # None for the first prompt token (nothing predicts it)
    top: list[tuple[str, float]] = field(default_factory=list)


def _rows(response: InferenceResponse, name: str) -> np.ndarray | None:
    """An output as a 2-D float array (first batch item / beam), or None."""
    tensor = response.output(name)
    if tensor is None:
        return None
    arr = np.asarray(tensor.data, dtype=np.float32)
    if arr.ndim == 0:
        return None
    if arr.ndim < 2:
        return arr.reshape(1, -1)
    return arr.reshape(int(np.prod(arr.shape[:-1])), arr.shape[-1])  # -1 fails at 0 tokens


def _log_softmax(rows: np.ndarray) -> np.ndarray:
    shifted = rows - rows.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _top(tokenizer: Any, row: np.ndarray, n: int) -> list[tuple[str, float]]:
    if n <= 0:
        return []
    n = min(n, row.shape[-1])
    idx = np.argpartition(-row, n - 1)[:n]
    idx = idx[np.argsort(-row[idx], kind="stable")]
    return [(tokenizer.decode([int(i)]), float(row[i])) for i in idx]


def token_strings(tokenizer: Any, text: str, count: int) -> list[str]:
    """The text of each of `count` tokens whose decoded text is `text`: one token is the
    text itself; several are split by re-encoding when that gives the same count."""
    if count == 1:
        return [text]
    ids = tokenizer.encode(text, add_special_tokens=False) if text else []
    if len(ids) == count:
        return [tokenizer.decode([i]) for i in ids]
    return [text] + [""] * (count - 1)


def step_logprobs(tokenizer: Any, response: InferenceResponse, text: str, count: int,
                  top_n: int) -> list[TokenLogprob]:
    """Entries for the `count` tokens one response carries (its text is `text`)."""
    chosen = _rows(response, "output_log_probs")
    values = [] if chosen is None else chosen[0, -count:].tolist()
    values += [0.0] * (count - len(values))
    tops: list[list[tuple[str, float]]] = [[] for _ in range(count)]
    logits = _rows(response, "generation_logits") if top_n else None
    if logits is not None and logits.shape[-1] > 1 and logits.shape[0] >= count:
        lsm = _log_softmax(logits[-count:])
        tops = [_top(tokenizer, row, top_n) for row in lsm]
    strings = token_strings(tokenizer, text, count)
    return [TokenLogprob(s, float(v), t) for s, v, t in zip(strings, values, tops, strict=True)]


def prompt_logprobs(tokenizer: Any, ids: list[int], response: InferenceResponse,
                    top_n: int) -> list[TokenLogprob] | None:
    """Log probs of the prompt tokens from context_logits [prompt_len, vocab]; None when
    the response does not carry them."""
    rows = _rows(response, "context_logits")
    if rows is None or rows.shape[0] != len(ids) or rows.shape[-1] <= 1:
        return None
    lsm = _log_softmax(rows)
    out = [TokenLogprob(tokenizer.decode([ids[0]]), None, [])]
    for i in range(1, len(ids)):
        row = lsm[i - 1]
        out.append(TokenLogprob(tokenizer.decode([ids[i]]), float(row[ids[i]]),
                                _top(tokenizer, row, top_n)))
    return out


def completion_logprobs(entries: list[TokenLogprob], offset: int = 0) -> CompletionLogprobs:
    """The legacy completions shape; text_offset counts from `offset` (the choice's text
    starts there: 0, or after the echoed prompt)."""
    out = CompletionLogprobs()
    for entry in entries:
        out.tokens.append(entry.token)
        out.token_logprobs.append(entry.logprob)
        out.text_offset.append(offset)
        offset += len(entry.token)
        if entry.logprob is None:
            out.top_logprobs.append(None)
            continue
        top = dict(entry.top)
        top.setdefault(entry.token, entry.logprob)  # as vLLM: the chosen token is listed too
        out.top_logprobs.append(top)
    return out


def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8"))


def chat_logprobs(entries: list[TokenLogprob]) -> ChatLogprobs:
    content = [
        ChatTokenLogprob(
            token=e.token, logprob=float(e.logprob or 0.0), bytes=_bytes(e.token),
            top_logprobs=[TopLogprob(token=t, logprob=lp, bytes=_bytes(t)) for t, lp in e.top],
        )
        for e in entries
    ]
    return ChatLogprobs(content=content)
