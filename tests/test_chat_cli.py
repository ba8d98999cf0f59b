"""Conversations in the runtime (fst.runtime.chat: rendering, tokens, trimming the history)
and fst-chat, driven in-process and as a real process with piped input and signals."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fst.core.chat_template import ChatTemplate
from fst.core.generation_params import GenerationParams
from fst.core.tokenization import DocumentTokenizer
from fst.runtime import ChatPrompt, Generator
from fst.runtime.chat import NotAChatModel, drop_oldest_turn, fit_history, render_chat
from fst.runtime.chat_cli import ChatSession, converse
from fst.runtime.prompts import PromptEncoder

pytestmark = pytest.mark.timeout(180)

GREEDY = GenerationParams(max_new_tokens=6, temperature=0.0, top_k=0)


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


SYSTEM = {"role": "system", "content": "S"}


def test_drop_oldest_turn_keeps_the_system_message_and_the_alternation() -> None:
    history = [SYSTEM, user("a"), assistant("A"), user("b"), assistant("B"), user("c")]
    assert drop_oldest_turn(history) == [SYSTEM, user("b"), assistant("B"), user("c")]
    assert drop_oldest_turn([SYSTEM, user("b"), assistant("B"), user("c")]) == [SYSTEM, user("c")]
    assert drop_oldest_turn([SYSTEM, user("c")]) is None
    assert drop_oldest_turn([user("c")]) is None
    # Each step drops one exchange; the last user message always stays.
    sizes = []
    kept = fit_history(history, lambda m: sizes.append(len(m)) or len(m) <= 3)
    assert kept == [SYSTEM, user("c")] and sizes == [6, 4, 2]
    assert fit_history(history, lambda m: True) == history
    with pytest.raises(ValueError, match="too long"):
        fit_history(history, lambda m: False)


def test_a_chat_prompt_is_tokenized_as_the_template_wrote_it_without_a_second_bos(
    gpt2_bpe_dir: Path,
) -> None:
    from transformers import GPT2TokenizerFast

    tokenizer = DocumentTokenizer.from_pretrained(
        gpt2_bpe_dir, document_format=False, bos_token="<|endoftext|>"
    )
    encoder = PromptEncoder(tokenizer, 1024)
    bos = tokenizer.bos_token_id
    hf = GPT2TokenizerFast(
        vocab=str(gpt2_bpe_dir / "vocab.json"), merges=str(gpt2_bpe_dir / "merges.txt")
    )
    hello = hf.encode("Hello", add_special_tokens=False)
    # A plain prompt gets the BOS and reads special-token strings as text...
    assert encoder.encode_prompt("Hello") == [bos, *hello]
    assert encoder.encode_prompt("<|endoftext|>Hi")[:2] == [bos, hf.convert_tokens_to_ids("<")]
    # ...a rendered conversation gets exactly what the template wrote, as transformers does.
    template = ChatTemplate(
        "{{ bos_token }}{{ messages[0]['content'] }}", {"bos_token": "<|endoftext|>"}
    )
    rendered = template.render([user("Hello")])
    assert encoder.encode_prompt(ChatPrompt(rendered)) == hf.encode(
        rendered, add_special_tokens=False
    )
    assert encoder.encode_prompt(ChatPrompt(rendered)) == [bos, *hello]
    assert encoder.encode_prompt(ChatPrompt("Hello")) == hello


@pytest.fixture(scope="module")
def chat_generator(tiny_chatml_bundle: Path) -> Generator:
    return Generator.from_bundle(tiny_chatml_bundle, threads=1)


def test_a_session_answers_as_the_generator_and_drops_the_oldest_turns(
    chat_generator: Generator,
) -> None:
    params = GREEDY.with_overrides(max_new_tokens=8)
    session = ChatSession(chat_generator, params, system="Be brief.")
    answers = []
    for i in range(8):  # ~25 tokens a turn: the 128-token context holds only the last few
        text = f"Question number {i}: tell me about the number {i}."
        expected_history = session.messages + [user(text)]
        answer = "".join(session.ask(text))
        answers.append(answer)
        messages = session.messages
        assert messages[0] == {"role": "system", "content": "Be brief."}
        assert messages[-2:] == [user(text), assistant(answer)]
        prompt = render_chat(chat_generator.chat, messages[:-1])
        assert len(chat_generator.encode_prompt(prompt)) + 8 <= chat_generator.max_positions
        assert messages[:-1] == [messages[0], *expected_history[-(len(messages) - 2) :]]
        (reference,) = chat_generator.generate(prompt, params)
        assert answer == reference.text
    assert len(session.messages) < 2 * 8 + 1  # old turns were dropped
    session.reset()
    assert session.messages == [{"role": "system", "content": "Be brief."}]
    with pytest.raises(ValueError, match="too long"):
        session.ask("word " * 200)
    assert session.messages == [{"role": "system", "content": "Be brief."}]


def test_converse_handles_commands_and_ends_cleanly_on_eof_and_ctrl_c(
    chat_generator: Generator,
) -> None:
    session = ChatSession(chat_generator, GREEDY)
    lines = iter(["/system Talk like a pirate.", "Hello", "", "/oops", "/reset", "Hi"])
    out: list[str] = []

    def read(prompt: str) -> str:
        line = next(lines, None)
        if line is None:
            raise EOFError
        return line

    assert converse(session, read, out.append) == 0
    text = "".join(out)
    assert "[system message set]" in text and "[unknown command /oops" in text
    assert "[conversation forgotten]" in text
    first = render_chat(
        chat_generator.chat, [{"role": "system", "content": "Talk like a pirate."}, user("Hello")]
    )
    assert chat_generator.generate(first, GREEDY)[0].text in text
    assert session.messages == [
        {"role": "system", "content": "Talk like a pirate."},
        user("Hi"),
        assistant(
            chat_generator.generate(render_chat(chat_generator.chat, session.messages[:2]), GREEDY)[
                0
            ].text
        ),
    ]

    def interrupted(prompt: str) -> str:
        raise KeyboardInterrupt

    assert converse(session, interrupted, out.append) == 0


def test_a_model_without_a_chat_template_is_refused(tiny_plain_bundle: Path) -> None:
    generator = Generator.from_bundle(tiny_plain_bundle, threads=1)
    with pytest.raises(NotAChatModel):
        ChatSession(generator, GREEDY)
    result = subprocess.run(
        [sys.executable, "-m", "fst.runtime.chat_cli", "--bundle", str(tiny_plain_bundle)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("fst-chat: error: ") and "no chat template" in result.stderr
    assert result.stderr.count("\n") == 1


def chat_command(bundle: Path) -> list[str]:
    return [sys.executable, "-m", "fst.runtime.chat_cli", "--bundle", str(bundle), "--threads",
            "1", "--max_new_tokens", "6", "--temperature", "0", "--top_k", "0"]  # fmt: skip


def test_fst_chat_streams_answers_from_piped_input_and_exits_0(
    tiny_chatml_bundle: Path, chat_generator: Generator
) -> None:
    result = subprocess.run(
        [*chat_command(tiny_chatml_bundle), "--system", "Be kind."],
        input="Hello\n/reset\nHello\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    conversation = [{"role": "system", "content": "Be kind."}, user("Hello")]
    answer = chat_generator.generate(render_chat(chat_generator.chat, conversation), GREEDY)[0]
    assert result.stdout.count(answer.text) >= 2  # the same answer after /reset
    assert "[conversation forgotten]" in result.stdout


def test_fst_chat_exits_0_without_a_traceback_on_ctrl_c(tiny_chatml_bundle: Path) -> None:
    process = subprocess.Popen(
        chat_command(tiny_chatml_bundle),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(b"Hello\n")
        process.stdin.flush()
        deadline = time.monotonic() + 60
        seen = b""
        while seen.count(b"you> ") < 2:  # answered, and waiting for the next message
            assert time.monotonic() < deadline, seen
            if select.select([process.stdout], [], [], 0.1)[0]:
                seen += os.read(process.stdout.fileno(), 4096)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err
