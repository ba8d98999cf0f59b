"""fst-serve as a process and closed-loop streaming clients: what load.py (fst-serve alone)
and llamacpp.py (fst-serve beside llama-server) share, and the bundle they serve.

Both servers speak the OpenAI API, so one client measures either: each request streams and
records its time to first token and its latency; `run_level` keeps c of them in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from benchmarks.latency.models import (
    DEFAULT_BPE,
)

log = logging.getLogger("serving_load")
SCHEMA_VERSION = 1
READY_TIMEOUT_S = 600


# --- preparation ----------------------------------------------------------------------------


def prepare_bundle(model: str, cache: Path, rebuild: bool, optimize: bool = True) -> Path:
    """The cached fp32 bundle of `model`, built and exported on first use."""
    from benchmarks.latency.models import build_hf_folder  # torch is imported only when building
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


def split_variant(text: str) -> tuple[str, list[str]]:
    """'NAME=FLAGS' (a --variant) as (NAME, [flags])."""
    name, sep, flags = text.partition("=")
    if not sep or not name:
        raise ValueError(f"expected NAME=FLAGS, got {text!r}")
    return name, flags.split()


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
    (TPOT), the gaps between its streamed tokens, its text, and the prompt, completion and
    cached prompt token counts the server reports (cached: fst-serve's
    `prompt_tokens_details.cached_tokens`, llama-server's `timings.cache_n`)."""
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
    usage = timings = None
    texts: list[str] = []
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
                texts += (c["text"] for c in chunk["choices"])
                now = time.perf_counter()
                if first is None:
                    first = now
                else:
                    gaps.append(now - last)
                last = now
            usage = chunk.get("usage") or usage
            timings = chunk.get("timings") or timings
    end = time.perf_counter()
    completion = usage["completion_tokens"] if usage else 0
    return {
        "latency_s": end - start,
        "ttft_s": (first or end) - start,
        "tpot_s": (end - (first or end)) / (completion - 1) if completion > 1 else None,
        "gaps_s": gaps,
        "completion_tokens": completion,
        "prompt_tokens": usage.get("prompt_tokens") if usage else None,
        "cached_tokens": cached_tokens(usage, timings),
        "text": "".join(texts),
    }


def cached_tokens(usage: dict | None, timings: dict | None) -> int | None:
    """Prompt tokens the server took from its prompt cache, if it says (None: it does not)."""
    details = (usage or {}).get("prompt_tokens_details") or {}
    if "cached_tokens" in details:
        return details["cached_tokens"]
    return (timings or {}).get("cache_n")


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
