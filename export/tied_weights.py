"""Store a tied LM head once: the tracer writes the token embedding into the graph twice.

GPT-2 ties `lm_head.weight` to the token embedding `wte` [vocab, hidden]. The TorchScript
exporter's constant folding turns lm_head's `Transpose(wte)` into a second initializer
[hidden, vocab], so the file carries its largest matrix twice (GPT-2 small: 652 MB for
498 MB of weights). `share_tied_embedding` finds a MatMul / MatMulInteger weight that is
the transpose of an embedding (Gather) table and feeds that MatMul `Transpose(table)`
instead. ONNX Runtime folds the Transpose once when the session loads and then pre-packs
the MatMul weight as before: decode runs the same kernels, only the file is smaller.

It runs last, after fusions, fp16 and int8: `quantize_dynamic` quantizes only a MatMul
whose weight is an initializer, and with uint8 weights it quantizes the embedding (Gather)
and the head (MatMul) with the same per-tensor scale, so the int8 graph holds the pair too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fst.export.external_data import load_onnx, save_external

# Consumers whose second input is a [in, out] weight; the int8 graph has MatMulInteger.
MATMUL_OPS = ("MatMul", "MatMulInteger")


def share_tied_embedding(model: onnx.ModelProto) -> list[str]:
    """Replace every MatMul weight equal to an embedding table's transpose by a Transpose of
    that table (in place); returns the names of the initializers removed."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    tables = [
        initializers[n.input[0]]
        for n in graph.node
        if n.op_type == "Gather" and n.input[0] in initializers
    ]
    removed: list[str] = []
    transposed: dict[str, str] = {}  # table name -> Transpose output
    for node in list(graph.node):
        name = node.input[1] if node.op_type in MATMUL_OPS else ""
        if name not in initializers or name in graph_inputs or name in removed:
            continue
        table = _transposed_twin(initializers[name], tables)
        if table is None:
            continue
        if table.name not in transposed:
            transposed[table.name] = f"{table.name}_transposed"
            # First in the graph: its only input is an initializer, so the order stays valid.
            graph.node.insert(
                0,
                helper.make_node(
                    "Transpose",
                    [table.name],
                    [transposed[table.name]],
                    name=f"{table.name}_Transpose",
                    perm=[1, 0],
                ),
            )
        _rename_input(graph, name, transposed[table.name])
        removed.append(name)
    # By index: `remove(message)` would compare whole tensors on the way.
    for index in sorted(
        (i for i, t in enumerate(graph.initializer) if t.name in removed), reverse=True
    ):
        del graph.initializer[index]
    return removed


def share_tied_embedding_file(src: Path, dst: Path) -> list[str]:
    """`share_tied_embedding` from one .onnx file to another (weights as external data)."""
    model = load_onnx(src)
    removed = share_tied_embedding(model)
    save_external(model, dst)
    return removed


def _transposed_twin(weight: onnx.TensorProto, tables: list[onnx.TensorProto]):
    """The table whose transpose equals `weight` (same dtype, equal values), or None."""
    if len(weight.dims) != 2:
        return None
    data = None
    for table in tables:
        if table.data_type != weight.data_type or list(table.dims) != list(weight.dims)[::-1]:
            continue
        if data is None:
            data = numpy_helper.to_array(weight)
        if np.array_equal(numpy_helper.to_array(table).T, data):
            return table
    return None


def _rename_input(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
