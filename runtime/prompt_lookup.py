"""Draft tokens without a draft model: prompt lookup (n-gram) decoding.

Text often repeats what it has seen (quotes, code, names, a model's own loops). The draft is
what followed the most recent earlier occurrence of the sequence's last n tokens (n from
`max_ngram` down to 1), as transformers' `prompt_lookup_num_tokens` and llama.cpp's lookup
decoding propose it. The model then checks the draft in one run (decode_batch.py), so a
wrong draft costs one wider step and a right one saves a step per accepted token.
"""

from __future__ import annotations

import numpy as np

MAX_NGRAM = 3


def propose(context: np.ndarray, count: int, max_ngram: int = MAX_NGRAM) -> list[int]:
    """Up to `count` tokens that followed the latest earlier match of the context's last
    n-gram (longest n first); [] when nothing matches."""
    size = context.size
    for n in range(min(max_ngram, size - 1), 0, -1):
        pattern = context[size - n :]
        # Windows starting at 0 .. size - n - 1: every occurrence but the tail itself.
        windows = np.lib.stride_tricks.sliding_window_view(context[: size - 1], n)
        hits = np.flatnonzero((windows == pattern).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n
            return context[start : start + count].tolist()
    return []
