"""Trace a causal LM (through `CacheFlatteningWrapper`) into one ONNX graph with KV cache.

Uses the TorchScript exporter (`torch.onnx.export(..., dynamo=False)`); see the export
note for why not optimum or the dynamo exporter.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import onnx
import torch
from transformers import PreTrainedModel

from fst.export import trace_weights
from fst.export.architectures import contract_for
from fst.export.wrapper import (
    CacheFlatteningWrapper,
    KVLayout,
    LogitsMode,
    SharedBufferWrapper,
    dummy_inputs,
)

# Protobuf cannot hold more than 2 GB; bigger models keep their weights in one side file.
PROTOBUF_LIMIT = 2**31 - 1
EXTERNAL_DATA_SUFFIX = ".data"
# Room left for the graph itself (nodes, names, small constants) beside the weights.
GRAPH_MARGIN = 64 * 2**20


def export_onnx(
    model: PreTrainedModel,
    path: Path,
    *,
    opset: int = 17,
    logits: LogitsMode = "all",
    kv_layout: KVLayout = "concat",
) -> Path:
    """Write `model` as an ONNX graph at `path` (weights external if > 2 GB); returns path.

    kv_layout "shared" needs the model to run ORT_GQA attention (see ort_attention).
    """
    if trace_weights.check_supported():  # weights straight to <path>.data: no proto copies
        with trace_weights.weights_written_externally(path):
            _trace(model, path, opset, logits, kv_layout)
        return path
    if _fits_in_protobuf(model):
        _trace(model, path, opset, logits, kv_layout)
        return path
    # Past 2 GB the exporter scatters one file per weight: trace into a scratch folder,
    # then save once, as one graph plus one data file.
    scratch = path.parent / f"{path.stem}.trace"
    scratch.mkdir()
    try:
        _trace(model, scratch / path.name, opset, logits, kv_layout)
        save_onnx(onnx.load(str(scratch / path.name)), path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path


def _trace(
    model: PreTrainedModel, path: Path, opset: int, logits: LogitsMode, kv_layout: KVLayout
) -> None:
    contract = contract_for(model.config, logits, kv_layout)
    if kv_layout == "shared_right":
        from fst.export.gqa_right import RightPaddedBufferWrapper as wrapper
    else:
        wrapper = SharedBufferWrapper if kv_layout == "shared" else CacheFlatteningWrapper
    with torch.no_grad(), warnings.catch_warnings():
        # TracerWarnings about Python branches in transformers' cache code: the branches
        # taken with past > 0 are the general ones (see dummy_inputs).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper(model, logits=logits),
            dummy_inputs(model.config, kv_layout=kv_layout),
            str(path),
            input_names=contract.input_names,
            output_names=contract.output_names,
            dynamic_axes=contract.dynamic_axes(),
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def _fits_in_protobuf(model: PreTrainedModel) -> bool:
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    # Constant folding stores a transposed copy of a tied lm_head beside the embedding.
    head = model.get_output_embeddings()
    if head is not None:
        weights += head.weight.numel() * head.weight.element_size()
    return weights < PROTOBUF_LIMIT - GRAPH_MARGIN


def move_onnx(src: Path, dst: Path) -> str | None:
    """Move a saved model to `dst` (a rename unless its weights are external); returns the
    external data file name at `dst`, or None."""
    if not has_external_data(src):
        src.replace(dst)
        return None
    return save_onnx(onnx.load(str(src)), dst)


def has_external_data(path: Path) -> bool:
    model = onnx.load(str(path), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def external_data_name(path: Path) -> str:
    return path.name + EXTERNAL_DATA_SUFFIX


def save_onnx(model: onnx.ModelProto, path: Path) -> str | None:
    """Save `model`, with its weights in `<name>.data` when it would exceed 2 GB.

    Returns the external data file name, or None when everything is in `path`.
    """
    if _weights_bytes(model) < PROTOBUF_LIMIT - GRAPH_MARGIN:
        onnx.save_model(model, str(path))
        return None
    location = external_data_name(path)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=1024,
    )
    return location


def _weights_bytes(model: onnx.ModelProto) -> int:
    # Not model.ByteSize(): protobuf may overflow on a message that is already over 2 GB.
    return sum(t.ByteSize() for t in model.graph.initializer)
