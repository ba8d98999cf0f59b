"""JSON-lines documents: the corpus format read by training and written by the demo corpus.

One document per line: `{"body": "...", "meta": "..."}`; `meta` is optional (or null).
Problems are reported as `DocumentError("path:line: what is wrong")` so a user can jump to
the bad line; the original project crashed with a bare `json` or `TypeError` traceback.
Torch-free.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

KNOWN_KEYS = frozenset({"body", "meta"})


@dataclass(frozen=True)
class Document:
    """A text body and an optional meta string (a title, a tag, ...) that conditions it."""

    body: str
    meta: str | None = None


class DocumentError(ValueError):
    """A documents file is unusable; the message starts with `path:line: ` or `path: `."""


def iter_documents(path: str | Path) -> Iterator[Document]:
    """Yield the documents of a JSON-lines file, validating each line as it is read.

    Blank lines are skipped. Unknown keys are tolerated (one warning per file) so files
    written by newer tools still load.
    """
    path = Path(path)
    if not path.exists():
        raise DocumentError(f"{path}: no such file")
    if not path.is_file():
        raise DocumentError(f"{path}: not a file")
    count = 0
    warned = False
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            text = _decode_line(raw, path, line_no)
            if not text.strip():
                continue
            doc, unknown = _parse_line(text.rstrip(), path, line_no)
            if unknown and not warned:
                logger.warning(
                    "%s:%d: ignoring unknown keys %s (only 'body' and 'meta' are read); "
                    "further lines are not reported",
                    path,
                    line_no,
                    ", ".join(sorted(unknown)),
                )
                warned = True
            count += 1
            yield doc
    if count == 0:
        raise DocumentError(f"{path}: no documents (the file is empty or only blank lines)")


def read_documents(path: str | Path) -> list[Document]:
    """All documents of a JSON-lines file (see `iter_documents`)."""
    return list(iter_documents(path))


def write_documents(path: str | Path, docs: Iterable[Document]) -> Path:
    """Write documents as JSON lines, atomically; refuses what `read_documents` would reject."""
    path = Path(path)
    lines = []
    for i, doc in enumerate(docs):
        _check_document(doc, i)
        record = {"body": doc.body} if doc.meta is None else {"body": doc.body, "meta": doc.meta}
        lines.append(json.dumps(record, ensure_ascii=False))
    if not lines:
        raise ValueError(f"{path}: refusing to write a documents file with no documents")
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write UTF-8 text to a temporary file beside `path`, then rename it into place.

    A crash never leaves a half-written file under the final name.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _decode_line(raw: bytes, path: Path, line_no: int) -> str:
    # A UTF-8 byte-order mark on the first line is tolerated (some editors add one).
    encoding = "utf-8-sig" if line_no == 1 else "utf-8"
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        raise DocumentError(
            f"{path}:{line_no}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
        ) from None


def _parse_line(text: str, path: Path, line_no: int) -> tuple[Document, set[str]]:
    where = f"{path}:{line_no}: "
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise DocumentError(f"{where}invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
        raise DocumentError(f"{where}expected a JSON object, got {_json_type(record)}")
    if "body" not in record:
        raise DocumentError(f"{where}missing 'body'")
    body, meta = record["body"], record.get("meta")
    if not isinstance(body, str):
        raise DocumentError(f"{where}'body' must be a string, got {_json_type(body)}")
    if not body.strip():
        raise DocumentError(f"{where}'body' is empty")
    if meta is not None and not isinstance(meta, str):
        raise DocumentError(f"{where}'meta' must be a string or null, got {_json_type(meta)}")
    for name, value in (("body", body), ("meta", meta)):
        _check_encodable(value, f"{where}'{name}'")
    return Document(body=body, meta=meta), set(record) - KNOWN_KEYS


def _check_encodable(value: str | None, what: str) -> None:
    """JSON's "\ud800" escapes decode to lone surrogates, which no tokenizer can encode."""
    if value is None:
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DocumentError(
            f"{what} holds a lone UTF-16 surrogate (\\u{ord(value[e.start]):04x} at character "
            f"{e.start + 1}); it is not text: remove it or pair it"
        ) from None


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _check_document(doc: Document, index: int) -> None:
    if not isinstance(doc, Document):
        raise TypeError(f"document {index}: expected Document, got {type(doc).__name__}")
    if not isinstance(doc.body, str) or not doc.body.strip():
        raise ValueError(f"document {index}: 'body' must be a non-empty string")
    if doc.meta is not None and not isinstance(doc.meta, str):
        raise ValueError(f"document {index}: 'meta' must be a string or None")
