import random

import pytest

from fst.core.constants import END_OF_META, GPT2_EOS, LOSS_IGNORE, START_OF_DOCUMENT
from fst.core.documents import Document, read_documents, write_documents
from fst.core.tokenization import DocumentTokenizer, Encoding

I = LOSS_IGNORE  # noqa: E741 - keeps the hand-written label rows readable
# GPT-2 ids: the base vocabulary has 50257 entries, <|endoftext|> is its last one (50256);
# our two control tokens are appended after it.
EOS, SOD, EOM = 50256, 50257, 50258
HELLO, WORLD = 15496, 995  # "Hello world"
ELEVEN_WORDS = "one two three four five six seven eight nine ten eleven"  # 11 GPT-2 tokens


@pytest.fixture
def gpt2(gpt2_bpe_dir):
    """A factory: GPT-2 BPE with the given document settings."""

    def make(**settings) -> DocumentTokenizer:
        return DocumentTokenizer.from_gpt2_files(
            gpt2_bpe_dir / "vocab.json", gpt2_bpe_dir / "merges.txt", **settings
        )

    return make


# ---- vocabulary ---------------------------------------------------------------------------


def test_gpt2_files_give_gpt2_ids_and_special_tokens_are_appended(gpt2):
    tok = gpt2()
    assert tok.encode_text("Hello world") == [HELLO, WORLD]
    assert (tok.eos_token_id, tok.start_of_document_id, tok.end_of_meta_id) == (EOS, SOD, EOM)
    assert tok.pad_token_id == tok.eos_token_id
    assert tok.vocab_size == 50259
    assert tok.num_added_tokens(50257) == 2  # GPT-2's embedding matrix lacks SOD and EOM
    assert tok.num_added_tokens(50259) == 0
    assert tok.decode([SOD, EOM, EOS], skip_special_tokens=False) == (
        START_OF_DOCUMENT + END_OF_META + GPT2_EOS
    )


def test_plain_mode_adds_no_control_tokens(gpt2):
    tok = gpt2(document_format=False)
    assert tok.start_of_document_id is None and tok.end_of_meta_id is None
    assert tok.vocab_size == 50257 and tok.eos_token_id == EOS
    assert tok.num_added_tokens(50257) == 0


def test_custom_eos_token_is_added_when_missing(gpt2):
    tok = gpt2(eos_token="<eos>")
    # Added in order EOS, SOD, EOM after GPT-2's 50257 entries.
    assert (tok.eos_token_id, tok.start_of_document_id, tok.end_of_meta_id) == (50257, 50258, 50259)
    assert tok.decode([tok.eos_token_id], skip_special_tokens=False) == "<eos>"
    assert tok.vocab_size == 50260


def test_control_token_text_in_a_body_is_not_a_control_token(gpt2):
    tok = gpt2()
    ids = tok.encode_text(f"a{GPT2_EOS}b{START_OF_DOCUMENT}")
    assert not {EOS, SOD, EOM} & set(ids)
    assert tok.decode(ids) == f"a{GPT2_EOS}b{START_OF_DOCUMENT}"


# ---- training encoding --------------------------------------------------------------------


def test_train_layout_and_labels(gpt2):
    tok = gpt2()
    [enc] = tok.encode_for_train(Document(body="Hello world", meta="Hello"))
    # meta "Hello" + [END_OF_META] | [START_OF_DOCUMENT] "Hello" " world" EOS
    assert enc.token_ids == [HELLO, EOM, SOD, HELLO, WORLD, EOS]
    assert enc.labels == [I, I, I, HELLO, WORLD, EOS]


@pytest.mark.parametrize("meta", [None, ""])
def test_no_meta_means_no_meta_part(gpt2, meta):
    tok = gpt2()
    [enc] = tok.encode_for_train(Document(body="Hello world", meta=meta))
    assert enc == Encoding([SOD, HELLO, WORLD, EOS], [I, HELLO, WORLD, EOS])


def test_meta_is_left_truncated_keeping_end_of_meta(gpt2):
    tok = gpt2(max_meta_len=3)
    meta_ids = tok.encode_text(ELEVEN_WORDS)
    assert len(meta_ids) == 11
    [enc] = tok.encode_for_train(Document(body="Hello world", meta=ELEVEN_WORDS))
    # The original's meta_ids[-max_meta_len:]: "ten", "eleven", [END_OF_META].
    assert enc.token_ids == [*meta_ids[-2:], EOM, SOD, HELLO, WORLD, EOS]
    assert enc.labels == [I, I, I, I, HELLO, WORLD, EOS]


def test_long_body_is_chunked_with_meta_on_every_chunk(gpt2):
    tok = gpt2(max_body_len=4)
    b = tok.encode_text(ELEVEN_WORDS)
    assert len(b) == 11
    encs = tok.encode_for_train(Document(body=ELEVEN_WORDS, meta="Hello"))
    # [SOD] + 11 body ids + EOS = 13 tokens -> 4 + 4 + 4 + 1; the last chunk holds only EOS,
    # whose label would be ignored (continuation), so it is dropped.
    assert [e.token_ids for e in encs] == [
        [HELLO, EOM, SOD, b[0], b[1], b[2]],
        [HELLO, EOM, b[3], b[4], b[5], b[6]],
        [HELLO, EOM, b[7], b[8], b[9], b[10]],
    ]
    # Meta labels ignored; the first token of a continuation chunk has no body context.
    assert [e.labels for e in encs] == [
        [I, I, I, b[0], b[1], b[2]],
        [I, I, I, b[4], b[5], b[6]],
        [I, I, I, b[8], b[9], b[10]],
    ]


def test_last_chunk_of_two_tokens_is_kept(gpt2):
    tok = gpt2(max_body_len=4)
    b = tok.encode_text(" a b c d e")
    assert len(b) == 5
    encs = tok.encode_for_train(Document(body=" a b c d e"))
    # [SOD] a b c d e EOS = 7 tokens -> 4 + 3
    assert encs == [
        Encoding([SOD, b[0], b[1], b[2]], [I, b[0], b[1], b[2]]),
        Encoding([b[3], b[4], EOS], [I, b[4], EOS]),
    ]


def test_body_exactly_max_body_len_is_one_chunk(gpt2):
    tok = gpt2(max_body_len=4)
    assert tok.encode_for_train(Document(body="Hello world")) == [
        Encoding([SOD, HELLO, WORLD, EOS], [I, HELLO, WORLD, EOS])
    ]


def _meta_kept(tok, rng, n=200):
    doc = Document(body="Hello world", meta="Hello")
    return [tok.encode_for_train(doc, rng)[0].token_ids[0] == HELLO for _ in range(n)]


def test_ignore_meta_prob_uses_only_the_given_rng(gpt2):
    assert all(_meta_kept(gpt2(ignore_meta_prob=0.0), random.Random(0)))
    assert not any(_meta_kept(gpt2(ignore_meta_prob=1.0), random.Random(0)))
    assert not any(_meta_kept(gpt2(ignore_meta_prob=1.0), None))
    half = gpt2(ignore_meta_prob=0.5)
    kept = _meta_kept(half, random.Random(1234))
    assert any(kept) and not all(kept)
    assert 60 < sum(kept) < 140  # binomial(200, 0.5): far outside would mean a wrong rule
    assert _meta_kept(half, random.Random(1234)) == kept  # reproducible from the seed
    # No rng: never dropped, and the global random state plays no part.
    random.seed(0)
    assert all(_meta_kept(half, None))


def test_dropped_meta_gives_the_no_meta_layout(gpt2):
    tok = gpt2(ignore_meta_prob=1.0)
    [enc] = tok.encode_for_train(Document(body="Hello world", meta="Hello"), random.Random(0))
    assert enc == Encoding([SOD, HELLO, WORLD, EOS], [I, HELLO, WORLD, EOS])


def test_encode_documents_equals_one_by_one_with_the_same_rng_draws(gpt2, nietzsche_dir):
    tok = gpt2(max_body_len=64, max_meta_len=8, ignore_meta_prob=0.5)
    docs = read_documents(nietzsche_dir / "valid.documents")[:40]
    docs += [Document(body=d.body[:200], meta=f"meta {i}") for i, d in enumerate(docs)]
    batched = tok.encode_documents(docs, random.Random(7))
    rng = random.Random(7)
    one_by_one = [enc for doc in docs for enc in tok.encode_for_train(doc, rng)]
    assert batched == one_by_one
    assert all(len(e.token_ids) <= 64 + 8 for e in batched)
    assert len(batched) > len(docs)  # long bodies were chunked


def test_plain_mode_train_is_text_plus_eos_chunked(gpt2):
    tok = gpt2(document_format=False, max_body_len=4)
    b = tok.encode_text(" a b c d e")
    # Meta is not used in plain mode; " a b c d e" + EOS = 6 tokens -> 4 + 2.
    assert tok.encode_for_train(Document(body=" a b c d e", meta="Hello")) == [
        Encoding(b[:4], b[:4]),
        Encoding([b[4], EOS], [I, EOS]),
    ]


# ---- inference encoding -------------------------------------------------------------------


def test_inference_has_no_eos_and_keeps_meta(gpt2):
    tok = gpt2(ignore_meta_prob=1.0)  # never applies at inference
    prompt = Document(body="Hello world", meta="Hello")
    assert tok.encode_for_inference(prompt) == [HELLO, EOM, SOD, HELLO, WORLD]
    assert tok.encode_for_inference("Hello world") == [SOD, HELLO, WORLD]
    assert tok.encode_for_inference(Document(body="", meta="Hello")) == [HELLO, EOM, SOD]


def test_inference_keeps_the_last_body_tokens(gpt2):
    tok = gpt2(max_body_len=4, max_meta_len=2)
    b = tok.encode_text(ELEVEN_WORDS)
    m = tok.encode_text(ELEVEN_WORDS)
    assert tok.encode_for_inference(Document(body=ELEVEN_WORDS, meta=ELEVEN_WORDS)) == [
        m[-1],
        EOM,
        SOD,
        *b[-4:],
    ]


def test_plain_mode_inference(gpt2):
    tok = gpt2(document_format=False, max_body_len=4)
    b = tok.encode_text(ELEVEN_WORDS)
    assert tok.encode_for_inference(ELEVEN_WORDS) == b[-4:]
    assert tok.encode_for_inference("Hello world") == [HELLO, WORLD]
    assert tok.encode_for_inference("") == [EOS]  # GPT-2's start-of-text


def test_decode_skips_control_tokens(gpt2):
    tok = gpt2()
    ids = tok.encode_for_inference(Document(body="Hello world", meta="Hello")) + [EOS]
    assert tok.decode(ids) == "HelloHello world"
    assert tok.decode(ids, skip_special_tokens=False) == (
        f"Hello{END_OF_META}{START_OF_DOCUMENT}Hello world{GPT2_EOS}"
    )


# ---- serialisation ------------------------------------------------------------------------


def test_json_round_trip_gives_identical_encodings(gpt2):
    tok = gpt2(max_meta_len=5, max_body_len=6, ignore_meta_prob=0.3)
    settings = tok.settings()
    assert settings == {
        "document_format": True,
        "max_meta_len": 5,
        "max_body_len": 6,
        "ignore_meta_prob": 0.3,
        "eos_token": GPT2_EOS,
        "bos_token": None,
    }
    again = DocumentTokenizer.from_json(tok.to_json(), **settings)
    assert again.settings() == settings
    assert again.vocab_size == tok.vocab_size
    assert (again.start_of_document_id, again.end_of_meta_id) == (SOD, EOM)
    docs = [Document(body=ELEVEN_WORDS, meta=ELEVEN_WORDS), Document(body="Hello world")] * 10
    assert again.encode_documents(docs, random.Random(3)) == tok.encode_documents(
        docs, random.Random(3)
    )
    assert again.encode_for_inference(docs[0]) == tok.encode_for_inference(docs[0])
    # The round trip is stable: adding the special tokens again changes nothing.
    assert again.to_json() == tok.to_json()


def test_save_and_from_pretrained(gpt2, gpt2_bpe_dir, tmp_path):
    tok = gpt2(max_body_len=8)
    path = tok.save(tmp_path)
    assert path == tmp_path / "tokenizer.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json"]  # no temp left
    from_folder = DocumentTokenizer.from_pretrained(tmp_path, **tok.settings())
    from_file = DocumentTokenizer.from_pretrained(str(path), **tok.settings())
    from_gpt2_dir = DocumentTokenizer.from_pretrained(gpt2_bpe_dir, max_body_len=8)
    doc = Document(body=ELEVEN_WORDS, meta="Hello")
    expected = tok.encode_for_train(doc)
    for other in (from_folder, from_file, from_gpt2_dir):
        assert other.encode_for_train(doc) == expected
    assert tok.save(tmp_path / "other.json") == tmp_path / "other.json"


def test_from_pretrained_folder_without_tokenizer(tmp_path):
    with pytest.raises(ValueError, match="no tokenizer here"):
        DocumentTokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("max_meta_len", -1),
        ("max_meta_len", 2.5),
        ("max_body_len", 1),
        ("max_body_len", True),
        ("ignore_meta_prob", -0.1),
        ("ignore_meta_prob", 1.5),
        ("ignore_meta_prob", "0.5"),
        ("document_format", "yes"),
        ("eos_token", ""),
    ],
)
def test_bad_settings_name_the_field(gpt2, setting, value):
    with pytest.raises(ValueError, match=f"^{setting} must be"):
        gpt2(**{setting: value})


# ---- training a BPE -----------------------------------------------------------------------


def test_train_bpe_on_bodies_and_metas(tmp_path):
    docs = [
        Document(body=f"the apple tree number {i} grows apples near the river", meta="zyzzyva")
        for i in range(30)
    ]
    train = write_documents(tmp_path / "train.documents", docs)
    tok = DocumentTokenizer.train_bpe([train], vocab_size=400, min_frequency=2, max_body_len=16)
    # Special tokens come first in a trained vocabulary.
    assert (tok.eos_token_id, tok.start_of_document_id, tok.end_of_meta_id) == (0, 1, 2)
    assert tok.vocab_size <= 400
    text = "the apple tree grows near the river"
    assert tok.decode(tok.encode_text(text)) == text
    assert tok.decode(tok.encode_text("unseen: Ünïcode ✓")) == "unseen: Ünïcode ✓"  # byte-level
    assert len(tok.encode_text(" apple")) == 1  # frequent body word learned
    assert len(tok.encode_text("zyzzyva")) == 1  # the meta was trained on
    assert len(tok.encode_text("body")) > 1  # the raw JSON keys were not
    [enc] = tok.encode_for_train(Document(body=text, meta="zyzzyva"))
    assert enc.token_ids[:3] == [*tok.encode_text("zyzzyva"), 2, 1]
    assert enc.token_ids[-1] == 0
    # A trained tokenizer round-trips through JSON like any other.
    again = DocumentTokenizer.from_json(tok.to_json(), **tok.settings())
    assert again.encode_for_train(Document(body=text, meta="zyzzyva")) == [enc]


def test_train_bpe_plain_mode_has_only_eos(tmp_path):
    train = write_documents(tmp_path / "t.documents", [Document("some text here")] * 5)
    tok = DocumentTokenizer.train_bpe([train], vocab_size=300, document_format=False)
    assert tok.eos_token_id == 0 and tok.start_of_document_id is None
    assert tok.settings()["document_format"] is False


def test_max_meta_len_zero_means_no_meta(gpt2_bpe_dir):
    """The original README trains with --max_meta_len=0: no meta part, at train or inference."""
    tok = DocumentTokenizer.from_gpt2_files(
        gpt2_bpe_dir / "vocab.json", gpt2_bpe_dir / "merges.txt", max_meta_len=0
    )
    doc = Document(body="Hello world", meta="tags")
    (enc,) = tok.encode_for_train(doc, rng=random.Random(0))
    assert enc.token_ids == [tok.start_of_document_id, 15496, 995, tok.eos_token_id]
    assert tok.encode_for_inference(doc) == [tok.start_of_document_id, 15496, 995]


def test_gpt2_bpe_ships_with_fst_and_needs_no_hub(monkeypatch):
    """GPT-2's own tokenizer is package data: 'gpt2' and its siblings resolve offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("gpt2", "distilgpt2", "gpt2-xl"):
        tok = DocumentTokenizer.from_pretrained(name, document_format=False)
        assert tok.encode_text("Hello world") == [15496, 995]
    assert DocumentTokenizer.gpt2(document_format=False).vocab_size == 50257


# ---- a model folder's own special tokens (Llama-family tokenizers) ---------------------------


def _folder_with_tokenizer(folder, bos, eos, add_bos: bool):
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate([eos, bos, "a", "b", "ab", "▁", "▁a"])}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b"), ("▁", "a")]))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.add_special_tokens([eos, bos])
    if add_bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, vocab[bos])]
        )
    folder.mkdir()
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"bos_token": {"content": bos}, "eos_token": eos}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return vocab


def test_a_folders_own_eos_and_bos_are_used(tmp_path):
    vocab = _folder_with_tokenizer(tmp_path / "llama", "<s>", "</s>", add_bos=True)
    tok = DocumentTokenizer.from_pretrained(tmp_path / "llama", document_format=False)
    assert (tok.eos_token, tok.eos_token_id) == ("</s>", vocab["</s>"])
    assert tok.bos_token_id == vocab["<s>"]
    assert tok.vocab_size == len(vocab)  # nothing added: both tokens are the folder's own
    ids = tok.encode_text("ab a")
    # Plain LM: BOS first, as the tokenizer's own post-processor does (LOSS_IGNORE label).
    assert tok.encode_for_inference("ab a") == [vocab["<s>"], *ids]
    (enc,) = tok.encode_for_train(Document(body="ab a"))
    assert enc.token_ids == [vocab["<s>"], *ids, vocab["</s>"]]
    assert enc.labels == [LOSS_IGNORE, *ids, vocab["</s>"]]
    again = DocumentTokenizer.from_json(tok.to_json(), **tok.settings())
    assert again.bos_token_id == tok.bos_token_id and again.eos_token_id == tok.eos_token_id


def test_a_declared_bos_the_tokenizer_does_not_add_is_not_used(tmp_path):
    vocab = _folder_with_tokenizer(tmp_path / "qwen", "<|im_start|>", "<|endoftext|>", False)
    tok = DocumentTokenizer.from_pretrained(tmp_path / "qwen", document_format=False)
    assert tok.eos_token_id == vocab["<|endoftext|>"] and tok.bos_token_id is None
    assert tok.encode_for_inference("ab") == tok.encode_text("ab")
    # Explicit settings win over the folder's declaration.
    tok = DocumentTokenizer.from_pretrained(
        tmp_path / "qwen", document_format=False, eos_token="<|im_start|>"
    )
    assert tok.eos_token_id == vocab["<|im_start|>"]
