"""Incremental detokenisation with stop strings: text pieces that are final as they come.

A piece is handed out only when nothing later can change it:
- bytes of a multi-byte character split across tokens decode to U+FFFD until the character
  is complete, so text ending in U+FFFD is held back (for a few tokens at most: after that
  it is invalid bytes); the decoder sees a small window of recent tokens, TGI-style, so the
  cost per token stays constant;
- text that could be the beginning of a stop string is held back until it is not;
- a stop string ends the text: everything from its start on is never handed out.
Joining every piece (including `finish()`'s) gives exactly `text`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT_CHAR = "\ufffd"
# A character is at most 4 bytes: text still ending in U+FFFD after this many more tokens is
# invalid bytes, not an unfinished character, and is released as it is.
MAX_PENDING_TOKENS = 8


class TextStream:
    """Turns generated token ids into final text pieces for one sequence."""

    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stop = tuple(stop)
        self._longest_stop = max((len(s) for s in self._stop), default=0)
        self._ids: list[int] = []
        self._prefix_offset = 0  # window start: context so the decoder joins tokens right
        self._read_offset = 0  # tokens before this are already in `text`
        self.text = ""  # decoded text so far (cut before a stop string once one is found)
        self._emitted = 0  # characters of `text` already handed out
        self.stopped = False  # a stop string was found

    def push(self, token_id: int) -> str:
        """Add one generated token; return the text that became final ("" if none)."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        current = self._decode(self._ids[self._prefix_offset :])
        pending = len(self._ids) - self._read_offset
        if len(current) == len(prefix):
            self._read_offset = len(self._ids)  # tokens without text (special tokens)
        elif not current.endswith(REPLACEMENT_CHAR) or pending > MAX_PENDING_TOKENS:
            self._append(current[len(prefix) :])
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return self._release(final=False)

    def finish(self) -> str:
        """No more tokens: flush what was held back (incomplete bytes decode to U+FFFD)."""
        if not self.stopped and self._read_offset < len(self._ids):
            prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
            current = self._decode(self._ids[self._prefix_offset :])
            self._append(current[len(prefix) :])
            self._read_offset = len(self._ids)
        return self._release(final=True)

    def _append(self, piece: str) -> None:
        """Extend `text`; cut it at the earliest stop string that the new piece completes."""
        start = max(0, len(self.text) - self._longest_stop + 1)
        self.text += piece
        found = [i for s in self._stop if (i := self.text.find(s, start)) >= 0]
        if found:
            self.text = self.text[: min(found)]
            self.stopped = True

    def _release(self, final: bool) -> str:
        end = len(self.text)
        if not (final or self.stopped):
            end -= self._held_for_stop()
        piece = self.text[self._emitted : end]
        self._emitted = max(self._emitted, end)
        return piece

    def _held_for_stop(self) -> int:
        """Length of the longest end of `text` that is the start of some stop string."""
        text = self.text
        for n in range(min(self._longest_stop - 1, len(text)), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self._stop):
                return n
        return 0
