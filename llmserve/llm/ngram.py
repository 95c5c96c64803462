"""n-gram prompt lookup: propose draft tokens by finding the sequence's newest n-gram
earlier in its own tokens (prompt + output) and copying what followed it there.

Pure functions over token lists (numpy for the search); the executor's use of them
lives in llmserve/llm/speculative.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def find_ngram_draft(tokens: Sequence[int] | np.ndarray, num_draft: int, min_n: int = 1,
                     max_n: int = 3) -> list[int]:
    """Up to num_draft tokens that followed an earlier occurrence of the last n tokens,
    trying n = max_n first and shrinking to min_n; [] when none matches.

    The occurrence is the newest one with num_draft tokens after it, else the oldest
    (whose continuation is the longest); the draft is cut where the known tokens end.
    """
    if num_draft <= 0:
        return []
    arr = np.asarray(tokens, dtype=np.int64)
    length = arr.shape[0]
    for n in range(min(max_n, length - 1), min_n - 1, -1):
        if n < 1:
            break
        pattern = arr[length - n:]
        # windows of arr[:-1]: every start i has a following token at i + n <= length - 1
        windows = sliding_window_view(arr[: length - 1], n)
        hits = np.flatnonzero((windows == pattern).all(axis=1))
        if hits.size == 0:
            continue
        # the newest occurrence followed by num_draft known tokens, else the oldest one
        # (the longest continuation)
        full = hits[hits <= length - n - num_draft]
        start = int(full[-1] if full.size else hits[0]) + n
        return arr[start : start + num_draft].tolist()
    return []
