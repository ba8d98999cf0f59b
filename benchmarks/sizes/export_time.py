"""The default graph's price and payoff: export time and decode, plain vs optimized.

    python -m benchmarks.sizes.export_time                    # tiny and GPT-2 small, ~5 min
    python -m benchmarks.sizes.export_time --models tiny gpt2 gpt2-large   # ~15 min, 8 GB RAM
    python -m benchmarks.sizes.export_time --models gpt2-large --export-rounds 0 \
        --decode-rounds 9 --out-name export-time-decode-plain-vs-optimized-gpt2large-decode
    python -m benchmarks.sizes.export_time --models tiny --rounds 1 --steps 2   # smoke run

fst-export writes the optimized graph unless told `--no_optimize`. This exports each model
(random weights, built from its config: benchmarks/sizes/bundles.py's sizes and cache) both
ways in one process, interleaved round by round after one untimed export of each (imports,
first-call costs), and times the whole
`export_bundle` call: load, trace, fusions, write and the parity check. Then both bundles
of the last round decode in the same process (batch 1, the model call only, `--steps`
steps after a `--past`-token prompt), interleaved too. Medians and optimized/plain ratios
go to benchmarks/results/export-time-decode-plain-vs-optimized-fst.{json,md}.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import common
from benchmarks.latency.kv_layout import decode_ms
from benchmarks.sizes.bundles import DEFAULT_CACHE, DEFAULT_OUT, SIZES, hf_folder

log = logging.getLogger("export_time")
GRAPHS = {"plain": False, "optimized": True}  # name -> export_bundle's optimize
STEM = "export-time-decode-plain-vs-optimized-fst"  # results/STEM.{json,md}


def export_seconds(hf: Path, folder: Path, optimize: bool) -> float:
    from fst.export.exporter import export_bundle

    start = time.perf_counter()
    export_bundle(folder, model_path=str(hf), optimize=optimize, force=True, progress=False)
    return time.perf_counter() - start


def exported(folder: Path, optimize: bool) -> bool:
    from fst.core.bundle import BundleManifest

    marker = folder / "fst_bundle.json"
    return marker.is_file() and BundleManifest.load(folder).graph.optimized == optimize


def measure(model: str, args: argparse.Namespace) -> dict:
    from fst.runtime import Generator

    hf = hf_folder(model, args.cache_dir)
    folders = {g: args.cache_dir / model / f"export-time-{g}" for g in GRAPHS}
    for graph, optimize in GRAPHS.items():  # untimed: imports and first calls
        if args.export_rounds or not exported(folders[graph], optimize):
            export_seconds(hf, folders[graph], optimize)
    seconds: dict[str, list[float]] = {g: [] for g in GRAPHS}
    for r in range(args.export_rounds):
        for graph in list(GRAPHS) if r % 2 == 0 else list(GRAPHS)[::-1]:
            seconds[graph].append(export_seconds(hf, folders[graph], GRAPHS[graph]))
        log.info("%s export round %d/%d done", model, r + 1, args.export_rounds)
    generators = {
        g: Generator.from_bundle(folders[g], threads=args.threads, huge_pages=True) for g in GRAPHS
    }
    decode: dict[str, list[float]] = {g: [] for g in GRAPHS}
    rng = np.random.default_rng(0)
    for r in range(args.decode_rounds):
        for graph in list(GRAPHS) if r % 2 == 0 else list(GRAPHS)[::-1]:
            decode[graph].append(decode_ms(generators[graph], args.past, args.steps, rng))
    export_s = {g: common.summarize(seconds[g]) if seconds[g] else None for g in GRAPHS}
    decode_s = {g: common.summarize(decode[g]) for g in GRAPHS}
    return {
        "export_s": export_s,
        "decode_ms": decode_s,
        "export_ratio": common.ratio(
            common.median(seconds["optimized"]) if seconds["optimized"] else None,
            common.median(seconds["plain"]) if seconds["plain"] else None,
        ),
        "decode_ratio": common.ratio(decode_s["optimized"]["median"], decode_s["plain"]["median"]),
        "kv_layout": {g: generators[g].manifest.graph.kv_layout for g in GRAPHS},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["tiny", "gpt2"], choices=sorted(SIZES))
    p.add_argument("--rounds", type=int, default=3, help="both kinds of rounds, unless set apart")
    p.add_argument("--export-rounds", type=int, help="timed exports per graph (0: decode only)")
    p.add_argument("--decode-rounds", type=int, help="decode measurements per graph")
    p.add_argument("--out-name", default=STEM, help="results/NAME.{json,md}")
    p.add_argument("--past", type=int, default=32, help="prompt tokens before timed decode")
    p.add_argument("--steps", type=int, default=32, help="decode steps timed per measurement")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    args.export_rounds = args.rounds if args.export_rounds is None else args.export_rounds
    args.decode_rounds = args.rounds if args.decode_rounds is None else args.decode_rounds
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    load_before = common.load_average()
    results = {model: measure(model, args) for model in args.models}
    report = {
        "command": "python -m benchmarks.sizes.export_time " + " ".join(argv or sys.argv[1:]),
        "settings": vars(args) | {"cache_dir": str(args.cache_dir), "out_dir": None},
        "machine": common.machine_description() | {"load_average_at_start": load_before},
        "results": results,
    }
    text = render(report)
    common.write_report(args.out_dir, args.out_name, report, text)
    print(text)
    return 0


def render(report: dict) -> str:
    s, m = report["settings"], report["machine"]

    def cell(stats: dict | None, digits: int) -> str:
        if stats is None:
            return "–"
        return (
            f"{common.fmt(stats['median'], digits)} ({common.fmt(stats['min'], digits)}–"
            f"{common.fmt(stats['max'], digits)})"
        )

    lines = [
        "# Export time and decode: plain vs optimized graph",
        "",
        f"Command: `{report['command'].strip()}`  ",
        f"Random-weight models; each exported plain (`--no_optimize`) and optimized (the "
        f"default) in one process, {s['export_rounds']} interleaved rounds after one untimed "
        "export of each; the whole export (load, trace, fusions, write, parity check). Decode: "
        f"batch 1, model call only, {s['steps']} steps after a {s['past']}-token prompt, "
        f"{s['threads']} threads, {s['decode_rounds']} interleaved rounds. Medians (min–max).  ",
        f"Machine: {m.get('cpu', {}).get('model', '?')}, {m.get('ram_gb')} GB RAM; load "
        f"average {m.get('load_average_at_start')} at start, {m.get('load_average')} at end "
        "(a shared machine).",
        "",
        "| model | plain export s | optimized export s | × | plain decode ms | "
        "optimized decode ms | × | kv layouts |",
        "|---|---|---|---:|---|---|---:|---|",
    ]
    for model, r in report["results"].items():
        lines.append(
            f"| {model} | {cell(r['export_s']['plain'], 2)} | "
            f"{cell(r['export_s']['optimized'], 2)} | {common.fmt(r['export_ratio'], 2)} | "
            f"{cell(r['decode_ms']['plain'], 2)} | {cell(r['decode_ms']['optimized'], 2)} | "
            f"{r['decode_ratio']:.2f} | {r['kv_layout']['plain']} / "
            f"{r['kv_layout']['optimized']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
