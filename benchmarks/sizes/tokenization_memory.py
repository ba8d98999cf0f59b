"""Tokenizing a training corpus: tokens/s and peak memory, by corpus size.

    python -m benchmarks.sizes.tokenization_memory                 # 10 MB, 100 MB and 1 GB
    python -m benchmarks.sizes.tokenization_memory --sizes_mb 10   # one size

Each corpus is generated once (half of it one single-line document, the rest 1.4 KB
documents with a meta, words drawn from the GPT-2-heavy vocabulary of English), then each
encoder runs in its own fresh process (GPT-2's BPE, fst's document format) and reports
its wall time, the tokens it made and its peak RSS (`ru_maxrss`) above what reading the
documents and loading the tokenizer took:

- `corpus`: `DocumentTokenizer.encode_corpus`, what fst-train runs (bounded pieces, flat
  int32 arrays);
- `lists` (only up to `--lists_max_mb`): the former `encode_documents`, every body in one
  `tokenizers` call and every sequence as Python lists (a 200 MB line needed 21 GB).

Both encoders run on the same corpus, alternating, `--repeats` times; medians are reported.
Writes benchmarks/results/tokenization-memory-gpt2-bpe-fst-train.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import common

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results"
WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "a",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
]

WORKER = r"""
import json, resource, sys, time
from fst.core.constants import LOSS_IGNORE
from fst.core.documents import read_documents
from fst.core.tokenization import DocumentTokenizer

def lists(tok, docs):  # the former encode_documents, as it was
    bodies = tok._encode_batch([d.body for d in docs])
    keep = [tok._keep_meta(d, None) for d in docs]
    metas = iter(tok._encode_batch([d.meta for d, k in zip(docs, keep) if k]))
    out = []
    for ids, kept in zip(bodies, keep):
        meta = tok._meta_part(next(metas)) if kept else []
        seq = [tok.start_of_document_id, *ids, tok.eos_token_id]
        labels = [LOSS_IGNORE, *ids, tok.eos_token_id]
        for start in range(0, len(seq), tok.max_body_len):
            c, l = seq[start:start + tok.max_body_len], labels[start:start + tok.max_body_len]
            if start and len(c) == 1:
                break
            if start:
                l[0] = LOSS_IGNORE
            out.append((meta + c, [LOSS_IGNORE] * len(meta) + l))
    return sum(len(t) for t, _ in out)

path, encoder = sys.argv[1], sys.argv[2]
docs = read_documents(path)
tok = DocumentTokenizer.gpt2()
tok.encode_corpus(docs[-2:])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
tokens = tok.encode_corpus(docs).num_tokens if encoder == "corpus" else lists(tok, docs)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"tokens": tokens, "seconds": seconds, "baseline_bytes": before,
                  "peak_bytes": peak}))
"""


def write_corpus(path: Path, size_mb: int, seed: int = 0) -> int:
    """Half the bytes in one single-line document, the rest in 1.4 KB documents."""
    import numpy as np

    rng = np.random.default_rng(seed)
    words = np.array(WORDS)
    target = size_mb * 1_000_000
    with path.open("w") as f:
        f.write('{"body": "')
        written = 0
        while written < target // 2:
            part = " ".join(rng.choice(words, 100_000)) + " "
            f.write(part)
            written += len(part)
        f.write('end"}\n')
        while written < target:
            line = json.dumps({"body": " ".join(rng.choice(words, 400)), "meta": "a title"})
            f.write(line + "\n")
            written += len(line) + 1
    return path.stat().st_size


def run_worker(path: Path, encoder: str, timeout_s: float) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", WORKER, str(path), encoder],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--sizes_mb", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--lists_max_mb", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timeout_s", type=float, default=3600)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--note", default="", help="a line for the report (what was not run)")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes_mb:
            path = Path(tmp) / f"corpus_{size}mb.documents"
            file_bytes = write_corpus(path, size)
            encoders = ["corpus"] + (["lists"] if size <= args.lists_max_mb else [])
            runs: dict[str, list[dict[str, Any]]] = {e: [] for e in encoders}
            for _ in range(args.repeats):
                for encoder in encoders:  # alternating: machine drift hits both alike
                    runs[encoder].append(run_worker(path, encoder, args.timeout_s))
                    print(size, encoder, runs[encoder][-1], flush=True)
            for encoder, results in runs.items():
                ok = [r for r in results if "error" not in r]
                row: dict[str, Any] = {"size_mb": size, "file_bytes": file_bytes}
                row["encoder"] = encoder
                if not ok:
                    row["error"] = results[0]["error"]
                else:
                    tokens = ok[0]["tokens"]
                    seconds = common.median(r["seconds"] for r in ok)
                    grew = common.median(r["peak_bytes"] - r["baseline_bytes"] for r in ok)
                    peak = common.median(r["peak_bytes"] for r in ok)
                    row.update(tokens=tokens, seconds=seconds, tokens_per_s=tokens / seconds)
                    row.update(peak_mib=peak / 2**20, grew_mib=grew / 2**20)
                    row.update(bytes_per_token=grew / tokens, runs=len(ok))
                rows.append(row)
            path.unlink()
    report = {"machine": common.machine_description(), "rows": rows, "note": args.note}
    report["command"] = "python -m benchmarks.sizes.tokenization_memory " + " ".join(
        argv or sys.argv[1:]
    )
    common.write_report(
        args.out, "tokenization-memory-gpt2-bpe-fst-train", report, markdown(report)
    )
    return 0


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Tokenizing a training corpus: throughput and peak memory",
        "",
        "`python -m benchmarks.sizes.tokenization_memory` (GPT-2 BPE, document format; half of each",
        "corpus one single-line document). `grew`: peak RSS above reading the documents and",
        "loading the tokenizer. `corpus` is fst-train's encoder; `lists` the former one.",
        "",
        "| corpus | encoder | tokens | tokens/s | peak RSS MiB | grew MiB | bytes/token |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['size_mb']} MB | {r['encoder']} | failed: {r['error']} ||||")
            continue
        lines.append(
            f"| {r['size_mb']} MB | {r['encoder']} | {r['tokens']:,} | {r['tokens_per_s']:,.0f} "
            f"| {r['peak_mib']:,.0f} | {r['grew_mib']:,.0f} | {r['bytes_per_token']:.1f} |"
        )
    if report.get("note"):
        lines += ["", report["note"]]
    m = report["machine"]
    lines += ["", f"`{report.get('command', '')}`", "", f"Machine: {json.dumps(m)}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
