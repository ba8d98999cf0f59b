"""PyTorch's side of the parity check, computed once so the model can be freed early.

The parity check (verify.py) feeds both sides PyTorch's own greedy tokens, so what PyTorch
sees and returns never depends on the ONNX graph under test. `record_reference` runs that
PyTorch loop once, right after tracing; `ReplayModel` then answers the check's calls from
the recording. The exporter drops the PyTorch model before the ONNX Runtime stages, which
would otherwise all run with a full fp32 copy of the weights resident beside their own.
A replayed call checks that its inputs are the recorded ones, so the two loops cannot
drift apart silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel

from fst.core.constants import ONNX_ATTENTION_MASK, ONNX_INPUT_IDS, ONNX_POSITION_IDS
from fst.export.hf_cache import CACHE_NAME, cache_kwargs, returned_cache
from fst.export.verify import DECODE_STEPS, left_pad, position_ids_for


@dataclass
class _Step:
    feed: dict[str, np.ndarray]
    logits: np.ndarray  # float32 [B, S, V]


class ReplayModel:
    """Stands in for the PyTorch model in `verify_parity`: `.config` and `__call__`."""

    def __init__(self, config, steps: list[_Step]) -> None:
        self.config = config
        self._steps = steps
        self._next = 0

    def __call__(self, *, use_cache: bool = True, **feed: torch.Tensor):
        feed.pop(CACHE_NAME, None)  # the replay needs no cache
        if self._next == len(self._steps):  # a new check starts over
            self._next = 0
        step = self._steps[self._next]
        self._next += 1
        for name, expected in step.feed.items():
            if not np.array_equal(feed[name].numpy(), expected):
                raise RuntimeError(f"parity replay: {name} differs from the recorded reference")
        return SimpleNamespace(logits=torch.from_numpy(step.logits), **{CACHE_NAME: None})


def record_reference(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    *,
    pad_id: int,
    decode_steps: int = DECODE_STEPS,
) -> ReplayModel:
    """Run verify_parity's PyTorch loop (prefill, then greedy decode steps) and record it."""
    ids, mask = left_pad(prompts, pad_id)
    cache = DynamicCache()
    steps: list[_Step] = []
    for _ in range(decode_steps + 1):
        positions = position_ids_for(mask)[:, -ids.shape[1] :]
        feed = {ONNX_INPUT_IDS: ids, ONNX_ATTENTION_MASK: mask, ONNX_POSITION_IDS: positions}
        with torch.no_grad():
            out = model(
                **{k: torch.from_numpy(v) for k, v in feed.items()},
                **cache_kwargs(cache),
                use_cache=True,
            )
        logits = out.logits.float().numpy().copy()
        cache = returned_cache(out)
        steps.append(_Step(feed, logits))
        ids = logits[:, -1].argmax(-1).astype(np.int64)[:, None]
        mask = np.concatenate([mask, np.ones_like(ids)], axis=1)
    return ReplayModel(model.config, steps)
