"""GPT-2 attention traced straight into ONNX Runtime's fused `MultiHeadAttention` (--optimize).

ONNX Runtime's GPT-2 attention fusion (onnxruntime/transformers/fusion_gpt_attention.py)
matches the graphs of transformers 4.x: `Softmax(Where(mask, Div(MatMul(q, k))))` with the
causal mask sliced from a constant [1, 1, W, W] buffer, and the past stacked in one
[2, batch, heads, past, head_dim] tensor (its `Attention` op's contract). transformers 5
traces to `Softmax(Add(Mul(MatMul(q, k), scale), mask))` with one 4-D mask built from
Range / compare ops, and our graph contract keeps keys and values apart, so the fusion
matches nothing. Rather than rewrite the graph afterwards, the attention is traced as a
`com.microsoft.MultiHeadAttention` node: query [B, S, H*D], the cache-updated keys and
values [B, H, T, D] and the model's own additive mask [B, 1, S, T] as `attention_bias` (so
left padding and fully padded rows behave exactly as in eager PyTorch). The KV-cache Concat
stays an ONNX op: past and present inputs/outputs do not change.

In PyTorch the op computes eager attention, so tracing and `model(...)` still work.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

ORT_MHA = "fst_ort_mha"  # the attention implementation name registered with transformers


class _MultiHeadAttention(torch.autograd.Function):
    """Eager attention in PyTorch; one MultiHeadAttention node in the ONNX graph."""

    @staticmethod
    def forward(ctx, query, key, value, bias, scale: float, heads: int):
        # query [B, H, S, D], key/value [B, H, T, D], bias [B, 1, S, T] (additive mask)
        weights = torch.softmax(torch.matmul(query, key.transpose(-1, -2)) * scale + bias, -1)
        return torch.matmul(weights, value).transpose(1, 2)  # [B, S, H, D]

    @staticmethod
    def symbolic(g, query, key, value, bias, scale: float, heads: int):
        from torch.onnx.symbolic_helper import _optional_input_placeholder_tensor

        query = g.op("Transpose", query, perm_i=[0, 2, 1, 3])  # [B, S, H, D]
        query = g.op("Reshape", query, g.op("Constant", value_t=torch.tensor([0, 0, -1])))
        none = _optional_input_placeholder_tensor(g)  # no packed bias, no key_padding_mask
        out = g.op(
            "com.microsoft::MultiHeadAttention",
            query,
            key,
            value,
            none,
            none,
            bias,
            num_heads_i=heads,
            scale_f=scale,
        )
        out.setType(query.type())  # [B, S, H*D]; the exporter cannot infer a contrib op's type
        shape = g.op("Constant", value_t=torch.tensor([0, 0, heads, -1]))
        return g.op("Reshape", out, shape)  # [B, S, H, D], what transformers expects back


def _ort_mha_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    scale = float(query.size(-1) ** -0.5 if scaling is None else scaling)
    out = _MultiHeadAttention.apply(query, key, value, attention_mask, scale, module.num_heads)
    return out, None


def _register() -> None:
    """Make ORT_MHA a known attention implementation (idempotent: a dict update)."""
    AttentionInterface.register(ORT_MHA, _ort_mha_attention)
    # The eager mask: additive float, finite on fully padded rows.
    ALL_MASK_ATTENTION_FUNCTIONS.register(ORT_MHA, eager_mask)


@contextmanager
def attention_implementation(model: PreTrainedModel, name: str) -> Iterator[None]:
    """Run `model` with attention `name` ("eager" or ORT_MHA) inside the block."""
    if name == ORT_MHA:
        _register()
    original = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(original)
