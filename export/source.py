"""What to export: an fst training checkpoint, a Hugging Face model folder / hub name, or a
GGUF file (llama.cpp's format; weights dequantized to fp32, see fst.training.gguf_import).

Either way the result is a model in eval mode, its tokenizer and what goes into the
manifest besides the graph: provenance, the chat template and the model's sampling
defaults (fst.core.chat_info). Every failure is a `SourceError` with a one-line message.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tokenizers
from transformers import PretrainedConfig, PreTrainedModel

from fst.core.bundle import ChatInfo
from fst.core.chat_format import ChatFormat, chat_info
from fst.core.chat_info import read_chat_info, read_generation_defaults
from fst.core.hub import hub_unreachable_reason, in_local_cache, offline_message
from fst.core.tokenization import DocumentTokenizer
from fst.export.wrapper import UnsupportedModelError, check_supported


class SourceError(ValueError):
    """The checkpoint or model cannot be exported; the message says why."""


@dataclass
class ExportSource:
    # None once the exporter has traced it and recorded the parity reference (its weights
    # are freed before the ONNX Runtime stages); `config` stays.
    model: PreTrainedModel | None
    tokenizer: DocumentTokenizer
    source: str  # checkpoint path or model name/folder, for the manifest
    global_step: int | None = None
    epoch: int | None = None
    training_args: dict[str, Any] = field(default_factory=dict)
    chat: ChatInfo | None = None  # the model's chat template; None: not a chat model
    generation_defaults: dict[str, Any] = field(default_factory=dict)  # GenerationParams names
    source_format: str | None = None  # "GGUF Q4_1": the weights were dequantized from it
    gguf_file: Path | None = None  # that file: an int4 export takes its blocks as they are
    config: PretrainedConfig = field(init=False)

    def __post_init__(self) -> None:
        self.config = self.model.config


def load_source(ckpt: Path | None = None, model_path: str | None = None) -> ExportSource:
    if (ckpt is None) == (model_path is None):
        raise SourceError("give exactly one of --ckpt and --model_path")
    if ckpt is not None:
        return _from_checkpoint(Path(ckpt))
    return _from_hf(str(model_path))


def _from_checkpoint(path: Path) -> ExportSource:
    from fst.training.checkpoint import CheckpointError, load_checkpoint

    if path.is_dir():
        raise SourceError(f"{path}: is a folder; --ckpt takes a .ckpt file (fst-train writes them)")
    if not path.is_file():
        raise SourceError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):  # torch.save (and Lightning) write zip archives
        raise SourceError(f"{path}: not a PyTorch checkpoint (not a torch.save zip archive)")
    try:
        loaded = load_checkpoint(path)
    except CheckpointError as e:
        raise SourceError(str(e)) from e
    except Exception as e:  # a KeyError in a hand-edited payload, a truncated tensor...
        raise SourceError(f"{path}: broken fst checkpoint ({_first_line(e)})") from e
    _check(loaded.model, loaded.tokenizer, path)
    info = loaded.info
    try:
        chat = checkpoint_chat_info(info, loaded.tokenizer)
    except (KeyError, TypeError, ValueError) as e:
        raise SourceError(f"{path}: broken chat format in the checkpoint ({_first_line(e)})") from e
    return ExportSource(
        model=loaded.model.eval(),
        tokenizer=loaded.tokenizer,
        source=str(path),
        global_step=info.get("global_step"),
        epoch=info.get("epoch"),
        training_args=dict(info.get("training_args") or {}),
        chat=chat,
    )


def checkpoint_chat_info(info: dict[str, Any], tokenizer: DocumentTokenizer) -> ChatInfo | None:
    """manifest.chat of a checkpoint trained on dialogs (its fst payload's "chat")."""
    if not info.get("chat"):
        return None
    return chat_info(ChatFormat.from_payload(info["chat"]), tokenizer)


def _from_hf(name_or_path: str) -> ExportSource:
    from transformers import AutoConfig, AutoModelForCausalLM

    from fst.training.gguf_import import GGUFError, find_gguf

    try:
        if find_gguf(name_or_path) is not None:
            return _from_gguf(name_or_path)
    except GGUFError as e:
        raise SourceError(str(e)) from e
    local = Path(name_or_path).expanduser()
    looks_local = local.exists() or name_or_path.startswith((".", "/", "~"))
    if looks_local and not local.exists():
        raise SourceError(f"{name_or_path}: no such model folder")
    if looks_local and not (local / "config.json").is_file():
        raise SourceError(
            f"{name_or_path}: not a Hugging Face model folder (no config.json) or a GGUF file"
        )
    offline = not looks_local and hub_unreachable_reason() is not None
    if offline and not in_local_cache(name_or_path):
        where = "a local model folder (with config.json) or an fst checkpoint (--ckpt)"
        raise SourceError(offline_message(name_or_path, hub_unreachable_reason(), where))
    try:
        config = AutoConfig.from_pretrained(name_or_path, local_files_only=offline)
    except Exception as e:
        raise SourceError(f"{name_or_path}: cannot read the model config ({_first_line(e)})") from e
    try:
        check_supported(config)
    except UnsupportedModelError as e:
        raise SourceError(f"{name_or_path}: {e}") from e
    try:
        # Plain LM: prompts keep up to the model's context (the runtime may cut further).
        tokenizer = DocumentTokenizer.from_pretrained(
            name_or_path, document_format=False, max_body_len=int(config.max_position_embeddings)
        )
    except Exception as e:
        raise SourceError(f"{name_or_path}: cannot load the tokenizer ({_first_line(e)})") from e
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, local_files_only=offline)
    except Exception as e:
        raise SourceError(f"{name_or_path}: cannot load the model ({_first_line(e)})") from e
    _check(model, tokenizer, name_or_path)
    # Hub names: no chat section (their tokenizer_config.json is not fetched).
    folder = local if looks_local else None
    return ExportSource(
        model=model.eval(),
        tokenizer=tokenizer,
        source=name_or_path,
        chat=read_chat_info(folder, _vocabulary(tokenizer)) if folder else None,
        generation_defaults=read_generation_defaults(folder) if folder else {},
    )


def _from_gguf(model_path: str) -> ExportSource:
    """A GGUF file: the dequantized model, and its tokenizer saved as a Hugging Face folder
    so the tokenizer, chat template and special tokens are read as from any other folder."""
    from fst.training.gguf_import import GGUFError, load_gguf

    try:
        loaded = load_gguf(model_path)
    except GGUFError as e:
        raise SourceError(str(e)) from e
    model, config = loaded.model, loaded.model.config
    try:
        check_supported(config)
    except UnsupportedModelError as e:
        raise SourceError(f"{model_path}: {e}") from e
    with loaded.as_folder() as folder:
        try:
            tokenizer = DocumentTokenizer.from_pretrained(
                folder, document_format=False, max_body_len=int(config.max_position_embeddings)
            )
        except Exception as e:
            raise SourceError(f"{model_path}: cannot load the tokenizer ({_first_line(e)})") from e
        chat = read_chat_info(folder, _vocabulary(tokenizer), template_source="the GGUF file")
        defaults = read_generation_defaults(folder)
    _check(model, tokenizer, model_path)
    return ExportSource(
        model=model,
        tokenizer=tokenizer,
        source=str(loaded.path),
        chat=chat,
        generation_defaults=defaults,
        source_format=loaded.source_format,
        gguf_file=loaded.path,
    )


def _vocabulary(tokenizer: DocumentTokenizer) -> tokenizers.Tokenizer:
    """The token → id map of `tokenizer` (its special tokens included)."""
    return tokenizers.Tokenizer.from_str(tokenizer.to_json())


def _check(model: PreTrainedModel, tokenizer: DocumentTokenizer, where: Path | str) -> None:
    try:
        check_supported(model.config)
    except UnsupportedModelError as e:
        raise SourceError(f"{where}: {e}") from e
    rows = int(model.config.vocab_size)
    if tokenizer.vocab_size > rows:
        raise SourceError(
            f"{where}: the tokenizer has {tokenizer.vocab_size} tokens but the model only "
            f"{rows} embedding rows"
        )


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"
