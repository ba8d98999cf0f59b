"""fst-export: a training checkpoint or a Hugging Face model (GPT-2, Llama, Qwen2/3, Mistral;
a folder, a hub name or a GGUF file) → a verified ONNX bundle.

Exit codes: 0 written, 2 bad input or failed verification (one line on stderr, no bundle
left behind), 1 unexpected error. Details and tracebacks go to the log file.
"""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from fst.core.cli_settings import build_parser as _build_parser
from fst.core.cli_settings import fail, option, parse_settings
from fst.export.options import ExportOptions

PROG = "fst-export"
# Writing the bundle failed for want of room: one line, not "unexpected error".
_NO_ROOM = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
DESCRIPTION = (
    "Export an fst training checkpoint (--ckpt) or a Hugging Face GPT-2, Llama, Qwen2, Qwen3 "
    "or Mistral model (--model_path: a folder, a hub name or a llama.cpp GGUF file) to an ONNX "
    "bundle with KV cache: model.onnx, "
    "tokenizer.json and fst_bundle.json. The bundle is checked against PyTorch before it is "
    "written."
)
DEFAULT_LOG_FILE = Path(tempfile.gettempdir()) / "fst-export.log"
_SOURCE = "what to export (--ckpt or --model_path)"


@dataclass(frozen=True, kw_only=True)
class ExportArgs(ExportOptions):
    """fst-export's options: what to export and where, and the graph (`ExportOptions`, the
    declaration `export_bundle` takes too)."""

    ckpt: Path | None = option(None, group=_SOURCE, help="checkpoint (.ckpt) written by fst-train")
    model_path: str | None = option(
        None,
        group=_SOURCE,
        help="Hugging Face model folder or hub name, or a GGUF file (or a folder holding one; "
        "weights dequantized to fp32) of a supported family (plain LM, no document special "
        "tokens)",
    )
    output: Path = option(group=_SOURCE, help="bundle folder to create")
    force: bool = option(False, help="replace an existing bundle folder")
    quiet: bool = option(False, help="no progress display")
    log_file: Path = option(DEFAULT_LOG_FILE, help="debug log with tracebacks")

    def __post_init__(self) -> None:
        if (self.ckpt is None) == (self.model_path is None):
            raise ValueError("give --ckpt or --model_path (one of them)")
        super().__post_init__()

    def options(self) -> ExportOptions:
        """The graph options alone."""
        return ExportOptions(**{f.name: getattr(self, f.name) for f in fields(ExportOptions)})


def build_parser() -> argparse.ArgumentParser:
    return _build_parser(ExportArgs, prog=PROG, description=DESCRIPTION)


def parse_args(argv: list[str] | None = None) -> ExportArgs:
    return parse_settings(ExportArgs, argv, prog=PROG, description=DESCRIPTION)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except ValueError as e:
        return fail(PROG, e)
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


def _run(args: ExportArgs) -> int:
    log = logging.getLogger("fst.export")
    log.debug("arguments: %s", asdict(args))
    from fst.export.exporter import ExportError, export_bundle

    try:
        manifest = export_bundle(
            args.output,
            ckpt=args.ckpt,
            model_path=args.model_path,
            options=args.options(),
            force=args.force,
            progress=not args.quiet,
        )
    except ExportError as e:
        log.debug("export failed", exc_info=True)
        return fail(PROG, e)
    except Exception as e:
        if isinstance(e, OSError) and e.errno in _NO_ROOM:
            log.debug("no room for the bundle", exc_info=True)
            print(
                f"fst-export: error: cannot write the bundle beside {args.output}: "
                f"{e.strerror} (the disk is full or a file size limit is reached); "
                "no bundle written",
                file=sys.stderr,
            )
            return 1
        log.exception("unexpected error")
        print(
            f"fst-export: unexpected error: {type(e).__name__}: {_first_line(e)} "
            f"(traceback in {args.log_file}); no bundle written",
            file=sys.stderr,
        )
        return 1
    parity = manifest.parity
    origin = (
        f" (weights dequantized from {manifest.source_format})" if manifest.source_format else ""
    )
    if manifest.graph.int4 is not None and manifest.graph.int4.from_gguf:
        origin = f" (the {manifest.source_format} file's own blocks, not re-quantised)"
    chat = f", chat template from {manifest.chat.template_source}" if manifest.chat else ""
    print(
        f"{args.output}: {manifest.graph.variant} bundle{origin}, logits={manifest.graph.logits}, "
        f"parity max |diff| {parity.max_abs_diff:.3g}, top-1 agreement "
        f"{parity.top1_agreement:.3f}{chat}"
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
