"""ExportOptions: what kind of graph fst-export builds, declared and validated once.

fst-export's settings class extends it (its fields are the graph flags, help included) and
`export_bundle` takes it whole, so a default or a rule lives here only. Torch-free: --help
reads it without importing torch.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

from fst.core.cli_settings import option

KvLayout = Literal["auto", "shared", "concat", "shared_right"]
Quantize = Literal["int8", "int4"]
Logits = Literal["last", "all"]
Int4BlockSize = Literal[16, 32, 64, 128, 256]  # what MatMulNBits' CPU kernels take

KV_LAYOUTS: tuple[str, ...] = typing.get_args(KvLayout)
QUANTIZATIONS: tuple[str, ...] = typing.get_args(Quantize)
LOGITS: tuple[str, ...] = typing.get_args(Logits)
INT4_BLOCK_SIZES: tuple[int, ...] = typing.get_args(Int4BlockSize)
# Measured choice (benchmarks/results/int4-scheme-choice-perplexity-decode-fst-epyc.md): see the exporter for the gate.
DEFAULT_INT4_BLOCK_SIZE = 128
# Prefill with logits for the last position only skips lm_head on every other position: a
# faster prefill for long prompts and a much smaller output (one row of logits instead of one
# per prompt token). Decode (seq 1) is unchanged. Measure it with benchmarks/latency/run.py.
DEFAULT_LOGITS = "last"
MIN_OPSET = 13  # oldest opset checked here (13, 14, 17 and 18 pass the parity check)
_GRAPH = "graph"


class ExportOptionsError(ValueError):
    """An option, or a combination of them, is invalid; the message is one line."""


@dataclass(frozen=True, kw_only=True)
class ExportOptions:
    """The graph fst-export builds (the command line's "graph" flags)."""

    optimize: bool = option(
        True,
        group=_GRAPH,
        help="the fastest verified graph: static shapes and ONNX Runtime fused operators "
        "(attention over a shared KV buffer, layer norm, GELU), which need onnxruntime's "
        "com.microsoft ops; --no_optimize writes the plain traced graph (standard ONNX "
        "ops only, e.g. for TensorRT)",
    )
    kv_layout: KvLayout = option(
        "auto",
        group=_GRAPH,
        help="of the optimized graph: 'shared' = one preallocated KV buffer per layer written "
        "in place (GroupQueryAttention; CPU runtime; head size a multiple of 8), 'concat' = "
        "past and new keys concatenated every step (MultiHeadAttention; the plain graph's "
        "only layout), 'shared_right' = the CUDA layout (GroupQueryAttention over "
        "right-padded buffers kept on the device; with --fp16; UNTESTED ON GPU), 'auto' = "
        "shared when possible (not fp16)",
    )
    quantize: Quantize | None = option(
        None,
        group=_GRAPH,
        help="CPU inference: 'int8' = dynamic int8 weights and activations; 'int4' = "
        "block-wise 4-bit weights (ONNX Runtime MatMulNBits), the smallest bundle",
    )
    int4_block_size: Int4BlockSize = option(
        DEFAULT_INT4_BLOCK_SIZE,
        group=_GRAPH,
        help="with --quantize int4: weights per scale along the input dimension; 128 "
        "decodes faster on CPU, 32 follows the weights more closely (llama.cpp's Q4_0 uses 32; "
        "benchmarks/results/int4-scheme-choice-perplexity-decode-fst-epyc.md measures both)",
    )
    fp16: bool = option(
        False, group=_GRAPH, help="float16 weights and I/O (CUDA; TensorRT also --no_optimize)"
    )
    opset: int = option(17, group=_GRAPH, help="ONNX opset version")
    logits: Logits = option(
        DEFAULT_LOGITS,
        group=_GRAPH,
        help="'last': logits of the last position only (much faster prefill); "
        "'all': every position",
    )

    def __post_init__(self) -> None:
        if self.quantize not in (None, *QUANTIZATIONS):
            raise ExportOptionsError(f"--quantize must be int8 or int4, got {self.quantize!r}")
        if self.quantize and self.fp16:
            raise ExportOptionsError(
                f"--quantize {self.quantize} and --fp16 exclude each other "
                f"({self.quantize} is for CPU)"
            )
        if not isinstance(self.opset, int) or self.opset < MIN_OPSET:
            raise ExportOptionsError(
                f"--opset must be an integer >= {MIN_OPSET}, got {self.opset!r}"
            )
        if self.logits not in LOGITS:
            raise ExportOptionsError(f"--logits must be 'all' or 'last', got {self.logits!r}")
        if self.int4_block_size not in INT4_BLOCK_SIZES:
            sizes = ", ".join(map(str, INT4_BLOCK_SIZES))
            raise ExportOptionsError(
                f"--int4_block_size must be one of {sizes}, got {self.int4_block_size!r}"
            )
        if self.kv_layout not in KV_LAYOUTS:
            raise ExportOptionsError(
                f"--kv_layout must be auto, shared, concat or shared_right, got {self.kv_layout!r}"
            )
        if self.kv_layout in ("shared", "shared_right") and not self.optimize:
            raise ExportOptionsError(
                f"--kv_layout {self.kv_layout} needs the optimized graph (it is fused "
                "attention): drop --no_optimize"
            )
        if self.kv_layout == "shared_right" and self.logits != "last":
            raise ExportOptionsError("--kv_layout shared_right gives the last token's logits only")

    @property
    def variant(self) -> str:
        """The weights' form: fp32, fp16, int8 or int4."""
        return self.quantize or ("fp16" if self.fp16 else "fp32")
