"""Logits processors and seeded sampling in numpy, computing what Hugging Face's compute.

Torch-free: the ONNX runtime uses it every decode step and training-time samples can use it
too, so both sides share one implementation. The order is the one `generate` builds:
repetition penalty → min_new_tokens (EOS masked) → temperature → top-k → top-p.

Two views of the same rules:
- full-vocabulary functions on float32 scores [B, V] (`repetition_penalty`, `temperature`,
  `top_k`, `top_p`, `process_logits`) returning what the HF processors return, -inf included;
- `SequenceSampler`, the per-step fast path: it keeps only the candidate tokens (top-k found
  with a partition, top-p on a growing partial set), never sorts the whole vocabulary when
  top-k is set, and draws with one uniform number from the sequence's own generator.

Ties: HF's top-p sorts with `torch.sort`, which is not stable, so which of several tokens with
exactly equal scores is dropped at the top-p boundary is arbitrary there. Here the lower
token id is dropped first (a stable ascending sort); the number kept is the same.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fst.core.generation_params import GenerationParams

NEG_INF = np.float32(-np.inf)
# Candidate-set sizes tried by top-p without top-k before falling back to the whole row.
_TOP_P_GROWTH = (64, 1024)
# Weights longer than this are searched block-wise (a full-vocabulary cumsum is slow).
_BLOCK = 1024


# --------------------------------------------------------------------------------------------
# Full-vocabulary processors (HF semantics) on float32 scores [B, V]
# --------------------------------------------------------------------------------------------


def repetition_penalty(
    scores: np.ndarray, token_ids: Sequence[Sequence[int]], penalty: float
) -> np.ndarray:
    """RepetitionPenaltyLogitsProcessor: each distinct seen token once, s<0 ? s*p : s/p."""
    out = np.array(scores, dtype=np.float32, copy=True)
    for row, ids in zip(out, token_ids, strict=True):
        _penalise(row, np.unique(np.asarray(ids, dtype=np.int64)), penalty)
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
    kth = np.partition(out, out.shape[-1] - k, axis=-1)[:, out.shape[-1] - k]
    out[out < kth[:, None]] = NEG_INF
    return out


def top_p(scores: np.ndarray, p: float) -> np.ndarray:
    """TopPLogitsWarper (min_tokens_to_keep=1): keep the nucleus of probability mass p."""
    out = np.full_like(np.asarray(scores, dtype=np.float32), NEG_INF)
    for row_in, row_out in zip(np.asarray(scores, dtype=np.float32), out, strict=True):
        keep = _nucleus_of_row(row_in, p)
        row_out[keep] = row_in[keep]
    return out


def process_logits(
    scores: np.ndarray,
    token_ids: Sequence[Sequence[int]],
    params: GenerationParams,
    eos_token_ids: Sequence[int] = (),
    num_new: int = 0,
) -> np.ndarray:
    """All processors in `generate`'s order, as HF applies them when sampling (greedy: argmax
    of the result before the warpers)."""
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


# --------------------------------------------------------------------------------------------
# Shared building blocks
# --------------------------------------------------------------------------------------------


def _penalise(row: np.ndarray, ids: np.ndarray, penalty: float) -> None:
    """Apply the repetition penalty in place to the distinct token ids `ids` of one row."""
    if ids.size == 0:
        return
    ids = ids[ids < row.size]  # HF skips ids beyond the output vocabulary
    seen = row[ids]
    p = np.float32(penalty)
    row[ids] = np.where(seen < 0, seen * p, seen / p)


def _top_k_ids(
    row: np.ndarray, k: int, hint: float | None = None, scratch: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """Ids kept by top-k (ascending id order), found with partitions, never a sort; and a
    hint for the next step's call: the row's (4k)-th largest score (or its lowest candidate).

    Every score >= the k-th largest is a candidate; the exact partition then only sees those.
    Candidates are the scores >= `hint` when at least k of them are (then the k-th largest is
    >= hint, so nothing is missed). Otherwise, on a long row, the k-th largest is bounded
    from below by the k-th largest of block maxima (k distinct scores of the row). Both beat
    partitioning the whole vocabulary (~2.5x); the hint, when a step's scores resemble the
    last step's, skips the block maxima too.
    """
    n = row.size
    if k >= n:
        return np.flatnonzero(row > NEG_INF), -math.inf
    cand = None
    if hint is not None:
        mask = np.greater_equal(row, hint, out=scratch)
        cand = mask.nonzero()[0]
        if cand.size < k:
            cand = None
    if cand is None:
        block = n // (4 * k)
        if block < 8:
            cand = np.arange(n)
        else:
            blocks = n // block  # >= 4k maxima
            maxima = row[: blocks * block].reshape(blocks, block).max(axis=1)
            bound = np.partition(maxima, blocks - k)[blocks - k]
            cand = np.flatnonzero(row >= bound)
    scores = row[cand]
    size = scores.size
    m = min(4 * k, size)
    kth, mth = np.partition(scores, [size - m, size - k])[[size - k, size - m]]
    return cand[scores >= kth], float(mth)


def _cut_nucleus(vals: np.ndarray, total: float, top: float, p: float) -> tuple[np.ndarray, bool]:
    """Top-p over candidate logits `vals`, ordered by ascending token id.

    Returns (kept positions in ascending order, whether the cut fell inside the candidates).
    `total` is sum(exp(x - top)) over every finite score of the row, candidates or not.
    HF removes a token when the ascending cumulative probability up to and including it is
    <= 1 - p; that cumulative is 1 - (mass strictly above it), which only falls walking
    down the sorted values, so the nucleus ends at the first removed token.
    Only values are sorted (an argsort costs ~5x more); the kept set is then "above the last
    kept value" plus as many of the tokens tied with it as the count needs, higher ids first
    (as a stable ascending sort would order them).
    """
    desc = np.sort(vals)[::-1]
    # float32 exp as in `total` (and as torch's softmax), accumulated in float64: the tail
    # mass total - above must not inherit rounding from a differently computed total.
    weights = np.exp(desc - np.float32(top))
    above = np.cumsum(weights, dtype=np.float64)
    above -= weights
    # HF's rule in float32: removed when the mass from here down is <= 1 - p. It only holds
    # from some index on; the first such index (>= 1: the top token is always kept) ends the
    # nucleus. One vectorised test beats a Python bisection on these short arrays.
    removed = ((total - above[1:]) / total).astype(np.float32) <= np.float32(1.0 - p)
    first = int(removed.argmax()) if removed.size else 0  # one value: always kept
    lo = first + 1 if removed.size and removed[first] else desc.size
    if lo == desc.size:
        return np.arange(vals.size), False
    last = desc[lo - 1]
    kept = np.flatnonzero(vals >= last)
    if kept.size == lo:  # no tie at the cut (the usual case)
        return kept, True
    ties = kept[vals[kept] == last]  # too many tied with the last kept value:
    drop = ties[: kept.size - lo]  # the lower ids go first
    return kept[~np.isin(kept, drop)], True


def _nucleus_of_row(row: np.ndarray, p: float) -> np.ndarray:
    """Ids (ascending) kept by top-p for one row of scores (-inf = already filtered).

    Candidate sets of growing size are tried: a partition finds the m-th largest score and
    every score >= it is a candidate (ties included), so a cut found inside them is exact.
    A set whose mass is below p cannot contain the cut and is skipped without sorting.
    Tokens whose probability underflows to 0 are always removed by HF's rule, so the last
    try looks at the others only.
    """
    top = np.float32(row.max())
    weights = np.exp(row - top)
    total = float(weights.sum(dtype=np.float64))
    n = row.size
    for m in _TOP_P_GROWTH:
        if m >= n:
            break
        kth = np.partition(row, n - m)[n - m]
        cand = np.flatnonzero(row >= kth)
        if weights[cand].sum(dtype=np.float64) < p * total:
            continue
        kept, done = _cut_nucleus(row[cand], total, float(top), p)
        if done:
            return cand[kept]
    cand = np.flatnonzero(weights > 0)
    return cand[_cut_nucleus(row[cand], total, float(top), p)[0]]


def _draw(weights: np.ndarray, u: float) -> int:
    """Inverse CDF: the first index whose cumulative weight exceeds u * sum (u in [0, 1)).

    Zero weights are never chosen. Long vectors are searched block-wise (sums per block, then
    one block's cumsum): a cumsum over the whole vocabulary costs more than everything else.
    """
    n = weights.size
    if n <= 4 * _BLOCK:
        cdf = np.cumsum(weights, dtype=np.float64)
        return _last_positive(weights, int(np.searchsorted(cdf, u * cdf[-1], side="right")))
    full = n - n % _BLOCK
    sums = np.empty(full // _BLOCK + 1, dtype=np.float64)
    sums[:-1] = weights[:full].reshape(-1, _BLOCK).sum(axis=1, dtype=np.float64)
    sums[-1] = weights[full:].sum(dtype=np.float64)
    block_cdf = np.cumsum(sums)
    target = u * block_cdf[-1]
    b = min(int(np.searchsorted(block_cdf, target, side="right")), sums.size - 1)
    rest = target - (block_cdf[b - 1] if b > 0 else 0.0)
    cdf = np.cumsum(weights[b * _BLOCK : (b + 1) * _BLOCK], dtype=np.float64)
    i = min(int(np.searchsorted(cdf, rest, side="right")), cdf.size - 1)
    return _last_positive(weights, b * _BLOCK + i)


def _last_positive(weights: np.ndarray, i: int) -> int:
    """Guard against rounding at the very end of the CDF: fall back to a token with weight."""
    if i < weights.size and weights[i] > 0:
        return i
    return int(np.flatnonzero(weights[: min(i, weights.size)] > 0)[-1])


# --------------------------------------------------------------------------------------------
# The per-sequence fast path
# --------------------------------------------------------------------------------------------


def sequence_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample `index` of a request seeded with `seed` (PCG64)."""
    return np.random.Generator(np.random.PCG64([seed, index]))


class SequenceSampler:
    """Chooses the next tokens of one sequence: its params, its seen tokens, its own rng.

    `choose(row, num_new)` may modify `row` (the step's logits for this sequence) in place.

    Per token it runs right after ONNX Runtime streamed the weights through every cache, so
    each distinct numpy routine it calls costs tens of microseconds to fetch back (measured:
    a 3-argument `np.where` on 60 values, 33 us). Hence the plain-Python loops over the few
    seen tokens and top-k candidates: they touch far less code than the numpy equivalents.
    """

    def __init__(
        self,
        params: GenerationParams,
        prompt_ids: Sequence[int],
        eos_token_ids: Sequence[int],
        rng: np.random.Generator,
        vocab_size: int,
    ) -> None:
        self.params = params
        self.rng = rng
        self.greedy = params.greedy
        self.eos = [int(t) for t in eos_token_ids]
        self.penalty = params.repetition_penalty
        self.temperature = np.float32(params.temperature)
        self.top_k = params.top_k
        self.top_p = params.top_p
        # float32(1 - top_p) as HF compares it, and the float64 test equivalent to it.
        self._top_p_removes = _at_most_float32(1.0 - params.top_p)
        # Distinct seen tokens (prompt + generated) for the repetition penalty.
        self._seen_mask = np.zeros(vocab_size, dtype=bool)
        self._seen: list[int] = []
        self._all_ids: np.ndarray | None = None
        self._top_k_hint: float | None = None  # see _top_k_ids
        self._scratch = np.empty(vocab_size, dtype=bool)
        if self.penalty != 1.0:
            for t in prompt_ids:
                self._see(t)

    def _see(self, token: int) -> None:
        if 0 <= token < self._seen_mask.size and not self._seen_mask[token]:
            self._seen_mask[token] = True
            self._seen.append(int(token))

    def observe(self, token: int) -> None:
        """Record a generated token (needed by the repetition penalty)."""
        if self.penalty != 1.0:
            self._see(token)

    def choose(self, row: np.ndarray, num_new: int) -> int:
        """The next token given this step's float32 logits `row` [V] and tokens made so far."""
        if self.penalty != 1.0 and self._seen:
            _penalise_few(row, self._seen, self.penalty)
        if num_new < self.params.min_new_tokens:
            for eos in self.eos:
                row[eos] = NEG_INF
        if self.greedy:
            return int(row.argmax())
        if self.top_k:
            ids, _, weights, kept = self._top_k_pool(row)
            return int(ids[_draw_from(weights, kept, self.rng.random())])
        ids, vals = self.candidates(row)
        weights = np.exp(vals - vals.max())  # float32: numpy's float64 exp is much slower
        return int(ids[_draw(weights, self.rng.random())])

    def candidates(self, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ids (ascending) and temperature-scaled logits of the tokens that may be sampled."""
        if not self.top_k:
            vals = row / self.temperature
            if self.top_p < 1.0:
                ids = _nucleus_of_row(vals, self.top_p)
                return ids, vals[ids]
            if self._all_ids is None:
                self._all_ids = np.arange(row.size)
            return self._all_ids, vals
        ids, vals, _, kept = self._top_k_pool(row)
        if self.top_p < 1.0:
            return ids[kept], vals[kept]
        return ids, vals

    def _top_k_pool(
        self, row: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, list[float], Sequence[int]]:
        """Top-k ids (ascending), their temperature-scaled logits, their weights (float32
        exp(vals - max), as torch's softmax) and the positions top-p keeps."""
        scratch = self._scratch if self._scratch.size == row.size else None
        ids, self._top_k_hint = _top_k_ids(row, self.top_k, self._top_k_hint, scratch)
        vals = row[ids] / self.temperature
        weights = np.exp(vals - vals.max()).tolist()
        kept: Sequence[int] = range(len(weights))
        if self.top_p < 1.0:
            kept = _nucleus_of_candidates(vals.tolist(), weights, self._top_p_removes)
        return ids, vals, weights, kept


def _penalise_few(row: np.ndarray, ids: list[int], penalty: float) -> None:
    """`_penalise` for a few distinct ids (all < row.size), one Python loop over the row's
    memory: the float64 product or quotient of two float32 values rounds to the float32
    that float32 arithmetic gives, so the result is torch's bit for bit."""
    p = float(np.float32(penalty))
    view = memoryview(row)
    for i in ids:
        s = view[i]
        s = s * p if s < 0 else s / p
        try:
            view[i] = s
        except OverflowError:  # beyond float32: float32 arithmetic gives an infinity
            view[i] = math.copysign(math.inf, s)


def _at_most_float32(threshold: float) -> tuple[float, bool]:
    """(mid, tie_in): float32(x) <= float32(threshold) exactly when x < mid, or x == mid and
    tie_in (x rounds to nearest even at the midpoint to the next float32 up)."""
    t = np.float32(threshold)
    up = np.nextafter(t, np.float32(np.inf))
    mid = (float(t) + float(up)) / 2
    return mid, not int(np.array(t).view(np.int32)) & 1


def _nucleus_of_candidates(
    vals: list[float], weights: list[float], removes: tuple[float, bool]
) -> list[int]:
    """`_cut_nucleus` for a short candidate list: kept positions, ascending.

    `weights` = float32 exp(vals - max); `removes` = `_at_most_float32(1 - p)`. Walking down
    the values (ties: higher positions first, so lower ids are dropped first), a token is
    removed when the mass from it down is <= 1 - p, in float32 as HF computes it; the first
    removed token ends the nucleus and the top token is always kept.
    """
    mid, tie_in = removes
    total = 0.0
    for w in weights:
        total += w
    n = len(vals)
    order = sorted(range(n - 1, -1, -1), key=vals.__getitem__, reverse=True)
    above = weights[order[0]]
    for j in range(1, n):
        rest = (total - above) / total
        if rest < mid or (rest == mid and tie_in):
            return sorted(order[:j])
        above += weights[order[j]]
    return list(range(n))


def _draw_from(weights: list[float], positions: Sequence[int], u: float) -> int:
    """`_draw` over `weights[positions]`: the first position whose cumulative weight exceeds
    u * their sum (float64, in order); a zero weight is never chosen."""
    total = 0.0
    for i in positions:
        total += weights[i]
    target = u * total
    cumulative, last = 0.0, -1
    for i in positions:
        w = weights[i]
        if w > 0:
            cumulative += w
            if cumulative > target:
                return i
            last = i
    return last
