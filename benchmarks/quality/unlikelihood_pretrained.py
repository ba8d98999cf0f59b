"""Unlikelihood on a real pretrained model: MLE vs sequence-level UL fine-tuning.

    python -m benchmarks.quality.unlikelihood_pretrained --gguf SmolLM2-135M-Instruct.Q4_1.gguf \
        --jobs 2 --threads 1                      # ~50 min on 2 shared cores
    python -m benchmarks.quality.unlikelihood_pretrained --smoke --jobs 2 --threads 1   # tiny Llama, ~1.5 min

The pretrained model (a GGUF file, dequantized to fp32 by fst-train) is fine-tuned on the
Nietzsche corpus per seed with the same data, optimiser, schedule and step budget (`Plan`):
with MLE (`quality.Budget`), and with the paper's sequence-level recipe (`quality.FineTune`:
each update sequence-level with probability 0.5, else the token-level update) once per
token-level update: MLE + token UL with alpha 1.0 ("token-UL + seq-UL", the paper's best
WikiText-103 model) and plain MLE ("MLE + seq-UL", the authors' GPT-2 script). The
pretrained model itself and every fine-tune are then evaluated by `fst-eval`
(`quality.evaluate`) on the validation documents: perplexity, acc/rep/wrep/uniq on the true
text, and greedy seq-rep-4 of 100-token continuations of 50-token prefixes (Welleck et al.
2019's protocol, fst/evaluation/evaluate.py).

The pretrained row is evaluated from an fst-train checkpoint made by ONE update at learning
rate 0 (the first step of the linear warmup): the weights are the GGUF's (the script checks
it), and the vocabulary and document encoding are exactly those of the fine-tunes.

Goal (the paper's GPT-2 result): a UL fine-tune's greedy seq-rep-4 <= 0.3x the MLE
fine-tune's, with perplexity at most +10%. Writes
benchmarks/results/unlikelihood-finetune-<model>.{json,md} after every finished run
(marked partial until all are done); a smoke run writes into its work folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.quality import unlikelihood as quality

DEFAULT_WORK = Path(os.environ.get("FST_BENCH_CACHE", "/tmp/fst-bench")) / "quality-pretrained"
SEQ_REP_RATIO_GOAL = 0.3  # UL fine-tune's greedy seq-rep-4 / MLE fine-tune's
PPL_GOAL = 0.10  # relative perplexity change allowed, UL vs MLE

# What the paper's sources say about fine-tuning a pretrained GPT-2 (the Markdown quotes it).
PAPER_LINES = [
    "Paper: the GPT-2 fine-tuning table of Welleck et al. (GPT-2 / GPT-2-MLE / GPT-2-UL-seq "
    "on WikiText-103) was **not found** with the search tools available here (only the "
    "openings of the arXiv / ar5iv pages are stored), so none of its numbers are quoted. "
    "Found instead: the authors' repository (facebookresearch/unlikelihood_training, README "
    "section *Finetuning GPT-2*, and `custom/gpt2/run_gpt2.py`): GPT-2 is MLE-tuned "
    "(`--sequence-tune-rate 0.0`, 20,000 steps) or sequence-level tuned (`--sequence-tune-rate "
    "0.5`: half the updates sequence-level, the others **MLE**; also after MLE-tuning), AdamW lr "
    "6.25e-5, weight decay 0.01, prefix 50, continuation 100, n = 4. Their README's evaluation "
    "of the fairseq models trained from scratch (WikiText-103 test, greedy seq-rep-4 / ppl): "
    "MLE .442 / 25.64; MLE + sequence-level fine-tuning .137 / 25.42 (0.31× MLE); token UL + "
    "sequence-level fine-tuning .059 / 26.72 (0.13× MLE, +4.2% ppl), each fine-tuning 1,500 "
    "updates.",
]


@dataclass(frozen=True)
class Plan:
    """What the fine-tunes of a seed share, sized for two shared CPU cores: with one torch
    thread per run and two runs side by side at load average ~5, 30 updates took ~10 min
    wall (3.1 min CPU for MLE, 4.6 min with the sequence-level updates), and one fst-eval
    ~4.5 min."""

    max_steps: int = 30
    batch_size: int = 8
    max_body_len: int = 128
    learning_rate: float = 1e-4  # run_gpt2.py's 6.25e-5 scaled up for 30 updates, not 1,500
    num_warmup_steps: int = 2
    weight_decay: float = 0.01  # run_gpt2.py's
    # Token UL weight in the non-sequence-level updates, one sequence-level fine-tune each:
    # 1.0 = token UL + sequence UL (the paper's best WikiText-103 model); 0 = MLE + sequence
    # UL (the authors' GPT-2 recipe, run_gpt2.py).
    unlikelihood_alphas: tuple[float, ...] = (1.0, 0.0)
    # The authors' order for GPT-2 (run_gpt2.py): MLE-tune, then the sequence-level
    # fine-tune (MLE + seq UL) from that checkpoint, the same number of updates again; one
    # such run per learning rate: this plan's, and run_gpt2.py's own 6.25e-5 (the second
    # stage starts from a tuned model, so it needs no scaled-up rate). Empty: none.
    after_mle_learning_rates: tuple[float, ...] = (1e-4, 6.25e-5)
    # A control for the last of them: the same second stage, every update MLE.
    after_mle_control: bool = True
    sequence_ul_alpha: float = 1.0  # the paper's
    sequence_ul_prob: float = 0.5  # the paper's
    sequence_ul_prefixes: int = 8
    prefix_len: int = 50  # the paper's
    continuation_len: int = 60  # the paper's 100, shortened (CPU time)

    def mle_budget(self, model_path: str, seed: int) -> quality.Budget:
        return quality.Budget(
            model_path=model_path,
            model_overrides="",
            max_body_len=self.max_body_len,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            num_warmup_steps=self.num_warmup_steps,
            max_steps=self.max_steps,
            seed=seed,
        )

    def fine_tune(self, learning_rate: float | None = None) -> FineTune:
        return FineTune(
            max_steps=self.max_steps,
            learning_rate=self.learning_rate if learning_rate is None else learning_rate,
            num_warmup_steps=self.num_warmup_steps,
            num_cycles=1,  # as the MLE run: cosine decay to 0 once
            prefix_len=self.prefix_len,
            continuation_len=self.continuation_len,
            sequence_ul_prob=self.sequence_ul_prob,
            sequence_ul_alpha=self.sequence_ul_alpha,
            sequence_ul_prefixes=self.sequence_ul_prefixes,
            log_every_n_steps=1,
        )


@dataclass(frozen=True)
class FineTune(quality.FineTune):
    """quality.FineTune without its validation passes: the MLE run (a Budget) has none
    either within its budget, and fst-eval measures perplexity afterwards."""

    val_check_interval: float = 1.0  # once per epoch: never within the budget


SMOKE_PLAN = Plan(
    max_steps=4,
    batch_size=4,
    max_body_len=64,
    learning_rate=1e-3,
    num_warmup_steps=1,
    sequence_ul_prefixes=4,
    prefix_len=16,
    continuation_len=16,
    after_mle_learning_rates=(1e-3,),
    after_mle_control=False,
)
SMOKE_MODEL = "llama-tiny"  # fst-train's tiny random Llama preset (BPE trained on the corpus)


# ---- runs ----------------------------------------------------------------------------------


def pretrained_checkpoint(
    model_path: str, plan: Plan, work: Path, env: dict[str, str], reuse: bool
) -> dict[str, Any]:
    """An fst-train checkpoint of the untouched pretrained weights: one update at the
    warmup's learning rate 0 (AdamW's step and weight decay are both scaled by it)."""
    budget = dataclasses.replace(
        plan.mle_budget(model_path, seed=0), max_steps=1, num_warmup_steps=1
    )
    return quality.train(PRETRAINED, budget, work, env, reuse)


@dataclass(frozen=True)
class _Pretrained(quality.Run):
    @property
    def slug(self) -> str:  # quality.Run's would be "mle"
        return "pretrained"


PRETRAINED = _Pretrained("pretrained", None)


def weights_unchanged(model_path: str, checkpoint: str) -> float:
    """Largest |difference| between the checkpoint's weights and the pretrained model's
    (the rows of the tokens fst adds to the vocabulary excepted)."""
    import torch

    from fst.training.checkpoint import load_checkpoint
    from fst.training.model import load_pretrained

    tuned = load_checkpoint(checkpoint).model.state_dict()
    original = load_pretrained(model_path, {}).state_dict()
    worst = 0.0
    for name, value in original.items():
        other = tuned[name][tuple(slice(0, n) for n in value.shape)]
        worst = max(worst, float(torch.max(torch.abs(other - value))))
    return worst


def fine_tune_runs(
    model_path: str,
    plan: Plan,
    seed: int,
    work: Path,
    env: dict[str, str],
    eval_flags: list[str],
    reuse: bool,
) -> Iterator[dict[str, Any]]:
    """MLE, then each sequence-level recipe, from the pretrained model; each evaluated at its
    last checkpoint, and yielded as soon as it is (so a report can be written)."""
    budget = plan.mle_budget(model_path, seed)

    def evaluated(run: quality.Run, record: dict[str, Any]) -> dict[str, Any]:
        results = quality.evaluate(run, record["checkpoint"], work, env, eval_flags, reuse)
        control = {"control": True} if isinstance(run, _AfterMLE) and not run.sequence else {}
        return {"name": run.name, "seed": seed, **control, **record, "results": results}

    mle = quality.Run("MLE fine-tune", None)
    mle_record = quality.train(mle, budget, work, env, reuse)
    yield evaluated(mle, mle_record)
    later: list[tuple[quality.Run, quality.Budget, tuple[FineTune, str] | None]] = []
    for alpha in plan.unlikelihood_alphas:
        name = f"token-UL (α={alpha:g}) + seq-UL fine-tune" if alpha else "MLE + seq-UL fine-tune"
        run = quality.Run(name, alpha or None, sequence=True)
        later.append((run, budget, (plan.fine_tune(), model_path)))
    for rate in plan.after_mle_learning_rates:
        fine_tune = (plan.fine_tune(rate), mle_record["checkpoint"])
        later.append((_after_mle(plan, rate, sequence=True), budget, fine_tune))
    if plan.after_mle_control:
        # The same second stage with MLE in every update: what the extra updates alone do.
        rate = plan.after_mle_learning_rates[-1]
        again = dataclasses.replace(budget, model_path=mle_record["checkpoint"], learning_rate=rate)
        later.append((_after_mle(plan, rate, sequence=False), again, None))
    for run, run_budget, fine_tune in later:
        yield evaluated(run, quality.train(run, run_budget, work, env, reuse, fine_tune))


def _after_mle(plan: Plan, rate: float, sequence: bool) -> _AfterMLE:
    """A second stage from the MLE fine-tune: MLE + seq-UL, or MLE alone (the control)."""
    own = rate != plan.learning_rate
    stage = "MLE + seq-UL fine-tune" if sequence else "MLE fine-tune"
    name = f"MLE fine-tune, then {stage}" + (f" at lr {rate:g}" if own else "")
    return _AfterMLE(name, None, sequence=sequence, rate=rate if own else None)


@dataclass(frozen=True)
class _AfterMLE(quality.Run):
    rate: float | None = None  # its learning rate when not the plan's

    @property
    def slug(self) -> str:  # apart from the MLE + seq-UL run from the pretrained weights
        return "mle-then-" + super().slug + ("" if self.rate is None else f"-lr{self.rate:g}")


# ---- report --------------------------------------------------------------------------------


def compare(mle: dict[str, Any], ul: dict[str, Any]) -> dict[str, Any]:
    ppl = ul["token_level"]["perplexity"] / mle["token_level"]["perplexity"] - 1
    base = mle["sequence_level"]["greedy"]["seq_rep_4"]
    new = ul["sequence_level"]["greedy"]["seq_rep_4"]
    ratio = new / base if base else None
    met = ratio is not None and ratio <= SEQ_REP_RATIO_GOAL and ppl <= PPL_GOAL
    return {"perplexity_relative_change": ppl, "seq_rep_4_greedy_ratio": ratio, "goal_met": met}


def markdown(report: dict[str, Any]) -> str:
    plan, runs = report["plan"], report["runs"]
    first = runs[0]["results"]
    partial = "" if report["complete"] else " — PARTIAL (not every run finished)"
    smoke = " — SMOKE RUN" if report["smoke"] else ""
    lines = [
        f"# Unlikelihood fine-tuning of a pretrained model: {report['model_name']}{partial}{smoke}",
        "",
        f"Model: `{report['model_path']}` ({first['source'].get('num_parameters', 0) / 1e6:.1f}M "
        "parameters, fp32 copies of the file's weights), fine-tuned on `nietzsche/train.documents`"
        f" with {plan['max_steps']} updates of {plan['batch_size']} × {plan['max_body_len']}-token "
        f"chunks, AdamW lr {plan['learning_rate']} ({plan['num_warmup_steps']} warmup steps, "
        f"cosine to 0), weight decay {plan['weight_decay']}. **MLE**: every update MLE. "
        f"**… + seq-UL**: each update sequence-level with probability "
        f"{plan['sequence_ul_prob']} ({plan['sequence_ul_prefixes']} prefixes of "
        f"{plan['prefix_len']} tokens from the batch, greedy {plan['continuation_len']}-token "
        f"continuations, tokens of repeated 4-grams penalised, weight "
        f"{plan['sequence_ul_alpha']}), else the token-level update: MLE + token UL (α as named) "
        "or MLE. "
        "**pretrained**: the weights as loaded (one update at learning rate 0, so that it is "
        f"encoded exactly as the fine-tunes; max |Δw| = {report.get('pretrained_max_abs_diff')}).",
        "",
        f"Evaluated by `fst-eval` on `nietzsche/valid.documents`: perplexity and next-token "
        f"acc/rep/wrep/uniq over all {first['token_level']['num_tokens']:,} scored tokens "
        f"(128-token chunks); greedy seq-rep-4 of {first['num_prefixes']} evenly spaced "
        f"{first['protocol']['prefix_len']}-token prefixes continued for "
        f"{first['protocol']['continuation_len']} tokens (EOS masked).",
        "",
        "| model | seed | ppl | Δ ppl vs MLE | acc | rep | wrep | uniq | seq-rep-4 greedy | "
        "ratio vs MLE | goal (≤ 0.3×, ≤ +10% ppl) | train wall / CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        t = r["results"]["token_level"]
        greedy = r["results"]["sequence_level"]["greedy"]["seq_rep_4"]
        c = r.get("comparison")
        if c:  # a sequence-level fine-tune, against its seed's MLE fine-tune
            dppl, ratio = c["perplexity_relative_change"], c["seq_rep_4_greedy_ratio"]
        dppl_cell = quality._pct(dppl) if c else "baseline" if r["seed"] is not None else "–"
        ratio_cell = ("–" if ratio is None else f"{ratio:.2f}×") if c else "–"
        goal = ("**met**" if c["goal_met"] else "not met") if c else "–"
        if r.get("control"):
            goal = "(control: no seq-UL)"
        train = (
            f"{r['train_seconds'] / 60:.1f} / {r['train_cpu_seconds'] / 60:.1f} min"
            if r["name"] != "pretrained"
            else "–"
        )
        cells = [
            r["name"],
            "–" if r["seed"] is None else str(r["seed"]),
            f"{t['perplexity']:.2f}",
            dppl_cell,
            f"{t['acc']:.3f}",
            f"{t['rep']:.3f}",
            f"{t['wrep']:.3f}",
            f"{t['uniq']:,}",
            f"{greedy:.3f}",
            ratio_cell,
            goal,
            train,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    compared = [r for r in runs if r.get("comparison") and not r.get("control")]
    met = [r for r in compared if r["comparison"]["goal_met"]]
    lines += [
        "",
        f"**Goal** (greedy seq-rep-4 ≤ {SEQ_REP_RATIO_GOAL}× the MLE fine-tune's at ≤ "
        f"+{PPL_GOAL:.0%} perplexity): met by {len(met)} of {len(compared)} sequence-level "
        "fine-tunes.",
    ]
    human = first["sequence_level"].get("human")
    if human:
        lines += [
            "",
            f"Human text (the true continuations that have "
            f"{first['protocol']['continuation_len']} tokens): seq-rep-4 "
            f"{human['seq_rep_4']:.3f}; next-token human rep "
            f"{first['token_level']['human_rep']:.3f}, human uniq "
            f"{first['token_level']['human_uniq']:,}.",
        ]
    lines += ["", *PAPER_LINES, "", "## Greedy continuations", ""]
    shown = [r for r in runs if r["seed"] in (None, report["seeds"][0])]
    for index in range(min(2, len(first["greedy_examples"]))):
        example = first["greedy_examples"][index]
        lines += [f"Prefix {index + 1}: {quality._quote(example['prefix'])}", ""]
        for r in shown:
            text = r["results"]["greedy_examples"][index]["continuation"]
            lines += [f"- **{r['name']}**: {quality._quote(text)}", ""]
    lines += [
        f"Machine: {report['machine']['cpu'].get('model', '?')}, "
        f"{report['machine']['cpu'].get('logical_cores', '?')} logical CPUs shared with other "
        f"users; load average at start {report['load_average_start']} and at the last write "
        f"{report['machine']['load_average']}; {report['threads']} torch thread(s) per "
        f"subprocess, {report.get('jobs', 1)} run(s) at a time. Wall time so far {report['total_seconds'] / 60:.1f} min.",
        "",
        f"Command: `{report['command']}`",
        "",
    ]
    if report.get("note"):
        lines += [report["note"], ""]
    return "\n".join(lines)


# ---- main ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--gguf", type=Path, help="the pretrained model (a .gguf file)")
    p.add_argument("--smoke", action="store_true", help="tiny random Llama, 4 updates")
    p.add_argument("--seeds", default="42,7", help="comma-separated fine-tuning seeds")
    p.add_argument("--max_steps", type=int, default=None, help="updates per fine-tune")
    p.add_argument(
        "--token_alphas",
        default=None,
        help="comma-separated token-UL weights of the sequence-level fine-tunes "
        "(0: MLE + sequence UL; default 1.0,0)",
    )
    p.add_argument("--max_prefixes", type=int, default=None, help="default 64 (smoke 8)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of every subprocess")
    p.add_argument("--jobs", type=int, default=1, help="seeds fine-tuned side by side (default 1)")
    p.add_argument("--work_dir", type=Path, default=None, help=f"default {DEFAULT_WORK}[-smoke]")
    p.add_argument("--out", type=Path, default=None, help="default benchmarks/results")
    p.add_argument("--reuse", action="store_true", help="keep runs trained with the same command")
    p.add_argument("--note", default="", help="a paragraph added to the Markdown")
    p.add_argument(
        "--render", type=Path, metavar="JSON", help="only rewrite the Markdown of an earlier run"
    )
    args = p.parse_args(argv)
    if args.render:
        report = json.loads(args.render.read_text())
        common.write_atomic(args.render.with_suffix(".md"), markdown(report))
        return 0
    if not args.smoke and (args.gguf is None or not args.gguf.is_file()):
        p.error("--gguf FILE is required (or --smoke)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    plan = SMOKE_PLAN if args.smoke else Plan()
    if args.max_steps:
        plan = dataclasses.replace(plan, max_steps=args.max_steps)
    if args.token_alphas:
        alphas = tuple(float(a) for a in args.token_alphas.split(",") if a.strip())
        plan = dataclasses.replace(plan, unlikelihood_alphas=alphas)
    model_path = SMOKE_MODEL if args.smoke else str(args.gguf.resolve())
    model_name = "llama-tiny" if args.smoke else args.gguf.name.split(".")[0].lower()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    work = args.work_dir or DEFAULT_WORK.with_name(
        DEFAULT_WORK.name + ("-smoke" if args.smoke else "")
    )
    out = args.out or (work if args.smoke else quality.DEFAULT_OUT)
    max_prefixes = args.max_prefixes or (8 if args.smoke else 64)
    eval_flags = [
        "--decodings",
        "greedy",
        "--max_prefixes",
        str(max_prefixes),
        "--threads",
        str(args.threads),
    ]
    if args.smoke:
        eval_flags += ["--prefix_len", "16", "--continuation_len", "16"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    stem = f"unlikelihood-finetune-{model_name}"

    started, load_start = time.perf_counter(), common.load_average()
    report: dict[str, Any] = {
        "schema_version": 1,
        "smoke": args.smoke,
        "complete": False,
        "model_path": model_path,
        "model_name": model_name,
        "plan": asdict(plan),
        "seeds": seeds,
        "eval_flags": eval_flags,
        "threads": args.threads,
        "jobs": args.jobs,
        "goal": {
            "seq_rep_4_greedy_ratio_max": SEQ_REP_RATIO_GOAL,
            "perplexity_relative_change_max": PPL_GOAL,
        },
        "note": args.note,
        "command": "python -m benchmarks.quality.unlikelihood_pretrained "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "load_average_start": load_start,
        "runs": [],
    }

    def write() -> None:
        report["machine"] = common.machine_description()
        report["total_seconds"] = round(time.perf_counter() - started, 1)
        text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
        common.write_atomic(out / f"{stem}.json", text)
        common.write_atomic(out / f"{stem}.md", markdown(report))

    lock = threading.Lock()

    def add(run: dict[str, Any]) -> None:
        """Record a finished run (pretrained first, then by seed) and rewrite the report."""
        with lock:
            report["runs"].append(run)
            report["runs"].sort(key=lambda r: -1 if r["seed"] is None else seeds.index(r["seed"]))
            write()

    def pretrained() -> None:
        base = pretrained_checkpoint(model_path, plan, work / "pretrained", env, args.reuse)
        if not args.smoke:
            report["pretrained_max_abs_diff"] = weights_unchanged(model_path, base["checkpoint"])
        results = quality.evaluate(
            PRETRAINED, base["checkpoint"], work / "pretrained", env, eval_flags, args.reuse
        )
        add({"name": "pretrained", "seed": None, **base, "results": results})

    def one_seed(seed: int) -> None:
        seed_flags = [*eval_flags, "--seed", str(seed)]
        mle = None
        for run in fine_tune_runs(
            model_path, plan, seed, work / f"seed{seed}", env, seed_flags, args.reuse
        ):
            if mle is None:
                mle = run
            else:
                run["comparison"] = compare(mle["results"], run["results"])
            add(run)

    quality._SLOTS = threading.Semaphore(args.jobs)  # subprocesses at a time
    with ThreadPoolExecutor(max_workers=len(seeds) + 1) as pool:
        tasks = [pool.submit(pretrained), *(pool.submit(one_seed, seed) for seed in seeds)]
        for task in tasks:
            task.result()
    report["complete"] = True
    write()
    print(markdown(report))
    print(f"Wrote {out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
