"""DataLoader workers that die with the training process (Linux), torch-free.

torch's worker watchdog notices a dead parent only between batches, every 5 s: a worker busy
collating outlived a SIGKILLed fst-train by seconds. The kernel can kill it instead, the
moment its parent dies (prctl PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> bool:
    """Linux: have the kernel SIGKILL this process when its parent dies; False elsewhere.

    If the parent already died before the call (a race at fork), exit now.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    if prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    if os.getppid() != parent_pid:
        os._exit(1)
    return True


class WorkerInit:
    """DataLoader `worker_init_fn`: die with the training process, then Lightning's worker
    seeding (which Lightning adds only to loaders without a worker_init_fn of their own)."""

    def __init__(self, rank: int = 0) -> None:
        self.parent_pid = os.getpid()
        self.rank = rank

    def __call__(self, worker_id: int) -> None:
        die_with_parent(self.parent_pid)
        if int(os.environ.get("PL_SEED_WORKERS", 0)):
            from lightning_fabric.utilities.seed import pl_worker_init_function

            pl_worker_init_function(worker_id, rank=self.rank)
