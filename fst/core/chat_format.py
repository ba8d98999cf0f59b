"""A model's chat format as plain data: where training, the checkpoint and export agree.

`ChatFormat` is the template source, the special tokens it reads (`bos_token`,
`eos_token`), and the token strings that end an assistant turn. It comes from

- a model's own chat section (`chat_format_from_info` of what
  `fst.core.chat_info.read_chat_info` reads from a Hugging Face folder or a GGUF file,
  the reader fst-export uses), or
- fst's default for a model without one (`default_chat_format`: ChatML, whose markers
  `<|im_start|>` / `<|im_end|>` fst-train adds to the tokenizer),

travels in a checkpoint's `fst` payload as `to_payload()` (plain data), and becomes the
bundle's `manifest.chat` through `chat_info(format, tokenizer)`, which resolves the token
strings to ids. fst-export calls `chat_info` for a checkpoint that has a format, so fst-chat, the server
and the bot read one `ChatInfo` whatever the model came from.
Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
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


def chat_format_from_info(info: ChatInfo, tokenizer: DocumentTokenizer) -> ChatFormat:
    """A model's own chat section (`fst.core.chat_info.read_chat_info` of its folder or
    GGUF file) as a ChatFormat: its stop ids become the end-of-turn token strings."""
    end_of_turn = [tokenizer.id_to_token(i) for i in info.stop_token_ids]
    return ChatFormat(
        template=info.template,
        template_source=info.template_source,
        special_tokens=dict(info.special_tokens),
        end_of_turn=tuple(t for t in end_of_turn if t),
    )


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
