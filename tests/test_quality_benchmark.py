"""benchmarks/quality/unlikelihood.py: the fine-tuning command, the goal arithmetic, the results name."""

from __future__ import annotations

import dataclasses

from benchmarks.quality import unlikelihood as quality
from fst.training.cli import parse_args


def result(ppl: float, greedy: float) -> dict:
    return {"token_level": {"perplexity": ppl}, "sequence_level": {"greedy": {"seq_rep_4": greedy}}}


def test_fine_tune_flags_parse_as_a_sequence_ul_run_from_the_checkpoint(tmp_path):
    checkpoint = tmp_path / "best.ckpt"
    checkpoint.write_bytes(b"")  # parse_args only checks that it exists
    flags = quality.FineTune().train_flags(quality.SEQUENCE_BUDGET, str(checkpoint))
    corpus = ["--train_file", str(quality.CORPUS / "train.documents"),
              "--valid_file", str(quality.CORPUS / "valid.documents")]  # fmt: skip
    args = parse_args([*corpus, *flags, "--unlikelihood_alpha", "2.0"])
    assert args.sequence_unlikelihood and args.fine_tunes_checkpoint
    assert (args.model_path, args.max_steps, args.learning_rate) == (str(checkpoint), 480, 1e-3)
    assert (args.prefix_len, args.continuation_len, args.ngram) == (50, 100, 4)
    assert args.sequence_ul_prob == 0.5 and args.num_cycles == 1  # decays to 0 once
    assert args.batch_size == quality.SEQUENCE_BUDGET.batch_size
    assert args.max_body_len == quality.SEQUENCE_BUDGET.max_body_len
    assert args.model_overrides == {}  # the checkpoint's architecture


def test_sequence_goal_needs_absolute_ratio_and_perplexity():
    mle = result(200.0, 0.50)
    assert quality.compare(mle, result(210.0, 0.05), sequence=True)["goal_met"]
    assert not quality.compare(mle, result(210.0, 0.06), sequence=True)["goal_met"]  # > 0.05
    assert not quality.compare(mle, result(221.0, 0.01), sequence=True)["goal_met"]  # ppl +10.5%
    low = result(200.0, 0.10)  # 0.04 is 0.4x this MLE's: under 0.05 but not under 0.3x
    assert not quality.compare(low, result(200.0, 0.04), sequence=True)["goal_met"]
    # the token-level goal for the same numbers: relative only
    assert quality.compare(low, result(200.0, 0.04))["goal_met"]


def test_paper_table_has_the_authors_rows():
    lines = quality.paper_sequence_table()
    rows = [line for line in lines if line.startswith("| UL-token+seq")]
    assert rows == [
        "| UL-token+seq | 26.72 | 0.395 | 0.559 | 0.293 | 13,759 | 0.059 | 15,428 | 0.0006 "
        "| 25,997 | 0.0003 | 34,824 | 0.0135 |"
    ]


def test_result_names_say_what_was_trained() -> None:
    """The default results file names the level, the model's shape, the corpus and the seed."""
    token = quality.Budget().result_stem(sequence=False)
    assert token == "unlikelihood-token-level-gpt2-4x256-nietzsche-seed42"
    sequence = dataclasses.replace(quality.SEQUENCE_BUDGET, seed=7).result_stem(sequence=True)
    assert sequence == "unlikelihood-sequence-level-gpt2-2x128-nietzsche-seed7"
    assert quality.SMOKE.result_stem(sequence=False).startswith(
        "unlikelihood-token-level-gpt2-tiny-"
    )
