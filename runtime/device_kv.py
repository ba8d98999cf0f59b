"""The kv_layout "shared_right" stepper: the KV cache lives on the session's device.

UNTESTED ON GPU. Written from ONNX Runtime's sources and IO binding docs; on this machine it
runs only with device "cpu" (the same code: the tests drive it there). benchmarks/gpu/run.py is
the script that checks and times it on CUDA when a GPU is lent. TensorRT: untested too (the
cache would live on CUDA as well; the graph's contrib ops would run on the CUDA provider).

What a step does (see fst.export.gqa_right for the graph):

- each layer's key and value are one `OrtValue` [B, H, capacity, D] allocated on the device
  (`ortvalue_from_shape_and_type`, not numpy memory); each is bound as both the past input
  and the present output of one IO binding that the cache keeps for its whole life, so the
  graph writes each new position in place and nothing of the cache crosses to the host;
- per step only `input_ids`, `attention_mask` and `position_ids` (a few int64 per row) are
  copied to the device, and only the logits [B, 1, V] the sampler needs come back, into a
  host buffer bound once;
- rows are right-padded: row b holds `lengths[b]` tokens at positions [0, lengths[b]), its
  next token is written at lengths[b] (GroupQueryAttention's per-row `seqlens_k`), so rows
  of different lengths decode together and no attention is spent on padding.

Copies through the host happen only in `combine` (behind `select` / `merge`: expanding a
prompt to its samples, dropping finished rows, merging new prompts) and when a decode step
outgrows the buffers (`reserve` at prefill avoids that): each pulls the kept rows to the
host and uploads the new buffers. ONNX Runtime's Python API has no row-gathering
device-to-device copy; these are not per-token costs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
    NUMPY_DTYPES,
    ModelCallHook,
    Rows,
    RowSelection,
    cache_device_for,
    capacity_for,
    chosen_rows,
    room_left,
    run_bound,
    stack_rows,
)

__all__ = ["DEFAULT_RESERVE", "DeviceKVCache", "DeviceKVStepper", "cache_device_for"]


@dataclass
class DeviceKVCache:
    """A batch's state between steps."""

    presents: list[Any]  # 2 * layers OrtValues [B, H, capacity, D] on the device
    lengths: np.ndarray  # [B] int64: tokens each row holds (its next position, for GPT-2)
    capacity: int
    binding: Any = None  # the IO binding of all its runs (cache bound once)
    logits: np.ndarray | None = None  # host buffer [B, 1, V] bound as the logits output

    @property
    def batch_size(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def past_length(self) -> int:
        """The longest row."""
        return int(self.lengths.max())


class DeviceKVStepper(RowSelection):
    """`prefill` right-padded prompts, then `decode` one token a row; the same interface as
    fst.runtime.kv_cache.CausalLMStepper."""

    def __init__(
        self,
        session: ort.InferenceSession,
        contract: GraphContract,
        max_positions: int,
        device: str | None = None,
        device_id: int = 0,
        public_io: bool = False,
    ) -> None:
        if contract.kv_layout != "shared_right":
            raise ValueError(
                f"DeviceKVStepper runs kv_layout shared_right, not {contract.kv_layout}"
            )
        self.session = session
        # The buffers hold key/value heads (fewer than query heads with grouped-query attention).
        self.num_layers, self.num_heads, self.head_dim = (
            contract.num_layers,
            contract.num_kv_heads,
            contract.head_dim,
        )
        self.vocab_size, self.max_positions = contract.vocab_size, max_positions
        self.dtype = NUMPY_DTYPES[contract.dtype]
        logits = next(o for o in session.get_outputs() if o.name == ONNX_LOGITS)
        self.logits_dtype = np.float16 if logits.type == "tensor(float16)" else np.float32
        self.past_names = contract.past_names
        present_names = contract.present_names
        self.device = device or cache_device_for(session.get_providers()[0])
        self.device_id = device_id
        # A cache binds its ~2 * layers values once, so a step binds only three small arrays.
        self.io = make_io(session, [ONNX_LOGITS], present_names, self.device, public_io)
        self.on_model_call: ModelCallHook | None = None  # see Generator.on_model_call

    @classmethod
    def from_manifest(
        cls, session: ort.InferenceSession, manifest: BundleManifest, **options: Any
    ) -> DeviceKVStepper:
        contract = GraphContract.from_manifest(manifest)
        return cls(session, contract, manifest.architecture.max_positions, **options)

    # ---- steps --------------------------------------------------------------------------

    def prefill(
        self, prompts: Sequence[Sequence[int]], pad_id: int, reserve: int = DEFAULT_RESERVE
    ) -> tuple[np.ndarray, DeviceKVCache]:
        """Run right-padded prompts; returns each row's last-token logits [B, V] (float32)
        and the cache, with room for `reserve` more tokens (more still fit, by growing)."""
        batch, width = len(prompts), max(len(p) for p in prompts)
        input_ids = np.full((batch, width), pad_id, dtype=np.int64)
        for row, ids in enumerate(prompts):
            input_ids[row, : len(ids)] = ids
        lengths = np.array([len(p) for p in prompts], dtype=np.int64)
        mask = (np.arange(width) < lengths[:, None]).astype(np.int64)
        positions = np.ascontiguousarray(np.broadcast_to(np.arange(width), (batch, width)))
        capacity = self._capacity(width, reserve)
        cache = DeviceKVCache(self._allocate(batch, capacity), lengths, capacity)
        logits = self._run("prefill", cache, input_ids, mask, positions)
        return logits.copy(), cache

    def decode(self, cache: DeviceKVCache, tokens: np.ndarray) -> np.ndarray:
        """Feed one token per row ([B] int64); returns logits [B, V] (valid until the
        cache's next step); advances `cache`."""
        if cache.past_length + 1 > cache.capacity:
            self._move(cache, self._capacity(cache.past_length + 1, cache.capacity))
        lengths = cache.lengths
        mask = (np.arange(int(lengths.max()) + 1) < lengths[:, None] + 1).astype(np.int64)
        input_ids = np.asarray(tokens, dtype=np.int64).reshape(-1, 1)
        logits = self._run("decode", cache, input_ids, mask, lengths.reshape(-1, 1))
        cache.lengths = lengths + 1
        return logits

    def _run(
        self,
        kind: str,
        cache: DeviceKVCache,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
    ) -> np.ndarray:
        arrays = {
            ONNX_INPUT_IDS: input_ids,
            ONNX_ATTENTION_MASK: attention_mask,
            ONNX_POSITION_IDS: position_ids,
        }
        return run_bound(self, cache, kind, arrays)

    # ---- buffers ------------------------------------------------------------------------

    def _capacity(self, needed: int, reserve: int) -> int:
        return capacity_for(needed, reserve, self.max_positions)

    def _allocate(self, batch: int, capacity: int) -> list[Any]:
        """Uninitialised device buffers: the graph reads only positions it wrote."""
        shape = [batch, self.num_heads, capacity, self.head_dim]
        return [
            ort.OrtValue.ortvalue_from_shape_and_type(
                shape, self.dtype, self.device, self.device_id
            )
            for _ in self.past_names
        ]

    def _upload(self, arrays: list[np.ndarray]) -> list[Any]:
        values = self._allocate(arrays[0].shape[0], arrays[0].shape[2])
        for value, array in zip(values, arrays, strict=True):
            value.update_inplace(array)
        return values

    def _move(self, cache: DeviceKVCache, capacity: int) -> None:
        """Move `cache` into longer buffers (through the host, once per growth)."""
        moved = self.combine([(cache, np.arange(cache.batch_size))], capacity=capacity)
        cache.presents, cache.capacity = moved.presents, moved.capacity
        cache.binding = cache.logits = None  # bound to the old buffers

    # ---- row selection: the only places the cache is copied -----------------------------

    def combine(
        self,
        parts: Sequence[tuple[DeviceKVCache, Rows]],
        capacity: int | None = None,
    ) -> DeviceKVCache:
        """The chosen rows of each cache, stacked in order, in one new cache that keeps the
        most room any part had left (or `capacity`). Rows stay left-aligned: nothing to
        trim or pad. Copies each kept row's filled positions once through the host."""
        chosen = chosen_rows(parts)
        lengths = np.concatenate([cache.lengths[rows] for cache, rows in chosen])
        longest = int(lengths.max())
        if capacity is None:
            capacity = self._capacity(longest, room_left(chosen))
        arrays = [
            stack_rows(
                [
                    # .numpy(): a copy from a GPU, a view on the CPU
                    (cache.presents[layer].numpy()[:, :, : min(cache.past_length, longest)], rows)
                    for cache, rows in chosen
                ],
                capacity,
                longest,
                right_aligned=False,
                zeroed=True,
            )
            for layer in range(len(self.past_names))
        ]
        return DeviceKVCache(self._upload(arrays), lengths, capacity)
