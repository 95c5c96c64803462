"""Closing a guided output before max_tokens runs out.

A weak model can keep a JSON string or array open until max_tokens and end with a
document that does not parse. The Closer estimates how many tokens the grammar still
needs: from a copy of the matcher it walks a greedy path of one-character tokens,
preferring closers (`"` `}` `]` `)`, then short values), opening nothing new and
repeating no filler token more than a few times, until the grammar may end. The GuideMatcher uses that path near the end of the token budget
(matcher.py): first it allows only one-character tokens (each adds little to the
path), then, at the end, only those after which the path still fits.
"""

from __future__ import annotations

import string
from typing import Any

# closers first, openers last: the walk prefers ending what is open
_CLOSERS = ('"', "}", "]", ")")
_ORDER = (*_CLOSERS, "0", ":", ",", " ", *string.ascii_lowercase, *string.ascii_uppercase,
          *"123456789", *"-.+_'>", *(c for c in string.punctuation
                                        if c not in "{[\\\"}]):,-.+_'>"), "\\")
# then UTF-8 continuation bytes (to finish a character), then openers
_ORDER_BYTES = (*(c.encode() for c in _ORDER), *(bytes([b]) for b in range(0x80, 0xC0)),
                b"[", b"{")
MAX_PATH = 256  # a grammar needing a longer walk is not steered
MAX_REPEATS = 3  # a non-closing token used this often in one walk is not tried again


class Closer:
    """The one-character tokens of a vocabulary, in walk order."""

    def __init__(self, decoded_vocab: list[bytes], special_ids: set[int]) -> None:
        by_text: dict[bytes, int] = {}
        for token_id, text in enumerate(decoded_vocab):
            if token_id in special_ids or len(text) != 1:
                continue
            by_text.setdefault(text, token_id)
        self.order = [by_text[b] for b in _ORDER_BYTES if b in by_text]
        self.single = frozenset(self.order)
        self.closers = frozenset(by_text[c.encode()] for c in _CLOSERS if c.encode() in by_text)

    def path(self, matcher: Any, limit: int = MAX_PATH) -> list[int] | None:
        """Tokens that take a copy of matcher to a point where the grammar may end (empty
        when it may end now); None when the walk finds none within limit tokens."""
        m = matcher.fork()
        walk: list[int] = []
        used: dict[int, int] = {}
        while not m.is_completed():
            if len(walk) >= limit:
                return None
            for token in self.order:
                # a repeated filler (digits of a number, `a` of "a"* "b") may never end
                if used.get(token, 0) < MAX_REPEATS or token in self.closers:
                    if m.accept_token(token):
                        walk.append(token)
                        used[token] = used.get(token, 0) + 1
                        break
            else:
                return None
        return walk

    def fitting(self, matcher: Any, room: int, want: int = 8) -> list[int]:
        """Up to `want` one-character tokens after which the grammar can still end within
        room - 1 more tokens, in walk order."""
        out = []
        for token in self.order:
            m = matcher.fork()
            if not m.accept_token(token):
                continue
            rest = self.path(m, room - 1)
            if rest is not None:
                out.append(token)
                if len(out) >= want:
                    break
        return out
