"""What the exporter knows per architecture: the small adapter beside the generic contract.

The graph interface is the same for every model (`fst.core.contract.GraphContract`); what an
architecture adds is its KV geometry (key/value heads, head size), what its attention needs
beyond that interface, and what it cannot trace:

- GPT-2: learned positions, LayerNorm, as many KV heads as query heads.
- The Llama family (Llama, Qwen2, Qwen3, Mistral; SmolLM2 and TinyLlama are `llama`):
  rotary positions, RMSNorm, SwiGLU, grouped-query attention (kv_heads <= heads).
  Rotary is traced from transformers' own rotary embedding as ordinary ops fed by
  `position_ids` (any position-only `rope_type`: default, linear, llama3, yarn); Qwen3's
  q/k RMSNorms are traced too, before the rotary; both stay outside the attention op. A
  sliding window (Mistral, Qwen2 with use_sliding_window) is part of the traced causal mask
  in the plain graph and with MultiHeadAttention, and GroupQueryAttention's
  local_window_size with the shared KV buffer (see ort_attention); the cache keeps the
  whole past either way.

The --optimize fusions are ONNX Runtime's GPT-2 pass for both (export/optimize.py): its
SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization fusions match the Llama
family's RMSNorms as traced here, and attention is traced as an ORT op already.

Adding a model type here needs a parity test for it (tests/test_architectures.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PretrainedConfig

from fst.core.contract import GraphContract, KVLayout, LogitsMode

# rope types whose angles depend on the sequence length, not only on position_ids: the
# trace would freeze them at the tracing length.
LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


class UnsupportedModelError(ValueError):
    """The model's architecture is not one the exporter handles."""


@dataclass(frozen=True)
class Architecture:
    name: str
    model_types: tuple[str, ...]
    rotary: bool  # positions as rotary angles computed in the graph

    def num_heads(self, config: PretrainedConfig) -> int:
        return int(config.num_attention_heads)

    def kv_heads(self, config: PretrainedConfig) -> int:
        return int(getattr(config, "num_key_value_heads", None) or self.num_heads(config))

    def head_dim(self, config: PretrainedConfig) -> int:
        explicit = getattr(config, "head_dim", None) if self.rotary else None
        return int(explicit or int(config.hidden_size) // self.num_heads(config))

    def check(self, config: PretrainedConfig) -> None:
        """Raise UnsupportedModelError for what this adapter cannot trace faithfully."""
        if getattr(config, "add_cross_attention", False):
            raise UnsupportedModelError("models with cross-attention are not supported for export")
        if self.num_heads(config) % self.kv_heads(config):
            raise UnsupportedModelError(
                f"num_attention_heads {self.num_heads(config)} is not a multiple of "
                f"num_key_value_heads {self.kv_heads(config)}"
            )
        rope = getattr(config, "rope_parameters", None) or {}
        rope_type = rope.get("rope_type", "default") if isinstance(rope, dict) else "default"
        if rope_type in LENGTH_DEPENDENT_ROPE:
            raise UnsupportedModelError(
                f"rope_type {rope_type!r} depends on the sequence length and cannot be traced "
                "into one graph"
            )


GPT2 = Architecture("gpt2", ("gpt2",), rotary=False)
LLAMA = Architecture("llama", ("llama", "qwen2", "qwen3", "mistral"), rotary=True)
ARCHITECTURES = (GPT2, LLAMA)
SUPPORTED_MODEL_TYPES = tuple(t for a in ARCHITECTURES for t in a.model_types)


def architecture_for(config: PretrainedConfig) -> Architecture:
    """The adapter of `config`'s model type, its limits checked."""
    model_type = getattr(config, "model_type", None)
    for architecture in ARCHITECTURES:
        if model_type in architecture.model_types:
            architecture.check(config)
            return architecture
    raise UnsupportedModelError(
        f"model type {model_type!r} is not supported for export "
        f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
    )


def contract_for(
    config: PretrainedConfig,
    logits: LogitsMode = "all",
    kv_layout: KVLayout = "concat",
    dtype: str = "float32",
) -> GraphContract:
    """The graph contract of a model with `config`."""
    architecture = architecture_for(config)
    return GraphContract(
        num_layers=int(config.num_hidden_layers),
        num_kv_heads=architecture.kv_heads(config),
        head_dim=architecture.head_dim(config),
        vocab_size=int(config.vocab_size),
        kv_layout=kv_layout,
        logits=logits,
        dtype=dtype,
    )
