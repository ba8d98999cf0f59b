"""The one configuration idiom: typed settings → generated parser (fst.core.cli_settings),
and every CLI built with it: --help readable and exit 0, snake_case flags with hidden
kebab-case aliases, a bad value one line `prog: error: ...` and exit 2."""

from __future__ import annotations

import importlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from fst.core.cli_settings import (
    SettingsError,
    build_parser,
    cli_extra,
    comma_list,
    option,
    parse_settings,
)


@dataclass(frozen=True)
class Toy:
    name: str = option(help="what to call it")
    max_new_tokens: int = option(8, help="at most this many")
    top_p: float | None = option(None, help="mass kept")
    mode: Literal["fast", "slow"] = option("fast", group="speed", help="how")
    huge_pages: bool = option(True, help="2 MiB pages")
    verbose: bool = option(False, help="say more")
    stop: tuple[str, ...] = option((), repeat=True, help="stop strings")
    tags: tuple[str, ...] = option(("a",), parse=comma_list, help="tags")
    token: str | None = option(None, env="TOY_TOKEN", help="a secret")
    dry: bool = option(False, env="TOY_DRY", help="change nothing")

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"--max_new_tokens must be >= 1, got {self.max_new_tokens}")


def parse(argv: list[str]) -> Toy:
    return parse_settings(Toy, argv, prog="toy", description="a toy")


def test_values_are_typed_and_validated_once() -> None:
    toy = parse(["--name", "x", "--max_new_tokens", "3", "--top_p", "0.5", "--mode", "slow"])
    assert (toy.name, toy.max_new_tokens, toy.top_p, toy.mode) == ("x", 3, 0.5, "slow")
    assert parse(["--name=x", "--top_p", "none"]).top_p is None
    toy = parse(["--name=x", "--stop", "a,b", "--stop", "\n", "--tags", "p, q"])
    assert toy.stop == ("a,b", "\n") and toy.tags == ("p", "q")
    assert parse(["--name=x"]) == Toy(name="x")  # defaults come from the class alone


def test_kebab_spellings_are_hidden_aliases() -> None:
    snake = parse(["--name=x", "--max_new_tokens=2", "--no_huge_pages", "--verbose"])
    kebab = parse(["--name=x", "--max-new-tokens=2", "--no-huge-pages", "--verbose"])
    assert snake == kebab and not snake.huge_pages and snake.verbose
    help_text = build_parser(Toy, prog="toy", description="a toy").format_help()
    assert "--max_new_tokens N" in help_text and "--max-new-tokens" not in help_text
    assert "--huge_pages, --no_huge_pages" in help_text  # on by default: both switches shown
    assert "--no_verbose" not in help_text  # off by default: just --verbose
    assert "(default: 8)" in help_text and "{fast,slow}" in help_text and "speed:" in help_text
    assert "(env TOY_TOKEN; default: none)" in help_text and "(required)" in help_text
    choices = {a.dest: a.choices for a in build_parser(Toy, prog="t", description="")._actions}
    assert choices["mode"] == (
        "fast",
        "slow",
    )  # introspectable (benchmarks/latency/run.py reads them)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--name=x", "--max_new_tokens=two"], "--max_new_tokens: expected an integer, got 'two'"),
        (["--name=x", "--max-new-tokens=0"], "--max_new_tokens must be >= 1, got 0"),
        (["--name=x", "--mode=medium"], "argument --mode: invalid choice: 'medium'"),
        (["--name=x", "--top_p=lots"], "--top_p: expected a number, got 'lots'"),
        (["--name=x", "--bogus"], "unrecognized arguments: --bogus (see toy --help)"),
        (["--name=x", "--max-new-tokens"], "argument --max_new_tokens: expected one argument"),
        ([], "--name is required"),
    ],
)
def test_errors_are_one_line_naming_the_flag(argv: list[str], message: str) -> None:
    with pytest.raises(SettingsError) as error:
        parse(argv)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_environment_fills_what_the_flags_leave(monkeypatch) -> None:
    monkeypatch.setenv("TOY_TOKEN", "s3cret")
    assert parse(["--name=x"]).token == "s3cret"
    assert parse(["--name=x", "--token", "flag"]).token == "flag"
    monkeypatch.setenv("TOY_DRY", "0")
    assert not parse(["--name=x"]).dry and parse(["--name=x", "--dry"]).dry
    monkeypatch.setenv("TOY_DRY", "yes")
    assert parse(["--name=x"]).dry and not parse(["--name=x", "--no_dry"]).dry
    monkeypatch.setenv("TOY_DRY", "maybe")
    with pytest.raises(SettingsError, match="^TOY_DRY: expected one of 1, true"):
        parse(["--name=x"])


class Model(BaseModel):
    port: int = Field(9228, ge=0, le=65535, description="TCP port")
    warmup: bool = Field(True, description="warm up first")
    mode: Literal["a", "b"] = Field("a", description="mode")
    name: str | None = Field(None, description="id", json_schema_extra=cli_extra(shown_default="x"))


def test_pydantic_models_convert_and_validate_themselves() -> None:
    got = parse_settings(
        Model, ["--port", "80", "--no-warmup", "--mode", "b"], prog="m", description=""
    )
    assert got == Model(port=80, warmup=False, mode="b")
    with pytest.raises(
        SettingsError, match=r"^--port: Input should be less than or equal to 65535"
    ):
        parse_settings(Model, ["--port", "70000"], prog="m", description="")
    help_text = build_parser(Model, prog="m", description="").format_help()
    assert "--warmup, --no_warmup" in help_text and "id (default: x)" in help_text


# ---- every CLI -----------------------------------------------------------------------------

# module, flags its --help must name, a bad value and the start of its one-line error
CLIS = {
    "fst-train": (
        "fst.training.cli",
        ["--train_file", "--model_path", "--batch_size", "--max_epochs", "--unlikelihood_alpha"],
        ["--batch_size", "lots"],
        "fst-train: error: --batch_size: expected an integer",
    ),
    "fst-eval": (
        "fst.evaluation.cli",
        ["--ckpt", "--bundle", "--documents", "--prefix_len", "--decodings"],
        ["--ckpt", "x.ckpt", "--documents", "d", "--top_p", "high"],
        "fst-eval: error: --top_p: expected a number",
    ),
    "fst-export": (
        "fst.export.cli",
        ["--ckpt", "--model_path", "--output", "--quantize", "--kv_layout"],
        ["--ckpt", "x.ckpt", "--output", "o", "--quantize", "int3"],
        "fst-export: error: argument --quantize: invalid choice: 'int3'",
    ),
    "fst-generate": (
        "fst.runtime.cli",
        ["--bundle", "--max_new_tokens", "--temperature", "--top_p", "--no_huge_pages"],
        ["--bundle", "b", "hi", "--max-new-tokens", "0"],
        "fst-generate: error: --max_new_tokens must be in [1",
    ),
    "fst-chat": (
        "fst.runtime.chat_cli",
        ["--bundle", "--system", "--max_new_tokens", "--presence_penalty", "--no_huge_pages"],
        ["--bundle", "b", "--presence-penalty", "3"],
        "fst-chat: error: --presence_penalty must be in [-2.0, 2.0]",
    ),
    "fst-serve": (
        "fst.serving.cli",
        ["--bundle", "--port", "--max_batch_size", "--no_huge_pages", "--limit_concurrency"],
        ["--bundle", "b", "--limit-concurrency", "0"],
        "fst-serve: error: --limit_concurrency:",
    ),
    "fst-telegram": (
        "fst.serving.telegram.cli",
        ["--telegram_api_token", "--text_generator_service_url", "--webhook_url", "--log_level"],
        ["--telegram_api_token", "1:x", "--text_generator_service_url", "x", "--webhook_port", "p"],
        "fst-telegram: error: --webhook_port: expected an integer",
    ),
}


@pytest.mark.parametrize("prog", sorted(CLIS))
def test_help_exits_0_in_snake_case_naming_the_main_flags(prog: str, capsys) -> None:
    module, flags, _, _ = CLIS[prog]
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert help_text.startswith(f"usage: {prog} ")
    assert [f for f in flags if f not in help_text] == []
    long_flags = [w for w in help_text.split() if w.startswith("--") and "-" in w[2:]]
    assert long_flags == [], "kebab-case spellings are hidden aliases"


@pytest.mark.parametrize("prog", sorted(CLIS))
def test_a_bad_value_exits_2_with_one_line(prog: str, capsys, monkeypatch) -> None:
    module, _, argv, message = CLIS[prog]
    monkeypatch.delenv("FST_TELEGRAM_API_TOKEN", raising=False)
    assert importlib.import_module(module).main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(message), captured.err
    assert captured.err.count("\n") == 1 and captured.out == ""


@pytest.mark.parametrize(
    "prog", ["fst-generate", "fst-chat", "fst-serve", "fst-telegram", "fst-eval"]
)
def test_help_does_not_import_torch(prog: str) -> None:
    code = (
        f"import sys; from {CLIS[prog][0]} import build_parser; build_parser().format_help(); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_export_cli_defaults_are_export_bundles() -> None:
    """The graph flags are `ExportOptions`' fields, which `export_bundle` defaults to."""
    import dataclasses
    import inspect

    from fst.export.cli import ExportArgs
    from fst.export.exporter import export_bundle
    from fst.export.options import ExportOptions

    args = ExportArgs(ckpt=Path("x.ckpt"), output=Path("o"))
    parameters = inspect.signature(export_bundle).parameters
    assert parameters["options"].default is None  # None: ExportOptions()
    assert args.options() == ExportOptions()
    graph = {f.name for f in dataclasses.fields(ExportOptions)}
    assert {"optimize", "quantize", "fp16", "opset", "logits", "kv_layout"} <= graph
    assert args.force == parameters["force"].default
