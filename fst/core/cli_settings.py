"""Typed settings → command line: the one configuration idiom of every fst CLI.

A CLI's settings are one class, validated once when it is built: a frozen dataclass whose
fields are declared with `option(default, help=...)`, or a pydantic model whose fields carry
a `description` (fst-serve's `BaseSettings`, which also reads `FST_...` variables).
`parse_settings` generates the parser from the fields and returns the validated instance;
an unknown flag, a malformed value or a failed check raises `SettingsError` with one line
that names the flag, and `fail(prog, error)` prints it as `prog: error: ...` (exit status 2).

Flag style: `--snake_case`, the original project's spelling (`--max_new_tokens`). The
kebab-case spelling (`--max-new-tokens`, fst-serve's flags before) is accepted as a hidden
alias so old scripts keep working; `--help` shows only snake_case. A bool field is a pair of
switches, `--name` / `--no_name` (help shows `--no_name` only when the default is on).

Torch-free, and pydantic is touched only for pydantic models.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

S = TypeVar("S")
_MISSING = dataclasses.MISSING
_NO_VALUE = ("none", "")  # what an optional field's flag accepts for None
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")  # switches' variables


class SettingsError(ValueError):
    """A setting is invalid; the one-line message names its flag."""


@dataclass(frozen=True)
class CliMeta:
    """How one field appears on the command line (kept in the field's metadata)."""

    help: str
    group: str | None = None  # --help section; None: the first, "options"
    parse: Callable[[str], Any] | None = None  # text → value, for types the helper cannot read
    env: str | None = None  # variable read when the flag is absent (secrets: not in `ps`)
    positional: bool = False
    metavar: str | None = None
    shown_default: str | None = None  # --help's default when the value says too little
    repeat: bool = False  # tuple fields: one item per occurrence (else comma-separated)


def option(
    default: Any = _MISSING,
    *,
    help: str,
    default_factory: Callable[[], Any] | Any = _MISSING,
    secret: bool = False,
    **cli: Any,
) -> Any:
    """A dataclass field with its command-line help beside it (see `CliMeta` for `cli`).

    A `secret` is left out of the repr and of --help's default."""
    return dataclasses.field(
        default=default,
        default_factory=default_factory,
        repr=not secret,
        metadata={"cli": CliMeta(help=help, **cli), "secret": secret},
    )


def cli_extra(**cli: Any) -> dict[str, Any]:
    """`json_schema_extra` of a pydantic field: CliMeta keys besides the description."""
    return {"cli": cli}


@dataclass(frozen=True)
class _Field:
    name: str
    annotation: Any
    default: Any  # _MISSING: required
    meta: CliMeta
    secret: bool = False

    @property
    def flag(self) -> str:
        return f"--{self.name}"

    @property
    def is_switch(self) -> bool:
        return _base(self.annotation) is bool


# ---- reading the settings class ------------------------------------------------------------


def _is_pydantic(cls: type) -> bool:
    return hasattr(cls, "model_fields") and not dataclasses.is_dataclass(cls)


def _fields(cls: type) -> list[_Field]:
    if _is_pydantic(cls):
        return [_pydantic_field(name, f) for name, f in cls.model_fields.items()]
    hints = typing.get_type_hints(cls)
    own = set(vars(cls).get("__annotations__", {}))  # a subclass's own options come first
    out = []
    for f in dataclasses.fields(cls):
        if "cli" not in f.metadata:
            continue  # not a command-line setting
        default = f.default
        if f.default_factory is not _MISSING:
            default = f.default_factory()
        out.append(_Field(f.name, hints[f.name], default, f.metadata["cli"], f.metadata["secret"]))
    return sorted(out, key=lambda f: f.name not in own)


def _pydantic_field(name: str, info: Any) -> _Field:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    meta = CliMeta(help=info.description or "", **extra.get("cli", {}))
    default = _MISSING if info.is_required() else info.get_default(call_default_factory=True)
    secret = "Secret" in getattr(_base(info.annotation), "__name__", "")
    return _Field(name, info.annotation, default, meta, secret)


def _env_prefix(cls: type) -> str | None:
    """pydantic-settings' FST_ prefix: every field is also a variable."""
    config = getattr(cls, "model_config", None)
    return config.get("env_prefix") if isinstance(config, dict) else None


def _base(annotation: Any) -> Any:
    """The type without `| None` (and without Annotated's extras)."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _base(args[0])
    return annotation


def _optional(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


# ---- the parser ----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse's own complaints (unknown flag, missing value) become one SettingsError."""

    def error(self, message: str) -> typing.NoReturn:
        for action in self._actions:
            if len(action.option_strings) > 1:  # "--a_b/--a-b" → "--a_b"
                message = message.replace("/".join(action.option_strings), action.option_strings[0])
        raise SettingsError(f"{message} (see {self.prog} --help)")


class _Formatter(argparse.HelpFormatter):
    """Shows each option's snake_case spellings only; the kebab aliases stay hidden."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34, width=min(_terminal_width(), 100))

    def _format_action_invocation(self, action: argparse.Action) -> str:
        hidden = getattr(action, "hidden_aliases", ())
        if not hidden:
            return super()._format_action_invocation(action)
        shown = argparse.Action([s for s in action.option_strings if s not in hidden], action.dest)
        shown.nargs, shown.metavar = action.nargs, action.metavar
        return super()._format_action_invocation(shown)


def _terminal_width() -> int:
    try:
        return os.get_terminal_size().columns - 2
    except (OSError, ValueError):
        return 100


class _Switch(argparse.Action):
    """`--name` sets True, `--no_name` (or `--no-name`) False."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        setattr(namespace, self.dest, not option_string.startswith(("--no_", "--no-")))


def build_parser(
    cls: type, *, prog: str, description: str, epilog: str | None = None
) -> argparse.ArgumentParser:
    """One flag per field of `cls`, grouped, with its help, default and variable."""
    fields = _fields(cls)
    parser = _Parser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=_Formatter,
        usage=_usage(prog, fields),
    )
    groups: dict[str | None, argparse._ArgumentGroup] = {None: parser._optionals}
    for f in fields:
        if f.meta.positional:
            parser.add_argument(f.name, metavar=f.name, help=f.meta.help, default=argparse.SUPPRESS)
            continue
        if f.meta.group not in groups:
            groups[f.meta.group] = parser.add_argument_group(f.meta.group)
        _add_option(groups[f.meta.group], f, _help_text(f, _env_prefix(cls)))
    return parser


def _add_option(group: argparse._ArgumentGroup, f: _Field, help_text: str) -> None:
    if f.is_switch:
        spellings = [f.flag, f"--no_{f.name}"]
        hidden = [s.replace("_", "-") for s in spellings if "_" in s[2:]]
        if f.default is not True:  # an off-by-default switch reads best as just `--name`
            hidden.append(spellings[1])
        action = group.add_argument(
            *spellings, *hidden, dest=f.name, action=_Switch, nargs=0,
            default=argparse.SUPPRESS, help=help_text,
        )  # fmt: skip
    else:
        hidden = [f.flag.replace("_", "-")] if "_" in f.name else []
        repeat = f.meta.repeat and typing.get_origin(_base(f.annotation)) in (tuple, list)
        literal = typing.get_origin(_base(f.annotation)) is Literal and not f.meta.parse
        action = group.add_argument(
            f.flag, *hidden, dest=f.name, metavar=_metavar(f), default=argparse.SUPPRESS,
            action="append" if repeat else "store", help=help_text,
            choices=tuple(map(str, typing.get_args(_base(f.annotation)))) if literal else None,
        )  # fmt: skip
    action.hidden_aliases = tuple(hidden)


def _usage(prog: str, fields: list[_Field]) -> str:
    parts = [prog]
    parts += [
        f"--{f.name} {_metavar(f)}"
        for f in fields
        if f.default is _MISSING and not f.meta.positional and not f.meta.env
    ]
    parts += ["[options]"]
    parts += [f.name for f in fields if f.meta.positional]
    return " ".join(parts)


def _metavar(f: _Field) -> str:
    if f.meta.metavar:
        return f.meta.metavar
    base = _base(f.annotation)
    if typing.get_origin(base) is Literal:
        return "{" + ",".join(map(str, typing.get_args(base))) + "}"
    return {int: "N", float: "X", Path: "PATH"}.get(base, "TEXT")


def _help_text(f: _Field, env_prefix: str | None) -> str:
    env = f.meta.env or (f"{env_prefix}{f.name.upper()}" if env_prefix else None)
    if f.is_switch and f.default is False and not env:
        return f.meta.help.replace("%", "%%")
    if f.default is _MISSING:
        tail = f"required; or env {env}" if env else "required"
    else:
        shown = f.meta.shown_default or _show(None if f.secret else f.default)
        tail = f"env {env}; default: {shown}" if env else f"default: {shown}"
    # argparse expands %-formats in help: a literal % must be doubled.
    return f"{f.meta.help} ({tail})".replace("%", "%%")


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


# ---- values --------------------------------------------------------------------------------


def parse_settings(
    cls: type[S],
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    epilog: str | None = None,
) -> S:
    """The validated settings from `argv` (flags over variables over defaults).

    Raises SettingsError naming the flag; `--help` prints the help and exits 0.
    """
    parser = build_parser(cls, prog=prog, description=description, epilog=epilog)
    given = vars(parser.parse_args(argv))
    fields = _fields(cls)
    if _is_pydantic(cls):
        return _build_pydantic(cls, given)
    values: dict[str, Any] = {}
    for f in fields:
        if f.name in given:
            values[f.name] = _convert(f, given[f.name])
        elif f.meta.env and os.environ.get(f.meta.env):
            values[f.name] = _convert(f, os.environ[f.meta.env])
        elif f.default is _MISSING and not f.meta.positional:
            env = f" (or env {f.meta.env})" if f.meta.env else ""
            raise SettingsError(f"{f.flag}{env} is required")
    try:
        return cls(**values)
    except ValueError as e:
        raise SettingsError(_one_line(e)) from None


def _build_pydantic(cls: type[S], given: dict[str, Any]) -> S:
    """Raw texts go to the model, which converts and validates them (and reads FST_...)."""
    from pydantic import ValidationError

    try:
        return cls(**given)
    except ValidationError as e:
        error = e.errors()[0]
        name = ".".join(str(p) for p in error["loc"]) or "settings"
        raise SettingsError(f"--{name}: {error['msg']}") from None


def _convert(f: _Field, raw: Any) -> Any:
    """The field's value from its flag's text (or list of texts, for repeated flags)."""
    if f.is_switch and isinstance(raw, str):  # from a variable
        if raw.strip().lower() not in (*_TRUE, *_FALSE):
            raise SettingsError(f"{f.meta.env}: expected one of {', '.join(_TRUE + _FALSE)}")
        return raw.strip().lower() in _TRUE
    if not isinstance(raw, (str, list)):
        return raw
    base = _base(f.annotation)
    try:
        if isinstance(raw, list):  # a repeated flag: one item each time
            return tuple(f.meta.parse(r) if f.meta.parse else r for r in raw)
        if f.meta.parse is not None:
            return f.meta.parse(raw)
        if _optional(f.annotation) and raw.strip().lower() in _NO_VALUE:
            return None
        if typing.get_origin(base) in (tuple, list):
            return tuple(p.strip() for p in raw.split(",") if p.strip())
        return _scalar(base, raw)
    except (ValueError, argparse.ArgumentTypeError) as e:
        raise SettingsError(f"{f.flag}: {_one_line(e)}") from None


def _scalar(base: Any, text: str) -> Any:
    if typing.get_origin(base) is Literal:
        # Choices are matched as text (argparse, variables) and returned as declared, so an
        # integer Literal such as --int4_block_size {16,32,...} yields an int.
        choices = {str(c): c for c in typing.get_args(base)}
        if text not in choices:
            raise ValueError(f"choose from {', '.join(choices)}; got {text!r}")
        return choices[text]
    if base is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
    if base is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
    if base is Path:
        return Path(text)
    return text


def _one_line(error: BaseException) -> str:
    """The first line: some messages quote a library's multi-line error."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def fail(prog: str, error: BaseException) -> int:
    """`prog: error: <one line>` on stderr; the exit status of bad input, 2."""
    print(f"{prog}: error: {_one_line(error)}", file=sys.stderr)
    return 2


# ---- parsers for types argparse cannot read ------------------------------------------------


def count_or_fraction(text: str) -> float | int:
    """Lightning's convention: 1.0 (float) is a fraction, 10 (int) a count; >1 floats → int."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None
    return int(value) if value > 1 or ("." not in text and "e" not in text.lower()) else value


def key_values(text: str) -> dict[str, Any]:
    """'n_layer=4,n_embd=128' → {"n_layer": 4, "n_embd": 128} (values parsed as JSON)."""
    import json

    result: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value pairs, got {item!r}")
        try:
            result[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            result[key.strip()] = value
    return result


def comma_list(text: str) -> tuple[str, ...]:
    """'a, b,c' → ('a', 'b', 'c')."""
    return tuple(p.strip() for p in text.split(",") if p.strip())
