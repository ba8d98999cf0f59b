"""Parity check of a kv_layout "shared_right" graph (fst.export.gqa_right) on the CPU.

The reference is PyTorch run on each prompt alone (no padding at all); the graph gets the
prompts right-padded in one batch with per-row lengths, then decode steps in which every
row writes at its own length. Both sides continue with PyTorch's greedy tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel

from fst.core.bundle import ParityReport
from fst.core.constants import (
    ONNX_ATTENTION_MASK,
    ONNX_INPUT_IDS,
    ONNX_POSITION_IDS,
    onnx_past_names,
)
from fst.export.hf_cache import cache_kwargs, returned_cache
from fst.export.verify import _report
from fst.runtime.session import create_session


def right_padded_feed(
    tokens: Sequence[Sequence[int]], lengths: np.ndarray, pad_id: int, prefill: bool
) -> dict[str, np.ndarray]:
    """The graph's inputs for one step. Prefill: `tokens` are the prompts (right-padded
    here, positions from 0); decode: one token per row, written at the row's length."""
    batch = len(tokens)
    if prefill:
        width = max(len(t) for t in tokens)
        ids = np.full((batch, width), pad_id, dtype=np.int64)
        for row, prompt in enumerate(tokens):
            ids[row, : len(prompt)] = prompt
        positions = np.broadcast_to(np.arange(width, dtype=np.int64), (batch, width))
        ends = np.array([len(t) for t in tokens], dtype=np.int64)
    else:
        ids = np.asarray(tokens, dtype=np.int64).reshape(batch, 1)
        positions = lengths.reshape(batch, 1).astype(np.int64)
        ends = lengths + 1
    mask = (np.arange(int(ends.max())) < ends[:, None]).astype(np.int64)
    return {
        ONNX_INPUT_IDS: ids,
        ONNX_ATTENTION_MASK: mask,
        ONNX_POSITION_IDS: np.ascontiguousarray(positions),
    }


def verify_right_padded(
    model: PreTrainedModel,
    onnx_path: Path,
    prompts: Sequence[Sequence[int]],
    *,
    variant: str,
    dtype: str,
    decode_steps: int,
    pad_id: int = 0,
) -> ParityReport:
    """Compare ONNX Runtime (CPU provider) with `model`; the report says whether it passed."""
    session, _ = create_session(onnx_path, providers=["CPUExecutionProvider"], huge_pages=False)
    config = model.config
    heads = int(config.num_attention_heads)
    head_dim = int(config.hidden_size) // heads
    lengths = np.array([len(p) for p in prompts], dtype=np.int64)
    capacity = int(lengths.max()) + decode_steps + 1
    past = {
        name: np.zeros((len(prompts), heads, capacity, head_dim), dtype=np.dtype(dtype))
        for i in range(int(config.num_hidden_layers))
        for name in onnx_past_names(i)
    }
    caches = [DynamicCache() for _ in prompts]
    pairs = []
    step_tokens: Sequence[Sequence[int]] = prompts
    for step in range(decode_steps + 1):
        feed = right_padded_feed(step_tokens, lengths, pad_id, prefill=step == 0)
        outputs = session.run(None, {**feed, **past})
        past = dict(zip(past, outputs[1:], strict=True))
        reference = []
        with torch.no_grad():
            for row, tokens in enumerate(step_tokens):
                ids = torch.tensor([list(tokens)], dtype=torch.long)
                out = model(input_ids=ids, **cache_kwargs(caches[row]), use_cache=True)
                caches[row] = returned_cache(out)
                reference.append(out.logits[0, -1].float().numpy())
        reference = np.stack(reference)
        pairs.append((outputs[0][:, -1].astype(np.float32), reference))
        if step:
            lengths = lengths + 1
        step_tokens = [[int(t)] for t in reference.argmax(-1)]
    return _report(pairs, variant)
