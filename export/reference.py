"""PyTorch's side of the parity check, computed once so the model can be freed early.

The reference is the model run on each parity prompt alone (no padding at all), a prefill
and then greedy decode steps: what a correct graph must reproduce whatever the batch, the
padding side or the KV layout. The check (verify.py) feeds the graph PyTorch's own greedy
tokens, so the reference never depends on the graph under test; the exporter records it
right after tracing and drops the PyTorch model before the ONNX Runtime stages, which
would otherwise all run with a full fp32 copy of the weights resident beside their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache, PretrainedConfig, PreTrainedModel

from fst.export.hf_cache import cache_kwargs, returned_cache

# Decode steps after the prefill: enough to cross a shared-layout buffer's growth (the
# check prefills with room for one token) and to catch a position or mask off by one.
DECODE_STEPS = 6


@dataclass(frozen=True)
class Reference:
    """PyTorch's logits for `prompts`, each run alone."""

    config: PretrainedConfig
    prompts: list[list[int]]
    prompt_logits: list[np.ndarray]  # per prompt [len, V]: every position of its prefill
    last_logits: np.ndarray  # [1 + steps, B, V]: each row's newest position, per step
    tokens: np.ndarray  # [steps, B] int64: the greedy tokens fed at the decode steps

    @property
    def decode_steps(self) -> int:
        return int(self.tokens.shape[0])


def record_reference(
    model: PreTrainedModel, prompts: Sequence[Sequence[int]], decode_steps: int = DECODE_STEPS
) -> Reference:
    """Run each prompt alone through `model`: a prefill, then `decode_steps` greedy steps."""
    if not prompts or not all(prompts):
        raise ValueError("the parity check needs non-empty prompts")
    prompt_logits, rows = [], []
    for prompt in prompts:
        cache = DynamicCache()
        ids = torch.tensor([list(prompt)], dtype=torch.long)
        steps = []
        for step in range(decode_steps + 1):
            with torch.no_grad():
                out = model(input_ids=ids, **cache_kwargs(cache), use_cache=True)
            logits = out.logits[0].float().numpy()
            cache = returned_cache(out)
            if step == 0:
                prompt_logits.append(logits.copy())
            steps.append(logits[-1].copy())
            ids = torch.tensor([[int(logits[-1].argmax())]], dtype=torch.long)
        rows.append(np.stack(steps))
    last = np.stack(rows, axis=1)  # [1 + steps, B, V]
    tokens = last[:-1].argmax(-1).astype(np.int64)
    return Reference(model.config, [list(p) for p in prompts], prompt_logits, last, tokens)
