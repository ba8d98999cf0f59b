"""DocumentTokenizer: documents → token ids and LM labels, over a `tokenizers.Tokenizer`.

The layout is the original project's control-code encoding (see DEVELOPERS.md):

    training:   meta ids + [END_OF_META]   [START_OF_DOCUMENT] + body ids + EOS
    labels:     LOSS_IGNORE ...            LOSS_IGNORE, body ids, EOS
    inference:  meta ids + [END_OF_META]   [START_OF_DOCUMENT] + last max_body_len body ids

Labels are aligned with `token_ids` (the Hugging Face convention: the model shifts them).
The meta part keeps its last `max_meta_len` ids, so `[END_OF_META]` always survives. A body
longer than `max_body_len` is cut into consecutive chunks, each prefixed by the same meta;
the first token of a continuation chunk gets LOSS_IGNORE because the model sees none of the
body that precedes it, and a last chunk of a single token (nothing left to learn) is dropped.

Text and control tokens are encoded separately and their ids concatenated, and the wrapped
tokenizer has `encode_special_tokens` on: a body that literally contains "<|endoftext|>" is
tokenized as text and cannot inject control tokens. A corpus is encoded in bounded batches
into flat int32 arrays (`encode_corpus`, fst/core/token_corpus.py). Torch-free.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from fst.core.constants import (
    BUNDLE_TOKENIZER,
    END_OF_META,
    GPT2_EOS,
    START_OF_DOCUMENT,
)
from fst.core.documents import Document, iter_documents, write_text_atomic
from fst.core.token_corpus import (
    CorpusBuilder,
    TokenCorpus,
    batches_of,
    encode_pieces,
    split_text,
)

# GPT-2's byte-level BPE (OpenAI, MIT licence: assets/gpt2_bpe/LICENSE), shipped as package
# data so that every GPT-2 model works offline: 1.3 MB, small enough for the base install.
GPT2_BPE_DIR = Path(__file__).resolve().parent / "assets" / "gpt2_bpe"
# Hub names whose tokenizer is exactly that BPE: resolved locally, never downloaded.
GPT2_HUB_NAMES = frozenset({"gpt2", "distilgpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"})


@dataclass(frozen=True)
class Encoding:
    """One training sequence: token ids and their LM labels (LOSS_IGNORE where no loss)."""

    token_ids: list[int]
    labels: list[int]

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.labels):
            raise ValueError(
                f"token_ids ({len(self.token_ids)}) and labels ({len(self.labels)}) differ in length"
            )


@dataclass(frozen=True)
class TokenizerSettings:
    """Document settings that travel beside tokenizer.json as plain data."""

    document_format: bool = True
    max_meta_len: int = 32
    max_body_len: int = 256
    ignore_meta_prob: float = 0.0
    eos_token: str = GPT2_EOS
    # The tokenizer's own start token (Llama's <s>, <|begin_of_text|>), put before plain-LM
    # text as its own post-processor would; None: no BOS (GPT-2; document format uses
    # [START_OF_DOCUMENT] instead).
    bos_token: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.document_format, bool):
            raise ValueError(f"document_format must be true or false, got {self.document_format!r}")
        # 0 means "no meta part at all" (the original README trains with --max_meta_len=0).
        _check_int("max_meta_len", self.max_meta_len, minimum=0)
        # [START_OF_DOCUMENT] plus at least one body token per chunk.
        _check_int("max_body_len", self.max_body_len, minimum=2)
        prob = self.ignore_meta_prob
        if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0.0 <= prob <= 1.0:
            raise ValueError(f"ignore_meta_prob must be a number in [0, 1], got {prob!r}")
        object.__setattr__(self, "ignore_meta_prob", float(prob))
        if not isinstance(self.eos_token, str) or not self.eos_token:
            raise ValueError(f"eos_token must be a non-empty string, got {self.eos_token!r}")
        if self.bos_token is not None and (
            not isinstance(self.bos_token, str) or not self.bos_token
        ):
            raise ValueError(
                f"bos_token must be a non-empty string or null, got {self.bos_token!r}"
            )


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


class DocumentTokenizer:
    """Encodes documents for training and inference; decodes generated ids.

    Takes ownership of `tokenizer`: adds the EOS and (in document format) the two control
    tokens as special tokens when missing, and turns off truncation and padding, which
    would silently cut documents.
    """

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        document_format: bool = True,
        max_meta_len: int = 32,
        max_body_len: int = 256,
        ignore_meta_prob: float = 0.0,
        eos_token: str = GPT2_EOS,
        bos_token: str | None = None,
    ) -> None:
        self._settings = TokenizerSettings(
            document_format=document_format,
            max_meta_len=max_meta_len,
            max_body_len=max_body_len,
            ignore_meta_prob=ignore_meta_prob,
            eos_token=eos_token,
            bos_token=bos_token,
        )
        specials = [eos_token, *((START_OF_DOCUMENT, END_OF_META) if document_format else ())]
        specials += [bos_token] if bos_token else []
        tokenizer.add_special_tokens(specials)
        tokenizer.no_truncation()
        tokenizer.no_padding()
        tokenizer.encode_special_tokens = True
        self._tokenizer = tokenizer
        self.eos_token_id: int = tokenizer.token_to_id(eos_token)
        self.bos_token_id: int | None = tokenizer.token_to_id(bos_token) if bos_token else None
        # Padding is masked out and its labels ignored, so EOS can stand in for it.
        self.pad_token_id: int = self.eos_token_id
        self.start_of_document_id: int | None = None
        self.end_of_meta_id: int | None = None
        if document_format:
            self.start_of_document_id = tokenizer.token_to_id(START_OF_DOCUMENT)
            self.end_of_meta_id = tokenizer.token_to_id(END_OF_META)
        added = tokenizer.get_added_tokens_decoder()
        self._vocab_size = max(tokenizer.get_vocab_size(with_added_tokens=True), max(added) + 1)
        self._markup_tokenizer: tokenizers.Tokenizer | None = None  # see encode_markup

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **settings) -> DocumentTokenizer:
        """A folder with tokenizer.json or GPT-2's vocab.json + merges.txt, a tokenizer.json
        file, or else a Hugging Face hub name (needs the network). The GPT-2 family's names
        ("gpt2", "distilgpt2", ...) resolve to the BPE shipped with fst, offline.

        A model folder's own EOS and BOS (tokenizer_config.json / config.json, see
        `declared_special_tokens`) are used unless `settings` name them."""
        TokenizerSettings(**settings)  # fail on a bad setting before loading anything
        if str(name_or_path) in GPT2_HUB_NAMES and not Path(name_or_path).exists():
            return cls.gpt2(**settings)
        path = Path(name_or_path)
        if path.is_file():
            return cls.from_json(path.read_text(encoding="utf-8"), **settings)
        if path.is_dir():
            if (path / BUNDLE_TOKENIZER).is_file():
                raw = tokenizers.Tokenizer.from_file(str(path / BUNDLE_TOKENIZER))
                return cls(raw, **{**declared_special_tokens(path, raw), **settings})
            if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
                return cls.from_gpt2_files(path / "vocab.json", path / "merges.txt", **settings)
            raise ValueError(
                f"{path}: no tokenizer here (expected {BUNDLE_TOKENIZER}, or vocab.json and "
                "merges.txt)"
            )
        try:
            tokenizer = tokenizers.Tokenizer.from_pretrained(str(name_or_path))
        except Exception as e:
            raise ValueError(
                f"{name_or_path}: not a local tokenizer folder or file, and loading it from the "
                f"Hugging Face hub failed ({type(e).__name__}: {e})"
            ) from e
        return cls(tokenizer, **settings)

    @classmethod
    def gpt2(cls, **settings) -> DocumentTokenizer:
        """GPT-2's own tokenizer (the BPE shipped with fst: no hub, no folder argument)."""
        return cls.from_gpt2_files(
            GPT2_BPE_DIR / "vocab.json", GPT2_BPE_DIR / "merges.txt", **settings
        )

    @classmethod
    def from_gpt2_files(
        cls, vocab: str | Path, merges: str | Path, **settings
    ) -> DocumentTokenizer:
        """GPT-2's byte-level BPE from its vocab.json and merges.txt."""
        TokenizerSettings(**settings)  # fail on a bad setting before loading anything
        tokenizer = tokenizers.Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
        _make_byte_level(tokenizer)
        return cls(tokenizer, **settings)

    @classmethod
    def train_bpe(
        cls,
        files: Sequence[str | Path],
        vocab_size: int = 8000,
        min_frequency: int = 2,
        **settings,
    ) -> DocumentTokenizer:
        """Train a byte-level BPE on the bodies and metas of documents files."""
        return cls.train_bpe_from_texts(
            _document_texts(files), vocab_size, min_frequency, **settings
        )

    @classmethod
    def train_bpe_from_texts(
        cls, texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2, **settings
    ) -> DocumentTokenizer:
        """Train a byte-level BPE on texts (dialog messages, say)."""
        options = TokenizerSettings(**settings)
        specials = [options.eos_token]
        if options.document_format:
            specials += [START_OF_DOCUMENT, END_OF_META]
        tokenizer = tokenizers.Tokenizer(models.BPE())
        _make_byte_level(tokenizer)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer, **asdict(options))

    @classmethod
    def from_json(cls, json_str: str, **settings) -> DocumentTokenizer:
        """Rebuild from `to_json()` output; pass `settings()` back as keyword arguments."""
        return cls(tokenizers.Tokenizer.from_str(json_str), **settings)

    # ---- serialisation ------------------------------------------------------------------

    def to_json(self) -> str:
        """The tokenizers.Tokenizer JSON, special tokens included."""
        return self._tokenizer.to_str()

    def save(self, path: str | Path) -> Path:
        """Write tokenizer.json atomically; `path` is a file or an existing folder."""
        path = Path(path)
        if path.is_dir():
            path = path / BUNDLE_TOKENIZER
        write_text_atomic(path, self.to_json())
        return path

    def settings(self) -> dict:
        """Plain-data settings: `from_json(to_json(), **settings())` is the same tokenizer."""
        return asdict(self._settings)

    # ---- vocabulary ---------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of embedding rows the model needs (largest id + 1, added tokens included)."""
        return self._vocab_size

    @property
    def document_format(self) -> bool:
        return self._settings.document_format

    @property
    def max_meta_len(self) -> int:
        return self._settings.max_meta_len

    @property
    def max_body_len(self) -> int:
        return self._settings.max_body_len

    @property
    def eos_token(self) -> str:
        return self._settings.eos_token

    def add_special_tokens(self, tokens: Sequence[str]) -> list[str]:
        """Add `tokens` as special tokens where missing (a chat format's markers); returns
        those that were not special yet. The model's embeddings must then grow to `vocab_size`."""
        added = {t.content for t in self._tokenizer.get_added_tokens_decoder().values()}
        missing = [t for t in dict.fromkeys(tokens) if t not in added]
        if missing:
            self._tokenizer.add_special_tokens(missing)
            self._markup_tokenizer = None  # encode_markup's copy lacks them
            decoder = self._tokenizer.get_added_tokens_decoder()
            self._vocab_size = max(
                self._tokenizer.get_vocab_size(with_added_tokens=True), max(decoder) + 1
            )
        return missing

    def token_id(self, token: str) -> int | None:
        """The id of one token string (None when the vocabulary lacks it)."""
        return self._tokenizer.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """The token string of one id (None when out of the vocabulary)."""
        return self._tokenizer.id_to_token(int(token_id))

    def special_token_strings(self) -> list[str]:
        """The added special tokens (EOS, chat markers, document control tokens)."""
        decoder = self._tokenizer.get_added_tokens_decoder()
        return [t.content for t in decoder.values() if t.special]

    def num_added_tokens(self, base_vocab_size: int) -> int:
        """How many embedding rows a model with `base_vocab_size` rows lacks (ids from
        `base_vocab_size` up to `vocab_size`)."""
        return max(0, self.vocab_size - base_vocab_size)

    # ---- encoding -----------------------------------------------------------------------

    def encode_text(self, text: str) -> list[int]:
        """Plain tokenization: no control tokens, no EOS."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def encode_markup(self, text: str) -> list[int]:
        """Text written by a chat template: special-token strings in it (`<|im_end|>`) are
        those tokens, as `apply_chat_template(..., tokenize=True)` encodes them; no BOS or
        EOS is added. (`encode_text` reads them as plain characters.)"""
        if self._markup_tokenizer is None:  # a copy: the shared one's flag stays as it is
            markup = tokenizers.Tokenizer.from_str(self._tokenizer.to_str())
            markup.encode_special_tokens = False
            self._markup_tokenizer = markup
        return self._markup_tokenizer.encode(text, add_special_tokens=False).ids

    def encode_for_train(self, doc: Document, rng: random.Random | None = None) -> list[Encoding]:
        """One document → one or more training sequences (see the module docstring)."""
        return self.encode_documents([doc], rng)

    def encode_documents(
        self, docs: Iterable[Document], rng: random.Random | None = None
    ) -> list[Encoding]:
        """`encode_for_train` over many documents (same result and the same `rng` draws as
        calling it document by document); a training corpus uses `encode_corpus`."""
        return list(self.encode_corpus(list(docs), rng))

    def encode_corpus(
        self, docs: Sequence[Document], rng: random.Random | None = None
    ) -> TokenCorpus:
        """The training sequences of `docs` as flat int32 arrays, encoded a bounded batch of
        text at a time: memory a small multiple of the token count, whatever a document's
        length (see fst/core/token_corpus.py)."""
        builder = CorpusBuilder()
        eos = np.array([self.eos_token_id], dtype=np.int32)
        no_meta = np.zeros(0, dtype=np.int32)
        for group in batches_of(d.body for d in docs):
            batch = [docs[i] for i in group]
            bodies = encode_pieces(self._encode_batch, [d.body for d in batch])
            if not self.document_format:
                bos = np.array(self._bos(), dtype=np.int32)
                for ids in bodies:
                    self._add_chunks(builder, no_meta, np.concatenate((bos, ids, eos)), bos.size)
            else:
                keep = [self._keep_meta(d, rng) for d in batch]
                kept = [d.meta for d, k in zip(batch, keep, strict=True) if k]
                metas = iter(encode_pieces(self._encode_batch, kept))
                start = np.array([self.start_of_document_id], dtype=np.int32)
                for ids, k in zip(bodies, keep, strict=True):
                    meta = self._meta_part(next(metas).tolist()) if k else []
                    meta_ids = np.array(meta, dtype=np.int32)
                    self._add_chunks(builder, meta_ids, np.concatenate((start, ids, eos)), 1)
            builder.end_batch()
        return builder.build()

    def _add_chunks(
        self, builder: CorpusBuilder, meta: np.ndarray, seq: np.ndarray, first_ignored: int
    ) -> None:
        """`seq` in chunks of `max_body_len`, each after `meta` (see the module docstring):
        labels ignored on the meta and on the first `first_ignored` ids (1 on a later chunk)."""
        size = self.max_body_len
        for start in range(0, seq.size, size):
            chunk = seq[start : start + size]
            if start > 0 and chunk.size == 1:
                break  # its only label would be ignored: nothing to learn
            ignored = meta.size + (first_ignored if start == 0 else 1)
            builder.add(np.concatenate((meta, chunk)) if meta.size else chunk, ignored)

    def encode_for_inference(self, prompt: Document | str) -> list[int]:
        """Prompt ids for generation: no EOS, the meta never dropped, the last
        `max_body_len` body ids kept so the most recent context survives.

        A `str` is the body of a document without meta (document format) or the text itself
        (plain format). In plain format the text follows the tokenizer's BOS when it has one;
        an empty prompt without one becomes [EOS], GPT-2's start token.
        """
        body, meta = (prompt, None) if isinstance(prompt, str) else (prompt.body, prompt.meta)
        body_ids = self.encode_text(body)[-self.max_body_len :] if body else []
        if not self.document_format:
            return [*self._bos(), *body_ids] or [self.eos_token_id]
        use_meta = meta and self.max_meta_len > 0
        meta_ids = self._meta_part(self.encode_text(meta)) if use_meta else []
        return [*meta_ids, self.start_of_document_id, *body_ids]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode(
            [int(i) for i in ids], skip_special_tokens=skip_special_tokens
        )

    # ---- helpers ------------------------------------------------------------------------

    def _bos(self) -> list[int]:
        return [] if self.bos_token_id is None else [self.bos_token_id]

    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        encodings = self._tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        return [e.ids for e in encodings]

    def _keep_meta(self, doc: Document, rng: random.Random | None) -> bool:
        """Whether this document's meta is used; draws from `rng` only when it matters."""
        prob = self._settings.ignore_meta_prob
        if not doc.meta or prob == 1.0 or self.max_meta_len == 0:
            return False
        if prob == 0.0 or rng is None:
            return True
        return rng.random() >= prob

    def _meta_part(self, meta_ids: list[int]) -> list[int]:
        # Left truncation, as the original: the end of the meta and [END_OF_META] survive.
        return [*meta_ids, self.end_of_meta_id][-self.max_meta_len :]


def declared_special_tokens(folder: Path, tokenizer: tokenizers.Tokenizer) -> dict[str, str]:
    """The EOS (and BOS) a Hugging Face model folder declares, as DocumentTokenizer settings.

    EOS: tokenizer_config.json's `eos_token`, else config.json's `eos_token_id`. BOS: only
    when the tokenizer's own post-processor puts it first (what `transformers` does with
    add_special_tokens=True: Llama, TinyLlama; not SmolLM2, Qwen or GPT-2). Empty when the
    folder declares nothing (the GPT-2 default stays).
    """
    import json

    def read(name: str) -> dict:
        file = folder / name
        return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}

    def content(token) -> str | None:
        return token.get("content") if isinstance(token, dict) else token

    declared = read("tokenizer_config.json")
    eos = content(declared.get("eos_token"))
    if not eos:
        eos_id = read("config.json").get("eos_token_id")
        eos_id = eos_id[0] if isinstance(eos_id, list) and eos_id else eos_id
        eos = tokenizer.id_to_token(eos_id) if isinstance(eos_id, int) else None
    settings = {"eos_token": eos} if eos and tokenizer.token_to_id(eos) is not None else {}
    bos = content(declared.get("bos_token"))
    bos_id = tokenizer.token_to_id(bos) if bos else None
    if bos_id is not None:
        ids = tokenizer.encode("a", add_special_tokens=True).ids
        if ids and ids[0] == bos_id:
            settings["bos_token"] = bos
    return settings


def _make_byte_level(tokenizer: tokenizers.Tokenizer) -> None:
    """GPT-2's byte-level pre-tokenizer and decoder (what ByteLevelBPETokenizer sets up)."""
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()


def _document_texts(files: Sequence[str | Path]) -> Iterator[str]:
    for path in files:
        for doc in iter_documents(path):  # long texts in pieces: bounded trainer memory
            yield from split_text(doc.body)
            if doc.meta:
                yield from split_text(doc.meta)
