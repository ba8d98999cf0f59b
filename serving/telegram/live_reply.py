"""A reply that grows as the continuation arrives, within Telegram's rate limits.

Telegram allows about one message (or edit) per second in a chat and answers `429 retry_after`
beyond that. So: the first piece of text is sent as a message, later pieces edit it at most
once per `interval` per chat (pieces arriving in between are shown by the next edit), and the
final edit, which carries the Repeat button, always happens. A `TelegramRetryAfter` pushes the
chat's next edit back by `retry_after`; a send or the final edit sleeps that long and retries.

Telegram (or a proxy before it) also answers 5xx now and then, and connections drop. A send
or the final edit is then retried after 0.5, 1 and 2 s (4 attempts in all, so a reply
survives a few seconds of trouble); an in-between edit is skipped, the next one shows its
text. A retried send whose first attempt did reach Telegram shows twice: better than never.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiogram import Bot
from aiogram.exceptions import (
    ClientDecodeError,
    TelegramBadRequest,
    TelegramEntityTooLarge,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.types import InlineKeyboardMarkup, Message

from fst.serving.telegram.cache import LRUCache
from fst.serving.telegram.render import render_reply

log = logging.getLogger(__name__)

T = TypeVar("T")

IN_PROGRESS = " …"
RETRY_ATTEMPTS = 4
FIRST_BACKOFF_S = 0.5  # doubled after each transient failure: 0.5, 1, 2 s
# Failures worth another try: 5xx, a dropped or timed-out connection, a proxy's HTML error page.
TRANSIENT = (TelegramServerError, TelegramNetworkError, ClientDecodeError)


def is_transient(error: BaseException) -> bool:
    return isinstance(error, TRANSIENT) and not isinstance(error, TelegramEntityTooLarge)


class EditThrottle:
    """When each chat may next be written to. Bounded: forgets the least recent chats."""

    def __init__(self, interval: float, max_chats: int = 10_000) -> None:
        self.interval = interval
        self._next: LRUCache[int, float] = LRUCache(max_chats)

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def delay(self, chat_id: int) -> float:
        return max(0.0, (self._next.get(chat_id) or 0.0) - self._now())

    def mark(self, chat_id: int, pause: float | None = None) -> None:
        """Just wrote to the chat (or was told to pause): no other write for a while."""
        pause = self.interval if pause is None else max(pause, self.interval)
        self._next.put(chat_id, self._now() + pause)

    async def wait(self, chat_id: int) -> None:
        await asyncio.sleep(self.delay(chat_id))


async def with_retries(chat_id: int, throttle: EditThrottle, call: Callable[[], Awaitable[T]]) -> T:
    """Run a Telegram call; on `retry_after` wait that long, on a transient failure back off,
    then try again, RETRY_ATTEMPTS times in all."""
    backoff = FIRST_BACKOFF_S
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        await throttle.wait(chat_id)
        try:
            result = await call()
        except TelegramRetryAfter as e:
            log.warning(
                "telegram asked to retry after %s s",
                e.retry_after,
                extra={"event": "retry_after", "chat_id": chat_id, "attempt": attempt},
            )
            throttle.mark(chat_id, e.retry_after)
            if attempt == RETRY_ATTEMPTS:
                raise
            continue
        except TRANSIENT as e:
            if not is_transient(e) or attempt == RETRY_ATTEMPTS:
                raise
            log.warning(
                "telegram call failed (%s: %s), retrying in %.1f s",
                type(e).__name__,
                e,
                backoff,
                extra={"event": "telegram_retry", "chat_id": chat_id, "attempt": attempt},
            )
            await asyncio.sleep(backoff)
            backoff *= 2
            continue
        throttle.mark(chat_id)
        return result
    raise AssertionError("unreachable")


class StreamingReply:
    """One bot message showing `<b>prompt</b>` + the continuation so far."""

    def __init__(self, bot: Bot, chat_id: int, prompt: str, throttle: EditThrottle) -> None:
        self.bot = bot
        self.chat_id = chat_id
        self.prompt = prompt
        self.throttle = throttle
        self.message_id: int | None = None
        self._shown = ""  # the HTML the message currently holds

    @property
    def sent(self) -> bool:
        return self.message_id is not None

    async def update(self, continuation: str) -> bool:
        """Show the continuation if the chat's rate allows; False once it no longer fits."""
        if render_reply(self.prompt, continuation).trimmed:
            return False
        rendered = render_reply(self.prompt, continuation, note_html=IN_PROGRESS)
        if not self.sent:
            await self._send(rendered.html, markup=None)
        elif self.throttle.delay(self.chat_id) == 0 and rendered.html != self._shown:
            try:
                await self._edit(rendered.html, markup=None)
            except TelegramRetryAfter as e:  # skip this edit; the next one waits
                self.throttle.mark(self.chat_id, e.retry_after)
                log.warning(
                    "telegram asked to retry after %s s",
                    e.retry_after,
                    extra={"event": "retry_after", "chat_id": self.chat_id},
                )
            except TRANSIENT as e:  # skip this edit too: the next one (or the final) shows it
                if not is_transient(e):
                    raise
                self.throttle.mark(self.chat_id)
                log.warning(
                    "telegram edit failed (%s: %s), skipped",
                    type(e).__name__,
                    e,
                    extra={"event": "telegram_retry", "chat_id": self.chat_id},
                )
            else:
                self.throttle.mark(self.chat_id)
        return True

    async def finish(
        self, continuation: str, note_html: str = "", markup: InlineKeyboardMarkup | None = None
    ) -> str:
        """The final text with the button; returns the HTML sent."""
        html = render_reply(self.prompt, continuation, note_html=note_html).html
        if self.sent:
            await with_retries(self.chat_id, self.throttle, lambda: self._edit(html, markup))
        else:
            await self._send(html, markup)
        return html

    async def _send(self, html: str, markup: InlineKeyboardMarkup | None) -> None:
        message: Message = await with_retries(
            self.chat_id,
            self.throttle,
            lambda: self.bot.send_message(self.chat_id, html, reply_markup=markup),
        )
        self.message_id = message.message_id
        self._shown = html

    async def _edit(self, html: str, markup: InlineKeyboardMarkup | None) -> Any:
        try:
            result = await self.bot.edit_message_text(
                text=html, chat_id=self.chat_id, message_id=self.message_id, reply_markup=markup
            )
        except TelegramBadRequest as e:
            if "not modified" not in str(e):
                raise
            result = None
        self._shown = html
        return result
