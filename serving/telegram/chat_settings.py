"""Per-chat generation settings: the commands that change them, parsing, validation.

Ranges are not repeated here: every value goes through `GenerationParams`' own validation,
so the bot, the server and the CLI accept exactly the same values. The defaults are
`GenerationParams()`'s, the ones `/v1/completions` (the endpoint the bot uses) applies.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fst.core.generation_params import GenerationParams

log = logging.getLogger(__name__)

DEFAULT_PARAMS = GenerationParams()


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None


def _parse_float(text: str) -> float:
    try:
        value = float(text.replace(",", "."))
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


@dataclass(frozen=True)
class SettingCommand:
    """A chat command that sets one `GenerationParams` field."""

    command: str
    field: str
    parse: Callable[[str], Any]
    example: str
    meaning: str


SETTING_COMMANDS: dict[str, SettingCommand] = {
    c.command: c
    for c in (
        SettingCommand("length", "max_new_tokens", _parse_int, "64", "tokens to generate"),
        SettingCommand(
            "temperature", "temperature", _parse_float, "0.8", "randomness; 0 = most likely word"
        ),
        SettingCommand("top_k", "top_k", _parse_int, "40", "sample among the k likeliest; 0 = off"),
        SettingCommand(
            "top_p", "top_p", _parse_float, "0.9", "sample within this probability mass; 1 = off"
        ),
        SettingCommand(
            "penalty", "repetition_penalty", _parse_float, "1.2", "repetition penalty; 1 = off"
        ),
    )
}


@dataclass(frozen=True)
class ChatSettings:
    """What one chat generates with: sampling parameters and an optional control code (meta)."""

    params: GenerationParams = field(default_factory=GenerationParams)
    meta: str | None = None

    def with_command(self, command: str, raw_value: str) -> ChatSettings:
        """Apply `/command raw_value`; ValueError with a message fit for the user otherwise."""
        spec = SETTING_COMMANDS[command]
        try:
            value = spec.parse(raw_value.strip())
            params = self.params.with_overrides(**{spec.field: value})
        except ValueError as e:
            message = str(e)
            # GenerationParams names its field; the user knows the command.
            if message.startswith(spec.field):
                message = spec.command + message[len(spec.field) :]
            raise ValueError(message) from None
        return ChatSettings(params=params, meta=self.meta)

    def with_meta(self, meta: str | None) -> ChatSettings:
        meta = (meta or "").strip() or None
        return ChatSettings(params=self.params, meta=meta)

    def overrides(self) -> dict[str, Any]:
        """Only what differs from the defaults: stored so later default changes still apply."""
        out: dict[str, Any] = {
            spec.field: getattr(self.params, spec.field)
            for spec in SETTING_COMMANDS.values()
            if getattr(self.params, spec.field) != getattr(DEFAULT_PARAMS, spec.field)
        }
        if self.meta is not None:
            out["meta"] = self.meta
        return out

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any]) -> ChatSettings:
        """Rebuild from stored overrides; a value that is no longer valid is dropped, not fatal."""
        params = DEFAULT_PARAMS
        for spec in SETTING_COMMANDS.values():
            if spec.field not in overrides:
                continue
            try:
                params = params.with_overrides(**{spec.field: overrides[spec.field]})
            except (ValueError, TypeError) as e:
                log.warning("dropping stored setting %s: %s", spec.field, e)
        meta = overrides.get("meta")
        return cls(params=params, meta=meta if isinstance(meta, str) and meta else None)

    def describe(self) -> str:
        """Plain-text summary for /settings (the caller escapes it)."""
        lines = [
            f"/{spec.command} {getattr(self.params, spec.field)} — {spec.meaning}"
            for spec in SETTING_COMMANDS.values()
        ]
        lines.append(f"/meta {self.meta if self.meta is not None else '(none)'} — control code")
        return "\n".join(lines)
