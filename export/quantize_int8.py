"""Dynamic int8 weights with ONNX Runtime's quantizer, reading one weight at a time.

`onnxruntime.quantization.quantize_dynamic` loads every weight before it starts, keeps each
fp32 initializer in the proto after quantizing it (they are dropped only at the end), and
its numpy arithmetic makes several temporary copies of each tensor: its peak was several
times the fp32 weights (benchmarks/results/export-sizes-memory-decode-gpt2-family-epyc.md). Here the same quantizer
(`ONNXQuantizer`, the same options, so the same graph and the same values) runs on the
graph alone: each weight is read from the external data file when the quantizer asks for
it, into a private copy of its TensorProto, so the graph never holds an fp32 weight. What
stays in memory is the int8 output (a quarter of the fp32 bytes) plus one tensor's
temporaries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

from fst.export.external_data import save_external

SUPPORTED_OPS = ("MatMul", "Gather")
# Values quantised at a time: the quantizer's arithmetic makes float copies of what it is given.
SLICE = 1 << 20


def quantize_int8(src: Path, dst: Path, *, weight_type: str = "QUInt8") -> None:
    """Dynamic int8: MatMul and embedding (Gather) weights stored as 8-bit, activations
    quantised at run time. `weight_type` is "QUInt8" or "QInt8" (see the exporter). `src`
    must keep its weights as external data (every exporter stage writes them so)."""
    from onnxruntime.quantization import QuantizationMode, QuantType
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.quant_utils import update_opset_version

    src, dst = Path(src).absolute(), Path(dst).absolute()
    with _weights_read_lazily(src.parent):
        model = _infer_shapes(onnx.load(str(src), load_external_data=False))
        model = update_opset_version(model, QuantType[weight_type])
        quantizer = ONNXQuantizer(
            model,
            False,  # per_channel
            False,  # reduce_range
            QuantizationMode.IntegerOps,
            False,  # static
            QuantType[weight_type],
            QuantType.QUInt8,  # dynamic activations are uint8
            None,
            [],
            [],
            list(SUPPORTED_OPS),
            # Shape inference cannot type the outputs of fused com.microsoft ops (--optimize).
            {"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True},
        )
        quantizer.quantize_model()
        out = quantizer.model
        out.topological_sort()
        # Weights left in fp32 (biases, norms, positions) still point at src's data file.
        for tensor in external_data_helper._get_all_tensors(out.model):
            if external_data_helper.uses_external_data(tensor):
                external_data_helper.load_external_data_for_tensor(tensor, str(src.parent))
    save_external(out.model, dst)


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX Runtime's `save_and_reload_model_with_shape_infer` without the save: that one
    deep-copies the model and writes it to a temporary folder, where a graph whose weights
    are external data no longer finds them. In memory the graph alone is enough (shapes
    come from the initializers' dims)."""
    from onnxruntime.quantization.quant_utils import add_infer_metadata

    inferred = onnx.shape_inference.infer_shapes(model)
    add_infer_metadata(inferred)
    return inferred


def _read_tensor(tensor: onnx.TensorProto, folder: Path) -> np.ndarray:
    """The tensor's values; an external one is read into a copy, leaving `tensor` (and so
    the graph being quantised) without the bytes."""
    if not external_data_helper.uses_external_data(tensor):
        return numpy_helper.to_array(tensor)
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    external_data_helper.load_external_data_for_tensor(copy, str(folder))
    return numpy_helper.to_array(copy)


@contextlib.contextmanager
def _weights_read_lazily(folder: Path) -> Iterator[None]:
    """Route the quantizer's weight reads through `_read_tensor`, its shape inference
    through `_infer_shapes` and its arithmetic through slices.

    `tensor_proto_to_array` is the one function ONNX Runtime's quantizer reads weights
    with, `save_and_reload_model_with_shape_infer` the one it re-infers shapes with,
    `quantize_nparray` the one quantize_data rounds with; all are looked up as module
    globals, so patching those names redirects every call.
    """
    from onnxruntime.quantization import base_quantizer, onnx_quantizer, quant_utils

    whole = quant_utils.quantize_nparray

    def sliced(q_type, arr, scale, zero_point, low=None, high=None):
        """`quantize_nparray` slice by slice (it is elementwise once scale and zero point
        are known, which quantize_data computes over the whole tensor first)."""
        if q_type not in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) or arr.size <= SLICE:
            return whole(q_type, arr, scale, zero_point, low, high)
        flat = np.asarray(arr).reshape(-1)
        out = np.empty(flat.shape, quant_utils.ONNX_TYPE_TO_NP_TYPE[q_type])
        for start in range(0, flat.size, SLICE):
            out[start : start + SLICE] = whole(
                q_type, flat[start : start + SLICE], scale, zero_point, low, high
            )
        return out.reshape(np.shape(arr))

    def read(tensor: onnx.TensorProto) -> np.ndarray:
        if tensor.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            raise ValueError(f"Only float weights are quantised, {tensor.name} is not")
        return _read_tensor(tensor, folder)

    with (
        mock.patch.object(base_quantizer, "tensor_proto_to_array", read),
        mock.patch.object(onnx_quantizer, "tensor_proto_to_array", read),
        mock.patch.object(quant_utils, "quantize_nparray", sliced),
        mock.patch.object(base_quantizer, "save_and_reload_model_with_shape_infer", _infer_shapes),
        mock.patch.object(onnx_quantizer, "save_and_reload_model_with_shape_infer", _infer_shapes),
        mock.patch.object(quant_utils, "save_and_reload_model_with_shape_infer", _infer_shapes),
        contextlib.chdir(folder),  # other reads (onnx's to_array) resolve data from here
    ):
        yield
