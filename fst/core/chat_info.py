"""A Hugging Face model folder's chat template and sampling defaults, for the manifest.

Read from the files transformers reads them from, with its precedence: the template from
`chat_template.jinja`, else `tokenizer_config.json`'s `chat_template` (a string, or the
list of named templates whose "default" transformers uses); the special tokens it passes
to the template (`bos_token`, `eos_token`, ...) from `tokenizer_config.json`; the sampling
defaults from `generation_config.json`. A GGUF file's tokenizer is saved as such a folder
first (fst.export.source), so both sources go through this one reader. Torch-free.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Protocol

from fst.core.bundle import ChatInfo
from fst.core.chat_template import ChatTemplate, ChatTemplateError
from fst.core.generation_params import GenerationParams

log = logging.getLogger(__name__)


class _Vocabulary(Protocol):  # tokenizers.Tokenizer
    def token_to_id(self, token: str) -> int | None: ...


TEMPLATE_FILE = "chat_template.jinja"
TOKENIZER_CONFIG = "tokenizer_config.json"
GENERATION_CONFIG = "generation_config.json"
# The names transformers passes to a template (PreTrainedTokenizerBase.special_tokens_map).
SPECIAL_TOKEN_NAMES = (
    "bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
)  # fmt: skip
# End-of-turn tokens of common chat formats: a stop token when the template writes it.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")
# generation_config.json → GenerationParams: the same names and meanings.
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty")


def read_chat_info(
    folder: Path, tokenizer: _Vocabulary, template_source: str | None = None
) -> ChatInfo | None:
    """The folder's chat template, special tokens and stop ids; None without a template.

    `template_source` overrides the file name recorded as the template's origin (a GGUF
    file's template arrives through a saved folder). A template that does not compile is
    no chat template: logged, and the bundle is exported without one.
    """
    found = _template(folder)
    if found is None:
        return None
    template, origin = found
    special = _special_tokens(folder)
    try:
        ChatTemplate(template, special)
    except ChatTemplateError as e:
        log.warning("%s: chat template ignored: %s", folder, e)
        return None
    return ChatInfo(
        template=template,
        template_source=template_source or origin,
        special_tokens=special,
        stop_token_ids=_stop_ids(folder, tokenizer, template, special),
    )


def read_generation_defaults(folder: Path) -> dict[str, Any]:
    """The sampling settings generation_config.json sets, as GenerationParams fields.

    `do_sample: false` means greedy (temperature 0) whatever else it sets; otherwise only
    the keys the file sets. Invalid values (outside GenerationParams' ranges) are dropped
    with a warning rather than failing the export.
    """
    config = _read_json(folder / GENERATION_CONFIG)
    if config.get("do_sample") is False:
        return {"temperature": 0.0}
    defaults = {k: config[k] for k in SAMPLING_KEYS if config.get(k) is not None}
    try:
        GenerationParams(**defaults)
    except (TypeError, ValueError) as e:
        log.warning("%s: generation defaults ignored: %s", folder / GENERATION_CONFIG, e)
        return {}
    return defaults


def _template(folder: Path) -> tuple[str, str] | None:
    jinja = folder / TEMPLATE_FILE
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8"), TEMPLATE_FILE
    template = _read_json(folder / TOKENIZER_CONFIG).get("chat_template")
    if isinstance(
        template, list
    ):  # [{"name": "default", "template": ...}, {"name": "tool_use"...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if isinstance(template, str) and template.strip():
        return template, TOKENIZER_CONFIG
    return None


def _special_tokens(folder: Path) -> dict[str, str]:
    config = _read_json(folder / TOKENIZER_CONFIG)
    tokens = {}
    for name in SPECIAL_TOKEN_NAMES:
        value = config.get(name)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str) and value:
            tokens[name] = value
    return tokens


def _stop_ids(
    folder: Path, tokenizer: _Vocabulary, template: str, special: dict[str, str]
) -> list[int]:
    """generation_config.json's and config.json's eos ids, the tokenizer's eos, and each
    known end-of-turn token the template writes."""
    ids: list[int] = []
    for name in (GENERATION_CONFIG, "config.json"):
        eos = _read_json(folder / name).get("eos_token_id")
        ids += [i for i in (eos if isinstance(eos, list) else [eos]) if isinstance(i, int)]
    tokens = [special.get("eos_token"), *(t for t in END_OF_TURN_TOKENS if t in template)]
    ids += [i for t in tokens if t and (i := tokenizer.token_to_id(t)) is not None]
    return sorted(set(ids))


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        log.warning("%s: unreadable, ignored (%s)", path, e)
        return {}
    return data if isinstance(data, dict) else {}
