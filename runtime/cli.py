"""fst-generate: continue a prompt with an fst bundle, from the command line.

    fst-generate --bundle bundle/ "The meaning of life is" --max_new_tokens 40 --seed 0
    fst-generate --bundle bundle/ "Once upon a time" --meta "fairy tale" --stream

Bad input (an argument that is not UTF-8, a broken bundle, a bad parameter) prints one line
on stderr and exits with 2; the traceback goes to the debug log (`--debug` shows it).
"""

from __future__ import annotations

import argparse
import logging
import sys

from fst.core.generation_params import GenerationParams

log = logging.getLogger("fst.generate")

# GenerationParams fields exposed as options: (type, help).
_PARAM_OPTIONS = {
    "max_new_tokens": (int, "how many tokens to generate at most"),
    "min_new_tokens": (int, "EOS is impossible before this many tokens"),
    "num_return_sequences": (int, "samples per prompt"),
    "temperature": (float, "0 = greedy"),
    "top_k": (int, "keep the k most likely tokens (0 = off)"),
    "top_p": (float, "keep the smallest set of tokens with this probability mass (1 = off)"),
    "repetition_penalty": (float, "penalise tokens already in the prompt or output (1 = off)"),
    "seed": (int, "random seed: the same seed gives the same samples"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fst-generate",
        description="Generate text from an fst bundle (ONNX Runtime, no torch needed).",
    )
    parser.add_argument(
        "prompt", help="the text to continue (a document body for document bundles)"
    )
    parser.add_argument("--bundle", required=True, help="bundle folder written by fst-export")
    parser.add_argument("--meta", default=None, help="document meta (document-format bundles only)")
    defaults = GenerationParams()
    for name, (kind, text) in _PARAM_OPTIONS.items():
        parser.add_argument(
            f"--{name}",
            type=kind,
            default=None,
            help=f"{text} (default: the bundle's, else {getattr(defaults, name)})",
        )
    parser.add_argument(
        "--stop",
        action="append",
        default=None,
        help="stop string (repeatable); the text ends before it",
    )
    parser.add_argument("--ignore_eos", action="store_true", help="keep generating after EOS")
    parser.add_argument("--stream", action="store_true", help="print text as it is generated")
    parser.add_argument(
        "--providers",
        default=None,
        help="comma-separated ONNX Runtime providers, e.g. CPUExecutionProvider",
    )
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads")
    parser.add_argument(
        "--no_huge_pages",
        action="store_true",
        help="keep the weights in 4 KiB pages (by default they move into 2 MiB pages on Linux)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check every bundle file's sha256 against the manifest before loading (sizes "
        "are always checked)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _check_text_arguments(args: argparse.Namespace) -> None:
    """ValueError naming the argument whose bytes are not UTF-8 (Python keeps such bytes as
    lone surrogates, which no tokenizer accepts)."""
    texts = [("prompt", args.prompt), ("--meta", args.meta)]
    texts += [("--stop", stop) for stop in args.stop or ()]
    for name, text in texts:
        if text is None:
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raw = text[e.start].encode("utf-8", "surrogateescape")
            raise ValueError(
                f"argument {name}: not valid UTF-8 (byte 0x{raw.hex()} at character {e.start})"
            ) from None


def _overrides(args: argparse.Namespace) -> dict:
    out = {n: getattr(args, n) for n in _PARAM_OPTIONS if getattr(args, n) is not None}
    if args.stop:
        out["stop"] = tuple(args.stop)
    if args.ignore_eos:
        out["ignore_eos"] = True
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)
    from fst.runtime.generator import Generator
    from fst.runtime.session import ProviderUnavailableError

    try:
        _check_text_arguments(args)
        providers = args.providers.split(",") if args.providers else None
        generator = Generator.from_bundle(
            args.bundle,
            providers=providers,
            threads=args.threads,
            verify=args.verify,
            huge_pages=not args.no_huge_pages,
        )
        params = generator.default_params.with_overrides(**_overrides(args))
        prompt = {"body": args.prompt, "meta": args.meta} if args.meta is not None else args.prompt
        if args.stream:
            if params.num_return_sequences != 1:
                raise ValueError("--stream works with --num_return_sequences 1")
            for piece in generator.stream(prompt, params):
                print(piece, end="", flush=True)
            print()
            return 0
        completions = generator.generate(prompt, params)
    except (ValueError, OSError, ProviderUnavailableError) as e:
        log.debug("fst-generate failed", exc_info=True)
        print(f"fst-generate: error: {e}", file=sys.stderr)
        return 2
    for c in completions:
        if len(completions) > 1:
            print(f"=== sample {c.index} ({c.finish_reason}) ===")
        print(c.text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
