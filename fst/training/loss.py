"""Language-model loss plus the unlikelihood candidates loss (Welleck et al., 2019).

Token-level unlikelihood: at every target position t the tokens that already appeared as
targets before t (minus the target itself) are negative candidates, and the model is pushed
to give them low probability with -log(clamp(1 - p(c), 1e-5)). Following the paper, the
candidates form a *set*: a token that appeared several times in the context counts once per
position.

Reduction (`UL_REDUCTIONS`):
- "token" (default, the paper's): the terms are summed over each position's candidates and
  averaged over target tokens, exactly like the LM loss. This is what the authors' fairseq
  criterion computes (sum over candidates, divided by the token count), so alpha = 1.0 means
  what it means in the paper.
- "pair": the mean over all (position, candidate) pairs, as the original project computed it.
  With ~50 candidates per position in 128-token chunks it is ~50x weaker than "token", which is
  why the original README used alpha 5.0; an 800-step experiment with it at alpha 1.0 changed
  nothing measurable (benchmarks/results/unlikelihood-token-level-gpt2-4x256-nietzsche-seed42-epyc.md).

Positions whose label is `LOSS_IGNORE` (padding, meta, the start token) neither predict nor
serve as candidates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from fst.core.constants import LOSS_IGNORE, UL_REDUCTIONS

# Lower bound of 1 - p(candidate) inside the log, as in the original project.
_MIN_PROB_COMPLEMENT = 1e-5

ULReduction = Literal["token", "pair"]


@dataclass
class LossOutput:
    loss: torch.Tensor
    lm_loss: torch.Tensor
    ul_loss: torch.Tensor | None


def language_model_losses(
    logits: torch.Tensor,
    labels: torch.Tensor,
    unlikelihood_alpha: float | None = None,
    unlikelihood_reduction: ULReduction = "token",
) -> LossOutput:
    """LM loss (+ alpha × unlikelihood loss) for a causal LM.

    logits: [B, T, V] from a Hugging Face causal LM, where logits[:, t] predicts labels[:, t+1]
    (labels are the input ids with `LOSS_IGNORE` where no loss is wanted). The shift is done
    here, once, the same way Hugging Face's own loss does it.
    """
    # targets[:, t] = labels[:, t+1]; the last position has nothing to predict. Padding the
    # targets instead of slicing the logits avoids copying the [B, T, V] logits.
    targets = F.pad(labels[:, 1:], (0, 1), value=LOSS_IGNORE)  # [B, T]
    logits = logits.float()  # no copy for fp32; bf16/fp16 logits get an fp32 loss
    if not unlikelihood_alpha:
        lm_loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=LOSS_IGNORE)
        return LossOutput(loss=lm_loss, lm_loss=lm_loss, ul_loss=None)
    # One log-softmax serves both losses: a second full-vocabulary normalisation (and its
    # backward) nearly doubled the UL step (benchmarks/quality/unlikelihood_cost.py, results/unlikelihood-cost-training-step-gpt2-epyc.md).
    logp = F.log_softmax(logits, dim=-1)  # [B, T, V]
    lm_loss = F.nll_loss(logp.flatten(0, 1), targets.flatten(), ignore_index=LOSS_IGNORE)
    ul_loss = _unlikelihood_from_logp(logp, targets, unlikelihood_reduction)
    return LossOutput(loss=lm_loss + unlikelihood_alpha * ul_loss, lm_loss=lm_loss, ul_loss=ul_loss)


def unlikelihood_candidates_loss(
    logits: torch.Tensor, targets: torch.Tensor, reduction: ULReduction = "token"
) -> torch.Tensor:
    """Unlikelihood loss over already aligned predictions and targets.

    logits: [B, T, V], targets: [B, T] with logits[:, t] predicting targets[:, t] (no shift).
    Returns a scalar; 0 when the batch has no candidate at all.
    """
    return _unlikelihood_from_logp(F.log_softmax(logits.float(), dim=-1), targets, reduction)


def _unlikelihood_from_logp(
    logp: torch.Tensor, targets: torch.Tensor, reduction: ULReduction
) -> torch.Tensor:
    """The UL loss from log-probabilities [B, T, V] aligned with targets [B, T]."""
    if reduction not in UL_REDUCTIONS:
        raise ValueError(
            f"unknown unlikelihood reduction {reduction!r}; use one of {UL_REDUCTIONS}"
        )
    B, T, _ = logp.shape
    valid = targets != LOSS_IGNORE  # [B, T]
    ids = targets.masked_fill(~valid, 0)  # [B, T], safe to gather with

    # same[b, t, s]: targets t and s are the same token.
    same = ids.unsqueeze(2) == ids.unsqueeze(1)  # [B, T, T]
    earlier = torch.ones(T, T, dtype=torch.bool, device=logp.device).tril(diagonal=-1)  # s < t
    pair_valid = valid.unsqueeze(2) & valid.unsqueeze(1)  # [B, T, T]

    # A target s is a candidate's first occurrence when no valid earlier target equals it;
    # keeping only first occurrences counts each token of the context once per position.
    repeated = (same & earlier & valid.unsqueeze(1)).any(dim=2)  # [B, S]
    first = valid & ~repeated  # [B, S]

    # candidates[b, t, s]: token targets[b, s] is a negative candidate for position t.
    candidates = earlier & pair_valid & ~same & first.unsqueeze(1)  # [B, T, S]
    if not candidates.any():
        return logp.new_zeros(())

    candidate_ids = ids.unsqueeze(1).expand(B, T, T)  # [B, T, S]: id of target s
    candidate_logp = logp.gather(2, candidate_ids)  # [B, T, S]

    one_minus_p = torch.clamp(1.0 - candidate_logp[candidates].exp(), min=_MIN_PROB_COMPLEMENT)
    terms = -torch.log(one_minus_p)
    if reduction == "pair":
        return terms.mean()
    return terms.sum() / valid.sum()
