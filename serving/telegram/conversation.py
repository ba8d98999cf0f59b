"""Chat mode: a chat model answers each message in the light of the chat's conversation.

The conversation (an optional system message, then the turns) is kept in the bot's SQLite
store, so a restart does not forget it. Before each answer the oldest turns are dropped
until the prompt plus /length new tokens fit the model's context, as the server's
`/tokenize` counts them. The answer streams into one message, as a continuation does (but
without the user's text before it), and its Repeat button regenerates the last answer.
"""

from __future__ import annotations

import html
import logging

from aiogram import Bot

from fst.runtime.chat import drop_oldest_turn
from fst.serving.telegram.chat_settings import ChatSettings
from fst.serving.telegram.client import GenerationError
from fst.serving.telegram.live_reply import with_retries
from fst.serving.telegram.replies import STILL_WRITING, BotContext, repeat_markup, stream_reply
from fst.serving.telegram.store import Conversation

log = logging.getLogger("fst.telegram")

# The Repeat button's key in chat mode: "the last answer again", valid as long as the
# conversation is (no per-message cache entry).
LAST_ANSWER = "last"
NOTHING_TO_REPEAT = "There is no answer to repeat yet. Send me a message."
TOO_LONG = (
    "Your message is too long for the model's context. Please send a shorter one "
    "(or lower /length)."
)


async def answer(
    bot: Bot, ctx: BotContext, chat_id: int, user_id: int | None, text: str | None
) -> None:
    """Answer `text` (None: answer the last message again); one answer per chat at a time."""
    if chat_id in ctx.busy_chats:
        await _say(bot, ctx, chat_id, STILL_WRITING)
        return
    ctx.busy_chats.add(chat_id)
    try:
        await _answer(bot, ctx, chat_id, user_id, text)
    finally:
        ctx.busy_chats.discard(chat_id)


async def _answer(
    bot: Bot, ctx: BotContext, chat_id: int, user_id: int | None, text: str | None
) -> None:
    settings = ctx.store.get(chat_id)
    stored = ctx.store.conversation(chat_id)
    turns = list(stored.turns)
    if text is None:  # Repeat: drop the last answer, answer its question again
        if turns and turns[-1]["role"] == "assistant":
            turns.pop()
        if not turns:
            await _say(bot, ctx, chat_id, NOTHING_TO_REPEAT)
            return
    else:
        if turns and turns[-1]["role"] == "user":
            turns.pop()  # a question whose answer failed: the new one replaces it
        turns.append({"role": "user", "content": text})
    try:
        messages = await _fit(ctx, Conversation(stored.system, tuple(turns)), settings)
    except GenerationError as e:
        log.warning("counting tokens failed: %s", e.detail, extra={"chat_id": chat_id})
        await _say(bot, ctx, chat_id, e.user_message)
        return
    except ValueError:
        await _say(bot, ctx, chat_id, TOO_LONG)
        return
    kept = Conversation(stored.system, tuple(m for m in messages if m["role"] != "system"))
    ctx.store.put_conversation(chat_id, kept)  # the question stays even if its answer fails
    pieces = ctx.client.stream_chat(messages, settings)
    reply = await stream_reply(bot, ctx, chat_id, user_id, "", pieces, repeat_markup(LAST_ANSWER))
    if reply:  # shown in full (or up to Telegram's limit): the model said this
        answered = (*kept.turns, {"role": "assistant", "content": reply})
        ctx.store.put_conversation(chat_id, Conversation(kept.system, answered))


async def _fit(
    ctx: BotContext, conversation: Conversation, settings: ChatSettings
) -> list[dict[str, str]]:
    """The conversation without the oldest turns that do not fit the context (ValueError
    when the last message alone does not); as is when the server cannot count."""
    messages: list[dict[str, str]] | None = conversation.messages()
    while messages is not None:
        counted = await ctx.client.count_tokens(messages)
        if counted is None:
            return messages  # the chat request will say what is wrong
        count, context = counted
        if count + settings.params.max_new_tokens <= context:
            return messages
        messages = drop_oldest_turn(messages)
    raise ValueError("the last message alone does not fit the context")


async def _say(bot: Bot, ctx: BotContext, chat_id: int, text: str) -> None:
    escaped = html.escape(text)
    await with_retries(chat_id, ctx.throttle, lambda: bot.send_message(chat_id, escaped))
