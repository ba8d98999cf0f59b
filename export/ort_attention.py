"""Attention traced straight into ONNX Runtime's fused attention ops (the default graph).

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

Grouped-query models (the Llama family, kv_heads < heads) get their keys and values repeated
to one per query head before MultiHeadAttention, which knows no key/value groups. In PyTorch
the op computes eager attention, so tracing and `model(...)` still work.

`ORT_GQA` goes one step further for decoding (kv_layout "shared"): the attention is traced
as `com.microsoft.GroupQueryAttention` (kv_num_heads = the model's key/value heads: equal
to num_heads for GPT-2, fewer for grouped-query models), which takes this step's
keys/values and a past *buffer* [B, kv_heads, capacity, D].
It writes the new entries at [T-S, T) (T = attention_mask length) and returns the buffer
as the present; when the runtime binds past and present to the same OrtValue, ONNX
Runtime writes in place (its CPU kernel compares the two data pointers), so a decode step
no longer copies the whole cache as the Concat does. Left padding is the additive
`attention_bias` [B, 1, S, T] built from the attention mask; the op adds causality itself,
and a sliding window (Mistral; Qwen2's sliding layers) as its `local_window_size`. Its CPU
kernel wants head_dim % 8 == 0 (checked by the exporter).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

ORT_MHA = "fst_ort_mha"  # the attention implementation name registered with transformers
ORT_GQA = "fst_ort_gqa"  # shared KV buffer (see the module docstring)
ONNX_INT32 = 6  # TensorProto.INT32


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


def attention_heads(module) -> tuple[int, int]:
    """(query heads, key/value heads) of an attention module (GPT-2's or the Llama family's)."""
    config = module.config
    heads = int(getattr(module, "num_heads", None) or config.num_attention_heads)
    return heads, int(getattr(config, "num_key_value_heads", None) or heads)


def _ort_mha_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    scale = float(query.size(-1) ** -0.5 if scaling is None else scaling)
    heads, kv_heads = attention_heads(module)
    if kv_heads != heads:  # MultiHeadAttention wants one key/value head per query head
        key = key.repeat_interleave(heads // kv_heads, dim=1)
        value = value.repeat_interleave(heads // kv_heads, dim=1)
    out = _MultiHeadAttention.apply(query, key, value, attention_mask, scale, heads)
    return out, None


class _GroupQueryAttention(torch.autograd.Function):
    """Attention over a KV buffer in PyTorch; one GroupQueryAttention node in the graph."""

    @staticmethod
    def forward(
        ctx, query, key, value, past_key, past_value, seqlens, total, bias, scale, heads, kv_heads,
        window,
    ):  # fmt: skip
        # query [B, H, S, D], key/value [B, Hkv, S, D]: this step's tokens; past [B, Hkv, C, D]
        # buffers whose first T - S positions are filled; seqlens [B] = T - 1 and total = T
        # (int32, the op's seqlens_k and total_sequence_length); bias [B, 1, S, T] (additive
        # padding). Each key/value head serves heads // kv_heads query heads. window > 0: a
        # query sees only the last `window` positions (itself included), as transformers'
        # sliding-window mask; the op's local_window_size = window gives the same (the parity
        # check fails with window - 1 or window + 1).
        steps, total = query.shape[2], bias.shape[-1]
        present_key, present_value = past_key.clone(), past_value.clone()
        present_key[:, :, total - steps : total] = key
        present_value[:, :, total - steps : total] = value
        keys = present_key[:, :, :total].repeat_interleave(heads // kv_heads, dim=1)
        values = present_value[:, :, :total].repeat_interleave(heads // kv_heads, dim=1)
        scores = torch.matmul(query, keys.transpose(-1, -2)) * scale + bias
        causal = torch.ones(steps, total, dtype=torch.bool).tril(total - steps)
        if window > 0:
            causal &= ~torch.ones(steps, total, dtype=torch.bool).tril(total - steps - window)
        weights = torch.softmax(scores.masked_fill(~causal, float("-inf")), -1)
        out = torch.matmul(weights, values).transpose(1, 2)  # [B, S, H, D]
        return out, present_key, present_value

    @staticmethod
    def symbolic(
        g, query, key, value, past_key, past_value, seqlens, total, bias, scale, heads, kv_heads,
        window,
    ):  # fmt: skip
        return emit_group_query_attention(
            g, query, key, value, past_key, past_value, seqlens, total,
            heads=heads, kv_heads=kv_heads, scale=scale, bias=bias, window=window,
        )  # fmt: skip


def emit_group_query_attention(
    g, query, key, value, past_key, past_value, seqlens, total, *,
    heads: int, kv_heads: int, scale: float, bias=None, window: int = 0,
):  # fmt: skip
    """The one `com.microsoft.GroupQueryAttention` node of both buffer layouts: "shared"
    (left padding as an additive `bias`, a sliding `window`) and "shared_right" (no bias:
    the CUDA kernel refuses one; fst.export.gqa_right). query/key/value [B, H, S, D] in,
    the attention [B, S, H, D] and both present buffers out."""
    from torch.onnx.symbolic_helper import _optional_input_placeholder_tensor

    def const(value):
        return g.op("Constant", value_t=torch.tensor(value))

    def flat(x):  # [B, H, S, D] -> [B, S, H*D]
        return g.op("Reshape", g.op("Transpose", x, perm_i=[0, 2, 1, 3]), const([0, 0, -1]))

    q = flat(query)
    inputs = [q, flat(key), flat(value), past_key, past_value, seqlens, total]
    if bias is not None:
        none = _optional_input_placeholder_tensor(g)  # no rotary caches, no position_ids
        inputs += [none, none, none, bias]
    out, present_key, present_value = g.op(
        "com.microsoft::GroupQueryAttention",
        *inputs,
        num_heads_i=heads,
        kv_num_heads_i=kv_heads,
        local_window_size_i=window if window > 0 else -1,
        scale_f=scale,
        outputs=3,
    )
    out.setType(q.type())  # the exporter cannot infer a contrib op's types
    present_key.setType(past_key.type())
    present_value.setType(past_value.type())
    return g.op("Reshape", out, const([0, 0, heads, -1])), present_key, present_value


class SharedKV:
    """What ORT_GQA attention reads and writes during one forward (see shared_kv)."""

    def __init__(
        self,
        pasts: list[tuple[torch.Tensor, torch.Tensor]],
        seqlens: torch.Tensor,
        total: torch.Tensor,
        bias: torch.Tensor,
    ) -> None:
        self.pasts = pasts  # per layer (key, value) buffers [B, H, C, D]
        self.seqlens = seqlens  # [B] int32, T - 1 (computed once for all layers)
        self.total = total  # int32 scalar T
        self.bias = bias  # [B, 1, S, T]
        self.presents: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


_shared_kv: SharedKV | None = None


@contextmanager
def shared_kv(state: SharedKV) -> Iterator[SharedKV]:
    """Hand `state` to the ORT_GQA attention of every layer inside the block.

    transformers' attention interface receives no cache buffers, so the wrapper passes
    them (and collects the presents) through this module-level slot.
    """
    global _shared_kv
    previous, _shared_kv = _shared_kv, state
    try:
        yield state
    finally:
        _shared_kv = previous


def _ort_gqa_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    state = _shared_kv
    if state is None:
        raise RuntimeError(f"the {ORT_GQA} attention runs only inside shared_kv(...)")
    scale = float(query.size(-1) ** -0.5 if scaling is None else scaling)
    past_key, past_value = state.pasts[module.layer_idx]
    heads, kv_heads = attention_heads(module)
    window = int(kwargs.get("sliding_window") or 0)  # Mistral's, Qwen2's sliding layers
    out, present_key, present_value = _GroupQueryAttention.apply(
        query, key, value, past_key, past_value,
        state.seqlens, state.total, state.bias, scale, heads, kv_heads, window,
    )  # fmt: skip
    state.presents[module.layer_idx] = (present_key, present_value)
    return out, None


def _no_mask(*args, **kwargs) -> None:
    return None  # ORT_GQA takes the padding bias from SharedKV and is causal itself


def _register() -> None:
    """Make ORT_MHA and ORT_GQA known attention implementations (idempotent)."""
    AttentionInterface.register(ORT_MHA, _ort_mha_attention)
    # The eager mask: additive float, finite on fully padded rows.
    ALL_MASK_ATTENTION_FUNCTIONS.register(ORT_MHA, eager_mask)
    AttentionInterface.register(ORT_GQA, _ort_gqa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ORT_GQA, _no_mask)


@contextmanager
def attention_implementation(model: PreTrainedModel, name: str) -> Iterator[None]:
    """Run `model` with attention `name` ("eager", ORT_MHA or ORT_GQA) inside the block."""
    if name in (ORT_MHA, ORT_GQA):
        _register()
    original = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(original)
