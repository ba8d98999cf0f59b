"""Every choice of every `Literal` option of every CLI goes through the real parser and comes
back as the declared value and type (an integer Literal once failed as "invalid choice: '32'"
because argparse compared the text with the integers)."""

from __future__ import annotations

import importlib
import typing
from typing import Any, Literal

import pytest

from fst.core.cli_settings import _base, _fields

# CLI: (module, its parse function, its settings class, the fewest flags it accepts)
CLIS: dict[str, tuple[str, str, str, list[str]]] = {
    "fst-train": ("fst.training.cli", "parse_args", "TrainArgs", ["--train_file", "t.jsonl"]),
    "fst-eval": (
        "fst.evaluation.cli",
        "parse_args",
        "EvalArgs",
        ["--ckpt", "x.ckpt", "--documents", "d"],
    ),
    # The optimized graph (the default): --kv_layout shared / shared_right need it
    "fst-export": ("fst.export.cli", "parse_args", "ExportArgs", ["--ckpt", "x", "--output", "o"]),
    "fst-generate": ("fst.runtime.cli", "parse_args", "GenerateArgs", ["--bundle", "b", "hi"]),
    "fst-serve": ("fst.serving.cli", "load_settings", "ServingSettings", ["--bundle", "b"]),
    "fst-telegram": (
        "fst.serving.telegram.cli",
        "parse_args",
        "BotSettings",
        ["--telegram_api_token", "1:x", "--text_generator_service_url", "http://127.0.0.1:1"],
    ),
}


def _literal_options() -> list[tuple[str, str, Any]]:
    cases = []
    for prog, (module, _, cls_name, _) in CLIS.items():
        cls = getattr(importlib.import_module(module), cls_name)
        for f in _fields(cls):
            base = _base(f.annotation)
            if typing.get_origin(base) is Literal and not f.meta.parse:
                cases += [(prog, f.name, choice) for choice in typing.get_args(base)]
    return cases


CASES = _literal_options()


def test_the_integer_literal_options_are_among_the_cases() -> None:
    assert ("fst-export", "int4_block_size", 32) in CASES
    assert any(isinstance(choice, str) for _, _, choice in CASES)


@pytest.mark.parametrize(("prog", "name", "choice"), CASES)
def test_each_choice_parses_to_its_declared_value(prog: str, name: str, choice: Any) -> None:
    module, parse, _, argv = CLIS[prog]
    settings = getattr(importlib.import_module(module), parse)([*argv, f"--{name}", str(choice)])
    value = getattr(settings, name)
    assert value == choice and type(value) is type(choice)


def test_an_integer_choice_outside_the_list_is_refused_naming_the_flag(capsys) -> None:
    from fst.export.cli import main

    assert main(["--ckpt", "x", "--output", "o", "--int4_block_size", "48"]) == 2
    err = capsys.readouterr().err
    assert "--int4_block_size" in err and "'48'" in err and err.count("\n") == 1
