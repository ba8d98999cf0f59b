"""Parity check run by every export: the runtime's own code (CPU) against PyTorch.

The graph is driven through what users run, not a loop of its own: the stepper the
runtime picks for the graph's KV layout (`fst.runtime.kv_cache.stepper_for`: the IO
binding, padding side, positions and buffer handling a server uses) prefills the parity
prompts as one padded batch, with room for a single token so a shared-layout buffer has
to grow, then decodes PyTorch's greedy tokens. Each row's logits at every step are
compared with PyTorch run on that prompt alone (`reference.Reference`). Graphs exported
with `--logits all` are also scored the way `fst-eval --bundle` scores text
(`fst.runtime.scoring.prefill_logits`), and every valid prompt position is compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fst.core.bundle import ParityReport
from fst.export.architectures import contract_for
from fst.export.reference import Reference
from fst.runtime.kv_cache import stepper_for
from fst.runtime.scoring import prefill_logits
from fst.runtime.session import create_session

# fp32 gate: max |onnx - torch| <= FP32_RELATIVE_TOLERANCE * max(1, max |logit|).
FP32_RELATIVE_TOLERANCE = 1e-3
# int8 / int4 / fp16 gate: greedy top-1 agreement with PyTorch at the checked positions.
# Measured (see the export notes): fp16 1.0; dynamic int8 0.93-1.0 on GPT-2-small random init
# (nearly flat logits, so the hardest case) and on a trained tiny model. A broken
# conversion lands near 0; 0.8 tolerates two flipped near-ties among the 14 positions of
# the default check.
MIN_TOP1_AGREEMENT = 0.8


def padded(
    prompts: Sequence[Sequence[int]], pad_id: int, side: str = "left"
) -> tuple[np.ndarray, np.ndarray]:
    """input_ids and attention_mask [B, S] (int64) for prompts padded on `side`."""
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        cols = slice(width - len(prompt), width) if side == "left" else slice(0, len(prompt))
        ids[row, cols] = prompt
        mask[row, cols] = 1
    return ids, mask


def verify_parity(
    reference: Reference,
    onnx_path: Path,
    *,
    pad_id: int,
    variant: str = "fp32",
    logits: str = "all",
    dtype: str = "float32",
    kv_layout: str = "concat",
) -> ParityReport:
    """Compare the graph at `onnx_path`, run by the runtime, with `reference`."""
    config = reference.config
    contract = contract_for(config, logits, kv_layout, dtype)
    # A check, not a server: no point in moving the exporter's memory into huge pages.
    session, _ = create_session(onnx_path, providers=["CPUExecutionProvider"], huge_pages=False)
    pairs: list[tuple[np.ndarray, np.ndarray]] = []  # (onnx, torch) logits [N, V]
    if logits == "all":  # the scoring path: every valid position of the prompts
        side = "right" if kv_layout == "shared_right" else "left"
        ids, mask = padded(reference.prompts, pad_id, side)
        scored = prefill_logits(session, contract, ids, mask)
        pairs.append((scored[mask.astype(bool)], np.concatenate(reference.prompt_logits)))
    # The generation path: the runtime's stepper for this layout.
    stepper = stepper_for(session, contract, int(config.max_position_embeddings))
    step_logits, cache = stepper.prefill(reference.prompts, pad_id, reserve=1)
    pairs.append((np.array(step_logits, dtype=np.float32), reference.last_logits[0]))
    for step, tokens in enumerate(reference.tokens, start=1):
        step_logits = stepper.decode(cache, tokens)
        pairs.append((np.array(step_logits, dtype=np.float32), reference.last_logits[step]))
    return _report(pairs, variant)


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
