"""Static-shape rewrites of traced graphs (export/simplify.py) on small hand-built graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("onnxruntime")
import onnxruntime as ort  # noqa: E402

from fst.export.simplify import _static_shape, simplify_shapes  # noqa: E402


@pytest.mark.parametrize(
    ("data", "out", "expected"),
    [
        (["b", "s", 768], ["b", "s", 12, 64], [0, 0, 12, 64]),  # split heads
        (["b", "s", 768], ["b*s", 768], [-1, 768]),  # flatten
        (["b", "s", 12, 64], ["b", "s", 768], [0, 0, 768]),  # merge heads
        (["b*s", 768], ["b", "s", 768], None),  # two unknowns: needs the dynamic shape
        (["b", "s", 768], [None, "s", 768], None),  # inference gave up
        (["b", 0, 768], ["b", 0, 768], None),  # a real zero cannot be written as 0
    ],
)
def test_static_shape(data, out, expected):
    assert _static_shape(data, out) == expected


def traced_like_graph() -> onnx.ModelProto:
    """x [b, s, 8] → Conv1D as torch traces it (Reshape → Gemm → Reshape, shapes from Shape
    nodes) → view(b, s, 2, 4) with the dims gathered from Shape(x)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "bias")
    consts = {
        "minus1_8": np.array([-1, 8], np.int64),
        "i0": np.array(0, np.int64),
        "i1": np.array(1, np.int64),
        "ax0": np.array([0], np.int64),
        "c8": np.array([8], np.int64),
        "c2": np.array([2], np.int64),
        "c4": np.array([4], np.int64),
    }
    inits = [w, bias, *(numpy_helper.from_array(v, k) for k, v in consts.items())]
    n = helper.make_node
    nodes = [
        n("Reshape", ["x", "minus1_8"], ["flat"]),
        n("Gemm", ["flat", "w", "bias"], ["gemm"]),
        n("Shape", ["x"], ["shape"]),
        n("Gather", ["shape", "i0"], ["b"]),
        n("Gather", ["shape", "i1"], ["s"]),
        n("Unsqueeze", ["b", "ax0"], ["b1"]),
        n("Unsqueeze", ["s", "ax0"], ["s1"]),
        n("Concat", ["b1", "s1", "c8"], ["back_shape"], axis=0),
        n("Reshape", ["gemm", "back_shape"], ["y"]),
        n("Concat", ["b1", "s1", "c2", "c4"], ["heads_shape"], axis=0),
        n("Reshape", ["y", "heads_shape"], ["heads"]),
    ]
    graph = helper.make_graph(
        nodes,
        "traced",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 8])],
        [helper.make_tensor_value_info("heads", TensorProto.FLOAT, ["b", "s", 2, 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_simplify_removes_shape_arithmetic_and_keeps_outputs():
    model = traced_like_graph()
    x = np.random.default_rng(1).standard_normal((3, 5, 8)).astype(np.float32)
    expected = run(model, x)
    counts = simplify_shapes(model)
    onnx.checker.check_model(model)
    ops = [node.op_type for node in model.graph.node]
    assert counts["gemm_to_matmul"] == 1 and counts["constant_reshapes"] == 1
    assert ops == ["MatMul", "Add", "Reshape"]  # Shape/Gather/Unsqueeze/Concat all gone
    np.testing.assert_allclose(run(model, x), expected, rtol=1e-6, atol=1e-6)
    # Still dynamic: another batch and length give the same result as the traced graph.
    other = np.random.default_rng(2).standard_normal((1, 9, 8)).astype(np.float32)
    np.testing.assert_allclose(run(model, other), run(traced_like_graph(), other), atol=1e-6)


def heads_round_trip_graph() -> onnx.ModelProto:
    """x [b, s, 8] → split heads [b, s, 2, 4] → merge heads [b, s, 8] → + bias, and the
    split heads viewed again as [b, s, 4, 2] (a chain that is not an identity)."""
    shapes = {
        "heads": np.array([0, 0, 2, 4], np.int64),
        "merged": np.array([0, 0, 8], np.int64),
        "other": np.array([0, 0, 4, 2], np.int64),
    }
    bias = np.arange(8, dtype=np.float32)
    inits = [numpy_helper.from_array(v, f"{k}_shape") for k, v in shapes.items()]
    inits.append(numpy_helper.from_array(bias, "bias"))
    n = helper.make_node
    nodes = [
        n("Reshape", ["x", "heads_shape"], ["heads"]),
        n("Reshape", ["heads", "merged_shape"], ["merged"]),
        n("Add", ["merged", "bias"], ["y"]),
        n("Reshape", ["x", "heads_shape"], ["heads2"]),
        n("Reshape", ["heads2", "other_shape"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes,
        "heads",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", 8])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", 8]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["b", "s", 4, 2]),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_reshape_chains_collapse_and_identity_reshapes_go():
    model = heads_round_trip_graph()
    x = np.random.default_rng(3).standard_normal((2, 5, 8)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x})
    simplify_shapes(model)
    onnx.checker.check_model(model)
    by_output = {node.output[0]: node for node in model.graph.node}
    assert by_output["y"].op_type == "Add" and by_output["y"].input[0] == "x"  # no Reshape
    assert by_output["z"].op_type == "Reshape" and by_output["z"].input[0] == "x"  # one left
    assert [node.op_type for node in model.graph.node].count("Reshape") == 1
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for got, want in zip(session.run(None, {"x": x}), expected, strict=True):
        np.testing.assert_array_equal(got, want)
