"""The LM + unlikelihood loss against direct loop implementations and Hugging Face's loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fst.core.constants import LOSS_IGNORE
from fst.training.loss import language_model_losses, unlikelihood_candidates_loss


def reference_unlikelihood_tensor(
    logits: torch.Tensor, targets: torch.Tensor, reduction: str = "token"
) -> torch.Tensor:
    """Welleck et al. token-level UL, written the obvious way: loop over rows and positions.

    "token": sum of the terms / number of target tokens (the authors' fairseq criterion);
    "pair": mean of the terms (the original project).
    """
    terms = []
    num_targets = 0
    for b in range(logits.shape[0]):
        logp = F.log_softmax(logits[b].double(), dim=-1)
        seen: list[int] = []
        for t in range(logits.shape[1]):
            target = int(targets[b, t])
            if target == LOSS_IGNORE:
                continue
            num_targets += 1
            for c in sorted(set(seen) - {target}):
                terms.append(-torch.log(torch.clamp(1.0 - logp[t, c].exp(), min=1e-5)))
            seen.append(target)
    if not terms:
        return torch.zeros((), dtype=torch.float64)
    total = torch.stack(terms).sum()
    return total / len(terms) if reduction == "pair" else total / num_targets


def reference_unlikelihood(
    logits: torch.Tensor, targets: torch.Tensor, reduction: str = "token"
) -> float:
    return reference_unlikelihood_tensor(logits, targets, reduction).item()


def random_batch(batch: int, length: int, vocab: int, seed: int):
    """Random logits and labels with repeats, right padding and ignored labels."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=g) * 3
    labels = torch.randint(0, min(vocab, 6), (batch, length), generator=g)  # many repeats
    ignored = torch.rand(batch, length, generator=g) < 0.2
    labels[ignored] = LOSS_IGNORE
    for b in range(batch):  # right padding of random length
        pad = int(torch.randint(0, length // 2 + 1, (1,), generator=g))
        if pad:
            labels[b, length - pad :] = LOSS_IGNORE
    return logits, labels


@pytest.mark.parametrize(
    ("batch", "length", "vocab", "seed"),
    [(1, 5, 7, 0), (3, 9, 11, 1), (4, 16, 32, 2), (2, 33, 50, 3)],
)
@pytest.mark.parametrize("reduction", ["token", "pair"])
def test_unlikelihood_matches_loop(batch, length, vocab, seed, reduction):
    logits, labels = random_batch(batch, length, vocab, seed)
    got = unlikelihood_candidates_loss(logits, labels, reduction)
    expected = reference_unlikelihood(logits, labels, reduction)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_token_reduction_is_the_papers_sum_over_candidates_per_token():
    # targets 5, 6, 7, 5 with uniform logits over V = 10: the candidates are {} , {5}, {5, 6},
    # {6, 7} (the target 5 is never its own candidate); each term is -log(1 - 1/10).
    logits = torch.zeros(1, 4, 10)
    targets = torch.tensor([[5, 6, 7, 5]])
    term = -math.log(1 - 0.1)
    token = unlikelihood_candidates_loss(logits, targets, "token")
    pair = unlikelihood_candidates_loss(logits, targets, "pair")
    assert token.item() == pytest.approx(5 * term / 4, rel=1e-6)  # 5 pairs, 4 tokens
    assert pair.item() == pytest.approx(term, rel=1e-6)  # the mean of 5 equal terms


def test_unknown_reduction_is_refused():
    with pytest.raises(ValueError, match="unknown unlikelihood reduction"):
        unlikelihood_candidates_loss(torch.zeros(1, 2, 3), torch.tensor([[0, 1]]), "sum")


def test_unlikelihood_counts_repeated_context_tokens_once():
    # targets 1, 1, 2: position 2 has the single candidate {1} although 1 appeared twice.
    logits = torch.zeros(1, 3, 4)
    logits[0, 2, 1] = 2.0
    got = unlikelihood_candidates_loss(logits, torch.tensor([[1, 1, 2]]), "pair")
    p = math.exp(2.0) / (math.exp(2.0) + 3)
    assert got.item() == pytest.approx(-math.log(1 - p), rel=1e-6)
    token = unlikelihood_candidates_loss(logits, torch.tensor([[1, 1, 2]]), "token")
    assert token.item() == pytest.approx(-math.log(1 - p) / 3, rel=1e-6)  # one term, 3 tokens


def test_unlikelihood_clamps_certain_candidates():
    logits = torch.full((1, 2, 3), -50.0)
    logits[0, 1, 0] = 50.0  # p(candidate 0) == 1 at position 1
    got = unlikelihood_candidates_loss(logits, torch.tensor([[0, 2]]), "pair")
    assert got.item() == pytest.approx(-math.log(1e-5), rel=1e-4)


def test_unlikelihood_without_candidates_is_zero():
    logits = torch.randn(2, 4, 5, requires_grad=True)
    labels = torch.tensor([[3, 3, 3, LOSS_IGNORE], [LOSS_IGNORE] * 4])
    assert unlikelihood_candidates_loss(logits, labels).item() == 0.0


def test_ignored_positions_do_not_predict_or_serve_as_candidates():
    logits, _ = random_batch(1, 6, 9, 4)
    labels = torch.tensor([[1, 2, 3, 4, 5, 6]])
    masked = labels.clone()
    masked[0, 1] = LOSS_IGNORE  # token 2 disappears both as a target and as a candidate
    expected = reference_unlikelihood(logits, masked)
    assert unlikelihood_candidates_loss(logits, masked).item() == pytest.approx(expected, rel=1e-5)
    assert expected != pytest.approx(reference_unlikelihood(logits, labels), rel=1e-3)


@pytest.mark.parametrize("reduction", ["token", "pair"])
def test_gradient_matches_loop(reduction):
    logits, labels = random_batch(2, 7, 10, 5)
    ours = logits.clone().requires_grad_(True)
    unlikelihood_candidates_loss(ours, labels, reduction).backward()
    reference = logits.clone().double().requires_grad_(True)
    reference_unlikelihood_tensor(reference, labels, reduction).backward()
    torch.testing.assert_close(ours.grad, reference.grad.float(), rtol=1e-4, atol=1e-6)


def test_total_loss_shifts_like_hugging_face():
    """logits[:, t] predicts labels[:, t+1]: the LM part equals HF's own causal LM loss."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32, vocab_size=20)
    model = transformers.GPT2LMHeadModel(config).eval()
    input_ids = torch.randint(0, 20, (2, 10))
    labels = input_ids.clone()
    labels[0, :3] = LOSS_IGNORE
    labels[1, 7:] = LOSS_IGNORE
    out = model(input_ids=input_ids, labels=labels)
    got = language_model_losses(out.logits, labels, unlikelihood_alpha=0.0)
    torch.testing.assert_close(got.lm_loss, out.loss)
    assert got.ul_loss is None
    torch.testing.assert_close(got.loss, out.loss)


@pytest.mark.parametrize("alpha", [0.0, None])
def test_alpha_off_is_plain_lm_loss(alpha):
    logits, labels = random_batch(3, 8, 12, 6)
    got = language_model_losses(logits, labels, unlikelihood_alpha=alpha)
    expected = F.cross_entropy(
        logits[:, :-1].reshape(-1, 12), labels[:, 1:].reshape(-1), ignore_index=LOSS_IGNORE
    )
    torch.testing.assert_close(got.loss, expected)
    assert got.ul_loss is None


@pytest.mark.parametrize("reduction", ["token", "pair"])
def test_total_is_lm_plus_alpha_times_shifted_unlikelihood(reduction):
    logits, labels = random_batch(3, 8, 12, 7)
    got = language_model_losses(logits, labels, 5.0, reduction)
    ul = reference_unlikelihood(logits[:, :-1], labels[:, 1:], reduction)
    assert got.ul_loss.item() == pytest.approx(ul, rel=1e-5)
    assert got.loss.item() == pytest.approx(got.lm_loss.item() + 5.0 * ul, rel=1e-5)
