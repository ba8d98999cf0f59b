"""Resident memory of fst-serve, to size a container's memory request and limit.

    python -m benchmarks.serving.rss    # GPT-2 small, fp32 and int8
    python -m benchmarks.serving.rss --variants fp32 --long-tokens 128

Starts the real `fst-serve` (harness.py's helpers: the cached random-weight GPT-2 small
bundle of load.py) and reads its /proc status: RSS once /ready answers
(idle), then the peak (VmHWM) after 16 concurrent streamed requests of 64 tokens and after
16 of `--long-tokens` tokens (the KV cache grows with batch × context). Also the seconds
from start to /ready (a startup probe must allow that). Writes
benchmarks/results/serving-rss-fst-gpt2small.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

from benchmarks.latency.models import DEFAULT_BPE, DEFAULT_CACHE, DEFAULT_CORPUS, build_hf_folder
from benchmarks.serving import harness

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "benchmarks" / "results" / "serving-rss-fst-gpt2small"
MODEL = "gpt2-small"


def bundle(variant: str, cache: Path) -> Path:
    """The cached GPT-2 small bundle: fp32 --optimize (serving/load.py's) or int8."""
    if variant == "fp32":
        return harness.prepare_bundle(MODEL, cache, rebuild=False, optimize=True)
    folder = cache / MODEL / "bundle-serving-int8"
    if not (folder / "fst_bundle.json").is_file():
        from fst.export.exporter import export_bundle

        hf = build_hf_folder(MODEL, cache, DEFAULT_BPE)
        export_bundle(folder, model_path=str(hf), optimize=True, quantize="int8", progress=False)
    return folder


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def measure(variant: str, args: argparse.Namespace) -> dict:
    folder = bundle(variant, args.cache)
    port = harness.free_port()
    base = f"http://127.0.0.1:{port}"
    server_args = argparse.Namespace(max_batch_size=16, concurrency=[16], threads=args.threads)
    start = time.monotonic()
    server = harness.start_server(folder, port, "continuous", server_args)
    try:
        harness.wait_ready(base, server)
        ready_s = time.monotonic() - start
        idle = memory_kb(server.pid)
        prompts = harness.make_prompts(args.corpus, 32, 160)
        asyncio.run(harness.run_level(base, prompts, 16, 64))
        short = memory_kb(server.pid)
        asyncio.run(harness.run_level(base, prompts[:16], 16, args.long_tokens))
        long = memory_kb(server.pid)
    finally:
        harness.stop_server(server)
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    return {
        "variant": variant,
        "bundle_mb": round(size / 1e6),
        "ready_s": round(ready_s, 1),
        "idle_rss_mb": round(idle["VmRSS"] / 1024),
        "peak_mb_16x64": round(short["VmHWM"] / 1024),
        "peak_mb_16xlong": round(long["VmHWM"] / 1024),
        "rss_mb_after": round(long["VmRSS"] / 1024),
    }


def render(report: dict) -> str:
    lines = [
        "# fst-serve resident memory (sizing a container)",
        "",
        f"`{report['command']}` — {report['date']}; {report['machine']}; load average at "
        f"start {report['load_average']}. GPT-2 small (124 M parameters, random weights), "
        "bundles exported with --optimize; fst-serve with --max_batch_size 16, continuous "
        "batching; prompts of 160 characters (~35 tokens); streamed requests, ignore_eos.",
        "",
        f"| bundle | bundle MB | start to /ready s | RSS ready, idle MB | peak after 16 × 64 "
        f"tokens MB | peak after 16 × {report['long_tokens']} tokens MB | RSS afterwards MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['variant']} | {r['bundle_mb']} | {r['ready_s']} | {r['idle_rss_mb']} | "
            f"{r['peak_mb_16x64']} | {r['peak_mb_16xlong']} | {r['rss_mb_after']} |"
        )
    lines += [
        "",
        "Peak = the kernel's VmHWM of the server process (its high-water mark since start).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--variants", nargs="+", default=["fp32", "int8"])
    parser.add_argument("--long-tokens", type=int, default=448)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    report = {
        "command": "python -m benchmarks.serving.rss " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "long_tokens": args.long_tokens,
        "rows": [measure(v, args) for v in args.variants],
    }
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
