"""Which int4 scheme: block size, accuracy level, lm_head, by perplexity on a trained model
and, with --speed, by batch-1 decode time on a larger one.

    python -m benchmarks.quality.int4_choice BUNDLE DOCUMENTS   # BUNDLE: fp32, exported --logits all
    python -m benchmarks.quality.int4_choice BUNDLE DOCUMENTS --speed GPT2_SMALL_FP32_BUNDLE

Each scheme quantises the same fp32 graph (`fst.export.quantize_int4`, after the exporter's
Gemm -> MatMul simplification) and is scored by the same code as `fst-eval --bundle`
(`fst.evaluation.bundle_scoring.BundleScorer` + `fst.evaluation.evaluate.token_level_metrics`).
`--speed` quantises a second fp32 bundle (any `--optimize` export; benchmarks/latency/run.py keeps GPT-2
small's in /tmp/fst-bench/gpt2-small/bundle-fp32) at each block size and times greedy decode
steps through the runtime, each scheme in its own process, interleaved over `--rounds`.
Writes benchmarks/results/int4-scheme-choice-perplexity-decode-fst.{json,md} (the last run, on the
earlier AMD EPYC VM: int4-scheme-choice-perplexity-decode-fst-epyc.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from benchmarks import common
from benchmarks.latency import decode_ab
from benchmarks.latency.int4_bundle import quantized_bundle

SCHEMES = [  # (block_size, accuracy_level, lm_head)
    (32, 4, True),
    (64, 4, True),
    (128, 4, True),
    (256, 4, True),
    (32, 0, True),
    (128, 4, False),
]
SPEED_BLOCKS = (32, 64, 128, 256)


def score(bundle: Path, tokenizer, documents) -> float:
    from fst.evaluation.bundle_scoring import BundleScorer
    from fst.evaluation.evaluate import token_level_metrics

    return token_level_metrics(BundleScorer(bundle, threads=1), tokenizer, documents)["perplexity"]


def main(argv: list[str]) -> int:
    from fst.core.bundle import BundleManifest
    from fst.core.documents import read_documents
    from fst.runtime.generator import load_tokenizer

    parser = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}",
        description="Score int4 schemes of one fp32 bundle by perplexity on documents "
        "(and, with --speed, time their decode steps on another).",
    )
    parser.add_argument("bundle", type=Path, help="an fp32 bundle exported with --logits all")
    parser.add_argument("documents", type=Path, help="JSON-lines documents to score")
    parser.add_argument(
        "--speed", type=Path, help="an --optimize fp32 bundle to time decode steps on"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    args = parser.parse_args(argv)
    src, documents = args.bundle, read_documents(args.documents)
    manifest = BundleManifest.load(src)
    tokenizer = load_tokenizer(src, manifest)
    rows = [
        {"scheme": "fp32", "weights_mb": _mb(src), "perplexity": score(src, tokenizer, documents)}
    ]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for block, accuracy, head in SCHEMES:
            bundle = work / f"b{block}-a{accuracy}-h{int(head)}"
            quantized_bundle(src, bundle, block_size=block, accuracy_level=accuracy, lm_head=head)
            start = time.perf_counter()
            ppl = score(bundle, tokenizer, documents)
            rows.append({
                "scheme": f"block {block}, accuracy_level {accuracy}, lm_head {'int4' if head else 'fp32'}",
                "weights_mb": _mb(bundle), "perplexity": ppl,
                "score_s": round(time.perf_counter() - start, 1),
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
        speed = decode_speed(args.speed, work, args.rounds, args.threads) if args.speed else []
    lines = [
        "# int4 scheme choice (perplexity on held-out documents)",
        "",
        f"`python -m benchmarks.quality.int4_choice {' '.join(argv)}` — {common.machine_description()['cpu']['model']}",
        "",
        "| scheme | weights MB | perplexity | vs fp32 |",
        "|---|---|---|---|",
    ]
    for r in rows:
        rel = r["perplexity"] / rows[0]["perplexity"] - 1
        lines.append(
            f"| {r['scheme']} | {r['weights_mb']:.1f} | {r['perplexity']:.2f} | {rel:+.2%} |"
        )
    if speed:
        lines += [
            "",
            f"Batch-1 greedy decode of `{args.speed}` ({speed[0]['layers']} layers, hidden "
            f"{speed[0]['hidden']}), each block size in its own process, {args.rounds} "
            f"interleaved rounds, {args.threads} threads, ONNX Runtime's default spinning:",
            "",
            "| block size | weights MB | decode ms/token (median of rounds) | rounds | vs 32 |",
            "|---|---|---|---|---|",
        ]
        for r in speed:
            rel = r["decode_ms"] / speed[0]["decode_ms"]
            each = ", ".join(f"{x:.2f}" for x in r["rounds_ms"])
            lines.append(
                f"| {r['block_size']} | {r['weights_mb']:.1f} | {r['decode_ms']:.2f} | {each} "
                f"| {rel:.2f}x |"
            )
    report = {"argv": argv, "machine": common.machine_description(), "rows": rows, "speed": speed}
    common.write_report(
        Path(__file__).resolve().parents[1] / "results",
        "int4-scheme-choice-perplexity-decode-fst",
        report,
        "\n".join(lines) + "\n",
    )
    return 0


def decode_speed(src: Path, work: Path, rounds: int, threads: int) -> list[dict]:
    """Median batch-1 decode step per block size, interleaved rounds of fresh processes."""
    from fst.core.bundle import BundleManifest

    arch = BundleManifest.load(src).architecture
    bundles = {}
    for block in SPEED_BLOCKS:
        bundles[block] = work / f"speed-b{block}"
        quantized_bundle(src, bundles[block], block_size=block)
    times: dict[int, list[float]] = {b: [] for b in SPEED_BLOCKS}
    for r in range(rounds):
        for block in SPEED_BLOCKS if r % 2 == 0 else SPEED_BLOCKS[::-1]:
            side = SimpleNamespace(bundle=str(bundles[block]), threads=threads, tokens=64)
            times[block].append(decode_ab.run_side(side, []))  # greedy, no extra settings
            print(f"round {r + 1}: block {block}: {times[block][-1]:.2f} ms", flush=True)
    return [
        {
            "block_size": b,
            "weights_mb": _mb(bundles[b]),
            "rounds_ms": times[b],
            "decode_ms": statistics.median(times[b]),
            "layers": arch.num_layers,
            "hidden": arch.hidden_size,
        }  # fmt: skip
        for b in SPEED_BLOCKS
    ]


def _mb(bundle: Path) -> float:
    return sum(f.stat().st_size for f in bundle.glob("model.onnx*")) / 1e6


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
