"""The sampler on scores it cannot sample from, and parameters it cannot compute with.

Adversarial rows (all -inf but one, NaN, +inf, subnormal, nothing finite) must give a token
id in range whose score is the row's best (NaN counted as -inf): never an exception, never a
token chosen because of a NaN weight. Parameters a float32 cannot hold are refused up front.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fst.core.generation_params import GenerationParams
from fst.runtime.sampling import RepetitionPenalty, SequenceSampler, sequence_rng

V = 3000  # long enough for the block-wise draw and top-p's candidate growth
NAN, INF = np.float32(np.nan), np.float32(np.inf)

SETTINGS = {
    "greedy": dict(temperature=0.0),
    "plain": dict(temperature=1.0, top_k=0, top_p=1.0),
    "top_k": dict(temperature=0.7, top_k=50, top_p=1.0),
    "top_p": dict(temperature=0.7, top_k=0, top_p=0.9),
    "top_k_top_p": dict(temperature=1.3, top_k=20, top_p=0.5),
    "tiny_temperature": dict(temperature=1e-4, top_k=0, top_p=0.95),
    "penalty_min_tokens": dict(
        temperature=1.0, top_k=0, repetition_penalty=1e-4, min_new_tokens=2, max_new_tokens=4
    ),
}


def _sampler(settings: dict, seed: int = 0) -> SequenceSampler:
    params = GenerationParams(**settings)
    return SequenceSampler(params, [1, 2, 3], [0], sequence_rng(seed, 0), V)


def _rows() -> dict[str, tuple[np.ndarray, set[int]]]:
    """Each adversarial row and the tokens an answer may be (None: any in range)."""
    rng = np.random.default_rng(0)
    normal = rng.normal(size=V).astype(np.float32)
    one = np.full(V, -INF)
    one[1234] = 5.0
    nans = normal.copy()
    nans[[0, 7, 2999]] = NAN
    best_of_nans = {int(np.where(np.isnan(nans), -INF, nans).argmax())}
    all_nan = np.full(V, NAN)
    pos_inf = normal.copy()
    pos_inf[[17, 2500]] = INF
    subnormal = np.full(V, np.float32(1e-45))
    subnormal[42] = np.float32(3e-45)
    huge = normal * np.float32(1e35)  # / temperature 1e-4 overflows float32
    return {
        "all -inf but one": (one, {1234}),
        "NaN among finite": (nans, None),
        "NaN only": (all_nan, None),
        "+inf": (pos_inf, {17, 2500}),
        "subnormal": (subnormal, None),
        "all -inf": (np.full(V, -INF), None),
        "huge": (huge, None),
        "_best_of_nans": (nans, best_of_nans),
    }


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_adversarial_scores_give_a_token_in_range_never_from_a_nan(setting: str) -> None:
    for name, (row, allowed) in _rows().items():
        if name.startswith("_"):
            continue
        for num_new in (0, 5):
            for seed in range(3):
                token = _sampler(SETTINGS[setting], seed).choose(row.copy(), num_new)
                assert 0 <= token < V, (name, token)
                if allowed is not None:
                    assert token in allowed, (setting, name, token)
                if name == "NaN among finite":
                    assert not math.isnan(row[token]), (setting, token)


def test_greedy_skips_nan_and_overflowing_temperature_falls_back_to_greedy() -> None:
    row, (best,) = _rows()["_best_of_nans"]
    assert _sampler(SETTINGS["greedy"]).choose(row.copy(), 0) == best
    huge = _rows()["huge"][0]
    # temperature -> 0 is greedy's limit: scores that overflow when scaled give the argmax
    assert _sampler(SETTINGS["tiny_temperature"]).choose(huge.copy(), 0) == int(huge.argmax())


def test_an_ordinary_row_still_samples_from_the_seeded_stream() -> None:
    """The guard changes nothing on finite scores: two seeds, different draws, same as before."""
    row = np.random.default_rng(1).normal(size=V).astype(np.float32)
    draws = {_sampler(SETTINGS["plain"], seed).choose(row.copy(), 0) for seed in range(20)}
    assert len(draws) > 10


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 1e-300),  # 0 in float32
        ("temperature", 1e-45),  # subnormal in float32
        ("temperature", 1e39),  # inf in float32
        ("temperature", math.inf),
        ("temperature", -0.5),
        ("repetition_penalty", 1e-300),
        ("repetition_penalty", 1e39),
        ("repetition_penalty", math.nan),
    ],
)
def test_parameters_a_float32_cannot_hold_are_refused_naming_the_field(
    field: str, value: float
) -> None:
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        GenerationParams(**{field: value})


def test_greedy_temperature_zero_and_the_range_ends_are_accepted() -> None:
    for value in (0.0, 1e-4, 1e4):
        GenerationParams(temperature=value)
    for value in (1e-4, 1e4):
        GenerationParams(repetition_penalty=value)


def test_a_zero_float32_penalty_is_refused_by_the_processor_too() -> None:
    with pytest.raises(ValueError, match="repetition_penalty"):
        RepetitionPenalty(1e-300, [1], 10)
