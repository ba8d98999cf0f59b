"""`fst-serve`: serve a bundle over HTTP.

    fst-serve --bundle runs/my-bundle --host 0.0.0.0 --port 9228

Every flag is also an environment variable `FST_<NAME>` (flags win). On SIGTERM or Ctrl-C
the server keeps listening while running generations finish (for `--shutdown-timeout-s`,
then they end with an error), /ready answering 503 "stopping"; then it closes and exits 0
(see server.py). A bundle that cannot be loaded is one line on stderr and exit status 2.
One process serves one model; scale out with more processes or replicas behind a load
balancer.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

from pydantic import ValidationError

from fst.core.bundle import check_bundle as bundle_integrity_check
from fst.serving.settings import ServingSettings

if TYPE_CHECKING:
    from fst.serving.server import FstServer

logger = logging.getLogger("fst.serving")


def build_parser() -> argparse.ArgumentParser:
    """One flag per settings field, with the field's description and env variable as help."""
    parser = argparse.ArgumentParser(
        prog="fst-serve",
        description="Serve an fst bundle: the original /generated_texts/ API and an "
        "OpenAI-compatible /v1/completions, with continuous batching.",
    )
    for name, field in ServingSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = "none" if field.default is None else field.default
        if name == "api_key":
            default = "none"  # never print a secret
        help_text = f"{field.description} (env FST_{name.upper()}; default: {default})"
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        elif get_origin(field.annotation) is Literal:
            parser.add_argument(flag, choices=get_args(field.annotation), help=help_text)
        else:
            parser.add_argument(flag, metavar=name.upper(), help=help_text)
    return parser


def load_settings(argv: Sequence[str] | None = None) -> ServingSettings:
    """Settings from flags over environment; raises ValidationError naming the field."""
    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    return ServingSettings(**overrides)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    field = ".".join(str(p) for p in error["loc"]) or "settings"
    return f"--{field.replace('_', '-')}: {error['msg']}"


def check_bundle(folder: Path, *, hashes: bool = False) -> None:
    """The cheap part of loading, before listening: fst.core.bundle's check (manifest; files
    present, not empty, of the recorded sizes; sha256 with `hashes`) and the tokenizer valid
    JSON. Raises ValueError (BundleError) naming the file."""
    manifest = bundle_integrity_check(folder, hashes=hashes)
    tokenizer = folder / manifest.tokenizer.file
    try:
        json.loads(tokenizer.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{tokenizer}: not valid JSON ({exc}); export the bundle again") from None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except ValidationError as exc:
        print(f"fst-serve: {_first_error(exc)}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if settings.bundle is None:
        print("fst-serve: --bundle (or FST_BUNDLE) is required", file=sys.stderr)
        return 2
    try:
        check_bundle(
            Path(settings.bundle), hashes=settings.verify
        )  # fail now, with one line, not in the lifespan
    except (OSError, ValueError) as exc:
        logger.debug("bundle check failed", exc_info=True)
        print(f"fst-serve: --bundle: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2

    from fst.serving.app import create_app
    from fst.serving.server import build_server

    app = create_app(settings)
    return run(build_server(app, settings))


def run(server: FstServer, sockets: list[socket.socket] | None = None) -> int:
    """Serve until a signal (exit 0) or a failed model load (one line, exit 2)."""
    server.run(sockets=sockets)
    if server.state.status == "failed":
        print(f"fst-serve: --bundle: {server.state.load_error}", file=sys.stderr)
        return 2
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
