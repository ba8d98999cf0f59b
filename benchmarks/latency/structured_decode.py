"""Decode slowdown of JSON-schema-constrained generation, batch 1 and batch 8, interleaved.

    python -m benchmarks.latency.structured_decode BUNDLE --rounds 6 --tokens 48

One process, one `Generator`: each round runs, in alternating order, the same prompts
without a constraint (A) and with `Constraint.json_schema(SCHEMA)` (B), at batch 1 and at
batch 8 (one request, n = 8), with the default sampling settings. A step's time is one
`DecodeBatch.step()` (the model's decode of the previous tokens + sampling every row, the
mask and matcher included for B), counted only while every row is still decoding, so
rows that finish early never flatter a side. The step is also split (the runtime's
`on_model_call` hook) into the model's run and the rest, sampling: on a shared machine
the model's time swings with other jobs, while the sampling difference per row is the
constraint's own cost. Also reported: `add` (prefill + the request's grammar compile
for B). The one-off per-model set-up of the grammar engine is
done before timing and reported alone.

Results: benchmarks/results/NAME.{md,json} (`--name`, default structured-output-decode-gpt2small-fst:
name it after the bundle's model).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import fmt, machine_description, write_report
from benchmarks.latency.structured_libraries import SCHEMA
from fst.core.generation_params import GenerationParams
from fst.runtime import Constraint, GenerationRequest, Generator

REPO = Path(__file__).resolve().parents[2]
PROMPT = "Return the record of one person as JSON:"


def one_run(generator: Generator, constraint: Constraint | None, n: int, tokens: int, seed: int):
    """(add seconds, [(step seconds, the model's seconds in it)] while all n rows decode)."""
    params = GenerationParams(max_new_tokens=tokens, num_return_sequences=n, seed=seed)
    batch = generator.new_batch()
    model: list[float] = []
    generator.on_model_call = lambda kind, size, start, end: model.append(end - start)
    t0 = time.perf_counter()
    batch.add([GenerationRequest(PROMPT, params, constraint=constraint)])
    add_s = time.perf_counter() - t0
    steps = []
    while batch.num_live:
        full = batch.num_live == n
        model.clear()
        t0 = time.perf_counter()
        batch.step()
        if full:
            steps.append((time.perf_counter() - t0, sum(model)))
    generator.on_model_call = None
    return add_s, steps


def run(args: argparse.Namespace) -> dict[str, Any]:
    generator = Generator.from_bundle(args.bundle, threads=args.threads, huge_pages=True)
    constraint = Constraint.json_schema(SCHEMA)
    t0 = time.perf_counter()
    one_run(generator, constraint, 1, 2, 0)  # builds the grammar engine's tokenizer once
    setup_s = time.perf_counter() - t0
    for side in (None, constraint):  # warm both paths
        one_run(generator, side, 8, 8, 0)
    data: dict[str, dict[str, list[float]]] = {}
    for r in range(args.rounds):
        for n in args.batch:
            sides = [("A", None), ("B", constraint)]
            for name, side in sides if r % 2 == 0 else sides[::-1]:
                add_s, steps = one_run(generator, side, n, args.tokens, seed=r)
                cell = data.setdefault(f"{name}{n}", {"add": [], "step": [], "sample": []})
                cell["add"].append(add_s)
                cell["step"] += [step for step, _ in steps[1:]]  # the first has no model run
                cell["sample"] += [step - run for step, run in steps[1:]]
    rows = []
    for n in args.batch:
        a, b = data[f"A{n}"], data[f"B{n}"]
        step_a, step_b = statistics.median(a["step"]), statistics.median(b["step"])
        sample_a, sample_b = statistics.median(a["sample"]), statistics.median(b["sample"])
        rows.append(
            {
                "batch": n,
                "step_ms_free": step_a * 1e3,
                "step_ms_constrained": step_b * 1e3,
                "slowdown_pct": (step_b / step_a - 1) * 100,
                "sample_ms_free": sample_a * 1e3,
                "sample_ms_constrained": sample_b * 1e3,
                "constraint_us_per_row": (sample_b - sample_a) / n * 1e6,
                "steps_counted": [len(a["step"]), len(b["step"])],
                "add_ms_free": statistics.median(a["add"]) * 1e3,
                "add_ms_constrained": statistics.median(b["add"]) * 1e3,
            }
        )
    return {
        "machine": machine_description(),
        "bundle": str(args.bundle),
        "manifest": {
            "architecture": generator.manifest.architecture.model_dump(),
            "variant": generator.manifest.graph.variant,
            "kv_layout": generator.manifest.graph.kv_layout,
        },
        "threads": args.threads,
        "rounds": args.rounds,
        "tokens": args.tokens,
        "engine_setup_ms": setup_s * 1e3,
        "results": rows,
    }


def markdown(report: dict[str, Any]) -> str:
    m, arch = report["machine"], report["manifest"]["architecture"]
    lines = [
        "# Structured output: decode slowdown of a JSON-schema constraint",
        "",
        f"`python -m benchmarks.latency.structured_decode BUNDLE --rounds {report['rounds']} --tokens "
        f"{report['tokens']}` — random-weight GPT-2-small-shaped bundle ({arch['num_layers']} "
        f"layers, hidden {arch['hidden_size']}, vocabulary {arch['vocab_size']:,}; "
        f"{report['manifest']['variant']}, kv {report['manifest']['kv_layout']}), "
        f"{report['threads']} threads. CPU: {m['cpu']['model']} ({m['cpu']['usable_cores']} "
        f"usable cores, shared with other jobs; load {m['load_average']}).",
        "",
        "A: no constraint; B: the schema of structured-output-libraries-gpt2-smollm2-vocabularies.md (llguidance). "
        "Interleaved rounds, default sampling (temperature 0.7, top-k 50); step = one "
        "`DecodeBatch.step()` while every row decodes (median); add = prefill (+ B's "
        "grammar compile).",
        "",
        "| batch | step ms A | step ms B | slowdown | sampling ms A | sampling ms B "
        "| constraint µs/row | steps (A, B) | add ms A | add ms B |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['batch']} | {fmt(r['step_ms_free'], 2)} | {fmt(r['step_ms_constrained'], 2)} "
            f"| {r['slowdown_pct']:+.1f}% | {fmt(r['sample_ms_free'], 3)} "
            f"| {fmt(r['sample_ms_constrained'], 3)} | {fmt(r['constraint_us_per_row'], 0)} "
            f"| {r['steps_counted']} | {fmt(r['add_ms_free'], 1)} "
            f"| {fmt(r['add_ms_constrained'], 1)} |"
        )
    lines += [
        "",
        "sampling = step − the model's run: the sampler, detokenising and stop checks of "
        "every row; constraint µs/row = (sampling B − sampling A) / batch.",
        "",
        f"One-off per model (first constrained request): {report['engine_setup_ms']:.0f} ms "
        "(llguidance's tokenizer trie).",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument(
        "--name", default="structured-output-decode-gpt2small-fst", help="file stem"
    )
    args = parser.parse_args()
    report = run(args)
    write_report(args.out, args.name, report, markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
