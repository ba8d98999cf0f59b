"""fst-export: a training checkpoint or a Hugging Face model (GPT-2, Llama, Qwen2/3, Mistral)
→ a verified ONNX bundle.

Exit codes: 0 written, 2 bad input or failed verification (one line on stderr, no bundle
left behind), 1 unexpected error. Details and tracebacks go to the log file.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DEFAULT_LOG_FILE = Path(tempfile.gettempdir()) / "fst-export.log"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fst-export",
        description=(
            "Export an fst training checkpoint (--ckpt) or a Hugging Face GPT-2, Llama, Qwen2, "
            "Qwen3 or Mistral model (--model_path) to an ONNX bundle with KV cache: model.onnx, tokenizer.json and "
            "fst_bundle.json. The bundle is checked against PyTorch before it is written."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", type=Path, help="checkpoint (.ckpt) written by fst-train")
    source.add_argument(
        "--model_path",
        help="Hugging Face model folder or hub name (plain LM, no document special tokens)",
    )
    parser.add_argument("--output", type=Path, required=True, help="bundle folder to create")
    parser.add_argument(
        "--optimize",
        action="store_true",
        help="static shapes and ONNX Runtime fused operators (attention, layer norm, GELU); "
        "the graph then needs onnxruntime's com.microsoft ops",
    )
    parser.add_argument(
        "--kv_layout",
        choices=["auto", "shared", "concat", "shared_right"],
        default="auto",
        help="with --optimize: 'shared' = one preallocated KV buffer per layer written in "
        "place (GroupQueryAttention; CPU runtime; head size a multiple of 8), 'concat' = "
        "past and new keys concatenated every step (MultiHeadAttention; TensorRT needs the "
        "plain graph: no --optimize), 'shared_right' = the CUDA layout (GroupQueryAttention "
        "over right-padded buffers kept on the device; with --fp16; UNTESTED ON GPU), "
        "'auto' = shared when possible (not fp16)",
    )
    parser.add_argument(
        "--quantize",
        choices=["int8", "int4"],
        help="CPU inference: 'int8' = dynamic int8 weights and activations; 'int4' = "
        "block-wise 4-bit weights (ONNX Runtime MatMulNBits), the smallest bundle",
    )
    parser.add_argument(
        "--fp16", action="store_true", help="float16 weights and I/O (CUDA/TensorRT)"
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    parser.add_argument(
        "--logits",
        choices=["last", "all"],
        default="last",
        help="'last': logits of the last position only (much faster prefill); "
        "'all': every position",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing bundle folder")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.add_argument(
        "--log_file", type=Path, default=DEFAULT_LOG_FILE, help="debug log with tracebacks"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM (docker stop, a CI timeout) and SIGHUP (the terminal closed) unwind like
    # Ctrl-C, so the temporary bundle folder is removed instead of left behind. (SIGKILL
    # cannot be caught: the next export removes what such a run left, see bundle_writer.)
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in _UNWINDING_SIGNALS}
    try:
        with _logging_to(args.log_file):
            return _run(args)
    except KeyboardInterrupt:
        print("fst-export: interrupted; no bundle written", file=sys.stderr)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_UNWINDING_SIGNALS = (signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else []))


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace) -> int:
    log = logging.getLogger("fst.export")
    log.debug("arguments: %s", vars(args))
    from fst.export.exporter import ExportError, export_bundle

    try:
        manifest = export_bundle(
            args.output,
            ckpt=args.ckpt,
            model_path=args.model_path,
            optimize=args.optimize,
            quantize=args.quantize,
            fp16=args.fp16,
            opset=args.opset,
            force=args.force,
            logits=args.logits,
            kv_layout=args.kv_layout,
            progress=not args.quiet,
        )
    except ExportError as e:
        log.debug("export failed", exc_info=True)
        print(f"fst-export: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        log.exception("unexpected error")
        print(
            f"fst-export: unexpected error: {type(e).__name__}: {_first_line(e)} "
            f"(traceback in {args.log_file}); no bundle written",
            file=sys.stderr,
        )
        return 1
    parity = manifest.parity
    print(
        f"{args.output}: {manifest.graph.variant} bundle, logits={manifest.graph.logits}, "
        f"parity max |diff| {parity.max_abs_diff:.3g}, top-1 agreement "
        f"{parity.top1_agreement:.3f}"
    )
    return 0


@contextmanager
def _logging_to(log_file: Path) -> Iterator[None]:
    """Everything (ours, transformers', warnings) to the log file; the screen stays clean.

    Restores the previous logging state afterwards, so main() can run in-process (tests).
    """
    import onnxruntime
    from transformers.utils import logging as hf_logging

    handler = logging.FileHandler(log_file, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root, ours = logging.getLogger(), logging.getLogger("fst")
    saved = (root.level, ours.level)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    ours.setLevel(logging.DEBUG)
    logging.captureWarnings(True)
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    hf_logging.disable_progress_bar()  # our own display shows the loading stage
    onnxruntime.set_default_logger_severity(3)  # errors only; ORT warnings are noise here
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            yield
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(saved[0])
        ours.setLevel(saved[1])
        logging.captureWarnings(False)
        hf_logging.disable_propagation()
        hf_logging.enable_default_handler()
        hf_logging.enable_progress_bar()
        onnxruntime.set_default_logger_severity(2)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""


if __name__ == "__main__":
    sys.exit(main())
