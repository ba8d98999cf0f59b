"""Graph rewrites after tracing: ONNX Runtime transformer fusions, fp16, dynamic int8.

Each step reads one .onnx file and writes another with its weights as external data (see
external_data.py: no serialised second copy), so the exporter can chain them in its
temporary folder.
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path

import onnx

from fst.export.external_data import load_onnx, rewrite_graph_only, save_external

log = logging.getLogger(__name__)

# Operators the GPT-2 fusions can produce; reported so "--optimize" says what it did.
FUSED_OPS = (
    "Attention",
    "MultiHeadAttention",
    "GroupQueryAttention",
    "SkipLayerNormalization",
    "LayerNormalization",
    "FastGelu",
    "BiasGelu",
    "Gelu",
)


def count_ops(model: onnx.ModelProto, op_types: tuple[str, ...] = FUSED_OPS) -> dict[str, int]:
    counts = collections.Counter(node.op_type for node in model.graph.node)
    return {op: counts[op] for op in op_types if counts[op]}


def apply_fusions(src: Path, dst: Path, *, num_heads: int, hidden_size: int) -> dict[str, int]:
    """ONNX Runtime's GPT-2 fusions: SkipLayerNormalization, LayerNormalization, FastGelu.

    Returns how many of each fused operator the graph holds afterwards. Its attention
    fusion matches only transformers 4.x graphs; with --optimize the exporter traces the
    attention as MultiHeadAttention or GroupQueryAttention already (see ort_attention), and
    the count says so.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    def fuse(model: onnx.ModelProto) -> dict[str, int]:
        # On the graph alone: the fusions' shape inference copies the whole model (peak memory
        # a multiple of the weights), and none of them reads a weight's values.
        optimized = optimize_model(
            model,
            model_type="gpt2",
            num_heads=num_heads,
            hidden_size=hidden_size,
            opt_level=0,  # fusions only; the session applies ORT's own graph optimisations
        )
        optimized.topological_sort()
        if optimized.model is not model:
            model.CopyFrom(optimized.model)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
        return count_ops(model)

    return rewrite_graph_only(src, dst, fuse)


def convert_fp16(src: Path, dst: Path) -> None:
    """Weights and activations in float16, inputs and outputs too (keep_io_types=False).

    Float16 past/present halve the KV-cache traffic, which dominates decode on GPUs, and
    avoid a Cast on every past tensor at every step; the manifest's graph.dtype tells the
    runtime to feed float16 past tensors and to upcast the logits before sampling.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = load_onnx(src)
    # The default op_block_list keeps the mask arithmetic (Range, CumSum, Min, Max) in
    # float32 behind Casts. Shape inference is skipped: it fails on protos over 2 GB.
    fp16 = convert_float_to_float16(model, keep_io_types=False, disable_shape_infer=True)
    del model
    save_external(fp16, dst)


def quantize_int8(src: Path, dst: Path, *, weight_type: str = "QUInt8") -> None:
    """Dynamic int8: MatMul and embedding (Gather) weights stored as 8-bit, activations
    quantised at run time. `weight_type` is "QUInt8" or "QInt8" (see the exporter)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # A path, not a proto: given a proto, quantize_dynamic deep-copies it for shape inference.
    quantize_dynamic(
        str(src),
        str(dst),
        op_types_to_quantize=["MatMul", "Gather"],
        weight_type=QuantType[weight_type],
        per_channel=False,
        reduce_range=False,
        use_external_data_format=True,
        # Shape inference cannot type the outputs of fused com.microsoft ops (--optimize).
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
