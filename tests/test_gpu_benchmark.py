"""benchmarks/gpu/run.py and the device scripts, checked without a GPU.

The GPU figures themselves need a lent device (benchmarks/gpu/transfer.md); here: argument
validation, the goal arithmetic on hand-computed figures, the report rendering, the shell
scripts' syntax, and (slow) the whole script in --dry-run mode on a tiny model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu import run as gpu

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu.run", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_help_and_bad_arguments_exit_cleanly() -> None:
    assert run_script("--help").returncode == 0
    for args, message in [
        (["--batches", "0"], "--batches"),
        (["--models", "huge"], "--models"),
        (["--xl-layers", "many"], "--xl-layers"),
        (["--new-tokens", "2"], "--new-tokens"),
    ]:
        with pytest.raises(ValueError, match=message):
            gpu.parse_args(args)
    done = run_script("--batches", "0")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0  # one line


def test_without_cuda_it_says_so_in_one_line() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the check under test does not trigger")
    done = run_script("--models", "small")
    assert (
        done.returncode == 2 and "no CUDA device" in done.stderr and "Traceback" not in done.stderr
    )


def timings(**cells: float) -> dict:
    """{'engine:batch': decode ms} -> the report's timings table."""
    table: dict = {}
    for key, ms in cells.items():
        engine, batch = key.rsplit("_b", 1)
        table.setdefault(engine, {})[batch] = {
            "decode_ms_per_step": ms,
            "tokens_per_s": int(batch) / ms * 1e3,
        }
    return table


def test_goals_from_hand_computed_figures() -> None:
    models = {
        "small": {"timings": timings(fst_b1=1.5, hf_eager_b1=10.0, fst_b64=4.0, hf_static_b64=8.0)},
        "xl": {"timings": timings(fst_b1=3.0), "weight_bytes": 3_000_000_000},
    }
    g = gpu.goals(models, bandwidth_gbs=4000.0)  # read + write: 2000 GB/s of reads
    assert g["small_b1_vs_hf_eager"]["value"] == pytest.approx(0.15)
    assert g["small_b64_tps_vs_hf_static"]["value"] == pytest.approx(2.0)  # 16000 / 8000 tok/s
    assert models["xl"]["floor_ms_per_step"] == pytest.approx(1.5)  # 3 GB at 2 TB/s
    assert g["xl_b1_vs_floor"]["value"] == pytest.approx(2.0)
    assert g["met"] == {
        "small_b1_vs_hf_eager": True,
        "small_b64_tps_vs_hf_static": True,
        "xl_b1_vs_floor": True,
    }
    missing = gpu.goals({"small": {"timings": timings(fst_b1=1.0)}}, bandwidth_gbs=4000.0)
    assert missing["small_b1_vs_hf_eager"]["value"] is None
    assert not any(missing["met"].values())


def test_xl_depth_fits_the_time_left() -> None:
    settings = gpu.parse_args([])
    small = {"build_s": 10.0, "export_s": 30.0}  # 40 s for GPT-2 small's parameters
    assert gpu.xl_layers(settings, small, left_s=10_000)[0] == 48
    layers, why = gpu.xl_layers(settings, small, left_s=400)
    assert layers in (6, 12, 24, 36) and "estimated" in why
    assert gpu.xl_layers(settings, small, left_s=1)[0] is None  # skipped, not cut off
    assert gpu.xl_layers(gpu.parse_args(["--xl-layers", "12"]), small, left_s=1) == (
        12,
        "asked for",
    )


class FakeEngine:
    """Steps of a fixed length; fails at the batch sizes it is told to."""

    def __init__(self, step_s: float, fails_at: tuple[int, ...] = ()) -> None:
        self.step_s, self.fails_at = step_s, fails_at

    def run(self, prompts, new_tokens):
        if len(prompts) in self.fails_at:
            raise RuntimeError("no kernel for this shape")
        return {"ttft_s": 0.5, "step_s": [self.step_s] * (new_tokens - 1), "tokens": None}


def test_measure_keeps_the_other_engines_when_one_fails() -> None:
    settings = gpu.parse_args(["--batches", "1,4", "--new-tokens", "4", "--rounds", "2"])
    engines = {
        "fst": FakeEngine(0.002),
        "hf_eager": FakeEngine(0.010, fails_at=(4,)),
        "hf_static": FakeEngine(0.005),
    }
    table = gpu.measure(engines, settings.batches, settings, compile_batches=[4])
    assert table["fst"]["4"]["decode_ms_per_step"] == pytest.approx(2.0)
    assert table["fst"]["4"]["tokens_per_s"] == pytest.approx(2000.0)
    assert table["fst"]["1"]["steps_timed"] == 2 * 3 and table["fst"]["1"]["ttft_ms"] == 500
    assert set(table["hf_eager"]) == {"1"} and set(table["hf_static"]) == {"4"}
    assert "no kernel" in table["errors"]["hf_eager@4"]
    assert "FAILED hf_eager@4" in gpu.markdown(
        {
            "environment": {"onnxruntime": "x", "providers": [], "torch": "x", "torch_cuda": None},
            "dry_run": True, "command": "c", "copy_bandwidth_gbs": 1.0, "complete": False,
            "settings": {"prompt_len": 32, "new_tokens": 4, "rounds": 2}, "notes": [],
            "models": {"small": {
                "shape": gpu.SMALL, "weight_bytes": 2**20, "export_s": 1.0,
                "parity": {"passed": True}, "fst_provider": "CPUExecutionProvider",
                "timings": table,
            }},
        }
    )  # fmt: skip


def test_shell_scripts_parse() -> None:
    for script in ("prepare_wheel.sh", "device.sh"):
        done = subprocess.run(["bash", "-n", str(BENCH / "gpu" / script)], capture_output=True)
        assert done.returncode == 0, done.stderr
    usage = subprocess.run(["bash", str(BENCH / "gpu" / "device.sh")], capture_output=True)
    assert usage.returncode == 2


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path: Path) -> None:
    """The whole script on a tiny model, CPU only: export, parity, three engines, report."""
    out = tmp_path / "out"
    done = run_script(
        "--dry-run", "--models", "small", "--batches", "1,2", "--new-tokens", "4",
        "--rounds", "1", "--compile-batches", "1",
        "--work-dir", str(tmp_path / "work"), "--out-dir", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "gpu.json").read_text())
    small = report["models"]["small"]
    assert report["dry_run"] and report["complete"]
    assert small["parity"]["passed"] and small["cpu_parity"]["passed"]
    assert set(small["timings"]) == {"fst", "hf_eager", "hf_static"}
    assert set(small["timings"]["fst"]) == {"1", "2"} and set(small["timings"]["hf_static"]) == {
        "1"
    }
    assert "DRY RUN" in (out / "gpu.md").read_text()
