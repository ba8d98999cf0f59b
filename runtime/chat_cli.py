"""fst-chat: talk with a chat model from a bundle in the terminal (no server, no torch).

    fst-chat --bundle smollm2/ --system "You are a concise assistant."

Each line you type is a user message; the answer streams as the model writes it. The
conversation is kept and sent with every message; when it would no longer fit the model's
context (with room for `--max_new_tokens`), the oldest turns are dropped first (the system
message stays). Commands: `/reset` forgets the conversation, `/system TEXT` sets the system
message (`/system` alone removes it), `/help`, `/exit`. Ctrl-D or Ctrl-C ends the session
(exit status 0). A bundle without a chat template, or bad options, print one line and
exit with 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fst.core.chat_template import ChatTemplateError
from fst.core.cli_settings import build_parser as _build_parser
from fst.core.cli_settings import comma_list, fail, option, parse_settings
from fst.core.generation_params import GenerationParams
from fst.runtime.chat import Message, fit_history, render_chat
from fst.runtime.cli import generation_option, given_generation_params, load_generator

log = logging.getLogger("fst.chat")

PROG = "fst-chat"
DESCRIPTION = "Chat with a model from an fst bundle in the terminal (ONNX Runtime, no torch)."
HELP = (
    "Type a message and press Enter. Commands: /reset (forget the conversation), "
    "/system TEXT (set the system message; /system alone removes it), /help, /exit. "
    "Ctrl-D or Ctrl-C quits."
)


@dataclass(frozen=True)
class ChatArgs:
    """fst-chat's options; the generation parameters are checked here, before loading."""

    bundle: str = option(metavar="PATH", help="bundle folder written by fst-export (a chat model)")
    system: str | None = option(None, help="the system message to start with")
    max_new_tokens: int = option(
        256, group="generation", help="longest answer, in tokens (also kept free in the context)"
    )
    temperature: float | None = generation_option("temperature")
    top_k: int | None = generation_option("top_k")
    top_p: float | None = generation_option("top_p")
    repetition_penalty: float | None = generation_option("repetition_penalty")
    presence_penalty: float | None = generation_option("presence_penalty")
    frequency_penalty: float | None = generation_option("frequency_penalty")
    seed: int | None = generation_option("seed")
    providers: tuple[str, ...] | None = option(
        None,
        parse=comma_list,
        shown_default="the best available",
        help="comma-separated ONNX Runtime providers, e.g. CPUExecutionProvider",
    )
    threads: int | None = option(None, shown_default="ONNX Runtime's", help="intra-op threads")
    huge_pages: bool = option(
        True, help="move the weights into 2 MiB pages on Linux (--no_huge_pages: 4 KiB pages)"
    )
    debug: bool = option(False, help="show tracebacks")

    def __post_init__(self) -> None:
        try:  # the ranges, once; the bundle's own defaults are merged after loading
            GenerationParams(**self.overrides())
        except ValueError as e:
            raise ValueError(f"--{e}") from None

    def overrides(self) -> dict[str, Any]:
        """The generation parameters given on the command line; one answer at a time."""
        return {**given_generation_params(self), "num_return_sequences": 1}


class ChatSession:
    """One conversation with a chat model: its system message, its turns, one answer at a
    time. `ask` trims the oldest turns so the prompt and the answer fit the context."""

    def __init__(self, generator: Any, params: GenerationParams, system: str | None = None):
        render_chat(generator.chat, [{"role": "user", "content": ""}])  # NotAChatModel early
        self.generator = generator
        self.params = params
        self.system = system
        self.turns: list[Message] = []

    @property
    def messages(self) -> list[Message]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [*system, *self.turns]

    def reset(self) -> None:
        self.turns = []

    def ask(self, text: str) -> Iterator[str]:
        """The answer to `text`, piece by piece; the turn is kept once the answer is complete.

        ValueError (before any piece) when the message alone does not fit the context or the
        template refuses the conversation; the conversation is then unchanged.
        """
        conversation = fit_history([*self.messages, {"role": "user", "content": text}], self._fits)
        prompt = render_chat(self.generator.chat, conversation)
        stream = self.generator.stream(prompt, self.params)  # checks the request now
        self.turns = [m for m in conversation if m["role"] != "system"]
        return self._answer(stream)

    def _answer(self, stream: Iterator[str]) -> Iterator[str]:
        pieces = []
        for piece in stream:
            pieces.append(piece)
            yield piece
        self.turns.append({"role": "assistant", "content": "".join(pieces)})

    def _fits(self, conversation: list[Message]) -> bool:
        ids = self.generator.encode_prompt(render_chat(self.generator.chat, conversation))
        return len(ids) + self.params.max_new_tokens <= self.generator.max_positions


def converse(
    session: ChatSession,
    read: Callable[[str], str] = input,
    write: Callable[[str], Any] = sys.stdout.write,
) -> int:
    """Read messages and commands until end of input or Ctrl-C; always returns 0."""
    try:
        while True:
            try:
                line = read("you> ").strip()
            except EOFError:
                break
            if not line:
                continue
            if line.startswith("/"):
                if not _command(session, line, write):
                    break
                continue
            try:
                pieces = session.ask(line)
            except (ValueError, ChatTemplateError) as e:
                write(f"[{e}]\n")
                continue
            for piece in pieces:
                write(piece)
                sys.stdout.flush()
            write("\n")
    except KeyboardInterrupt:
        pass
    write("\n")
    return 0


def _command(session: ChatSession, line: str, write: Callable[[str], Any]) -> bool:
    """Run one /command; False to end the session."""
    name, _, rest = line.partition(" ")
    if name in ("/exit", "/quit"):
        return False
    if name == "/reset":
        session.reset()
        write("[conversation forgotten]\n")
    elif name == "/system":
        session.system = rest.strip() or None
        write("[system message set]\n" if session.system else "[system message removed]\n")
    elif name == "/help":
        write(HELP + "\n")
    else:
        write(f"[unknown command {name}; {HELP}]\n")
    return True


def build_parser() -> argparse.ArgumentParser:
    return _build_parser(ChatArgs, prog=PROG, description=DESCRIPTION)


def parse_args(argv: list[str] | None = None) -> ChatArgs:
    return parse_settings(ChatArgs, argv, prog=PROG, description=DESCRIPTION)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except ValueError as e:
        return fail(PROG, e)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING)
    from fst.runtime.session import ProviderUnavailableError

    try:
        generator = load_generator(args)
        params = generator.default_params.with_overrides(**args.overrides())
        session = ChatSession(generator, params, args.system)
    except (ValueError, OSError, ProviderUnavailableError) as e:
        log.debug("fst-chat failed", exc_info=True)
        return fail(PROG, f"{args.bundle}: {e}" if "no chat template" in str(e) else e)
    except KeyboardInterrupt:
        return 0
    if sys.stdin.isatty():
        print(HELP)
    return converse(session)


if __name__ == "__main__":
    sys.exit(main())
