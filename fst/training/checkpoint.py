"""Read an fst training checkpoint back into a Hugging Face model and its tokenizer.

A checkpoint is a Lightning `.ckpt` whose `state_dict` holds the model under the `model.`
prefix and whose `checkpoint["fst"]` is plain data (see DEVELOPERS.md, "Checkpoint"):
the model is rebuilt from `model_type` + `model_config`, the tokenizer from its JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

from fst.core.constants import CHECKPOINT_FORMAT_VERSION, CHECKPOINT_KEY
from fst.core.tokenization import DocumentTokenizer

STATE_PREFIX = "model."


class CheckpointError(ValueError):
    """The file is not a usable fst checkpoint; the message names the file and the reason."""


@dataclass
class LoadedCheckpoint:
    model: transformers.PreTrainedModel  # in eval mode
    tokenizer: DocumentTokenizer
    info: dict[str, Any]  # the checkpoint["fst"] dict


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Model (eval mode), tokenizer and fst info of a checkpoint written by `fst-train`."""
    checkpoint = read_checkpoint(path, map_location)
    info = checkpoint[CHECKPOINT_KEY]
    model = build_model_from_info(info)
    state = {
        k[len(STATE_PREFIX) :]: v
        for k, v in checkpoint.get("state_dict", {}).items()
        if k.startswith(STATE_PREFIX)
    }
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the stored model config: {e}") from e
    return LoadedCheckpoint(model=model.eval(), tokenizer=tokenizer_from_info(info), info=info)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict, checked to be an fst checkpoint of a known format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        # weights_only: a checkpoint is data, never code to run.
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch.load fails in many ways on a file that is not its own
        first_sentence = (str(e).strip().splitlines() or [""])[0].split(". ")[0][:120]
        reason = f"{type(e).__name__}: {first_sentence}"
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason})") from e
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint:
        raise CheckpointError(f"{path}: not an fst checkpoint (no '{CHECKPOINT_KEY}' entry)")
    version = checkpoint[CHECKPOINT_KEY].get("format_version")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: fst checkpoint format {version} is not supported "
            f"(this fst reads format {CHECKPOINT_FORMAT_VERSION})"
        )
    return checkpoint


def build_model_from_info(info: dict[str, Any]) -> transformers.PreTrainedModel:
    """A randomly initialised model with the checkpoint's architecture."""
    config_dict = dict(info["model_config"])
    config_dict.pop("model_type", None)  # passed positionally below
    config = transformers.AutoConfig.for_model(info["model_type"], **config_dict)
    return transformers.AutoModelForCausalLM.from_config(config)


def tokenizer_from_info(info: dict[str, Any]) -> DocumentTokenizer:
    """The training tokenizer; meta is never dropped at inference."""
    settings = {**info["document"], "ignore_meta_prob": 0.0}
    return DocumentTokenizer.from_json(info["tokenizer_json"], **settings)
