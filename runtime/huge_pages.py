"""Move the session's weights into 2 MiB pages (Linux, best effort; opt-in).

A batch-1 decode step streams every weight once. With 4 KiB pages that is a TLB miss every
4 KiB, and on a virtual machine each miss walks two page tables, so a session decodes
measurably faster once its weights sit in huge pages (benchmarks/latency/huge_pages.py,
benchmarks/results/huge-pages-decode-gpt2small-fst-epyc.md). ONNX Runtime has no option for it: its initializers and
pre-packed weights live in malloc'd memory. So once the session is built, we ask the kernel
to collapse large, resident, anonymous mappings into huge pages (`madvise(MADV_COLLAPSE)`,
Linux >= 6.1; it works whatever the system's transparent huge page mode, unless that mode
is "never"). Only mappings that are already (almost) fully resident are touched, so the
resident size does not grow. Any failure (another OS, an older kernel, a refusal) leaves
the pages as they were: only speed is at stake.

What the session owns is known only as "what was mapped while it was built": the caller
takes `mapped_ranges()` before building it and passes them as `since`, and only address
ranges mapped after that are advised (the part of the heap that grew included; memory the
program had before is left alone). Advising a program's own memory would be a surprising
side effect of loading a model, so the library leaves it off by default
(`create_session(huge_pages=False)`); the command-line tools and the server turn it on.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

HUGE_PAGE = 2 << 20
MADV_COLLAPSE = 25  # <linux/mman.h>; not in Python's mmap module before 3.13 (nor in every libc)
# Mappings smaller than this are not worth a look; less resident than this share are skipped.
MIN_MAPPING_BYTES = 4 << 20
MIN_RESIDENT_SHARE = 0.9


Range = tuple[int, int]


def mapped_ranges() -> list[Range]:
    """[start, end) of every mapping of this process now ([] where unknown): the `since` of
    a later `collapse_resident_memory`."""
    try:
        return [(m[0], m[1]) for m in _mappings(Path("/proc/self/smaps").read_text())]
    except OSError:
        return []


def collapse_resident_memory(since: Sequence[Range] | None = None) -> int:
    """Collapse large resident anonymous mappings of this process into huge pages; returns
    the bytes now in huge pages (0 where unsupported).

    `since`: `mapped_ranges()` taken before the memory to collapse was allocated; only
    addresses outside those ranges are advised. None: every such mapping of the process.
    """
    if not sys.platform.startswith("linux"):
        return 0
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
        regions = list(_collapsible_regions(Path("/proc/self/smaps").read_text(), since))
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


def _collapsible_regions(smaps: str, since: Sequence[Range] | None = None) -> Iterator[Range]:
    """2 MiB-aligned [start, end) of anonymous private read-write mappings (the heap included)
    of at least MIN_MAPPING_BYTES that are at least MIN_RESIDENT_SHARE resident, and whose
    owner did not ask for small pages (madvise MADV_NOHUGEPAGE: VmFlags "nh"); without the
    addresses in the ranges `since`."""
    for start, end, perms, path, rss, flags in _mappings(smaps):
        if perms != "rw-p" or path not in ("", "[heap]") or "nh" in flags:
            continue
        if end - start < MIN_MAPPING_BYTES or rss < MIN_RESIDENT_SHARE * (end - start):
            continue
        for lo, hi in _subtract((start, end), since or ()):
            lo = -(-lo // HUGE_PAGE) * HUGE_PAGE
            hi = hi // HUGE_PAGE * HUGE_PAGE
            if hi > lo:
                yield lo, hi


def _subtract(span: Range, ranges: Sequence[Range]) -> list[Range]:
    """The parts of `span` outside every range of `ranges`."""
    parts = [span]
    for lo, hi in ranges:
        parts = [
            piece
            for start, end in parts
            for piece in ((start, min(end, lo)), (max(start, hi), end))
            if piece[1] > piece[0]
        ]
    return parts


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
