"""Conversations → training sequences whose labels are the assistant turns only.

The conversation is rendered with the model's chat template (`fst.core.chat_template`,
as transformers renders it). The assistant turns are found by rendering prefixes (the
standard trick, TRL's `assistant_only_loss` without `{% generation %}` blocks): the turn
of `messages[i]` is the text between `render(messages[:i], add_generation_prompt=True)`
and `render(messages[:i + 1])`, cut after its end-of-turn token (ChatML's newline after
`<|im_end|>` is never generated, so it is not learnt). Each piece of text is tokenised on
its own, exactly as at inference: the prompt up to the generation prompt, then the
model's tokens. Labels are the ids of the assistant turns (their end-of-turn token
included) and `LOSS_IGNORE` elsewhere.

Longer than `max_len` tokens: truncated from the left, so the last assistant turn stays
whole with as much of the context before it as fits (the system message may be lost);
a conversation whose last assistant turn plus its generation prompt do not fit is
refused. Everything after the last assistant turn is dropped (nothing to learn).

A template that does not render prefixes of a conversation as prefixes of its rendering
(Qwen3's drops earlier reasoning, say) cannot be used: `DialogError` says so. So can't a
message content containing a special token (it would inject a turn). Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from fst.core.chat_format import ChatFormat
from fst.core.chat_template import ChatTemplateError
from fst.core.constants import LOSS_IGNORE
from fst.core.dialogs import Conversation, DialogError
from fst.core.tokenization import DocumentTokenizer, Encoding


@dataclass(frozen=True)
class TextSpan:
    """Characters [start, end) of a rendering; `assistant`: learnt."""

    start: int
    end: int
    assistant: bool


class ChatEncoder:
    """Encodes conversations with one chat format for one tokenizer."""

    def __init__(self, tokenizer: DocumentTokenizer, chat: ChatFormat, max_len: int) -> None:
        self.tokenizer = tokenizer
        self.chat = chat
        self.max_len = max_len
        self._template = chat.renderer()
        self._specials = tokenizer.special_token_strings()

    def render(self, conversation: Conversation, add_generation_prompt: bool = False) -> str:
        try:
            return self._template.render(
                conversation.as_dicts(), add_generation_prompt=add_generation_prompt
            )
        except ChatTemplateError as e:
            raise DialogError(f"{conversation.where}: {e}") from None

    def spans(self, conversation: Conversation) -> tuple[str, list[TextSpan]]:
        """The full rendering and its pieces: context and assistant turns, in order."""
        self._check_contents(conversation)
        text = self.render(conversation)
        spans, position = [], 0
        for i, message in enumerate(conversation.messages):
            if message.role != "assistant":
                continue
            before = Conversation(conversation.messages[:i], conversation.where)
            upto = Conversation(conversation.messages[: i + 1], conversation.where)
            prompt = self.render(before, add_generation_prompt=True)
            turn = self.render(upto)
            if not (text.startswith(prompt) and text.startswith(turn)) or len(prompt) < position:
                raise DialogError(
                    f"{conversation.where}: the chat template ({self.chat.template_source}) "
                    "does not render the conversation's beginnings as beginnings of its "
                    "rendering: cannot find the assistant turns"
                )
            end = self._end_of_turn(turn, len(prompt))
            if len(prompt) > position:
                spans.append(TextSpan(position, len(prompt), assistant=False))
            spans.append(TextSpan(len(prompt), end, assistant=True))
            position = end
        return text, spans

    def encode(self, conversation: Conversation) -> Encoding:
        """Token ids and labels (assistant turns only), left-truncated to `max_len`."""
        text, spans = self.spans(conversation)
        ids: list[int] = []
        labels: list[int] = []
        last_prompt_start = 0
        for span in spans:
            piece = self.tokenizer.encode_markup(text[span.start : span.end])
            if not span.assistant:
                last_prompt_start = len(ids)
            ids += piece
            labels += piece if span.assistant else [LOSS_IGNORE] * len(piece)
        if len(ids) - last_prompt_start > self.max_len:
            raise DialogError(
                f"{conversation.where}: the last assistant turn and the messages since the "
                f"one before are {len(ids) - last_prompt_start} tokens, more than the "
                f"{self.max_len} a sequence may have (--max_body_len)"
            )
        ids, labels = ids[-self.max_len :], labels[-self.max_len :]
        return Encoding(token_ids=ids, labels=labels)

    def prompt_ids(self, conversation: Conversation) -> list[int]:
        """Ids of the conversation followed by the generation prompt (inference)."""
        self._check_contents(conversation)
        return self.tokenizer.encode_markup(self.render(conversation, add_generation_prompt=True))

    def _end_of_turn(self, turn: str, start: int) -> int:
        """End of the assistant turn starting at `start`: just after its last end-of-turn
        token, or the rendering's end when it writes none."""
        ends = [turn.rfind(t, start) for t in self.chat.end_of_turn]
        found = [(i, t) for i, t in zip(ends, self.chat.end_of_turn, strict=True) if i >= 0]
        if not found:
            return len(turn)
        index, token = max(found)
        return index + len(token)

    def _check_contents(self, conversation: Conversation) -> None:
        for i, message in enumerate(conversation.messages):
            for token in self._specials:
                if token in message.content:
                    raise DialogError(
                        f"{conversation.where}: message {i} contains the special token "
                        f"{token!r} (it would be read as a control token)"
                    )
