"""A burst of requests at a server that has just started: time to first token by variant.

    python -m benchmarks.serving.burst --bundle BUNDLE \\
        --variant "no-limit=--max_prefill_tokens 0" --variant "budget-1024="

The closed loops of benchmarks/serving/load.py reach a steady state in which requests
arrive a few at a time. A real server also sees bursts: many clients at once, after a
deploy or a restart. Here every round starts each variant's fst-serve afresh (its own
warm-up only), sends `--requests` streamed completions at the same moment (prompts of
`--prompt-chars` corpus characters, `--max-tokens` tokens each, greedy, ignore_eos) and
stops it; variants alternate within a round, one server up at a time. Reported per variant:
medians over rounds of the burst's TTFT p50 / p95, its tokens/s (generated tokens / time
until the last answer) and the mean requests per prefill (from /metrics). Writes
benchmarks/results/NAME.{json,md} (default serving-burst-fst-BUNDLE-A-vs-B).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from pathlib import Path

import httpx

from benchmarks import common
from benchmarks.latency.models import DEFAULT_CORPUS, DEFAULT_OUT
from benchmarks.serving import harness

log = logging.getLogger("serving_burst")

GREEDY = {"temperature": 0.0}


def one_burst(bundle: Path, flags: list[str], args: argparse.Namespace) -> dict:
    """A fresh server, one burst of `args.requests` requests at once, the server stopped."""
    port = harness.free_port()
    base = f"http://127.0.0.1:{port}"
    server = harness.start_server(bundle, port, "continuous", args, flags)
    try:
        harness.wait_ready(base, server)
        prompts = harness.make_prompts(args.corpus, args.requests, args.prompt_chars)
        raw = asyncio.run(harness.run_level(base, prompts, args.requests, args.max_tokens, GREEDY))
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
    finally:
        harness.stop_server(server)
    ttfts = [r["ttft_s"] for r in raw["requests"]]
    tokens = sum(r["completion_tokens"] for r in raw["requests"])
    prefills = _counter(metrics, 'fst_model_call_duration_seconds_count{kind="prefill"}')
    return {
        "ttft_p50_s": harness.percentile(ttfts, 0.5),
        "ttft_p95_s": harness.percentile(ttfts, 0.95),
        "tokens_per_s": tokens / raw["duration_s"],
        "requests_per_prefill": len(ttfts) / prefills if prefills else None,
    }


def _counter(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def render_markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        f"# A burst at a fresh fst-serve: {s['requests']} requests at once",
        "",
        f"`python -m {__spec__.name} --bundle {s['bundle']} --requests {s['requests']} "
        f"--max-tokens {s['max_tokens']} --rounds {s['rounds']} "
        + " ".join(f"--variant '{n}={' '.join(f)}'" for n, f in s["variants"].items())
        + "`",
        "",
        f"Bundle: {report['bundle_variant']} ({s['bundle']}); {s['threads']} threads; prompts "
        f"of {s['prompt_chars']} corpus characters, {s['max_tokens']} greedy tokens each "
        "(ignore_eos), all sent at the same moment to a server started for the round; "
        "variants alternate within a round. Medians over rounds (every round in brackets).",
        "",
        "| variant | flags | TTFT p50 (s) | TTFT p95 (s) | tokens/s | requests per prefill |",
        "|---|---|---|---|---|---:|",
    ]
    for name, rounds in report["variants"].items():
        flags = " ".join(s["variants"][name]) or "(defaults)"

        def cell(key: str, digits: int, rounds: list[dict] = rounds) -> str:
            values = [r[key] for r in rounds]
            each = ", ".join(f"{v:.{digits}f}" for v in values)
            return f"{common.median(values):.{digits}f} ({each})"

        per_prefill = common.median([r["requests_per_prefill"] or 0 for r in rounds])
        lines.append(
            f"| {name} | `{flags}` | {cell('ttft_p50_s', 2)} | {cell('ttft_p95_s', 2)} | "
            f"{cell('tokens_per_s', 0)} | {per_prefill:.1f} |"
        )
    machine = report["machine"]["cpu"]
    lines += [
        "",
        f"Machine: {machine['model']}, {machine['usable_cores']} usable cores; load average "
        f"before / after: {report['load_before']} / {report['load_after']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument(
        "--variant", action="append", required=True, metavar="NAME=FLAGS",
        help="an fst-serve configuration (continuous batching, then FLAGS); give two or more",
    )  # fmt: skip
    parser.add_argument("--requests", type=int, default=64, help="sent at once")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--prompt-chars", type=int, default=160, help="about 35 GPT-2 tokens")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--name", default=None, help="output file stem")
    args = parser.parse_args(argv)
    try:
        variants = dict(harness.split_variant(v) for v in args.variant)
    except ValueError as e:
        parser.error(f"--variant: {e}")
    if args.requests < 1 or args.rounds < 1:
        parser.error("--requests and --rounds must be >= 1")
    args.max_batch_size = None  # harness.start_server's: the server's own
    args.concurrency = [args.requests]  # sizes its queue
    load_before = common.load_average()
    results: dict[str, list[dict]] = {name: [] for name in variants}
    names = list(variants)
    for i in range(args.rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            log.info("round %d: %s", i + 1, name)
            results[name].append(one_burst(args.bundle, variants[name], args))
    from fst.core.bundle import BundleManifest

    variant = BundleManifest.load(args.bundle).graph.variant
    report = {
        "schema_version": harness.SCHEMA_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {
            "bundle": str(args.bundle),
            "requests": args.requests,
            "max_tokens": args.max_tokens,
            "prompt_chars": args.prompt_chars,
            "rounds": args.rounds,
            "threads": args.threads,
            "variants": variants,
        },
        "bundle_variant": variant,
        "variants": results,
        "load_before": load_before,
        "load_after": common.load_average(),
        "machine": common.machine_description(),
    }
    name = args.name or f"serving-burst-fst-{args.bundle.name}-{'-vs-'.join(variants)}"
    markdown = render_markdown(report)
    common.write_report(args.out, name, report, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
