"""fst-eval: the unlikelihood paper's metrics for a checkpoint (or a bundle) on documents.

    fst-eval --ckpt exp/models/last.ckpt --documents valid.documents --output_dir out/

writes `out/<name>.eval.json` and `out/<name>.eval.md` (<name>: the checkpoint's file stem
or the bundle's folder name) and prints the Markdown table. The protocol is described in
`fst.evaluation.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fst.core.documents import DocumentError, write_text_atomic

if TYPE_CHECKING:
    from fst.evaluation.evaluate import EvalConfig

DEBUG_LOG = "fst-eval.debug.log"


def build_parser() -> argparse.ArgumentParser:
    from fst.evaluation.evaluate import DECODINGS, EvalConfig  # the defaults shown by --help

    d = EvalConfig()
    p = argparse.ArgumentParser(
        prog="fst-eval",
        description=(
            "Perplexity, next-token acc/rep/wrep/uniq (true text, 128-token window) and "
            "seq-rep-4/uniq-seq of 100-token continuations of 50-token prefixes (greedy, "
            "top-k, top-p), as in Welleck et al. 2019. Writes <name>.eval.json and "
            "<name>.eval.md and prints the table."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="fst-train checkpoint (.ckpt): every metric")
    source.add_argument(
        "--bundle",
        help="fst-export bundle folder: sequence-level metrics only, via fst.runtime",
    )
    p.add_argument("--documents", required=True, help="JSON-lines documents (e.g. valid.documents)")
    p.add_argument(
        "--output_dir", default=None, help="default: the checkpoint's folder / the bundle"
    )
    p.add_argument("--name", default=None, help="file name stem and table row name")
    p.add_argument("--prefix_len", type=int, default=d.prefix_len, help="prompt body tokens")
    p.add_argument(
        "--continuation_len",
        type=int,
        default=d.continuation_len,
        help="generated tokens (EOS masked)",
    )
    p.add_argument("--window", type=int, default=d.window, help="rep/wrep context window")
    p.add_argument(
        "--max_prefixes",
        type=int,
        default=None,
        help="use this many prefixes, evenly spaced (default: every 50-token block)",
    )
    p.add_argument("--batch_size", type=int, default=d.batch_size, help="sequences per forward")
    p.add_argument("--top_k", type=int, default=d.top_k, help="k of top-k sampling")
    p.add_argument("--top_p", type=float, default=d.top_p, help="p of top-p (nucleus) sampling")
    p.add_argument("--seed", type=int, default=d.seed, help="sampling seed")
    p.add_argument(
        "--decodings",
        default=",".join(DECODINGS),
        help="comma-separated subset of " + ",".join(DECODINGS),
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: the library's)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from fst.core.bundle import BundleError
    from fst.evaluation.evaluate import EvalConfig, EvaluationError, markdown_table
    from fst.training.checkpoint import CheckpointError

    source = Path(args.ckpt or args.bundle)
    name = args.name or (source.stem if args.ckpt else source.resolve().name)
    output_dir = (
        Path(args.output_dir) if args.output_dir else (source.parent if args.ckpt else source)
    )
    try:
        config = EvalConfig(
            prefix_len=args.prefix_len,
            continuation_len=args.continuation_len,
            window=args.window,
            max_prefixes=args.max_prefixes,
            batch_size=args.batch_size,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
            decodings=tuple(d.strip() for d in args.decodings.split(",") if d.strip()),
        )
        if not source.exists():
            raise EvaluationError(f"{source}: no such {'file' if args.ckpt else 'folder'}")
        results = run(args, source, config)
        results["name"] = name
        table = markdown_table([(name, results)])
        output_dir.mkdir(parents=True, exist_ok=True)
        json_path, md_path = output_dir / f"{name}.eval.json", output_dir / f"{name}.eval.md"
        write_text_atomic(json_path, json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        write_text_atomic(md_path, table)
    except (EvaluationError, CheckpointError, DocumentError, BundleError, OSError) as e:
        # One line: some messages quote a library's multi-line error; its first line says it.
        print(f"fst-eval: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    except Exception as e:
        log = _write_debug_log(output_dir)
        print(f"fst-eval: failed: {type(e).__name__}: {e} (traceback in {log})", file=sys.stderr)
        return 1
    print(table, end="")
    print(f"Wrote {json_path} and {md_path}")
    return 0


def run(args: argparse.Namespace, source: Path, config: EvalConfig) -> dict[str, Any]:
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
