"""A guided sequence's grammar state and the sampler's masking step.

GuideMatcher wraps one xgrammar GrammarMatcher: the sampler asks it which tokens may
come next, the stepper tells it which token came. apply_guides() masks the logits rows of
the guided sequences of a batch in one go; unguided rows are not touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from llmserve.llm.guided.closing import Closer

# Token budget left from which the closing path is looked at each step, and the spare
# tokens (budget left minus the path) below which tokens are limited (see allowed()).
WATCH = 64
EXACT_SPARE = 8
SHORT_SPARE = 24
BYTES_PER_PATH_TOKEN = 3  # a token of n bytes lengthens the closing path by < 3n tokens


@dataclass(slots=True)
class Limit:
    """Tokens a guided row may take now, within its grammar's: those of at most
    max_bytes bytes, plus `also`; max_bytes 0: only `also`."""

    max_bytes: int
    also: list[int]


class GuideMatcher:
    """Grammar state of one sequence; budget is its max_tokens."""

    __slots__ = ("matcher", "stop_tokens", "budget", "accepted", "closer")

    def __init__(self, matcher: Any, stop_tokens: frozenset[int], budget: int,
                 closer: Closer | None) -> None:
        self.matcher = matcher
        self.stop_tokens = stop_tokens
        self.budget = budget
        self.accepted = 0
        self.closer = closer

    def fork(self) -> GuideMatcher:
        twin = GuideMatcher(self.matcher.fork(), self.stop_tokens, self.budget, self.closer)
        twin.accepted = self.accepted
        return twin

    def is_stop(self, token: int) -> bool:
        """token ends the guided output (the grammar allowed it only where it may end)."""
        return token in self.stop_tokens

    def accept(self, token: int) -> bool:
        self.accepted += 1
        return bool(self.matcher.accept_token(int(token)))

    def fill(self, bitmask: torch.Tensor, row: int) -> None:
        self.matcher.fill_next_token_bitmask(bitmask, row)

    def limit(self) -> Limit | None:
        """None: the grammar's own mask is enough. Otherwise a Limit that keeps the
        closing path (closing.py) within the budget:
        - spare < SHORT_SPARE: tokens short enough that one cannot lengthen the path past
          the spare, the path's next token and the stop tokens;
        - spare <= EXACT_SPARE: only tokens after which the path is checked to fit (the
          path's next token and one-character ones), and the stop tokens where the
          grammar may end."""
        remaining = self.budget - self.accepted
        if self.closer is None or remaining > WATCH:
            return None
        path = self.closer.path(self.matcher, remaining)
        if path is None:  # cannot end within the budget any more, or no walk found
            return None
        spare = remaining - len(path)
        if spare >= SHORT_SPARE:
            return None
        stops = sorted(self.stop_tokens) if self.matcher.is_completed() else []
        if spare > EXACT_SPARE:
            max_bytes = max(1, (spare - EXACT_SPARE) // BYTES_PER_PATH_TOKEN)
            return Limit(max_bytes, [*path[:1], *stops])
        fitting = self.closer.fitting(self.matcher, remaining)
        return Limit(0, (fitting + stops) or list(path[:1]))


def guided_rows(rows: Sequence[Any]) -> list[int]:
    return [i for i, r in enumerate(rows) if getattr(r, "guide", None) is not None]


def _apply_limit(row: torch.Tensor, limit: Limit, closer: Closer) -> None:
    vocab = row.shape[0]
    keep = torch.zeros(vocab, dtype=torch.bool, device=row.device)
    if limit.max_bytes:
        keep |= closer.token_bytes(vocab, row.device) <= limit.max_bytes
    also = [t for t in limit.also if t < vocab]
    if also:
        keep[torch.tensor(also, dtype=torch.long, device=row.device)] = True
    row.masked_fill_(~keep, float("-inf"))


def apply_guides(logits: torch.Tensor, rows: Sequence[Any], idx: list[int],
                 before: torch.Tensor | None = None) -> None:
    """Mask logits[idx] (in place) to the tokens each row's guide allows. before: those
    rows before bad words / min_tokens bans; a row whose guide allows only banned tokens
    takes its guide's tokens from there (the guide wins over the bans)."""
    import xgrammar as xgr

    batch, vocab = len(idx), logits.shape[1]
    bitmask = xgr.allocate_token_bitmask(batch, vocab)
    limits: list[tuple[int, Limit, Closer]] = []
    for k, i in enumerate(idx):
        guide: GuideMatcher = rows[i].guide
        guide.fill(bitmask, k)
        limit = guide.limit()
        if limit is not None and guide.closer is not None:
            limits.append((k, limit, guide.closer))
    sub = logits[idx]
    xgr.apply_token_bitmask_inplace(sub, bitmask.to(sub.device, non_blocking=True))
    for k, limit, closer in limits:
        _apply_limit(sub[k], limit, closer)
    if before is not None:
        dead = torch.isinf(sub).all(dim=1)
        if bool(dead.any()):
            redo = before[dead].clone()
            xgr.apply_token_bitmask_inplace(redo, bitmask[dead.cpu()].to(redo.device))
            sub[dead] = redo
    logits[idx] = sub
