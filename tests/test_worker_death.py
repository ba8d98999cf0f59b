"""DataLoader workers die with a SIGKILLed training process at once.

torch's own watchdog notices a dead parent only between batches, every 5 s; a worker busy
with a batch outlived fst-train by 1-7 s. `fst.training.worker_init.WorkerInit` asks the kernel instead.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fst.training.worker_init import WorkerInit

# Two workers stuck in a slow batch (as a worker collating a large batch would be).
SCRIPT = """
import os, sys, time
import torch.utils.data as data
from fst.training.worker_init import WorkerInit

class Slow(data.Dataset):
    def __len__(self):
        return 100
    def __getitem__(self, i):
        if i >= 2:
            time.sleep(120)
        return i

loader = data.DataLoader(Slow(), batch_size=1, num_workers=2, worker_init_fn=WorkerInit())
batches = iter(loader)
next(batches), next(batches)  # both workers run; now each is inside a 120 s batch
print("ready", flush=True)
time.sleep(600)
"""


def _children(pid: int) -> set[int]:
    """Live (non-zombie) processes whose parent is `pid`."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_busy_with_a_batch_die_with_a_sigkilled_parent() -> None:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, text=True)
    workers: set[int] = set()
    try:
        assert proc.stdout.readline().strip() == "ready"
        workers = _children(proc.pid)
        assert len(workers) == 2
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 2.0  # the old watchdog would wait out the 120 s batch
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [w for w in workers if _alive(w)]
    finally:
        for pid in [proc.pid, *workers]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_the_training_loaders_use_it() -> None:
    from fst.core.documents import Document
    from fst.core.tokenization import DocumentTokenizer
    from fst.training.data import DocumentDataModule

    tokenizer = DocumentTokenizer.gpt2()
    docs = [Document("a cat"), Document("a dog")]
    data = DocumentDataModule(tokenizer, docs, docs, batch_size=1, num_workers=1)
    for loader in (data.train_dataloader(), data.val_dataloader()):
        assert isinstance(loader.worker_init_fn, WorkerInit)
        assert loader.worker_init_fn.parent_pid == os.getpid()
