"""The exported graph as a stepper: prefill, decode steps, and row selection / merging of the
KV cache.

The cache stays in ONNX Runtime's hands: each step's `present.*` outputs are bound (through
IO binding, see `ort_io`) as the next step's `past_key_values.*` inputs, never copied.
With the CUDA or TensorRT provider the cache stays on the GPU (UNTESTED: no GPU here).
The graph concatenates past and new keys itself, so a step allocates its presents; ORT's
arena recycles that memory. Only `combine` (behind `select` and `merge`: expanding a prompt
to its samples, dropping finished rows, letting new prompts join a running batch) copies
the cache, once per kept element.

Rows are left-padded: `attention_mask` marks the padding and each row keeps its own next
position, so rows of different prompt lengths decode together.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from fst.bundle import BundleManifest
from fst.constants import (
    ONNX_ATTENTION_MASK,
    ONNX_INPUT_IDS,
    ONNX_LOGITS,
    ONNX_POSITION_IDS,
    onnx_past_names,
    onnx_present_names,
)
from fst.runtime.ort_io import make_io

ModelCallHook = Callable[[str, int, float, float], None]

_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}
_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


@dataclass
class KVCache:
    """The state of a batch between steps."""

    presents: list[Any]  # 2 * layers ORT values [B, H, P, D], key then value per layer
    attention_mask: np.ndarray  # [B, P] int64, 0 = left padding
    next_positions: np.ndarray  # [B] int64, position id of each row's next token
    keep_alive: list[np.ndarray] = field(default_factory=list)  # numpy memory behind presents

    @property
    def batch_size(self) -> int:
        return self.attention_mask.shape[0]

    @property
    def past_length(self) -> int:
        return self.attention_mask.shape[1]


class CausalLMStepper:
    """Runs the bundle's graph: `prefill` a batch of prompts, then `decode` one token a row."""

    def __init__(
        self, session: ort.InferenceSession, manifest: BundleManifest, public_io: bool = False
    ) -> None:
        self.session = session
        arch = manifest.architecture
        self.num_layers = arch.num_layers
        self.num_heads = arch.num_heads
        self.head_dim = arch.head_dim
        self.dtype = _NUMPY_DTYPES[manifest.graph.dtype]
        self._past_names = [n for i in range(self.num_layers) for n in onnx_past_names(i)]
        self._present_names = [n for i in range(self.num_layers) for n in onnx_present_names(i)]
        self._check_graph()
        gpu = session.get_providers()[0] in _GPU_PROVIDERS
        self.io = make_io(
            session, [ONNX_LOGITS], self._present_names, "cuda" if gpu else "cpu", public_io
        )
        # Called as hook(kind, batch_size, start, end) after every graph run ("prefill" or
        # "decode"; perf_counter seconds); see Generator.on_model_call.
        self.on_model_call: ModelCallHook | None = None

    def _check_graph(self) -> None:
        inputs = {i.name for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        need_in = {ONNX_INPUT_IDS, ONNX_ATTENTION_MASK, ONNX_POSITION_IDS, *self._past_names}
        need_out = {ONNX_LOGITS, *self._present_names}
        missing = sorted((need_in - inputs) | (need_out - outputs))
        if missing:
            raise ValueError(f"the bundle's graph lacks inputs/outputs: {', '.join(missing)}")

    def prefill(self, prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, KVCache]:
        """Run left-padded prompts; returns the last position's logits [B, V] and the cache."""
        batch, length = len(prompts), max(len(p) for p in prompts)
        input_ids = np.full((batch, length), pad_id, dtype=np.int64)
        mask = np.zeros((batch, length), dtype=np.int64)
        for row, ids in enumerate(prompts):
            input_ids[row, length - len(ids) :] = ids
            mask[row, length - len(ids) :] = 1
        # HF's convention: positions count real tokens only; padding gets a dummy position.
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        empty = np.zeros((batch, self.num_heads, 0, self.head_dim), dtype=self.dtype)
        inputs = dict.fromkeys(self._past_names, empty)
        logits, presents = self._run("prefill", inputs, {}, input_ids, mask, positions)
        return logits, KVCache(presents, mask, next_positions=mask.sum(axis=1))

    def decode(self, cache: KVCache, tokens: np.ndarray) -> np.ndarray:
        """Feed one token per row ([B] int64); returns logits [B, V]; advances `cache`."""
        batch = cache.batch_size
        mask = np.ones((batch, cache.past_length + 1), dtype=np.int64)
        mask[:, :-1] = cache.attention_mask
        pasts = dict(zip(self._past_names, cache.presents, strict=True))
        logits, cache.presents = self._run(
            "decode",
            {},
            pasts,
            tokens.reshape(batch, 1),
            mask,
            cache.next_positions.reshape(batch, 1),
        )
        cache.attention_mask = mask
        cache.next_positions = cache.next_positions + 1
        return logits

    def _run(
        self,
        kind: str,
        arrays: dict[str, np.ndarray],
        pasts: dict[str, Any],
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
    ) -> tuple[np.ndarray, list[Any]]:
        hook = self.on_model_call
        start = time.perf_counter() if hook else 0.0
        arrays[ONNX_INPUT_IDS] = input_ids
        arrays[ONNX_ATTENTION_MASK] = attention_mask
        arrays[ONNX_POSITION_IDS] = position_ids
        outputs = self.io.run(arrays, pasts)
        logits = self.io.to_numpy(outputs[0])[:, -1, :]  # [B, S or 1, V] -> last position
        logits = np.ascontiguousarray(logits, dtype=np.float32)
        if hook:
            hook(kind, input_ids.shape[0], start, time.perf_counter())
        return logits, outputs[1:]

    # ---- row selection: the only places the cache is copied --------------------------------

    def select(self, cache: KVCache, rows: Sequence[int] | np.ndarray) -> KVCache:
        """A cache holding only `rows` (in that order; repeats allowed), with the leading
        columns that are padding in every kept row trimmed off."""
        return self.combine([(cache, rows)])

    def merge(
        self,
        running: KVCache,
        keep: Sequence[int] | np.ndarray,
        new: KVCache,
        new_rows: Sequence[int] | np.ndarray | None = None,
    ) -> KVCache:
        """Rows `keep` of `running` followed by rows `new_rows` (default: all) of `new`: how
        prompts prefilled on their own join a running batch."""
        rows = np.arange(new.batch_size) if new_rows is None else new_rows
        return self.combine([(running, keep), (new, rows)])

    def combine(self, parts: Sequence[tuple[KVCache, Sequence[int] | np.ndarray]]) -> KVCache:
        """The chosen rows of each cache, stacked in order, in one cache.

        Each part is trimmed of the leading columns that are padding in all its chosen rows,
        then every part is left-padded to the longest (zeros under a 0 mask: attention never
        sees them). Each kept element is copied once, straight into the new tensors.
        """
        chosen = [(cache, np.asarray(rows, dtype=np.int64)) for cache, rows in parts]
        chosen = [(cache, rows) for cache, rows in chosen if rows.size]
        if not chosen:
            raise ValueError("combine: no rows chosen")
        masks, starts = [], []
        for cache, rows in chosen:
            mask = cache.attention_mask[rows]
            start = int(np.argmax(mask.any(axis=0)))
            masks.append(mask[:, start:])
            starts.append(start)
        past = max(m.shape[1] for m in masks)
        total = sum(m.shape[0] for m in masks)
        mask = np.zeros((total, past), dtype=np.int64)
        offsets = np.cumsum([0] + [m.shape[0] for m in masks])
        for m, offset in zip(masks, offsets, strict=False):
            mask[offset : offset + m.shape[0], past - m.shape[1] :] = m
        arrays = []
        for layer in range(len(chosen[0][0].presents)):
            sources = [self.io.to_numpy(cache.presents[layer]) for cache, _ in chosen]
            heads, dim = sources[0].shape[1], sources[0].shape[3]
            out = np.empty((total, heads, past, dim), dtype=sources[0].dtype)
            for source, (_, rows), start, offset in zip(
                sources, chosen, starts, offsets, strict=False
            ):
                _copy_rows(out[offset : offset + rows.size], source[:, :, start:], rows)
            arrays.append(out)
        next_positions = np.concatenate([cache.next_positions[rows] for cache, rows in chosen])
        presents = [self.io.from_numpy(a) for a in arrays]
        return KVCache(presents, mask, next_positions, keep_alive=arrays)


def _copy_rows(out: np.ndarray, source: np.ndarray, rows: np.ndarray) -> None:
    """out[i] = source[rows[i]] right-aligned on the past axis, zeros to its left."""
    pad = out.shape[2] - source.shape[2]
    if pad:
        out[:, :, :pad] = 0
    out = out[:, :, pad:]
    first = int(rows[0])
    if np.array_equal(rows, np.arange(first, first + rows.size)):
        out[...] = source[first : first + rows.size]  # one block copy
    else:
        for i, row in enumerate(rows):  # row by row: no fancy-indexing temporary
            out[i] = source[row]
