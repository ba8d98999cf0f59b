"""aiogram Routers: help, per-chat settings, and text continuation with its Repeat button;
with a chat model (the server has a chat template), a conversation instead (conversation.py).

Handlers get the shared `BotContext` as `ctx` from the dispatcher's workflow data.
Everything sent is HTML (the bot's default parse mode), so user text is always escaped.
"""

from __future__ import annotations

import html
import logging

from aiogram import Bot, F, Router
from aiogram.filters import Command, CommandObject, CommandStart
from aiogram.types import CallbackQuery, Message

from fst.serving.telegram import conversation
from fst.serving.telegram.chat_settings import SETTING_COMMANDS
from fst.serving.telegram.client import GenerationError
from fst.serving.telegram.replies import BotContext, RepeatCallback, continue_text
from fst.serving.telegram.store import Conversation

log = logging.getLogger("fst.telegram")

HELP = (
    "I continue whatever you write, using a language model.\n\n"
    "Send me the beginning of a text: I answer with your text in <b>bold</b> followed by "
    "what the model wrote. Press <b>Repeat</b> under a reply for another continuation.\n\n"
    "Settings of this chat:\n"
    "/settings — show them\n"
    + "".join(
        f"/{spec.command} {spec.example} — {html.escape(spec.meaning)}\n"
        for spec in SETTING_COMMANDS.values()
    )
    + "/meta &lt;control code&gt; — condition the model (e.g. a genre); /meta alone clears it\n"
    "/reset — back to the defaults"
)
_SETTINGS_HELP = "".join(
    f"/{spec.command} {spec.example} — {html.escape(spec.meaning)}\n"
    for spec in SETTING_COMMANDS.values()
)
CHAT_HELP = (
    "I chat, using a language model.\n\n"
    "Send me a message and I answer it. I remember our conversation (when it grows too "
    "long for the model, I forget its oldest messages). Press <b>Repeat</b> under my last "
    "answer for another one.\n\n"
    "/system &lt;text&gt; — tell me how to behave (a system message); /system alone removes it\n"
    "/reset — forget our conversation and go back to the default settings\n\n"
    "Settings of this chat:\n"
    "/settings — show them\n" + _SETTINGS_HELP
)
NOT_A_CHAT_MODEL = "This model continues texts; it takes no system message."
CANNOT_REPEAT = "Sorry, I no longer remember that text. Please send it again."
UNKNOWN_COMMAND = "I don't know this command. /help lists the ones I understand."
TEXT_ONLY = "I can only continue text messages. Send me the beginning of a text."


def build_routers() -> list[Router]:
    """In dispatch order: commands first, then free text (which would swallow them)."""
    return [_help_router(), _settings_router(), _text_router()]


def _help_router() -> Router:
    router = Router(name="help")

    @router.message(CommandStart())
    @router.message(Command("help", ignore_case=True))
    async def on_help(message: Message, ctx: BotContext) -> None:
        await message.answer(CHAT_HELP if await _chat_mode(ctx) else HELP)

    return router


def _settings_router() -> Router:
    router = Router(name="settings")

    @router.message(Command("settings", ignore_case=True))
    async def on_settings(message: Message, ctx: BotContext) -> None:
        settings = ctx.store.get(message.chat.id)
        await message.answer(f"Settings of this chat:\n{html.escape(settings.describe())}")

    @router.message(Command("reset", ignore_case=True))
    async def on_reset(message: Message, ctx: BotContext) -> None:
        had_conversation = ctx.store.conversation(message.chat.id) != Conversation()
        ctx.store.reset(message.chat.id)  # settings and conversation
        settings = ctx.store.get(message.chat.id)
        _log_change(message, "reset")
        forgotten = "Conversation forgotten. " if had_conversation else ""
        await message.answer(
            f"{forgotten}Back to the defaults:\n{html.escape(settings.describe())}"
        )

    @router.message(Command("system", ignore_case=True))
    async def on_system(message: Message, command: CommandObject, ctx: BotContext) -> None:
        if not await _chat_mode(ctx):
            await message.answer(NOT_A_CHAT_MODEL)
            return
        stored = ctx.store.conversation(message.chat.id)
        system = (command.args or "").strip() or None
        ctx.store.put_conversation(message.chat.id, Conversation(system, stored.turns))
        _log_change(message, "system")
        if system is None:
            await message.answer("System message removed.")
        else:
            await message.answer(f"System message set to: <i>{html.escape(system)}</i>")

    @router.message(Command("meta", ignore_case=True))
    async def on_meta(message: Message, command: CommandObject, ctx: BotContext) -> None:
        settings = ctx.store.get(message.chat.id).with_meta(command.args)
        ctx.store.put(message.chat.id, settings)
        _log_change(message, "meta")
        if settings.meta is None:
            await message.answer("Control code cleared.")
        else:
            await message.answer(f"Control code set to: <code>{html.escape(settings.meta)}</code>")

    @router.message(Command(*SETTING_COMMANDS, ignore_case=True))
    async def on_setting(message: Message, command: CommandObject, ctx: BotContext) -> None:
        spec = SETTING_COMMANDS[command.command.lower()]
        settings = ctx.store.get(message.chat.id)
        if not command.args:
            value = getattr(settings.params, spec.field)
            await message.answer(
                f"{spec.command} is {value} ({html.escape(spec.meaning)}). "
                f"To change it: /{spec.command} {spec.example}"
            )
            return
        try:
            settings = settings.with_command(spec.command, command.args)
        except ValueError as e:
            await message.answer(
                f"Can't set {spec.command}: {html.escape(str(e))}. "
                f"Example: /{spec.command} {spec.example}"
            )
            return
        ctx.store.put(message.chat.id, settings)
        _log_change(message, spec.command)
        await message.answer(f"{spec.command} set to {getattr(settings.params, spec.field)}.")

    return router


def _text_router() -> Router:
    router = Router(name="text")

    @router.message(F.text.startswith("/"))
    async def on_unknown_command(message: Message) -> None:
        await message.answer(UNKNOWN_COMMAND)

    @router.message(F.text)
    async def on_text(message: Message, bot: Bot, ctx: BotContext) -> None:
        chat_id, prompt = message.chat.id, message.text or ""
        if await _chat_mode(ctx):
            await conversation.answer(bot, ctx, chat_id, _user_id(message), prompt)
            return
        key = ctx.remember(chat_id, prompt)
        await continue_text(bot, ctx, chat_id, _user_id(message), prompt, key)

    @router.message(F.chat.type == "private")
    async def on_other(message: Message) -> None:
        await message.answer(TEXT_ONLY)

    @router.callback_query(RepeatCallback.filter())
    async def on_repeat(
        query: CallbackQuery, callback_data: RepeatCallback, bot: Bot, ctx: BotContext
    ) -> None:
        chat_id = query.message.chat.id if query.message else None
        if callback_data.key == conversation.LAST_ANSWER and chat_id is not None:
            await query.answer()
            await conversation.answer(bot, ctx, chat_id, query.from_user.id, None)
            return
        entry = ctx.repeats.get(callback_data.key)
        if entry is None or entry.chat_id != chat_id:
            # Expired from the bounded cache (or forged data for another chat).
            await query.answer(CANNOT_REPEAT, show_alert=True)
            return
        await query.answer()
        await continue_text(
            bot, ctx, entry.chat_id, query.from_user.id, entry.prompt, callback_data.key
        )

    return router


async def _chat_mode(ctx: BotContext) -> bool:
    """Whether the model converses; when the server cannot be asked now, it continues text
    (whose request then reports the trouble to the user)."""
    try:
        return await ctx.client.is_chat_model()
    except GenerationError as e:
        log.warning("could not ask the server for its model's kind: %s", e.detail)
        return False


def _user_id(message: Message) -> int | None:
    return message.from_user.id if message.from_user else None


def _log_change(message: Message, setting: str) -> None:
    log.info(
        "settings changed",
        extra={
            "event": "settings",
            "setting": setting,
            "chat_id": message.chat.id,
            "user_id": _user_id(message),
        },
    )
