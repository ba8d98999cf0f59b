"""Prefix caching: a prompt that starts with tokens seen before reuses their KV cache.

A conversation's next turn repeats the whole history, so without a cache every turn pays
a prefill of everything said so far. `PrefixCache` keeps the KV of recent sequences (their
prompt plus what was generated, stored when a row ends) and `lookup` returns the longest
token-exact common prefix of a new prompt with any of them: the KV of position i depends
only on tokens 0..i, so any common prefix of a stored sequence is valid, not only a whole
entry. The prompt then prefills only its remaining tokens on top of that past.

Bounded memory: entries are copies (never views of a running batch's buffers, which are
written in place) and the least recently used are evicted past `max_bytes`. Thread-safe
(a lock around the entries), so one cache can serve every batch of a Generator.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# A hit shorter than this is not worth a prefill of its own (misses prefill together).
MIN_PREFIX_TOKENS = 4


@dataclass(frozen=True)
class PrefixHit:
    """The first `length` tokens of a prompt have their KV in `past` (per layer, key then
    value, each [1, kv_heads, length, head_dim]; read-only views of the entry)."""

    length: int
    past: list[np.ndarray]


@dataclass
class _Entry:
    ids: np.ndarray  # [L] int64
    past: list[np.ndarray]  # per layer [1, H, L, D], owned
    nbytes: int


class PrefixCache:
    """Token ids → their KV, least recently used evicted beyond `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"prefix cache: max_bytes must be > 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._next_key = 0
        self._lock = threading.Lock()
        self.nbytes = 0
        # Counters (per prompt looked up): hits, misses and the prompt tokens not prefilled.
        self.hits = 0
        self.misses = 0
        self.cached_tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, ids: Sequence[int]) -> PrefixHit | None:
        """The longest cached prefix of `ids` (at most len(ids) - 1 tokens: the last one must
        run to give the next token's logits), or None below MIN_PREFIX_TOKENS."""
        query = np.asarray(ids, dtype=np.int64)
        limit = query.size - 1
        with self._lock:
            best, best_key = 0, None
            for key, entry in self._entries.items():
                length = _common_prefix(entry.ids, query, limit)
                if length > best:
                    best, best_key = length, key
            if best < MIN_PREFIX_TOKENS or best_key is None:
                self.misses += 1
                return None
            self._entries.move_to_end(best_key)
            entry = self._entries[best_key]
            self.hits += 1
            self.cached_tokens += best
            return PrefixHit(best, [p[:, :, :best] for p in entry.past])

    def store(self, ids: Sequence[int], take: Callable[[], list[np.ndarray]]) -> None:
        """Keep the KV of `ids`: `take()` returns it (per layer [1, H, len(ids), D], a copy
        owned from now on); called only when the entry is kept, so a sequence already
        covered costs no copy.

        An entry that is a prefix of `ids` is replaced (the new one serves it too); `ids`
        already covered by an entry only refreshes that entry."""
        new = np.asarray(ids, dtype=np.int64)
        if new.size < MIN_PREFIX_TOKENS:
            return
        with self._lock:
            for key, entry in list(self._entries.items()):
                common = _common_prefix(entry.ids, new, min(entry.ids.size, new.size))
                if common == new.size:  # already covered
                    self._entries.move_to_end(key)
                    return
                if common == entry.ids.size:  # superseded
                    self._remove(key)
            past = take()
            nbytes = sum(p.nbytes for p in past)
            if nbytes > self.max_bytes:
                return
            self._entries[self._next_key] = _Entry(new, past, nbytes)
            self._next_key += 1
            self.nbytes += nbytes
            while self.nbytes > self.max_bytes:
                self._remove(next(iter(self._entries)))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.nbytes = 0

    def _remove(self, key: int) -> None:
        self.nbytes -= self._entries.pop(key).nbytes


def _common_prefix(a: np.ndarray, b: np.ndarray, limit: int) -> int:
    """How many leading tokens a and b share, at most `limit`."""
    n = min(a.size, b.size, limit)
    if n <= 0:
        return 0
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n
