"""A demo corpus that needs no download: the Python reference topics in `pydoc_data`.

`pydoc_data.topics` ships with every CPython (79 topics, ~465 KB of English prose and code),
so `fst-train` can run end to end on a fresh machine. Each paragraph becomes a document whose
`meta` is its topic name ("assert", "for", ...), which exercises the meta conditioning.
The text comes from the running interpreter, so it differs slightly between Python versions.
Torch-free.
"""

from __future__ import annotations

import re
from pathlib import Path

from fst.core.documents import Document, write_documents

TRAIN_FILE = "train.documents"
VALID_FILE = "valid.documents"
MIN_PARAGRAPH_CHARS = 40
VALID_EVERY = 10  # every 10th paragraph goes to the validation split (~10 %)

# reST heading underlines such as "*****" or "=====" carry no text.
_UNDERLINE = re.compile(r"^\s*([*=\-~^#])\1+\s*$")
_BLANK_LINE = re.compile(r"\n\s*\n")


def demo_documents() -> list[Document]:
    """Paragraphs of every pydoc topic, in topic-name order, meta = topic name."""
    from pydoc_data.topics import topics

    docs = []
    for name in sorted(topics):
        for paragraph in _BLANK_LINE.split(topics[name]):
            lines = [line for line in paragraph.splitlines() if not _UNDERLINE.match(line)]
            text = " ".join(" ".join(lines).split())
            if len(text) >= MIN_PARAGRAPH_CHARS:
                docs.append(Document(body=text, meta=name))
    return docs


def split_demo_documents(docs: list[Document]) -> tuple[list[Document], list[Document]]:
    """Deterministic split: every `VALID_EVERY`-th document is validation, the rest training."""
    train = [d for i, d in enumerate(docs) if i % VALID_EVERY != VALID_EVERY - 1]
    valid = [d for i, d in enumerate(docs) if i % VALID_EVERY == VALID_EVERY - 1]
    return train, valid


def build_demo_corpus(out_dir: str | Path) -> tuple[Path, Path]:
    """Write `train.documents` and `valid.documents` into `out_dir` unless both exist.

    Returns their paths. Files are written atomically, so an interrupted build is redone.
    """
    out_dir = Path(out_dir)
    train_path, valid_path = out_dir / TRAIN_FILE, out_dir / VALID_FILE
    if train_path.is_file() and valid_path.is_file():
        return train_path, valid_path
    out_dir.mkdir(parents=True, exist_ok=True)
    train, valid = split_demo_documents(demo_documents())
    write_documents(train_path, train)
    write_documents(valid_path, valid)
    return train_path, valid_path
