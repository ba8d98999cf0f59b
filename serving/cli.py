"""`fst-serve`: serve a bundle over HTTP.

    fst-serve --bundle runs/my-bundle --host 0.0.0.0 --port 9228

Every flag is also an environment variable `FST_<NAME>` (flags win). On SIGTERM or Ctrl-C
the server keeps listening while running generations finish (for `--shutdown_timeout_s`,
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
from typing import TYPE_CHECKING

from fst.core.bundle import check_bundle as bundle_integrity_check
from fst.core.cli_settings import SettingsError, fail, parse_settings
from fst.core.cli_settings import build_parser as _build_parser
from fst.serving.settings import ServingSettings

if TYPE_CHECKING:
    from fst.serving.server import FstServer

logger = logging.getLogger("fst.serving")

PROG = "fst-serve"
DESCRIPTION = (
    "Serve an fst bundle: the original /generated_texts/ API and an OpenAI-compatible "
    "/v1/completions, with continuous batching. Every flag is also a variable FST_<NAME>."
)


def build_parser() -> argparse.ArgumentParser:
    """One flag per settings field, with the field's description and variable as help."""
    return _build_parser(ServingSettings, prog=PROG, description=DESCRIPTION)


def load_settings(argv: Sequence[str] | None = None) -> ServingSettings:
    """Settings from flags over environment; raises SettingsError naming the flag."""
    return parse_settings(ServingSettings, argv, prog=PROG, description=DESCRIPTION)


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
        if settings.bundle is None:
            raise SettingsError("--bundle (or env FST_BUNDLE) is required")
    except ValueError as exc:
        return fail(PROG, exc)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:  # fail now, with one line, not in the lifespan
        check_bundle(Path(settings.bundle), hashes=settings.verify)
    except (OSError, ValueError) as exc:
        logger.debug("bundle check failed", exc_info=True)
        return fail(PROG, SettingsError(f"--bundle: {' '.join(str(exc).split())}"))

    from fst.serving.app import create_app
    from fst.serving.server import build_server

    app = create_app(settings)
    return run(build_server(app, settings))


def run(server: FstServer, sockets: list[socket.socket] | None = None) -> int:
    """Serve until a signal (exit 0) or a failed model load (one line, exit 2)."""
    server.run(sockets=sockets)
    if server.state.status == "failed":
        return fail(PROG, SettingsError(f"--bundle: {server.state.load_error}"))
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
