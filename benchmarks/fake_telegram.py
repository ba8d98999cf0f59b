"""A fake Telegram Bot API server on 127.0.0.1 for the bot's tests and the reliability probes.

It serves `/bot{token}/{method}` like api.telegram.org: `getUpdates` long-polls a queue the
test fills with `push_message` / `push_callback`; `sendMessage` and `editMessageText` return
messages with fresh ids; every call is recorded with its time and parameters, so tests assert
what the bot sent. `fail_next(method, retry_after)` answers the next such call with Telegram's
429 flood-control error; `fail_next(method, status=502)` with a server error (`html=True`: a
proxy's HTML page), `fail_next(method, drop=True)` closes the connection unanswered, and
`times=n` repeats the fault for the next n calls. Like Telegram, texts sent with parse_mode HTML must be well-formed
(only Telegram's tags, balanced, every `<`, `>`, `&` escaped) and at most 4096 UTF-16 units
once parsed, or the call fails with 400. Unknown methods answer `true`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from aiohttp import web

BOT_USER = {"id": 4242, "is_bot": True, "first_name": "FST", "username": "fst_test_bot"}
LONG_POLL_CAP = 0.5  # seconds: keeps polling responsive when the bot stops


TELEGRAM_TAGS = {
    "b",
    "strong",
    "i",
    "em",
    "u",
    "ins",
    "s",
    "strike",
    "del",
    "code",
    "pre",
    "a",
    "tg-spoiler",
    "blockquote",
}
_TAG_OR_ENTITY = re.compile(r"</?[a-z-]+(\s[^<>]*)?>|&(lt|gt|amp|quot|#\d+|#x[0-9a-fA-F]+);")


class _Entities(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.text: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag not in TELEGRAM_TAGS:
            self.errors.append(f"unsupported start tag {tag!r}")
        self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open.pop() != tag:
            self.errors.append(f"unexpected end tag {tag!r}")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def html_error(text: str) -> str | None:
    """Why Telegram would refuse `text` in parse_mode HTML, or None."""
    if re.search(r"[<>&]", _TAG_OR_ENTITY.sub("", text)):
        return "Bad Request: can't parse entities: unescaped <, > or &"
    parser = _Entities()
    parser.feed(text)
    parser.close()
    if parser.errors or parser.open:
        return f"Bad Request: can't parse entities: {parser.errors or parser.open}"
    plain = "".join(parser.text)
    if not plain.strip():
        return "Bad Request: message text is empty"
    if len(plain.encode("utf-16-le")) // 2 > 4096:
        return "Bad Request: message is too long"
    return None


@dataclass(frozen=True)
class Fault:
    status: int
    retry_after: int | None = None
    drop: bool = False
    html: bool = False


@dataclass
class Call:
    method: str
    params: dict[str, str]
    time: float = field(default_factory=time.monotonic)
    fault: Fault | None = None  # the fault injected in the answer, if any

    @property
    def chat_id(self) -> int:
        return int(self.params["chat_id"])

    @property
    def text(self) -> str:
        return self.params.get("text", "")

    @property
    def reply_markup(self) -> dict[str, Any] | None:
        raw = self.params.get("reply_markup")
        return json.loads(raw) if raw else None

    @property
    def callback_data(self) -> list[str]:
        markup = self.reply_markup or {}
        return [b["callback_data"] for row in markup.get("inline_keyboard", []) for b in row]


class FakeTelegram:
    def __init__(self, token: str) -> None:
        self.token = token
        self.calls: list[Call] = []
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(1000)
        self._failures: dict[str, list[Fault]] = {}
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # ---- what tests inject ----------------------------------------------------------------
    def push_message(self, chat_id: int, text: str, user_id: int | None = None) -> dict[str, Any]:
        message = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private"},
            "from": {"id": user_id or chat_id, "is_bot": False, "first_name": "User"},
            "text": text,
        }
        if text.startswith("/"):
            command = text.split()[0]
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
        return self._push({"message": message})

    def push_callback(self, sent: Call, data: str, user_id: int | None = None) -> dict[str, Any]:
        """A press on a button of the message `sent` (a recorded sendMessage call)."""
        message = {
            "message_id": sent.params["_message_id"],
            "date": int(time.time()),
            "chat": {"id": sent.chat_id, "type": "private"},
            "from": BOT_USER,
            "text": sent.text,
        }
        query = {
            "id": str(next(self._message_ids)),
            "from": {"id": user_id or sent.chat_id, "is_bot": False, "first_name": "User"},
            "chat_instance": "1",
            "message": message,
            "data": data,
        }
        return self._push({"callback_query": query})

    def fail_next(
        self,
        method: str,
        retry_after: int | None = None,
        status: int = 429,
        *,
        drop: bool = False,
        html: bool = False,
        times: int = 1,
    ) -> None:
        """Answer the next `times` calls to `method` with 429 retry_after, or with `status`
        (an HTML page with `html`), or drop their connection unanswered (`drop`)."""
        fault = Fault(status, retry_after, drop, html)
        self._failures.setdefault(method, []).extend([fault] * times)

    def faults_left(self, method: str) -> int:
        return len(self._failures.get(method, []))

    # ---- what tests read ------------------------------------------------------------------
    def calls_to(self, *methods: str) -> list[Call]:
        return [c for c in self.calls if c.method in methods]

    async def wait_for(
        self, predicate: Callable[[Call], bool], timeout: float = 10.0, after: int = 0
    ) -> Call:
        """The first recorded call (from index `after` on) matching `predicate`."""

        def found() -> Call | None:
            return next((c for c in self.calls[after:] if predicate(c)), None)

        async def wait() -> Call:
            async with self._changed:
                await self._changed.wait_for(lambda: found() is not None)
            return found()  # type: ignore[return-value]

        return await asyncio.wait_for(wait(), timeout)

    # ---- the Bot API ----------------------------------------------------------------------
    def _push(self, payload: dict[str, Any]) -> dict[str, Any]:
        update = {"update_id": next(self._update_ids), **payload}
        self._updates.append(update)
        asyncio.get_running_loop().create_task(self._notify())
        return update

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        params = {k: str(v) for k, v in (await request.post()).items()}
        if method == "getUpdates":
            return _ok(await self._get_updates(params))
        call = Call(method, params)
        error = html_error(params.get("text", "")) if params.get("parse_mode") == "HTML" else None
        fault = self._failures[method].pop(0) if self._failures.get(method) else None
        call.fault = fault
        if fault is not None and fault.drop:
            self.calls.append(call)
            await self._notify()
            assert request.transport is not None
            request.transport.close()  # the client sees the server disconnect, no answer
            return web.Response()
        if fault is not None and fault.html:
            page = f"<html><body><h1>{fault.status} Bad Gateway</h1></body></html>"
            response = web.Response(status=fault.status, text=page, content_type="text/html")
        elif fault is not None:
            status, retry_after = fault.status, fault.retry_after
            response = _error(status, f"Error {status}: retry after {retry_after}", retry_after)
        elif error is not None:
            response = _error(400, error)
        elif method == "getMe":
            response = _ok(BOT_USER)
        elif method in ("sendMessage", "editMessageText"):
            response = _ok(self._message(call))
        elif method == "getWebhookInfo":
            response = _ok({"url": "", "has_custom_certificate": False, "pending_update_count": 0})
        else:
            response = _ok(True)
        self.calls.append(call)
        await self._notify()
        return response

    async def _get_updates(self, params: dict[str, str]) -> list[dict[str, Any]]:
        offset = int(params.get("offset", 0))
        self._updates = [u for u in self._updates if u["update_id"] >= offset]
        if not self._updates:
            timeout = min(float(params.get("timeout", 0)), LONG_POLL_CAP)
            try:
                async with self._changed:
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda: bool(self._updates)), timeout
                    )
            except TimeoutError:
                pass
        return list(self._updates)

    def _message(self, call: Call) -> dict[str, Any]:
        params = call.params
        if call.method == "sendMessage":
            message_id = next(self._message_ids)
        else:
            message_id = int(params["message_id"])
        params["_message_id"] = str(message_id)
        return {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": {"id": int(params["chat_id"]), "type": "private"},
            "from": BOT_USER,
            "text": params.get("text", ""),
        }


def _ok(result: Any) -> web.Response:
    return web.json_response({"ok": True, "result": result})


def _error(status: int, description: str, retry_after: int | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return web.json_response(body, status=status)
