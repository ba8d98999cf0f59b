"""--resume_from continues in the checkpoint's own experiment folder."""

from __future__ import annotations

import json
import shutil

from conftest import tiny_train_args
from test_training import read_json_blocks

from fst.core.constants import CHECKPOINT_KEY
from fst.training.checkpoint import read_checkpoint
from fst.training.cli import build_parser, parse_args
from fst.training.trainer import resumed_experiment, run_training


def test_resume_continues_in_the_same_experiment_folder(tmp_path, tiny_checkpoint, capsys):
    # A copy of the fixture's experiment (tiny_v0, trained to step 6), so it stays read-only.
    root = tmp_path / "experiments"
    shutil.copytree(tiny_checkpoint.parent.parent, root / "tiny_v0")
    checkpoint = root / "tiny_v0" / "models" / "last.ckpt"
    args = tiny_train_args(tmp_path, resume_from=str(checkpoint), max_steps=9)
    assert run_training(args) == 0
    assert [p.name for p in root.iterdir()] == ["tiny_v0"]  # no tiny_v1
    folder = root / "tiny_v0"
    assert read_checkpoint(folder / "models" / "last.ckpt")[CHECKPOINT_KEY]["global_step"] == 9
    steps = [b["Global step"] for b in read_json_blocks(folder / "generated.txt")]
    assert steps == [3, 6, 9]  # the first run's samples, then the resumed run's
    description = json.loads((folder / "description.json").read_text())
    assert description["resumed"]["from"] == str(checkpoint)
    assert description["resumed"]["previous_run"]["arguments"]["max_steps"] == 6
    assert f"Experiment folder: {folder}" in capsys.readouterr().out


def test_the_folder_choice(tmp_path, tiny_checkpoint) -> None:
    own = tiny_checkpoint.parent.parent
    assert (
        resumed_experiment(tiny_train_args(tmp_path, resume_from=str(tiny_checkpoint))).dir == own
    )
    new = tiny_train_args(tmp_path, resume_from=str(tiny_checkpoint), resume_in_new_folder=True)
    assert resumed_experiment(new) is None  # a new <name>_v<N>, as before
    loose = tmp_path / "elsewhere" / "last.ckpt"  # not inside an experiment folder
    loose.parent.mkdir()
    shutil.copy(tiny_checkpoint, loose)
    assert resumed_experiment(tiny_train_args(tmp_path, resume_from=str(loose))) is None
    assert parse_args(["--resume_from", str(loose), "--resume_in_new_folder"]).resume_in_new_folder
    assert "--resume_in_new_folder" in build_parser().format_help()
