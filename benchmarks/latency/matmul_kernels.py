"""ONNX Runtime's MatMul kernels by the number of rows: why int4 bundles stop scaling with
the batch.

    python -m benchmarks.latency.matmul_kernels                 # GPT-2 small's MLP matrix
    python -m benchmarks.latency.matmul_kernels --k 576 --n 1536 --rows 1 8 64

One [K, N] weight, one graph per kernel fst's bundles use: fp32 `MatMul`, dynamic int8
(`DynamicQuantizeLinear` + `MatMulInteger`: fst's int8 for GPT-2), and `MatMulNBits` (int4
bundles, and int8 bundles of models whose activations defeat dynamic int8) at 4 bits with
blocks of 128 and 32 and at 8 bits with blocks of 32, with int8 activations (accuracy level
4, what fst exports) and fp32 ones (level 0). Each is timed at every row count M (1 = a
batch-1 decode step, 16 = sixteen sequences decoding together, more = a prefill), kernels
interleaved within each round, medians over rounds. Weights are random: speed does not
depend on the values. Writes benchmarks/results/matmul-kernels-by-rows-ort-KxN.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import common

DEFAULT_OUT = common.REPO / "benchmarks" / "results"


def _model(nodes, initializers):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializers,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def fp32(weight: np.ndarray):
    from onnx import helper, numpy_helper

    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    return _model([node], [numpy_helper.from_array(weight, "w")])


def dynamic_int8(weight: np.ndarray):
    """ONNX Runtime's own dynamic quantiser, as fst.export.quantize_int8 runs it."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as folder:
        src, dst = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        onnx.save(fp32(weight), src)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        return onnx.load(dst)


def nbits(k: int, n: int, bits: int, block: int, level: int, rng: np.random.Generator):
    from onnx import helper, numpy_helper

    blocks = k // block
    codes = rng.integers(0, 1 << bits, size=(n, blocks, block), dtype=np.uint8)
    if bits == 4:
        codes = codes[..., 0::2] | (codes[..., 1::2] << 4)
    scales = rng.uniform(0.001, 0.02, size=n * blocks).astype(np.float32)
    node = helper.make_node(
        "MatMulNBits", ["x", "w", "s"], ["y"], domain="com.microsoft",
        K=k, N=n, bits=bits, block_size=block, accuracy_level=level,
    )  # fmt: skip
    inits = [numpy_helper.from_array(codes, "w"), numpy_helper.from_array(scales, "s")]
    return _model([node], inits)


def kernels(k: int, n: int, rng: np.random.Generator) -> dict:
    weight = rng.standard_normal((k, n)).astype(np.float32) * 0.02
    return {
        "fp32 MatMul": fp32(weight),
        "int8 dynamic (MatMulInteger)": dynamic_int8(weight),
        "MatMulNBits 4-bit, block 128, int8 activations": nbits(k, n, 4, 128, 4, rng),
        "MatMulNBits 4-bit, block 32, int8 activations": nbits(k, n, 4, 32, 4, rng),
        "MatMulNBits 4-bit, block 32, fp32 activations": nbits(k, n, 4, 32, 0, rng),
        "MatMulNBits 8-bit, block 32, int8 activations": nbits(k, n, 8, 32, 4, rng),
    }


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--k", type=int, default=768, help="rows of the weight (input size)")
    parser.add_argument("--n", type=int, default=3072, help="columns (output size)")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.log_severity_level = 3
    sessions = {
        name: ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
        for name, model in kernels(args.k, args.n, rng).items()
    }
    load_before = common.load_average()
    times: dict[str, dict[int, list[float]]] = {
        name: {m: [] for m in args.rows} for name in sessions
    }
    for _ in range(args.rounds):
        for m in args.rows:
            x = rng.standard_normal((m, args.k)).astype(np.float32)
            calls = max(3, 256 // m)
            for name, session in sessions.items():
                session.run(None, {"x": x})  # warm
                start = time.perf_counter()
                for _ in range(calls):
                    session.run(None, {"x": x})
                times[name][m].append((time.perf_counter() - start) / calls * 1e6)
    medians = {name: {m: common.median(v) for m, v in per.items()} for name, per in times.items()}
    report = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "onnxruntime": ort.__version__,
        "median_us": medians,
        "raw_us": times,
        "load_before": load_before,
        "load_after": common.load_average(),
        "machine": common.machine_description(),
    }
    int8 = medians["int8 dynamic (MatMulInteger)"]
    lines = [
        f"# ONNX Runtime MatMul kernels by rows: a [{args.k}, {args.n}] weight",
        "",
        f"`python -m {__spec__.name} --k {args.k} --n {args.n} --rows "
        f"{' '.join(map(str, args.rows))}` — onnxruntime {ort.__version__}, {args.threads} "
        f"threads, {args.rounds} rounds, kernels interleaved, medians (µs per call; in "
        "brackets: time / dynamic int8's at the same rows).",
        "",
        "| kernel | " + " | ".join(f"M = {m}" for m in args.rows) + " |",
        "|---|" + "---:|" * len(args.rows),
    ]
    for name, per in medians.items():
        cells = [f"{per[m]:.0f} ({per[m] / int8[m]:.1f}×)" for m in args.rows]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    machine = report["machine"]
    lines += [
        "",
        f"Machine: {machine['cpu']['model']}, {machine['cpu']['usable_cores']} usable cores "
        f"({', '.join(machine['cpu'].get('flags', []))}); load average before / after: "
        f"{load_before} / {report['load_after']} (a shared machine: compare within a column).",
        "",
    ]
    common.write_report(
        args.out, f"matmul-kernels-by-rows-ort-{args.k}x{args.n}", report, "\n".join(lines)
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
