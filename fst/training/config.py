"""fst-train's settings: every option as one frozen dataclass, validated once.

Lives in the training stage (not in the CLI) so that the trainer depends on its settings and
not on its command line; `fst.cli.train` builds the parser from these fields.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fst.core.constants import UL_REDUCTIONS

GPT2_TOKENIZER_CLASS = "HFGPT2DocumentTokenizer"
DEMO_EXPERIMENT = "demo"
# Demo budget: the tiny preset on the demo corpus for this many epochs takes ~2 min on 2 cores.
DEMO_MAX_EPOCHS = 6
# fst.training.model.PRESETS' names, repeated here so --help does not import torch (a test checks).
PRESET_NAMES = ("tiny", "gpt2-6l", "gpt2-small", "llama-tiny", "smollm2-135m")
# fst.training.sequence_ul.CANDIDATE_SPANS, likewise.
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
