"""Shared KV buffers vs concatenated KV cache: decode cost as the cache grows.

    python -m benchmarks.latency.kv_layout                                     # GPT-2 small, fp32 and int8, ~6 min
    python -m benchmarks.latency.kv_layout --model tiny --rounds 2 --steps 8   # smoke run

Exports GPT-2 (random weights, built from its config) twice per precision with
`--optimize`: `--kv_layout concat` (MultiHeadAttention; every step copies the past into a
present one position longer) and `--kv_layout shared` (GroupQueryAttention writing the new
position into a buffer bound as both past and present). Both bundles run in this process
through fst's stepper (prefill a prompt of `past` random tokens, then `--steps` decode
steps, batch 1, no sampling: the model call only), interleaved round by round; medians and
shared/concat ratios go to benchmarks/results/kv-layout-decode-<model>-fst.{json,md} (the last
run, on the earlier AMD EPYC VM: kv-layout-decode-gpt2small-fst-epyc.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import common
from benchmarks.latency.models import (
    DEFAULT_BPE,
    DEFAULT_CACHE,
    DEFAULT_OUT,
    MODELS,
    build_hf_folder,
)

log = logging.getLogger("kv_layout")
LAYOUTS = ("concat", "shared")


def export(hf: Path, folder: Path, quantize: str | None, layout: str, rebuild: bool) -> Path:
    from fst.core.bundle import BundleManifest
    from fst.export.exporter import export_bundle

    marker = folder / "fst_bundle.json"
    if rebuild or not marker.is_file() or BundleManifest.load(folder).graph.kv_layout != layout:
        log.info("exporting %s", folder)
        export_bundle(
            folder,
            model_path=str(hf),
            optimize=True,
            quantize=quantize,
            kv_layout=layout,
            force=True,
            progress=False,
        )
    return folder


def decode_ms(generator, past: int, steps: int, rng: np.random.Generator) -> float:
    """Mean ms per decode step after prefilling `past` random tokens."""
    stepper = generator._stepper  # the model call only: no sampling, no detokenising
    vocab = generator.manifest.architecture.vocab_size
    _, cache = stepper.prefill([rng.integers(0, vocab, past).tolist()], 0, reserve=steps)
    tokens = rng.integers(0, vocab, (steps, 1))
    start = time.perf_counter()
    for token in tokens:
        stepper.decode(cache, token)
    return (time.perf_counter() - start) / steps * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__.splitlines()[0]
    )
    p.add_argument("--model", default="gpt2-small", choices=sorted(MODELS))
    p.add_argument("--past", default="32,256,960", help="past lengths (comma-separated)")
    p.add_argument("--steps", type=int, default=32, help="decode steps timed per measurement")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    p.add_argument("--rebuild", action="store_true", help="re-export the bundles")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from fst.runtime import Generator

    pasts = [int(x) for x in args.past.split(",")]
    hf = build_hf_folder(args.model, args.cache_dir, DEFAULT_BPE)
    results: dict = {}
    for variant, quantize in (("fp32", None), ("int8", "int8")):
        generators = {}
        for layout in LAYOUTS:
            folder = args.cache_dir / args.model / f"kv-{variant}-{layout}"
            bundle = export(hf, folder, quantize, layout, args.rebuild)
            generators[layout] = Generator.from_bundle(
                bundle, threads=args.threads, huge_pages=True
            )
        times = {(layout, n): [] for layout in LAYOUTS for n in pasts}
        rng = np.random.default_rng(0)
        for r in range(args.rounds):
            for n in pasts:
                for layout in LAYOUTS if r % 2 == 0 else LAYOUTS[::-1]:
                    times[layout, n].append(decode_ms(generators[layout], n, args.steps, rng))
            log.info("%s round %d/%d done", variant, r + 1, args.rounds)
        results[variant] = {
            str(n): {layout: common.summarize(times[layout, n]) for layout in LAYOUTS}
            | {
                "ratio": common.ratio(
                    common.median(times["shared", n]), common.median(times["concat", n])
                )
            }
            for n in pasts
        }
    report = {
        "command": "python -m benchmarks.latency.kv_layout " + " ".join(argv or sys.argv[1:]),
        "settings": vars(args) | {"cache_dir": str(args.cache_dir), "out_dir": None},
        "machine": common.machine_description(),
        "results": results,
    }
    text = render(report, pasts)
    common.write_report(
        args.out_dir, f"kv-layout-decode-{args.model.replace('-', '')}-fst", report, text
    )
    print(text)
    return 0


def render(report: dict, pasts: list[int]) -> str:
    s, m = report["settings"], report["machine"]
    lines = [
        "# KV cache layout: shared buffers vs concatenation",
        "",
        f"Command: `{report['command'].strip()}`  ",
        f"Model: {s['model']} (random weights), `--optimize` bundles; batch 1, decode ms per "
        f"step (model call only) after a prompt of `past` tokens, {s['steps']} steps per "
        f"measurement, {s['rounds']} interleaved rounds, {s['threads']} threads; medians "
        "(min–max).  ",
        f"Machine: {m.get('cpu', {}).get('model', '?')}, load average {m.get('load_average')}.",
        "",
        "| bundle | past | concat ms | shared ms | shared / concat |",
        "|---|---:|---|---|---:|",
    ]
    for variant, rows in report["results"].items():
        for n in pasts:
            row = rows[str(n)]
            cells = [
                f"{common.fmt(row[k]['median'], 2)} ({common.fmt(row[k]['min'], 2)}–"
                f"{common.fmt(row[k]['max'], 2)})"
                for k in LAYOUTS
            ]
            lines.append(f"| {variant} | {n} | {cells[0]} | {cells[1]} | {row['ratio']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
