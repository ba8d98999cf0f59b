"""The oracle the runtime's sampler is tested against: Hugging Face's logits processors, as
numpy functions over the whole vocabulary (float32 scores [B, V], -inf for removed tokens).

Written for clarity, not speed: each rule as HF's processor states it, in `generate`'s
order (repetition penalty → min_new_tokens → temperature → top-k → top-p). test_sampling.py
checks it against HF's own processors, and the runtime's per-token fast path
(fst.runtime.sampling) against both. One difference from HF, on purpose: its top-p sorts
with the unstable `torch.sort`, so which of several exactly tied scores is dropped at the
cut is arbitrary there; here a stable sort drops the lower token ids first.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fst.core.generation_params import GenerationParams

NEG_INF = np.float32(-np.inf)


def penalise(row: np.ndarray, ids: np.ndarray, penalty: float) -> None:
    """The repetition penalty in place on the distinct token ids `ids` of one row."""
    ids = ids[ids < row.size]  # HF skips ids beyond the output vocabulary
    seen = row[ids]
    p = np.float32(penalty)
    row[ids] = np.where(seen < 0, seen * p, seen / p)


def repetition_penalty(
    scores: np.ndarray, token_ids: Sequence[Sequence[int]], penalty: float
) -> np.ndarray:
    """RepetitionPenaltyLogitsProcessor: each distinct seen token once, s<0 ? s*p : s/p."""
    out = np.array(scores, dtype=np.float32, copy=True)
    for row, ids in zip(out, token_ids, strict=True):
        penalise(row, np.unique(np.asarray(ids, dtype=np.int64)), penalty)
    return out


def min_new_tokens(
    scores: np.ndarray, eos_token_ids: Sequence[int], num_new: int, min_new: int
) -> np.ndarray:
    """MinNewTokensLengthLogitsProcessor: EOS is impossible until `min_new` tokens exist."""
    out = np.array(scores, dtype=np.float32, copy=True)
    if num_new < min_new:
        out[:, list(eos_token_ids)] = NEG_INF
    return out


def temperature(scores: np.ndarray, value: float) -> np.ndarray:
    """TemperatureLogitsWarper: scores / temperature (in float32, as torch does)."""
    return np.asarray(scores, dtype=np.float32) / np.float32(value)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """TopKLogitsWarper: drop scores below the k-th largest (ties with it are kept)."""
    out = np.array(scores, dtype=np.float32, copy=True)
    k = min(k, out.shape[-1])
    kth = np.sort(out, axis=-1)[:, out.shape[-1] - k]
    out[out < kth[:, None]] = NEG_INF
    return out


def top_p(scores: np.ndarray, p: float) -> np.ndarray:
    """TopPLogitsWarper (min_tokens_to_keep=1): sort ascending, softmax, cumulative sum;
    remove the tokens whose cumulative probability is <= 1 - p, never the top one."""
    out = np.array(scores, dtype=np.float32, copy=True)
    for row in out:
        order = np.argsort(row, kind="stable")  # ties: the lower id first, so removed first
        ascending = row[order]
        weights = np.exp(ascending - ascending[-1])  # float32, as torch's softmax
        cumulative = np.cumsum(weights, dtype=np.float64) / weights.sum(dtype=np.float64)
        removed = cumulative.astype(np.float32) <= np.float32(1.0 - p)
        removed[-1] = False
        row[order[removed]] = NEG_INF
    return out


def process_logits(
    scores: np.ndarray,
    token_ids: Sequence[Sequence[int]],
    params: GenerationParams,
    eos_token_ids: Sequence[int] = (),
    num_new: int = 0,
) -> np.ndarray:
    """All processors in `generate`'s order, as HF applies them when sampling (greedy: the
    argmax of the result, taken before the warpers)."""
    out = np.asarray(scores, dtype=np.float32)
    if params.repetition_penalty != 1.0:
        out = repetition_penalty(out, token_ids, params.repetition_penalty)
    if params.min_new_tokens > 0 and eos_token_ids:
        out = min_new_tokens(out, eos_token_ids, num_new, params.min_new_tokens)
    if params.greedy:
        return out
    if params.temperature != 1.0:
        out = temperature(out, params.temperature)
    if params.top_k != 0:
        out = top_k(out, params.top_k)
    if params.top_p < 1.0:
        out = top_p(out, params.top_p)
    return out
