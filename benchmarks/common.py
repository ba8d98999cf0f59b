"""What every benchmark needs: a machine description, robust statistics, the matmul floor.

Torch-free on purpose: the runtime's benchmark worker imports this module and must not pay
for (or be measured with) torch in its memory. The matmul speed (numpy) bounds prefill;
the read-bandwidth floor of decode has its own module, benchmarks/latency/floor.py.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from fst.core.versions import library_versions

# The repository root. A benchmark that starts another as a process runs it as
# `python -m benchmarks....` here, so the child imports the package without path edits.
REPO = Path(__file__).resolve().parents[1]

# Distributions whose versions explain a figure (fst.core.versions: the installed ones).
LIBRARIES = (
    "numpy",
    "onnxruntime",
    "onnx",
    "torch",
    "transformers",
    "tokenizers",
    "ctranslate2",
    "pytorch-lightning",
    "full-stack-transformer",
)

# CPU flags that decide which kernels ONNX Runtime, PyTorch and CTranslate2 can use.
INTERESTING_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
)


# --- statistics ---------------------------------------------------------------------------


def summarize(values: Iterable[float]) -> dict[str, float | int]:
    """Median, min and max (and n): medians resist the noise of a shared machine."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("summarize: no values")
    return {
        "median": statistics.median(xs),
        "min": min(xs),
        "max": max(xs),
        "n": len(xs),
    }


def median(values: Iterable[float]) -> float:
    return float(summarize(values)["median"])


def best_of(fn: Callable[[], float], repeats: int) -> float:
    """The smallest of `repeats` timings: for floors, the least-disturbed run is the truth."""
    return min(fn() for _ in range(repeats))


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either side is missing (an engine not installed)."""
    if a is None or b is None or b == 0:
        return None
    return a / b


# --- machine description ------------------------------------------------------------------


def cpu_info(path: str = "/proc/cpuinfo") -> dict[str, Any]:
    """CPU model and the flags that matter for inference kernels (Linux; empty elsewhere)."""
    model, flags = "", set()
    try:
        text = Path(path).read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return {
        "model": model or platform.processor() or "unknown",
        "flags": [f for f in INTERESTING_FLAGS if f in flags],
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }


def ram_gb(path: str = "/proc/meminfo") -> float | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def load_average() -> list[float] | None:
    """1/5/15-minute load: a busy shared machine shows here, and explains noisy figures."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_description() -> dict[str, Any]:
    return {
        "cpu": cpu_info(),
        "ram_gb": ram_gb(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "libraries": library_versions(LIBRARIES),
        "load_average": load_average(),
    }


# --- physical floors ----------------------------------------------------------------------


def proc_mb(path: str, field: str) -> float | None:
    """A kB field of a /proc file (e.g. VmHWM of /proc/self/status), in MB; None when the
    file or the field is missing (not Linux, older kernel)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB.

    VmHWM from /proc/self/status on Linux: ru_maxrss would be wrong for a worker, since Linux
    carries the parent's peak across fork and exec (a child started by a process holding
    torch would report torch's memory).
    """
    peak = proc_mb("/proc/self/status", "VmHWM")
    if peak is not None:
        return peak
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 1024**2


def matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of an n×n @ n×n numpy matmul: the compute ceiling for prefill.

    numpy's BLAS picks its thread count at import (OPENBLAS_NUM_THREADS / OMP_NUM_THREADS),
    so callers who care run this in a process started with those set (see
    `floor.measure_floors`).
    """
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: BLAS thread pool and page faults

    def once() -> float:
        start = time.perf_counter()
        a @ b
        return time.perf_counter() - start

    return 2 * n**3 / best_of(once, repeats) / 1e9


# --- output -------------------------------------------------------------------------------


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a temp file beside `path`, then rename: a crash never leaves half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(out_dir: Path, name: str, report: dict, markdown: str) -> None:
    """NAME.json (the report) and NAME.md (its rendering) in `out_dir`, each atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / f"{name}.json", json.dumps(report, indent=2) + "\n")
    write_atomic(out_dir / f"{name}.md", markdown)


def fmt(value: float | None, digits: int = 1) -> str:
    """A table cell: '–' for a missing figure (engine absent), fixed digits otherwise."""
    return "–" if value is None else f"{value:.{digits}f}"
