"""Continue one text in one chat: stream from the server into a growing Telegram message."""

from __future__ import annotations

import asyncio
import html
import logging
import secrets
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError
from aiogram.filters.callback_data import CallbackData
from aiogram.types import InlineKeyboardButton, InlineKeyboardMarkup

from fst.serving.telegram.cache import LRUCache
from fst.serving.telegram.client import GenerationClient, GenerationError
from fst.serving.telegram.live_reply import EditThrottle, StreamingReply, with_retries
from fst.serving.telegram.store import SettingsStore

log = logging.getLogger("fst.telegram")

STILL_WRITING = "I am still writing the previous text — one moment, please."
NOTHING_GENERATED = "\n\n<i>(the model had nothing to add — press Repeat to try again)</i>"


class RepeatCallback(CallbackData, prefix="repeat"):
    """Callback data of the Repeat button: a short random key into `BotContext.repeats`."""

    key: str


@dataclass(frozen=True)
class RepeatEntry:
    chat_id: int
    prompt: str


@dataclass
class BotContext:
    """What the handlers share; built once by `fst.serving.telegram.bot`."""

    client: GenerationClient
    store: SettingsStore
    repeats: LRUCache[str, RepeatEntry]
    throttle: EditThrottle
    busy_chats: set[int] = field(default_factory=set)

    def remember(self, chat_id: int, prompt: str) -> str:
        """Keep `prompt` for the Repeat button; returns the key the button carries."""
        key = secrets.token_urlsafe(9)  # 12 characters: "repeat:" + key is 19 bytes <= 64
        self.repeats.put(key, RepeatEntry(chat_id, prompt))
        return key


def repeat_markup(key: str) -> InlineKeyboardMarkup:
    button = InlineKeyboardButton(text="🔁 Repeat", callback_data=RepeatCallback(key=key).pack())
    return InlineKeyboardMarkup(inline_keyboard=[[button]])


async def continue_text(
    bot: Bot, ctx: BotContext, chat_id: int, user_id: int | None, prompt: str, key: str
) -> None:
    """Reply with `prompt` in bold and its continuation; one generation per chat at a time."""
    if chat_id in ctx.busy_chats:
        await with_retries(chat_id, ctx.throttle, lambda: bot.send_message(chat_id, STILL_WRITING))
        return
    ctx.busy_chats.add(chat_id)
    try:
        await _generate(bot, ctx, chat_id, user_id, prompt, key)
    finally:
        ctx.busy_chats.discard(chat_id)


async def _generate(
    bot: Bot, ctx: BotContext, chat_id: int, user_id: int | None, prompt: str, key: str
) -> None:
    settings = ctx.store.get(chat_id)
    pieces = ctx.client.stream(prompt, settings)
    await stream_reply(bot, ctx, chat_id, user_id, prompt, pieces, repeat_markup(key))


async def stream_reply(
    bot: Bot,
    ctx: BotContext,
    chat_id: int,
    user_id: int | None,
    prompt: str,
    pieces: AsyncGenerator[str, None],
    markup: InlineKeyboardMarkup,
) -> str | None:
    """Show `prompt` in bold (none for "") and the text of `pieces` as it arrives, in one
    message that ends with `markup`; returns the text shown, None when generation failed."""
    ids = {"chat_id": chat_id, "user_id": user_id}
    reply = StreamingReply(bot, chat_id, prompt, ctx.throttle)
    started = asyncio.get_running_loop().time()
    await _typing(bot, chat_id)

    continuation, note, trimmed, error = "", "", False, None
    try:
        async with aclosing(pieces) as stream:
            async for piece in stream:
                continuation += piece
                if not await reply.update(continuation):
                    trimmed = True  # no room left in one message: stop generating
                    break
    except GenerationError as e:
        error = e
        log.warning("generation failed: %s", e.detail, extra={"event": "generation_error", **ids})
        if not reply.sent:
            text = html.escape(e.user_message)
            await with_retries(
                chat_id, ctx.throttle, lambda: bot.send_message(chat_id, text, reply_markup=markup)
            )
            return None
        note = f"\n\n<i>({html.escape(e.user_message)})</i>"
    if not continuation and not note:
        note = NOTHING_GENERATED
    await reply.finish(continuation, note, markup)
    log.info(
        "replied",
        extra={
            "event": "reply",
            **ids,
            "prompt_chars": len(prompt),
            "continuation_chars": len(continuation),
            "trimmed": trimmed,
            "failed": error is not None,
            "seconds": round(asyncio.get_running_loop().time() - started, 3),
        },
    )
    log.debug(
        "reply text",
        extra={"event": "reply_text", **ids, "prompt": prompt, "continuation": continuation},
    )
    return None if error is not None else continuation


async def _typing(bot: Bot, chat_id: int) -> None:
    """Show "typing…" while the first piece is on its way; cosmetic, so failures are ignored."""
    try:
        await bot.send_chat_action(chat_id, "typing")
    except TelegramAPIError as e:
        log.debug("send_chat_action failed: %s", e)
