"""The bandwidth floor of a batch-1 decode step, measured the way an engine reads weights.

A batch-1 decode step reads every weight once, so no engine can beat weight bytes / read
bandwidth. The bandwidth must therefore be the best the machine gives to a reader that works
like an inference engine: every core (the benchmark's thread count), streaming reads of a
buffer far larger than the caches, huge pages where the OS allows them. One method rarely
reaches it (numpy's sum is single-threaded, BLAS gemv is not tuned for it), so several run
and the best one counts:

- `numpy_*`: numpy sum, a max over `threads` slices in threads, a BLAS matrix-vector product;
- `c_stream`: a small OpenMP C loop (8 independent AVX accumulators, -O3 -march=native),
  compiled with `cc` when there is one;
- `ort_matmul`: ONNX Runtime itself on a MatMul-only graph shaped like GPT-2's MLP, loaded
  with our runtime's session settings (threads, huge pages): the kernels a decode step uses.
  Every matrix holds different values (ONNX Runtime shares equal initializers).

A floor that an engine beats is not a floor: `cap_floors` lowers it to what the fastest
engine demonstrably achieved, and says so.

    python -m benchmarks.latency.floor --threads 2   # prints the measurement as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks import common

C_STREAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <omp.h>

/* Streaming read of a large float buffer by every OpenMP thread; prints the best GB/s. */
int main(int argc, char **argv) {
    size_t bytes = (size_t)atol(argv[1]) << 20;
    int repeats = atoi(argv[2]);
    size_t n = bytes / sizeof(float);
    float *a = aligned_alloc(1 << 21, bytes);
    if (!a) return 1;
    madvise(a, bytes, MADV_HUGEPAGE);
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) a[i] = 1.0f;  /* first touch by the thread that reads */
    double best = 1e30, check = 0;
    for (int r = 0; r < repeats; r++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        double total = 0;
        #pragma omp parallel reduction(+:total)
        {
            float acc[64] = {0};  /* 8 AVX registers: independent adds hide their latency */
            #pragma omp for schedule(static)
            for (size_t i = 0; i < n; i += 64)
                for (int j = 0; j < 64; j++) acc[j] += a[i + j];
            for (int j = 0; j < 64; j++) total += acc[j];
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double dt = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
        if (dt < best) best = dt;
        check += total;
    }
    printf("%.4f %.1f\n", bytes / best / 1e9, check);  /* the sum keeps the loop alive */
    return 0;
}
"""


def _timed_gbs(nbytes: int, fn: Callable[[], object], repeats: int) -> float:
    def once() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    fn()  # warm-up: thread pools, page faults
    return nbytes / common.best_of(once, repeats) / 1e9


def numpy_gbs(size_mb: int, threads: int, repeats: int) -> dict[str, float]:
    """numpy sum (1 thread), max over `threads` slices in threads, BLAS gemv."""
    import numpy as np

    data = np.ones(size_mb * 1024 * 1024 // 4, dtype=np.float32)  # written: pages resident
    matrix, vector = data.reshape(-1, 1024), np.ones(1024, dtype=np.float32)
    parts = np.array_split(data, threads)
    with ThreadPoolExecutor(threads) as pool:
        return {
            "numpy_sum_1_thread": _timed_gbs(data.nbytes, data.sum, repeats),
            f"numpy_max_{threads}_threads": _timed_gbs(
                data.nbytes, lambda: list(pool.map(np.max, parts)), repeats
            ),
            "numpy_blas_gemv": _timed_gbs(data.nbytes, lambda: matrix @ vector, repeats),
        }


def c_stream_gbs(size_mb: int, threads: int, repeats: int) -> dict[str, float]:
    """The OpenMP C loop; empty when there is no C compiler or OpenMP."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return {}
    with tempfile.TemporaryDirectory(prefix="fst-floor-") as tmp:
        src, exe = Path(tmp) / "stream.c", Path(tmp) / "stream"
        src.write_text(C_STREAM)
        flags = ["-O3", "-march=native", "-fopenmp", "-ffast-math"]
        built = subprocess.run([cc, *flags, str(src), "-o", str(exe)], capture_output=True)
        if built.returncode != 0:
            return {}
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_PROC_BIND="spread")
        out = subprocess.run(
            [str(exe), str(size_mb), str(repeats)], env=env, capture_output=True, text=True
        )
        if out.returncode != 0:
            return {}
        return {"c_stream": float(out.stdout.split()[0])}


def matmul_chain(size_mb: int, seed: int = 0):
    """An ONNX MatMul chain shaped like GPT-2's MLP (768 → 3072 → 768, ...) with about
    `size_mb` of fp32 weights, every matrix different.

    Distinct values matter: ONNX Runtime shares initializers that are equal, so a chain of
    identical matrices reads one pair from the L3 cache over and over (an earlier version
    did, and "measured" 126-153 GB/s on a machine whose cores stream 35 GB/s).
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    d, hidden = 768, 3072
    pairs = max(1, size_mb * 1024 * 1024 // (2 * d * hidden * 4))
    rng = np.random.default_rng(seed)
    nodes, weights, x = [], [], "x"
    for i in range(2 * pairs):
        k, n = (d, hidden) if i % 2 == 0 else (hidden, d)
        # Uniform on [0, 2/k): mean 1/k keeps activations near 1 (no overflow, no denormals).
        w = rng.random((k, n), dtype=np.float32) * np.float32(2.0 / k)
        weights.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"]))
        x = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "matmul_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, d])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, d])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def ort_matmul_gbs(size_mb: int, threads: int, repeats: int) -> dict[str, float]:
    """ONNX Runtime on `matmul_chain`, with our runtime's session settings: the weight bytes
    over the best time of one run."""
    import numpy as np
    import onnx

    from fst.runtime.session import create_session

    model = matmul_chain(size_mb)
    weight_bytes = sum(np.prod(w.dims) * 4 for w in model.graph.initializer)
    d = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    with tempfile.TemporaryDirectory(prefix="fst-floor-") as tmp:
        path = Path(tmp) / "chain.onnx"
        onnx.save_model(model, path, save_as_external_data=True, location="chain.onnx.data")
        del model
        session, _ = create_session(path, providers=["cpu"], threads=threads, huge_pages=True)
    feed = {"x": np.ones((1, d), np.float32)}
    return {"ort_matmul": _timed_gbs(int(weight_bytes), lambda: session.run(None, feed), repeats)}


def measure_here(size_mb: int, threads: int, repeats: int) -> dict[str, Any]:
    """Every method in this process (the numpy/ORT thread counts are set by the caller)."""
    by_method = {
        **numpy_gbs(size_mb, threads, repeats),
        **c_stream_gbs(size_mb, threads, repeats),
        **ort_matmul_gbs(size_mb, threads, repeats),
    }
    best = max(by_method, key=by_method.__getitem__)
    return {
        "bandwidth_gbs_by_method": by_method,
        "bandwidth_gbs": by_method[best],
        "best_method": best,
        "matmul_gflops": common.matmul_gflops(1024, repeats),
        "threads": threads,
        "array_mb": size_mb,
    }


def measure_floors(threads: int, size_mb: int = 1024, repeats: int = 5) -> dict[str, Any]:
    """`measure_here` in a fresh process: BLAS reads its thread count at import, and the
    large buffers must not inflate the caller's peak RSS."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    cmd = [
        sys.executable,
        "-m",
        __spec__.name,
        "--threads",
        str(threads),
        "--size-mb",
        str(size_mb),
    ]
    out = subprocess.run(
        [*cmd, "--repeats", str(repeats)], env=env, capture_output=True, text=True, cwd=common.REPO
    )
    if out.returncode != 0:
        tail = "\n".join(out.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"floor measurement failed (exit {out.returncode}): {tail}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cap_floors(
    floor_ms: dict[str, float], fastest_ms: dict[str, tuple[str, float]]
) -> tuple[dict[str, float], dict[str, str]]:
    """Floors no engine beats: each precision's floor lowered to its fastest engine's time.

    `fastest_ms` maps a precision to (engine, its best measured decode ms). Returns the
    floors and, for each one lowered, a sentence saying by whom.
    """
    capped, notes = dict(floor_ms), {}
    for precision, (engine, ms) in fastest_ms.items():
        if precision in capped and ms < capped[precision]:
            notes[precision] = (
                f"{engine} decoded in {ms:.2f} ms, under the {capped[precision]:.2f} ms "
                "bandwidth floor: the floor is its time"
            )
            capped[precision] = ms
    return capped, notes


def main() -> None:
    p = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}",
        description="Measure the read-bandwidth floor (several methods).",
    )
    p.add_argument("--size-mb", type=int, default=1024, help="buffer size, far above the caches")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    print(json.dumps(measure_here(a.size_mb, a.threads, a.repeats)))


if __name__ == "__main__":
    main()
