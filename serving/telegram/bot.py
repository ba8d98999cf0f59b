"""Build the aiogram Bot and Dispatcher, run them (long polling or webhook), shut down cleanly.

Lifetime: one `GenerationClient` (HTTP pool), one `SettingsStore` (SQLite) and one bot session
for the whole run. On shutdown, in-flight replies get `shutdown_grace` seconds to finish and
are then cancelled, so no task outlives the run; then the client, store and session close.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

from aiogram import BaseMiddleware, Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import PRODUCTION, TelegramAPIServer
from aiogram.exceptions import TelegramAPIError
from aiogram.types import BotCommand, ErrorEvent, TelegramObject

from fst.serving.telegram.cache import LRUCache
from fst.serving.telegram.chat_settings import SETTING_COMMANDS
from fst.serving.telegram.client import GenerationClient
from fst.serving.telegram.handlers import build_routers
from fst.serving.telegram.live_reply import EditThrottle
from fst.serving.telegram.replies import BotContext
from fst.serving.telegram.settings import BotSettings
from fst.serving.telegram.store import SettingsStore

log = logging.getLogger("fst.telegram")

STORE_FILE = "chat_settings.sqlite3"
TELEGRAM_TIMEOUT = 30.0  # seconds for one Bot API call (getUpdates adds its long-poll time)


class TaskTracker(BaseMiddleware):
    """Remembers the tasks handling updates, so shutdown can wait for or cancel them."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        try:
            return await handler(event, data)
        finally:
            self.tasks.discard(task)  # type: ignore[arg-type]

    async def drain(self, grace: float) -> None:
        pending = self.tasks - {asyncio.current_task()}
        if not pending:
            return
        _, still_running = await asyncio.wait(pending, timeout=grace)
        for task in still_running:
            task.cancel()
        if still_running:
            log.warning("cancelled %d unfinished replies at shutdown", len(still_running))
            await asyncio.gather(*still_running, return_exceptions=True)


class TelegramBot:
    """The bot for one `BotSettings`; `run_polling()` or `run_webhook()`, then it is closed."""

    def __init__(self, settings: BotSettings) -> None:
        settings.prepare_data_dir()
        self.settings = settings
        api = (
            TelegramAPIServer.from_base(settings.telegram_api_server)
            if settings.telegram_api_server
            else PRODUCTION
        )
        self.bot = Bot(
            settings.telegram_api_token,
            session=AiohttpSession(api=api, timeout=TELEGRAM_TIMEOUT),
            default=DefaultBotProperties(parse_mode="HTML", link_preview_is_disabled=True),
        )
        self.ctx = BotContext(
            client=GenerationClient(
                settings.text_generator_service_url,
                api_key=settings.text_generator_service_api_key,
                timeout=settings.request_timeout,
            ),
            store=SettingsStore(settings.data_dir / STORE_FILE),
            repeats=LRUCache(settings.repeat_cache_size),
            throttle=EditThrottle(settings.edit_interval),
        )
        self.tracker = TaskTracker()
        self.dp = Dispatcher(ctx=self.ctx)
        self.dp.update.outer_middleware(self.tracker)
        self.dp.include_routers(*build_routers())
        self.dp.errors.register(_on_error)
        self.dp.startup.register(self._on_startup)
        self.dp.shutdown.register(self._on_shutdown)
        self._closed = False

    async def run_polling(self, handle_signals: bool = True) -> None:
        """Long polling until SIGINT/SIGTERM (or `stop()`); closes everything on the way out."""
        try:
            await self.bot.delete_webhook(drop_pending_updates=self.settings.drop_pending_updates)
            await self.dp.start_polling(
                self.bot,
                polling_timeout=self.settings.polling_timeout,
                handle_signals=handle_signals,
                close_bot_session=True,
            )
        finally:
            await self.aclose()

    async def stop(self) -> None:
        await self.dp.stop_polling()

    async def run_webhook(self, stop: asyncio.Event | None = None) -> None:
        """Serve Telegram's webhook calls until SIGINT/SIGTERM or `stop` is set.

        Listens on webhook_host:webhook_port at the path of `webhook_url`; Telegram must reach
        `webhook_url` over HTTPS (a reverse proxy terminates TLS). Not tested against the real
        Telegram, only against the test suite's fake Bot API server.
        """
        from aiogram.webhook.aiohttp_server import SimpleRequestHandler, setup_application
        from aiohttp import web

        s = self.settings
        secret = s.webhook_secret or secrets.token_urlsafe(32)
        stop = stop or asyncio.Event()
        app = web.Application()
        # Dispatcher shutdown (draining replies) must run before the handler closes the session.
        setup_application(app, self.dp, bot=self.bot)
        SimpleRequestHandler(self.dp, self.bot, secret_token=secret).register(
            app, path=s.webhook_path
        )
        runner = web.AppRunner(app, handle_signals=False)
        loop = asyncio.get_running_loop()
        try:
            await runner.setup()
            await web.TCPSite(runner, s.webhook_host, s.webhook_port).start()
            await self.bot.set_webhook(
                s.webhook_url, secret_token=secret, drop_pending_updates=s.drop_pending_updates
            )
            log.info("webhook listening", extra={"event": "webhook", "url": s.webhook_url})
            for sig in (signal.SIGINT, signal.SIGTERM):
                with suppress(NotImplementedError, RuntimeError):
                    loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            await runner.cleanup()
            await self.aclose()

    async def aclose(self) -> None:
        """Close the generation client, the store and the bot session (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await self.tracker.drain(self.settings.shutdown_grace)
        await self.ctx.client.aclose()
        self.ctx.store.close()
        await self.bot.session.close()

    async def _on_startup(self, bot: Bot) -> None:
        me = await bot.me()
        log.info("bot started", extra={"event": "start", "bot_username": me.username})
        commands = [BotCommand(command="help", description="what this bot does")]
        commands += [
            BotCommand(command=spec.command, description=spec.meaning)
            for spec in SETTING_COMMANDS.values()
        ]
        commands += [
            BotCommand(command="meta", description="control code; alone: clear it"),
            BotCommand(command="settings", description="show this chat's settings"),
            BotCommand(command="system", description="chat models: how to behave"),
            BotCommand(command="reset", description="back to the defaults"),
        ]
        try:
            await bot.set_my_commands(commands)
        except TelegramAPIError as e:  # the command menu is a nicety, not a reason to stop
            log.warning("set_my_commands failed: %s", e)

    async def _on_shutdown(self) -> None:
        await self.tracker.drain(self.settings.shutdown_grace)
        log.info("bot stopped", extra={"event": "stop"})


async def _on_error(event: ErrorEvent) -> bool:
    """Log any handler failure with its chat; the bot keeps serving other updates."""
    update = event.update
    message = update.message or (update.callback_query.message if update.callback_query else None)
    log.error(
        "failed to handle update %s: %r",
        update.update_id,
        event.exception,
        exc_info=event.exception,
        extra={"event": "handler_error", "chat_id": message.chat.id if message else None},
    )
    return True
