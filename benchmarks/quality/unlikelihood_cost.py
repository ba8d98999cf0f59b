"""Training throughput (tokens/s) with and without the unlikelihood loss.

    python -m benchmarks.quality.unlikelihood_cost           # tiny and gpt2-6l (distilgpt2-sized) presets
    python -m benchmarks.quality.unlikelihood_cost --quick   # tiny only, short: a smoke run

What is timed is the real training step: a Lightning `Trainer` fits our `DocumentLM`
(forward, `fst.training.loss.language_model_losses`, backward, AdamW + scheduler step, logging) on
batches from the Nietzsche corpus encoded and collated exactly as `fst-train` does (document
format, `Collate` padding). A callback reads the clock at the start and end of each batch;
the first `--warmup` steps of each fit are dropped. Tokens are the non-padding tokens.

Runs alternate loss variants and presets (LM, LM+UL, LM, LM+UL, ...) in one process, every
fit starting from the same initial weights, so machine drift hits both variants alike; the
UL overhead is the ratio of the two median throughputs. Writes
benchmarks/results/unlikelihood-cost-training-step-gpt2.{json,md} (the last run, on the earlier
AMD EPYC VM: unlikelihood-cost-training-step-gpt2-epyc.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import common

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BPE = REPO / "fst" / "core" / "assets" / "gpt2_bpe"
DEFAULT_CORPUS = REPO / "data" / "documents" / "nietzsche" / "train.documents"
DEFAULT_OUT = REPO / "benchmarks" / "results"
UL_GOAL = 1.30  # LM+UL step time may cost at most 30% more than LM alone

log = logging.getLogger("training")


@dataclass(frozen=True)
class Setup:
    """One preset's workload: small enough for a 2-core CPU, long enough to be steady."""

    preset: str
    batch_size: int
    max_body_len: int
    steps: int  # measured steps per fit
    warmup: int = 2  # dropped steps at the start of each fit


SETUPS = {
    # fst-train's defaults (batch 16, bodies of 128 tokens) on the test-sized model.
    "tiny": Setup("tiny", batch_size=16, max_body_len=128, steps=20),
    # distilgpt2-sized with short sequences: a step takes seconds on a small CPU.
    "gpt2-6l": Setup("gpt2-6l", batch_size=4, max_body_len=128, steps=4),
    "gpt2-small": Setup("gpt2-small", batch_size=4, max_body_len=128, steps=3),
}


def make_batches(setup: Setup, bpe_dir: Path, corpus: Path, count: int) -> tuple[Any, list]:
    """The tokenizer and `count` batches encoded and collated as fst-train does."""
    from fst.core.documents import read_documents
    from fst.core.tokenization import DocumentTokenizer
    from fst.training.data import Collate

    tokenizer = DocumentTokenizer.from_gpt2_files(
        bpe_dir / "vocab.json", bpe_dir / "merges.txt", max_body_len=setup.max_body_len
    )
    encodings = tokenizer.encode_documents(read_documents(corpus))
    need = count * setup.batch_size
    if len(encodings) < need:
        raise ValueError(f"{corpus}: {len(encodings)} sequences, {need} needed")
    collate = Collate(tokenizer.pad_token_id)
    size = setup.batch_size
    return tokenizer, [collate(encodings[i * size : (i + 1) * size]) for i in range(count)]


def step_clock() -> Any:
    """A Lightning callback timing each training batch (forward, loss, backward, step)."""
    import pytorch_lightning as pl

    class StepClock(pl.Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.tokens: list[int] = []
            self._start = 0.0

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            self._start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            self.seconds.append(time.perf_counter() - self._start)
            self.tokens.append(int(batch["attention_mask"].sum()))

    return StepClock()


def fit_once(setup: Setup, tokenizer: Any, batches: list, state: dict, alpha: float | None) -> dict:
    """One short fit from the initial weights; returns measured tokens/s and step times."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from fst.training.lightning_module import DocumentLM, OptimizerSettings
    from fst.training.model import build_model

    model = build_model(setup.preset, tokenizer.vocab_size, tokenizer.eos_token_id)
    model.load_state_dict(state)
    module = DocumentLM(model, tokenizer, OptimizerSettings(), unlikelihood_alpha=alpha)
    clock = step_clock()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=setup.warmup + setup.steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    loader = DataLoader(batches, batch_size=None, shuffle=False)  # batches are pre-collated
    trainer.fit(module, train_dataloaders=loader)
    seconds, tokens = clock.seconds[setup.warmup :], clock.tokens[setup.warmup :]
    return {
        "tokens_per_s": sum(tokens) / sum(seconds),
        "step_s": common.summarize(seconds),
        "tokens_per_step": sum(tokens) / len(tokens),
    }


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from fst.training.model import build_model

    torch.set_num_threads(args.threads)
    prepared = {}
    for name in args.presets:
        setup = SETUPS[name]
        if args.quick:
            setup = Setup(name, batch_size=4, max_body_len=64, steps=3, warmup=1)
        tokenizer, batches = make_batches(
            setup, args.bpe_dir, args.corpus, setup.warmup + setup.steps
        )
        torch.manual_seed(0)
        model = build_model(name, tokenizer.vocab_size, tokenizer.eos_token_id)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        prepared[name] = (setup, tokenizer, batches, state, model.num_parameters())
        del model

    runs: dict[str, dict[str, list[dict]]] = {n: {"lm": [], "lm+ul": []} for n in args.presets}
    for r in range(args.repeats):
        for name, (setup, tokenizer, batches, state, _) in prepared.items():
            # Alternate which variant goes first, so neither always follows the other.
            order = [("lm", None), ("lm+ul", args.alpha)]
            for variant, alpha in order if r % 2 == 0 else order[::-1]:
                log.info("repeat %d/%d: %s %s", r + 1, args.repeats, name, variant)
                runs[name][variant].append(fit_once(setup, tokenizer, batches, state, alpha))

    results = {}
    for name, (setup, _, _, _, params) in prepared.items():
        lm = common.summarize(x["tokens_per_s"] for x in runs[name]["lm"])
        ul = common.summarize(x["tokens_per_s"] for x in runs[name]["lm+ul"])
        overhead = lm["median"] / ul["median"]  # step-time ratio: how much longer UL takes
        results[name] = {
            "setup": asdict(setup),
            "params": params,
            "tokens_per_s": {"lm": lm, "lm+ul": ul},
            "ul_overhead": overhead,
            "goal_met": overhead <= UL_GOAL,
            "runs": runs[name],
        }
    return results


def render_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Training throughput: LM loss vs LM + unlikelihood loss",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {m['cpu']['model']}, {m['cpu']['usable_cores']} cores, {report['threads']} "
        f"torch threads; load average {m['load_average']} at start, "
        f"{report['load_average_end']} at end.  ",
        "Timed: the real Lightning training step of `DocumentLM` (forward, loss, backward, "
        "AdamW step), on fst-train's batches; variants alternate in one process, "
        f"{report['repeats']} repeats, medians (min–max). UL weight α = {report['alpha']}.",
        "",
        "| preset | params | batch × body tokens | tokens/s LM | tokens/s LM+UL "
        f"| UL overhead (goal ≤ {UL_GOAL}×) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in report["presets"].items():
        lm, ul = r["tokens_per_s"]["lm"], r["tokens_per_s"]["lm+ul"]
        met = "" if r["goal_met"] else " **(missed)**"
        lines.append(
            f"| {name} | {r['params'] / 1e6:.1f} M | {r['setup']['batch_size']} × "
            f"{r['setup']['max_body_len']} | {lm['median']:.0f} ({lm['min']:.0f}–{lm['max']:.0f}) "
            f"| {ul['median']:.0f} ({ul['min']:.0f}–{ul['max']:.0f}) "
            f"| {r['ul_overhead']:.2f}×{met} |"
        )
    lines += ["", "The machine is shared and noisy: compare the ratios, not absolute figures."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}",
        description="Training tokens/s with and without the unlikelihood loss.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--presets", default="tiny,gpt2-6l", help=f"from {', '.join(SETUPS)}")
    p.add_argument("--repeats", type=int, default=3, help="interleaved fits per variant")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--alpha", type=float, default=1.0, help="unlikelihood weight (> 0)")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: tiny, 1 repeat, 3 steps of 4 × 64 tokens"
    )
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help="where results go")
    p.add_argument("--bpe-dir", type=Path, default=DEFAULT_BPE, help="GPT-2 vocab.json/merges.txt")
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="JSON-lines documents")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.presets = "tiny" if args.presets == p.get_default("presets") else args.presets
        args.repeats = 1 if args.repeats == p.get_default("repeats") else args.repeats
    args.presets = [x.strip() for x in args.presets.split(",") if x.strip()]
    for name in args.presets:
        if name not in SETUPS:
            p.error(f"--presets: unknown preset {name!r} (choose from {', '.join(SETUPS)})")
    if args.repeats < 1 or args.threads < 1:
        p.error("--repeats and --threads must be >= 1")
    if args.alpha <= 0:
        p.error(f"--alpha must be > 0, got {args.alpha}")
    if not (args.bpe_dir / "vocab.json").is_file():
        p.error(f"--bpe-dir {args.bpe_dir}: no vocab.json there")
    if not args.corpus.is_file():
        p.error(f"--corpus {args.corpus}: no such file")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        machine = common.machine_description()
        presets = benchmark(args)
    except Exception as e:  # one clear line; the traceback only with -v
        log.debug("failed", exc_info=True)
        print(f"{__spec__.name}: {e}", file=sys.stderr)
        return 1
    report = {
        "schema_version": 1,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(
            [
                "python -m benchmarks.quality.unlikelihood_cost",
                *(argv if argv is not None else sys.argv[1:]),
            ]
        ),
        "machine": machine,
        "load_average_end": common.load_average(),
        "threads": args.threads,
        "repeats": args.repeats,
        "alpha": args.alpha,
        "presets": presets,
    }
    stem = args.out_dir / "unlikelihood-cost-training-step-gpt2"
    common.write_atomic(stem.with_suffix(".json"), json.dumps(report, indent=1) + "\n")
    common.write_atomic(stem.with_suffix(".md"), render_markdown(report))
    log.info("wrote %s", stem.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
