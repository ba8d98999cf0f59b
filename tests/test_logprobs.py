"""Token log-probabilities (fst.runtime.logprobs through DecodeBatch) against PyTorch's
log-softmax of the same tiny model's logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fst.core.generation_params import GenerationParams
from fst.runtime import GenerationRequest, Generator
from fst.runtime.logprobs import log_softmax, token_logprob

IDS = [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13]  # "The quick brown fox ..."
TOP = 5


@pytest.fixture(scope="module")
def torch_logprobs(tiny_hf_model_dir: Path):
    """ids -> PyTorch's log-softmax [S, V] of the reference model (float64)."""
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(tiny_hf_model_dir).eval()

    def run(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()
        return torch.log_softmax(logits, dim=-1).numpy()

    return run


def _check(got, reference_row: np.ndarray, token: int) -> None:
    assert got.token_id == token
    assert got.logprob == pytest.approx(reference_row[token], abs=1e-4)
    best = np.argsort(-reference_row)[:TOP]
    assert [t for t, _ in got.top] == best.tolist()
    assert [lp for _, lp in got.top] == pytest.approx(reference_row[best].tolist(), abs=1e-4)


@pytest.mark.parametrize("temperature", [0.0, 1.7])
def test_prompt_and_generated_logprobs_equal_torch_log_softmax(
    tiny_scoring_bundle: Path, torch_logprobs, temperature: float
) -> None:
    generator = Generator.from_bundle(tiny_scoring_bundle, threads=1)
    params = GenerationParams(max_new_tokens=4, temperature=temperature, top_k=3, seed=3)
    batch = generator.new_batch()
    request = GenerationRequest(IDS, params, logprobs=TOP, prompt_logprobs=TOP)
    (rows,) = batch.add([request, GenerationRequest("Hello", params)])[:1]
    while batch.num_live:
        batch.step()
    completion = rows[0].completion()
    reference = torch_logprobs(IDS + completion.token_ids)
    assert completion.prompt_token_ids == IDS
    assert completion.prompt_logprobs[0] is None
    for i, got in enumerate(completion.prompt_logprobs[1:], start=1):
        _check(got, reference[i - 1], IDS[i])
    # Generated tokens: the raw model's logprobs, whatever temperature and top-k sampled.
    assert len(completion.logprobs) == len(completion.token_ids) == 4
    for k, got in enumerate(completion.logprobs):
        _check(got, reference[len(IDS) - 1 + k], completion.token_ids[k])


def test_greedy_token_logprob_is_exactly_the_best_top_value() -> None:
    rng = np.random.default_rng(0)
    logprobs = log_softmax(rng.normal(size=50257).astype(np.float32) * 4)
    best = int(logprobs.argmax())
    got = token_logprob(logprobs, best, 1)
    assert got.logprob == max(lp for _, lp in got.top)  # lm-eval's is_greedy uses ==
    assert token_logprob(logprobs, best, 0).top == ()


def test_requests_without_logprobs_get_none(tiny_scoring_bundle: Path) -> None:
    generator = Generator.from_bundle(tiny_scoring_bundle, threads=1)
    (completion,) = generator.generate("Hello", max_new_tokens=2)
    assert completion.logprobs is None and completion.prompt_logprobs is None


def test_a_last_position_bundle_refuses_prompt_logprobs(tiny_plain_bundle: Path) -> None:
    generator = Generator.from_bundle(tiny_plain_bundle, threads=1)
    assert not generator.scores_prompts
    request = GenerationRequest(IDS, GenerationParams(max_new_tokens=1), prompt_logprobs=1)
    with pytest.raises(ValueError, match="--logits all"):
        generator.new_batch().add([request])


def test_token_id_prompts_are_checked_against_the_vocabulary(tiny_plain_bundle: Path) -> None:
    generator = Generator.from_bundle(tiny_plain_bundle, threads=1)
    assert generator.encode_prompt(IDS) == IDS
    with pytest.raises(ValueError, match="not in the vocabulary"):
        generator.encode_prompt([1, 10**6])


def test_generate_takes_one_token_id_prompt(tiny_plain_bundle: Path) -> None:
    generator = Generator.from_bundle(tiny_plain_bundle, threads=1)
    (by_ids,) = generator.generate(IDS, max_new_tokens=3, temperature=0.0)
    (by_text,) = generator.generate(
        generator.tokenizer.decode(IDS), max_new_tokens=3, temperature=0
    )
    assert by_ids.token_ids == by_text.token_ids and by_ids.prompt_tokens == len(IDS)
