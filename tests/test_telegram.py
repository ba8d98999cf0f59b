"""fst-telegram against a fake Bot API server and a fake generation server, all on 127.0.0.1.

The real aiogram Dispatcher long-polls `benchmarks/fake_telegram.py`; `FakeGenerator` below speaks
fst-serve's two APIs with deterministic continuations that contain HTML-special characters.
No test reaches Telegram. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import html
import itertools
import json
import os
import signal
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web

from benchmarks.fake_telegram import Call, FakeTelegram, html_error
from fst.core.generation_params import GenerationParams
from fst.serving.telegram import cli
from fst.serving.telegram.bot import TelegramBot
from fst.serving.telegram.cache import LRUCache
from fst.serving.telegram.chat_settings import ChatSettings
from fst.serving.telegram.client import TOO_SLOW, UNREACHABLE
from fst.serving.telegram.handlers import CANNOT_REPEAT, HELP, UNKNOWN_COMMAND
from fst.serving.telegram.logs import LOG_FILE, setup_logging
from fst.serving.telegram.render import MESSAGE_LIMIT, render_reply, telegram_length
from fst.serving.telegram.replies import STILL_WRITING
from fst.serving.telegram.settings import BotSettings, SettingsError

TOKEN = "123456:TEST-token"
CHAT = 777
WORDS = [" once", " <b>upon</b>", " a", " time", " &", " then"]


def run(coro: Awaitable[Any], timeout: float = 30.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def expected_continuation(max_tokens: int) -> str:
    return "".join(WORDS[i % len(WORDS)] for i in range(max_tokens))


class FakeGenerator:
    """fst-serve's `/v1/completions` (SSE) and `/generated_texts/`, with failure switches."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.delay = 0.0  # seconds between streamed pieces
        self.hang = False  # never answer
        self.status = 200  # anything else: an error answer
        self.completions = True  # False: /v1/completions is 404 (the original server)
        self.pieces: list[str] | None = None  # None: WORDS cycled to max_tokens
        self.pieces_sent = 0
        self.api_key: str | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, port: int = 0) -> str:
        self.stream_ended = asyncio.Event()  # set when a /v1/completions stream ends
        app = web.Application()
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/generated_texts/", self._generated_texts)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{self.port}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _pieces(self, max_tokens: int) -> list[str]:
        return (
            self.pieces
            if self.pieces is not None
            else [WORDS[i % len(WORDS)] for i in range(max_tokens)]
        )

    async def _guard(self, request: web.Request, path: str) -> web.Response | None:
        body = await request.json()
        self.requests.append((path, body))
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        while self.hang and request.transport is not None and not request.transport.is_closing():
            await asyncio.sleep(0.02)  # "slow": until the client gives up
        if self.status != 200:
            return web.json_response({"detail": "model exploded"}, status=self.status)
        return None

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        if not self.completions:
            return web.json_response({"detail": "Not Found"}, status=404)
        if (error := await self._guard(request, "/v1/completions")) is not None:
            return error
        body = self.requests[-1][1]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        self.stream_ended.clear()
        try:
            for piece in self._pieces(body["max_tokens"]):
                chunk = {"object": "text_completion", "choices": [{"text": piece, "index": 0}]}
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.pieces_sent += 1
                await asyncio.sleep(self.delay)
            await response.write(b"data: [DONE]\n\n")
        finally:  # finished, or the client hung up (a failed write or a cancellation)
            self.stream_ended.set()
        return response

    async def _generated_texts(self, request: web.Request) -> web.Response:
        if (error := await self._guard(request, "/generated_texts/")) is not None:
            return error
        body = self.requests[-1][1]
        text = "".join(self._pieces(body["max_number_of_generated_tokens"]))
        return web.json_response({"texts": [text]})


def make_settings(tmp_path: Path, tg: FakeTelegram, gen_url: str, **overrides: Any) -> BotSettings:
    values: dict[str, Any] = {
        "telegram_api_token": TOKEN,
        "text_generator_service_url": gen_url,
        "telegram_api_server": tg.url,
        "data_dir": tmp_path / "data",
        "request_timeout": 5.0,
        "edit_interval": 0.05,
        "polling_timeout": 1,
        "shutdown_grace": 0.5,
    }
    values.update(overrides)
    return BotSettings(**values)


@asynccontextmanager
async def polling(settings: BotSettings) -> AsyncIterator[TelegramBot]:
    """The real Dispatcher long-polling the fake, stopped (and awaited) on exit."""
    bot = TelegramBot(settings)
    task = asyncio.create_task(bot.run_polling(handle_signals=False))
    try:
        yield bot
    finally:
        if not task.done():
            await asyncio.wait_for(bot.stop(), 10)
        await asyncio.wait_for(task, 10)


@asynccontextmanager
async def fakes(
    tmp_path: Path, **overrides: Any
) -> AsyncIterator[tuple[FakeTelegram, FakeGenerator, BotSettings]]:
    tg, gen = FakeTelegram(TOKEN), FakeGenerator()
    await tg.start()
    await gen.start()
    try:
        yield tg, gen, make_settings(tmp_path, tg, gen.url, **overrides)
    finally:
        await tg.close()
        await gen.close()


def is_final(chat_id: int) -> Callable[[Call], bool]:
    """The message (or edit) carrying the Repeat button: a reply is complete."""
    return lambda c: (
        c.method in ("sendMessage", "editMessageText")
        and c.chat_id == chat_id
        and any(d.startswith("repeat:") for d in c.callback_data)
    )


def answer_to(chat_id: int) -> Callable[[Call], bool]:
    return lambda c: c.method == "sendMessage" and c.chat_id == chat_id


async def say(tg: FakeTelegram, text: str, chat_id: int = CHAT, final: bool = False) -> Call:
    """Send `text` as the user; return the bot's answer (the final reply when `final`)."""
    after = len(tg.calls)
    tg.push_message(chat_id, text)
    return await tg.wait_for(is_final(chat_id) if final else answer_to(chat_id), after=after)


def reply_html(prompt: str, continuation: str) -> str:
    return f"<b>{html.escape(prompt)}</b>{html.escape(continuation)}"


# ---- the bot end to end -----------------------------------------------------------------------


def test_start_help_and_unknown_command(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with fakes(tmp_path) as (tg, gen, settings), polling(settings):
            start = await say(tg, "/start")
            assert start.text == HELP and start.params["parse_mode"] == "HTML"
            assert (await say(tg, "/help")).text == HELP
            assert (await say(tg, "/nonsense 1")).text == UNKNOWN_COMMAND
            assert tg.calls_to("deleteWebhook") and tg.calls_to("getMe")
            menu = json.loads(tg.calls_to("setMyCommands")[0].params["commands"])
            assert {"temperature", "length", "top_p", "top_k", "penalty", "meta"} <= {
                c["command"] for c in menu
            }
            assert gen.requests == []  # commands never reach the generator

    run(scenario())


def test_message_gets_bold_prompt_escaped_continuation_and_repeat_button(tmp_path: Path) -> None:
    prompt = 'if a < b & "c" > d'
    defaults = GenerationParams()

    async def scenario() -> None:
        async with fakes(tmp_path) as (tg, gen, settings), polling(settings):
            final = await say(tg, prompt, final=True)
            assert final.text == reply_html(prompt, expected_continuation(defaults.max_new_tokens))
            assert final.text.startswith("<b>if a &lt; b &amp; &quot;c&quot; &gt; d</b>")
            assert final.params["parse_mode"] == "HTML"
            (data,) = final.callback_data
            assert len(data.encode()) <= 64
            (path, body) = gen.requests[0]
            assert path == "/v1/completions" and body["stream"] is True and body["n"] == 1
            assert body["prompt"] == prompt and "meta" not in body
            assert (body["max_tokens"], body["temperature"], body["top_k"]) == (
                defaults.max_new_tokens,
                defaults.temperature,
                defaults.top_k,
            )
            assert (body["top_p"], body["repetition_penalty"]) == (
                defaults.top_p,
                defaults.repetition_penalty,
            )
            assert tg.calls_to("sendChatAction")

    run(scenario())


def test_repeat_button_regenerates_same_text_and_expired_entries_are_refused(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with fakes(tmp_path, repeat_cache_size=1) as (tg, gen, settings), polling(settings):
            first = await say(tg, "first text", final=True)
            sent = tg.calls_to("sendMessage")[-1]  # the message the button belongs to
            after = len(tg.calls)
            tg.push_callback(sent, first.callback_data[0])
            answer = await tg.wait_for(lambda c: c.method == "answerCallbackQuery", after=after)
            assert "text" not in answer.params  # a silent acknowledgement
            again = await tg.wait_for(is_final(CHAT), after=after)
            assert again.text == first.text
            assert [b["prompt"] for _, b in gen.requests] == ["first text", "first text"]

            await say(tg, "second text", final=True)  # evicts "first text" (cache of size 1)
            after = len(tg.calls)
            tg.push_callback(sent, first.callback_data[0])
            refused = await tg.wait_for(lambda c: c.method == "answerCallbackQuery", after=after)
            assert refused.params["text"] == CANNOT_REPEAT
            # A key is only honoured in the chat it was made for.
            second_key = tg.calls_to("editMessageText", "sendMessage")[-1].callback_data[0]
            other_chat = Call("sendMessage", {**sent.params, "chat_id": str(CHAT + 1)})
            after = len(tg.calls)
            tg.push_callback(other_chat, second_key)
            refused = await tg.wait_for(lambda c: c.method == "answerCallbackQuery", after=after)
            assert refused.params["text"] == CANNOT_REPEAT
            # Refusals generated nothing: the next generation is the next text's.
            await say(tg, "third text", final=True)
            prompts = [b["prompt"] for _, b in gen.requests]
            assert prompts == ["first text", "first text", "second text", "third text"]

    run(scenario())


def test_settings_commands_validate_and_survive_a_restart(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as top_p_error:  # the range message comes from GenerationParams
        GenerationParams(top_p=1.5)

    async def scenario() -> None:
        async with fakes(tmp_path) as (tg, gen, settings):
            async with polling(settings):
                assert (await say(tg, "/temperature 0.3")).text == "temperature set to 0.3."
                assert (await say(tg, "/length 5")).text == "length set to 5."
                assert (await say(tg, "/penalty 1,5")).text == "penalty set to 1.5."
                bad = await say(tg, "/top_p 1.5")
                assert bad.text.startswith("Can't set top_p: ")
                assert html.escape(str(top_p_error.value)) in bad.text
                assert "'abc' is not a whole number" in html.unescape(
                    (await say(tg, "/top_k abc")).text
                )
                assert "length must be in [1," in (await say(tg, "/length 0")).text
                assert "not a finite number" in (await say(tg, "/temperature inf")).text
                assert (await say(tg, "/top_k")).text.startswith("top_k is 50 ")
                meta = await say(tg, "/meta <poetry>")
                assert meta.text == "Control code set to: <code>&lt;poetry&gt;</code>"

                final = await say(tg, "hello", final=True)
                assert final.text == reply_html("hello", expected_continuation(5))
                body = gen.requests[-1][1]
                assert (body["temperature"], body["max_tokens"], body["meta"]) == (
                    0.3,
                    5,
                    "<poetry>",
                )
                assert body["repetition_penalty"] == 1.5 and body["top_p"] == 1.0

            # A new bot on the same data_dir remembers this chat's settings.
            async with polling(settings):
                shown = html.unescape((await say(tg, "/settings")).text)
                assert "/temperature 0.3 " in shown and "/length 5 " in shown
                assert "/meta <poetry> " in shown
                await say(tg, "again", final=True)
                body = gen.requests[-1][1]
                assert (body["temperature"], body["max_tokens"], body["meta"]) == (
                    0.3,
                    5,
                    "<poetry>",
                )
                assert (await say(tg, "/meta")).text == "Control code cleared."
                await say(tg, "/reset")
                await say(tg, "fresh", final=True)
                body = gen.requests[-1][1]
                defaults = GenerationParams()
                assert "meta" not in body
                assert (body["temperature"], body["max_tokens"]) == (
                    defaults.temperature,
                    defaults.max_new_tokens,
                )

    run(scenario())


def test_server_down_error_or_slow_gets_a_polite_reply_and_the_bot_keeps_going(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with fakes(tmp_path, request_timeout=0.5) as (tg, gen, settings):
            port = gen.port
            await gen.close()  # the generation server is down
            settings.prepare_data_dir()
            close_logs = setup_logging(settings.data_dir, "WARNING")
            try:
                async with polling(settings):
                    down = await say(tg, "anyone there?")
                    assert down.text == html.escape(UNREACHABLE)
                    assert down.callback_data  # the user can retry with the button

                    await gen.start(port)  # back up: the next message works
                    final = await say(tg, "now?", final=True)
                    assert final.text == reply_html("now?", expected_continuation(64))

                    gen.status = 500
                    failed = await say(tg, "and now?")
                    assert "failed" in failed.text and "model exploded" not in failed.text

                    gen.status, gen.hang = 200, True
                    slow = await say(tg, "slow?")
                    assert slow.text == html.escape(TOO_SLOW)

                    gen.hang = False
                    final = await say(tg, "still alive?", final=True)
                    assert final.text == reply_html("still alive?", expected_continuation(64))
            finally:
                close_logs()
            records = [
                json.loads(line) for line in (settings.data_dir / LOG_FILE).read_text().splitlines()
            ]
            errors = [r for r in records if r.get("event") == "generation_error"]
            assert len(errors) == 3
            assert all(r["chat_id"] == CHAT and r["user_id"] == CHAT for r in errors)
            assert "ConnectError" in errors[0]["message"] and "HTTP 500" in errors[1]["message"]

    run(scenario())


def test_server_error_message_for_bad_settings_reaches_the_user(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with fakes(tmp_path) as (tg, gen, settings), polling(settings):
            gen.status = 422
            answer = await say(tg, "hi")
            assert "could not use this request: model exploded" in answer.text
            assert "/reset" in answer.text

    run(scenario())


def test_long_continuation_is_trimmed_to_the_limit_and_generation_stops(tmp_path: Path) -> None:
    piece = " <&> é 😀"  # escapes grow it; the emoji counts 2 in UTF-16
    prompt = "<" * 3000  # 12000 characters once escaped: the prompt gets trimmed too

    async def scenario() -> None:
        async with fakes(tmp_path) as (tg, gen, settings), polling(settings):
            gen.pieces, gen.delay = [piece] * 2000, 0.002  # 4 s or more to send them all
            final = await say(tg, "start", final=True)
            assert MESSAGE_LIMIT - 10 < telegram_length(final.text) <= MESSAGE_LIMIT
            shown = html.unescape(final.text.removeprefix("<b>start</b>"))
            assert shown.endswith("…") and (piece * 2000).startswith(shown[:-1])
            await asyncio.wait_for(gen.stream_ended.wait(), 10)
            assert gen.pieces_sent < 2000  # the bot hung up instead of waiting for the rest

            final = await say(tg, prompt, final=True)
            assert telegram_length(final.text) <= MESSAGE_LIMIT
            assert final.text.startswith("<b>…&lt;&lt;") and "</b> &lt;&amp;&gt;" in final.text

    run(scenario())


def test_streaming_edits_are_throttled_and_the_final_text_is_complete(tmp_path: Path) -> None:
    interval = 0.4

    async def scenario() -> None:
        async with (
            fakes(tmp_path, edit_interval=interval) as (tg, gen, settings),
            polling(settings),
        ):
            gen.delay = 0.05
            await say(tg, "/length 30")
            after = len(tg.calls)
            final = await say(tg, "stream", final=True)
            writes = [c for c in tg.calls[after:] if c.method in ("sendMessage", "editMessageText")]
            assert writes[0].method == "sendMessage" and writes[-1] is final
            assert final.text == reply_html("stream", expected_continuation(30))
            assert len(writes) >= 2  # 1.5 s or more of streaming: at least one edit
            # At most one write per interval, however long the streaming took on this machine.
            gaps = [b.time - a.time for a, b in itertools.pairwise(writes)]
            assert min(gaps) >= interval - 0.02
            for partial in writes[:-1]:  # each partial text is a prefix of the final one
                assert partial.text.endswith(" …") and not partial.callback_data
                assert html.unescape(final.text).startswith(html.unescape(partial.text[:-2]))

    run(scenario())


def test_retry_after_on_an_edit_delays_the_next_edit(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with fakes(tmp_path) as (tg, gen, settings), polling(settings):
            gen.delay = 0.05
            await say(tg, "/length 12")
            tg.fail_next("editMessageText", retry_after=1)
            after = len(tg.calls)
            final = await say(tg, "edit", final=True)
            edits = [c for c in tg.calls[after:] if c.method == "editMessageText"]
            assert len(edits) >= 2 and final is edits[-1]
            assert edits[1].time - edits[0].time >= 1.0  # waited the retry_after of the 429
            assert final.text == reply_html("edit", expected_continuation(12))

    run(scenario())


def test_retry_after_on_the_first_message_of_a_reply(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with fakes(tmp_path) as (tg, gen, settings), polling(settings):
            await say(tg, "/length 3")
            tg.fail_next("sendMessage", retry_after=1)
            after = len(tg.calls)
            final = await say(tg, "send", final=True)
            sends = [c for c in tg.calls[after:] if c.method == "sendMessage"]
            assert len(sends) == 2 and sends[1].time - sends[0].time >= 1.0
            assert final.text == reply_html("send", expected_continuation(3))

    run(scenario())


def test_falls_back_to_the_original_api_and_sends_the_api_key(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with fakes(tmp_path, text_generator_service_api_key="s3cret") as (tg, gen, settings):
            gen.completions, gen.api_key = False, "s3cret"
            async with polling(settings):
                await say(tg, "/length 4")
                final = await say(tg, "old server", final=True)
                assert final.text == reply_html("old server", expected_continuation(4))
                path, body = gen.requests[-1]
                assert path == "/generated_texts/" and body["body"] == "old server"
                assert body["max_number_of_generated_tokens"] == 4
                gen.api_key = "other"
                refused = await say(tg, "wrong key")
                assert "not allowed" in refused.text

    run(scenario())


def test_shutdown_cancels_inflight_replies_and_closes_clients(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with fakes(tmp_path, shutdown_grace=0.2) as (tg, gen, settings):
            gen.hang = True
            bot = TelegramBot(settings)
            task = asyncio.create_task(bot.run_polling(handle_signals=False))
            tg.push_message(CHAT, "never finishes")
            while not gen.requests:
                await asyncio.sleep(0.02)
            assert bot.tracker.tasks  # a reply is in flight
            await asyncio.wait_for(bot.stop(), 5)
            await asyncio.wait_for(task, 5)
            assert not bot.tracker.tasks
            assert bot.ctx.client._http.is_closed
            session = bot.bot.session._session  # type: ignore[attr-defined]
            assert session is None or session.closed
            leftover = [t.get_coro().cr_code.co_filename for t in asyncio.all_tasks()]
            assert not [f for f in leftover if "/aiogram/" in f or "/serving/telegram/" in f]

    run(scenario())


def test_webhook_mode_receives_updates_with_the_secret(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def scenario() -> None:
        overrides = {
            "webhook_url": "https://bot.example.org/tg/hook",
            "webhook_port": port,
            "webhook_secret": "sec-ret_1",
        }
        async with fakes(tmp_path, **overrides) as (tg, gen, settings):
            stop = asyncio.Event()
            bot = TelegramBot(settings)
            task = asyncio.create_task(bot.run_webhook(stop))
            hook = await tg.wait_for(lambda c: c.method == "setWebhook")
            assert hook.params["url"] == "https://bot.example.org/tg/hook"
            assert hook.params["secret_token"] == "sec-ret_1"
            update = {
                "update_id": 1,
                "message": {
                    "message_id": 1,
                    "date": 0,
                    "chat": {"id": CHAT, "type": "private"},
                    "from": {"id": CHAT, "is_bot": False, "first_name": "U"},
                    "text": "hook",
                },
            }
            url = f"http://127.0.0.1:{port}/tg/hook"
            async with ClientSession() as http:
                async with http.post(url, json=update) as r:
                    assert r.status == 401  # no secret
                headers = {"X-Telegram-Bot-Api-Secret-Token": "sec-ret_1"}
                async with http.post(url, json=update, headers=headers) as r:
                    assert r.status == 200
            final = await tg.wait_for(is_final(CHAT))
            assert final.text == reply_html("hook", expected_continuation(64))
            stop.set()
            await asyncio.wait_for(task, 10)
            assert bot.ctx.client._http.is_closed

    run(scenario())


def test_a_failing_handler_is_logged_and_one_chat_generates_one_text_at_a_time(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with fakes(tmp_path) as (tg, gen, settings):
            settings.prepare_data_dir()
            close_logs = setup_logging(settings.data_dir, "ERROR")
            try:
                async with polling(settings):
                    tg.fail_next("sendMessage", status=400)  # Telegram refuses the /help answer
                    after = len(tg.calls)
                    tg.push_message(CHAT, "/help")
                    await tg.wait_for(answer_to(CHAT), after=after)
                    assert (await say(tg, "/help")).text == HELP  # the bot carries on

                    gen.delay = 0.1
                    await say(tg, "/length 10")
                    after = len(tg.calls)
                    tg.push_message(CHAT, "slow one")
                    await tg.wait_for(answer_to(CHAT), after=after)  # the reply has started
                    busy = await say(tg, "impatient")
                    assert busy.text == STILL_WRITING
                    final = await tg.wait_for(is_final(CHAT), after=after)
                    assert final.text == reply_html("slow one", expected_continuation(10))
                    assert [b["prompt"] for _, b in gen.requests] == ["slow one"]
            finally:
                close_logs()
            records = [
                json.loads(x) for x in (settings.data_dir / LOG_FILE).read_text().splitlines()
            ]
            (error,) = [r for r in records if r.get("event") == "handler_error"]
            assert error["chat_id"] == CHAT and "TelegramBadRequest" in error["exception"]

    run(scenario())


def test_the_fake_refuses_what_telegram_refuses() -> None:
    assert html_error("<b>a &lt; b</b> &amp; c") is None
    assert html_error("<b>cut</b") is not None and html_error("<b>open") is not None
    assert html_error("a & b") is not None and html_error("&am") is not None
    assert html_error("<script>x</script>") is not None
    assert html_error("<b>" + "😀" * 2048 + "</b>") is None
    assert html_error("😀" * 2049) is not None


# ---- the command line -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--text_generator_service_url", "http://x"], "--telegram_api_token (or env"),
        (
            ["--telegram_api_token", "nonsense", "--text_generator_service_url", "http://x"],
            "--telegram_api_token: not a bot token",
        ),
        (
            ["--telegram_api_token", TOKEN, "--text_generator_service_url", "localhost:9228"],
            "--text_generator_service_url: expected an http(s) URL",
        ),
        (
            [
                "--telegram_api_token",
                TOKEN,
                "--text_generator_service_url",
                "http://x",
                "--request_timeout",
                "0",
            ],
            "--request_timeout must be > 0",
        ),
    ],
)
def test_cli_rejects_bad_input_with_one_line_and_exit_2(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(cli.TOKEN_ENV, raising=False)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fst-telegram: error: {message}") and err.count("\n") == 1


def test_cli_main_runs_the_bot_with_the_token_from_env_and_stops_on_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cli.main` in this process (a subprocess would pay seconds of aiogram imports again);
    the fakes run on a loop in another thread, which also plays the user and sends SIGTERM."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def on_fake_loop(coro: Awaitable[Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)  # type: ignore[arg-type]

    tg, gen = FakeTelegram(TOKEN), FakeGenerator()
    on_fake_loop(tg.start())
    on_fake_loop(gen.start())
    data_dir = tmp_path / "data"
    replies: list[Call] = []

    def user() -> None:
        # setMyCommands comes from the startup hook, after aiogram installed its SIGTERM handler.
        on_fake_loop(tg.wait_for(lambda c: c.method == "setMyCommands", timeout=60), 65)
        try:
            replies.append(on_fake_loop(say(tg, "from the cli", final=True), 30))
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setenv(cli.TOKEN_ENV, TOKEN)
    user_thread = threading.Thread(target=user, daemon=True)
    user_thread.start()
    argv = [
        "--text_generator_service_url",
        gen.url,
        "--telegram_api_server",
        tg.url,
        "--data_dir",
        str(data_dir),
        "--edit_interval",
        "0.05",
    ]
    try:
        assert cli.main(argv) == 0
    finally:
        user_thread.join(70)
        on_fake_loop(tg.close())
        on_fake_loop(gen.close())
        loop.call_soon_threadsafe(loop.stop)
    assert replies[0].text == reply_html("from the cli", expected_continuation(64))
    log_text = (data_dir / LOG_FILE).read_text()
    records = [json.loads(line) for line in log_text.splitlines()]
    reply = next(r for r in records if r.get("event") == "reply")
    assert reply["chat_id"] == CHAT and reply["user_id"] == CHAT and reply["trimmed"] is False
    assert any(r.get("event") == "stop" for r in records)  # graceful shutdown ran
    assert "from the cli" not in log_text  # at INFO, texts are not logged


# ---- pieces -----------------------------------------------------------------------------------


def test_render_reply_counts_utf16_and_never_cuts_an_escape() -> None:
    short = render_reply("a&b", " <x>")
    assert short.html == "<b>a&amp;b</b> &lt;x&gt;" and not short.trimmed
    for limit in range(20, 40):
        r = render_reply("p", "&" * 50, limit=limit)
        assert r.trimmed and telegram_length(r.html) <= limit
        body = r.html.removeprefix("<b>p</b>")
        assert (
            body == "&amp;" * ((limit - 8 - 1) // 5) + "…"
        )  # only whole escapes, then the ellipsis
    emoji = render_reply("p", "😀" * 10, limit=8 + 2 * 4 + 1)  # 4 emoji (2 units each) + "…"
    assert emoji.html == "<b>p</b>" + "😀" * 4 + "…"


def test_lru_cache_evicts_least_recently_used() -> None:
    cache: LRUCache[str, int] = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the newest
    cache.put("c", 3)
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3 and len(cache) == 2


def test_stored_settings_that_became_invalid_are_dropped() -> None:
    settings = ChatSettings.from_overrides({"temperature": -1, "top_k": 7, "meta": "x"})
    assert settings.params.temperature == GenerationParams().temperature
    assert settings.params.top_k == 7 and settings.meta == "x"
    assert settings.overrides() == {"top_k": 7, "meta": "x"}


def test_settings_validation_errors() -> None:
    with pytest.raises(SettingsError, match="--edit_interval"):
        BotSettings(TOKEN, "http://x", edit_interval=-1)
    with pytest.raises(SettingsError, match="--webhook_secret"):
        BotSettings(TOKEN, "http://x", webhook_secret="no spaces allowed")


# ---- with the real server ---------------------------------------------------------------------


def test_end_to_end_with_a_real_fst_serve_on_a_tiny_bundle(
    tmp_path: Path, tiny_plain_bundle: Path
) -> None:
    """The bot's reply equals what fst.runtime generates greedily from the same bundle."""
    from serving_fakes import running_server

    from fst.runtime import Generator
    from fst.serving.app import create_app
    from fst.serving.settings import ServingSettings

    bundle = tiny_plain_bundle
    prompt = "Hello world"
    (reference,) = Generator.from_bundle(bundle, threads=1).generate(
        prompt, max_new_tokens=8, temperature=0.0, top_k=50, top_p=1.0, repetition_penalty=1.0
    )
    app = create_app(ServingSettings(bundle=bundle, threads=1, model_name="tiny", api_key="k3y"))

    async def scenario(base: str) -> None:
        tg = FakeTelegram(TOKEN)
        await tg.start()
        settings = make_settings(tmp_path, tg, base, text_generator_service_api_key="k3y")
        try:
            async with polling(settings):
                await say(tg, "/temperature 0")
                await say(tg, "/length 8")
                final = await say(tg, prompt, final=True)
                assert final.text == reply_html(prompt, reference.text)
        finally:
            await tg.close()

    with running_server(app, ready_timeout=60) as base:
        run(scenario(base), timeout=60)


def test_default_data_dir_is_the_users_data_folder_not_the_current_one(monkeypatch, tmp_path):
    from fst.serving.telegram.cli import parse_args

    argv = ["--telegram_api_token", "1:x", "--text_generator_service_url", "http://127.0.0.1:1"]
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert parse_args(argv).data_dir == tmp_path / "xdg" / "fst-telegram"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert parse_args(argv).data_dir == tmp_path / "home" / ".local" / "share" / "fst-telegram"
