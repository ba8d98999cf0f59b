"""fst-train: documents → tokenizer → Lightning training of a causal LM.

With no data arguments it trains the `tiny` preset, with a new byte-level BPE, on the
built-in demo corpus (about two minutes on 2 CPU cores). The original project's command
line (README of full_stack_transformer 0.2) works with its flags as written. The options
and their help texts are the fields of `fst.training.config.TrainArgs`.
"""

from __future__ import annotations

import argparse
import sys

from fst.core.cli_settings import build_parser as _build_parser
from fst.core.cli_settings import fail, parse_settings
from fst.training.config import (  # noqa: F401  (re-exported: tests and scripts use them)
    DEMO_MAX_EPOCHS,
    PRESET_NAMES,
    ArgsError,
    TrainArgs,
)

PROG = "fst-train"
DESCRIPTION = (
    "Train a causal LM on JSON-lines documents ({'body': ..., 'meta': ...}). With no "
    "data arguments: the 'tiny' preset with a new byte-level BPE on the built-in demo "
    f"corpus for {DEMO_MAX_EPOCHS} epochs (about 2 minutes on 2 CPU cores). Multi-GPU "
    "and multi-node: --strategy ddp|fsdp --devices N --num_nodes M (Lightning)."
)


def build_parser() -> argparse.ArgumentParser:
    return _build_parser(TrainArgs, prog=PROG, description=DESCRIPTION)


def parse_args(argv: list[str] | None = None) -> TrainArgs:
    """Parse and validate; raises ArgsError's base, SettingsError, naming the flag."""
    return parse_settings(TrainArgs, argv, prog=PROG, description=DESCRIPTION)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except ValueError as e:
        return fail(PROG, e)
    from fst.training.trainer import run_training  # heavy imports only once the args are valid

    return run_training(args)


if __name__ == "__main__":
    sys.exit(main())
