import json
import logging
from pathlib import Path

import pytest

from fst.core.documents import (
    Document,
    DocumentError,
    iter_documents,
    read_documents,
    write_documents,
)


def _write(tmp_path: Path, content: str | bytes, name: str = "x.documents") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def test_reads_body_and_meta_and_skips_blank_lines(tmp_path):
    path = _write(
        tmp_path,
        '{"body": "first", "meta": "m1"}\n\n  \n{"body": "second"}\n{"body": "third", "meta": null}',
    )
    assert read_documents(path) == [
        Document("first", "m1"),
        Document("second"),
        Document("third"),
    ]


def test_reads_shared_nietzsche_corpus(nietzsche_dir):
    docs = read_documents(nietzsche_dir / "valid.documents")
    assert docs and all(isinstance(d.body, str) and d.body.strip() for d in docs)


def test_write_then_read_round_trip_including_unicode(tmp_path):
    docs = [Document("Grüße\nzweite Zeile", "méta"), Document('quote " and \\ backslash')]
    path = write_documents(tmp_path / "out.documents", docs)
    assert read_documents(path) == docs
    assert "Grüße" in path.read_text(encoding="utf-8")  # not \u-escaped
    assert [p.name for p in tmp_path.iterdir()] == ["out.documents"]  # no temp file left


def test_write_refuses_what_read_rejects(tmp_path):
    with pytest.raises(ValueError, match="document 1: 'body'"):
        write_documents(tmp_path / "a", [Document("ok"), Document("  ")])
    with pytest.raises(ValueError, match="no documents"):
        write_documents(tmp_path / "b", [])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_write_replaces_existing_file(tmp_path):
    path = tmp_path / "d.documents"
    write_documents(path, [Document("old")])
    write_documents(path, [Document("new")])
    assert read_documents(path) == [Document("new")]


def test_missing_file(tmp_path):
    path = tmp_path / "nope.documents"
    with pytest.raises(DocumentError, match=f"^{path}: no such file"):
        read_documents(path)


def test_not_a_file(tmp_path):
    with pytest.raises(DocumentError, match=f"^{tmp_path}: not a file"):
        read_documents(tmp_path)


@pytest.mark.parametrize("content", ["", "\n  \n\n"])
def test_empty_file(tmp_path, content):
    path = _write(tmp_path, content)
    with pytest.raises(DocumentError, match=f"^{path}: no documents"):
        read_documents(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"body": "x"', r"invalid JSON \(Expecting ',' delimiter at column 13\)"),
        ('["body"]', "expected a JSON object, got array"),
        ('"text"', "expected a JSON object, got string"),
        ('{"meta": "m"}', "missing 'body'"),
        ('{"body": ""}', "'body' is empty"),
        ('{"body": " \\n\\t"}', "'body' is empty"),
        ('{"body": 3}', "'body' must be a string, got number"),
        ('{"body": null}', "'body' must be a string, got null"),
        ('{"body": "x", "meta": 1}', "'meta' must be a string or null, got number"),
        ('{"body": "x", "meta": ["a"]}', "'meta' must be a string or null, got array"),
    ],
)
def test_bad_line_reports_file_and_line(tmp_path, line, message):
    # The bad line is line 3 (after a good line and a blank line).
    path = _write(tmp_path, '{"body": "good"}\n\n' + line + "\n")
    with pytest.raises(DocumentError, match=f"^{path}:3: {message}"):
        read_documents(path)


def test_invalid_utf8_reports_line(tmp_path):
    path = _write(tmp_path, b'{"body": "ok"}\n{"body": "caf\xe9"}\n')
    # 0xe9 is the 14th byte of line 2: {"body": "caf = 13 bytes.
    with pytest.raises(
        DocumentError, match=rf"^{path}:2: not valid UTF-8 \(byte 0xe9 at column 14\)"
    ):
        read_documents(path)


def test_utf8_bom_on_first_line_is_tolerated(tmp_path):
    path = _write(tmp_path, b'\xef\xbb\xbf{"body": "x"}\n')
    assert read_documents(path) == [Document("x")]


def test_errors_are_value_errors(tmp_path):
    path = _write(tmp_path, "[]")
    with pytest.raises(ValueError):
        read_documents(path)


def test_iter_documents_is_lazy_and_fails_at_the_bad_line(tmp_path):
    path = _write(tmp_path, '{"body": "a"}\n{"body": "b"}\nnot json\n')
    it = iter_documents(path)
    assert next(it) == Document("a")
    assert next(it) == Document("b")
    with pytest.raises(DocumentError, match=":3: invalid JSON"):
        next(it)


def test_unknown_keys_warn_once_per_file(tmp_path, caplog):
    lines = [
        {"body": "a"},
        {"body": "b", "title": "t", "id": 1},
        {"body": "c", "extra": True},
    ]
    path = _write(tmp_path, "\n".join(json.dumps(x) for x in lines))
    with caplog.at_level(logging.WARNING, logger="fst.core.documents"):
        docs = read_documents(path)
    assert docs == [Document("a"), Document("b"), Document("c")]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"{path}:2:" in warnings[0].getMessage()
    assert "id, title" in warnings[0].getMessage()


def test_no_warning_for_known_keys(tmp_path, caplog):
    path = _write(tmp_path, '{"body": "a", "meta": "m"}\n')
    with caplog.at_level(logging.WARNING, logger="fst.core.documents"):
        read_documents(path)
    assert not caplog.records
