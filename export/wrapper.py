"""A torch module that gives a Hugging Face causal LM the flat ONNX cache interface.

transformers 5 passes the KV cache as a `Cache` object, which the ONNX exporter cannot
trace as an input. `CacheFlatteningWrapper.forward` takes the past as flat tensors
(`past_key_values.{i}.key/value`, [batch, kv_heads, past_seq, head_dim], see fst.core.contract), builds a
`DynamicCache` from them, runs the model and returns the logits plus the flat presents
(`present.{i}.key/value`, [batch, kv_heads, past_seq + seq, head_dim]) — kv_layout "concat".

`SharedBufferWrapper` is the kv_layout "shared" interface (ORT_GQA attention, see
ort_attention): past and present are buffers of one size [batch, kv_heads,
capacity, head_dim]; the first total_seq - seq positions hold the past, the graph writes this step's
keys/values after them and returns the buffers, which ONNX Runtime updates in place when
the caller binds each present to its past.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PretrainedConfig, PreTrainedModel

from fst.core.contract import SHARED_BUFFER_LAYOUTS, GraphContract, KVLayout, LogitsMode
from fst.export.architectures import (
    SUPPORTED_MODEL_TYPES,
    UnsupportedModelError,
    architecture_for,
    contract_for,
)
from fst.export.hf_cache import cache_kwargs, returned_cache

__all__ = ["SUPPORTED_MODEL_TYPES", "UnsupportedModelError", "KVLayout", "LogitsMode"]


def check_supported(config: PretrainedConfig) -> None:
    """UnsupportedModelError unless an architecture adapter handles `config`."""
    architecture_for(config)


def num_layers(config: PretrainedConfig) -> int:
    return int(config.num_hidden_layers)


def input_names(layers: int) -> list[str]:
    return _names_only(layers).input_names


def output_names(layers: int) -> list[str]:
    return _names_only(layers).output_names


def _names_only(layers: int) -> GraphContract:
    # Names depend on the number of layers only; the sizes here are placeholders.
    return GraphContract(num_layers=layers, num_kv_heads=1, head_dim=1, vocab_size=1)


class CacheFlatteningWrapper(torch.nn.Module):
    """forward(input_ids, attention_mask, position_ids, *past) -> (logits, *presents)."""

    def __init__(self, model: PreTrainedModel, logits: LogitsMode = "all") -> None:
        super().__init__()
        check_supported(model.config)
        self.model = model
        self.layers = num_layers(model.config)
        # 1 makes the model slice the last hidden state before lm_head; 0 keeps all.
        self.logits_to_keep = 1 if logits == "last" else 0
        # The exporter restores the wrapper's training flag on the whole tree after tracing:
        # a wrapper left in training mode would switch dropout on in the caller's model.
        self.eval()

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, S] int64
        attention_mask: torch.Tensor,  # [B, P+S] int64, 0 = padding
        position_ids: torch.Tensor,  # [B, S] int64
        *past: torch.Tensor,  # 2 * layers tensors [B, H, P, D]
    ) -> tuple[torch.Tensor, ...]:
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.layers)]
        cache = DynamicCache(pairs)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **cache_kwargs(cache),
            use_cache=True,
            logits_to_keep=self.logits_to_keep,
        )
        presents = [t for layer in returned_cache(out).layers for t in (layer.keys, layer.values)]
        return (out.logits, *presents)


class SharedBufferWrapper(CacheFlatteningWrapper):
    """The same interface with kv_layout "shared"; the model must run ORT_GQA attention."""

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, S] int64
        attention_mask: torch.Tensor,  # [B, T] int64, T = past + S, 0 = padding
        position_ids: torch.Tensor,  # [B, S] int64
        *buffers: torch.Tensor,  # 2 * layers tensors [B, H, C, D], C >= T
    ) -> tuple[torch.Tensor, ...]:
        from fst.export.ort_attention import SharedKV, shared_kv

        steps = input_ids.shape[1]
        padding = (1 - attention_mask[:, None, None, :]).to(torch.float32)
        bias = (padding * torch.finfo(torch.float32).min).expand(-1, -1, steps, -1)
        # The op's int32 seqlens_k (T - 1 per row: rows are left-padded to one length) and
        # total_sequence_length, traced once here rather than once per layer.
        seqlens = torch.ones_like(attention_mask).sum(1).to(torch.int32) - 1
        total = seqlens[0] + 1
        pairs = [(buffers[2 * i], buffers[2 * i + 1]) for i in range(self.layers)]
        with shared_kv(SharedKV(pairs, seqlens, total, bias)) as state:
            out = self.model(
                input_ids=input_ids,
                position_ids=position_ids,
                use_cache=False,
                logits_to_keep=self.logits_to_keep,
            )
        presents = [t for i in range(self.layers) for t in state.presents[i]]
        return (out.logits, *presents)


def dummy_inputs(
    config: PretrainedConfig,
    batch: int = 2,
    seq: int = 3,
    past: int = 4,
    kv_layout: KVLayout = "concat",
):
    """Example inputs for tracing.

    The sizes are distinct and past > 1 on purpose: with past = 0 the tracer records
    `DynamicLayer.get_seq_length()`'s empty-cache branch as a constant, and the graph then
    decodes wrongly; with equal sizes it may tie dimensions together. The exported graph
    still runs with past_seq = 0 (verified by the exporter and the tests). Shared buffers
    get two spare positions (capacity > total_seq).
    """
    contract = contract_for(config, kv_layout=kv_layout)
    input_ids = torch.randint(0, int(config.vocab_size), (batch, seq), dtype=torch.long)
    attention_mask = torch.ones(batch, past + seq, dtype=torch.long)
    position_ids = torch.arange(past, past + seq, dtype=torch.long).expand(batch, seq).clone()
    length = past + seq + 2 if kv_layout in SHARED_BUFFER_LAYOUTS else past
    pasts = [torch.zeros(contract.kv_shape(batch, length)) for _ in contract.past_names]
    return (input_ids, attention_mask, position_ids, *pasts)
