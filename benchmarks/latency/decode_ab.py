"""A/B of one ONNX Runtime session setting on a bundle's batch-1 decode, interleaved.

    python -m benchmarks.latency.decode_ab BUNDLE --b session.disable_prepacking=1 --rounds 8

Each round runs side A (the runtime as it is) and side B (the same plus the given session
config entries, `key=value`, see onnxruntime_session_options_config_keys.h) in fresh worker
processes, alternating which goes first. A worker generates greedily from a 32-token prompt
and reports the median time of a decode step in the stepper (input binding + ONNX Runtime
run + logits copy). The result is the median of B/A over rounds: one setting, one number,
robust to a machine that other jobs slow down.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from benchmarks import common

PROMPT = "The free spirit is the one who has grown tired of the old gods and their " * 3


def worker(bundle: str, threads: int, entries: dict[str, str], tokens: int) -> dict:
    import fst.runtime.session as session_module
    from fst.runtime import GenerationParams, GenerationRequest, Generator

    base = session_module.session_options

    def with_entries(threads: int | None = None):
        options = base(threads)
        for key, value in entries.items():
            options.add_session_config_entry(key, value)
        return options

    session_module.session_options = with_entries
    generator = Generator.from_bundle(bundle, threads=threads, huge_pages=True)
    calls: list[tuple[str, float]] = []
    generator.on_model_call = lambda kind, batch, start, end: calls.append((kind, end - start))
    params = GenerationParams(max_new_tokens=tokens, min_new_tokens=tokens, temperature=0.0)
    request = GenerationRequest(PROMPT, params)
    generator.run([request])  # warm-up
    calls.clear()
    generator.run([request])
    steps = [s for kind, s in calls if kind == "decode"]
    return {"decode_ms": statistics.median(steps) * 1e3, "steps": len(steps)}


def run_side(args: argparse.Namespace, entries: list[str]) -> float:
    cmd = [sys.executable, "-m", __spec__.name, args.bundle, "--worker", json.dumps(entries)]
    cmd += ["--threads", str(args.threads), "--tokens", str(args.tokens)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=common.REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])["decode_ms"]


def main() -> int:
    p = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__.split("\n")[0]
    )
    p.add_argument("bundle")
    p.add_argument("--b", action="append", default=[], help="session config key=value (B)")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        entries = dict(e.split("=", 1) for e in json.loads(args.worker))
        print(json.dumps(worker(args.bundle, args.threads, entries, args.tokens)))
        return 0
    for entry in args.b:
        if "=" not in entry:
            p.error(f"--b {entry!r}: expected key=value")
    a_ms, b_ms = [], []
    for r in range(args.rounds):
        sides = [("A", []), ("B", args.b)] if r % 2 == 0 else [("B", args.b), ("A", [])]
        for name, entries in sides:
            (a_ms if name == "A" else b_ms).append(run_side(args, entries))
        print(f"round {r + 1}: A {a_ms[-1]:.2f} ms, B {b_ms[-1]:.2f} ms", file=sys.stderr)
    ratios = [b / a for a, b in zip(a_ms, b_ms, strict=True)]
    print(
        json.dumps(
            {
                "b": args.b,
                "a_ms_median": statistics.median(a_ms),
                "b_ms_median": statistics.median(b_ms),
                "b_over_a_median": statistics.median(ratios),
                "b_over_a": [round(x, 3) for x in ratios],
                "load_average": [round(x, 2) for x in os.getloadavg()],
                "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
