"""Build or load the causal language model that training wraps.

`--model_path` is one of:
  * a preset name (`PRESETS`): a GPT-2 or Llama-shaped model built from scratch (random
    weights);
  * a local Hugging Face model folder: pretrained weights, any `AutoModelForCausalLM`;
  * a GGUF file (or a folder holding one): weights dequantized to fp32 (`gguf_import`);
  * a Hugging Face hub name such as `gpt2`: downloaded by `transformers` (needs network,
    or the model in the local cache; checked first, see fst.core.hub).
The token embeddings are then resized to the tokenizer's vocabulary; new rows (the
document special tokens) start at the mean of the existing ones, as in the original project.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import transformers

from fst.core.hub import hub_unreachable_reason, in_local_cache, offline_message

logger = logging.getLogger(__name__)

# Config settings of the from-scratch presets: GPT-2's unless "model_type" says otherwise.
PRESETS: dict[str, dict[str, Any]] = {
    # Tests and the default demo run: trains in minutes on a laptop CPU.
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 64, "n_positions": 512},
    # distilgpt2-sized, for benchmarks.
    "gpt2-6l": {"n_layer": 6, "n_head": 12, "n_embd": 768, "n_positions": 1024},
    # The 124M GPT-2 architecture.
    "gpt2-small": {"n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024},
    # Llama-shaped (rotary, RMSNorm, SwiGLU, grouped-query attention, tied embeddings):
    # tests and demos; head size 16 so the --optimize GroupQueryAttention path applies.
    "llama-tiny": {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": True,
    },
    # SmolLM2-135M's architecture (HuggingFaceTB/SmolLM2-135M config.json), random weights.
    "smollm2-135m": {
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0,
        "tie_word_embeddings": True,
    },
}


class ModelError(ValueError):
    """The model cannot be built or loaded; the message says why."""


def build_model(
    model_path: str,
    vocab_size: int,
    eos_token_id: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> transformers.PreTrainedModel:
    """A preset from scratch or a pretrained model, with embeddings covering `vocab_size`."""
    overrides = dict(overrides or {})
    if model_path in PRESETS:
        settings = {**PRESETS[model_path], **overrides}
        model_type = settings.pop("model_type", "gpt2")
        config = transformers.AutoConfig.for_model(
            model_type,
            **settings,
            vocab_size=vocab_size,
            bos_token_id=eos_token_id,
            eos_token_id=eos_token_id,
        )
        logger.info("Building preset %r (%s) from scratch: %s", model_path, model_type, settings)
        return transformers.AutoModelForCausalLM.from_config(config)
    model = load_pretrained(model_path, overrides)
    resize_token_embeddings(model, vocab_size)
    return model


def check_model_path(model_path: str) -> bool:
    """Fail early, with a clear message, on a local path that is not a model folder, and
    on a hub name when the hub cannot be reached and the model is not cached (see
    fst.core.hub). Returns whether to load from the local cache only (offline)."""
    if model_path in PRESETS or _gguf(model_path) is not None:
        return False
    looks_local = Path(model_path).exists() or model_path.startswith((".", "/", "~"))
    if looks_local and not (Path(model_path).expanduser() / "config.json").is_file():
        raise ModelError(
            f"--model_path {model_path}: not a preset ({', '.join(PRESETS)}), a "
            "Hugging Face model folder (no config.json) or a GGUF file"
        )
    if looks_local:
        return False
    reason = hub_unreachable_reason()
    if reason is not None and not in_local_cache(model_path):
        alternatives = f"a local model folder (with config.json) or a preset: {', '.join(PRESETS)}"
        raise ModelError(offline_message(f"--model_path {model_path}", reason, alternatives))
    return reason is not None


def load_pretrained(model_path: str, overrides: dict[str, Any]) -> transformers.PreTrainedModel:
    """A pretrained causal LM from a local folder or the Hugging Face hub."""
    offline = check_model_path(model_path)
    logger.info("Loading pretrained model from %s", model_path)
    if _gguf(model_path) is not None:
        from fst.training.gguf_import import GGUFError, load_gguf

        try:
            return load_gguf(model_path, overrides).model.train()
        except GGUFError as e:
            raise ModelError(f"--model_path {e}") from e
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            model_path, local_files_only=offline, **overrides
        )
    except (OSError, ValueError) as e:
        raise ModelError(f"--model_path {model_path}: cannot load the model: {e}") from e
    return model.train()  # from_pretrained returns eval mode; Lightning keeps module modes


def _gguf(model_path: str) -> Path | None:
    from fst.training.gguf_import import GGUFError, find_gguf

    try:
        return find_gguf(model_path)
    except GGUFError as e:
        raise ModelError(f"--model_path {e}") from e


def resize_token_embeddings(model: transformers.PreTrainedModel, vocab_size: int) -> None:
    """Grow the embeddings to `vocab_size`, new rows set to the mean of the old ones.

    A smaller tokenizer leaves the model as is (the extra rows are never used).
    """
    old_size = model.get_input_embeddings().weight.shape[0]
    if vocab_size <= old_size:
        return
    # mean_resizing=False: we set the new rows ourselves, deterministically.
    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    with torch.no_grad():
        for embeddings in _embedding_matrices(model):
            embeddings[old_size:] = embeddings[:old_size].mean(dim=0)
    logger.info("Resized token embeddings %d -> %d (mean init)", old_size, vocab_size)


def _embedding_matrices(model: transformers.PreTrainedModel) -> list[torch.Tensor]:
    """Input embeddings, plus the output projection when it is not tied to them."""
    matrices = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != matrices[0].data_ptr():
        matrices.append(output.weight)
    return matrices
