"""fst.runtime.huge_pages: which mappings are collapsed, and that collapsing really happens."""

from __future__ import annotations

import ctypes
import mmap
import sys
from pathlib import Path

import numpy as np
import pytest

from fst.runtime import huge_pages

SMAPS = """\
55bc019cc000-55bc01e00000 rw-p 00000000 00:00 0                          [heap]
Size:               4304 kB
Rss:                4300 kB
VmFlags: rd wr mr mw me ac
7ffbd5000000-7ffbd5a00000 rw-p 00000000 00:00 0
Size:              10240 kB
Rss:               10240 kB
7ffbe8000000-7ffbec000000 rw-p 00000000 00:00 0
Size:              65536 kB
Rss:                   0 kB
7ffbef000000-7ffbef400000 r--p 00000000 08:01 1234                       /usr/lib/libfoo.so
Size:               4096 kB
Rss:                4096 kB
7ffbf0000000-7ffbf0a00000 rw-p 00000000 08:01 99                         /tmp/data.bin
Size:              10240 kB
Rss:               10240 kB
7ffbf1000000-7ffbf1100000 rw-p 00000000 00:00 0
Size:               1024 kB
Rss:                1024 kB
7ffbf2000000-7ffbf2a00000 rw-p 00000000 00:00 0
Size:              10240 kB
Rss:               10240 kB
VmFlags: rd wr mr mw me ac nh
"""


def test_only_large_resident_anonymous_writable_mappings_are_chosen() -> None:
    regions = list(huge_pages._collapsible_regions(SMAPS))
    # The heap (4.2 MB resident) rounded inward to 2 MiB; the resident 10 MiB mapping whole.
    # Not chosen: the never-touched 64 MiB arena, a library, a file mapping, a 1 MiB block,
    # memory its owner asked to keep in small pages (MADV_NOHUGEPAGE: VmFlags "nh").
    assert regions == [(0x55BC01A00000, 0x55BC01E00000), (0x7FFBD5000000, 0x7FFBD5A00000)]


def _huge_bytes_of(start: int, end: int) -> int:
    """AnonHugePages of the mapping holding [start, end) in /proc/self/smaps."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and not fields[0].endswith(":"):
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            inside = lo <= start and end <= hi
        elif inside and fields[0] == "AnonHugePages:":
            return int(fields[1]) * 1024
    raise AssertionError("mapping not found")


def _private_anonymous(size: int) -> mmap.mmap:
    """Memory like malloc's (mmap's default, MAP_SHARED, would be shared memory)."""
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _kernel_has_madv_collapse() -> bool:
    probe = _private_anonymous(4 * huge_pages.HUGE_PAGE)
    probe.write(b"x" * len(probe))  # resident: only absent support can refuse it
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    address = ctypes.addressof(ctypes.c_char.from_buffer(probe))
    aligned = -(-address // huge_pages.HUGE_PAGE) * huge_pages.HUGE_PAGE
    ok = madvise(aligned, huge_pages.HUGE_PAGE, huge_pages.MADV_COLLAPSE) == 0
    errno = ctypes.get_errno()
    probe.close()
    return ok or errno != 22  # EINVAL: advice unknown to this kernel


LINUX = sys.platform.startswith("linux")


@pytest.mark.skipif(not LINUX, reason="Linux-only feature")
def test_a_refused_advice_collapses_nothing_and_raises_nothing(monkeypatch) -> None:
    # What a kernel without MADV_COLLAPSE does (EINVAL for unknown advice), on any kernel.
    monkeypatch.setattr(huge_pages, "MADV_COLLAPSE", 0x7FFF)
    region = _private_anonymous(16 << 20)
    region.write(b"x" * len(region))
    assert list(huge_pages._collapsible_regions(Path("/proc/self/smaps").read_text()))
    assert huge_pages.collapse_resident_memory() == 0  # every region tried, none collapsed
    region.close()


@pytest.mark.skipif(not LINUX, reason="Linux-only feature")
def test_resident_memory_is_collapsed_into_huge_pages_and_keeps_its_contents() -> None:
    if not _kernel_has_madv_collapse():
        pytest.skip("this kernel has no MADV_COLLAPSE (Linux >= 6.1) or THP is 'never'")
    size = 16 << 20
    region = _private_anonymous(size)
    data = np.frombuffer(region, dtype=np.float32)
    data[:] = np.arange(data.size, dtype=np.float32)  # resident, recognisable contents
    start = ctypes.addressof(ctypes.c_char.from_buffer(region))
    # Memory another library keeps in small pages must not stop the rest (the kernel refuses
    # MADV_COLLAPSE there with EINVAL, as it does everywhere when it lacks the advice).
    refused = _private_anonymous(size)
    refused.write(b"x" * size)
    refused.madvise(mmap.MADV_NOHUGEPAGE)
    done = huge_pages.collapse_resident_memory()
    assert done >= 14 << 20  # at least this mapping's 2 MiB-aligned inside
    assert _huge_bytes_of(start, start + size) >= 14 << 20
    np.testing.assert_array_equal(data[:5], [0, 1, 2, 3, 4])
    assert data[-1] == data.size - 1
    del data
    region.close()


def test_memory_mapped_before_the_session_is_left_alone() -> None:
    """With `since` (the mappings before the session was built), only what was mapped after
    is advised: the heap's growth, not its old part; a new mapping, not an old one."""
    heap_before = (0x55BC019CC000, 0x55BC01C00000)  # the heap ended here before the session
    old = (0x7FFBD5000000, 0x7FFBD5A00000)  # a mapping the program already had
    regions = list(huge_pages._collapsible_regions(SMAPS, since=[heap_before, old]))
    assert regions == [(0x55BC01C00000, 0x55BC01E00000)]
    assert list(huge_pages._collapsible_regions(SMAPS, since=[])) == list(
        huge_pages._collapsible_regions(SMAPS)
    )
    assert huge_pages._subtract((0, 100), [(10, 20), (50, 60), (90, 200)]) == [
        (0, 10),
        (20, 50),
        (60, 90),
    ]


@pytest.mark.skipif(not LINUX, reason="Linux-only feature")
def test_mapped_ranges_lists_this_process_mappings() -> None:
    region = _private_anonymous(4 * huge_pages.HUGE_PAGE)
    start = ctypes.addressof(ctypes.c_char.from_buffer(region))
    ranges = huge_pages.mapped_ranges()
    assert any(lo <= start < hi for lo, hi in ranges)
    region.close()


def test_sessions_advise_huge_pages_only_when_asked(monkeypatch, tiny_plain_bundle) -> None:
    """Library use (create_session, Generator.from_bundle) leaves the process's pages alone
    by default; huge_pages=True advises only what was mapped while the session was built."""
    from fst.runtime import Generator, session

    calls: list = []
    monkeypatch.setattr(session, "collapse_resident_memory", lambda since: calls.append(since))
    Generator.from_bundle(tiny_plain_bundle, threads=1)
    assert calls == []
    Generator.from_bundle(tiny_plain_bundle, threads=1, huge_pages=True)
    assert len(calls) == 1 and calls[0]  # the mappings before the session: left alone
