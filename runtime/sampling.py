"""The per-token sampler: Hugging Face's logits processors and a seeded draw, for one sequence.

`SequenceSampler.choose(row, num_new)` picks the next token from one step's float32 logits
as `generate` would: repetition penalty → OpenAI's presence / frequency penalties →
min_new_tokens (EOS masked) → the grammar's mask (structured output,
runtime/constraints.py) → greedy argmax, or temperature → top-k → top-p → one uniform
number from the sequence's own generator. As in TGI's sampler, a processor is built only
when its setting is not the default, so the default settings cost nothing per token.

It runs right after ONNX Runtime streamed the weights through every cache, so each distinct
numpy routine it calls is fetched back into a cold cache. Hence plain-Python loops over the
few seen tokens, top-k found with partitions (never a sort of the whole vocabulary), and
top-p cut on a growing candidate set (benchmarks/results holds the measurements).

The reference it is tested against is Hugging Face's processors themselves and
tests/hf_oracle.py (the same rules over the whole vocabulary). Ties: HF's top-p sorts with
`torch.sort`, which is not stable, so which of several tokens with exactly equal scores is
dropped at the top-p boundary is arbitrary there; here the lower token id is dropped first
(the number kept is the same).

Scores that cannot be sampled from (a NaN, or a temperature so small that a scaled score
overflows to infinity, which is greedy's limit anyway) fall back to greedy for that row,
over the scores with NaN taken as -inf: a row never draws from NaN weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fst.core.generation_params import GenerationParams
from fst.runtime.constraints import RowGrammar

NEG_INF = np.float32(-np.inf)
# Candidate-set sizes tried by top-p without top-k before falling back to the whole row.
_TOP_P_GROWTH = (64, 1024)
# Weights longer than this are searched block-wise (a full-vocabulary cumsum is slow).
_BLOCK = 1024
# Weights up to this many are drawn from in plain Python.
_FEW = 256


def sequence_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample `index` of a request seeded with `seed` (PCG64)."""
    return np.random.Generator(np.random.PCG64([seed, index]))


class SequenceSampler:
    """Chooses the next tokens of one sequence: its params, its seen tokens, its own rng.

    `choose(row, num_new)` may modify `row` (the step's logits for this sequence) in place.
    `grammar` (structured output) masks what it does not allow and follows the tokens
    `observe` records; `choose` returns None when it allows no token at all (a dead end).
    """

    def __init__(
        self,
        params: GenerationParams,
        prompt_ids: Sequence[int],
        eos_token_ids: Sequence[int],
        rng: np.random.Generator,
        vocab_size: int,
        grammar: RowGrammar | None = None,
    ) -> None:
        self.params = params
        self.grammar = grammar
        self.penalty = (
            RepetitionPenalty(params.repetition_penalty, prompt_ids, vocab_size)
            if params.repetition_penalty != 1.0
            else None
        )
        self.counts = (
            CountPenalty(params.presence_penalty, params.frequency_penalty)
            if params.presence_penalty or params.frequency_penalty
            else None
        )
        self.processors: list[RepetitionPenalty | CountPenalty | SuppressEos] = []
        if self.penalty is not None:
            self.processors.append(self.penalty)
        if self.counts is not None:
            self.processors.append(self.counts)
        if params.min_new_tokens > 0 and eos_token_ids:
            self.processors.append(SuppressEos(eos_token_ids, params.min_new_tokens))
        self.chooser: Greedy | Sample = Greedy() if params.greedy else Sample(params, rng)

    def observe(self, token: int) -> None:
        """Record a generated token (the penalties and the grammar follow it)."""
        if self.penalty is not None:
            self.penalty.see(token)
        if self.counts is not None:
            self.counts.see(token)
        if self.grammar is not None:
            self.grammar.consume(token)

    def choose(self, row: np.ndarray, num_new: int) -> int | None:
        """The next token given this step's float32 logits `row` [V] and tokens made so far
        (None only with a grammar that allows no token)."""
        for processor in self.processors:
            processor(row, num_new)
        if self.grammar is not None and not self.grammar.mask(row):
            return None
        return self.chooser.choose(row)


# --------------------------------------------------------------------------------------------
# Processors: in place on one row of float32 logits
# --------------------------------------------------------------------------------------------


class RepetitionPenalty:
    """RepetitionPenaltyLogitsProcessor: each distinct seen token once, s<0 ? s*p : s/p."""

    def __init__(self, penalty: float, prompt_ids: Sequence[int], vocab_size: int) -> None:
        self.penalty = float(np.float32(penalty))
        if not (0.0 < self.penalty < math.inf):  # GenerationParams refuses these already
            raise ValueError(f"repetition_penalty {penalty} is 0 or infinite in float32")
        self._seen_mask = np.zeros(vocab_size, dtype=bool)
        self._seen: list[int] = []  # distinct, in order of first sight
        for token in prompt_ids:
            self.see(token)

    def see(self, token: int) -> None:
        if 0 <= token < self._seen_mask.size and not self._seen_mask[token]:
            self._seen_mask[token] = True
            self._seen.append(int(token))

    def __call__(self, row: np.ndarray, num_new: int) -> None:
        """One Python loop over the row's memory: the float64 product or quotient of two
        float32 values rounds to the float32 that float32 arithmetic gives, so the result
        is torch's bit for bit."""
        p = self.penalty
        view = memoryview(row)
        for i in self._seen:
            s = view[i]
            s = s * p if s < 0 else s / p
            try:
                view[i] = s
            except OverflowError:  # beyond float32: float32 arithmetic gives an infinity
                view[i] = math.copysign(math.inf, s)


class CountPenalty:
    """OpenAI's presence and frequency penalties, over the tokens generated so far (not the
    prompt, as OpenAI and vLLM define them): `logit[t] -= frequency * count[t] + presence`
    for every token `t` already generated `count[t] > 0` times."""

    def __init__(self, presence: float, frequency: float) -> None:
        self.presence = np.float32(presence)
        self.frequency = np.float32(frequency)
        self.counts: dict[int, int] = {}

    def see(self, token: int) -> None:
        self.counts[token] = self.counts.get(token, 0) + 1

    def __call__(self, row: np.ndarray, num_new: int) -> None:
        """In float32, frequency then presence, as vLLM's two tensor subtractions."""
        for token, count in self.counts.items():
            if 0 <= token < row.size:
                row[token] = row[token] - self.frequency * np.float32(count) - self.presence


class SuppressEos:
    """MinNewTokensLengthLogitsProcessor: EOS is impossible until `min_new` tokens exist."""

    def __init__(self, eos_token_ids: Sequence[int], min_new: int) -> None:
        self.eos = [int(t) for t in eos_token_ids]
        self.min_new = min_new

    def __call__(self, row: np.ndarray, num_new: int) -> None:
        if num_new < self.min_new:
            for eos in self.eos:
                row[eos] = NEG_INF


# --------------------------------------------------------------------------------------------
# Choosers: greedy, or the warpers and a seeded draw
# --------------------------------------------------------------------------------------------


class Greedy:
    """The first highest score (HF's argmax)."""

    def choose(self, row: np.ndarray) -> int:
        return _argmax(row)


class Sample:
    """Temperature → top-k → top-p (each only when set), then one draw from `rng`."""

    def __init__(self, params: GenerationParams, rng: np.random.Generator) -> None:
        self.rng = rng
        self.temperature = np.float32(params.temperature) if params.temperature != 1.0 else None
        self.top_k = params.top_k
        self.top_p = params.top_p if params.top_p < 1.0 else None
        self._top_k_hint: float | None = None  # see _top_k_ids
        self._scratch: np.ndarray | None = None
        self._all_ids: np.ndarray | None = None

    def choose(self, row: np.ndarray) -> int:
        u = self.rng.random()  # drawn whatever happens, so the sequence's stream stays aligned
        try:
            ids, vals = self.candidates(row)
        except _NotSampleable:
            return _argmax(row)
        top = vals.max()
        if not math.isfinite(top):
            return _argmax(row)
        weights = np.exp(vals - top)  # float32 (as torch's softmax; float64 is slower)
        return int(ids[_draw(weights, u)])

    def candidates(self, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ids (ascending) and temperature-scaled logits of the tokens that may be drawn.

        Raises `_NotSampleable` when the scaled scores hold a NaN or +inf, or none is finite.
        """
        if self.top_k:
            ids = self._top_k(row)
            if not ids.size:  # NaN scores compare with nothing
                raise _NotSampleable
            vals = row[ids]
        else:
            ids = None
            vals = row
        if self.temperature is not None:
            vals = vals / self.temperature
        if self.top_p is not None:
            top = vals.max()
            if not math.isfinite(top):
                raise _NotSampleable
            kept = _top_p(vals, self.top_p, self.top_k != 0, top)
            return (kept if ids is None else ids[kept]), vals[kept]
        if ids is None:
            if self._all_ids is None or self._all_ids.size != row.size:
                self._all_ids = np.arange(row.size)
            ids = self._all_ids
        return ids, vals

    def _top_k(self, row: np.ndarray) -> np.ndarray:
        if self._scratch is None or self._scratch.size != row.size:
            self._scratch = np.empty(row.size, dtype=bool)
        ids, self._top_k_hint = _top_k_ids(row, self.top_k, self._top_k_hint, self._scratch)
        return ids


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def _top_k_ids(
    row: np.ndarray, k: int, hint: float | None = None, scratch: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """Ids kept by top-k (ascending id order), found with partitions, never a sort; and a
    hint for the next step's call: the row's (4k)-th largest score (or its lowest candidate).

    Every score >= the k-th largest is a candidate; the exact partition then only sees those.
    Candidates are the scores >= `hint` when at least k of them are (then the k-th largest is
    >= hint, so nothing is missed). Otherwise, on a long row, the k-th largest is bounded
    from below by the k-th largest of block maxima (k distinct scores of the row). Both beat
    partitioning the whole vocabulary; the hint, when a step's scores resemble the last
    step's, skips the block maxima too.
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
            if cand.size < k:  # a NaN bound: let the partition see the whole row
                cand = np.arange(n)
    scores = row[cand]
    size = scores.size
    m = min(4 * k, size)
    kth, mth = np.partition(scores, [size - m, size - k])[[size - k, size - m]]
    return cand[scores >= kth], float(mth)


class _NotSampleable(ArithmeticError):
    """The scores hold no finite maximum: the row is decoded greedily instead."""


def _argmax(row: np.ndarray) -> int:
    """The first highest score, a NaN counting as -inf (numpy's argmax stops at a NaN)."""
    i = int(row.argmax())
    if row[i] == row[i]:
        return i
    return int(np.where(np.isnan(row), NEG_INF, row).argmax())


def _top_p(vals: np.ndarray, p: float, few: bool, top: float | None = None) -> np.ndarray:
    """Positions (ascending) of `vals` (logits, -inf = filtered) that top-p `p` keeps;
    `top` is their (finite) maximum when the caller has it.

    `few`: `vals` are already a short candidate list (top-k's), cut directly. Otherwise
    candidate sets of growing size are tried: a partition finds the m-th largest score and
    every score >= it is a candidate (ties included), so a cut found inside them is exact.
    A set whose mass is below p cannot contain the cut and is skipped without sorting.
    Tokens whose probability underflows to 0 are always removed by HF's rule, so the last
    try looks at the others only.
    """
    top = np.float32(vals.max() if top is None else top)
    removes = np.float32(1.0 - p)  # HF: removed when the mass from it down is <= 1 - p
    if few:
        return _cut_nucleus(vals, None, top, removes)
    weights = np.exp(vals - top)
    total = float(weights.sum(dtype=np.float64))
    n = vals.size
    for m in _TOP_P_GROWTH:
        if m >= n:
            break
        kth = np.partition(vals, n - m)[n - m]
        cand = np.flatnonzero(vals >= kth)
        if weights[cand].sum(dtype=np.float64) < p * total:
            continue
        kept = _cut_nucleus(vals[cand], total, top, removes, inside_only=True)
        if kept is not None:
            return cand[kept]
    cand = np.flatnonzero(weights > 0)
    return cand[_cut_nucleus(vals[cand], total, top, removes)]


def _cut_nucleus(
    vals: np.ndarray,
    total: float | None,
    top: np.float32,
    removes: np.float32,
    inside_only: bool = False,
) -> np.ndarray | None:
    """The one top-p cut: kept positions of candidate logits `vals` (ascending order).

    `total` = sum(exp(x - top)) over every finite score of the row, candidates or not (None:
    the candidates are the whole row). HF removes a token when the ascending cumulative
    probability up to and including it is <= 1 - p; that cumulative is 1 - (mass strictly
    above it), which only falls walking down the sorted values, so the nucleus ends at the
    first removed token (the top token is always kept). `inside_only`: None when the cut
    does not fall inside the candidates (the nucleus may go on beyond them).
    Only values are sorted (an argsort costs more); the kept set is then "above the last
    kept value" plus as many of the tokens tied with it as the count needs, higher ids first
    (as a stable ascending sort orders them).
    """
    desc = np.sort(vals)[::-1]
    # float32 exp as torch's softmax, accumulated in float64: the tail mass total - above
    # must not inherit rounding from a differently computed total.
    weights = np.exp(desc - top)
    above = np.cumsum(weights, dtype=np.float64)
    if total is None:
        total = float(above[-1])
    above -= weights
    removed = ((total - above[1:]) / total).astype(np.float32) <= removes
    if not removed.any():
        return None if inside_only else np.arange(vals.size)
    count = int(removed.argmax()) + 1  # tokens kept
    last = desc[count - 1]
    kept = np.flatnonzero(vals >= last)
    if kept.size == count:  # no tie at the cut (the usual case)
        return kept
    ties = kept[vals[kept] == last]  # too many tied with the last kept value:
    drop = ties[: kept.size - count]  # the lower ids go first
    return kept[~np.isin(kept, drop)]


def _draw(weights: np.ndarray, u: float) -> int:
    """Inverse CDF: the first index whose cumulative weight exceeds u * sum (u in [0, 1)).

    Zero weights are never chosen. Long vectors are searched block-wise (sums per block, then
    one block's cumsum): a cumsum over the whole vocabulary costs more than everything else.
    """
    n = weights.size
    if n <= _FEW:  # top-k's few candidates: a Python loop touches less code than numpy's
        return _draw_few(weights.tolist(), u)
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


def _draw_few(weights: list[float], u: float) -> int:
    """`_draw` for a short list: the same float64 sums, in the same order."""
    total = 0.0
    for w in weights:
        total += w
    target = u * total
    cumulative, last = 0.0, -1
    for i, w in enumerate(weights):
        if w > 0:
            cumulative += w
            if cumulative > target:
                return i
            last = i
    return last


def _last_positive(weights: np.ndarray, i: int) -> int:
    """Guard against rounding at the very end of the CDF: fall back to a token with weight
    (the heaviest one when none comes before `i`)."""
    if i < weights.size and weights[i] > 0:
        return i
    before = np.flatnonzero(weights[: min(i, weights.size)] > 0)
    return int(before[-1]) if before.size else _argmax(weights)
