"""One engine measured in a fresh process: `python -m benchmarks.latency.worker ENGINE PATH
PROMPTS --threads N --workload JSON` prints one JSON line (run.py starts it per engine and
round, so no engine shares memory, threads or allocator state with another).

Torch-free unless the engine is Hugging Face's: engines.py imports each engine's library only
when it is made.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.latency.spec import Workload

WORKER_TIMEOUT_S = 3600
WARMUP_TOKENS = 4  # the warm-up call of each scenario: prefill + a few decode steps


def run_worker(engine: str, path: str, prompts_file: Path, args: argparse.Namespace) -> dict:
    """One engine measured in a fresh process; returns its JSON report."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(args.threads)
    # Idle threads sleep (passive) or spin, alike for both runtimes (see --wait).
    env["OMP_WAIT_POLICY"] = "PASSIVE" if args.wait == "passive" else "ACTIVE"  # llama.cpp
    env["FST_BENCH_ORT_SPINNING"] = "0" if args.wait == "passive" else "1"  # ours
    cmd = [
        sys.executable,
        "-m",
        __spec__.name,
        engine,
        path,
        str(prompts_file),
        "--threads",
        str(args.threads),
        "--workload",
        json.dumps(asdict(args.workload)),
    ]
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, cwd=common.REPO
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"worker {engine} failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1])


def measure(
    engine: Any, prompts: list[dict], new_tokens: int, repeats: int
) -> tuple[list[Any], list[dict[str, float]]]:
    """A short warm-up call, then `repeats` timed calls; every sequence must get exactly
    `new_tokens` tokens. Returns the timings and, for engines that time their own steps
    (ours), their stats."""
    ids = [p["ids"] for p in prompts]
    engine.run(ids, WARMUP_TOKENS)  # same shapes: allocators and kernels warmed up
    runs, stats = [], []
    for _ in range(repeats):
        timing = engine.run(ids, new_tokens)
        lengths = {len(t) for t in timing.tokens}
        if lengths != {new_tokens} or len(timing.tokens) != len(ids):
            raise RuntimeError(f"{engine.name}: asked for {new_tokens} tokens, got {lengths}")
        runs.append(timing)
        if hasattr(engine, "last_stats"):
            stats.append(engine.last_stats())
    return runs, stats


def decode_ms(t: Any, new_tokens: int) -> float:
    """Milliseconds per token after the first one (the first carries the prefill)."""
    return (t.total_s - t.first_token_s) / (new_tokens - 1) * 1e3


def worker_main(args: argparse.Namespace) -> int:
    from benchmarks.latency.engines import make_engine

    w = Workload(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.workload.items()})
    prompts = json.loads(Path(args.prompts).read_text())
    start = time.perf_counter()
    engine = make_engine(args.worker, args.path, args.threads)
    metrics: dict[str, float] = {"load_s": time.perf_counter() - start}
    if hasattr(engine, "add_texts"):  # our runtime takes text: give it the exact prompts
        every = [*prompts["prompt"].values(), *prompts["batch"], *prompts["past"].values()]
        engine.add_texts([(p["ids"], p["text"]) for p in every])
    n, p0 = w.new_tokens, w.prompt_lengths[0]

    # Batch 1 first, then its peak RSS: what a single-user server holds.
    for length in w.prompt_lengths:
        runs, stats = measure(engine, [prompts["prompt"][str(length)]], n, w.repeats)
        metrics[f"b1_p{length}.ttft_ms"] = common.median(t.first_token_s * 1e3 for t in runs)
        metrics[f"b1_p{length}.decode_ms"] = common.median(decode_ms(t, n) for t in runs)
        for key in stats[0] if stats else ():
            metrics[f"b1_p{length}.{key}"] = common.median(s[key] for s in stats)
        if length == p0:
            metrics["peak_rss_mb"] = common.peak_rss_mb()

    if getattr(engine, "max_batch", w.batch) >= w.batch:  # llama.cpp's bindings: batch 1
        runs, _ = measure(engine, prompts["batch"], n, w.repeats)
        metrics[f"b{w.batch}.tokens_per_s"] = common.median(w.batch * n / t.total_s for t in runs)

    for length in w.past_lengths:
        runs, _ = measure(engine, [prompts["past"][str(length)]], w.past_new_tokens, w.repeats)
        metrics[f"past_{length}.decode_ms"] = common.median(
            decode_ms(t, w.past_new_tokens) for t in runs
        )
    metrics["peak_rss_mb_all"] = common.peak_rss_mb()

    greedy = engine.run([prompts["prompt"][str(p0)]["ids"]], n, greedy=True).tokens[0]
    report = {"engine": args.worker, "metrics": metrics, "greedy": greedy, "info": engine.info()}
    print(json.dumps(report))
    return 0


def parse_worker_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description="run.py's worker: one engine, one JSON line"
    )
    p.add_argument("worker", metavar="ENGINE")
    p.add_argument("path", help="the engine's model folder or file")
    p.add_argument("prompts", help="prompts JSON (latency_models.make_prompts)")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--workload", type=json.loads, required=True, help="Workload as JSON")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(worker_main(parse_worker_args()))
