"""A corpus tokenized in bounded pieces: the same ids as whole texts, the same sequences as
the documented layout, and peak memory a small multiple of the token count."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from fst.core.constants import LOSS_IGNORE
from fst.core.documents import Document
from fst.core.token_corpus import split_text
from fst.core.tokenization import DocumentTokenizer

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "a",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
]
ODD = ["", "s", "ly", ",", ".", "'s", "  ", "\n", "\n\n", " -", "é", "日本", "123", "\t"]


def text(chars: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    parts, size = [], 0
    while size < chars:
        part = rng.choice(WORDS) + rng.choice(ODD)
        parts.append(part)
        size += len(part) + 1
    return " ".join(parts)


@pytest.fixture(scope="module")
def gpt2() -> DocumentTokenizer:
    return DocumentTokenizer.gpt2(max_body_len=50, max_meta_len=6)


def test_pieces_join_to_the_text_and_encode_to_the_same_ids(gpt2: DocumentTokenizer) -> None:
    body = text(60_000)
    pieces = split_text(body, max_chars=997)
    assert "".join(pieces) == body and len(pieces) > 50
    assert all(p.startswith(" ") and not p[1].isspace() for p in pieces[1:])
    whole = gpt2.encode_text(body)
    assert [i for p in pieces for i in gpt2.encode_text(p)] == whole
    assert split_text("x" * 5000, max_chars=100) == ["x" * 5000]  # no boundary: one piece


def reference(tok: DocumentTokenizer, docs: list[Document], rng: random.Random | None):
    """The module docstring's layout, from whole-text ids (independent of the pieces)."""
    out = []
    for doc in docs:
        ids = tok.encode_text(doc.body)
        meta = []
        if doc.meta and (rng is None or rng.random() >= tok.settings()["ignore_meta_prob"]):
            meta = [*tok.encode_text(doc.meta), tok.end_of_meta_id][-tok.max_meta_len :]
        seq = [tok.start_of_document_id, *ids, tok.eos_token_id]
        labels = [LOSS_IGNORE, *ids, tok.eos_token_id]
        for start in range(0, len(seq), tok.max_body_len):
            chunk, chunk_labels = seq[start : start + 50], labels[start : start + 50]
            if start and len(chunk) == 1:
                break
            if start:
                chunk_labels[0] = LOSS_IGNORE
            out.append((meta + chunk, [LOSS_IGNORE] * len(meta) + chunk_labels))
    return out


def test_the_corpus_holds_the_documented_sequences(
    gpt2: DocumentTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fst.core.token_corpus as token_corpus

    monkeypatch.setattr(token_corpus, "PIECE_CHARS", 501)  # many cuts, several calls
    monkeypatch.setattr(token_corpus, "BATCH_CHARS", 2000)
    docs = [Document(text(n, seed=n), meta=text(30, n) if n % 3 else None) for n in range(1, 40)]
    docs.append(Document(text(20_000, seed=99), meta="a long document"))
    tok = DocumentTokenizer.gpt2(max_body_len=50, max_meta_len=6, ignore_meta_prob=0.5)
    corpus = tok.encode_corpus(docs, random.Random(3))
    got = [(e.token_ids, e.labels) for e in corpus]
    assert got == reference(tok, docs, random.Random(3))
    assert corpus.tokens.dtype == np.int32 and corpus.lengths.tolist() == [len(t) for t, _ in got]
    plain = DocumentTokenizer.gpt2(document_format=False, max_body_len=50)
    ids = plain.encode_text(docs[-1].body) + [plain.eos_token_id]
    (first, *rest) = plain.encode_corpus([docs[-1]])
    assert first.token_ids == ids[:50] and first.labels == ids[:50]
    assert rest[0].labels[0] == LOSS_IGNORE and rest[0].token_ids == ids[50:100]


PEAK = """
import json, random, resource, sys
import numpy as np
from fst.core.documents import read_documents
from fst.core.tokenization import DocumentTokenizer
path = sys.argv[1]
rng = np.random.default_rng(0)
words = np.array({words!r})
with open(path, "w") as f:  # one 30 MB line, then 20 MB of 1.4 KB documents
    f.write('{{"body": "')
    for _ in range(86):  # in parts: the peak measured is the tokenizer's, not the writer's
        f.write(" ".join(rng.choice(words, 100_000)) + " ")
    f.write('end"}}\\n')
    for _ in range(14_000):
        f.write(json.dumps({{"body": " ".join(rng.choice(words, 400)), "meta": "m"}}) + "\\n")
docs = read_documents(path)
tok = DocumentTokenizer.gpt2()
tok.encode_corpus(docs[-2:])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
corpus = tok.encode_corpus(docs)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"tokens": corpus.num_tokens, "before": before, "peak": peak}}))
"""


@pytest.mark.timeout(600)
def test_peak_memory_of_a_50_mb_corpus_is_a_small_multiple_of_its_tokens(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", PEAK.format(words=WORDS), str(tmp_path / "corpus.documents")],
        capture_output=True,
        text=True,
        timeout=560,
    )
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout)
    assert (tmp_path / "corpus.documents").stat().st_size > 50e6
    grew = figures["peak"] - figures["before"]
    # int32 ids are 4 bytes a token; lists of Python ints were ~400 (a 200 MB line: 21 GB).
    assert grew < 32 * figures["tokens"], figures
