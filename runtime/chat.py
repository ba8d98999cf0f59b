"""Conversations for a chat model: messages → the prompt its chat template renders, and a
history trimmed to fit the context. Torch-free; /v1/chat/completions, fst-chat and the
Telegram bot all render and trim through here, so a model sees one format everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fst.core.bundle import ChatInfo
from fst.core.chat_template import ChatTemplate
from fst.runtime.requests import ChatPrompt

Message = Mapping[str, Any]  # {"role": "system" | "user" | "assistant", "content": str}

NO_CHAT_TEMPLATE = (
    "this model has no chat template (it continues text or documents, it was not made "
    "for conversations); use the completions API instead"
)


class NotAChatModel(ValueError):
    """The bundle has no chat section, so a conversation has no format to be written in."""


def render_chat(
    chat: ChatInfo | None,
    messages: Sequence[Message],
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> ChatPrompt:
    """The prompt of `messages` followed by the assistant's turn, as the template writes it
    (`tools`, OpenAI's function definitions, passed to templates that read them).

    Raises NotAChatModel without a template, and `ChatTemplateError` (a ValueError, one
    line) when the template refuses the conversation (e.g. roles out of order).
    """
    if chat is None:
        raise NotAChatModel(NO_CHAT_TEMPLATE)
    template = ChatTemplate(chat.template, chat.special_tokens)
    return ChatPrompt(template.render(messages, add_generation_prompt=True, tools=tools))


def drop_oldest_turn(messages: Sequence[Message]) -> list[Message] | None:
    """`messages` without their oldest exchange: from the first message after the leading
    system messages up to (not including) the next user message, so roles still alternate.
    None when only the last user turn is left (nothing more can go)."""
    start = 0
    while start < len(messages) and messages[start].get("role") == "system":
        start += 1
    for i in range(start + 1, len(messages)):
        if messages[i].get("role") == "user":
            return [*messages[:start], *messages[i:]]
    return None


def fit_history(
    messages: Sequence[Message], fits: Callable[[list[Message]], bool]
) -> list[Message]:
    """The longest tail of the conversation (system messages always kept) that `fits`;
    ValueError when even the last turn alone does not."""
    kept: list[Message] | None = list(messages)
    while kept is not None and not fits(kept):
        kept = drop_oldest_turn(kept)
    if kept is None:
        raise ValueError("the last message alone is too long for the model's context")
    return kept
