"""A guided sequence's grammar state and the sampler's masking step.

GuideMatcher wraps one xgrammar GrammarMatcher: the sampler asks it which tokens may
come next, the stepper tells it which token came. apply_guides() masks the logits rows of
the guided sequences of a batch in one go; unguided rows are not touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from llmserve.llm.guided.closing import Closer

# Token budget left from which the closing path is looked at each step, and the margins
# of the two steering zones (see GuideMatcher.allowed).
WATCH = 64
EXACT_MARGIN = 8
SINGLE_MARGIN = 16


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

    def allowed(self) -> list[int] | None:
        """None: the grammar's own mask is enough. Otherwise the only tokens to allow now
        (within the grammar's), so that the grammar can still end within the budget:
        - the closing path leaves fewer than EXACT_MARGIN spare tokens: one-character
          tokens after which it still fits (or the stop tokens, when it may end now and
          nothing else fits);
        - fewer than EXACT_MARGIN + SINGLE_MARGIN: one-character tokens and stop tokens,
          whose effect on the path is small enough for the exact zone to catch."""
        remaining = self.budget - self.accepted
        if self.closer is None or remaining > WATCH:
            return None
        path = self.closer.path(self.matcher, remaining)
        if path is None:  # cannot end within the budget any more, or no walk found
            return None
        spare = remaining - len(path)
        if spare > EXACT_MARGIN + SINGLE_MARGIN:
            return None
        if spare > EXACT_MARGIN:
            return sorted(self.closer.single | self.stop_tokens)
        fitting = self.closer.fitting(self.matcher, remaining)
        if self.matcher.is_completed():
            fitting += sorted(self.stop_tokens)
        return fitting or list(path[:1])


def guided_rows(rows: Sequence[Any]) -> list[int]:
    return [i for i, r in enumerate(rows) if getattr(r, "guide", None) is not None]


def apply_guides(logits: torch.Tensor, rows: Sequence[Any], idx: list[int],
                 before: torch.Tensor | None = None) -> None:
    """Mask logits[idx] (in place) to the tokens each row's guide allows. before: those
    rows before bad words / min_tokens bans; a row whose guide allows only banned tokens
    takes its guide's tokens from there (the guide wins over the bans)."""
    import xgrammar as xgr

    batch, vocab = len(idx), logits.shape[1]
    bitmask = xgr.allocate_token_bitmask(batch, vocab)
    keeps: list[tuple[int, list[int]]] = []
    for k, i in enumerate(idx):
        guide = rows[i].guide
        guide.fill(bitmask, k)
        keep = guide.allowed()
        if keep is not None:
            keeps.append((k, keep))
    sub = logits[idx]
    xgr.apply_token_bitmask_inplace(sub, bitmask.to(sub.device, non_blocking=True))
    for k, keep in keeps:
        ids = torch.tensor(keep, dtype=torch.long, device=sub.device)
        ids = ids[ids < vocab]
        masked = torch.full_like(sub[k], float("-inf"))
        masked[ids] = sub[k, ids]
        sub[k] = masked
    if before is not None:
        dead = torch.isinf(sub).all(dim=1) if batch else None
        if dead is not None and bool(dead.any()):
            redo = before[dead].clone()
            xgr.apply_token_bitmask_inplace(redo, bitmask[dead.cpu()].to(redo.device))
            sub[dead] = redo
    logits[idx] = sub
