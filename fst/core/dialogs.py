"""JSON-lines dialogs: the two conversation formats fst-train reads besides documents.

A corpus file's format is detected from its first non-blank line (`detect_format`):

- `{"body": ...}`: documents (`fst.core.documents`);
- `{"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}`:
  one conversation per line, as chat models are trained (OpenAI / TRL format);
- `{"utterances": ["...", ...], "persona_0": "...", "persona_1": "...", "tags": "..."}`:
  the original project's dialogs. Speakers alternate, speaker 0 first. Each non-empty
  `persona_i` gives one conversation in which speaker i is the assistant and the persona is
  the system message; without any persona, one conversation in which speaker 1 (the second)
  is the assistant. `tags` (the control code) is a line `Tags: <tags>` at the end of the
  system message (the system message is that line alone without a persona).

Every line of a file must be in the format of its first line. Problems raise `DialogError`
(a `DocumentError`) whose message starts with `path:line: `. Torch-free.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fst.core.documents import DocumentError, _decode_line, _json_type

ROLES = ("system", "user", "assistant")
DOCUMENTS, MESSAGES, UTTERANCES = "documents", "messages", "utterances"
FORMATS = (DOCUMENTS, MESSAGES, UTTERANCES)
PERSONA_KEYS = ("persona_0", "persona_1")


class DialogError(DocumentError):
    """A dialogs file or conversation is unusable; the message starts with `path:line: `."""


@dataclass(frozen=True)
class Message:
    role: str
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Conversation:
    """Messages with at least one assistant turn; `where` ("path:line") names its line."""

    messages: tuple[Message, ...]
    where: str = ""

    def as_dicts(self) -> list[dict[str, str]]:
        return [m.as_dict() for m in self.messages]


def detect_format(path: str | Path) -> str:
    """`documents`, `messages` or `utterances`, from the keys of the first non-blank line."""
    path = Path(path)
    if not path.is_file():
        raise DialogError(f"{path}: no such file")
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            text = _decode_line(raw, path, line_no)
            if text.strip():
                return _line_format(
                    _json_object(text, f"{path}:{line_no}: "), f"{path}:{line_no}: "
                )
    raise DialogError(f"{path}: no documents or dialogs (the file is empty or only blank lines)")


def read_conversations(path: str | Path) -> list[Conversation]:
    """The conversations of a `messages` or `utterances` file (see the module docstring)."""
    return list(iter_conversations(path))


def iter_conversations(path: str | Path) -> Iterator[Conversation]:
    path = Path(path)
    expected = detect_format(path)
    if expected == DOCUMENTS:
        raise DialogError(f"{path}:1: a documents file ('body'), not dialogs")
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            text = _decode_line(raw, path, line_no)
            if not text.strip():
                continue
            where = f"{path}:{line_no}: "
            record = _json_object(text, where)
            found = _line_format(record, where)
            if found != expected:
                raise DialogError(
                    f"{where}a '{found}' line in a '{expected}' file (the first line decides)"
                )
            if found == MESSAGES:
                yield _from_messages(record, where)
            else:
                yield from _from_utterances(record, where)


def _json_object(text: str, where: str) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise DialogError(f"{where}invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
        raise DialogError(f"{where}expected a JSON object, got {_json_type(record)}")
    return record


def _line_format(record: dict[str, Any], where: str) -> str:
    if MESSAGES in record:
        return MESSAGES
    if UTTERANCES in record:
        return UTTERANCES
    if "body" in record:
        return DOCUMENTS
    raise DialogError(
        f"{where}expected 'body' (documents), 'messages' or 'utterances' (dialogs), "
        f"got keys {sorted(record)}"
    )


def _from_messages(record: dict[str, Any], where: str) -> Conversation:
    messages = record[MESSAGES]
    if not isinstance(messages, list) or not messages:
        raise DialogError(f"{where}'messages' must be a non-empty array")
    parsed = []
    for i, message in enumerate(messages):
        at = f"{where}messages[{i}]: "
        if not isinstance(message, dict):
            raise DialogError(f"{at}expected an object, got {_json_type(message)}")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise DialogError(f"{at}unknown role {role!r} (use {', '.join(ROLES)})")
        if not isinstance(content, str):
            raise DialogError(f"{at}'content' must be a string, got {_json_type(content)}")
        if not content.strip():
            raise DialogError(f"{at}empty content")
        parsed.append(Message(role, content))
    return _conversation(parsed, where)


def _from_utterances(record: dict[str, Any], where: str) -> Iterator[Conversation]:
    utterances = record[UTTERANCES]
    if not isinstance(utterances, list) or not utterances:
        raise DialogError(f"{where}'utterances' must be a non-empty array")
    for i, text in enumerate(utterances):
        if not isinstance(text, str):
            raise DialogError(f"{where}utterances[{i}]: expected a string, got {_json_type(text)}")
        if not text.strip():
            raise DialogError(f"{where}utterances[{i}]: empty utterance")
    fields = {}
    for key in (*PERSONA_KEYS, "tags"):
        value = record.get(key)
        if value is not None and not isinstance(value, str):
            raise DialogError(f"{where}'{key}' must be a string or null, got {_json_type(value)}")
        fields[key] = (value or "").strip()
    tags = f"Tags: {fields['tags']}" if fields["tags"] else ""
    speakers = [i for i, key in enumerate(PERSONA_KEYS) if fields[key]] or [1]
    for speaker in speakers:
        persona = fields[PERSONA_KEYS[speaker]] if speaker in (0, 1) else ""
        system = "\n".join(part for part in (persona, tags) if part)
        messages = [Message("system", system)] if system else []
        messages += [
            Message("assistant" if i % 2 == speaker else "user", text)
            for i, text in enumerate(utterances)
        ]
        yield _conversation(messages, where)


def _conversation(messages: list[Message], where: str) -> Conversation:
    if not any(m.role == "assistant" for m in messages):
        raise DialogError(f"{where}no assistant turn (nothing to learn)")
    return Conversation(tuple(messages), where=where.rstrip(": "))
