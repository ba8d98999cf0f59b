"""The runtime's sampler (fst.runtime.sampling) and the oracle (tests/hf_oracle.py) against
Hugging Face's logits processors, and the seeded draw."""

from __future__ import annotations

import hf_oracle as oracle
import numpy as np
import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from fst.core.generation_params import GenerationParams
from fst.runtime import sampling
from fst.runtime.sampling import (
    CountPenalty,
    Greedy,
    RepetitionPenalty,
    Sample,
    SequenceSampler,
    SuppressEos,
    sequence_rng,
)

SEEDS = range(40)


def random_scores(seed: int, batch: int = 3, ties: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vocab = int(rng.integers(2, 2500))
    scores = rng.standard_normal((batch, vocab)) * rng.uniform(0.1, 8.0)
    if ties:  # many exactly equal scores
        scores = np.round(scores)
    return scores.astype(np.float32)


def hf(processor, scores: np.ndarray, input_ids: np.ndarray | None = None) -> np.ndarray:
    ids = None if input_ids is None else torch.from_numpy(np.asarray(input_ids, dtype=np.int64))
    return processor(ids, torch.from_numpy(scores.copy())).numpy()


def assert_same_top_p(ours: np.ndarray, theirs: np.ndarray, scores: np.ndarray) -> None:
    """Identical masks, except which of exactly tied scores is dropped at the cut: torch.sort
    is not stable, so HF's choice there is arbitrary (the count must still agree)."""
    for o, t, s in zip(ours, theirs, scores, strict=True):
        keep_o, keep_t = np.isfinite(o), np.isfinite(t)
        assert keep_o.sum() == keep_t.sum()
        differing = np.unique(s[keep_o != keep_t])
        assert differing.size <= 1, "masks differ beyond one tie group"
        both = keep_o & keep_t
        np.testing.assert_array_equal(o[both], t[both])


@pytest.mark.parametrize("ties", [False, True])
def test_repetition_penalty_matches_hf(ties: bool) -> None:
    for seed in SEEDS:
        scores = random_scores(seed, ties=ties)
        rng = np.random.default_rng(seed)
        ids = rng.integers(0, scores.shape[1], (3, int(rng.integers(1, 30))))  # with repeats
        for penalty in (0.5, 1.2, 5.0):
            expected = hf(RepetitionPenaltyLogitsProcessor(penalty), scores, ids)
            got = oracle.repetition_penalty(scores, ids, penalty)
            np.testing.assert_array_equal(got, expected)


def test_temperature_matches_hf() -> None:
    for seed in SEEDS:
        scores = random_scores(seed)
        for t in (0.05, 0.7, 1.3, 7.0):
            got = oracle.temperature(scores, t)
            np.testing.assert_array_equal(got, hf(TemperatureLogitsWarper(t), scores))


@pytest.mark.parametrize("ties", [False, True])
def test_top_k_matches_hf(ties: bool) -> None:
    for seed in SEEDS:
        scores = random_scores(seed, ties=ties)
        vocab = scores.shape[1]
        for k in (1, 2, 7, 50, vocab - 1, vocab, vocab + 5):
            if k < 1:
                continue
            expected = hf(TopKLogitsWarper(k), scores)
            np.testing.assert_array_equal(oracle.top_k(scores, k), expected)


@pytest.mark.parametrize("ties", [False, True])
def test_top_p_matches_hf(ties: bool) -> None:
    for seed in range(25):
        scores = random_scores(seed, ties=ties)
        for p in (1e-4, 0.3, 0.9, 0.95, 0.999, 0.99999):
            assert_same_top_p(oracle.top_p(scores, p), hf(TopPLogitsWarper(p), scores), scores)


def test_top_p_keeps_the_top_token_and_the_hf_boundary() -> None:
    # probs 0.1, 0.2, 0.3, 0.4: HF drops a token when the ascending cumulative is <= 1 - p.
    scores = np.log(np.array([[0.1, 0.2, 0.3, 0.4]], dtype=np.float32))
    kept = {
        p: np.flatnonzero(np.isfinite(oracle.top_p(scores, p)[0])).tolist()
        for p in (0.01, 0.4, 0.45, 0.75, 0.95)
    }
    assert kept == {0.01: [3], 0.4: [3], 0.45: [2, 3], 0.75: [1, 2, 3], 0.95: [0, 1, 2, 3]}


def runtime_top_p(scores: np.ndarray, p: float) -> np.ndarray:
    """The runtime's top-p (no top-k: growing candidate sets) as a full-vocabulary mask."""
    out = np.full_like(scores, -np.inf)
    sampler = Sample(GenerationParams(temperature=1.0, top_k=0, top_p=p), sequence_rng(0, 0))
    for row, row_out in zip(scores, out, strict=True):
        ids, vals = sampler.candidates(row.copy())
        row_out[ids] = vals
    return out


@pytest.mark.parametrize("ties", [False, True])
def test_runtime_top_p_matches_hf_and_the_oracle(ties: bool) -> None:
    for seed in range(25):
        scores = random_scores(seed, ties=ties)
        for p in (1e-4, 0.3, 0.9, 0.95, 0.999, 0.99999):
            ours = runtime_top_p(scores, p)
            assert_same_top_p(ours, hf(TopPLogitsWarper(p), scores), scores)
            np.testing.assert_array_equal(ours, oracle.top_p(scores, p))  # ties included


def test_top_p_on_a_full_vocabulary_uses_growing_candidate_sets() -> None:
    rng = np.random.default_rng(0)
    for scale in (0.5, 3.0, 12.0):  # wide nucleus (whole row) .. narrow (first candidate set)
        scores = (rng.standard_normal((2, 50257)) * scale).astype(np.float32)
        for p in (0.5, 0.95):
            expected = hf(TopPLogitsWarper(p), scores)
            assert_same_top_p(oracle.top_p(scores, p), expected, scores)
            assert_same_top_p(runtime_top_p(scores, p), expected, scores)


def hf_processors(params: GenerationParams, prompt_len: int, eos: int) -> LogitsProcessorList:
    """What `generate` builds for these params (transformers 5 `_get_logits_processor`)."""
    procs = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if params.min_new_tokens > 0:
        procs.append(MinNewTokensLengthLogitsProcessor(prompt_len, params.min_new_tokens, eos))
    if params.greedy:
        return procs
    if params.temperature != 1.0:
        procs.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k != 0:
        procs.append(TopKLogitsWarper(params.top_k))
    if params.top_p < 1.0:
        procs.append(TopPLogitsWarper(params.top_p))
    return procs


PARAM_SETS = [
    GenerationParams(temperature=0.8, top_k=50, top_p=0.95, repetition_penalty=1.2),
    GenerationParams(temperature=1.0, top_k=0, top_p=0.9, repetition_penalty=5.0),
    GenerationParams(temperature=0.5, top_k=7, top_p=1.0, min_new_tokens=3),
    GenerationParams(temperature=1.3, top_k=0, top_p=1.0, repetition_penalty=0.7),
    GenerationParams(temperature=1.0, top_k=20, top_p=0.5),
    GenerationParams(temperature=0.0, repetition_penalty=1.5),
]


@pytest.mark.parametrize("params", PARAM_SETS)
def test_oracle_and_runtime_sampler_match_hf_pipeline(params: GenerationParams) -> None:
    for seed in range(15):
        scores = random_scores(seed, batch=1)
        vocab = scores.shape[1]
        rng = np.random.default_rng(seed)
        prompt = rng.integers(0, vocab, 6).tolist()
        generated = rng.integers(0, vocab, 2).tolist()
        eos = vocab - 1
        ids = np.array([prompt + generated])
        expected = hf_processors(params, len(prompt), eos)(
            torch.from_numpy(ids), torch.from_numpy(scores.copy())
        ).numpy()
        ours = oracle.process_logits(scores, ids, params, [eos], num_new=len(generated))
        assert_same_top_p(ours, expected, scores)

        sampler = SequenceSampler(params, prompt, [eos], sequence_rng(0, 0), vocab)
        for t in generated:
            sampler.observe(t)
        row = scores[0].copy()
        if params.greedy:
            assert sampler.choose(row, len(generated)) == int(expected[0].argmax())
            continue
        for processor in sampler.processors:  # what choose() runs before the chooser
            processor(row, len(generated))
        cand, vals = sampler.chooser.candidates(row)
        finite = np.flatnonzero(np.isfinite(ours[0]))
        np.testing.assert_array_equal(cand[np.isfinite(vals)], finite)
        np.testing.assert_array_equal(vals[np.isfinite(vals)], ours[0][finite])


def test_a_processor_is_built_only_when_its_setting_is_not_the_default() -> None:
    plain = SequenceSampler(
        GenerationParams(temperature=1.0, top_k=0, top_p=1.0), [1, 2], [0], sequence_rng(0, 0), 9
    )
    assert plain.processors == [] and plain.penalty is None
    assert isinstance(plain.chooser, Sample)
    assert (plain.chooser.temperature, plain.chooser.top_k, plain.chooser.top_p) == (None, 0, None)
    params = GenerationParams(
        temperature=0.5, top_k=3, top_p=0.9, repetition_penalty=1.3, min_new_tokens=2
    )
    full = SequenceSampler(params, [1, 2], [0], sequence_rng(0, 0), 9)
    assert [type(p) for p in full.processors] == [RepetitionPenalty, SuppressEos]
    counted = SequenceSampler(
        GenerationParams(presence_penalty=0.5), [1, 2], [0], sequence_rng(0, 0), 9
    )
    assert [type(p) for p in counted.processors] == [CountPenalty]
    assert plain.counts is None and full.counts is None
    assert (full.chooser.temperature, full.chooser.top_k, full.chooser.top_p) == (0.5, 3, 0.9)
    no_eos = SequenceSampler(GenerationParams(min_new_tokens=2), [], [], sequence_rng(0, 0), 9)
    assert no_eos.processors == []  # nothing to mask without an EOS token
    greedy = SequenceSampler(GenerationParams(temperature=0.0), [], [0], sequence_rng(0, 0), 9)
    assert isinstance(greedy.chooser, Greedy) and greedy.processors == []


def test_greedy_takes_the_first_maximum_and_top_k_1_is_greedy() -> None:
    row = np.array([0.0, 3.0, 1.0, 3.0], dtype=np.float32)
    for params in (GenerationParams(temperature=0.0), GenerationParams(temperature=0.9, top_k=1)):
        sampler = SequenceSampler(params, [], [], sequence_rng(0, 0), 4)
        assert sampler.choose(row.copy(), 0) == 1


def test_min_new_tokens_masks_eos_until_reached() -> None:
    row = np.array([0.0, 0.0, 10.0], dtype=np.float32)  # EOS (2) dominates
    sampler = SequenceSampler(
        GenerationParams(temperature=0.0, min_new_tokens=2), [], [2], sequence_rng(0, 0), 3
    )
    assert [sampler.choose(row.copy(), n) for n in range(4)] == [0, 0, 2, 2]


def test_repetition_penalty_counts_prompt_and_generated_tokens_once() -> None:
    params = GenerationParams(temperature=0.0, repetition_penalty=2.0)
    sampler = SequenceSampler(params, [0, 0, 0], [], sequence_rng(0, 0), 3)
    # 0: 4 -> 2 (penalised once, not three times); 1 (unseen): 3 stays, so it wins.
    assert sampler.choose(np.array([4.0, 3.0, -1.0], dtype=np.float32), 0) == 1
    sampler.observe(1)
    row = np.array([4.0, 3.0, -1.0], dtype=np.float32)
    sampler.choose(row, 1)
    np.testing.assert_array_equal(row, [2.0, 1.5, -1.0])


def test_presence_and_frequency_penalties_follow_openai_over_generated_tokens() -> None:
    # OpenAI: mu[j] -= c[j] * frequency + (c[j] > 0) * presence, c counting generated tokens.
    params = GenerationParams(temperature=0.0, presence_penalty=0.5, frequency_penalty=0.25)
    sampler = SequenceSampler(params, [3, 3, 3], [], sequence_rng(0, 0), 5)
    logits = np.array([1.0, 2.0, 0.5, 4.0, -1.0], dtype=np.float32)
    row = logits.copy()
    assert sampler.choose(row, 0) == 3  # the prompt's tokens are not penalised
    np.testing.assert_array_equal(row, logits)
    for token in (1, 1, 1, 4):  # 1 three times, 4 once
        sampler.observe(token)
    row = logits.copy()
    sampler.choose(row, 4)
    expected = [1.0, 2.0 - 3 * 0.25 - 0.5, 0.5, 4.0, -1.0 - 0.25 - 0.5]
    np.testing.assert_allclose(row, np.array(expected, dtype=np.float32), rtol=0, atol=1e-6)
    # Negative values reward repetition; only generated tokens move.
    encourage = SequenceSampler(
        GenerationParams(temperature=0.0, presence_penalty=-2.0, frequency_penalty=-1.0),
        [],
        [],
        sequence_rng(0, 0),
        5,
    )
    encourage.observe(0)
    encourage.observe(0)
    assert encourage.choose(logits.copy(), 2) == 0  # 1 + 2 + 2 = 5 > 4


@pytest.mark.parametrize("name", ["presence_penalty", "frequency_penalty"])
def test_presence_and_frequency_penalties_are_validated_to_openais_range(name: str) -> None:
    GenerationParams(**{name: -2.0})
    GenerationParams(**{name: 2.0})
    with pytest.raises(ValueError, match=f"{name} must be in"):
        GenerationParams(**{name: 2.5})


def sample_many(
    params: GenerationParams, row: np.ndarray, seed: int, index: int, n: int
) -> list[int]:
    sampler = SequenceSampler(params, [], [], sequence_rng(seed, index), row.size)
    return [sampler.choose(row.copy(), 0) for _ in range(n)]


def test_same_seed_same_samples_other_index_other_samples() -> None:
    row = np.zeros(1000, dtype=np.float32)
    params = GenerationParams(temperature=1.0, top_k=0)
    assert sample_many(params, row, 7, 0, 50) == sample_many(params, row, 7, 0, 50)
    assert sample_many(params, row, 7, 0, 50) != sample_many(params, row, 7, 1, 50)
    assert sample_many(params, row, 7, 0, 50) != sample_many(params, row, 8, 0, 50)


@pytest.mark.parametrize("vocab", [6, 9000])  # direct cumsum and the block-wise search
def test_samples_follow_the_filtered_distribution(vocab: int) -> None:
    rng = np.random.default_rng(1)
    row = np.full(vocab, -np.inf, dtype=np.float32)
    hot = rng.choice(vocab, 6, replace=False)
    row[hot] = np.log(np.array([0.05, 0.1, 0.15, 0.2, 0.2, 0.3], dtype=np.float32))
    params = GenerationParams(temperature=1.0, top_k=0, top_p=1.0)
    draws = np.array(sample_many(params, row, 3, 0, 10000))
    assert set(draws.tolist()) <= set(hot.tolist())
    freq = np.array([(draws == h).mean() for h in hot])
    np.testing.assert_allclose(freq, [0.05, 0.1, 0.15, 0.2, 0.2, 0.3], atol=0.02)  # ~4 sigma


def test_top_k_and_top_p_samples_follow_the_oracle_distribution() -> None:
    """Drawn frequencies equal the oracle's probabilities after top-k 4 and top-p 0.7."""
    row = np.log(np.array([0.02, 0.3, 0.05, 0.25, 0.2, 0.18], dtype=np.float32))
    params = GenerationParams(temperature=1.0, top_k=4, top_p=0.7)
    filtered = oracle.process_logits(row[None], [[]], params)[0]
    probs = np.exp(filtered - filtered.max())
    probs /= probs.sum()
    assert np.flatnonzero(probs).tolist() == [1, 3, 4]
    draws = np.array(sample_many(params, row, 5, 0, 10000))
    freq = np.array([(draws == t).mean() for t in range(row.size)])
    np.testing.assert_allclose(freq, probs, atol=0.02)


def test_draw_never_picks_zero_weight_even_at_the_end() -> None:
    for n in (5, 10_000):
        weights = np.zeros(n, dtype=np.float32)
        weights[[1, n // 2]] = 1.0
        for u in (0.0, 0.49999, 0.5, np.nextafter(1.0, 0.0)):
            assert sampling._draw(weights, u) in (1, n // 2)
    weights = np.array([0.0, 1.0, 0.0, 0.0], dtype=np.float32)
    assert sampling._draw(weights, np.nextafter(1.0, 0.0)) == 1


def test_no_full_vocabulary_sort_when_top_k_is_set(monkeypatch) -> None:
    sizes: list[int] = []
    for name in ("sort", "argsort", "lexsort"):
        real = getattr(np, name)

        def spy(a, *args, _real=real, **kwargs):
            sizes.append(np.asarray(a).shape[-1])
            return _real(a, *args, **kwargs)

        monkeypatch.setattr(np, name, spy)
    row = (np.random.default_rng(0).standard_normal(50257) * 3).astype(np.float32)
    params = GenerationParams(temperature=0.8, top_k=50, top_p=0.95, repetition_penalty=1.2)
    sampler = SequenceSampler(params, [1, 2, 3], [], sequence_rng(0, 0), row.size)
    sampler.choose(row.copy(), 0)
    assert sizes and max(sizes) <= 50  # only the top-k candidates are sorted
    sizes.clear()
    peaked = row * 4  # top-p alone: a narrow nucleus is found in the first candidate set
    SequenceSampler(
        GenerationParams(top_k=0, top_p=0.9), [], [], sequence_rng(0, 0), row.size
    ).choose(peaked, 0)
    assert sizes and max(sizes) <= 64


@pytest.mark.parametrize("ties", [False, True])
def test_fast_top_k_ids_equal_the_plain_rule(ties: bool) -> None:
    """The sampler's block-maxima top-k keeps exactly the ids scoring >= the k-th largest."""
    rng = np.random.default_rng(1)
    for vocab in (50257, 5000, 100):
        for k in (1, 5, 50, 200):
            row = (rng.standard_normal(vocab) * 3).astype(np.float32)
            if ties:
                row = np.round(row)
            row[rng.integers(0, vocab, vocab // 3)] = -np.inf  # already filtered scores
            kth = np.sort(row)[::-1][min(k, vocab) - 1]
            expected = np.flatnonzero(row >= kth) if k < vocab else np.flatnonzero(row > -np.inf)
            got, hint = sampling._top_k_ids(row, k)
            np.testing.assert_array_equal(got, expected)
            # With the hint of a similar row (usual case), a higher or a lower one: same ids.
            for other_hint in (hint, hint + 1.0, hint - 5.0, np.inf, -np.inf):
                np.testing.assert_array_equal(sampling._top_k_ids(row, k, other_hint)[0], expected)
            if k < vocab:  # the same row again would find its candidates from the hint
                assert hint <= kth
                if not ties:  # about 4k candidates next time, not the whole row
                    assert (row >= hint).sum() <= max(4 * k, (row >= kth).sum())


@pytest.mark.parametrize("ties", [False, True])
def test_top_p_over_top_k_candidates_equals_the_oracle(ties: bool) -> None:
    """The one top-p cut, on a short candidate list (top-k's), keeps what the oracle keeps,
    ties included (lower ids dropped first)."""
    rng = np.random.default_rng(3)
    for _ in range(400):
        n = int(rng.integers(1, 120))
        vals = (rng.standard_normal(n) * rng.uniform(0.1, 10.0)).astype(np.float32)
        if ties:
            vals = np.round(vals)
        p = float(rng.choice([0.1, 0.5, 0.9, 0.95, 0.999]))
        expected = np.flatnonzero(np.isfinite(oracle.top_p(vals[None], p)[0]))
        np.testing.assert_array_equal(sampling._top_p(vals, p, few=True), expected)


def test_repetition_penalty_equals_the_oracle_and_saturates_to_infinity() -> None:
    rng = np.random.default_rng(4)
    for penalty in (0.5, 1.2, 5.0):
        row = (rng.standard_normal(3000) * 30).astype(np.float32)
        row[:3] = [np.finfo(np.float32).max, -np.finfo(np.float32).max, -np.inf]
        ids = np.unique(np.concatenate([[0, 1, 2], rng.integers(0, row.size, 80)]))
        expected = row.copy()
        with np.errstate(over="ignore"):
            oracle.penalise(expected, ids, penalty)
        got = row.copy()
        RepetitionPenalty(penalty, ids.tolist(), row.size)(got, 0)
        np.testing.assert_array_equal(got, expected)


def test_draw_is_the_inverse_cdf_for_short_and_long_weights() -> None:
    """The plain-Python draw of a few candidates and numpy's cumsum agree with the rule."""
    rng = np.random.default_rng(6)
    for n in (1, 7, 64, 256, 257, 3000, 9000):
        weights = rng.random(n).astype(np.float32)
        weights[rng.random(n) < 0.3] = 0.0
        weights[rng.integers(0, n)] = 1.0
        cdf = np.cumsum(weights, dtype=np.float64)
        for u in rng.random(20):
            expected = int(np.searchsorted(cdf, u * cdf[-1], side="right"))
            assert sampling._draw(weights, float(u)) == expected
