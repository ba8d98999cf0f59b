"""Resident memory of this process (Linux /proc; None elsewhere).

Export memory is what decides which model sizes a machine can export, so every stage logs
its RSS and the peak so far. `reset_peak` starts a new high-water mark for a measurement
(tests); it also resets what the parent's `wait4`/`time -v` would report as this process's
peak, so the exporter itself never calls it.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_mb(field: str) -> float | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    """Resident memory now, in MB."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float | None:
    """Peak resident memory since the process started or the last `reset_peak()`, in MB."""
    return _status_mb("VmHWM")


def reset_peak() -> bool:
    """Start a new high-water mark at the current RSS; False where the kernel refuses."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc `malloc_trim`), so a
    stage that frees a model really lowers the RSS the next stage starts from."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)
