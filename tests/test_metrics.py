import random

import numpy as np
import pytest

from fst.core.metrics import (
    mean_seq_rep_n,
    seq_rep_n,
    token_prediction_metrics,
    token_prediction_metrics_over,
    uniq_seq,
)


def test_seq_rep_4_by_hand():
    # 4-grams of 1 2 3 1 2 3 1: (1,2,3,1) (2,3,1,2) (3,1,2,3) (1,2,3,1) -> 3 unique of 4.
    assert seq_rep_n([1, 2, 3, 1, 2, 3, 1], n=4) == pytest.approx(1 - 3 / 4)


def test_seq_rep_1_and_no_repeats():
    # Unigrams 5 5 5 7: 2 unique of 4.
    assert seq_rep_n([5, 5, 5, 7], n=1) == pytest.approx(0.5)
    assert seq_rep_n(np.array([1, 2, 3, 4, 5]), n=2) == 0.0
    # 7 7 7 7 7 has 4 bigrams, all (7, 7): 1 unique.
    assert seq_rep_n([7] * 5, n=2) == pytest.approx(1 - 1 / 4)


def test_seq_rep_needs_n_tokens():
    with pytest.raises(ValueError, match="no 4-grams"):
        seq_rep_n([1, 2, 3], n=4)
    with pytest.raises(ValueError, match="n must be >= 1"):
        seq_rep_n([1, 2, 3], n=0)


def test_mean_seq_rep_skips_short_continuations():
    # 0.25 (above) and 0.0 for 1 2 3 4 (a single 4-gram); [9, 9] has no 4-gram.
    assert mean_seq_rep_n([[1, 2, 3, 1, 2, 3, 1], [1, 2, 3, 4], [9, 9]], n=4) == pytest.approx(
        0.125
    )
    with pytest.raises(ValueError, match="at least 4 tokens"):
        mean_seq_rep_n([[1, 2]], n=4)


def test_uniq_seq_counts_distinct_tokens_over_all_continuations():
    assert uniq_seq([[1, 2, 2], [2, 3], []]) == 3
    assert uniq_seq([np.array([4, 4])]) == 1


def test_token_prediction_metrics_by_hand():
    targets = [5, 6, 5, 7, 6]
    predictions = [6, 5, 5, 5, 8]
    # window 2, context of t = targets[t-2:t]:
    # t=0 ctx []    pred 6: no repeat,            target 5: miss
    # t=1 ctx [5]   pred 5: repeat, wrong (6)
    # t=2 ctx [5,6] pred 5: repeat, correct (5):  hit
    # t=3 ctx [6,5] pred 5: repeat, wrong (7)
    # t=4 ctx [5,7] pred 8: no repeat,            miss
    # human: only t=2's target 5 is in its context.
    assert token_prediction_metrics(predictions, targets, window=2) == {
        "acc": pytest.approx(1 / 5),
        "rep": pytest.approx(3 / 5),
        "wrep": pytest.approx(2 / 5),
        "uniq": 3,  # {6, 5, 8}
        "human_rep": pytest.approx(1 / 5),
        "num_predictions": 5,
    }


def test_window_limits_the_context():
    targets = [5, 6, 5, 7, 6]
    predictions = [6, 5, 5, 5, 8]
    # window 1: t=1 ctx [5] repeat+wrong; t=2 ctx [6] no; t=3 ctx [5] repeat+wrong; t=4 ctx [7] no.
    m = token_prediction_metrics(predictions, targets, window=1)
    assert (m["rep"], m["wrep"], m["human_rep"]) == (pytest.approx(2 / 5), pytest.approx(2 / 5), 0)
    # Position 4 predicting 6: targets[1] = 6 is 3 back, inside window 3 but not window 2.
    far = [0, 0, 0, 0, 6]
    assert token_prediction_metrics(far, targets, window=2)["rep"] == pytest.approx(0)
    assert token_prediction_metrics(far, targets, window=3)["rep"] == pytest.approx(1 / 5)


def _brute_force(predictions, targets, window):
    n = len(targets)
    rep = [predictions[t] in targets[max(0, t - window) : t] for t in range(n)]
    wrep = [r and predictions[t] != targets[t] for t, r in enumerate(rep)]
    return sum(rep) / n, sum(wrep) / n


def test_matches_a_direct_window_scan_on_random_data():
    rng = random.Random(0)
    for window in (1, 3, 128):
        targets = [rng.randrange(20) for _ in range(400)]
        predictions = [rng.randrange(20) for _ in range(400)]
        m = token_prediction_metrics(predictions, targets, window=window)
        assert (m["rep"], m["wrep"]) == pytest.approx(_brute_force(predictions, targets, window))


def test_several_sequences_do_not_share_context():
    # seq 1: t=0 pred 6 no ctx, miss; t=1 ctx [5] pred 5 repeat, wrong (6).
    # seq 2: t=0 pred 1, ctx [] (not seq 1's tokens), hit.
    m = token_prediction_metrics_over([([6, 5], [5, 6]), ([1], [1])], window=128)
    assert m["acc"] == pytest.approx(1 / 3)
    assert m["rep"] == pytest.approx(1 / 3)
    assert m["wrep"] == pytest.approx(1 / 3)
    assert m["uniq"] == 3 and m["num_predictions"] == 3


def test_bad_inputs():
    with pytest.raises(ValueError, match="3 predictions but 2 targets"):
        token_prediction_metrics([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="no predictions"):
        token_prediction_metrics([], [])
    with pytest.raises(ValueError, match="window must be >= 1"):
        token_prediction_metrics([1], [1], window=0)
