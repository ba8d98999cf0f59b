"""lm-evaluation-harness as a real client: its `local-completions` model (remote tokenizer,
token-id prompts, echo + logprobs) against fst-serve on a tiny bundle scores what its `hf`
model scores on the same weights in PyTorch.

Tasks are local JSON-lines files (tests/data/lm_eval/): one loglikelihood_rolling task
(perplexity) and one multiple-choice task; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from serving_fakes import running_server

from fst.serving.app import create_app
from fst.serving.settings import ServingSettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TASKS_DIR = Path(__file__).parent / "data" / "lm_eval"
TASKS = ["fst_tiny_rolling", "fst_tiny_choice"]
# Below the model's 128 positions: an echo request needs room for its one generated token.
MAX_LENGTH = 100


def _evaluate(model: str, model_args: str) -> dict[str, Any]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=TASKS,
        task_manager=TaskManager(include_path=str(TASKS_DIR)),
        batch_size=1,
        device="cpu",
        log_samples=True,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )


def _loglikelihoods(results: dict[str, Any], task: str) -> list[float]:
    """Every request's log-likelihood, in document order (a response is [ll] for rolling
    requests, [(ll, is_greedy)] for the others)."""
    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    lls = [r[0] for s in samples for r in s["resps"]]
    return [float(ll[0] if isinstance(ll, (tuple, list)) else ll) for ll in lls]


def test_lm_eval_scores_equal_its_hf_backend(
    tiny_scoring_bundle: Path, tiny_hf_model_dir: Path, monkeypatch, tmp_path
) -> None:
    monkeypatch.chdir(TASKS_DIR)  # the task files name their data relative to here
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    app = create_app(ServingSettings(bundle=tiny_scoring_bundle, threads=1, model_name="tiny"))
    with running_server(app, ready_timeout=60) as base:
        served = _evaluate(
            "local-completions",
            f"model=tiny,base_url={base}/v1/completions,tokenizer_backend=remote,"
            f"max_length={MAX_LENGTH},num_concurrent=1,max_retries=1",
        )
    reference = _evaluate(
        "hf", f"pretrained={tiny_hf_model_dir},max_length={MAX_LENGTH},dtype=float32"
    )
    for task in TASKS:
        ours, theirs = served["results"][task], reference["results"][task]
        metrics = [k for k in theirs if k.endswith(",none") and "stderr" not in k]
        print(task, {m: (ours[m], theirs[m]) for m in metrics})  # fst-serve, hf (with -s)
        assert metrics, theirs
        for metric in metrics:
            assert ours[metric] == pytest.approx(theirs[metric], rel=1e-3), (task, metric)
        assert _loglikelihoods(served, task) == pytest.approx(
            _loglikelihoods(reference, task), rel=1e-3
        )
