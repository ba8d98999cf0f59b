"""End-to-end training: experiment folder, checkpoint contract, resume, CLI errors, workers.

Runs are tiny (2 layers, n_embd 32, BPE of ~300 tokens, a few steps; see conftest).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import run_tiny_training, tiny_train_args, write_tiny_documents

from fst.core.constants import CHECKPOINT_KEY
from fst.training.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from fst.training.cli import TrainArgs, main, parse_args
from fst.training.experiment import create_experiment, experiment_logging

FST_TRAIN = str(Path(sys.executable).parent / "fst-train")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models: intra-op threads only add overhead, a lot of it on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def experiment_of(checkpoint: Path) -> Path:
    return checkpoint.parent.parent


def read_json_blocks(path: Path) -> list[dict]:
    """generated.txt is a sequence of indented JSON objects (the original's format)."""
    text, decoder, blocks, pos = path.read_text(), json.JSONDecoder(), [], 0
    while pos < len(text):
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos < len(text):
            block, pos = decoder.raw_decode(text, pos)
            blocks.append(block)
    return blocks


def scalars(experiment: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(experiment / "logs" / "tensorboard"))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


def child_pids() -> set[int]:
    """Live children of this process, read from /proc (no psutil)."""
    me, pids = os.getpid(), set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            after_name = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(after_name[1]) == me:
            pids.add(int(stat.parent.name))
    return pids


# ---- the experiment folder and the checkpoint --------------------------------------------


def test_experiment_folder_contents(tiny_checkpoint):
    folder = experiment_of(tiny_checkpoint)
    assert folder.name == "tiny_v0"
    description = json.loads((folder / "description.json").read_text())
    assert description["arguments"]["batch_size"] == 4
    assert description["arguments"]["model_path"] == "tiny"
    assert {"fst", "torch", "transformers", "pytorch_lightning"} <= set(description["versions"])
    assert description["model_config"]["n_embd"] == 32
    for name in ("debug.log", "info.log", "errors.log"):
        assert (folder / "logs" / name).is_file()
    info_log = (folder / "logs" / "info.log").read_text()
    assert "Training a byte-level BPE" in info_log and "DEBUG" not in info_log
    assert "DEBUG" in (folder / "logs" / "debug.log").read_text()
    assert list((folder / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert "[START_OF_DOCUMENT]" in (folder / "tokenizer.json").read_text()
    models = sorted(p.name for p in (folder / "models").iterdir())
    assert "last.ckpt" in models
    best = [m for m in models if m.startswith("best-")]
    assert len(best) == 1, models
    # The best checkpoint is the validation with the lowest perplexity (LM loss only).
    perplexity = scalars(folder, "Perplexity/valid")
    best_step = min(perplexity, key=perplexity.get) + 1  # TensorBoard logs global_step - 1
    assert best[0].endswith(f"-step={best_step}.ckpt"), (best, perplexity)


def test_generated_samples_follow_the_original_format(tiny_checkpoint):
    blocks = read_json_blocks(experiment_of(tiny_checkpoint) / "generated.txt")
    assert [b["Global step"] for b in blocks] == [3, 6]  # every validation (val_check_interval 3)
    for block in blocks:
        assert list(block) == [
            "Global step",
            "Current epoch",
            "Generator params",
            "Generated samples",
        ]
        assert block["Generator params"]["num_return_sequences"] == 4
        assert len(block["Generated samples"]) == 4
        assert all(isinstance(s, str) for s in block["Generated samples"])


def test_logged_metrics_and_learning_rate_schedule(tiny_checkpoint):
    transformers = pytest.importorskip("transformers")
    folder = experiment_of(tiny_checkpoint)
    for tag in ("Loss/train", "LM-Loss/train", "Loss/valid", "LM-Loss/valid", "Perplexity/valid"):
        assert scalars(folder, tag), tag
    perplexity, lm_valid = scalars(folder, "Perplexity/valid"), scalars(folder, "LM-Loss/valid")
    step = max(perplexity)
    # One validation batch: the token-weighted perplexity is exp of its LM loss.
    assert perplexity[step] == pytest.approx(torch.tensor(lm_valid[step]).exp().item(), rel=1e-4)

    # LR at step k follows transformers' cosine-with-hard-restarts schedule (warmup 1, 6 steps).
    peak = json.loads((folder / "description.json").read_text())["arguments"]["learning_rate"]
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    schedule = transformers.get_cosine_with_hard_restarts_schedule_with_warmup(
        optimizer, num_warmup_steps=1, num_training_steps=6, num_cycles=1
    )
    expected = {}
    for k in range(6):
        expected[k] = schedule.get_last_lr()[0]
        optimizer.step()
        schedule.step()
    logged = scalars(folder, "LR")
    assert sorted(logged) == list(range(6))
    for k, lr in logged.items():
        assert lr == pytest.approx(expected[k], rel=1e-5, abs=1e-12)


def test_training_reduces_the_loss(tiny_checkpoint):
    valid = scalars(experiment_of(tiny_checkpoint), "Loss/valid")  # after steps 3 and 6
    untrained = torch.tensor(300.0).log().item()  # ~ uniform over the 300-token vocabulary
    first, last = (valid[step] for step in sorted(valid))
    assert last < first < untrained and last < untrained - 0.5, valid


def test_a_few_steps_reduce_lm_plus_unlikelihood_loss():
    """Model + loss alone: ten AdamW steps on one batch cut the total loss."""
    from fst.core.tokenization import Encoding
    from fst.training.data import Collate
    from fst.training.loss import language_model_losses
    from fst.training.model import build_model

    torch.manual_seed(0)
    model = build_model("tiny", vocab_size=50, overrides={"n_layer": 1, "n_embd": 32})
    batch = Collate(0)(
        [Encoding(list(range(3, 19)), list(range(3, 19))), Encoding([5, 6, 5, 6], [5, 6, 5, 6])]
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        out = language_model_losses(logits, batch["labels"], unlikelihood_alpha=1.0)
        losses.append(out.loss.item())
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert losses[-1] < losses[0] - 1.0, losses


def test_checkpoint_holds_the_fst_contract(tiny_checkpoint):
    raw = read_checkpoint(tiny_checkpoint)
    info = raw[CHECKPOINT_KEY]
    assert info["format_version"] == 1
    assert info["model_type"] == "gpt2"
    assert info["model_config"]["n_layer"] == 2
    assert info["global_step"] == 6
    assert set(info["document"]) >= {
        "document_format",
        "max_meta_len",
        "max_body_len",
        "ignore_meta_prob",
    }
    assert info["training_args"]["max_steps"] == 6
    json.dumps(info)  # plain data only
    assert all(k.startswith("model.") for k in raw["state_dict"])

    loaded = load_checkpoint(tiny_checkpoint)
    assert not loaded.model.training
    for name, tensor in loaded.model.state_dict().items():
        torch.testing.assert_close(tensor, raw["state_dict"]["model." + name])
    assert loaded.tokenizer.to_json() == info["tokenizer_json"]
    assert loaded.tokenizer.vocab_size == loaded.model.config.vocab_size == 300
    assert loaded.tokenizer.settings()["ignore_meta_prob"] == 0.0
    # The rebuilt model runs and gives finite logits.
    ids = torch.tensor([loaded.tokenizer.encode_for_inference("The cat")])
    assert torch.isfinite(loaded.model(input_ids=ids).logits).all()


def test_checkpoint_errors(tmp_path, tiny_checkpoint):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.ckpt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not an fst checkpoint"):
        load_checkpoint(foreign)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(truncated)


def test_last_checkpoint_is_the_end_of_training_not_the_last_improvement(tmp_path):
    # Validations at steps 3 and 6, training ends at 7: last.ckpt must hold step 7 (Lightning's
    # own save_last would keep the step of the last saved top-k checkpoint).
    result = run_tiny_training(tmp_path, max_steps=7)
    assert read_checkpoint(result.last_checkpoint)[CHECKPOINT_KEY]["global_step"] == 7
    assert result.best_checkpoint.name.endswith(("-step=3.ckpt", "-step=6.ckpt"))
    assert not list(result.last_checkpoint.parent.glob("*.tmp"))


def test_resume_continues_the_global_step(tmp_path, tiny_checkpoint):
    result = run_tiny_training(
        tmp_path, resume_from=str(tiny_checkpoint), max_steps=9, unlikelihood_alpha=1.0
    )
    assert result.global_step == 9
    assert result.experiment.dir.name == "tiny_v0"  # a new experiment folder
    blocks = read_json_blocks(result.experiment.samples_file)
    assert [b["Global step"] for b in blocks] == [9]  # steps 1..6 were not redone
    assert read_checkpoint(result.last_checkpoint)[CHECKPOINT_KEY]["global_step"] == 9
    # Same vocabulary as the resumed checkpoint, and the unlikelihood loss was logged.
    before, after = load_checkpoint(tiny_checkpoint), load_checkpoint(result.last_checkpoint)
    assert after.tokenizer.to_json() == before.tokenizer.to_json()
    assert set(scalars(result.experiment.dir, "UL-Loss/train")) == {6, 7, 8}


# ---- experiment folder helpers --------------------------------------------------------------


def test_experiment_versions_increment_without_races(tmp_path):
    assert create_experiment(tmp_path, "run").dir.name == "run_v0"
    assert create_experiment(tmp_path, "run").dir.name == "run_v1"
    created: list[str] = []
    threads = [
        threading.Thread(
            target=lambda: created.append(create_experiment(tmp_path, "race").dir.name)
        )
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(created) == sorted(f"race_v{i}" for i in range(8))
    assert (tmp_path / "race_v3" / "models").is_dir() and (tmp_path / "race_v3" / "logs").is_dir()


def test_experiment_logging_removes_its_handlers(tmp_path):
    import logging

    root = logging.getLogger()
    before = list(root.handlers)
    experiment = create_experiment(tmp_path, "log")
    with experiment_logging(experiment.logs_dir):
        logging.getLogger("fst.test").debug("a debug line")
        logging.getLogger("fst.test").error("an error line")
    assert root.handlers == before
    assert "a debug line" in (experiment.logs_dir / "debug.log").read_text()
    assert "a debug line" not in (experiment.logs_dir / "info.log").read_text()
    assert "an error line" in (experiment.logs_dir / "errors.log").read_text()
    logging.getLogger("fst.test").error("after the run")
    assert "after the run" not in (experiment.logs_dir / "errors.log").read_text()


# ---- command line ----------------------------------------------------------------------------


def test_help_lists_every_flag():
    out = subprocess.run([FST_TRAIN, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    flags = [
        "--experiments_root", "--model_path", "--tokenizer_class_name", "--batch_size",
        "--max_meta_len", "--max_body_len", "--ignore_meta_prob", "--train_file", "--valid_file",
        "--learning_rate", "--num_warmup_steps", "--num_cycles", "--val_check_interval",
        "--max_epochs", "--unlikelihood_alpha", "--accumulate_grad_batches", "--experiment_name",
        "--gpus", "--max_steps", "--limit_val_batches", "--limit_train_batches", "--precision",
        "--devices", "--accelerator", "--strategy", "--num_nodes", "--gradient_clip_val",
        "--seed", "--num_workers", "--resume_from", "--tokenizer", "--bpe_vocab_size",
        "--log_every_n_steps",
    ]  # fmt: skip
    missing = [f for f in flags if f not in out.stdout]
    assert not missing
    assert "(default: 16)" in out.stdout  # defaults are shown


def test_cli_parsing_is_torch_free():
    code = (
        "import sys; from fst.training.cli import PRESET_NAMES, parse_args; parse_args([]); "
        "assert 'torch' not in sys.modules; print(','.join(PRESET_NAMES))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    from fst.training.model import PRESETS

    assert out.stdout.strip().split(",") == list(PRESETS)


def test_original_readme_flags_parse():
    args = parse_args([
        "--experiments_root=./data/experiments/", "--model_path=gpt2",
        "--tokenizer_class_name=HFGPT2DocumentTokenizer", "--batch_size=4", "--max_meta_len=0",
        "--max_body_len=70", "--ignore_meta_prob=1.0", "--learning_rate=2.5e-05",
        "--num_warmup_steps=10", "--num_cycles=1", "--gpus=0,", "--val_check_interval=1.0",
        "--max_epochs=10", "--unlikelihood_alpha=5.0", "--accumulate_grad_batches=8",
        "--experiment_name=nietzsche",
    ])  # fmt: skip
    assert args.trainer_devices() == {"accelerator": "gpu", "devices": [0]}
    assert args.val_check_interval == 1.0 and isinstance(args.val_check_interval, float)
    assert (args.max_epochs, args.unlikelihood_alpha, args.learning_rate) == (10, 5.0, 2.5e-5)
    assert parse_args(["--val_check_interval=500"]).val_check_interval == 500
    assert parse_args(["--gpus=2"]).trainer_devices() == {"accelerator": "gpu", "devices": 2}
    assert parse_args(["--devices=0,1"]).trainer_devices()["devices"] == [0, 1]
    assert parse_args([]).resolved_max_epochs() > 0
    assert parse_args(["--max_steps=100"]).resolved_max_epochs() == -1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch_size=0"], "--batch_size must be an integer >= 1, got 0"),
        (["--ignore_meta_prob=1.5"], "--ignore_meta_prob must be in [0, 1]"),
        (["--learning_rate=0"], "--learning_rate must be > 0"),
        (["--train_file=nope.documents", "--valid_file=nope.documents"], "--train_file nope.documents: no such file"),
        (["--train_file=x"], "--train_file and --valid_file go together"),
        (["--tokenizer_class_name=Foo"], "--tokenizer_class_name Foo: unknown"),
        (["--gpus=0,", "--devices=2"], "--gpus replaces"),
        (["--devices=two"], "devices must be 'auto'"),
    ],
)  # fmt: skip
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, argv, message):
    assert main([*argv, f"--experiments_root={tmp_path}"]) == 2
    assert not list(tmp_path.iterdir())  # rejected before any experiment folder exists
    err = capsys.readouterr().err
    assert err.startswith("fst-train: error: ") and message in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--precision=bogus"], "trainer options: Precision 'bogus' is invalid"),
        (["--strategy=nonsense"], "trainer options: You selected an invalid strategy name"),
        (["--model_path=./no/such/model"], "--model_path ./no/such/model: not a preset"),
        (["--tokenizer=./no/such/tokenizer"], "tokenizer: ./no/such/tokenizer: not a local tokenizer"),
        (["--resume_from=RESUME"], "not a readable PyTorch checkpoint"),
    ],
)  # fmt: skip
def test_bad_input_found_during_setup_exits_2(tmp_path, capsys, extra, message):
    train, valid = write_tiny_documents(tmp_path / "docs")
    extra = [e.replace("RESUME", str(train)) for e in extra]
    argv = [f"--train_file={train}", f"--valid_file={valid}", "--num_workers=0",
            f"--experiments_root={tmp_path / 'experiments'}", "--bpe_vocab_size=300", *extra]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fst-train: error: ") and message in err, err
    assert err.count("\n") == 1
    assert list((tmp_path / "experiments").iterdir()) == []  # no empty experiment left behind


def test_malformed_documents_exit_2_with_file_and_line(tmp_path):
    train, valid = write_tiny_documents(tmp_path / "docs")
    bad = tmp_path / "docs" / "bad.documents"
    bad.write_text('{"body": "fine"}\n{"body": "broken" \n')
    out = subprocess.run(
        [FST_TRAIN, f"--train_file={bad}", f"--valid_file={valid}",
         f"--experiments_root={tmp_path / 'experiments'}", "--num_workers=0"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"fst-train: error: {bad}:2: invalid JSON")
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert list((tmp_path / "experiments").iterdir()) == []  # no empty experiment left behind


def test_a_lone_surrogate_and_a_file_as_experiments_root_exit_2_with_one_line(tmp_path, capsys):
    train, valid = write_tiny_documents(tmp_path / "docs")
    bad = tmp_path / "docs" / "surrogate.documents"
    bad.write_text('{"body": "fine"}\n{"body":"ab\\ud800cd"}\n')
    root = tmp_path / "experiments"
    common = [f"--valid_file={valid}", "--num_workers=0", "--bpe_vocab_size=300"]
    assert main([f"--train_file={bad}", f"--experiments_root={root}", *common]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"fst-train: error: {bad}:2: 'body' holds a lone UTF-16 surrogate (\\ud800 "
        "at character 3); it is not text: remove it or pair it\n"
    )
    assert list(root.iterdir()) == []
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert main([f"--train_file={train}", f"--experiments_root={a_file}", *common]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fst-train: error: --experiments_root {a_file}: cannot create")
    assert err.count("\n") == 1


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="checks the CPU fallback of --gpus"
)
def test_original_readme_command_runs_as_written_from_the_repo_root(tmp_path, monkeypatch, capsys):
    """The original README's command, from the repository root on its shipped corpus: no hub
    (GPT-2's BPE is package data), `--gpus "0,"` falls back to the CPU on a machine without
    one. Only the model (a preset, not the hub's gpt2) and the budget differ."""
    from conftest import REPO_ROOT

    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main([
        f"--experiments_root={tmp_path / 'experiments'}", "--model_path=tiny",
        "--tokenizer_class_name=HFGPT2DocumentTokenizer", "--batch_size=4", "--max_meta_len=0",
        "--max_body_len=70", "--ignore_meta_prob=1.0",
        "--train_file=./data/documents/nietzsche/train.documents",
        "--valid_file=./data/documents/nietzsche/valid.documents",
        "--learning_rate=2.5e-05", "--num_warmup_steps=10", "--num_cycles=1", '--gpus=0,',
        "--val_check_interval=1.0", "--max_epochs=1", "--unlikelihood_alpha=5.0",
        "--accumulate_grad_batches=8", "--experiment_name=nietzsche",
        "--limit_train_batches=8", "--limit_val_batches=2", "--num_workers=0", "--num_threads=1",
    ])  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    assert "no CUDA GPU on this machine; training on the CPU" in captured.err + captured.out
    loaded = load_checkpoint(tmp_path / "experiments" / "nietzsche_v0" / "models" / "last.ckpt")
    assert loaded.tokenizer.encode_text("Hello world") == [15496, 995]
    assert loaded.info["global_step"] == 1  # 8 batches, 8 per optimizer step


def test_original_readme_command_with_a_local_gpt2_folder(tmp_path, gpt2_bpe_dir, capsys):
    """The README command with a local model folder holding GPT-2's tokenizer files."""
    import shutil

    transformers = pytest.importorskip("transformers")
    model_dir = tmp_path / "tiny-gpt2"
    transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=128)
    ).save_pretrained(model_dir)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(gpt2_bpe_dir / name, model_dir / name)
    train, valid = write_tiny_documents(tmp_path / "documents" / "nietzsche")
    code = main([
        f"--experiments_root={tmp_path / 'experiments'}", f"--model_path={model_dir}",
        "--tokenizer_class_name=HFGPT2DocumentTokenizer", "--batch_size=4", "--max_meta_len=0",
        "--max_body_len=70", "--ignore_meta_prob=1.0", f"--train_file={train}",
        f"--valid_file={valid}", "--learning_rate=2.5e-05", "--num_warmup_steps=10",
        "--num_cycles=1", "--val_check_interval=1.0", "--max_epochs=1",
        "--unlikelihood_alpha=5.0", "--accumulate_grad_batches=2", "--experiment_name=nietzsche",
        "--limit_train_batches=4", "--num_workers=0", "--num_threads=1",
    ])  # fmt: skip
    assert code == 0
    folder = tmp_path / "experiments" / "nietzsche_v0"
    assert f"Experiment folder: {folder}" in capsys.readouterr().out
    loaded = load_checkpoint(folder / "models" / "last.ckpt")
    assert loaded.tokenizer.vocab_size == 50259  # GPT-2 + the two document tokens
    assert loaded.model.config.vocab_size == 50259  # resized
    assert loaded.tokenizer.encode_text("Hello world") == [15496, 995]
    assert loaded.info["global_step"] == 2  # 4 batches, 2 per optimizer step
    assert loaded.info["document"]["ignore_meta_prob"] == 1.0


# ---- no worker process left behind -----------------------------------------------------------


def test_workers_end_with_training(tmp_path):
    before = child_pids()
    result = run_tiny_training(tmp_path, num_workers=2, max_steps=4)
    assert result.global_step == 4
    assert multiprocessing.active_children() == []
    assert child_pids() - before == set()


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_workers_end_when_training_fails(tmp_path, monkeypatch, error):
    from fst.training.lightning_module import DocumentLM

    original_step = DocumentLM.training_step
    seen_workers: list[int] = []

    def failing_step(self, batch, batch_idx):
        if batch_idx == 2:
            seen_workers.extend(p.pid for p in multiprocessing.active_children())
            raise error("boom")
        return original_step(self, batch, batch_idx)

    monkeypatch.setattr(DocumentLM, "training_step", failing_step)
    before = child_pids()
    sigint = signal.getsignal(signal.SIGINT)
    try:
        # Lightning turns KeyboardInterrupt into a graceful shutdown and SystemExit(1).
        with pytest.raises(SystemExit if error is KeyboardInterrupt else RuntimeError):
            run_tiny_training(tmp_path, num_workers=2, max_steps=6)
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores SIGINT after an interrupt
    assert len(seen_workers) >= 2  # train (and idle valid) workers were running at the failure
    assert multiprocessing.active_children() == []
    assert child_pids() - before == set()
    # The state at the failure is kept for --resume_from.
    interrupted = tmp_path / "experiments" / "tiny_v0" / "models" / "interrupted.ckpt"
    assert read_checkpoint(interrupted)[CHECKPOINT_KEY]["global_step"] == 2


def process_group(pgid: int) -> set[int]:
    """Live (non-zombie) processes of a process group, from /proc."""
    members = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.add(int(stat.parent.name))
    return members


@pytest.mark.slow
def test_ctrl_c_leaves_no_process_behind(tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl+C does, mid-epoch."""
    import time

    train, valid = write_tiny_documents(tmp_path / "docs")
    proc = subprocess.Popen(
        [FST_TRAIN, f"--train_file={train}", f"--valid_file={valid}", "--num_workers=2",
         f"--experiments_root={tmp_path / 'experiments'}", "--max_steps=100000",
         "--model_overrides=n_layer=1,n_embd=32", "--tokenizer=bpe", "--bpe_vocab_size=300",
         "--batch_size=1", "--num_threads=1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while len(process_group(proc.pid)) < 3:  # fst-train + 2 DataLoader workers
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while process_group(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process_group(proc.pid) == set()
    assert (tmp_path / "experiments" / "docs_v0" / "models" / "interrupted.ckpt").is_file()


def test_ctrl_c_swallowed_by_python_still_stops_training():
    """A KeyboardInterrupt lost inside an at-fork handler is raised again at the next batch."""
    import time

    from fst.training.trainer import StopOnCtrlC

    before = signal.getsignal(signal.SIGINT)
    guard = StopOnCtrlC()
    guard.on_train_batch_start(None, None, None, 0)  # no Ctrl+C yet: training goes on
    guard.setup(None, None, "fit")
    try:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)  # the handler runs at the next bytecode; never reached
        except KeyboardInterrupt:
            pass  # swallowed, as Python does when it lands in an at-fork handler
        with pytest.raises(KeyboardInterrupt):
            guard.on_train_batch_start(None, None, None, 1)
        with pytest.raises(KeyboardInterrupt):
            guard.on_validation_start(None, None)
        # A child forked during fit (a DataLoader worker) leaves Ctrl+C to this process.
        child = os.fork()
        if child == 0:
            os._exit(0 if signal.getsignal(signal.SIGINT) is signal.SIG_IGN else 1)
        assert os.waitpid(child, 0)[1] == 0
    finally:
        guard.teardown(None, None, "fit")
    assert signal.getsignal(signal.SIGINT) is before
    child = os.fork()  # after fit, children are left alone
    if child == 0:
        os._exit(0 if signal.getsignal(signal.SIGINT) is before else 1)
    assert os.waitpid(child, 0)[1] == 0


@pytest.mark.slow
def test_ddp_on_cpu_shares_one_experiment_folder(tmp_path):
    """Two DDP processes (gloo on CPU): one folder, one tokenizer, one checkpoint set."""
    train, valid = write_tiny_documents(tmp_path / "docs")
    out = subprocess.run(
        [FST_TRAIN, f"--train_file={train}", f"--valid_file={valid}", "--strategy=ddp",
         "--accelerator=cpu", "--devices=2", f"--experiments_root={tmp_path / 'experiments'}",
         "--model_overrides=n_layer=1,n_embd=32", "--bpe_vocab_size=300", "--batch_size=2",
         "--max_steps=4", "--val_check_interval=2", "--num_workers=0", "--num_threads=1"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert [p.name for p in (tmp_path / "experiments").iterdir()] == ["docs_v0"]
    folder = tmp_path / "experiments" / "docs_v0"
    assert out.stdout.count("\nExperiment folder:") == 1  # the final line, from rank 0 only
    loaded = load_checkpoint(folder / "models" / "last.ckpt")
    assert loaded.info["global_step"] == 4
    assert loaded.tokenizer.to_json() == (folder / "tokenizer.json").read_text()
    assert [b["Global step"] for b in read_json_blocks(folder / "generated.txt")] == [2, 4]


@pytest.mark.slow
def test_default_run_trains_on_the_demo_corpus(tmp_path):
    """`fst-train` with no data arguments (shortened to 10 batches here)."""
    out = subprocess.run(
        [FST_TRAIN, "--max_epochs=1", "--limit_train_batches=10", "--limit_val_batches=2"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "data" / "documents" / "demo" / "train.documents").is_file()
    folder = tmp_path / "data" / "experiments" / "demo_v0"
    assert "Experiment folder: data/experiments/demo_v0" in out.stdout
    blocks = read_json_blocks(folder / "generated.txt")
    assert [b["Global step"] for b in blocks] == [10]
    info = load_checkpoint(folder / "models" / "last.ckpt").info
    assert info["model_config"]["n_layer"] == 2 and info["model_config"]["vocab_size"] == 4096


def test_sample_prompt_uses_a_validation_meta_only_when_metas_are_trained(gpt2_bpe_dir):
    from fst.core.documents import Document
    from fst.core.tokenization import DocumentTokenizer
    from fst.training.trainer import sample_prompt

    docs = [Document("no meta"), Document("body", meta="cats"), Document("b", meta="dogs")]
    files = (gpt2_bpe_dir / "vocab.json", gpt2_bpe_dir / "merges.txt")
    with_meta = DocumentTokenizer.from_gpt2_files(*files, ignore_meta_prob=0.5)
    assert sample_prompt(with_meta, docs) == Document(body="", meta="cats")
    without = DocumentTokenizer.from_gpt2_files(*files, ignore_meta_prob=1.0)
    assert sample_prompt(without, docs) == Document(body="", meta=None)


def test_args_dataclass_round_trips_to_json(tmp_path):
    args = tiny_train_args(tmp_path)
    assert TrainArgs(**args.to_json_dict()) == args
