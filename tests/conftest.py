"""Shared fixtures. Tests use tiny models built from configs and never the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()
GPT2_BPE = SHARED_DATA / "gpt2_bpe"
NIETZSCHE = SHARED_DATA / "nietzsche"


def pytest_collection_modifyitems(config, items):
    """Slow tests run only when FST_RUN_SLOW=1 (CI sets it when time allows)."""
    if os.environ.get("FST_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set FST_RUN_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def gpt2_bpe_dir() -> Path:
    if not (GPT2_BPE / "vocab.json").is_file():
        pytest.fail(f"shared GPT-2 tokenizer files missing at {GPT2_BPE}")
    return GPT2_BPE


@pytest.fixture(scope="session")
def nietzsche_dir() -> Path:
    if not (NIETZSCHE / "train.documents").is_file():
        pytest.fail(f"shared Nietzsche corpus missing at {NIETZSCHE}")
    return NIETZSCHE
