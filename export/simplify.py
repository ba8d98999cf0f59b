"""Remove the shape arithmetic that tracing leaves around every reshape.

`torch.onnx.export` records `x.view(x.size(0), x.size(1), H, D)` as Shape → Gather →
Unsqueeze → Concat → Reshape, and Hugging Face's Conv1D (`addmm` on a flattened input) as
Reshape → Gemm → Reshape with the same kind of subgraph on both sides. ONNX Runtime cannot
fold those (the shapes are dynamic), so a GPT-2 small decode step ran ~250 tiny kernels that
only recompute shapes. With the dimensions known symbolically (ONNX Runtime's symbolic shape
inference) the rewrites are exact:

- a Reshape whose output dims are constants, the input's own dims at the same position, or
  a single unknown gets a constant shape (0 = copy that dim, -1 = the unknown one);
- Reshape → Gemm → Reshape around a [.., K] tensor becomes MatMul (+ Add for the bias) on the
  unflattened tensor, which ONNX Runtime's fusions then merge into SkipLayerNormalization;
- Reshape → Reshape collapses into one, and a Reshape whose output has its input's dims
  goes (the split-heads / merge-heads views around a fused attention);
- GroupQueryAttention reading the three outputs of one Split of the QKV projection reads
  the projection itself (the op's packed-QKV input): no Split, no copies;
- nodes whose outputs nobody reads any more are dropped.

Every rewrite keeps standard ONNX operators; the exporter's parity check against PyTorch
(prefill and decode, padded batch) runs on the result as on any graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

Dim = int | str | None


def simplify_shapes(model: onnx.ModelProto) -> dict[str, int]:
    """Rewrite `model` in place; returns how many reshapes/Gemms were rewritten and nodes dropped."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    dims = _symbolic_dims(model)
    before = len(model.graph.node)
    gemms = _gemm_sandwiches_to_matmul(OnnxModel(model), dims)
    reshapes = _constant_reshape_shapes(model, dims)
    _prune(model)  # the shape arithmetic of those reshapes still reads their inputs
    collapsed = _collapse_reshape_chains(OnnxModel(model), dims)
    identities = _remove_identity_reshapes(OnnxModel(model), dims)
    _prune(model)  # bypassed reshapes still read the Split outputs: drop them first
    packed = _pack_qkv(OnnxModel(model))
    _prune(model)
    return {
        "gemm_to_matmul": gemms,
        "constant_reshapes": reshapes,
        "reshapes_removed": collapsed + identities,
        "packed_qkv": packed,
        "nodes_removed": before - len(model.graph.node),
    }


def _prune(model: onnx.ModelProto) -> None:
    """Drop nodes (and initializers) nobody reads any more; graph inputs stay."""
    from onnxruntime.transformers.onnx_model import OnnxModel

    pruned = OnnxModel(model)
    pruned.prune_graph(allow_remove_graph_inputs=False)
    pruned.update_graph()


def _symbolic_dims(model: onnx.ModelProto) -> dict[str, list[Dim]]:
    """name → dims (int, symbol string, or None when unknown) of every tensor."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    # Inference needs the values of small shape constants only: big weights become typed
    # graph inputs in a light copy (built field by field: CopyFrom would copy every weight).
    light = onnx.ModelProto(ir_version=model.ir_version)
    light.opset_import.extend(model.opset_import)
    graph = model.graph
    for field in ("node", "input", "output", "value_info"):
        getattr(light.graph, field).extend(getattr(graph, field))
    for tensor in graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.raw_data) > 4096:
            light.graph.input.append(
                helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
            )
        else:
            light.graph.initializer.append(tensor)
    inferred = SymbolicShapeInference.infer_shapes(light, auto_merge=False)
    dims: dict[str, list[Dim]] = {}
    graph = inferred.graph
    for info in [*graph.input, *graph.value_info, *graph.output]:
        shape = info.type.tensor_type.shape
        dims[info.name] = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in shape.dim
        ]
    for tensor in model.graph.initializer:
        dims[tensor.name] = list(tensor.dims)
    return dims


def _gemm_sandwiches_to_matmul(onnx_model, dims: dict[str, list[Dim]]) -> int:
    """`onnx_model`: an onnxruntime.transformers OnnxModel around the model being rewritten."""
    graph = onnx_model.model.graph
    producers = onnx_model.output_name_to_node()
    consumers = onnx_model.input_name_to_nodes()
    initializers = {t.name for t in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    rewritten = 0
    new_nodes: dict[int, list[onnx.NodeProto]] = {}  # id(second reshape) -> replacement
    removed: set[int] = set()
    for gemm in graph.node:
        if gemm.op_type != "Gemm" or not _plain_gemm(gemm) or gemm.input[1] not in initializers:
            continue
        flatten = producers.get(gemm.input[0])
        outs = consumers.get(gemm.output[0], [])
        if flatten is None or flatten.op_type != "Reshape" or len(outs) != 1:
            continue
        unflatten = outs[0]
        if unflatten.op_type != "Reshape" or gemm.output[0] in graph_outputs:
            continue
        if len(consumers.get(flatten.output[0], [])) != 1:
            continue
        x = flatten.input[0]
        x_dims, out_dims = dims.get(x), dims.get(unflatten.output[0])
        if not x_dims or not out_dims or len(x_dims) != len(out_dims) or len(x_dims) < 2:
            continue
        if not _same_dims(x_dims[:-1], out_dims[:-1]):
            continue
        has_bias = len(gemm.input) > 2 and gemm.input[2] != ""
        matmul_out = gemm.output[0] if has_bias else unflatten.output[0]
        replacement = [
            helper.make_node("MatMul", [x, gemm.input[1]], [matmul_out], name=gemm.name + "_MatMul")
        ]
        if has_bias:
            replacement.append(
                helper.make_node(
                    "Add",
                    [matmul_out, gemm.input[2]],
                    [unflatten.output[0]],
                    name=gemm.name + "_Add",
                )
            )
        new_nodes[id(unflatten)] = replacement
        removed.update({id(flatten), id(gemm)})
        rewritten += 1
    if rewritten:
        nodes = []
        for node in graph.node:
            if id(node) in removed:
                continue
            nodes.extend(new_nodes.get(id(node), [node]))
        del graph.node[:]
        graph.node.extend(nodes)
    return rewritten


def _collapse_reshape_chains(onnx_model, dims: dict[str, list[Dim]]) -> int:
    """Reshape(Reshape(x)) → Reshape(x) when the inner one feeds nothing else."""
    graph = onnx_model.model.graph
    producers = onnx_model.output_name_to_node()
    consumers = onnx_model.input_name_to_nodes()
    graph_outputs = {o.name for o in graph.output}
    collapsed = 0
    for outer in graph.node:
        inner = producers.get(outer.input[0]) if outer.op_type == "Reshape" else None
        if inner is None or inner.op_type != "Reshape" or inner.output[0] in graph_outputs:
            continue
        if len(consumers.get(inner.output[0], [])) != 1:
            continue
        # The outer target may copy dims (0) of its input: recompute it for the new input.
        shape = _static_shape(dims.get(inner.input[0]), dims.get(outer.output[0]))
        if shape is None:
            continue
        outer.input[0] = inner.input[0]
        outer.input[1] = _shape_initializer(graph, outer, shape, "collapsed_shape")
        producers[outer.output[0]] = outer
        collapsed += 1
    return collapsed


def _remove_identity_reshapes(onnx_model, dims: dict[str, list[Dim]]) -> int:
    """Readers of a Reshape whose output dims equal its input's read the input instead."""
    graph = onnx_model.model.graph
    graph_outputs = {o.name for o in graph.output}
    renames: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "Reshape" or node.output[0] in graph_outputs:
            continue
        source, out = dims.get(node.input[0]), dims.get(node.output[0])
        if source and out and len(source) == len(out) and _same_dims(source, out):
            renames[node.output[0]] = node.input[0]
    for name in list(renames):  # chains: follow to the first non-removed tensor
        while renames[name] in renames:
            renames[name] = renames[renames[name]]
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    return len(renames)


def _pack_qkv(onnx_model) -> int:
    """GroupQueryAttention(Split(qkv) → q, k, v) → GroupQueryAttention(qkv, "", "")."""
    graph = onnx_model.model.graph
    producers = onnx_model.output_name_to_node()
    consumers = onnx_model.input_name_to_nodes()
    packed = 0
    for node in graph.node:
        if node.op_type != "GroupQueryAttention" or len(node.input) < 3:
            continue
        split = producers.get(node.input[0])
        if split is None or split.op_type != "Split" or list(split.output) != list(node.input[:3]):
            continue
        if _attributes(split).get("axis", 0) not in (-1, 2) or len(split.output) != 3:
            continue
        if any(len(consumers.get(out, [])) != 1 for out in split.output):
            continue
        if not _equal_split(split, onnx_model):
            continue
        node.input[0], node.input[1], node.input[2] = split.input[0], "", ""
        packed += 1
    return packed


def _equal_split(split: onnx.NodeProto, onnx_model) -> bool:
    """Three equal parts (no sizes given, or equal sizes as attribute or constant input)."""
    sizes = _attributes(split).get("split")
    if sizes is None and len(split.input) > 1 and split.input[1]:
        tensor = onnx_model.get_initializer(split.input[1])
        if tensor is None:
            constant = onnx_model.output_name_to_node().get(split.input[1])
            if constant is None or constant.op_type != "Constant":
                return False
            tensor = _attributes(constant)["value"]
        sizes = numpy_helper.to_array(tensor).tolist()
    return sizes is None or len(set(sizes)) == 1


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _plain_gemm(node: onnx.NodeProto) -> bool:
    """Y = A @ B + C with no transposes or scaling: exactly MatMul (+ Add)."""
    attrs = _attributes(node)
    return (
        attrs.get("alpha", 1.0) == 1.0
        and attrs.get("beta", 1.0) == 1.0
        and attrs.get("transA", 0) == 0
        and attrs.get("transB", 0) == 0
    )


def _constant_reshape_shapes(model: onnx.ModelProto, dims: dict[str, list[Dim]]) -> int:
    graph = model.graph
    constants = _constant_names(graph)
    rewritten = 0
    for node in graph.node:
        if node.op_type != "Reshape" or node.input[1] in constants:
            continue
        if _attributes(node).get("allowzero", 0):
            continue
        shape = _static_shape(dims.get(node.input[0]), dims.get(node.output[0]))
        if shape is None:
            continue
        node.input[1] = _shape_initializer(graph, node, shape, "static_shape")
        constants.add(node.input[1])
        rewritten += 1
    return rewritten


def _static_shape(data: Sequence[Dim] | None, out: Sequence[Dim] | None) -> list[int] | None:
    """A constant Reshape target for `data` → `out`, or None when the dims don't allow one."""
    if not data or not out:
        return None
    shape: list[int] = []
    unknown = 0
    for i, dim in enumerate(out):
        if isinstance(dim, int) and dim > 0:
            shape.append(dim)
        elif isinstance(dim, str) and i < len(data) and data[i] == dim:
            shape.append(0)  # copy the input's dim i
        elif dim is None or dim == 0:
            return None  # unknown to inference, or a real zero (0 would mean "copy")
        else:
            shape.append(-1)
            unknown += 1
    return shape if unknown <= 1 else None


def _shape_initializer(graph: onnx.GraphProto, node: onnx.NodeProto, shape, suffix: str) -> str:
    """Add `shape` as an int64 initializer named after `node`; returns its name."""
    name = f"{node.name or node.output[0]}_{suffix}"
    graph.initializer.append(numpy_helper.from_array(np.asarray(shape, np.int64), name))
    return name


def _same_dims(a: Sequence[Dim], b: Sequence[Dim]) -> bool:
    return all(x is not None and x == y for x, y in zip(a, b, strict=True))


def _constant_names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer}
    names.update(n.output[0] for n in graph.node if n.op_type == "Constant")
    return names


def simplify_file(src: Path, dst: Path) -> dict[str, int]:
    """`simplify_shapes` from one .onnx file to another (the exporter's chained steps)."""
    from fst.export.external_data import rewrite_graph_only

    # The rewrites read shape constants only (small, kept in the graph file): the weights
    # stay on disk and `src`'s data file becomes `dst`'s.
    return rewrite_graph_only(src, dst, simplify_shapes)
