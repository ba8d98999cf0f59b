"""fst-telegram in chat mode: a real fst-serve app (its /tokenize and /v1/chat/completions)
on 127.0.0.1 around the step-level fake generator with a ChatML template, and the fake Bot
API. The conversation, its system message and its trimming to the context are checked
against the prompts the generator received; the answers against the fake model's text."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pytest
from serving_fakes import FakeGenerator, fake_token, running_server
from test_telegram import CHAT, TOKEN, is_final, make_settings, polling, run, say

from benchmarks.fake_telegram import FakeTelegram
from fst.core.bundle import ChatInfo
from fst.core.chat_template import CHATML_TEMPLATE, ChatTemplate
from fst.runtime import ChatPrompt
from fst.serving.app import create_app
from fst.serving.settings import ServingSettings
from fst.serving.telegram.conversation import NOTHING_TO_REPEAT, TOO_LONG
from fst.serving.telegram.handlers import CHAT_HELP, HELP, NOT_A_CHAT_MODEL

pytestmark = pytest.mark.timeout(120)

CHATML = ChatInfo(template=CHATML_TEMPLATE, template_source="test", stop_token_ids=[1])


def rendered(*messages: tuple[str, str]) -> str:
    conversation = [{"role": role, "content": content} for role, content in messages]
    return ChatTemplate(CHATML_TEMPLATE).render(conversation)


def fake_answer(prompt: str, tokens: int) -> str:
    ids = list(prompt.encode())
    return bytes(fake_token(ids, 0, t) for t in range(tokens)).decode()


def prompts(fake: FakeGenerator) -> list[str]:
    """The chat prompts the generator was asked to answer (not the server's warm-up)."""
    return [r.prompt.text for r in fake.requests if isinstance(r.prompt, ChatPrompt)]


def chat_with(tmp_path: Path, fake: FakeGenerator, scenario: Any) -> None:
    app = create_app(ServingSettings(model_name="tiny"), generator=fake)

    async def main(base: str) -> None:
        tg = FakeTelegram(TOKEN)
        await tg.start()
        try:
            await scenario(tg, make_settings(tmp_path, tg, base))
        finally:
            await tg.close()

    with running_server(app) as base:
        run(main(base), timeout=90)


def test_chat_mode_keeps_the_conversation_across_restarts_with_system_repeat_and_reset(
    tmp_path: Path,
) -> None:
    fake = FakeGenerator(chat=CHATML)

    async def scenario(tg: FakeTelegram, settings: Any) -> None:
        async with polling(settings):
            assert (await say(tg, "/start")).text == CHAT_HELP
            assert (await say(tg, "/length 8")).text == "length set to 8."
            first = await say(tg, "Hello <you>", final=True)
            one = rendered(("user", "Hello <you>"))
            answer1 = fake_answer(one, 8)
            assert first.text == html.escape(answer1)  # the answer alone, no bold prompt
            assert prompts(fake) == [one]
            system = await say(tg, "/system Be brief.")
            assert system.text == "System message set to: <i>Be brief.</i>"
            second = await say(tg, "And then?", final=True)
            two = rendered(
                ("system", "Be brief."),
                ("user", "Hello <you>"),
                ("assistant", answer1),
                ("user", "And then?"),
            )
            assert prompts(fake)[-1] == two and second.text == fake_answer(two, 8)
            # Repeat: the last answer again, from the same conversation (not the answer added).
            sent = tg.calls_to("sendMessage")[-1]
            after = len(tg.calls)
            tg.push_callback(sent, second.callback_data[0])
            again = await tg.wait_for(is_final(CHAT), after=after)
            assert prompts(fake)[-1] == two and again.text == second.text
        # A new bot on the same data folder remembers the conversation.
        async with polling(settings):
            await say(tg, "Still there?", final=True)
            three = rendered(
                ("system", "Be brief."),
                ("user", "Hello <you>"),
                ("assistant", answer1),
                ("user", "And then?"),
                ("assistant", fake_answer(two, 8)),
                ("user", "Still there?"),
            )
            assert prompts(fake)[-1] == three
            reset = await say(tg, "/reset")
            assert reset.text.startswith("Conversation forgotten. Back to the defaults:")
            sent = tg.calls_to("sendMessage")[-1]
            after = len(tg.calls)
            tg.push_callback(sent, second.callback_data[0])
            nothing = await tg.wait_for(
                lambda c: c.method == "sendMessage" and c.text == NOTHING_TO_REPEAT, after=after
            )
            assert nothing.chat_id == CHAT
            await say(tg, "Hi again", final=True)
            assert prompts(fake)[-1] == rendered(("user", "Hi again"))

    chat_with(tmp_path, fake, scenario)


def test_the_oldest_turns_are_dropped_when_the_conversation_outgrows_the_context(
    tmp_path: Path,
) -> None:
    context, length = 400, 20
    fake = FakeGenerator(chat=CHATML, max_positions=context)

    async def scenario(tg: FakeTelegram, settings: Any) -> None:
        async with polling(settings):
            await say(tg, f"/length {length}")
            await say(tg, "/system Answer in French.")
            for i in range(8):
                await say(tg, f"This is message number {i}, a long one to fill the context.", final=True)  # fmt: skip
            for prompt in prompts(fake):  # each one fitted with room for the answer
                assert len(prompt.encode()) + length <= context
                assert prompt.startswith("<|im_start|>system\nAnswer in French.<|im_end|>")
            last = prompts(fake)[-1]
            assert "message number 7" in last and "message number 0" not in last
            assert "message number 6" in last  # the turns before it, as many as fit
            assert html.unescape((await say(tg, "x" * 500)).text) == TOO_LONG

    chat_with(tmp_path, fake, scenario)


def test_a_document_model_keeps_continuing_text(tmp_path: Path) -> None:
    fake = FakeGenerator(document_format=True)

    async def scenario(tg: FakeTelegram, settings: Any) -> None:
        async with polling(settings):
            assert (await say(tg, "/help")).text == HELP
            assert (await say(tg, "/system Be nice.")).text == NOT_A_CHAT_MODEL
            await say(tg, "/length 4")
            final = await say(tg, "Once", final=True)
            expected = fake_answer_document("Once", 4)
            assert final.text == f"<b>Once</b>{expected}"
            assert prompts(fake) == []

    chat_with(tmp_path, fake, scenario)


def fake_answer_document(body: str, tokens: int) -> str:
    ids = [2, *body.encode()]  # the fake's document encoding: START, then the body
    return bytes(fake_token(ids, 0, t) for t in range(tokens)).decode()
