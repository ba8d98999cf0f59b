"""Parity check run by every export: ONNX Runtime (CPU) against PyTorch on the same inputs.

A batch of two prompts of different lengths, left-padded (attention_mask zeros on the left,
position_ids = cumsum(mask) - 1 clipped at 0), a prefill with an empty past, then several
decode steps feeding the presents back as past. Both sides get the same next tokens
(PyTorch's greedy choice), so one early disagreement does not snowball into the rest.
Logits are compared at the valid (non-padding) positions only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel

from fst.core.bundle import ParityReport
from fst.core.constants import ONNX_ATTENTION_MASK, ONNX_INPUT_IDS, ONNX_POSITION_IDS
from fst.export.architectures import contract_for
from fst.export.hf_cache import cache_kwargs, returned_cache
from fst.runtime.session import create_session

# fp32 gate: max |onnx - torch| <= FP32_RELATIVE_TOLERANCE * max(1, max |logit|).
FP32_RELATIVE_TOLERANCE = 1e-3
# int8 / fp16 gate: greedy top-1 agreement with PyTorch at the checked positions. Measured
# (see the export note): fp16 1.0; dynamic int8 0.93-1.0 on GPT-2-small random init (nearly
# flat logits, so the hardest case) and on a trained tiny model. A broken conversion lands
# near 0; 0.8 tolerates two flipped near-ties among the 14 positions of the default check.
MIN_TOP1_AGREEMENT = 0.8
DECODE_STEPS = 6


class ParityError(RuntimeError):
    """The ONNX graph does not reproduce the PyTorch model."""


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """input_ids and attention_mask [B, S] (int64) for prompts padded on the left."""
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, width - len(prompt) :] = prompt
            mask[row, width - len(prompt) :] = 1
    return ids, mask


def position_ids_for(mask: np.ndarray) -> np.ndarray:
    """Positions counted over real tokens only: left padding does not shift them."""
    return np.clip(np.cumsum(mask, axis=-1) - 1, 0, None).astype(np.int64)


def verify_parity(
    model: PreTrainedModel,
    onnx_path: Path,
    prompts: Sequence[Sequence[int]],
    *,
    pad_id: int,
    variant: str = "fp32",
    logits: str = "all",
    dtype: str = "float32",
    decode_steps: int = DECODE_STEPS,
    kv_layout: str = "concat",
) -> ParityReport:
    """Compare ONNX Runtime with `model`; the report says whether the gate passed.

    With kv_layout "shared" the past buffers have one spare position beyond the last step
    (capacity > total length); each step's presents are fed back as the next past.
    """
    if kv_layout == "shared_right":  # right padding, per-row lengths (the GPU layout)
        from fst.export.verify_right import verify_right_padded

        return verify_right_padded(
            model, onnx_path, prompts, variant=variant, dtype=dtype,
            decode_steps=decode_steps, pad_id=pad_id,
        )  # fmt: skip
    # A check, not a server: no point in moving the exporter's torch-sized memory into huge pages.
    session, _ = create_session(onnx_path, providers=["CPUExecutionProvider"], huge_pages=False)
    ids, mask = left_pad(prompts, pad_id)
    contract = contract_for(model.config, logits, kv_layout, dtype)
    capacity = ids.shape[1] + decode_steps + 1 if kv_layout == "shared" else 0
    shape = contract.kv_shape(len(prompts), capacity)
    past = {name: np.zeros(shape, dtype=np.dtype(dtype)) for name in contract.past_names}
    cache = DynamicCache()
    pairs: list[tuple[np.ndarray, np.ndarray]] = []  # (onnx, torch) logits at checked positions
    for _ in range(decode_steps + 1):  # prefill, then decode steps
        positions = position_ids_for(mask)[:, -ids.shape[1] :]
        feed = {ONNX_INPUT_IDS: ids, ONNX_ATTENTION_MASK: mask, ONNX_POSITION_IDS: positions}
        outputs = session.run(None, {**feed, **past})
        onnx_logits = outputs[0].astype(np.float32)
        with torch.no_grad():
            out = model(
                **{k: torch.from_numpy(v) for k, v in feed.items()},
                **cache_kwargs(cache),
                use_cache=True,
            )
        torch_logits = out.logits.float().numpy()
        cache = returned_cache(out)
        pairs.append(_checked(onnx_logits, torch_logits, mask[:, -ids.shape[1] :], logits))
        past = dict(zip(past, outputs[1:], strict=True))
        # Both sides continue with PyTorch's greedy token.
        ids = torch_logits[:, -1].argmax(-1).astype(np.int64)[:, None]
        mask = np.concatenate([mask, np.ones_like(ids)], axis=1)
    return _report(pairs, variant)


def _checked(onnx_logits, torch_logits, step_mask, logits_mode) -> tuple[np.ndarray, np.ndarray]:
    """[N, V] logits of the positions to compare (valid tokens; the last one in 'last' mode)."""
    if logits_mode == "last":
        return onnx_logits[:, -1], torch_logits[:, -1]
    valid = step_mask.astype(bool)
    return onnx_logits[valid], torch_logits[valid]


def _report(pairs: list[tuple[np.ndarray, np.ndarray]], variant: str) -> ParityReport:
    onnx_all = np.concatenate([o for o, _ in pairs])
    torch_all = np.concatenate([t for _, t in pairs])
    finite = bool(np.isfinite(onnx_all).all())
    diff = float(np.abs(onnx_all - torch_all).max()) if finite else float("inf")
    scale = float(np.abs(torch_all).max())
    top1 = float((onnx_all.argmax(-1) == torch_all.argmax(-1)).mean())
    if variant == "fp32":
        tolerance = FP32_RELATIVE_TOLERANCE * max(1.0, scale)
        passed = finite and diff <= tolerance
    else:
        tolerance = None
        passed = finite and top1 >= MIN_TOP1_AGREEMENT
    return ParityReport(
        max_abs_diff=diff,
        logit_scale=scale,
        tolerance=tolerance,
        top1_agreement=top1,
        checked_positions=len(onnx_all),
        passed=passed,
    )


def describe(report: ParityReport, variant: str) -> str:
    """One line for the screen and the error message."""
    gate = (
        f"tolerance {report.tolerance:.3g}"
        if report.tolerance is not None
        else f"min top-1 agreement {MIN_TOP1_AGREEMENT}"
    )
    verdict = "passed" if report.passed else "FAILED"
    return (
        f"parity {variant}: max |onnx - torch| = {report.max_abs_diff:.3g} "
        f"(logit scale {report.logit_scale:.3g}, {gate}), "
        f"top-1 agreement {report.top1_agreement:.3f} over {report.checked_positions} "
        f"positions: {verdict}"
    )
