"""fst-train: documents → tokenizer → Lightning training of a causal LM.

With no data arguments it trains the `tiny` preset, with a new byte-level BPE, on the
built-in demo corpus (about two minutes on 2 CPU cores). The original project's command
line (README of full_stack_transformer 0.2) works with its flags as written.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fst.training.config import (  # noqa: F401  (re-used names: the parser's help texts)
    DEMO_MAX_EPOCHS,
    GPT2_TOKENIZER_CLASS,
    PRESET_NAMES,
    SEQUENCE_UL_CANDIDATES,
    ArgsError,
    TrainArgs,
)


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
    ("sequence-level unlikelihood (fine-tuning, fst/training/sequence_ul.py)", "sequence_unlikelihood", bool, "fine-tune with the sequence-level UL objective (Welleck et al. 2019, 5.2) mixed with token-level updates; start from a checkpoint with --model_path run/models/best-....ckpt"),
    ("sequence-level unlikelihood (fine-tuning, fst/training/sequence_ul.py)", "prefix_len", int, "prefix tokens cut from the training batch"),
    ("sequence-level unlikelihood (fine-tuning, fst/training/sequence_ul.py)", "continuation_len", int, "greedy continuation tokens decoded per prefix (EOS masked)"),
    ("sequence-level unlikelihood (fine-tuning, fst/training/sequence_ul.py)", "ngram", int, "n of the repeated n-grams penalised"),
    ("sequence-level unlikelihood (fine-tuning, fst/training/sequence_ul.py)", "sequence_ul_prob", float, "probability that an update is sequence-level (else the token-level MLE / --unlikelihood_alpha update; the paper: 0.5)"),
    ("sequence-level unlikelihood (fine-tuning, fst/training/sequence_ul.py)", "sequence_ul_alpha", float, "weight of the sequence-level loss (1.0: the paper's; an uncertain model's greedy tokens have small p, and -log(1 - p) ~ p is then small beside the LM loss)"),
    ("sequence-level unlikelihood (fine-tuning, fst/training/sequence_ul.py)", "sequence_ul_prefixes", int, "prefixes (continuations) per sequence-level update"),
    ("sequence-level unlikelihood (fine-tuning, fst/training/sequence_ul.py)", "sequence_ul_candidates", str, "ngram: every token of a repeated n-gram (the paper's); last: only the token completing it"),
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
    from fst.training.trainer import run_training  # heavy imports only once the args are valid

    return run_training(args)


if __name__ == "__main__":
    sys.exit(main())
