"""Log-probabilities of tokens: the model's own, for evaluation harnesses and scoring.

Values are log-softmax of the raw logits, before temperature, top-k, top-p or penalties
(vLLM's default), so they score text the same whatever a request samples with. The
chosen token's value and its `top` alternatives come from one array, so a greedy token's
logprob equals the largest top value exactly (lm-eval's `is_greedy` compares them with ==).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

MAX_TOP_LOGPROBS = 20  # OpenAI's limit on `logprobs`


class TokenLogprob(NamedTuple):
    """One token's log-probability and the `top` most likely tokens at its position."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # (id, logprob), most likely first


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log-softmax over the last axis, in float64 (float32 sums over a 50k vocabulary lose
    digits), returned as float32 as the model's logits are."""
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return x.astype(np.float32)


def token_logprob(logprobs: np.ndarray, token: int, top: int) -> TokenLogprob:
    """`token`'s entry of one position's log-softmax [V], with its `top` best tokens."""
    best: tuple[tuple[int, float], ...] = ()
    if top > 0:
        ids = (
            np.argpartition(-logprobs, top - 1)[:top]
            if top < logprobs.size
            else np.arange(logprobs.size)
        )
        ids = ids[np.argsort(-logprobs[ids], kind="stable")]
        best = tuple((int(i), float(logprobs[i])) for i in ids)
    return TokenLogprob(int(token), float(logprobs[token]), best)


def prompt_logprobs(logits: np.ndarray, ids: list[int], top: int) -> list[TokenLogprob | None]:
    """Each prompt token's logprob given the tokens before it, from the logits of every
    position [S, V]; the first token has no context, so None (OpenAI's null)."""
    logprobs = log_softmax(logits[: len(ids) - 1])
    return [None] + [token_logprob(logprobs[i], ids[i + 1], top) for i in range(len(ids) - 1)]
