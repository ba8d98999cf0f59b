"""The exported graph as a stepper for left-padded rows: prefill, decode steps, and row
selection / merging of the KV cache, with the graph's KV layout as a strategy.

The cache stays in ONNX Runtime's hands: each step's `present.*` outputs are bound (through
IO binding, see `ort_io`) as the next step's `past_key_values.*` inputs, never copied.
Two graph layouts (the manifest's graph.kv_layout), one small class each behind one
interface (`prefill`, `decode`, `capacity`):

- `ConcatLayout` ("concat"): the graph concatenates past and new keys, so every step
  allocates presents one position longer and copies the whole past into them (ORT's arena
  recycles the memory).
- `SharedLayout` ("shared", fst-export's default): each layer's past is a buffer
  [B, H, capacity, D] that is also bound as its present; the graph writes only the new
  position, in place. Buffers are numpy arrays (on the CPU) with room for `reserve` more
  tokens; a decode step that would overflow moves the cache into buffers twice as long
  (amortised: one copy per doubling). A cache's decode steps reuse one IO binding
  (`stepper.run_bound`), so a step binds only its token ids, mask and positions.

Only `combine` (behind `select` and `merge`: expanding a prompt to its samples, dropping
finished rows, letting new prompts join a running batch) and buffer growth copy the cache,
once per kept element.

Rows are left-padded: `attention_mask` marks the padding and each row keeps its own next
position, so rows of different prompt lengths decode together. ("shared_right", the GPU
layout with right-padded rows, is `device_kv.DeviceKVStepper`.)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from fst.core.bundle import BundleManifest
from fst.core.constants import (
    ONNX_ATTENTION_MASK,
    ONNX_INPUT_IDS,
    ONNX_LOGITS,
    ONNX_POSITION_IDS,
)
from fst.core.contract import GraphContract
from fst.runtime.ort_io import make_io
from fst.runtime.stepper import (
    DEFAULT_RESERVE,
    GPU_PROVIDERS,
    NUMPY_DTYPES,
    ModelCallHook,
    Rows,
    RowSelection,
    Stepper,
    capacity_for,
    chosen_rows,
    room_left,
    run_bound,
    stack_rows,
)

__all__ = [
    "DEFAULT_RESERVE",
    "CausalLMStepper",
    "KVCache",
    "ModelCallHook",
    "make_stepper",
    "stepper_for",
]


@dataclass
class KVCache:
    """The state of a batch between steps."""

    # 2 * layers ORT values, key then value per layer: [B, H, P, D] ("concat" layout) or
    # buffers [B, H, capacity, D] whose first P positions are the past ("shared" layout)
    presents: list[Any]
    attention_mask: np.ndarray  # [B, P] int64, 0 = left padding
    next_positions: np.ndarray  # [B] int64, position id of each row's next token
    keep_alive: list[np.ndarray] = field(default_factory=list)  # numpy memory behind presents
    # Shared layout: the IO binding its decode steps reuse and the logits buffer [B, 1, V]
    # bound as an output (stepper.run_bound); made at its first decode, dropped when the
    # buffers move.
    binding: Any = None
    logits: np.ndarray | None = None

    @property
    def batch_size(self) -> int:
        return self.attention_mask.shape[0]

    @property
    def past_length(self) -> int:
        return self.attention_mask.shape[1]

    @property
    def capacity(self) -> int:
        """Positions the buffers hold ("shared"); past_length with "concat" (whose arrays,
        when a combine made them, hold exactly the past until the next decode drops them)."""
        return self.keep_alive[0].shape[2] if self.keep_alive else self.past_length


def make_stepper(session: ort.InferenceSession, manifest: BundleManifest) -> Stepper:
    """The stepper a bundle's graph runs through (see `stepper_for`)."""
    contract = GraphContract.from_manifest(manifest)
    return stepper_for(session, contract, manifest.architecture.max_positions)


def stepper_for(
    session: ort.InferenceSession, contract: GraphContract, max_positions: int
) -> Stepper:
    """The stepper for the graph's kv_layout: "shared_right" graphs (the GPU layout) keep
    their cache on the session's device (fst.runtime.device_kv, UNTESTED ON GPU); the
    others run through CausalLMStepper. The exporter's parity check builds its stepper
    here too, so every export is verified through the path a server runs."""
    if contract.kv_layout == "shared_right":
        from fst.runtime.device_kv import DeviceKVStepper

        return DeviceKVStepper(session, contract, max_positions)
    return CausalLMStepper(session, contract, max_positions)


class CausalLMStepper(RowSelection):
    """Runs the bundle's graph: `prefill` a batch of prompts, then `decode` one token a row."""

    def __init__(
        self,
        session: ort.InferenceSession,
        contract: GraphContract,
        max_positions: int,
        public_io: bool = False,
    ) -> None:
        if contract.kv_layout == "shared_right":
            raise ValueError("kv_layout shared_right runs through device_kv.DeviceKVStepper")
        self.session = session
        # Names and KV shapes [batch, kv_heads, length, head_dim] come from the contract.
        self.contract = contract
        self.num_layers = contract.num_layers
        self.dtype = NUMPY_DTYPES[contract.dtype]
        self.max_positions = max_positions
        self.past_names = contract.past_names
        self._check_graph()
        logits = next(o for o in session.get_outputs() if o.name == ONNX_LOGITS)
        self.vocab_size = contract.vocab_size
        # Logits of every position ("all" graphs): what checking a draft needs.
        self.all_logits = contract.logits == "all"
        self.logits_dtype = np.float16 if logits.type == "tensor(float16)" else np.float32
        shared = contract.kv_layout == "shared"
        gpu = session.get_providers()[0] in GPU_PROVIDERS
        if gpu and shared:
            raise ValueError(
                "this runtime keeps shared-layout KV buffers in host memory: run the bundle "
                "on the CPU provider, or export it with --fp16 --kv_layout shared_right "
                "(or concat) for CUDA / TensorRT"
            )
        self.layout: ConcatLayout | SharedLayout = (
            SharedLayout(self) if shared else ConcatLayout(self)
        )
        self.io = make_io(
            session,
            [ONNX_LOGITS],
            self.contract.present_names,
            "cuda" if gpu else "cpu",
            public_io,
        )
        # Called as hook(kind, batch_size, start, end) after every graph run ("prefill" or
        # "decode"; perf_counter seconds); see Generator.on_model_call.
        self.on_model_call: ModelCallHook | None = None

    @classmethod
    def from_manifest(
        cls, session: ort.InferenceSession, manifest: BundleManifest, public_io: bool = False
    ) -> CausalLMStepper:
        contract = GraphContract.from_manifest(manifest)
        return cls(session, contract, manifest.architecture.max_positions, public_io)

    @property
    def shared(self) -> bool:
        """Whether the graph has the "shared" layout (buffers written in place)."""
        return isinstance(self.layout, SharedLayout)

    def _check_graph(self) -> None:
        inputs = {i.name for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        need_in = set(self.contract.input_names)
        need_out = set(self.contract.output_names)
        missing = sorted((need_in - inputs) | (need_out - outputs))
        if missing:
            raise ValueError(f"the bundle's graph lacks inputs/outputs: {', '.join(missing)}")

    def prefill(
        self, prompts: Sequence[Sequence[int]], pad_id: int, reserve: int = DEFAULT_RESERVE
    ) -> tuple[np.ndarray, KVCache]:
        """Run left-padded prompts; returns the last position's logits [B, V] and the cache.

        `reserve`: tokens the caller expects to decode (a shared-layout cache makes room
        for them up front; more still fit, by growing)."""
        batch, length = len(prompts), max(len(p) for p in prompts)
        input_ids = np.full((batch, length), pad_id, dtype=np.int64)
        mask = np.zeros((batch, length), dtype=np.int64)
        for row, ids in enumerate(prompts):
            input_ids[row, length - len(ids) :] = ids
            mask[row, length - len(ids) :] = 1
        # HF's convention: positions count real tokens only; padding gets a dummy position.
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        return self.layout.prefill(_inputs(input_ids, mask, positions), reserve)

    def decode(self, cache: KVCache, tokens: np.ndarray) -> np.ndarray:
        """Feed one token per row ([B] int64); returns logits [B, V]; advances `cache`."""
        batch = cache.batch_size
        mask = np.ones((batch, cache.past_length + 1), dtype=np.int64)
        mask[:, :-1] = cache.attention_mask
        tokens, positions = tokens.reshape(batch, 1), cache.next_positions.reshape(batch, 1)
        logits = self.layout.decode(cache, _inputs(tokens, mask, positions))
        cache.attention_mask = mask
        cache.next_positions = cache.next_positions + 1
        return logits

    def prefill_after(
        self, past: Sequence[np.ndarray], ids: Sequence[int], reserve: int = DEFAULT_RESERVE
    ) -> tuple[np.ndarray, KVCache]:
        """Prefix caching: one prompt whose first tokens' KV is `past` (per layer [1, H, m, D],
        a `row_past`), fed only its remaining `ids`; returns the last position's logits [1, V]
        and a one-row cache, as `prefill` of the whole prompt would."""
        start, count = past[0].shape[2], len(ids)
        mask = np.ones((1, start + count), dtype=np.int64)
        positions = np.arange(start, start + count, dtype=np.int64).reshape(1, count)
        tokens = np.asarray(ids, dtype=np.int64).reshape(1, count)
        return self.layout.prefill_after(list(past), _inputs(tokens, mask, positions), reserve)

    def extend(self, cache: KVCache, tokens: Sequence[int]) -> np.ndarray:
        """Speculative decoding: feed several tokens to a one-row cache in one run; returns
        the logits of each position [S, V] (needs an `all_logits` graph); advances `cache`."""
        if not self.all_logits:
            raise ValueError("extend needs a graph with the logits of every position")
        count, start = len(tokens), cache.past_length
        mask = np.ones((1, start + count), dtype=np.int64)
        positions = cache.next_positions.reshape(1, 1) + np.arange(count, dtype=np.int64)
        ids = np.asarray(tokens, dtype=np.int64).reshape(1, count)
        logits = self.layout.extend(cache, _inputs(ids, mask, positions))
        cache.attention_mask = mask
        cache.next_positions = cache.next_positions + count
        return logits

    def truncate(self, cache: KVCache, length: int) -> None:
        """Keep the first `length` positions of a cache (a rejected draft's are dropped)."""
        drop = cache.past_length - length
        if drop <= 0:
            return
        cache.attention_mask = cache.attention_mask[:, :length].copy()
        cache.next_positions = cache.next_positions - drop
        if not self.shared:  # "concat": the presents' length is the past length
            kept = [
                np.ascontiguousarray(self.io.to_numpy(p)[:, :, :length]) for p in cache.presents
            ]
            cache.presents = [self.io.from_numpy(k) for k in kept]
            cache.keep_alive = kept
        # "shared": the buffers keep their length; the mask says what is valid

    def row_past(self, cache: KVCache, row: int, length: int) -> list[np.ndarray]:
        """A copy of the KV of row `row`'s first `length` real positions (per layer
        [1, H, length, D]): what `prefill_after` takes back."""
        start = int(np.argmax(cache.attention_mask[row]))  # left padding ends here
        if not cache.attention_mask[row, start : start + length].all():
            raise ValueError(f"row_past: row {row} has fewer than {length} positions")
        return [
            self.io.to_numpy(value)[row : row + 1, :, start : start + length].copy()
            for value in cache.presents
        ]

    def run(
        self,
        kind: str,
        arrays: dict[str, np.ndarray],
        pasts: dict[str, Any],
        into: Sequence[Any] | None = None,
        every_position: bool = False,
    ) -> tuple[np.ndarray, list[Any]]:
        """One graph run on fresh bindings: the last position's logits [B, V] (float32; with
        `every_position`, row 0's logits [S, V]) and the presents (none when written `into`
        the caller's buffers)."""
        hook = self.on_model_call
        start = time.perf_counter() if hook else 0.0
        outputs = self.io.run(arrays, pasts, into)
        logits = self.io.to_numpy(outputs[0])  # [B, S or 1, V]
        logits = logits[0] if every_position else logits[:, -1, :]
        logits = np.ascontiguousarray(logits, dtype=np.float32)
        if hook:
            hook(kind, arrays[ONNX_INPUT_IDS].shape[0], start, time.perf_counter())
        return logits, outputs[1:]

    # ---- row selection: the only places the cache is copied --------------------------------

    def combine(self, parts: Sequence[tuple[KVCache, Rows]]) -> KVCache:
        """The chosen rows of each cache, stacked in order, in one cache.

        Each part is trimmed of the leading columns that are padding in all its chosen rows,
        then every part is left-padded to the longest (zeros under a 0 mask: attention never
        sees them). Each kept element is copied once, straight into the new tensors.
        """
        chosen = chosen_rows(parts)
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
        # The result keeps the most room any part had left (where the layout keeps room).
        capacity = self.layout.capacity(past, room_left(chosen))
        arrays = [
            stack_rows(
                [
                    (self.io.to_numpy(cache.presents[layer])[:, :, start : cache.past_length], rows)
                    for (cache, rows), start in zip(chosen, starts, strict=True)
                ],
                capacity,
                past,
                right_aligned=True,
            )
            for layer in range(len(chosen[0][0].presents))
        ]
        next_positions = np.concatenate([cache.next_positions[rows] for cache, rows in chosen])
        presents = [self.io.from_numpy(a) for a in arrays]
        return KVCache(presents, mask, next_positions, keep_alive=arrays)


class ConcatLayout:
    """ "concat": every run takes the pasts as inputs and returns new, longer presents."""

    def __init__(self, stepper: CausalLMStepper) -> None:
        self.stepper = stepper

    def prefill(self, arrays: dict[str, np.ndarray], reserve: int) -> tuple[np.ndarray, KVCache]:
        stepper, mask = self.stepper, arrays[ONNX_ATTENTION_MASK]
        empty = np.zeros(stepper.contract.kv_shape(mask.shape[0], 0), dtype=stepper.dtype)
        arrays.update(dict.fromkeys(stepper.past_names, empty))
        logits, presents = stepper.run("prefill", arrays, {})
        return logits, KVCache(presents, mask, next_positions=mask.sum(axis=1))

    def prefill_after(
        self, past: list[np.ndarray], arrays: dict[str, np.ndarray], reserve: int
    ) -> tuple[np.ndarray, KVCache]:
        stepper, mask = self.stepper, arrays[ONNX_ATTENTION_MASK]
        known = [np.ascontiguousarray(p) for p in past]  # referenced until the run returns
        values = [stepper.io.from_numpy(k) for k in known]
        logits, presents = stepper.run(
            "prefill", arrays, dict(zip(stepper.past_names, values, strict=True))
        )
        return logits, KVCache(presents, mask, next_positions=mask.sum(axis=1))

    def decode(self, cache: KVCache, arrays: dict[str, np.ndarray]) -> np.ndarray:
        pasts = dict(zip(self.stepper.past_names, cache.presents, strict=True))
        logits, cache.presents = self.stepper.run("decode", arrays, pasts)
        cache.keep_alive = []  # the presents are ONNX Runtime's now: free a combine's arrays
        return logits

    def extend(self, cache: KVCache, arrays: dict[str, np.ndarray]) -> np.ndarray:
        pasts = dict(zip(self.stepper.past_names, cache.presents, strict=True))
        logits, cache.presents = self.stepper.run("decode", arrays, pasts, every_position=True)
        cache.keep_alive = []
        return logits

    @staticmethod
    def capacity(past: int, room: int) -> int:
        """A combined cache holds exactly its past (the next run makes longer presents)."""
        return past


class SharedLayout:
    """ "shared": each layer's buffer is its past and its present, written in place."""

    def __init__(self, stepper: CausalLMStepper) -> None:
        self.stepper = stepper

    def prefill(self, arrays: dict[str, np.ndarray], reserve: int) -> tuple[np.ndarray, KVCache]:
        mask = arrays[ONNX_ATTENTION_MASK]
        buffers = self._buffers(mask.shape[0], self.capacity(mask.shape[1], reserve))
        cache = KVCache([self.stepper.io.from_numpy(b) for b in buffers], mask, mask.sum(axis=1))
        cache.keep_alive = buffers
        pasts = dict(zip(self.stepper.past_names, cache.presents, strict=True))
        logits, _ = self.stepper.run("prefill", arrays, pasts, into=cache.presents)
        return logits, cache

    def prefill_after(
        self, past: list[np.ndarray], arrays: dict[str, np.ndarray], reserve: int
    ) -> tuple[np.ndarray, KVCache]:
        mask = arrays[ONNX_ATTENTION_MASK]
        buffers = self._buffers(1, self.capacity(mask.shape[1], reserve))
        for buffer, known in zip(buffers, past, strict=True):
            buffer[:, :, : known.shape[2]] = known
        cache = KVCache([self.stepper.io.from_numpy(b) for b in buffers], mask, mask.sum(axis=1))
        cache.keep_alive = buffers
        pasts = dict(zip(self.stepper.past_names, cache.presents, strict=True))
        logits, _ = self.stepper.run("prefill", arrays, pasts, into=cache.presents)
        return logits, cache

    def decode(self, cache: KVCache, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """A step through the cache's own binding; the logits are the cache's buffer, valid
        until its next decode step (DecodeBatch samples before that)."""
        if cache.past_length + 1 > cache.capacity:
            self._grow(cache, cache.past_length + 1)
        return run_bound(self.stepper, cache, "decode", arrays)

    def extend(self, cache: KVCache, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Several positions on fresh bindings (the cache's own binding has a one-position
        logits buffer); written in place like a decode step."""
        needed = arrays[ONNX_ATTENTION_MASK].shape[1]
        if needed > cache.capacity:
            self._grow(cache, needed)
        pasts = dict(zip(self.stepper.past_names, cache.presents, strict=True))
        logits, _ = self.stepper.run(
            "decode", arrays, pasts, into=cache.presents, every_position=True
        )
        return logits

    def capacity(self, needed: int, reserve: int) -> int:
        return capacity_for(needed, reserve, self.stepper.max_positions)

    def _buffers(self, batch: int, capacity: int) -> list[np.ndarray]:
        # Uninitialised: the graph reads only positions it has written (< total length).
        shape = self.stepper.contract.kv_shape(batch, capacity)
        return [np.empty(shape, dtype=self.stepper.dtype) for _ in self.stepper.past_names]

    def _grow(self, cache: KVCache, needed: int) -> None:
        """Move `cache` into buffers about twice as long (its past copied once)."""
        past = cache.past_length
        buffers = self._buffers(cache.batch_size, self.capacity(needed, cache.capacity))
        for old, new in zip(cache.keep_alive, buffers, strict=True):
            new[:, :, :past] = old[:, :, :past]
        cache.presents = [self.stepper.io.from_numpy(b) for b in buffers]
        cache.keep_alive = buffers
        cache.binding = cache.logits = None  # bound to the old buffers


def _inputs(input_ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> dict[str, Any]:
    return {ONNX_INPUT_IDS: input_ids, ONNX_ATTENTION_MASK: mask, ONNX_POSITION_IDS: positions}
