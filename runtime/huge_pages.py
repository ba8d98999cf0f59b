"""Move the session's weights into 2 MiB pages (Linux, best effort).

A batch-1 decode step streams every weight once. With 4 KiB pages that is a TLB miss every
4 KiB, and on a virtual machine each miss walks two page tables: measured here (2-core KVM
guest, GPT-2 small), the same session decodes 10-12% faster in int8 and 6-11% faster in fp32
once its weights sit in huge pages. ONNX Runtime has no option for it: its initializers and
pre-packed weights live in malloc'd memory. So once the session is built, we ask the kernel
to collapse the large, resident, anonymous mappings of the process into huge pages
(`madvise(MADV_COLLAPSE)`, Linux >= 6.1; it works whatever the system's transparent huge
page mode, unless that mode is "never"). Only mappings that are already (almost) fully
resident are touched, so the resident size does not grow. Any failure (another OS, an older
kernel, a refusal) leaves the pages as they were: only speed is at stake.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

HUGE_PAGE = 2 << 20
MADV_COLLAPSE = 25  # <linux/mman.h>; not in Python's mmap module before 3.13 (nor in every libc)
# Mappings smaller than this are not worth a look; less resident than this share are skipped.
MIN_MAPPING_BYTES = 4 << 20
MIN_RESIDENT_SHARE = 0.9


def collapse_resident_memory() -> int:
    """Collapse the large resident anonymous mappings of this process into huge pages;
    returns the bytes now in huge pages (0 where unsupported)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
        regions = list(_collapsible_regions(Path("/proc/self/smaps").read_text()))
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    done = 0
    for start, end in regions:  # each is tried: one refusal (EINVAL, ENOMEM...) stops nothing
        if madvise(start, end - start, MADV_COLLAPSE) == 0:
            done += end - start
    if done:
        log.info("weights in huge pages: %.0f MB", done / 2**20)
    return done


def _collapsible_regions(smaps: str) -> Iterator[tuple[int, int]]:
    """2 MiB-aligned [start, end) of anonymous private read-write mappings (the heap included)
    of at least MIN_MAPPING_BYTES that are at least MIN_RESIDENT_SHARE resident, and whose
    owner did not ask for small pages (madvise MADV_NOHUGEPAGE: VmFlags "nh")."""
    for start, end, perms, path, rss, flags in _mappings(smaps):
        if perms != "rw-p" or path not in ("", "[heap]") or "nh" in flags:
            continue
        if end - start < MIN_MAPPING_BYTES or rss < MIN_RESIDENT_SHARE * (end - start):
            continue
        lo = -(-start // HUGE_PAGE) * HUGE_PAGE
        hi = end // HUGE_PAGE * HUGE_PAGE
        if hi > lo:
            yield lo, hi


def _mappings(smaps: str) -> Iterator[tuple[int, int, str, str, int, list[str]]]:
    """(start, end, perms, path, resident bytes, VmFlags) of each mapping in
    /proc/<pid>/smaps text."""
    current: list | None = None
    for line in smaps.splitlines():
        fields = line.split()
        if not fields:
            continue
        if "-" in fields[0] and not fields[0].endswith(":"):
            if current is not None:
                yield tuple(current)
            start, end = (int(x, 16) for x in fields[0].split("-"))
            current = [start, end, fields[1], fields[5] if len(fields) > 5 else "", 0, []]
        elif fields[0] == "Rss:" and current is not None:
            current[4] = int(fields[1]) * 1024
        elif fields[0] == "VmFlags:" and current is not None:
            current[5] = fields[1:]
    if current is not None:
        yield tuple(current)
