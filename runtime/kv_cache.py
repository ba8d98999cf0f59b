"""The exported graph as a stepper: prefill, decode steps, and row selection of the KV cache.

The cache stays in ONNX Runtime's hands: each step's `present.*` outputs are OrtValues bound
(through IO binding) as the next step's `past_key_values.*` inputs, never copied to numpy.
With the CUDA or TensorRT provider the cache stays on the GPU (UNTESTED: no GPU here).
The graph concatenates past and new keys itself, so a step allocates its presents; ORT's
arena recycles that memory. Only `select` (expanding a prompt to its samples, dropping
finished rows) copies the cache, once, through numpy.

Rows are left-padded: `attention_mask` marks the padding and each row keeps its own next
position, so rows of different prompt lengths decode together.
"""

from __future__ import annotations

from collections.abc import Sequence
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

_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}
_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


@dataclass
class KVCache:
    """The state of a batch between steps."""

    presents: list[Any]  # 2 * layers C-level OrtValues [B, H, P, D], key then value per layer
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

    def __init__(self, session: ort.InferenceSession, manifest: BundleManifest) -> None:
        self.session = session
        arch = manifest.architecture
        self.num_layers = arch.num_layers
        self.num_heads = arch.num_heads
        self.head_dim = arch.head_dim
        self.dtype = _NUMPY_DTYPES[manifest.graph.dtype]
        self._past_names = [n for i in range(self.num_layers) for n in onnx_past_names(i)]
        self._present_names = [n for i in range(self.num_layers) for n in onnx_present_names(i)]
        self._check_graph()
        # ORT's Python IOBinding wrapper rebuilds a device object on every call (~15 us); a
        # GPT-2 small step binds ~50 names, so the C-level binding is used with devices made once.
        gpu = session.get_providers()[0] in _GPU_PROVIDERS
        self._cpu = ort.OrtDevice.make("cpu", 0)._get_c_device()
        self._cache_device = ort.OrtDevice.make("cuda", 0)._get_c_device() if gpu else self._cpu
        self._cache_device_type = "cuda" if gpu else "cpu"

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
        binding = self.session.io_binding()._iobinding
        for name in self._past_names:
            binding.bind_input(name, empty)
        logits, presents = self._run(binding, input_ids, mask, positions)
        return logits, KVCache(presents, mask, next_positions=mask.sum(axis=1))

    def decode(self, cache: KVCache, tokens: np.ndarray) -> np.ndarray:
        """Feed one token per row ([B] int64); returns logits [B, V]; advances `cache`."""
        batch = cache.batch_size
        mask = np.ones((batch, cache.past_length + 1), dtype=np.int64)
        mask[:, :-1] = cache.attention_mask
        binding = self.session.io_binding()._iobinding
        for name, value in zip(self._past_names, cache.presents, strict=True):
            binding.bind_ortvalue_input(name, value)
        logits, cache.presents = self._run(
            binding, tokens.reshape(batch, 1), mask, cache.next_positions.reshape(batch, 1)
        )
        cache.attention_mask = mask
        cache.next_positions = cache.next_positions + 1
        return logits

    def _run(
        self,
        binding: Any,  # the C-level SessionIOBinding
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
    ) -> tuple[np.ndarray, list[Any]]:
        # The numpy inputs stay referenced by the caller's frame until the run is over.
        binding.bind_input(ONNX_INPUT_IDS, input_ids)
        binding.bind_input(ONNX_ATTENTION_MASK, attention_mask)
        binding.bind_input(ONNX_POSITION_IDS, position_ids)
        binding.bind_output(ONNX_LOGITS, self._cpu)
        for name in self._present_names:
            binding.bind_output(name, self._cache_device)
        self.session._sess.run_with_iobinding(binding, None)
        outputs = binding.get_outputs()
        presents = [outputs[i] for i in range(1, len(outputs))]
        logits = outputs[0].numpy()[:, -1, :]  # [B, S or 1, V] -> last position
        return np.ascontiguousarray(logits, dtype=np.float32), presents

    def select(self, cache: KVCache, rows: Sequence[int] | np.ndarray) -> KVCache:
        """A cache holding only `rows` (in that order; repeats allowed), with the leading
        columns that are padding in every kept row trimmed off."""
        rows = np.asarray(rows, dtype=np.int64)
        mask = cache.attention_mask[rows]
        start = int(np.argmax(mask.any(axis=0))) if mask.size else 0
        arrays = [np.ascontiguousarray(v.numpy()[rows][:, :, start:, :]) for v in cache.presents]
        presents = [ort.OrtValue.ortvalue_from_numpy(a, self._cache_device_type) for a in arrays]
        return KVCache(
            [p._ortvalue for p in presents],
            np.ascontiguousarray(mask[:, start:]),
            cache.next_positions[rows],
            keep_alive=arrays,
        )
