"""Repetition and diversity metrics of Welleck et al. 2019, "Neural Text Generation with
Unlikelihood Training" (arXiv 1908.04319), on plain token-id sequences. Numpy only.

Definitions follow the authors' code (facebookresearch/unlikelihood_training):

- `seq_rep_n` is `custom/metrics.py::ngram_metrics` ("pct_repeat_{n}grams"): for one
  continuation, 1 - |unique n-grams| / |n-grams|; the paper's seq-rep-n is its mean over
  continuations (`Metrics.report`).
- `uniq_seq` is `report_metrics.py`'s "num_uniq_compl": unique tokens over all continuations.
- `token_prediction_metrics` is `TrainingMetrics.repeat_at_1` / `ranking_metrics` with
  context length 128 (the paper's table): for each position t of the true text, the greedy
  next-token prediction is a *repeat* if it occurs in targets[t-128:t]; a *wrong repeat* if it
  also differs from targets[t]. Both are divided by the number of predictions (t = 0, whose
  context is empty, included, as the reference's `ntokens` normaliser). `acc` is the
  fraction of predictions equal to the target (hits@1 with argmax), `uniq` the number of
  distinct predictions ("num_uniq_singletok"). `human_rep` is the same repeat rate for the
  true next token itself ("human_repeat_at_1").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

CONTEXT_WINDOW = 128


def seq_rep_n(tokens: Sequence[int], n: int = 4) -> float:
    """1 - unique n-grams / n-grams of one continuation (0 = no repeated n-gram)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    tokens = [int(t) for t in tokens]
    if len(tokens) < n:
        raise ValueError(f"a continuation of {len(tokens)} tokens has no {n}-grams")
    ngrams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(ngrams)) / len(ngrams)


def mean_seq_rep_n(continuations: Iterable[Sequence[int]], n: int = 4) -> float:
    """The paper's seq-rep-n: `seq_rep_n` averaged over continuations.

    Continuations shorter than n (e.g. stopped early by EOS) have no n-grams and are skipped.
    """
    values = [seq_rep_n(c, n) for c in continuations if len(c) >= n]
    if not values:
        raise ValueError(f"no continuation has at least {n} tokens")
    return float(np.mean(values))


def uniq_seq(continuations: Iterable[Sequence[int]]) -> int:
    """The paper's uniq-seq: number of distinct tokens across all continuations."""
    return len({int(t) for c in continuations for t in c})


def token_prediction_metrics(
    predictions: Sequence[int], targets: Sequence[int], window: int = CONTEXT_WINDOW
) -> dict[str, float]:
    """acc, rep, wrep, uniq (and human_rep) of greedy next-token predictions on true text.

    `predictions[t]` is the argmax prediction for `targets[t]` made from the true tokens
    before it (with Hugging Face logits: `predictions = logits[:-1].argmax(-1)`,
    `targets = input_ids[1:]`). The repeat context of position t is
    `targets[max(0, t - window):t]`.
    """
    return token_prediction_metrics_over([(predictions, targets)], window)


def token_prediction_metrics_over(
    sequences: Iterable[tuple[Sequence[int], Sequence[int]]], window: int = CONTEXT_WINDOW
) -> dict[str, float]:
    """`token_prediction_metrics` over several (predictions, targets) sequences: counts are
    summed and divided by the total number of predictions; context never crosses sequences."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    total = correct = repeat = wrong_repeat = human_repeat = 0
    predicted: set[int] = set()
    for preds, targs in sequences:
        preds = np.asarray(preds, dtype=np.int64).reshape(-1)
        targs = np.asarray(targs, dtype=np.int64).reshape(-1)
        if preds.shape != targs.shape:
            raise ValueError(f"{preds.size} predictions but {targs.size} targets")
        in_context = _in_recent_context(preds, targs, window)
        hits = preds == targs
        total += preds.size
        correct += int(hits.sum())
        repeat += int(in_context.sum())
        wrong_repeat += int((in_context & ~hits).sum())
        human_repeat += int(_in_recent_context(targs, targs, window).sum())
        predicted.update(preds.tolist())
    if total == 0:
        raise ValueError("no predictions to score")
    return {
        "acc": correct / total,
        "rep": repeat / total,
        "wrep": wrong_repeat / total,
        "uniq": len(predicted),
        "human_rep": human_repeat / total,
        "num_predictions": total,
    }


def _in_recent_context(tokens: np.ndarray, targets: np.ndarray, window: int) -> np.ndarray:
    """tokens[t] in targets[max(0, t - window):t], for every t, in one pass.

    A token is in that slice iff its last occurrence in targets before t is at t - window or
    later, so one dict of last positions replaces a window-sized scan per position.
    """
    last_seen: dict[int, int] = {}
    found = np.zeros(tokens.size, dtype=bool)
    for t, (token, target) in enumerate(zip(tokens.tolist(), targets.tolist(), strict=True)):
        found[t] = last_seen.get(token, -window - 1) >= t - window
        last_seen[target] = t
    return found
