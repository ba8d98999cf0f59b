"""The interface `DecodeBatch` drives: a stepper runs the bundle's graph over a KV cache.

Two implement it: `kv_cache.CausalLMStepper` (left-padded rows; the "concat" and "shared"
layouts as strategies) and `device_kv.DeviceKVStepper` ("shared_right", the cache on the
session's device). `kv_cache.make_stepper` picks one from the manifest's kv_layout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fst.core.constants import ONNX_INPUT_IDS

# hook(kind, batch_size, start, end): kind "prefill" or "decode", perf_counter seconds.
ModelCallHook = Callable[[str, int, float, float], None]
Rows = Sequence[int] | np.ndarray


@runtime_checkable
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


# ---- what both steppers share ----------------------------------------------------------------

NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
# Room a preallocating cache keeps for tokens to come when the caller gives no hint.
DEFAULT_RESERVE = 64


def cache_device_for(provider: str) -> str:
    """Where a session's KV cache lives: "cuda" under CUDA / TensorRT, else "cpu"."""
    return "cuda" if provider in GPU_PROVIDERS else "cpu"


def capacity_for(needed: int, reserve: int, max_positions: int) -> int:
    """Buffer length for `needed` positions and `reserve` more, within max_positions."""
    return max(needed, min(needed + max(reserve, 1), max_positions))


def chosen_rows(parts: Sequence[tuple[Any, Rows]]) -> list[tuple[Any, np.ndarray]]:
    """`combine`'s parts with their rows as int64 arrays, parts without rows left out."""
    chosen = [(cache, np.asarray(rows, dtype=np.int64)) for cache, rows in parts]
    chosen = [(cache, rows) for cache, rows in chosen if rows.size]
    if not chosen:
        raise ValueError("combine: no rows chosen")
    return chosen


def room_left(chosen: Sequence[tuple[Any, np.ndarray]]) -> int:
    """The most room (capacity - past length) any chosen cache had left."""
    return max(cache.capacity - cache.past_length for cache, _ in chosen)


def stack_rows(
    parts: Sequence[tuple[np.ndarray, np.ndarray]],
    capacity: int,
    width: int,
    *,
    right_aligned: bool,
    zeroed: bool = False,
) -> np.ndarray:
    """One layer's key or value for a combined cache: the `rows` of each `source`
    [B, H, P, D] stacked in order into a new [N, H, capacity, D] array.

    Each source's P positions go right-aligned into the first `width` positions, zeros to
    their left (the left padding of the "concat" and "shared" layouts), or left-aligned,
    zeros to their right (the right-padded "shared_right" layout). Beyond `width` the array
    is uninitialised (the graph reads only positions it wrote) unless `zeroed`.
    """
    first = parts[0][0]
    total = sum(rows.size for _, rows in parts)
    out = (np.zeros if zeroed else np.empty)(
        (total, first.shape[1], capacity, first.shape[3]), dtype=first.dtype
    )
    offset = 0
    for source, rows in parts:
        block = out[offset : offset + rows.size, :, :width]
        pad = width - source.shape[2]
        if right_aligned:
            block[:, :, :pad] = 0
            _gather(block[:, :, pad:], source, rows)
        else:
            block[:, :, source.shape[2] :] = 0
            _gather(block[:, :, : source.shape[2]], source, rows)
        offset += rows.size
    return out


def _gather(out: np.ndarray, source: np.ndarray, rows: np.ndarray) -> None:
    """out[i] = source[rows[i]], without a fancy-indexing temporary."""
    first = int(rows[0])
    if np.array_equal(rows, np.arange(first, first + rows.size)):
        out[...] = source[first : first + rows.size]  # one block copy
    else:
        for i, row in enumerate(rows):
            out[i] = source[row]


class RowSelection:
    """`select` and `merge` of a stepper, both one `combine` of chosen rows (each stepper's
    `combine` builds on `chosen_rows`, `room_left` and `stack_rows`)."""

    def combine(self, parts: Sequence[tuple[Any, Rows]]) -> Any:
        raise NotImplementedError

    def select(self, cache: Any, rows: Rows) -> Any:
        """A cache holding only `rows` (in that order; repeats allowed)."""
        return self.combine([(cache, rows)])

    def merge(self, running: Any, keep: Rows, new: Any, new_rows: Rows | None = None) -> Any:
        """Rows `keep` of `running` followed by rows `new_rows` (default: all) of `new`: how
        prompts prefilled on their own join a running batch."""
        rows = np.arange(new.batch_size) if new_rows is None else new_rows
        return self.combine([(running, keep), (new, rows)])


def run_bound(stepper: Any, cache: Any, kind: str, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """One run through the cache's own IO binding: its buffers are bound once, as pasts and
    as presents (the graph writes the new positions in place), with a logits buffer
    [B, 1, V]; a run then binds only `arrays` (ids, mask, positions). Returns the logits
    [B, V] as float32: the cache's buffer, valid until its next run. A cache whose buffers
    move sets `binding` back to None.
    """
    hook = stepper.on_model_call
    start = time.perf_counter() if hook else 0.0
    io = stepper.io
    if cache.binding is None:
        cache.logits = np.empty((cache.batch_size, 1, stepper.vocab_size), stepper.logits_dtype)
        values = [io.bindable(v) for v in cache.presents]
        cache.binding = io.step_binding(stepper.past_names, values, [cache.logits])
    io.run_step(cache.binding, arrays)
    logits = cache.logits[:, 0, :]
    if logits.dtype != np.float32:
        logits = logits.astype(np.float32)
    if hook:
        hook(kind, arrays[ONNX_INPUT_IDS].shape[0], start, time.perf_counter())
    return logits
