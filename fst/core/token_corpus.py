"""A tokenized corpus in three flat arrays, built in bounded batches.

Python lists of token ids cost ~40 bytes a token and `tokenizers` keeps ~100 more per token
of a string it encodes in one piece, so a 200 MB one-line document once needed 21 GB. Here
texts are encoded in pieces of at most `PIECE_CHARS` characters, `BATCH_CHARS` a call, and
the training sequences are kept as int32 ids end to end (4 bytes a token) with their
offsets; an `Encoding` (lists) is made only for the sequence a DataLoader asks for.

A long text is cut before a space that follows and precedes other characters: a boundary
of every pre-tokenizer that splits at spaces (GPT-2's byte-level, Llama's and Qwen's
regexes, SentencePiece's metaspace), so the ids equal those of the whole text there; a
tokenizer whose merges cross spaces may differ at one token per cut (one per 64K
characters). Torch-free.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from fst.core.constants import LOSS_IGNORE

if TYPE_CHECKING:
    from fst.core.tokenization import Encoding

# Characters `tokenizers` encodes in one piece, and per batch of documents.
PIECE_CHARS = 1 << 16
BATCH_CHARS = 1 << 18


class TokenCorpus:
    """Training sequences: `tokens[offsets[i]:offsets[i + 1]]` is sequence i, whose first
    `ignored[i]` labels are LOSS_IGNORE (meta, start token) and the others its ids.

    A read-only sequence of `Encoding`s (made on access), so a Dataset can wrap it.
    """

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, ignored: np.ndarray) -> None:
        self.tokens, self.offsets, self.ignored = tokens, offsets, ignored

    def __len__(self) -> int:
        return self.ignored.size

    def __getitem__(self, index: int | slice) -> Encoding | list[Encoding]:
        from fst.core.tokenization import Encoding

        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"sequence {index} of {len(self)}")
        index %= len(self)
        ids = self.tokens[self.offsets[index] : self.offsets[index + 1]].tolist()
        skip = int(self.ignored[index])
        return Encoding(token_ids=ids, labels=[LOSS_IGNORE] * skip + ids[skip:])

    def __iter__(self) -> Iterator[Encoding]:
        return (self[i] for i in range(len(self)))

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.size)


class CorpusBuilder:
    """Appends sequences (int32 arrays), one batch at a time; `build()` joins them once."""

    def __init__(self) -> None:
        self._parts: list[np.ndarray] = []  # one array per batch
        self._batch: list[np.ndarray] = []
        self._lengths: list[int] = []
        self._ignored: list[int] = []

    def add(self, ids: np.ndarray, ignored: int) -> None:
        self._batch.append(ids)
        self._lengths.append(ids.size)
        self._ignored.append(ignored)

    def end_batch(self) -> None:
        if self._batch:
            self._parts.append(np.concatenate(self._batch).astype(np.int32, copy=False))
            self._batch = []

    def build(self) -> TokenCorpus:
        self.end_batch()
        tokens = np.concatenate(self._parts) if self._parts else np.zeros(0, np.int32)
        self._parts = []
        offsets = np.zeros(len(self._lengths) + 1, dtype=np.int64)
        np.cumsum(np.asarray(self._lengths, dtype=np.int64), out=offsets[1:])
        return TokenCorpus(tokens, offsets, np.asarray(self._ignored, dtype=np.int32))


def split_text(text: str, max_chars: int = PIECE_CHARS) -> list[str]:
    """`text` in pieces of about `max_chars` or fewer, each cut before a space between two
    other characters (longer only where no such space exists)."""
    if len(text) <= max_chars:
        return [text]
    pieces, start, n = [], 0, len(text)
    while n - start > max_chars:
        cut = _boundary_before(text, start, start + max_chars)
        if cut is None:
            cut = _boundary_after(text, start + max_chars)
        if cut is None:
            break
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def _is_boundary(text: str, i: int) -> bool:
    return (
        text[i] == " "
        and 0 < i < len(text) - 1
        and not text[i - 1].isspace()
        and not text[i + 1].isspace()
    )


def _boundary_before(text: str, start: int, end: int) -> int | None:
    i = text.rfind(" ", start + 1, end)
    while i > start:
        if _is_boundary(text, i):
            return i
        i = text.rfind(" ", start + 1, i)
    return None


def _boundary_after(text: str, start: int) -> int | None:
    i = text.find(" ", start)
    while i != -1:
        if _is_boundary(text, i):
            return i
        i = text.find(" ", i + 1)
    return None


def batches_of(texts: Iterable[str | None], budget: int = BATCH_CHARS) -> Iterator[list[int]]:
    """Indices of `texts` grouped so a group's characters stay near `budget` (a longer text
    is a group alone)."""
    group: list[int] = []
    size = 0
    for i, text in enumerate(texts):
        length = len(text) if text else 0
        if group and size + length > budget:
            yield group
            group, size = [], 0
        group.append(i)
        size += length
    if group:
        yield group


def encode_pieces(encode_batch, texts: Sequence[str]) -> list[np.ndarray]:
    """Each text's ids (int32): long texts in pieces, at most `BATCH_CHARS` characters a
    call (the ids come back as Python lists, ~40 bytes a token, so calls stay small)."""
    pieces = [split_text(t) for t in texts]
    flat = [p for ps in pieces for p in ps]
    ids: list[np.ndarray] = []
    for group in batches_of(flat):
        ids += [np.asarray(x, dtype=np.int32) for x in encode_batch([flat[i] for i in group])]
    out, k = [], 0
    for ps in pieces:
        out.append(ids[k] if len(ps) == 1 else np.concatenate(ids[k : k + len(ps)]))
        k += len(ps)
    return out
