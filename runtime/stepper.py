"""The interface `DecodeBatch` drives: a stepper runs the bundle's graph over a KV cache.

Two implement it: `kv_cache.CausalLMStepper` (left-padded rows; the "concat" and "shared"
layouts as strategies) and `device_kv.DeviceKVStepper` ("shared_right", the cache on the
session's device). `kv_cache.make_stepper` picks one from the manifest's kv_layout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

# hook(kind, batch_size, start, end): kind "prefill" or "decode", perf_counter seconds.
ModelCallHook = Callable[[str, int, float, float], None]
Rows = Sequence[int] | np.ndarray


class Stepper(Protocol):
    """Prefill prompts, decode one token a row, and choose or merge rows of a cache.

    A cache is the stepper's own object; callers read only `batch_size` of it.
    """

    vocab_size: int
    on_model_call: ModelCallHook | None

    def prefill(
        self, prompts: Sequence[Sequence[int]], pad_id: int, reserve: int = ...
    ) -> tuple[np.ndarray, Any]:
        """Logits [B, V] (float32) of each prompt's last token, and the new cache (with
        room for `reserve` more tokens where the layout preallocates)."""
        ...

    def decode(self, cache: Any, tokens: np.ndarray) -> np.ndarray:
        """Feed one token per row ([B] int64); logits [B, V], valid until the next step."""
        ...

    def select(self, cache: Any, rows: Rows) -> Any:
        """A cache holding only `rows`, in that order (repeats allowed)."""
        ...

    def merge(self, running: Any, keep: Rows, new: Any, new_rows: Rows | None = None) -> Any:
        """Rows `keep` of `running` followed by rows `new_rows` (default all) of `new`."""
        ...
