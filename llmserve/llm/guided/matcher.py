"""A guided sequence's grammar state and the sampler's guided steps.

GuideMatcher wraps one xgrammar GrammarMatcher: the sampler asks it which tokens may
come next and, near the end of the token budget, whether the sampled one still lets the
grammar end in time; the stepper tells it which token came. apply_guides() masks the
logits rows of a batch's guided sequences in one go and check_guided() reviews their
sampled tokens; unguided rows are not touched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from llmserve.llm.guided.closing import Closer

# Token budget left from which a sampled token is checked against the closing path.
WATCH = 64


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

    def check(self, token: int) -> int:
        """The token to emit for `token` (sampled under the grammar's mask) so that the
        grammar can still end within the budget: token itself when the closing path
        (closing.py) after it fits in what is left, else the path's next token (a stop
        token where the grammar may end now)."""
        remaining = self.budget - self.accepted
        if self.closer is None or remaining > WATCH or token in self.stop_tokens:
            return token
        after = self.matcher.fork()
        if not after.accept_token(int(token)) or self.closer.path(after, remaining - 1) is not None:
            return token
        path = self.closer.path(self.matcher, remaining)
        if path is None:  # cannot end within the budget whatever comes next
            return token
        if path:
            return path[0]
        return min(self.stop_tokens) if self.stop_tokens else token


def guided_rows(rows: Sequence[Any]) -> list[int]:
    return [i for i, r in enumerate(rows) if getattr(r, "guide", None) is not None]


def apply_guides(logits: torch.Tensor, rows: Sequence[Any], idx: list[int],
                 before: torch.Tensor | None = None) -> None:
    """Mask logits[idx] (in place) to the tokens each row's guide allows. before: those
    rows before bad words / min_tokens bans; a row whose guide allows only banned tokens
    takes its guide's tokens from there (the guide wins over the bans)."""
    import xgrammar as xgr

    bitmask = xgr.allocate_token_bitmask(len(idx), logits.shape[1])
    for k, i in enumerate(idx):
        rows[i].guide.fill(bitmask, k)
    sub = logits[idx]
    xgr.apply_token_bitmask_inplace(sub, bitmask.to(sub.device, non_blocking=True))
    if before is not None:
        dead = torch.isinf(sub).all(dim=1)
        if bool(dead.any()):
            redo = before[dead].clone()
            xgr.apply_token_bitmask_inplace(redo, bitmask[dead.cpu()].to(redo.device))
            sub[dead] = redo
    logits[idx] = sub


def check_guided(tokens: torch.Tensor, rows: Sequence[Any], idx: list[int]) -> None:
    """Replace (in place) sampled tokens of guided rows that would leave their grammar
    unable to end within max_tokens (GuideMatcher.check)."""
    for i in idx:
        token = int(tokens[i])
        chosen = rows[i].guide.check(token)
        if chosen != token:
            tokens[i] = chosen
