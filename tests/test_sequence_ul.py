"""Sequence-level unlikelihood (fst/training/sequence_ul.py): the candidate mask, the loss against
hand-computed values, greedy continuations against a no-cache reference, and fst-train's
fine-tuning mode end to end (tiny model, a few steps)."""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from conftest import run_tiny_training, tiny_train_args

from fst.training.config import ArgsError
from fst.training.sequence_ul import (
    SequenceULConfig,
    SequenceULDocumentLM,
    greedy_continuations,
    repeated_ngram_mask,
    sequence_step,
    sequence_unlikelihood_loss,
    training_prefixes,
)


def test_mask_marks_every_token_of_a_repeated_ngram():
    # 2-grams: (1,2) at 0; (2,3); (3,1); (1,2) again at 3 → tokens 3, 4; (2,1) new; (1,2)
    # again at 5 → tokens 5, 6 (overlapping occurrences count); (2,9) new.
    tokens = torch.tensor([[1, 2, 3, 1, 2, 1, 2, 9]])
    mask = repeated_ngram_mask(tokens, n=2)
    assert mask.tolist() == [[False, False, False, True, True, True, True, False]]


def test_mask_last_marks_exactly_the_tokens_completing_a_repeated_ngram():
    tokens = torch.tensor([[1, 2, 3, 1, 2, 1, 2, 9], [5, 5, 5, 5, 6, 5, 5, 5]])
    assert repeated_ngram_mask(tokens, n=2, span="last").tolist() == [
        [False, False, False, False, True, False, True, False],
        # (5,5) at 0, again at 1 and 2 → tokens 2, 3; (5,6), (6,5) new; (5,5) at 5, 6.
        [False, False, True, True, False, False, True, True],
    ]


def test_mask_with_n4_against_a_direct_definition():
    """Position t completes a repeated 4-gram iff tokens[t-3:t+1] occurs at an earlier start."""
    torch.manual_seed(0)
    tokens = torch.randint(0, 3, (6, 40))
    last = repeated_ngram_mask(tokens, n=4, span="last")
    full = repeated_ngram_mask(tokens, n=4)
    for r, row in enumerate(tokens.tolist()):
        grams = [tuple(row[i : i + 4]) for i in range(len(row) - 3)]
        completes = [False] * 3 + [grams[s] in grams[:s] for s in range(len(grams))]
        assert last[r].tolist() == completes
        covered = [any(completes[t + k] for k in range(4) if t + k < len(row)) for t in range(40)]
        assert full[r].tolist() == covered
    assert last.any() and not last[:, :3].any()


def test_mask_of_a_row_without_repeats_is_empty_and_n_longer_than_row():
    assert not repeated_ngram_mask(torch.tensor([[1, 2, 3, 4, 5, 6]]), n=4).any()
    assert not repeated_ngram_mask(torch.tensor([[7, 7, 7]]), n=4).any()
    with pytest.raises(ValueError, match="candidate span"):
        repeated_ngram_mask(torch.tensor([[1]]), n=1, span="all")


def test_loss_against_hand_computed_value():
    # Vocabulary of 2, one row of 3 tokens, the last one penalised. logits (0, ln 3): p(1) = 3/4.
    logits = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [0.0, math.log(3.0)]]])
    tokens = torch.tensor([[0, 1, 1]])
    mask = torch.tensor([[False, False, True]])
    loss = sequence_unlikelihood_loss(logits, tokens, mask)
    # -log(1 - 3/4) / 3 tokens = log(4) / 3
    assert loss.item() == pytest.approx(math.log(4.0) / 3, rel=1e-6)
    # Two penalised tokens: p(1) = 1/2 at position 1 and 3/4 at position 2.
    both = sequence_unlikelihood_loss(logits, tokens, torch.tensor([[False, True, True]]))
    assert both.item() == pytest.approx((math.log(2.0) + math.log(4.0)) / 3, rel=1e-6)
    assert sequence_unlikelihood_loss(logits, tokens, torch.zeros(1, 3, dtype=torch.bool)) == 0


def test_loss_gradient_lowers_the_penalised_probability():
    logits = torch.zeros(1, 2, 5, requires_grad=True)
    tokens = torch.tensor([[3, 3]])
    sequence_unlikelihood_loss(logits, tokens, torch.tensor([[False, True]])).backward()
    assert logits.grad[0, 0].abs().sum() == 0  # not a candidate: no gradient
    assert logits.grad[0, 1, 3] > 0  # descent lowers the candidate's logit
    assert (logits.grad[0, 1, [0, 1, 2, 4]] < 0).all()


def test_training_prefixes_are_full_blocks_first_blocks_first():
    input_ids = torch.arange(30).view(3, 10)
    attention_mask = torch.tensor([[1] * 10, [1] * 7 + [0] * 3, [1] * 3 + [0] * 7])
    prefixes = training_prefixes(input_ids, attention_mask, prefix_len=4, max_prefixes=8)
    assert prefixes.tolist() == [[0, 1, 2, 3], [10, 11, 12, 13], [4, 5, 6, 7]]
    capped = training_prefixes(input_ids, attention_mask, prefix_len=4, max_prefixes=2)
    assert capped.tolist() == [[0, 1, 2, 3], [10, 11, 12, 13]]
    assert training_prefixes(input_ids, attention_mask, prefix_len=11, max_prefixes=8) is None


def tiny_model(vocab: int = 20) -> transformers.GPT2LMHeadModel:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=16, n_positions=64, vocab_size=vocab
    )
    return transformers.GPT2LMHeadModel(config)


def test_greedy_continuations_equal_argmax_without_cache_and_mask_eos():
    model = tiny_model().train()
    prefixes = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    eos = int(model(prefixes).logits[0, -1].argmax())  # the first greedy token of row 0
    got = greedy_continuations(model, prefixes, 6, eos_token_id=eos, pad_token_id=0)
    assert model.training  # mode restored
    model.eval()
    expected = prefixes.clone()
    with torch.no_grad():
        for _ in range(6):
            logits = model(expected).logits[:, -1]
            logits[:, eos] = -math.inf  # EOS masked: every continuation is full length
            expected = torch.cat([expected, logits.argmax(-1, keepdim=True)], dim=1)
    assert got.tolist() == expected[:, 4:].tolist()
    assert eos not in got.flatten().tolist()


def test_sequence_step_loss_matches_a_direct_computation():
    model = tiny_model()
    input_ids = torch.tensor([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]])
    config = SequenceULConfig(prefix_len=3, continuation_len=12, ngram=2, max_prefixes=8)
    step = sequence_step(model, input_ids, torch.ones_like(input_ids), config, 19, 0)
    assert step.num_prefixes == 4
    prefixes = torch.tensor([[1, 2, 3], [7, 8, 9], [4, 5, 6], [10, 11, 12]])
    continuations = greedy_continuations(model, prefixes, 12, 19, 0)
    mask = repeated_ngram_mask(continuations, 2)
    model.eval()
    with torch.no_grad():
        logp = model(torch.cat([prefixes, continuations], 1)).logits.log_softmax(-1)
    p = logp[:, 2:-1].gather(2, continuations.unsqueeze(2)).squeeze(2).exp()
    expected = -(torch.log(torch.clamp(1 - p, min=1e-5)) * mask).sum() / continuations.numel()
    assert step.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert step.penalised_share == pytest.approx(mask.float().mean().item())
    assert step.loss.requires_grad


def test_sequence_updates_follow_the_stated_probability():
    module = SequenceULDocumentLM.__new__(SequenceULDocumentLM)  # only the coin is used
    module.sequence = SequenceULConfig(probability=0.5, seed=3)
    coins = [module.is_sequence_update(0, i) for i in range(2000)]
    assert 0.45 < sum(coins) / len(coins) < 0.55
    assert coins == [module.is_sequence_update(0, i) for i in range(2000)]  # reproducible
    module.sequence = SequenceULConfig(probability=1.0)
    assert all(module.is_sequence_update(1, i) for i in range(100))


def test_fine_tuning_a_checkpoint_with_sequence_unlikelihood(tmp_path, tiny_checkpoint):
    from test_training import scalars

    from fst.training.checkpoint import load_checkpoint

    result = run_tiny_training(
        tmp_path,
        model_path=str(tiny_checkpoint),
        tokenizer=None,
        model_overrides={},
        sequence_unlikelihood=True,
        prefix_len=6,
        continuation_len=20,
        sequence_ul_prob=1.0,
        max_steps=4,
        val_check_interval=2,
    )
    folder = result.experiment.dir
    assert result.global_step == 4  # a new step count, not the checkpoint's
    share = scalars(folder, "SeqUL-Penalised/train")
    assert len(share) == 4 and all(0.0 <= v <= 1.0 for v in share.values())
    assert scalars(folder, "SeqUL-Loss/train") and scalars(folder, "SeqUL-SeqRep4/train")
    assert scalars(folder, "Perplexity/valid")
    assert (folder / "generated.txt").read_text().strip()
    before, after = load_checkpoint(tiny_checkpoint), load_checkpoint(result.last_checkpoint)
    assert before.tokenizer.to_json() == after.tokenizer.to_json()  # the checkpoint's vocab
    assert after.info["training_args"]["sequence_unlikelihood"] is True
    weights = zip(before.model.parameters(), after.model.parameters(), strict=True)
    assert any(not torch.equal(a, b) for a, b in weights)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sequence_ul_prob": 0.0}, "--sequence_ul_prob must be in"),
        ({"sequence_ul_alpha": 0.0}, "--sequence_ul_alpha must be > 0"),
        ({"ngram": 4, "continuation_len": 3}, "--continuation_len must be an integer >= 4"),
        ({"sequence_ul_candidates": "all"}, "--sequence_ul_candidates must be one of"),
        ({"sequence_unlikelihood": True, "prefix_len": 30}, "longer than --max_body_len"),
        ({"model_path": "missing.ckpt", "tokenizer": None}, "no such checkpoint file"),
    ],
)
def test_bad_sequence_ul_arguments(tmp_path, overrides, message):
    with pytest.raises(ArgsError, match=message):
        tiny_train_args(tmp_path, **overrides)


def test_checkpoint_model_path_refuses_a_tokenizer(tmp_path, tiny_checkpoint):
    with pytest.raises(ArgsError, match="--tokenizer cannot be combined"):
        tiny_train_args(tmp_path, model_path=str(tiny_checkpoint), model_overrides={})


def test_prefix_and_continuation_must_fit_the_model(tmp_path, tiny_checkpoint):
    from fst.training.experiment import create_experiment, experiment_logging
    from fst.training.trainer import train

    args = tiny_train_args(
        tmp_path,
        model_path=str(tiny_checkpoint),
        tokenizer=None,
        model_overrides={},
        sequence_unlikelihood=True,
        prefix_len=20,
        continuation_len=120,  # 140 > the model's 128 positions
    )
    experiment = create_experiment(args.experiments_root, args.name)
    with experiment_logging(experiment.logs_dir, console=False), pytest.raises(ArgsError):
        train(args, experiment)
