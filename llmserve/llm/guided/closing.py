"""Closing a guided output before max_tokens runs out.

A weak model can keep a JSON string or array open until max_tokens and end with a
document that does not parse. The Closer estimates how many tokens the grammar still
needs: from a copy of the matcher it walks a greedy path to a point where the grammar
may end. Text the grammar forces (a required key, an enum's only value) is taken whole,
in the vocabulary's longest tokens; elsewhere one-character tokens, preferring closers
(`"` `}` `]` `)`, then short values), opening nothing new and repeating no filler token
more than a few times. Near the end of the token budget the GuideMatcher (matcher.py)
checks each sampled token: when the path after it no longer fits in what is left, the
path's next token is emitted instead.
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
MAX_TOKEN_BYTES = 48  # longest token tried when splitting forced text


class Closer:
    """A vocabulary's tokens by text: one-character ones in walk order, all of them for
    splitting forced text."""

    def __init__(self, decoded_vocab: list[bytes], special_ids: set[int]) -> None:
        by_text: dict[bytes, int] = {}
        for token_id, text in enumerate(decoded_vocab):
            if token_id in special_ids or not text or len(text) > MAX_TOKEN_BYTES:
                continue
            by_text.setdefault(bytes(text), token_id)
        self.by_text = by_text
        self.longest = max((len(t) for t in by_text), default=1)
        self.order = [by_text[b] for b in _ORDER_BYTES if b in by_text]
        self.single = frozenset(self.order)
        self.closers = frozenset(by_text[c.encode()] for c in _CLOSERS if c.encode() in by_text)

    def split(self, text: bytes) -> list[int]:
        """text in the vocabulary's longest tokens, left to right ([] if it cannot)."""
        out, i = [], 0
        while i < len(text):
            for n in range(min(self.longest, len(text) - i), 0, -1):
                token = self.by_text.get(text[i : i + n])
                if token is not None:
                    out.append(token)
                    i += n
                    break
            else:
                return []
        return out

    def forced(self, matcher: Any) -> list[int]:
        """Tokens of the text the grammar forces next ([] when it forces nothing)."""
        text = matcher.find_jump_forward_string()
        return self.split(text.encode("utf-8", "surrogatepass")) if text else []

    def path(self, matcher: Any, limit: int = MAX_PATH) -> list[int] | None:
        """Tokens that take a copy of matcher to a point where the grammar may end (empty
        when it may end now); None when the walk finds none within limit tokens."""
        m = matcher.fork()
        walk: list[int] = []
        used: dict[int, int] = {}
        while not m.is_completed():
            if len(walk) >= limit:
                return None
            forced = self.forced(m)
            if forced:
                for token in forced:
                    if not m.accept_token(token):
                        return None
                walk += forced
                continue
            for token in self.order:
                # a repeated filler (digits of a number, `a` of "a"* "b") may never end
                if used.get(token, 0) < MAX_REPEATS or token in self.closers:
                    if m.accept_token(token):
                        walk.append(token)
                        used[token] = used.get(token, 0) + 1
                        break
            else:
                return None
        return walk if len(walk) <= limit else None
