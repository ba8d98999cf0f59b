"""fst-eval: the unlikelihood paper's metrics for a checkpoint (or a bundle) on documents.

    fst-eval --ckpt exp/models/last.ckpt --documents valid.documents --output_dir out/

writes `out/<name>.eval.json` and `out/<name>.eval.md` (<name>: the checkpoint's file stem
or the bundle's folder name) and prints the Markdown table. The protocol is described in
`fst.evaluation.evaluate`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fst.core.cli_settings import build_parser as _build_parser
from fst.core.cli_settings import fail, option, parse_settings
from fst.core.documents import DocumentError, write_text_atomic
from fst.evaluation.config import EvalConfig, EvaluationError

PROG = "fst-eval"
DESCRIPTION = (
    "Perplexity, next-token acc/rep/wrep/uniq (true text, 128-token window) and "
    "seq-rep-4/uniq-seq of 100-token continuations of 50-token prefixes (greedy, "
    "top-k, top-p), as in Welleck et al. 2019. Writes <name>.eval.json and "
    "<name>.eval.md and prints the table."
)
DEBUG_LOG = "fst-eval.debug.log"
_INPUT = "what to evaluate (--ckpt or --bundle)"


@dataclass(frozen=True, kw_only=True)
class EvalArgs(EvalConfig):
    """fst-eval's options: the protocol's (`EvalConfig`) and what to evaluate, where to write."""

    ckpt: Path | None = option(
        None, group=_INPUT, help="fst-train checkpoint (.ckpt): every metric"
    )
    bundle: Path | None = option(
        None, group=_INPUT, help="fst-export bundle folder: sequence-level metrics, via fst.runtime"
    )
    documents: Path = option(group=_INPUT, help="JSON-lines documents (e.g. valid.documents)")
    output_dir: Path | None = option(
        None,
        group=_INPUT,
        shown_default="the checkpoint's folder / the bundle",
        help="where to write",
    )
    name: str | None = option(
        None,
        group=_INPUT,
        shown_default="the checkpoint's file stem / the bundle's folder name",
        help="file name stem and table row name",
    )
    threads: int | None = option(
        None, shown_default="the library's", help="CPU threads (torch / ONNX Runtime)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.ckpt is None) == (self.bundle is None):
            raise EvaluationError("give --ckpt or --bundle (one of them)")
        if self.threads is not None and self.threads < 1:
            raise EvaluationError(f"--threads must be >= 1, got {self.threads}")

    @property
    def source(self) -> Path:
        return self.ckpt if self.ckpt is not None else self.bundle

    @property
    def row_name(self) -> str:
        return self.name or (self.ckpt.stem if self.ckpt else self.bundle.resolve().name)

    @property
    def out_dir(self) -> Path:
        if self.output_dir is not None:
            return self.output_dir
        return self.ckpt.parent if self.ckpt else self.bundle

    def config(self) -> EvalConfig:
        """The protocol alone (what the results record)."""
        return EvalConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(EvalConfig)})


def build_parser() -> argparse.ArgumentParser:
    return _build_parser(EvalArgs, prog=PROG, description=DESCRIPTION)


def parse_args(argv: list[str] | None = None) -> EvalArgs:
    return parse_settings(EvalArgs, argv, prog=PROG, description=DESCRIPTION)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except ValueError as e:
        return fail(PROG, e)
    from fst.core.bundle import BundleError
    from fst.evaluation.evaluate import markdown_table
    from fst.training.checkpoint import CheckpointError

    source, name, output_dir = args.source, args.row_name, args.out_dir
    try:
        if not source.exists():
            raise EvaluationError(f"{source}: no such {'file' if args.ckpt else 'folder'}")
        results = run(args, source, args.config())
        results["name"] = name
        table = markdown_table([(name, results)])
        output_dir.mkdir(parents=True, exist_ok=True)
        json_path, md_path = output_dir / f"{name}.eval.json", output_dir / f"{name}.eval.md"
        write_text_atomic(json_path, json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        write_text_atomic(md_path, table)
    except (EvaluationError, CheckpointError, DocumentError, BundleError, OSError) as e:
        return fail(PROG, e)  # one line: a library's multi-line error is cut to its first
    except Exception as e:
        log = _write_debug_log(output_dir)
        print(f"{PROG}: failed: {type(e).__name__}: {e} (traceback in {log})", file=sys.stderr)
        return 1
    print(table, end="")
    print(f"Wrote {json_path} and {md_path}")
    return 0


def run(args: EvalArgs, source: Path, config: EvalConfig) -> dict[str, Any]:
    """Read the documents (fast, so a bad file fails first), load the model, evaluate."""
    from fst.core.documents import read_documents
    from fst.evaluation.evaluate import evaluate, evaluate_bundle

    documents = read_documents(args.documents)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if args.bundle:
        results = evaluate_bundle(source, documents, config, threads=args.threads)
        results["source"] = {"bundle": str(source)}
    else:
        from fst.training.checkpoint import load_checkpoint

        loaded = load_checkpoint(source)
        results = evaluate(loaded.model, loaded.tokenizer, documents, config)
        info = loaded.info
        results["source"] = {
            "checkpoint": str(source),
            "global_step": info.get("global_step"),
            "epoch": info.get("epoch"),
            "training_args": info.get("training_args", {}),
            "num_parameters": loaded.model.num_parameters(),
        }
    results["documents"] = str(args.documents)
    return results


def _write_debug_log(output_dir: Path) -> Path:
    """The traceback of an unexpected failure, beside the outputs (else in the cwd)."""
    folder = output_dir if output_dir.is_dir() else Path.cwd()
    path = folder / DEBUG_LOG
    path.write_text(traceback.format_exc(), encoding="utf-8")
    return path


if __name__ == "__main__":
    sys.exit(main())
