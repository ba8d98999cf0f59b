"""Load test of fst-serve: throughput and latency at concurrency 1, 4 and 16.

    python benchmarks/serving_load.py                  # GPT-2 small (random weights)
    python benchmarks/serving_load.py --model tiny     # a smoke run in seconds

The model is GPT-2 small built from its config with random weights (nothing downloaded),
saved and exported once into a cache outside the repository (`--cache`, shared with
latency.py). The benchmark starts the real `fst-serve` in a subprocess, and at each
concurrency level c runs a closed loop of c clients (each sends its next request when the
previous one is answered) over a fixed number of requests. Every request streams
`max_tokens` tokens (ignore_eos, so all requests do the same work) and records its time to
first token and its latency.

Each server batching mode (`--batching`: continuous, request) gets its own server and
run. Reported per level: requests/s, generated tokens/s, latency and TTFT percentiles, and
the mean batch size the server formed (from its /metrics). The ratio of tokens/s at the
highest concurrency to concurrency 1 is what batching buys. Writes
benchmarks/results/serving_load.{json,md}. `--formats int8 int4 --llama-server PATH` compares
fst-serve with llama.cpp's llama-server instead (serving_llamacpp.py). On a shared machine absolute figures move by
tens of percent between runs; the load average is recorded beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import serving_llamacpp  # noqa: E402
from latency_models import DEFAULT_BPE, DEFAULT_CACHE, DEFAULT_CORPUS, DEFAULT_OUT, MODELS  # noqa: E402

log = logging.getLogger("serving_load")
SCHEMA_VERSION = 1
READY_TIMEOUT_S = 600


# --- preparation ----------------------------------------------------------------------------


def prepare_bundle(model: str, cache: Path, rebuild: bool, optimize: bool = True) -> Path:
    """The cached fp32 bundle of `model`, built and exported on first use."""
    from latency_models import build_hf_folder  # torch is imported only when building

    from fst.core.bundle import BundleManifest

    folder = cache / model / ("bundle-serving" if optimize else "bundle-serving-plain")
    manifest = folder / "fst_bundle.json"
    stale = manifest.is_file() and BundleManifest.load(folder).graph.optimized != optimize
    if rebuild or stale or not manifest.is_file():
        hf = build_hf_folder(model, cache, DEFAULT_BPE)
        from fst.export.exporter import export_bundle

        log.info("exporting %s to %s (optimize=%s)", model, folder, optimize)
        export_bundle(folder, model_path=str(hf), optimize=optimize, force=True, progress=False)
    BundleManifest.load(folder)  # fails loudly on a broken bundle
    return folder


def make_prompts(corpus: Path, count: int, chars: int) -> list[str]:
    """Distinct prompts: the beginnings of the corpus's documents."""
    prompts = []
    with corpus.open() as f:
        for line in f:
            body = json.loads(line).get("body", "").strip()
            if len(body) >= chars:
                prompts.append(body[:chars])
            if len(prompts) == count:
                break
    if not prompts:
        raise SystemExit(f"{corpus}: no document long enough for a prompt")
    return [prompts[i % len(prompts)] for i in range(count)]


# --- the server -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    bundle: Path, port: int, mode: str, args: argparse.Namespace, extra: Sequence[str] = ()
) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "fst.serving.cli",
        "--bundle", str(bundle),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--batching", mode,
        "--queue-size", str(max(64, 2 * max(args.concurrency))),
        "--request-timeout-s", "600",
        "--log-level", "warning",
    ]  # fmt: skip
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.max_batch_size:
        command += ["--max-batch-size", str(args.max_batch_size)]
    command += list(extra)  # a variant's flags come last and win
    log.info("starting %s", " ".join(command))
    return subprocess.Popen(command)


def wait_ready(
    base: str, server: subprocess.Popen, name: str = "fst-serve", path: str = "/ready",
    log_path: Path | None = None,
) -> None:  # fmt: skip
    """Until `server` answers 200 on `path`; SystemExit if it exits or takes too long."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            where = f": see {log_path}" if log_path else ""
            raise SystemExit(f"{name} exited with status {server.returncode}{where}")
        try:
            if httpx.get(f"{base}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{name} did not become ready")


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def batch_counters(base: str) -> tuple[float, float]:
    """(sequences, batches) the server has run so far."""
    values = {}
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith("fst_batch_size_sequences_"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values.get("fst_batch_size_sequences_sum", 0.0), values.get(
        "fst_batch_size_sequences_count", 0.0
    )


# --- the load ---------------------------------------------------------------------------------


SAMPLED = {"temperature": 0.8}


async def one_request(
    client: httpx.AsyncClient,
    prompt: str,
    seed: int,
    max_tokens: int,
    sampling: dict | None = None,
) -> dict:
    """One streamed completion: its latency, time to first token, mean time per later token
    (TPOT), the gaps between its streamed tokens, and the prompt and completion token counts
    the server reports."""
    body = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        **(SAMPLED if sampling is None else sampling),
        "seed": seed,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = last = None
    gaps: list[float] = []  # between chunks that carry text: the inter-token times
    usage = None
    async with client.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"status {response.status_code}: {await response.aread()!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if any(c["text"] for c in chunk["choices"]):
                now = time.perf_counter()
                if first is None:
                    first = now
                else:
                    gaps.append(now - last)
                last = now
            usage = chunk.get("usage") or usage
    end = time.perf_counter()
    completion = usage["completion_tokens"] if usage else 0
    return {
        "latency_s": end - start,
        "ttft_s": (first or end) - start,
        "tpot_s": (end - (first or end)) / (completion - 1) if completion > 1 else None,
        "gaps_s": gaps,
        "completion_tokens": completion,
        "prompt_tokens": usage.get("prompt_tokens") if usage else None,
    }


async def run_level(
    base: str,
    prompts: list[str],
    concurrency: int,
    max_tokens: int,
    sampling: dict | None = None,
    headers: dict | None = None,
) -> dict:
    """A closed loop: `concurrency` clients share the request list until it is done."""
    todo = list(enumerate(prompts))
    results: list[dict] = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        while todo:
            i, prompt = todo.pop(0)
            result = await one_request(client, prompt, i, max_tokens, sampling)
            results.append({"prompt_index": i, **result})

    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(
        base_url=base, timeout=600, limits=limits, headers=headers
    ) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        duration = time.perf_counter() - start
    return {"duration_s": duration, "requests": results}


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    low = int(pos)
    high = min(low + 1, len(xs) - 1)
    return xs[low] + (xs[high] - xs[low]) * (pos - low)


def summarize_level(concurrency: int, raw: dict, batches: tuple[float, float]) -> dict:
    latencies = [r["latency_s"] for r in raw["requests"]]
    ttfts = [r["ttft_s"] for r in raw["requests"]]
    tokens = sum(r["completion_tokens"] for r in raw["requests"])
    sequences, count = batches
    tpots = [r["tpot_s"] for r in raw["requests"] if r.get("tpot_s") is not None]
    gaps = [g for r in raw["requests"] for g in r.get("gaps_s", ())]
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "duration_s": raw["duration_s"],
        "requests_per_s": len(latencies) / raw["duration_s"],
        "tokens_per_s": tokens / raw["duration_s"],
        "completion_tokens": tokens,
        "latency_s": {f"p{q}": percentile(latencies, q / 100) for q in (50, 95, 99)},
        "ttft_s": {f"p{q}": percentile(ttfts, q / 100) for q in (50, 95, 99)},
        "tpot_s": {f"p{q}": percentile(tpots, q / 100) for q in (50, 95)} if tpots else None,
        "itl_s": {f"p{q}": percentile(gaps, q / 100) for q in (50, 95)} if gaps else None,
        "prompt_tokens": {
            r["prompt_index"]: r.get("prompt_tokens")
            for r in raw["requests"]
            if "prompt_index" in r
        },
        "latency_mean_s": statistics.mean(latencies),
        "mean_batch_sequences": sequences / count if count else None,
        "batches": int(count),
    }


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="gpt2-small")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="outside the repo")
    parser.add_argument("--rebuild", action="store_true", help="re-export the bundle")
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
        "--name", default=None, help="output file stem (default: serving_load, or with "
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
        args.variants = dict(_split_variant(v) for v in args.variant)
    except ValueError as e:
        parser.error(f"--variant: {e}")
    if any(c < 1 for c in args.concurrency):
        parser.error("--concurrency: every level must be >= 1")
    return args


def _split_variant(text: str) -> tuple[str, list[str]]:
    name, sep, flags = text.partition("=")
    if not sep or not name:
        raise ValueError(f"expected NAME=FLAGS, got {text!r}")
    return name, flags.split()


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
    bundle = prepare_bundle(args.model, args.cache, args.rebuild, args.optimize)
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
    args.out.mkdir(parents=True, exist_ok=True)
    common.write_atomic(args.out / f"{args.name}.json", json.dumps(report, indent=2) + "\n")
    common.write_atomic(args.out / f"{args.name}.md", render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
