"""fst-train on data/dialogs → checkpoint with the chat format → fst-export → manifest.chat,
and the runtime's greedy answer to a rendered prompt equals PyTorch's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_tiny_training

from fst.core.chat_encoding import ChatEncoder
from fst.core.chat_format import ChatFormat
from fst.core.chat_template import CHATML_TEMPLATE, ChatTemplate
from fst.core.constants import CHECKPOINT_KEY, LOSS_IGNORE
from fst.core.dialogs import Conversation, Message
from fst.training.checkpoint import load_checkpoint
from fst.training.cli import main
from fst.training.sequence_ul import assistant_prefixes, before_stop

REPO = Path(__file__).resolve().parents[1]
DIALOGS = REPO / "data" / "dialogs"
DIALOG_RUN = {
    "train_file": str(DIALOGS / "train.jsonl"),
    "valid_file": str(DIALOGS / "valid.jsonl"),
    "experiment_name": "dialogs",
    "tokenizer": "gpt2",  # no BPE to train; 50k rows of 32 floats
    "model_overrides": {"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 512},
    "max_body_len": 512,
    "max_steps": 2,
    "val_check_interval": 2,
    "limit_val_batches": 1,
}


@pytest.fixture(scope="module")
def dialog_checkpoint(tmp_path_factory) -> Path:
    result = run_tiny_training(tmp_path_factory.mktemp("dialogs"), **DIALOG_RUN)
    assert result.last_checkpoint is not None
    return result.last_checkpoint


def test_dialog_checkpoint_carries_chatml_and_its_added_tokens(dialog_checkpoint):
    loaded = load_checkpoint(dialog_checkpoint)
    chat = ChatFormat.from_payload(loaded.info["chat"])
    assert chat.template == CHATML_TEMPLATE and chat.end_of_turn == ("<|im_end|>",)
    tokenizer = loaded.tokenizer
    assert not tokenizer.document_format
    start, end = tokenizer.token_id("<|im_start|>"), tokenizer.token_id("<|im_end|>")
    assert {start, end} == {50257, 50258}  # appended to GPT-2's 50257 tokens
    embeddings = loaded.model.get_input_embeddings().weight
    assert embeddings.shape[0] == tokenizer.vocab_size == 50259


def test_exported_dialog_model_has_manifest_chat_and_the_runtime_answers_greedily(
    dialog_checkpoint, tmp_path
):
    from fst.export.exporter import export_bundle
    from fst.runtime import Generator

    manifest = export_bundle(tmp_path / "bundle", ckpt=dialog_checkpoint, progress=False)
    assert manifest.chat is not None
    assert manifest.chat.template == CHATML_TEMPLATE
    loaded = load_checkpoint(dialog_checkpoint)
    tokenizer = loaded.tokenizer
    assert manifest.chat.stop_token_ids == [
        tokenizer.token_id("<|im_end|>"),
        tokenizer.eos_token_id,
    ]

    generator = Generator.from_bundle(tmp_path / "bundle")
    chat = generator.chat
    messages = [{"role": "user", "content": 'What does the Python reference say about "for"?'}]
    text = ChatTemplate(chat.template, chat.special_tokens).render(messages)
    assert text.endswith("<|im_start|>assistant\n")
    prompt = generator.tokenizer.encode_markup(text)
    assert prompt[0] == tokenizer.token_id("<|im_start|>")

    steps = 8
    logits, cache = generator.stepper.prefill([prompt], generator.tokenizer.pad_token_id, steps)
    runtime_ids = []
    for _ in range(steps):
        token = int(np.argmax(logits[0]))
        runtime_ids.append(token)
        logits = generator.stepper.decode(cache, np.array([[token]], dtype=np.int64))
    with torch.no_grad():
        out = loaded.model.generate(
            torch.tensor([prompt]), max_new_tokens=steps, do_sample=False, min_new_tokens=steps
        )
    assert runtime_ids == out[0, len(prompt) :].tolist()


def test_bad_dialog_line_stops_fst_train_with_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    code = main(
        [
            "--train_file", str(bad), "--valid_file", str(bad),
            "--experiments_root", str(tmp_path / "experiments"),
            "--num_workers", "0", "--accelerator", "cpu", "--max_steps", "1",
        ]
    )  # fmt: skip
    assert code == 2
    assert f"fst-train: error: {bad}:1: no assistant turn" in capsys.readouterr().err


def test_sequence_level_prefixes_end_where_assistant_turns_start():
    ids = torch.arange(20).reshape(2, 10)
    labels = torch.full((2, 10), LOSS_IGNORE)
    labels[0, 4:7] = ids[0, 4:7]  # an assistant turn at 4
    labels[0, 8:] = ids[0, 8:]  # and at 8
    labels[1, 2:5] = ids[1, 2:5]  # at 2: fewer than 3 tokens before it
    prefixes = assistant_prefixes(ids, labels, prefix_len=3, max_prefixes=8)
    assert prefixes.tolist() == [[5, 6, 7], [1, 2, 3]]  # last turns first
    assert assistant_prefixes(ids, labels, prefix_len=9, max_prefixes=8) is None
    mask = before_stop(torch.tensor([[1, 2, 9, 3], [9, 1, 1, 1]]), (9,))
    assert mask.tolist() == [[True, True, False, False], [False, False, False, False]]


def test_token_and_sequence_unlikelihood_train_on_dialogs(tmp_path):
    result = run_tiny_training(
        tmp_path,
        **{
            **DIALOG_RUN,
            "unlikelihood_alpha": 1.0,
            "sequence_unlikelihood": True,
            "sequence_ul_prob": 1.0,
            "prefix_len": 16,
            "continuation_len": 8,
            "sequence_ul_prefixes": 2,
        },
    )
    info = torch.load(result.last_checkpoint, weights_only=True)[CHECKPOINT_KEY]
    assert info["chat"]["template"] == CHATML_TEMPLATE and result.global_step == 2
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(result.experiment.logs_dir / "tensorboard"))
    events.Reload()
    assert len(events.Scalars("SeqUL-Loss/train")) == 2  # both updates were sequence-level


def test_chat_encoder_of_a_checkpoint_reproduces_training_labels(dialog_checkpoint):
    loaded = load_checkpoint(dialog_checkpoint)
    chat = ChatFormat.from_payload(loaded.info["chat"])
    encoder = ChatEncoder(loaded.tokenizer, chat, 512)
    conversation = Conversation((Message("user", "Hi"), Message("assistant", "Hello there.")), "x")
    encoding = encoder.encode(conversation)
    learnt = [
        t
        for t, label in zip(encoding.token_ids, encoding.labels, strict=True)
        if label != LOSS_IGNORE
    ]
    assert loaded.tokenizer.decode(learnt, skip_special_tokens=False) == "Hello there.<|im_end|>"


def test_chat_format_of_a_run_is_the_model_folders_own_else_chatml(tmp_path, gpt2_bpe_dir):
    from fst.core.tokenization import DocumentTokenizer
    from fst.training.dialog_data import chat_format_for

    tokenizer = DocumentTokenizer.gpt2(document_format=False)
    assert chat_format_for(str(gpt2_bpe_dir), None, tokenizer).template == CHATML_TEMPLATE
    template = "{% for m in messages %}{{ m['content'] }}<|endoftext|>{% endfor %}"
    config = {"chat_template": template, "eos_token": "<|endoftext|>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    own = chat_format_for(str(tmp_path), None, tokenizer)
    assert own.template == template and own.template_source == "tokenizer_config.json"
    assert own.end_of_turn == ("<|endoftext|>",) and own.markers == ()
    # A checkpoint trained on documents (no "chat" in its payload) gets ChatML.
    assert chat_format_for("x.ckpt", {"format_version": 1}, tokenizer).template == CHATML_TEMPLATE
