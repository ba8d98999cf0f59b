"""Trace with the weights written straight from PyTorch's tensors into one external file.

The TorchScript exporter copies every weight into its C++ ModelProto, serialises that into
a string, hands Python a bytes copy of it and parses it once more (`_add_onnxscript_fn`):
GPT-2 small (498 MB) peaked 2.4 GB above the loaded model while tracing. Its encoder can
instead leave each weight out of the proto ("__EXTERNAL" placeholder) and return the
tensors beside it (`defer_weight_export`, the mode its old directory format used). Inside
`weights_written_externally(path)` the exporter runs in that mode and the file writer puts
the tensors into `<path>.data`, one after another, straight from the tensors' own memory;
the graph file gets external-data references. Tracing then holds the model plus the
constants it folded (a transposed tied lm_head) and a weightless proto.

This reaches into `torch.onnx`'s TorchScript exporter internals (`Graph._export_onnx`'s
positional `defer_weight_export`, `onnx_proto_utils._export_file`); `check_supported()`
says whether this torch still has them, and the caller falls back to a plain export if not.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import onnx
import torch

from fst.export.external_data import SIZE_THRESHOLD, data_file

PLACEHOLDER = b"__EXTERNAL"
_DEFER_ARG = 3  # Graph._export_onnx(params, opset, dynamic_axes, defer_weight_export, ...)
SHAPE_CONSTANT_MAX = 4096  # elements: constants shape inference still sees
ALIGNMENT = 4096  # offsets page-aligned, so ONNX Runtime may map the file


def _internals():
    from torch.onnx._internal.torchscript_exporter import onnx_proto_utils

    return torch._C.Graph, onnx_proto_utils


def check_supported() -> bool:
    """True when this torch has the exporter internals the deferred mode relies on."""
    try:
        graph_cls, proto_utils = _internals()
    except ImportError:
        return False
    return hasattr(graph_cls, "_export_onnx") and hasattr(proto_utils, "_export_file")


@contextmanager
def weights_written_externally(path: Path) -> Iterator[None]:
    """Within the block, torch.onnx.export(..., str(path)) writes its weights to `<path>.data`."""
    graph_cls, proto_utils = _internals()
    export_onnx, export_file = graph_cls._export_onnx, proto_utils._export_file
    infer = torch._C._jit_pass_onnx_graph_shape_type_inference
    weights: dict[str, torch.Tensor] = {}

    def deferred(self, params_dict, *args, **kwargs):
        # The binding copies every deferred tensor into a bytes object; give it empty
        # stand-ins (right dtype) and keep the real tensors, written below from their memory.
        weights.update(params_dict)
        stand_ins = {k: torch.empty(0, dtype=v.dtype) for k, v in params_dict.items()}
        args = list(args)
        args[_DEFER_ARG - 1] = True
        return export_onnx(self, stand_ins, *args, **kwargs)

    def write(model_bytes: bytes, f, export_map) -> None:
        if Path(f) != Path(path):
            raise RuntimeError(f"trace_weights: expected an export to {path}, got {f}")
        write_with_external_data(model_bytes, weights, Path(path))

    def infer_without_weights(graph, params_dict, opset):
        # Shape inference copies every constant it is given into a proto; only small ones
        # (shape arguments) can matter to it, the weights' shapes are on the graph already.
        small = {k: v for k, v in params_dict.items() if v.numel() <= SHAPE_CONSTANT_MAX}
        return infer(graph, small, opset)

    graph_cls._export_onnx, proto_utils._export_file = deferred, write
    torch._C._jit_pass_onnx_graph_shape_type_inference = infer_without_weights
    try:
        yield
    finally:
        graph_cls._export_onnx, proto_utils._export_file = export_onnx, export_file
        torch._C._jit_pass_onnx_graph_shape_type_inference = infer
        weights.clear()


def write_with_external_data(
    model_bytes: bytes, weights: dict[str, torch.Tensor], path: Path
) -> None:
    """The weightless proto at `path`; each placeholder's tensor appended to `<path>.data`."""
    model = onnx.load_model_from_string(model_bytes)
    side = data_file(path)
    with open(side, "wb") as out:
        for tensor in _placeholders(model):
            value = weights[tensor.name].detach().contiguous()
            data = memoryview(value.view(torch.uint8).numpy()).cast("B")  # no copy
            del tensor.dims[:]
            tensor.dims.extend(value.shape)
            if data.nbytes < SIZE_THRESHOLD:  # shape constants stay readable in the graph
                tensor.raw_data = data.tobytes()
                continue
            out.write(b"\0" * (-out.tell() % ALIGNMENT))
            start = out.tell()
            out.write(data)
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, val in (("location", side.name), ("offset", start), ("length", data.nbytes)):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, str(val)
    onnx.save_model(model, str(path))


def _placeholders(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    from onnx.external_data_helper import _get_all_tensors

    return [t for t in _get_all_tensors(model) if t.raw_data == PLACEHOLDER]
