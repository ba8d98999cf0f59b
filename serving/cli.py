"""`fst-serve`: serve a bundle over HTTP.

    fst-serve --bundle runs/my-bundle --host 0.0.0.0 --port 9228

Every flag is also an environment variable `FST_<NAME>` (flags win). Uvicorn handles
SIGTERM and Ctrl-C: it stops accepting connections, lets in-flight requests finish for
`--shutdown-timeout-s` seconds, then the lifespan cancels what is left and joins the
scheduler's worker. One process serves one model; scale out with more processes or
replicas behind a load balancer.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any, Literal, get_args, get_origin

from pydantic import ValidationError

from fst.bundle import BundleManifest
from fst.serving.settings import ServingSettings

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
        BundleManifest.load(settings.bundle)  # fail now, with one line, not in the lifespan
    except (OSError, ValueError) as exc:
        logger.debug("bundle check failed", exc_info=True)
        message = " ".join(str(exc).split())
        print(f"fst-serve: --bundle: {message}", file=sys.stderr)
        return 2

    import uvicorn

    from fst.serving.app import create_app

    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
    )
    server = uvicorn.Server(config)
    server.run()  # returns after a graceful shutdown (SIGTERM / Ctrl-C)
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
