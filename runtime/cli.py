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
from dataclasses import dataclass, fields
from typing import Any

from fst.core.cli_settings import build_parser as _build_parser
from fst.core.cli_settings import comma_list, fail, option, parse_settings
from fst.core.generation_params import GenerationParams

log = logging.getLogger("fst.generate")

PROG = "fst-generate"
DESCRIPTION = "Generate text from an fst bundle (ONNX Runtime, no torch needed)."
_SAMPLING = "generation"
_D = GenerationParams()


# What each generation parameter does, for every CLI that exposes it (fst-generate, fst-chat).
GENERATION_HELP = {
    "max_new_tokens": "how many tokens to generate at most",
    "min_new_tokens": "EOS is impossible before this many tokens",
    "num_return_sequences": "samples per prompt",
    "temperature": "0 = greedy",
    "top_k": "keep the k most likely tokens (0 = off)",
    "top_p": "keep the smallest set of tokens with this probability mass (1 = off)",
    "repetition_penalty": "penalise tokens already in the prompt or output (1 = off)",
    "presence_penalty": "subtracted from tokens already in the answer (OpenAI's; 0 = off)",
    "frequency_penalty": "subtracted per occurrence in the answer (OpenAI's; 0 = off)",
    "seed": "random seed: the same seed gives the same samples",
}


def generation_option(name: str) -> Any:
    """A GenerationParams field as a flag: None = the bundle's default (its GenerationParams)."""
    fallback = getattr(_D, name)
    return option(
        None,
        group=_SAMPLING,
        shown_default=f"the bundle's, else {'none' if fallback is None else fallback}",
        help=GENERATION_HELP[name],
    )


def given_generation_params(args: Any) -> dict[str, Any]:
    """The generation parameters given on a command line: each GenerationParams field the
    settings class declares, unless left unset (None, no --stop, no --ignore_eos)."""
    names = [f.name for f in fields(GenerationParams) if hasattr(args, f.name)]
    given = {name: getattr(args, name) for name in names}
    return {k: v for k, v in given.items() if v is not None and v != () and v is not False}


def load_generator(args: Any, verify: bool = False) -> Any:
    """The bundle of a CLI's `--bundle`, with its provider, thread and page options."""
    from fst.runtime.generator import Generator

    return Generator.from_bundle(
        args.bundle,
        providers=list(args.providers) if args.providers else None,
        threads=args.threads,
        verify=verify,
        huge_pages=args.huge_pages,
    )


@dataclass(frozen=True)
class GenerateArgs:
    """fst-generate's options; the generation parameters are checked here, before loading."""

    prompt: str = option(
        positional=True, help="the text to continue (a document body for document bundles)"
    )
    bundle: str = option(metavar="PATH", help="bundle folder written by fst-export")
    meta: str | None = option(None, help="document meta (document-format bundles only)")
    max_new_tokens: int | None = generation_option("max_new_tokens")
    min_new_tokens: int | None = generation_option("min_new_tokens")
    num_return_sequences: int | None = generation_option("num_return_sequences")
    temperature: float | None = generation_option("temperature")
    top_k: int | None = generation_option("top_k")
    top_p: float | None = generation_option("top_p")
    repetition_penalty: float | None = generation_option("repetition_penalty")
    seed: int | None = generation_option("seed")
    stop: tuple[str, ...] = option(
        (), group=_SAMPLING, repeat=True, help="stop string (repeatable); the text ends before it"
    )
    ignore_eos: bool = option(False, group=_SAMPLING, help="keep generating after EOS")
    stream: bool = option(False, help="print text as it is generated")
    providers: tuple[str, ...] | None = option(
        None,
        parse=comma_list,
        shown_default="the best available",
        help="comma-separated ONNX Runtime providers, e.g. CPUExecutionProvider",
    )
    threads: int | None = option(None, shown_default="ONNX Runtime's", help="intra-op threads")
    huge_pages: bool = option(
        True, help="move the weights into 2 MiB pages on Linux (--no_huge_pages: 4 KiB pages)"
    )
    verify: bool = option(
        False,
        help="check every bundle file's sha256 against the manifest before loading (sizes are "
        "always checked)",
    )
    debug: bool = option(False, help="show tracebacks")

    def __post_init__(self) -> None:
        _check_text_arguments(self)
        try:  # the ranges, once; the bundle's own defaults are merged after loading
            GenerationParams(**{k: v for k, v in self.overrides().items() if k != "stop"})
        except ValueError as e:
            raise ValueError(f"--{e}") from None
        if self.stream and (self.num_return_sequences or 1) != 1:
            raise ValueError("--stream works with --num_return_sequences 1")

    def overrides(self) -> dict:
        """The generation parameters given on the command line."""
        return given_generation_params(self)


def _check_text_arguments(args: GenerateArgs) -> None:
    """ValueError naming the argument whose bytes are not UTF-8 (Python keeps such bytes as
    lone surrogates, which no tokenizer accepts)."""
    texts = [("prompt", args.prompt), ("--meta", args.meta)]
    texts += [("--stop", stop) for stop in args.stop]
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


def build_parser() -> argparse.ArgumentParser:
    return _build_parser(GenerateArgs, prog=PROG, description=DESCRIPTION)


def parse_args(argv: list[str] | None = None) -> GenerateArgs:
    return parse_settings(GenerateArgs, argv, prog=PROG, description=DESCRIPTION)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except ValueError as e:
        return fail(PROG, e)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)
    from fst.runtime.session import ProviderUnavailableError

    try:
        generator = load_generator(args, verify=args.verify)
        params = generator.default_params.with_overrides(**args.overrides())
        prompt = {"body": args.prompt, "meta": args.meta} if args.meta is not None else args.prompt
        if args.stream:
            if params.num_return_sequences != 1:  # the bundle's default may be more
                raise ValueError("--stream works with --num_return_sequences 1")
            for piece in generator.stream(prompt, params):
                print(piece, end="", flush=True)
            print()
            return 0
        completions = generator.generate(prompt, params)
    except (ValueError, OSError, ProviderUnavailableError) as e:
        log.debug("fst-generate failed", exc_info=True)
        return fail(PROG, e)
    for c in completions:
        if len(completions) > 1:
            print(f"=== sample {c.index} ({c.finish_reason}) ===")
        print(c.text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
