"""kv_layout "shared_right": GroupQueryAttention over right-padded shared KV buffers (GPU).

ONNX Runtime's CUDA `GroupQueryAttention` (contrib_ops/cuda/bert/group_query_attention.cc
and cpu/bert/group_query_attention_helper.h, read in microsoft/onnxruntime's main-branch
sources; the onnxruntime-gpu 1.31.1 wheel's CUDA library registers the op for MLFloat16 and
BFloat16 only, seen in its symbols; the rest is not confirmed for 1.31.1) has
float16 / bfloat16 kernels only, rejects `attention_bias`, takes `total_sequence_length` in
CPU memory, detects a shared past/present buffer by comparing data pointers, and assumes
every row of the past is *right*-padded ("We assume all sequence in past kv are
right-padded"), each row's length given by `seqlens_k` (total length - 1). The "shared"
layout (ort_attention.ORT_GQA) left-pads and masks with `attention_bias`, which that kernel
refuses. This layout therefore pads on the right, as onnxruntime-genai does:

- row b's keys/values sit at positions [0, length_b) of its buffer [B, H, capacity, D];
- `attention_mask` [B, T] holds ones at [0, length_b + new tokens) and zeros after it: the
  graph takes `seqlens_k = mask.sum(1) - 1` (per row) and `total_sequence_length = T` (from
  the mask's *shape*, so it is known on the CPU without a device-to-host copy);
- a prefill (S == T) writes positions [0, S) of every row (a short row's padding too: its
  first decode step overwrites them); a decode step (S == 1) writes row b at length_b;
- logits come for each row's last real token only ([B, 1, V]): the graph gathers the hidden
  state at min(seqlens_k, S - 1) before the LM head, so a right-padded prefill needs no
  logits for every position.

Why not `DecoderMaskedMultiHeadAttention` (fp32/fp16, shared buffer, left padding through
a mask): it decodes only (a second graph, or the Concat layout, for the prompt), takes one
past length for the whole batch, and has no flash-decoding kernel; GroupQueryAttention
does prefill and decode in one graph, gives every row its own length (no attention over
padding), runs flash attention on sm80+ and is the op onnxruntime-genai builds on. The same
graph runs on ONNX Runtime's CPU kernel (float32 too), which is how it is checked here.

UNTESTED ON GPU: no GPU on the machine this was written on; see benchmarks/gpu/run.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

from fst.export.ort_attention import attention_heads, emit_group_query_attention
from fst.export.wrapper import CacheFlatteningWrapper, LogitsMode

ORT_GQA_RIGHT = "fst_ort_gqa_right"  # the attention implementation name for transformers


class _RightPaddedGQA(torch.autograd.Function):
    """Attention over right-padded KV buffers in PyTorch; one GroupQueryAttention node in
    the ONNX graph (no attention_bias: the CUDA kernel refuses it)."""

    @staticmethod
    def forward(
        ctx, query, key, value, past_key, past_value, seqlens, total, scale, heads, kv_heads
    ):  # fmt: skip
        # query [B, H, S, D], key/value [B, Hkv, S, D]: this step's tokens; past
        # [B, Hkv, C, D]; each key/value head serves heads // kv_heads query heads; seqlens [B]
        # int32 = each row's total length - 1; total: int32 scalar T = the longest row.
        steps, capacity = query.shape[2], past_key.shape[2]
        lengths = seqlens.long() + 1  # [B], this step's tokens included
        prompt = steps == int(total)  # the op's is_first_prompt
        start = torch.zeros_like(lengths) if prompt else lengths - steps
        index = start[:, None] + torch.arange(steps)  # [B, S], where the new tokens go
        where = index[:, None, :, None].expand(-1, past_key.shape[1], -1, past_key.shape[3])
        present_key = past_key.scatter(2, where, key)
        present_value = past_value.scatter(2, where, value)
        keys = torch.arange(capacity)
        visible = (keys <= index[:, :, None]) & (keys < lengths[:, None, None])  # [B, S, C]
        keys = present_key.repeat_interleave(heads // kv_heads, dim=1)
        values = present_value.repeat_interleave(heads // kv_heads, dim=1)
        scores = torch.matmul(query, keys.transpose(-1, -2)) * scale
        weights = torch.softmax(scores.masked_fill(~visible[:, None], float("-inf")), -1)
        out = torch.matmul(weights, values).transpose(1, 2)  # [B, S, H, D]
        return out, present_key, present_value

    @staticmethod
    def symbolic(
        g, query, key, value, past_key, past_value, seqlens, total, scale, heads, kv_heads
    ):  # fmt: skip
        return emit_group_query_attention(
            g, query, key, value, past_key, past_value, seqlens, total,
            heads=heads, kv_heads=kv_heads, scale=scale,
        )  # fmt: skip


class RightPaddedKV:
    """What ORT_GQA_RIGHT attention reads and writes during one forward."""

    def __init__(
        self, pasts: list[tuple[torch.Tensor, torch.Tensor]], seqlens: torch.Tensor, total
    ) -> None:
        self.pasts = pasts  # per layer (key, value) buffers [B, H, C, D]
        self.seqlens = seqlens  # [B] int32, each row's length - 1 (computed once)
        self.total = total  # int32 scalar T
        self.presents: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


_state: RightPaddedKV | None = None


@contextmanager
def right_padded_kv(state: RightPaddedKV) -> Iterator[RightPaddedKV]:
    """Hand `state` to every layer's ORT_GQA_RIGHT attention inside the block (transformers'
    attention interface receives no cache buffers)."""
    global _state
    previous, _state = _state, state
    try:
        yield state
    finally:
        _state = previous


def _attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    state = _state
    if state is None:
        raise RuntimeError(f"the {ORT_GQA_RIGHT} attention runs only inside right_padded_kv(...)")
    scale = float(query.size(-1) ** -0.5 if scaling is None else scaling)
    past_key, past_value = state.pasts[module.layer_idx]
    heads, kv_heads = attention_heads(module)
    out, present_key, present_value = _RightPaddedGQA.apply(
        query, key, value, past_key, past_value, state.seqlens, state.total, scale,
        heads, kv_heads,
    )  # fmt: skip
    state.presents[module.layer_idx] = (present_key, present_value)
    return out, None


def _no_mask(*args, **kwargs) -> None:
    return None  # the op is causal itself and bounds each row by seqlens_k


def register() -> None:
    """Make ORT_GQA_RIGHT a known attention implementation (idempotent)."""
    AttentionInterface.register(ORT_GQA_RIGHT, _attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ORT_GQA_RIGHT, _no_mask)


class RightPaddedBufferWrapper(CacheFlatteningWrapper):
    """forward(input_ids, attention_mask, position_ids, *buffers) -> (logits, *buffers) for
    kv_layout "shared_right" (see the module docstring); the model must run ORT_GQA_RIGHT.
    Logits are always those of each row's last real token, [B, 1, V]."""

    def __init__(self, model: PreTrainedModel, logits: LogitsMode = "last") -> None:
        if logits != "last":
            raise ValueError("kv_layout shared_right gives the last token's logits only")
        super().__init__(model, logits)

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, S] int64, right-padded
        attention_mask: torch.Tensor,  # [B, T] int64: ones at [0, length_b), zeros after
        position_ids: torch.Tensor,  # [B, S] int64
        *buffers: torch.Tensor,  # 2 * layers tensors [B, H, C, D], C >= T
    ) -> tuple[torch.Tensor, ...]:
        seqlens = attention_mask.sum(1).to(torch.int32) - 1
        total = torch._shape_as_tensor(attention_mask)[1].to(torch.int32)  # a shape: CPU-side
        pairs = [(buffers[2 * i], buffers[2 * i + 1]) for i in range(self.layers)]
        with right_padded_kv(RightPaddedKV(pairs, seqlens, total)) as state:
            hidden = self.model.base_model(
                input_ids=input_ids, position_ids=position_ids, use_cache=False
            ).last_hidden_state  # [B, S, C]
        # Each row's last real token: length - 1 in a prefill, 0 in a decode step.
        last_step = torch._shape_as_tensor(input_ids)[1] - 1
        last = torch.minimum(seqlens.long(), last_step)
        where = last[:, None, None].expand(-1, 1, hidden.shape[-1])
        logits = self.model.get_output_embeddings()(torch.gather(hidden, 1, where))
        presents = [t for i in range(self.layers) for t in state.presents[i]]
        return (logits, *presents)
