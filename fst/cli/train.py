"""fst-train: documents → tokenizer → Lightning training of a causal LM.

With no data arguments it trains the `tiny` preset, with a new byte-level BPE, on the
built-in demo corpus (about two minutes on 2 CPU cores). The original project's command
line (README of full_stack_transformer 0.2) works with its flags as written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fst.constants import UL_REDUCTIONS

GPT2_TOKENIZER_CLASS = "HFGPT2DocumentTokenizer"
DEMO_EXPERIMENT = "demo"
# Demo budget: the tiny preset on the demo corpus for this many epochs takes ~2 min on 2 cores.
DEMO_MAX_EPOCHS = 6
# fst.model.PRESETS' names, repeated here so --help does not import torch (a test checks).
PRESET_NAMES = ("tiny", "gpt2-6l", "gpt2-small", "llama-tiny", "smollm2-135m")
# fst.sequence_ul.CANDIDATE_SPANS, likewise.
SEQUENCE_UL_CANDIDATES = ("ngram", "last")


class ArgsError(ValueError):
    """An argument is invalid; the message names it."""


@dataclass(frozen=True)
class TrainArgs:
    """Every fst-train option, validated once (the --help texts are in `_OPTIONS`)."""

    experiments_root: str = "./data/experiments"
    experiment_name: str | None = None
    train_file: str | None = None
    valid_file: str | None = None
    model_path: str = "tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None
    tokenizer_class_name: str | None = None
    bpe_vocab_size: int = 4096
    batch_size: int = 16
    max_meta_len: int = 32
    max_body_len: int = 128
    ignore_meta_prob: float = 0.0
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    num_warmup_steps: int = 50
    num_cycles: int = 1
    unlikelihood_alpha: float | None = None
    unlikelihood_reduction: str = "token"
    accumulate_grad_batches: int = 1
    val_check_interval: float | int = 1.0
    max_epochs: int | None = None
    max_steps: int = -1
    limit_train_batches: float | int = 1.0
    limit_val_batches: float | int = 1.0
    precision: str | None = None
    gpus: str | None = None
    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    gradient_clip_val: float | None = 1.0
    seed: int = 42
    num_workers: int = 1
    bucket_batches: int = 50
    log_every_n_steps: int = 10
    num_threads: int | None = None
    resume_from: str | None = None
    resume_in_new_folder: bool = False
    sequence_unlikelihood: bool = False
    prefix_len: int = 50
    continuation_len: int = 100
    ngram: int = 4
    sequence_ul_prob: float = 0.5
    sequence_ul_alpha: float = 1.0
    sequence_ul_prefixes: int = 16
    sequence_ul_candidates: str = "ngram"

    def __post_init__(self) -> None:
        _positive("batch_size", self.batch_size)
        _positive("max_body_len", self.max_body_len, minimum=2)
        _positive("max_meta_len", self.max_meta_len, minimum=0)
        _positive("bpe_vocab_size", self.bpe_vocab_size, minimum=300)
        _positive("accumulate_grad_batches", self.accumulate_grad_batches)
        _positive("num_warmup_steps", self.num_warmup_steps, minimum=0)
        _positive("num_cycles", self.num_cycles, minimum=0)
        _positive("num_nodes", self.num_nodes)
        _positive("num_workers", self.num_workers, minimum=0)
        _positive("bucket_batches", self.bucket_batches)
        _positive("log_every_n_steps", self.log_every_n_steps)
        _positive("seed", self.seed, minimum=0)
        if self.num_threads is not None:
            _positive("num_threads", self.num_threads, minimum=0)
        if not 0.0 <= self.ignore_meta_prob <= 1.0:
            raise ArgsError(f"--ignore_meta_prob must be in [0, 1], got {self.ignore_meta_prob}")
        if not self.learning_rate > 0:
            raise ArgsError(f"--learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ArgsError(f"--weight_decay must be >= 0, got {self.weight_decay}")
        if self.unlikelihood_alpha is not None and self.unlikelihood_alpha < 0:
            raise ArgsError(f"--unlikelihood_alpha must be >= 0, got {self.unlikelihood_alpha}")
        if self.unlikelihood_reduction not in UL_REDUCTIONS:
            raise ArgsError(
                f"--unlikelihood_reduction must be one of {', '.join(UL_REDUCTIONS)}, "
                f"got {self.unlikelihood_reduction!r}"
            )
        if self.gradient_clip_val is not None and self.gradient_clip_val < 0:
            raise ArgsError(f"--gradient_clip_val must be >= 0, got {self.gradient_clip_val}")
        for name in ("val_check_interval", "limit_train_batches", "limit_val_batches"):
            if not getattr(self, name) > 0:
                raise ArgsError(f"--{name} must be > 0, got {getattr(self, name)}")
        if self.max_epochs is not None and self.max_epochs < -1:
            raise ArgsError(f"--max_epochs must be >= -1, got {self.max_epochs}")
        if self.max_steps < -1 or self.max_steps == 0:
            raise ArgsError(f"--max_steps must be -1 (no limit) or > 0, got {self.max_steps}")
        if (self.train_file is None) != (self.valid_file is None):
            raise ArgsError("--train_file and --valid_file go together (or neither: demo corpus)")
        for name in ("train_file", "valid_file", "resume_from"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_file():
                raise ArgsError(f"--{name} {value}: no such file")
        if self.resume_in_new_folder and not self.resume_from:
            raise ArgsError("--resume_in_new_folder goes with --resume_from")
        if self.tokenizer_class_name not in (None, GPT2_TOKENIZER_CLASS):
            raise ArgsError(
                f"--tokenizer_class_name {self.tokenizer_class_name}: unknown; the supported "
                f"class is {GPT2_TOKENIZER_CLASS} (or use --tokenizer)"
            )
        if self.tokenizer_class_name and self.tokenizer:
            raise ArgsError("give --tokenizer or --tokenizer_class_name, not both")
        if self.gpus is not None and (self.devices != "auto" or self.accelerator != "auto"):
            raise ArgsError("--gpus replaces --accelerator/--devices: give one or the other")
        self.trainer_devices()  # raises ArgsError on a malformed --devices / --gpus
        self._check_sequence_unlikelihood()
        if self.fine_tunes_checkpoint:
            self._check_checkpoint_model_path()

    @property
    def fine_tunes_checkpoint(self) -> bool:
        """--model_path names an fst-train checkpoint (fine-tuning its weights)."""
        return self.model_path.endswith(".ckpt")

    def _check_checkpoint_model_path(self) -> None:
        if not Path(self.model_path).is_file():
            raise ArgsError(f"--model_path {self.model_path}: no such checkpoint file")
        for name in ("tokenizer", "tokenizer_class_name", "model_overrides", "resume_from"):
            if getattr(self, name):
                raise ArgsError(
                    f"--{name} cannot be combined with a checkpoint --model_path "
                    "(the model and its vocabulary are the checkpoint's)"
                )

    def _check_sequence_unlikelihood(self) -> None:
        _positive("prefix_len", self.prefix_len)
        _positive("ngram", self.ngram)
        _positive("continuation_len", self.continuation_len, minimum=self.ngram)
        _positive("sequence_ul_prefixes", self.sequence_ul_prefixes)
        if not self.sequence_ul_alpha > 0:
            raise ArgsError(f"--sequence_ul_alpha must be > 0, got {self.sequence_ul_alpha}")
        if not 0.0 < self.sequence_ul_prob <= 1.0:
            raise ArgsError(f"--sequence_ul_prob must be in (0, 1], got {self.sequence_ul_prob}")
        if self.sequence_ul_candidates not in SEQUENCE_UL_CANDIDATES:
            raise ArgsError(
                f"--sequence_ul_candidates must be one of {', '.join(SEQUENCE_UL_CANDIDATES)}, "
                f"got {self.sequence_ul_candidates!r}"
            )
        if self.sequence_unlikelihood and self.prefix_len > self.max_body_len:
            raise ArgsError(
                f"--prefix_len {self.prefix_len} is longer than --max_body_len "
                f"{self.max_body_len}: no training chunk would hold a prefix"
            )

    @property
    def uses_demo_corpus(self) -> bool:
        return self.train_file is None

    @property
    def name(self) -> str:
        """Experiment name: as given, else the folder of the train file ("nietzsche")."""
        if self.experiment_name:
            return self.experiment_name
        return DEMO_EXPERIMENT if self.uses_demo_corpus else Path(self.train_file).parent.name

    def resolved_max_epochs(self) -> int:
        """--max_epochs, or the demo budget, or unlimited when --max_steps decides."""
        if self.max_epochs is not None:
            return self.max_epochs
        return -1 if self.max_steps > 0 else DEMO_MAX_EPOCHS

    def resolved_num_threads(self) -> int:
        """torch CPU threads; 0 keeps torch's default. The demo uses 1: a tiny model gains
        nothing from intra-op threads and loses a lot when the cores are shared."""
        if self.num_threads is not None:
            return self.num_threads
        return 1 if self.uses_demo_corpus else 0

    def trainer_devices(self) -> dict[str, Any]:
        """accelerator/devices for Lightning; --gpus "0," means GPU 0 (the original's flag)."""
        if self.gpus is None:
            return {"accelerator": self.accelerator, "devices": _devices(self.devices)}
        gpus = _devices(self.gpus)
        if gpus in (0, []):
            return {"accelerator": "cpu", "devices": 1}
        return {"accelerator": "gpu", "devices": gpus}

    def to_json_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _positive(name: str, value: int, minimum: int = 1) -> None:
    if value < minimum:
        raise ArgsError(f"--{name} must be an integer >= {minimum}, got {value}")


def _devices(text: str) -> int | str | list[int]:
    """Lightning devices: "auto", a count ("2", "-1" for all) or indices ("0," or "0,1")."""
    text = text.strip()
    if text == "auto":
        return text
    try:
        if "," in text:
            return [int(p) for p in text.split(",") if p.strip()]
        return int(text)
    except ValueError:
        raise ArgsError(
            f"devices must be 'auto', a count or a list like '0,1', got {text!r}"
        ) from None


def _count_or_fraction(text: str) -> float | int:
    """Lightning's convention: 1.0 (float) is a fraction, 10 (int) a count; >1 floats → int."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    return int(value) if value > 1 or ("." not in text and "e" not in text.lower()) else value


def _optional_float(text: str) -> float | None:
    return None if text.lower() in ("none", "") else float(text)


def _overrides(text: str) -> dict[str, Any]:
    """'n_layer=4,n_embd=128' → {"n_layer": 4, "n_embd": 128} (values parsed as JSON)."""
    result: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"expected key=value pairs, got {item!r}")
        try:
            result[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            result[key.strip()] = value
    return result


# (group, flag, type, help) of every option; defaults come from TrainArgs.
_OPTIONS: list[tuple[str, str, Any, str]] = [
    ("experiment", "experiments_root", str, "root of the experiment folders"),
    ("experiment", "experiment_name", str, "folder name prefix (<name>_v<N>); default: the train file's folder name, 'demo' for the demo corpus"),
    ("experiment", "resume_from", str, "Lightning .ckpt to resume from (global step, optimizer, scheduler; the vocabulary is the checkpoint's); by default training continues in the checkpoint's own experiment folder (<name>_v<N>/models/*.ckpt), else in a new one"),
    ("experiment", "resume_in_new_folder", bool, "with --resume_from: continue in a new <experiment_name>_v<N> folder instead of the checkpoint's"),
    ("experiment", "seed", int, "seed of weight init, shuffling and meta dropping"),
    ("data", "train_file", str, "JSON-lines training documents (none: the demo corpus, built in <experiments_root>/../documents/demo)"),
    ("data", "valid_file", str, "JSON-lines validation documents"),
    ("data", "batch_size", int, "sequences per batch (train and valid)"),
    ("data", "max_meta_len", int, "meta tokens kept, from the right, [END_OF_META] included (0: train without meta)"),
    ("data", "max_body_len", int, "body tokens per sequence; longer bodies are split into chunks"),
    ("data", "ignore_meta_prob", float, "probability to drop a document's meta in training (redrawn every epoch)"),
    ("data", "num_workers", int, "DataLoader worker processes (0: load in the main process)"),
    ("data", "bucket_batches", int, "batches per length bucket: similar lengths share a batch (1: plain random batches)"),
    ("model and tokenizer", "model_path", str, f"preset ({', '.join(PRESET_NAMES)}), Hugging Face model folder, hub name (e.g. gpt2), or an fst-train .ckpt to fine-tune (its weights and vocabulary; a new optimizer, schedule and step count, unlike --resume_from)"),
    ("model and tokenizer", "model_overrides", _overrides, "model config overrides, e.g. 'n_layer=4,n_embd=128'"),
    ("model and tokenizer", "tokenizer", str, "'bpe' (train a byte-level BPE on --train_file), a folder with tokenizer.json or vocab.json+merges.txt, a tokenizer.json, or a hub name; default: 'bpe' for presets, else the model's own"),
    ("model and tokenizer", "tokenizer_class_name", str, f"original project's flag: {GPT2_TOKENIZER_CLASS} = GPT-2's tokenizer from --model_path's folder, else the GPT-2 BPE shipped with fst (offline)"),
    ("model and tokenizer", "bpe_vocab_size", int, "vocabulary size of a new BPE"),
    ("optimisation", "learning_rate", float, "AdamW peak learning rate (~2.5e-5 to fine-tune a pretrained gpt2)"),
    ("optimisation", "weight_decay", float, "AdamW weight decay"),
    ("optimisation", "num_warmup_steps", int, "warmup steps of the cosine-with-hard-restarts schedule"),
    ("optimisation", "num_cycles", int, "hard restarts of the cosine schedule (0: constant after warmup)"),
    ("optimisation", "unlikelihood_alpha", _optional_float, "weight of the unlikelihood candidates loss (none or 0: off)"),
    ("optimisation", "unlikelihood_reduction", str, "token: sum over candidates, mean over tokens (the paper's; alpha 1.0 as in the paper); pair: mean over (token, candidate) pairs (the original project's, ~50x weaker: it used alpha 5.0)"),
    ("optimisation", "accumulate_grad_batches", int, "batches per optimizer step"),
    ("optimisation", "gradient_clip_val", _optional_float, "gradient norm clipping (none: off)"),
    ("trainer (PyTorch Lightning)", "max_epochs", int, f"epochs (none: {DEMO_MAX_EPOCHS}, or unlimited when --max_steps is set)"),
    ("trainer (PyTorch Lightning)", "max_steps", int, "optimizer steps (-1: no limit)"),
    ("trainer (PyTorch Lightning)", "val_check_interval", _count_or_fraction, "validate every fraction of an epoch (<= 1.0) or every N batches (> 1)"),
    ("trainer (PyTorch Lightning)", "limit_train_batches", _count_or_fraction, "fraction (1.0) or number (10) of training batches per epoch"),
    ("trainer (PyTorch Lightning)", "limit_val_batches", _count_or_fraction, "fraction (1.0) or number (10) of validation batches"),
    ("trainer (PyTorch Lightning)", "log_every_n_steps", int, "TensorBoard logging interval"),
    ("trainer (PyTorch Lightning)", "precision", str, "32-true, 16-mixed, bf16-mixed, ... (none: Lightning's 32-true)"),
    ("trainer (PyTorch Lightning)", "gpus", str, "original project's flag: GPU indices ('0,' = GPU 0; '0,1') or a count; means --accelerator gpu"),
    ("trainer (PyTorch Lightning)", "accelerator", str, "cpu, gpu, mps, auto"),
    ("trainer (PyTorch Lightning)", "devices", str, "device count, indices like '0,1', or auto"),
    ("trainer (PyTorch Lightning)", "strategy", str, "auto, ddp, fsdp, deepspeed, ... (multi-GPU / multi-node)"),
    ("trainer (PyTorch Lightning)", "num_nodes", int, "machines in multi-node training"),
    ("trainer (PyTorch Lightning)", "num_threads", int, "torch CPU threads (0: torch's default, all cores; none: 1 for the demo run, else 0)"),
    ("sequence-level unlikelihood (fine-tuning, fst/sequence_ul.py)", "sequence_unlikelihood", bool, "fine-tune with the sequence-level UL objective (Welleck et al. 2019, 5.2) mixed with token-level updates; start from a checkpoint with --model_path run/models/best-....ckpt"),
    ("sequence-level unlikelihood (fine-tuning, fst/sequence_ul.py)", "prefix_len", int, "prefix tokens cut from the training batch"),
    ("sequence-level unlikelihood (fine-tuning, fst/sequence_ul.py)", "continuation_len", int, "greedy continuation tokens decoded per prefix (EOS masked)"),
    ("sequence-level unlikelihood (fine-tuning, fst/sequence_ul.py)", "ngram", int, "n of the repeated n-grams penalised"),
    ("sequence-level unlikelihood (fine-tuning, fst/sequence_ul.py)", "sequence_ul_prob", float, "probability that an update is sequence-level (else the token-level MLE / --unlikelihood_alpha update; the paper: 0.5)"),
    ("sequence-level unlikelihood (fine-tuning, fst/sequence_ul.py)", "sequence_ul_alpha", float, "weight of the sequence-level loss (1.0: the paper's; an uncertain model's greedy tokens have small p, and -log(1 - p) ~ p is then small beside the LM loss)"),
    ("sequence-level unlikelihood (fine-tuning, fst/sequence_ul.py)", "sequence_ul_prefixes", int, "prefixes (continuations) per sequence-level update"),
    ("sequence-level unlikelihood (fine-tuning, fst/sequence_ul.py)", "sequence_ul_candidates", str, "ngram: every token of a repeated n-gram (the paper's); last: only the token completing it"),
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fst-train",
        description=(
            "Train a causal LM on JSON-lines documents ({'body': ..., 'meta': ...}). With no "
            "data arguments: the 'tiny' preset with a new byte-level BPE on the built-in demo "
            f"corpus for {DEMO_MAX_EPOCHS} epochs (about 2 minutes on 2 CPU cores). Multi-GPU "
            "and multi-node: --strategy ddp|fsdp --devices N --num_nodes M (Lightning)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults, groups = TrainArgs(), {}
    for group, name, type_, help_text in _OPTIONS:
        if group not in groups:
            groups[group] = parser.add_argument_group(group)
        default = getattr(defaults, name)
        if type_ is bool:
            groups[group].add_argument(f"--{name}", action="store_true", help=help_text)
            continue
        groups[group].add_argument(f"--{name}", type=type_, default=default, help=help_text)
    return parser


def parse_args(argv: list[str] | None = None) -> TrainArgs:
    """Parse and validate; raises ArgsError (argparse itself exits on malformed flags)."""
    namespace = build_parser().parse_args(argv)
    return TrainArgs(**vars(namespace))


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except ArgsError as e:
        print(f"fst-train: error: {e}", file=sys.stderr)
        return 2
    from fst.training import run_training  # heavy imports only once the args are valid

    return run_training(args)


if __name__ == "__main__":
    sys.exit(main())
