"""A model's chat format as plain data: where training, the checkpoint and export agree.

`ChatFormat` is the template source, the special tokens it reads (`bos_token`,
`eos_token`), and the token strings that end an assistant turn. It comes from

- a Hugging Face model folder (`chat_format_from_folder`: tokenizer_config.json's
  `chat_template`, else chat_template.jinja), or
- fst's default for a model without one (`default_chat_format`: ChatML, whose markers
  `<|im_start|>` / `<|im_end|>` fst-train adds to the tokenizer),

travels in a checkpoint's `fst` payload as `to_payload()` (plain data), and becomes the
bundle's `manifest.chat` through `chat_info(format, tokenizer)`, which resolves the token
strings to ids. fst-export calls `chat_info` for every source that has a format, so
fst-chat, the server and the bot read one `ChatInfo` whatever the model came from.
Torch-free.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fst.core.bundle import ChatInfo
from fst.core.chat_template import (
    CHATML_END_OF_TURN,
    CHATML_START_OF_TURN,
    CHATML_TEMPLATE,
    ChatTemplate,
)
from fst.core.tokenization import DocumentTokenizer

DEFAULT_SOURCE = "fst's default (ChatML)"
# Tokens that end an assistant turn in common templates; those a template writes are its
# end-of-turn tokens (with the tokenizer's EOS).
KNOWN_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")
# tokenizer_config.json keys a template may read as variables.
_TEMPLATE_VARIABLES = ("bos_token", "eos_token", "pad_token", "unk_token")


@dataclass(frozen=True)
class ChatFormat:
    """A chat template with its variables and end-of-turn tokens (all plain strings)."""

    template: str
    template_source: str
    special_tokens: Mapping[str, str] = field(default_factory=dict)
    # Token strings that end an assistant turn (first: the one the template writes).
    end_of_turn: tuple[str, ...] = ()
    # Tokens fst-train adds to the tokenizer for this format (ChatML's two for the default).
    markers: tuple[str, ...] = ()

    def renderer(self) -> ChatTemplate:
        return ChatTemplate(self.template, dict(self.special_tokens))

    def to_payload(self) -> dict[str, Any]:
        """Plain data for the checkpoint's `fst` payload (`from_payload` reads it back)."""
        data = asdict(self)
        data["special_tokens"] = dict(self.special_tokens)
        data["end_of_turn"] = list(self.end_of_turn)
        data["markers"] = list(self.markers)
        return data

    @classmethod
    def from_payload(cls, data: Mapping[str, Any]) -> ChatFormat:
        return cls(
            template=str(data["template"]),
            template_source=str(data["template_source"]),
            special_tokens=dict(data.get("special_tokens") or {}),
            end_of_turn=tuple(data.get("end_of_turn") or ()),
            markers=tuple(data.get("markers") or ()),
        )


def default_chat_format(eos_token: str | None = None) -> ChatFormat:
    """ChatML, for models without a template of their own (GPT-2, presets, fst models)."""
    return ChatFormat(
        template=CHATML_TEMPLATE,
        template_source=DEFAULT_SOURCE,
        special_tokens={"eos_token": eos_token} if eos_token else {},
        end_of_turn=(CHATML_END_OF_TURN,),
        markers=(CHATML_START_OF_TURN, CHATML_END_OF_TURN),
    )


def chat_format_from_folder(folder: str | Path) -> ChatFormat | None:
    """The chat format a Hugging Face model folder declares; None when it has no template."""
    folder = Path(folder)
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    template, source = config.get("chat_template"), "tokenizer_config.json"
    if isinstance(template, list):  # named templates: transformers uses "default"
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    jinja = folder / "chat_template.jinja"
    if not template and jinja.is_file():
        template, source = jinja.read_text(encoding="utf-8"), "chat_template.jinja"
    if not isinstance(template, str) or not template:
        return None
    special = {}
    for key in _TEMPLATE_VARIABLES:
        value = config.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str) and value:
            special[key] = value
    return chat_format_from_template(template, source, special)


def chat_format_from_template(
    template: str, source: str, special_tokens: Mapping[str, str]
) -> ChatFormat:
    """A model's own template (from a folder or a GGUF file's metadata): its end-of-turn
    tokens are the known ones it writes, then its EOS."""
    written = [t for t in KNOWN_END_OF_TURN if t in template]
    eos = special_tokens.get("eos_token")
    end_of_turn = tuple(dict.fromkeys([*written, *([eos] if eos else [])]))
    return ChatFormat(template, source, dict(special_tokens), end_of_turn)


def chat_info(chat: ChatFormat, tokenizer: DocumentTokenizer) -> ChatInfo:
    """The bundle manifest's chat section: the format with its end-of-turn ids (and EOS)."""
    ids = [tokenizer.token_id(t) for t in chat.end_of_turn]
    stop = [i for i in [*ids, tokenizer.eos_token_id] if i is not None]
    return ChatInfo(
        template=chat.template,
        template_source=chat.template_source,
        special_tokens=dict(chat.special_tokens),
        stop_token_ids=list(dict.fromkeys(stop)),
    )
