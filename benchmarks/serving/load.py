"""Load test of fst-serve: throughput and latency at concurrency 1, 4 and 16.

    python -m benchmarks.serving.load                # GPT-2 small (random weights)
    python -m benchmarks.serving.load --model tiny   # a smoke run in seconds

The model is GPT-2 small built from its config with random weights (nothing downloaded),
saved and exported once into a cache outside the repository (`--cache`, shared with
benchmarks/latency/run.py). The benchmark starts the real `fst-serve` in a subprocess, and at each
concurrency level c runs a closed loop of c clients (each sends its next request when the
previous one is answered) over a fixed number of requests. Every request streams
`max_tokens` tokens (ignore_eos, so all requests do the same work) and records its time to
first token and its latency.

Each server batching mode (`--batching`: continuous, request) gets its own server and
run. Reported per level: requests/s, generated tokens/s, latency and TTFT percentiles, and
the mean batch size the server formed (from its /metrics). The ratio of tokens/s at the
highest concurrency to concurrency 1 is what batching buys. Writes
benchmarks/results/serving-load-fst-MODEL-continuous-vs-request-batching.{json,md} (`--variant`:
serving-load-fst-MODEL-A-vs-B; `--name` sets it). `--formats int8 int4 --llama-server PATH`
compares fst-serve with llama.cpp's llama-server instead (llamacpp.py). On a shared machine absolute figures move by
tens of percent between runs; the load average is recorded beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

import httpx

from benchmarks import common
from benchmarks.latency.models import (
    DEFAULT_CACHE,
    DEFAULT_CORPUS,
    DEFAULT_OUT,
    MODELS,
)
from benchmarks.serving import llamacpp as serving_llamacpp
from benchmarks.serving.harness import (
    SCHEMA_VERSION,
    batch_counters,
    free_port,
    make_prompts,
    prepare_bundle,
    run_level,
    split_variant,
    start_server,
    stop_server,
    summarize_level,
    wait_ready,
)

log = logging.getLogger("serving_load")

# --- report -----------------------------------------------------------------------------------


def render_markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        "# fst-serve load test",
        "",
        f"Model: {s['model']} ({report['bundle']['num_layers']} layers, random weights), fp32 "
        f"bundle exported {'with' if s.get('optimize') else 'without'} --optimize, "
        f"{s['max_tokens']} generated tokens per request (ignore_eos, temperature 0.8), "
        f"prompts of {s['prompt_chars']} characters; server max batch "
        f"{s['max_batch_size'] or 'its default'}; closed-loop clients. 'mean batch': sequences per decoding step "
        "(continuous) or per batch (request).",
    ]
    for mode, result in report["modes"].items():
        lines += [
            "",
            f"## {mode} batching" if mode in ("continuous", "request") else f"## {mode}",
            "",
            "| concurrency | requests | req/s | tokens/s | latency p50 / p95 / p99 (s) "
            "| TTFT p50 / p95 (s) | mean batch |",
            "|---:|---:|---:|---:|---|---|---:|",
        ]
        if result.get("flags") is not None:
            lines[-2:-2] = [f"fst-serve flags: `{' '.join(result['flags']) or '(defaults)'}`", ""]
        for level in result["levels"]:
            lat, ttft = level["latency_s"], level["ttft_s"]
            batch = level["mean_batch_sequences"]
            lines.append(
                f"| {level['concurrency']} | {level['requests']} "
                f"| {level['requests_per_s']:.2f} | {level['tokens_per_s']:.1f} "
                f"| {lat['p50']:.2f} / {lat['p95']:.2f} / {lat['p99']:.2f} "
                f"| {ttft['p50']:.2f} / {ttft['p95']:.2f} "
                f"| {'–' if batch is None else f'{batch:.1f}'} |"
            )
        ratio = result["throughput_ratio"]
        lines += [
            "",
            f"Throughput at concurrency {ratio['high']} / concurrency {ratio['low']}: "
            f"**{ratio['value']:.2f}×** (generated tokens/s; what batching buys). "
            f"Load average before/after: {result['load_before']} / {result['load_after']}.",
        ]
    lines += [
        "",
        f"Machine: {report['machine']['cpu']['model']}, "
        f"{report['machine']['cpu']['usable_cores']} usable cores, shared with other jobs: "
        "absolute figures move between runs; p99 over few requests is close to the maximum.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="gpt2-small")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="outside the repo")
    parser.add_argument("--rebuild", action="store_true", help="re-export the bundle")
    parser.add_argument(
        "--bundle", type=Path, default=None,
        help="serve this bundle (e.g. the int8 or int4 one --formats makes) instead of the "
        "model's fp32 export",
    )  # fmt: skip
    parser.add_argument(
        "--optimize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve an --optimize export (shared KV buffers; --no-optimize: the plain graph)",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument(
        "--requests", type=int, default=None, help="requests per level (default 4 + 2 × c)"
    )
    parser.add_argument(
        "--batching", nargs="+", choices=["continuous", "request"],
        default=["continuous", "request"], help="server batching modes to measure, in turn",
    )  # fmt: skip
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompt-chars", type=int, default=160, help="about 35 GPT-2 tokens")
    parser.add_argument(
        "--max-batch-size", type=int, default=None, help="fst-serve's (default: its own)"
    )
    parser.add_argument("--threads", type=int, default=None, help="ORT intra-op threads")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--name", default=None, help="output file stem (default: serving-load-fst-MODEL-"
        "continuous-vs-request-batching, with --variant serving-load-fst-MODEL-A-vs-B, with "
        "--formats serving-fst-vs-llama-server-MODEL)",
    )  # fmt: skip
    parser.add_argument(
        "--variant", action="append", default=[], metavar="NAME=FLAGS",
        help="compare fst-serve configurations instead of batching modes: each NAME gets "
        "its own server (continuous batching, then FLAGS), all started at once and each "
        "concurrency level run on each in turn (order alternating, the idle servers "
        "paused with SIGSTOP); e.g. --variant 'cap16=--max_batch_size 16 --max_step_ms 0' "
        "--variant auto=",
    )  # fmt: skip
    serving_llamacpp.add_arguments(parser)
    args = parser.parse_args(argv)
    serving_llamacpp.check_arguments(parser, args)
    try:
        args.variants = dict(split_variant(v) for v in args.variant)
    except ValueError as e:
        parser.error(f"--variant: {e}")
    if any(c < 1 for c in args.concurrency):
        parser.error("--concurrency: every level must be >= 1")
    return args


def run_variants(bundle: Path, args: argparse.Namespace) -> dict[str, dict]:
    """Every variant's server up at once; each level runs on each variant in turn (order
    alternating between levels), the others paused (SIGSTOP) so they take no CPU."""
    servers, bases = {}, {}
    results: dict[str, dict] = {}
    load_before = common.load_average()
    try:
        for name, flags in args.variants.items():
            port = free_port()
            bases[name] = f"http://127.0.0.1:{port}"
            servers[name] = start_server(bundle, port, "continuous", args, flags)
        for name in servers:
            wait_ready(bases[name], servers[name])
            results[name] = {
                "bundle": httpx.get(f"{bases[name]}/version", timeout=10).json()["bundle"],
                "flags": args.variants[name],
                "levels": [],
            }
            warm = make_prompts(args.corpus, 2, args.prompt_chars)
            asyncio.run(run_level(bases[name], warm, 2, 4))
            servers[name].send_signal(signal.SIGSTOP)
        names = list(servers)
        for i, c in enumerate(args.concurrency):
            for name in names if i % 2 == 0 else names[::-1]:
                servers[name].send_signal(signal.SIGCONT)
                prompts = make_prompts(args.corpus, args.requests or 4 + 2 * c, args.prompt_chars)
                before = batch_counters(bases[name])
                raw = asyncio.run(run_level(bases[name], prompts, c, args.max_tokens))
                after = batch_counters(bases[name])
                level = summarize_level(c, raw, (after[0] - before[0], after[1] - before[1]))
                servers[name].send_signal(signal.SIGSTOP)
                log.info(
                    "%s c=%d: %.1f tokens/s, TTFT p50 %.2fs, mean batch %.1f",
                    name, c, level["tokens_per_s"], level["ttft_s"]["p50"],
                    level["mean_batch_sequences"] or 0,
                )  # fmt: skip
                results[name]["levels"].append(level)
    finally:
        for server in servers.values():
            server.send_signal(signal.SIGCONT)
            stop_server(server)
    for result in results.values():
        low, high = result["levels"][0], result["levels"][-1]
        result["throughput_ratio"] = {
            "low": low["concurrency"],
            "high": high["concurrency"],
            "value": high["tokens_per_s"] / low["tokens_per_s"],
        }
        result["load_before"], result["load_after"] = load_before, common.load_average()
    return results


def run_mode(bundle: Path, mode: str, args: argparse.Namespace) -> dict:
    """Start fst-serve with `mode` batching, run every concurrency level, stop it."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    load_before = common.load_average()
    server = start_server(bundle, port, mode, args)
    levels = []
    try:
        wait_ready(base, server)
        summary = httpx.get(f"{base}/version", timeout=10).json()["bundle"]
        warm = make_prompts(args.corpus, 2, args.prompt_chars)
        asyncio.run(run_level(base, warm, 2, 4))  # first-request costs out of the figures
        for c in args.concurrency:
            prompts = make_prompts(args.corpus, args.requests or 4 + 2 * c, args.prompt_chars)
            before = batch_counters(base)
            raw = asyncio.run(run_level(base, prompts, c, args.max_tokens))
            after = batch_counters(base)
            level = summarize_level(c, raw, (after[0] - before[0], after[1] - before[1]))
            log.info(
                "%s c=%d: %.2f req/s, %.1f tokens/s, p50 %.2fs, mean batch %.1f",
                mode,
                c,
                level["requests_per_s"],
                level["tokens_per_s"],
                level["latency_s"]["p50"],
                level["mean_batch_sequences"] or 0,
            )
            levels.append(level)
    finally:
        stop_server(server)
    low, high = levels[0], levels[-1]
    return {
        "bundle": summary,
        "levels": levels,
        "throughput_ratio": {
            "low": low["concurrency"],
            "high": high["concurrency"],
            "value": high["tokens_per_s"] / low["tokens_per_s"],
        },
        "load_before": load_before,
        "load_after": common.load_average(),
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    if args.formats:
        return write_report(serving_llamacpp.run(args), serving_llamacpp.render_markdown, args)
    bundle = args.bundle or prepare_bundle(args.model, args.cache, args.rebuild, args.optimize)
    if args.variants:
        modes = run_variants(bundle, args)
    else:
        modes = {mode: run_mode(bundle, mode, args) for mode in args.batching}
    report = {
        "schema_version": SCHEMA_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {
            "model": args.model,
            "max_tokens": args.max_tokens,
            "prompt_chars": args.prompt_chars,
            "max_batch_size": args.max_batch_size,
            "threads": args.threads,
            "concurrency": args.concurrency,
            "optimize": args.optimize,
            "variants": args.variants,
        },
        "bundle": next(iter(modes.values()))["bundle"],
        "modes": modes,
        "machine": common.machine_description(),
    }
    return write_report(report, render_markdown, args)


def write_report(report: dict, render, args: argparse.Namespace) -> int:
    markdown = render(report)
    common.write_report(args.out, args.name, report, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
