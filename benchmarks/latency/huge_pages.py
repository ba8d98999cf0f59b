"""Weights in huge pages or in 4 KiB pages: decode cost of the same bundle.

    python -m benchmarks.latency.huge_pages                                     # GPT-2 small, fp32 and int8, ~5 min
    python -m benchmarks.latency.huge_pages --model tiny --rounds 2 --steps 8   # smoke run

fst's runtime moves a CPU session's weights into 2 MiB pages once it is built
(`fst.runtime.huge_pages`; `Generator.from_bundle(..., huge_pages=True)`, as fst-generate
and fst-serve do). The move changes the process's pages, so each side runs in its own
worker process, the two alternating round by round (A B B A ...). A worker loads the
`--optimize` bundle (the one kv_layout.py exports, shared KV layout), prefills `past`
random tokens and times `--steps` decode steps (batch 1, the model call only). Medians
and huge/4k ratios go to benchmarks/results/huge-pages-decode-<model>-fst.{json,md} (the last
run, on the earlier AMD EPYC VM: huge-pages-decode-gpt2small-fst-epyc.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks import common
from benchmarks.latency.kv_layout import decode_ms, export
from benchmarks.latency.models import (
    DEFAULT_BPE,
    DEFAULT_CACHE,
    DEFAULT_OUT,
    MODELS,
    build_hf_folder,
)

log = logging.getLogger("huge_pages")
SIDES = ("4k", "huge")


def worker(bundle: str, huge: bool, past: int, steps: int, threads: int) -> dict:
    """Decode ms per step, and the process's memory in huge pages after loading."""
    from fst.runtime import Generator

    generator = Generator.from_bundle(bundle, threads=threads, huge_pages=huge)
    rng = np.random.default_rng(0)
    decode_ms(generator, past, 4, rng)  # warm-up
    return {
        "decode_ms": decode_ms(generator, past, steps, rng),
        "anon_huge_mb": common.proc_mb("/proc/self/smaps_rollup", "AnonHugePages"),
    }


def run_worker(bundle: Path, side: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, "-m", __spec__.name, "--worker", str(bundle), "--side", side]
    cmd += ["--past", str(args.past), "--steps", str(args.steps), "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=common.REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0]
    )
    p.add_argument("--model", default="gpt2-small", choices=sorted(MODELS))
    p.add_argument("--past", type=int, default=32, help="prompt tokens before decoding")
    p.add_argument("--steps", type=int, default=100, help="decode steps timed per worker")
    p.add_argument("--variants", default="fp32,int8", help="bundles to compare (fp32, int8)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    p.add_argument("--rebuild", action="store_true", help="re-export the bundles")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        report = worker(args.worker, args.side == "huge", args.past, args.steps, args.threads)
        print(json.dumps(report))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    hf = build_hf_folder(args.model, args.cache_dir, DEFAULT_BPE)
    results: dict = {}
    for variant in args.variants.split(","):
        quantize = {"fp32": None, "int8": "int8"}[variant]
        bundle = export(
            hf,
            args.cache_dir / args.model / f"kv-{variant}-shared",
            quantize,
            "shared",
            args.rebuild,
        )
        runs: dict[str, list[dict]] = {side: [] for side in SIDES}
        for r in range(args.rounds):
            for side in SIDES if r % 2 == 0 else SIDES[::-1]:
                runs[side].append(run_worker(bundle, side, args))
            log.info("%s round %d/%d done", variant, r + 1, args.rounds)
        times = {side: [x["decode_ms"] for x in runs[side]] for side in SIDES}
        results[variant] = {side: common.summarize(times[side]) for side in SIDES} | {
            "ratio": common.ratio(common.median(times["huge"]), common.median(times["4k"])),
            "anon_huge_mb": {side: runs[side][-1]["anon_huge_mb"] for side in SIDES},
            "values_ms": times,
        }
    report = {
        "command": "python -m benchmarks.latency.huge_pages " + " ".join(argv or sys.argv[1:]),
        "settings": vars(args) | {"cache_dir": str(args.cache_dir), "out_dir": None},
        "machine": common.machine_description(),
        "results": results,
    }
    text = render(report)
    common.write_report(
        args.out_dir, f"huge-pages-decode-{args.model.replace('-', '')}-fst", report, text
    )
    print(text)
    return 0


def render(report: dict) -> str:
    s, m = report["settings"], report["machine"]
    lines = [
        "# Weights in huge pages vs 4 KiB pages",
        "",
        f"Command: `{report['command'].strip()}`  ",
        f"Model: {s['model']} (random weights), `--optimize` bundles (shared KV layout); batch "
        f"1, decode ms per step (model call only) after a {s['past']}-token prompt, "
        f"{s['steps']} steps per worker process, {s['rounds']} alternating rounds, "
        f"{s['threads']} threads; medians (min–max).  ",
        f"Machine: {m.get('cpu', {}).get('model', '?')}, load average {m.get('load_average')}.",
        "",
        "| bundle | 4 KiB pages ms | huge pages ms | huge / 4k | MB in huge pages (4k / huge) |",
        "|---|---|---|---:|---|",
    ]
    for variant, row in report["results"].items():
        cells = [
            f"{common.fmt(row[k]['median'], 2)} ({common.fmt(row[k]['min'], 2)}–"
            f"{common.fmt(row[k]['max'], 2)})"
            for k in SIDES
        ]
        mb = " / ".join(common.fmt(row["anon_huge_mb"][k], 0) for k in SIDES)
        lines.append(f"| {variant} | {cells[0]} | {cells[1]} | {row['ratio']:.3f} | {mb} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
