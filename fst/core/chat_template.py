"""Chat templates: a conversation → the prompt text a chat model was trained on. Torch-free.

A chat template is data shipped with a model (Jinja2 source in `tokenizer_config.json`,
`chat_template.jinja` or a GGUF file), so fst renders it the way Hugging Face's
`apply_chat_template` does instead of formatting prompts by hand: the same sandboxed
Jinja2 environment (`trim_blocks`, `lstrip_blocks`, loop controls), the same globals
(`raise_exception`, `strftime_now`, a `tojson` that does not HTML-escape) and the same
variables (`messages`, `tools`, `documents`, `add_generation_prompt` and the tokenizer's
special tokens: `bos_token`, `eos_token`, ...). Templates from model hubs are untrusted
code: the immutable sandbox is what keeps them from reaching Python internals.

The training side (`fst-train` on dialogs), the bundle, the server and the bot all render
through `ChatTemplate.render`, so a model sees the same format everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

# ChatML: the format fst gives a model that has no template of its own (GPT-2 and models
# trained here), as many open models do. Its end-of-turn token is added to the tokenizer.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_END_OF_TURN = "<|im_end|>"
CHATML_START_OF_TURN = "<|im_start|>"


class ChatTemplateError(ValueError):
    """The template does not compile, or refused the conversation (its `raise_exception`);
    the message is one line and says which."""


@dataclass(frozen=True)
class ChatTemplate:
    """A model's chat template and the special tokens its source passes to it."""

    source: str
    special_tokens: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _compile(self.source)  # a template that does not compile fails here, once

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **variables: Any,
    ) -> str:
        """The prompt text of `messages`, as `tokenizer.apply_chat_template(messages,
        tokenize=False, add_generation_prompt=..., tools=...)` gives it."""
        context = {**self.special_tokens, **variables}
        try:
            return _compile(self.source).render(
                messages=[dict(m) for m in messages],
                tools=list(tools) if tools is not None else None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **context,
            )
        except ChatTemplateError:
            raise
        except Exception as exc:  # jinja2's TemplateError, a TypeError inside the template...
            raise ChatTemplateError(f"the chat template failed: {_one_line(exc)}") from None


@lru_cache(maxsize=16)
def _compile(source: str) -> Any:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ChatTemplateError(f"the chat template refused the conversation: {message}")

    def tojson(
        value: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: tuple[str, str] | None = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
            sort_keys=sort_keys,
        )  # fmt: skip

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(
            f"the chat template does not compile: {exc.message} (line {exc.lineno})"
        ) from None


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"
