"""Graph rewrites after tracing: ONNX Runtime transformer fusions, fp16 (int8: quantize_int8).

Each step reads one .onnx file and writes another with its weights as external data (see
external_data.py: no serialised second copy), so the exporter can chain them in its
temporary folder.
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path

import numpy as np
import onnx

from fst.export.external_data import rewrite_graph_only, save_external

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


# Values converted to float16 at a time (bounds the converter's temporaries).
FP16_SLICE = 1 << 20


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

    model = onnx.load(str(src), load_external_data=False)
    _weights_to_fp16(model, Path(src).parent)
    # The default op_block_list keeps the mask arithmetic (Range, CumSum, Min, Max) in
    # float32 behind Casts. Shape inference is skipped: it fails on protos over 2 GB.
    fp16 = convert_float_to_float16(model, keep_io_types=False, disable_shape_infer=True)
    del model
    save_external(fp16, dst)


def _weights_to_fp16(model: onnx.ModelProto, folder: Path) -> None:
    """Read the external weights one at a time, converting those the converter would make
    float16 (every consumer is a float16 node) as they are read.

    The converter rewrites a tensor's bytes inside the proto, whose arena keeps the fp32
    bytes until the whole model is freed: converting the full-precision model in place
    held both copies. Read and converted here, each weight enters the proto at half its
    size; the converter leaves float16 initializers as they are. A weight that feeds a
    node kept in float32 is read as it is, for the converter to decide.
    """
    from onnx import external_data_helper, numpy_helper
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_np_to_float16

    blocked: set[str] = set()
    for node in model.graph.node:
        if node.op_type in DEFAULT_OP_BLOCK_LIST:
            blocked.update(node.input)
    for tensor in model.graph.initializer:
        if not external_data_helper.uses_external_data(tensor):
            continue
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        external_data_helper.load_external_data_for_tensor(copy, str(folder))
        if tensor.data_type == onnx.TensorProto.FLOAT and tensor.name not in blocked:
            values = numpy_helper.to_array(copy).reshape(-1)
            del copy
            half = np.empty(values.shape, np.float16)
            # Elementwise, so in slices: on a whole table its index arrays and masks
            # were several times the tensor.
            for start in range(0, values.size, FP16_SLICE):
                end = start + FP16_SLICE
                half[start:end] = convert_np_to_float16(values[start:end])
            del values
            tensor.CopyFrom(numpy_helper.from_array(half.reshape(tensor.dims), tensor.name))
        else:
            tensor.CopyFrom(copy)
