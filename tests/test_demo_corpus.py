import re
from pydoc_data.topics import topics

from fst.core.documents import read_documents
from fst.training.demo_corpus import (
    MIN_PARAGRAPH_CHARS,
    build_demo_corpus,
    demo_documents,
    split_demo_documents,
)


def test_build_writes_both_splits_from_pydoc_topics(tmp_path):
    train_path, valid_path = build_demo_corpus(tmp_path / "demo")
    assert (train_path.name, valid_path.name) == ("train.documents", "valid.documents")
    train, valid = read_documents(train_path), read_documents(valid_path)
    assert train and valid
    # ~10 % validation: every 10th document.
    assert len(valid) == (len(train) + len(valid)) // 10
    assert {d.meta for d in train + valid} == set(topics)  # every topic contributes
    assert all(len(d.body) >= MIN_PARAGRAPH_CHARS for d in train + valid)
    # Whitespace is normalised and reST underlines are gone.
    assert all(d.body == " ".join(d.body.split()) for d in train + valid)
    underline = re.compile(r"(^|\s)([*=])\2{4,}(\s|$)")  # e.g. "**********" under a title
    assert any(underline.search(text) for text in topics.values())
    assert not any(underline.search(d.body) for d in train + valid)


def test_paragraphs_come_from_their_topic():
    for doc in demo_documents()[::50]:
        first_words = " ".join(doc.body.split()[:3])
        assert first_words in " ".join(topics[doc.meta].split())


def test_split_is_every_tenth_document():
    docs = demo_documents()
    train, valid = split_demo_documents(docs)
    assert valid == docs[9::10]
    assert train == [d for i, d in enumerate(docs) if i % 10 != 9]


def test_build_is_deterministic_and_idempotent(tmp_path):
    a_train, a_valid = build_demo_corpus(tmp_path / "a")
    b_train, b_valid = build_demo_corpus(tmp_path / "b")
    assert a_train.read_bytes() == b_train.read_bytes()
    assert a_valid.read_bytes() == b_valid.read_bytes()

    # Existing files are kept as they are (a second call does not rebuild).
    a_train.write_text('{"body": "kept as is"}\n')
    assert build_demo_corpus(tmp_path / "a") == (a_train, a_valid)
    assert a_train.read_text() == '{"body": "kept as is"}\n'


def test_build_redoes_a_half_built_corpus(tmp_path):
    train_path, valid_path = build_demo_corpus(tmp_path)
    expected = valid_path.read_bytes()
    valid_path.unlink()
    build_demo_corpus(tmp_path)
    assert valid_path.read_bytes() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.documents", "valid.documents"]
