"""The bot against a faulty Bot API: 5xx, a proxy's HTML error page, dropped connections.

A reply must still reach the user, complete and with its Repeat button, as long as Telegram
recovers within the retries; when it does not, the bot gives up after a
bounded number of attempts and keeps serving other chats.
"""

from __future__ import annotations

import itertools

import pytest
from test_telegram import CHAT, expected_continuation, fakes, is_final, polling, reply_html, run

from fst.serving.telegram import live_reply
from fst.serving.telegram.live_reply import RETRY_ATTEMPTS

FAULTS = [
    {"status": 500},
    {"status": 502, "html": True},  # nginx's error page: not JSON at all
    {"drop": True},  # the connection closes without an answer
    {"status": 503, "times": RETRY_ATTEMPTS - 1},  # all but the last attempt fail
]


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    monkeypatch.setattr(live_reply, "FIRST_BACKOFF_S", 0.05)


def delivered(chat_id: int):
    """The reply's final message (or edit) as Telegram accepted it."""
    return lambda c: is_final(chat_id)(c) and c.fault is None


@pytest.mark.parametrize("method", ["sendMessage", "editMessageText"])
def test_a_reply_survives_server_errors_and_dropped_connections(tmp_path, method) -> None:
    async def scenario() -> None:
        async with fakes(tmp_path) as (tg, gen, settings), polling(settings):
            tg.push_message(CHAT, "/length 6")
            await tg.wait_for(lambda c: c.method == "sendMessage")
            for n, fault in enumerate(FAULTS):
                prompt = f"text {n}"
                tg.fail_next(method, **fault)
                after = len(tg.calls)
                tg.push_message(CHAT, prompt)
                final = await tg.wait_for(delivered(CHAT), after=after)
                assert final.text == reply_html(prompt, expected_continuation(6))
                assert tg.faults_left(method) == 0
                failed = [c for c in tg.calls[after:] if c.fault is not None]
                assert len(failed) == fault.get("times", 1)
                assert all(c.method == method for c in failed)
                sends = [c for c in tg.calls[after:] if c.method == "sendMessage" and not c.fault]
                assert len(sends) == 1  # one message per reply, never a second one

    run(scenario())


def test_retries_back_off_and_are_bounded_then_other_chats_are_still_served(tmp_path) -> None:
    async def scenario() -> None:
        async with fakes(tmp_path) as (tg, gen, settings), polling(settings):
            tg.fail_next("sendMessage", status=502, times=RETRY_ATTEMPTS + 5)
            tg.push_message(CHAT, "never delivered")
            attempts = []
            for _ in range(RETRY_ATTEMPTS):
                after = tg.calls.index(attempts[-1]) + 1 if attempts else 0
                attempts.append(await tg.wait_for(lambda c: c.method == "sendMessage", after=after))
            gaps = [b.time - a.time for a, b in itertools.pairwise(attempts)]
            assert all(gap >= 0.05 * 2**i for i, gap in enumerate(gaps))  # 0.05, 0.1, 0.2 s
            tg._failures.clear()
            other = CHAT + 1
            after = len(tg.calls)
            tg.push_message(other, "hello")
            final = await tg.wait_for(delivered(other), after=after)
            assert final.text == reply_html("hello", expected_continuation(64))
            # The first chat's reply was given up after RETRY_ATTEMPTS attempts.
            to_first = [c for c in tg.calls_to("sendMessage") if c.chat_id == CHAT]
            assert len(to_first) == RETRY_ATTEMPTS

    run(scenario())
