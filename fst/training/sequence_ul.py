"""Sequence-level unlikelihood fine-tuning (Welleck et al. 2019, section 5.2).

The model continues `prefix_len`-token prefixes cut from its training batch greedily for
`continuation_len` tokens (Hugging Face `generate`: batched, KV-cached, no grad, dropout off,
EOS masked so every continuation has the same length). Every continuation token that belongs
to an n-gram already present earlier in the same continuation is a negative candidate and
gets -log(1 - p(token)); the sum is divided by the number of continuation tokens (the
authors' fairseq criterion, `custom/sequence_penalty_loss.py`: sample_size = ntokens).

Candidates (`CANDIDATE_SPANS`):
- "ngram" (default, the paper's definition and the authors' `ngram_repeat_mask`): every token
  of a repeated n-gram, i.e. all n tokens of the second and later occurrences.
- "last": only the token that completes a repeated n-gram.

The gradient comes from one teacher-forced forward pass over prefix + continuation with
grad, in eval mode like the authors' generation (so its logits are those the greedy tokens
were chosen from). Each update is sequence-level with probability `probability` (the
paper: 0.5), else the run's token-level update (MLE, or MLE + token UL with
--unlikelihood_alpha: the paper's "UL-token+seq").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import transformers

from fst.core.constants import LOSS_IGNORE
from fst.core.generation_params import GenerationParams
from fst.core.metrics import seq_rep_n
from fst.training.config import ArgsError
from fst.training.lightning_module import DocumentLM
from fst.training.loss import _MIN_PROB_COMPLEMENT

CANDIDATE_SPANS = ("ngram", "last")


@dataclass(frozen=True)
class SequenceULConfig:
    """The sequence-level objective's settings (fst-train validates the flags)."""

    prefix_len: int = 50
    continuation_len: int = 100
    ngram: int = 4
    probability: float = 0.5  # share of the updates that are sequence-level
    alpha: float = 1.0  # weight of the sequence-level loss (the paper: 1)
    max_prefixes: int = 16  # prompts per sequence-level update
    candidates: str = "ngram"  # CANDIDATE_SPANS
    seed: int = 0  # of the per-update coin
    # Dialogs: prefixes end where an assistant turn starts (the labels say where), and a
    # continuation is penalised only before its first `stop_token_ids` token (end of turn).
    assistant_only: bool = False
    stop_token_ids: tuple[int, ...] = ()


def repeated_ngram_mask(tokens: torch.Tensor, n: int, span: str = "ngram") -> torch.Tensor:
    """[N, L] bool: the tokens of each row that belong to ("ngram") or complete ("last") an
    n-gram that already occurred earlier in the same row (occurrences may overlap)."""
    if span not in CANDIDATE_SPANS:
        raise ValueError(f"unknown candidate span {span!r}; use one of {CANDIDATE_SPANS}")
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    for row, ids in enumerate(tokens.tolist()):
        seen: set[tuple[int, ...]] = set()
        for start in range(len(ids) - n + 1):
            gram = tuple(ids[start : start + n])
            if gram in seen:
                first = start if span == "ngram" else start + n - 1
                mask[row, first : start + n] = True
            seen.add(gram)
    return mask.to(tokens.device)


def sequence_unlikelihood_loss(
    logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """sum over candidates of -log(1 - p(token)) / number of tokens.

    logits: [N, L, V] with logits[:, t] predicting tokens[:, t] (already aligned);
    tokens, mask: [N, L].
    """
    logp = F.log_softmax(logits.float(), dim=-1).gather(2, tokens.unsqueeze(2)).squeeze(2)
    one_minus_p = torch.clamp(1.0 - logp.exp(), min=_MIN_PROB_COMPLEMENT)  # [N, L]
    return -(torch.log(one_minus_p) * mask).sum() / tokens.numel()


def training_prefixes(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix_len: int, max_prefixes: int
) -> torch.Tensor | None:
    """[N, prefix_len] consecutive blocks of the batch's (right-padded) rows, first blocks of
    every row first; None when no row has `prefix_len` tokens. Like the authors'
    `batch_input_sequence_by_prefix_length`, without padding inside a block."""
    lengths = attention_mask.sum(dim=1).tolist()
    blocks = []
    for k in range(max(lengths) // prefix_len):
        for row, length in enumerate(lengths):
            if (k + 1) * prefix_len <= length and len(blocks) < max_prefixes:
                blocks.append(input_ids[row, k * prefix_len : (k + 1) * prefix_len])
    return torch.stack(blocks) if blocks else None


def assistant_prefixes(
    input_ids: torch.Tensor, labels: torch.Tensor, prefix_len: int, max_prefixes: int
) -> torch.Tensor | None:
    """[N, prefix_len] the tokens just before each assistant turn (a labelled run after an
    ignored token) that has `prefix_len` tokens before it, last turns first; None if none."""
    learnt = (labels != LOSS_IGNORE).tolist()
    starts = []
    for row, flags in enumerate(learnt):
        for t in range(prefix_len, len(flags)):
            if flags[t] and not flags[t - 1]:
                starts.append((row, t))
    starts.sort(key=lambda rt: -rt[1])
    blocks = [input_ids[row, t - prefix_len : t] for row, t in starts[:max_prefixes]]
    return torch.stack(blocks) if blocks else None


def before_stop(tokens: torch.Tensor, stop_token_ids: tuple[int, ...]) -> torch.Tensor:
    """[N, L] bool: the tokens before the first stop token of each row."""
    if not stop_token_ids:
        return torch.ones_like(tokens, dtype=torch.bool)
    stops = torch.isin(tokens, torch.tensor(stop_token_ids, device=tokens.device))
    return stops.long().cumsum(dim=1) == 0


@torch.no_grad()
def greedy_continuations(
    model: transformers.PreTrainedModel,
    prefixes: torch.Tensor,
    continuation_len: int,
    eos_token_id: int | None,
    pad_token_id: int | None,
) -> torch.Tensor:
    """[N, continuation_len] greedy tokens after equal-length prefixes [N, P] (no padding),
    EOS masked; dropout off while decoding, the model's mode restored afterwards."""
    was_training = model.training
    model.eval()
    greedy = GenerationParams(
        max_new_tokens=continuation_len, min_new_tokens=continuation_len, temperature=0.0
    )
    config = transformers.GenerationConfig(
        **greedy.hf_generation_kwargs(eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    )
    try:
        output = model.generate(
            input_ids=prefixes,
            attention_mask=torch.ones_like(prefixes),
            generation_config=config,
        )
    finally:
        model.train(was_training)
    return output[:, prefixes.shape[1] :]


@dataclass
class SequenceStep:
    """One sequence-level update's loss and what TensorBoard shows of it."""

    loss: torch.Tensor
    penalised_share: float  # candidates / continuation tokens
    seq_rep: float  # mean seq-rep-n of the continuations
    num_prefixes: int


def sequence_step(
    model: transformers.PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    config: SequenceULConfig,
    eos_token_id: int | None,
    pad_token_id: int | None,
    labels: torch.Tensor | None = None,
) -> SequenceStep | None:
    """Prefixes → greedy continuations → the sequence-level loss (None: no prefix fits)."""
    if config.assistant_only:
        prefixes = assistant_prefixes(input_ids, labels, config.prefix_len, config.max_prefixes)
    else:
        prefixes = training_prefixes(
            input_ids, attention_mask, config.prefix_len, config.max_prefixes
        )
    if prefixes is None:
        return None
    continuations = greedy_continuations(
        model, prefixes, config.continuation_len, eos_token_id, pad_token_id
    )
    mask = repeated_ngram_mask(continuations, config.ngram, config.candidates)
    if config.assistant_only:
        mask &= before_stop(continuations, config.stop_token_ids)
    sequences = torch.cat([prefixes, continuations], dim=1)  # [N, P + C]
    was_training = model.training
    model.eval()  # the logits the greedy tokens came from (the authors' code, too)
    try:
        logits = model(input_ids=sequences).logits  # [N, P + C, V]
    finally:
        model.train(was_training)
    # logits[:, t] predicts sequences[:, t + 1]: the continuation is predicted from P - 1 on.
    P = prefixes.shape[1]
    loss = sequence_unlikelihood_loss(logits[:, P - 1 : -1], continuations, mask)
    rows = continuations.tolist()
    return SequenceStep(
        loss=loss,
        penalised_share=float(mask.float().mean()),
        seq_rep=float(np.mean([seq_rep_n(r, config.ngram) for r in rows])),
        num_prefixes=len(rows),
    )


class SequenceULDocumentLM(DocumentLM):
    """`DocumentLM` whose updates are sequence-level with probability `sequence.probability`.

    The coin of an update depends only on (seed, epoch, batch index), so a run is
    reproducible and a resumed one draws the same coins.
    """

    def __init__(self, *args: Any, sequence: SequenceULConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sequence = sequence
        limit = getattr(self.model.config, "n_positions", None) or getattr(
            self.model.config, "max_position_embeddings", None
        )
        if limit is not None and sequence.prefix_len + sequence.continuation_len > limit:
            raise ArgsError(
                f"--prefix_len + --continuation_len is "
                f"{sequence.prefix_len + sequence.continuation_len} tokens, more than the "
                f"model's {limit} positions"
            )

    def is_sequence_update(self, epoch: int, batch_idx: int) -> bool:
        coin = np.random.default_rng([self.sequence.seed, epoch, batch_idx]).random()
        return coin < self.sequence.probability

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if not self.is_sequence_update(self.current_epoch, batch_idx):
            return super().training_step(batch, batch_idx)
        step = sequence_step(
            self.model,
            batch["input_ids"],
            batch["attention_mask"],
            self.sequence,
            self.tokenizer.eos_token_id,
            self.tokenizer.pad_token_id,
            labels=batch["labels"],
        )
        if step is None:  # no row as long as a prefix: a token-level update instead
            return super().training_step(batch, batch_idx)
        size = step.num_prefixes
        self.log("SeqUL-Loss/train", step.loss, prog_bar=True, batch_size=size)
        self.log("SeqUL-Penalised/train", step.penalised_share, batch_size=size)
        self.log(f"SeqUL-SeqRep{self.sequence.ngram}/train", step.seq_rep, batch_size=size)
        self.log("LR", self.optimizers().param_groups[0]["lr"], batch_size=size)
        return self.sequence.alpha * step.loss
