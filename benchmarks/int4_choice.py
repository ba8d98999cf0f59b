"""Which int4 scheme: block size, accuracy level, lm_head, by perplexity on a trained model.

    python benchmarks/int4_choice.py BUNDLE DOCUMENTS     # BUNDLE: fp32, exported --logits all

Each scheme quantises the same fp32 graph (`fst.export.quantize_int4`, after the exporter's
Gemm -> MatMul simplification) and is scored by the same code as `fst-eval --bundle`
(`fst.evaluation.bundle_scoring.BundleScorer` + `fst.evaluation.evaluate.token_level_metrics`). Writes
benchmarks/results/int4_choice.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SCHEMES = [  # (block_size, accuracy_level, lm_head)
    (32, 4, True),
    (128, 4, True),
    (32, 0, True),
    (32, 4, False),
]


def score(bundle: Path, tokenizer, documents) -> float:
    from fst.evaluation.bundle_scoring import BundleScorer
    from fst.evaluation.evaluate import token_level_metrics

    return token_level_metrics(BundleScorer(bundle, threads=1), tokenizer, documents)["perplexity"]


def main(argv: list[str]) -> int:
    from fst.core.bundle import BundleManifest
    from fst.core.documents import read_documents
    from fst.export.external_data import load_onnx, move_external, save_external
    from fst.export.quantize_int4 import quantize_int4
    from fst.export.simplify import simplify_file
    from fst.runtime.generator import load_tokenizer

    parser = argparse.ArgumentParser(
        description="Score int4 schemes of one fp32 bundle by perplexity on documents."
    )
    parser.add_argument("bundle", type=Path, help="an fp32 bundle exported with --logits all")
    parser.add_argument("documents", type=Path, help="JSON-lines documents to score")
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
            bundle.mkdir()
            save_external(untie(load_onnx(src / "model.onnx")), work / "t.onnx")
            simplify_file(work / "t.onnx", work / "s.onnx")
            quantize_int4(
                work / "s.onnx", work / "q.onnx", vocab_size=manifest.architecture.vocab_size,
                block_size=block, accuracy_level=accuracy, lm_head=head,
            )  # fmt: skip
            move_external(work / "q.onnx", bundle / "model.onnx")
            for name in ("tokenizer.json", "fst_bundle.json"):
                shutil.copy(src / name, bundle / name)
            start = time.perf_counter()
            ppl = score(bundle, tokenizer, documents)
            rows.append({
                "scheme": f"block {block}, accuracy_level {accuracy}, lm_head {'int4' if head else 'fp32'}",
                "weights_mb": _mb(bundle), "perplexity": ppl,
                "score_s": round(time.perf_counter() - start, 1),
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    lines = [
        "# int4 scheme choice (perplexity on held-out documents)",
        "",
        f"`python benchmarks/int4_choice.py {' '.join(argv)}` — {common.machine_description()['cpu']['model']}",
        "",
        "| scheme | weights MB | perplexity | vs fp32 |",
        "|---|---|---|---|",
    ]
    for r in rows:
        rel = r["perplexity"] / rows[0]["perplexity"] - 1
        lines.append(
            f"| {r['scheme']} | {r['weights_mb']:.1f} | {r['perplexity']:.2f} | {rel:+.2%} |"
        )
    report = {"argv": argv, "rows": rows}
    common.write_report(
        Path(__file__).parent / "results", "int4_choice", report, "\n".join(lines) + "\n"
    )
    return 0


def untie(model):
    """The bundle feeds lm_head Transpose(embedding) (tied_weights.py); quantisation runs before
    that step in the exporter, so give lm_head its own [hidden, vocab] weight again."""
    from onnx import numpy_helper

    tables = {t.name: t for t in model.graph.initializer}
    for node in list(model.graph.node):
        if node.op_type == "Transpose" and node.input[0] in tables:
            weight = numpy_helper.to_array(tables[node.input[0]]).T.copy()
            model.graph.initializer.append(numpy_helper.from_array(weight, node.output[0]))
            model.graph.node.remove(node)
    return model


def _mb(bundle: Path) -> float:
    return sum(f.stat().st_size for f in bundle.glob("model.onnx*")) / 1e6


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
