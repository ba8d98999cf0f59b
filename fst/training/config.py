"""fst-train's settings: every option as one frozen dataclass, validated once.

Lives in the training stage (not in the CLI) so that the trainer depends on its settings and
not on its command line. Each field carries its --help text (`fst.core.cli_settings.option`);
`fst.training.cli` generates the parser from the fields. A new option is one new field here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fst.core.cli_settings import SettingsError, count_or_fraction, key_values, option
from fst.core.constants import UL_REDUCTIONS

GPT2_TOKENIZER_CLASS = "HFGPT2DocumentTokenizer"
DEMO_EXPERIMENT = "demo"
# Demo budget: the tiny preset on the demo corpus for this many epochs takes ~2 min on 2 cores.
DEMO_MAX_EPOCHS = 6
# fst.training.model.PRESETS' names, repeated here so --help does not import torch (a test checks).
PRESET_NAMES = ("tiny", "gpt2-6l", "gpt2-small", "llama-tiny", "smollm2-135m")
# fst.training.sequence_ul.CANDIDATE_SPANS, likewise.
SEQUENCE_UL_CANDIDATES = ("ngram", "last")


class ArgsError(SettingsError):
    """An argument is invalid; the message names it."""


@dataclass(frozen=True)
class OptimizerSettings:
    """AdamW + cosine-with-hard-restarts schedule; these defaults are fst-train's."""

    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    num_warmup_steps: int = 50
    num_cycles: int = 1


_OPTIMIZER = OptimizerSettings()  # TrainArgs' optimiser defaults are these

# --help sections
_EXPERIMENT = "experiment"
_DATA = "data"
_MODEL_AND_TOKENIZER = "model and tokenizer"
_OPTIMISATION = "optimisation"
_TRAINER = "trainer (PyTorch Lightning)"
_SEQUENCE_LEVEL_UNLIKELIHOOD = (
    "sequence-level unlikelihood (fine-tuning, fst/training/sequence_ul.py)"
)


@dataclass(frozen=True)
class TrainArgs:
    """Every fst-train option with its --help text, validated once (`fst.training.cli` parses)."""

    # One line per option: the table a newcomer reads.
    # fmt: off
    experiments_root: str = option("./data/experiments", metavar="PATH", group=_EXPERIMENT, help="root of the experiment folders")
    experiment_name: str | None = option(None, group=_EXPERIMENT, shown_default="the train file's folder name; 'demo' for the demo corpus", help="folder name prefix (<name>_v<N>)")
    train_file: str | None = option(None, metavar="PATH", group=_DATA, help="JSON-lines training data: documents {\"body\", \"meta\"} or dialogs {\"messages\": [...]} / {\"utterances\": [...], \"persona_0\", ...}, detected from the first line (docs/dialogs.md: loss on assistant turns only, --max_body_len is then the conversation length kept, cut from the left); none: the demo corpus, built in <experiments_root>/../documents/demo")
    valid_file: str | None = option(None, metavar="PATH", group=_DATA, help="JSON-lines validation documents or dialogs (the train file's kind)")
    model_path: str = option("tiny", group=_MODEL_AND_TOKENIZER, help=f"preset ({', '.join(PRESET_NAMES)}), Hugging Face model folder, hub name (e.g. gpt2), or an fst-train .ckpt to fine-tune (its weights and vocabulary; a new optimizer, schedule and step count, unlike --resume_from)")
    model_overrides: dict[str, Any] = option(default_factory=dict, group=_MODEL_AND_TOKENIZER, parse=key_values, help="model config overrides, e.g. 'n_layer=4,n_embd=128'")
    tokenizer: str | None = option(None, group=_MODEL_AND_TOKENIZER, shown_default="'bpe' for presets, else the model's own", help="'bpe' (train a byte-level BPE on --train_file), a folder with tokenizer.json or vocab.json+merges.txt, a tokenizer.json, or a hub name")
    tokenizer_class_name: str | None = option(None, group=_MODEL_AND_TOKENIZER, help=f"original project's flag: {GPT2_TOKENIZER_CLASS} = GPT-2's tokenizer from --model_path's folder, else the GPT-2 BPE shipped with fst (offline)")
    bpe_vocab_size: int = option(4096, group=_MODEL_AND_TOKENIZER, help="vocabulary size of a new BPE")
    batch_size: int = option(16, group=_DATA, help="sequences per batch (train and valid)")
    max_meta_len: int = option(32, group=_DATA, help="meta tokens kept, from the right, [END_OF_META] included (0: train without meta)")
    max_body_len: int = option(128, group=_DATA, help="body tokens per sequence; longer bodies are split into chunks")
    ignore_meta_prob: float = option(0.0, group=_DATA, help="probability to drop a document's meta in training (redrawn every epoch)")
    learning_rate: float = option(_OPTIMIZER.learning_rate, group=_OPTIMISATION, help="AdamW peak learning rate (~2.5e-5 to fine-tune a pretrained gpt2)")
    weight_decay: float = option(_OPTIMIZER.weight_decay, group=_OPTIMISATION, help="AdamW weight decay")
    num_warmup_steps: int = option(_OPTIMIZER.num_warmup_steps, group=_OPTIMISATION, help="warmup steps of the cosine-with-hard-restarts schedule")
    num_cycles: int = option(_OPTIMIZER.num_cycles, group=_OPTIMISATION, help="hard restarts of the cosine schedule (0: constant after warmup)")
    unlikelihood_alpha: float | None = option(None, group=_OPTIMISATION, help="weight of the unlikelihood candidates loss (none or 0: off)")
    unlikelihood_reduction: str = option("token", group=_OPTIMISATION, help="token: sum over candidates, mean over tokens (the paper's; alpha 1.0 as in the paper); pair: mean over (token, candidate) pairs (the original project's, ~50x weaker: it used alpha 5.0)")
    accumulate_grad_batches: int = option(1, group=_OPTIMISATION, help="batches per optimizer step")
    val_check_interval: float | int = option(1.0, group=_TRAINER, parse=count_or_fraction, help="validate every fraction of an epoch (<= 1.0) or every N batches (> 1)")
    max_epochs: int | None = option(None, group=_TRAINER, help=f"epochs (none: {DEMO_MAX_EPOCHS}, or unlimited when --max_steps is set)")
    max_steps: int = option(-1, group=_TRAINER, help="optimizer steps (-1: no limit)")
    limit_train_batches: float | int = option(1.0, group=_TRAINER, parse=count_or_fraction, help="fraction (1.0) or number (10) of training batches per epoch")
    limit_val_batches: float | int = option(1.0, group=_TRAINER, parse=count_or_fraction, help="fraction (1.0) or number (10) of validation batches")
    precision: str | None = option(None, group=_TRAINER, help="32-true, 16-mixed, bf16-mixed, ... (none: Lightning's 32-true)")
    gpus: str | None = option(None, group=_TRAINER, help="original project's flag: GPU indices ('0,' = GPU 0; '0,1') or a count; means --accelerator gpu")
    accelerator: str = option("auto", group=_TRAINER, help="cpu, gpu, mps, auto")
    devices: str = option("auto", group=_TRAINER, help="device count, indices like '0,1', or auto")
    strategy: str = option("auto", group=_TRAINER, help="auto, ddp, fsdp, deepspeed, ... (multi-GPU / multi-node)")
    num_nodes: int = option(1, group=_TRAINER, help="machines in multi-node training")
    gradient_clip_val: float | None = option(1.0, group=_OPTIMISATION, help="gradient norm clipping (none: off)")
    seed: int = option(42, group=_EXPERIMENT, help="seed of weight init, shuffling and meta dropping")
    num_workers: int = option(1, group=_DATA, help="DataLoader worker processes (0: load in the main process)")
    bucket_batches: int = option(50, group=_DATA, help="batches per length bucket: similar lengths share a batch (1: plain random batches)")
    log_every_n_steps: int = option(10, group=_TRAINER, help="TensorBoard logging interval")
    num_threads: int | None = option(None, group=_TRAINER, help="torch CPU threads (0: torch's default, all cores; none: 1 for the demo run, else 0)")
    resume_from: str | None = option(None, metavar="PATH", group=_EXPERIMENT, help="Lightning .ckpt to resume from (global step, optimizer, scheduler; the vocabulary is the checkpoint's); by default training continues in the checkpoint's own experiment folder (<name>_v<N>/models/*.ckpt), else in a new one")
    resume_in_new_folder: bool = option(False, group=_EXPERIMENT, help="with --resume_from: continue in a new <experiment_name>_v<N> folder instead of the checkpoint's")
    sequence_unlikelihood: bool = option(False, group=_SEQUENCE_LEVEL_UNLIKELIHOOD, help="fine-tune with the sequence-level UL objective (Welleck et al. 2019, 5.2) mixed with token-level updates; start from a checkpoint with --model_path run/models/best-....ckpt")
    prefix_len: int = option(50, group=_SEQUENCE_LEVEL_UNLIKELIHOOD, help="prefix tokens cut from the training batch")
    continuation_len: int = option(100, group=_SEQUENCE_LEVEL_UNLIKELIHOOD, help="greedy continuation tokens decoded per prefix (EOS masked)")
    ngram: int = option(4, group=_SEQUENCE_LEVEL_UNLIKELIHOOD, help="n of the repeated n-grams penalised")
    sequence_ul_prob: float = option(0.5, group=_SEQUENCE_LEVEL_UNLIKELIHOOD, help="probability that an update is sequence-level (else the token-level MLE / --unlikelihood_alpha update; the paper: 0.5)")
    sequence_ul_alpha: float = option(1.0, group=_SEQUENCE_LEVEL_UNLIKELIHOOD, help="weight of the sequence-level loss (1.0: the paper's; an uncertain model's greedy tokens have small p, and -log(1 - p) ~ p is then small beside the LM loss)")
    sequence_ul_prefixes: int = option(16, group=_SEQUENCE_LEVEL_UNLIKELIHOOD, help="prefixes (continuations) per sequence-level update")
    sequence_ul_candidates: str = option("ngram", group=_SEQUENCE_LEVEL_UNLIKELIHOOD, help="ngram: every token of a repeated n-gram (the paper's); last: only the token completing it")
    # fmt: on

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

    def optimizer(self) -> OptimizerSettings:
        return OptimizerSettings(
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            num_warmup_steps=self.num_warmup_steps,
            num_cycles=self.num_cycles,
        )

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
