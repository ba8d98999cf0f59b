"""The manifest's chat section and sampling defaults, read from a Hugging Face model folder
as transformers reads it (fst.core.chat_info), through fst-export to the runtime."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tokenizers

from fst.core.bundle import BundleManifest, ChatInfo
from fst.core.chat_info import read_chat_info, read_generation_defaults
from fst.core.chat_template import CHATML_TEMPLATE, ChatTemplate


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory, gpt2_bpe_dir) -> Path:
    """A tiny random GPT-2 whose tokenizer has ChatML's tokens and template, with a
    generation_config.json that samples (temperature 0.6, top_p 0.9) and two eos ids."""
    import torch
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    folder = tmp_path_factory.mktemp("chat_model")
    tokenizer = GPT2TokenizerFast(
        vocab=str(gpt2_bpe_dir / "vocab.json"), merges=str(gpt2_bpe_dir / "merges.txt")
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML_TEMPLATE
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64, vocab_size=len(tokenizer))
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    GenerationConfig(
        do_sample=True, temperature=0.6, top_p=0.9, eos_token_id=[im_end, 50256]
    ).save_pretrained(folder)
    return folder


def _vocabulary(folder: Path) -> tokenizers.Tokenizer:
    return tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))


def test_chat_info_of_a_folder(chat_model_dir):
    info = read_chat_info(chat_model_dir, _vocabulary(chat_model_dir))
    assert info is not None
    assert info.template == CHATML_TEMPLATE
    assert info.template_source in ("chat_template.jinja", "tokenizer_config.json")
    assert info.special_tokens["eos_token"] == "<|endoftext|>"
    im_end = _vocabulary(chat_model_dir).token_to_id("<|im_end|>")
    assert info.stop_token_ids == sorted({im_end, 50256})


def test_generation_defaults_of_a_folder(chat_model_dir, tmp_path):
    assert read_generation_defaults(chat_model_dir) == {"temperature": 0.6, "top_p": 0.9}
    greedy = {"do_sample": False, "temperature": 0.6, "top_k": 20}
    (tmp_path / "generation_config.json").write_text(json.dumps(greedy))
    assert read_generation_defaults(tmp_path) == {"temperature": 0.0}
    (tmp_path / "generation_config.json").write_text(json.dumps({"top_k": 40, "bos_token_id": 1}))
    assert read_generation_defaults(tmp_path) == {"top_k": 40}
    (tmp_path / "generation_config.json").write_text(json.dumps({"top_p": 3.0}))
    assert read_generation_defaults(tmp_path) == {}  # out of range: not a default to keep
    (tmp_path / "generation_config.json").unlink()
    assert read_generation_defaults(tmp_path) == {}


def test_folder_without_template_or_with_a_broken_one_has_no_chat(tmp_path, gpt2_bpe_dir):
    vocabulary = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0}, unk_token="a"))
    assert read_chat_info(tmp_path, vocabulary) is None
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{% for %}"}))
    assert read_chat_info(tmp_path, vocabulary) is None


def test_jinja_file_wins_over_tokenizer_config(tmp_path):
    vocabulary = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0}, unk_token="a"))
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": "old", "eos_token": {"content": "a", "special": True}})
    )
    (tmp_path / "chat_template.jinja").write_text(CHATML_TEMPLATE)
    info = read_chat_info(tmp_path, vocabulary)
    assert info is not None and info.template == CHATML_TEMPLATE
    assert info.template_source == "chat_template.jinja"
    assert info.special_tokens == {"eos_token": "a"} and info.stop_token_ids == [0]


def test_export_carries_chat_and_defaults_to_the_runtime(chat_model_dir, tmp_path):
    from fst.export.exporter import export_bundle
    from fst.runtime import Generator

    manifest = export_bundle(tmp_path / "bundle", model_path=str(chat_model_dir), progress=False)
    assert manifest.chat == read_chat_info(chat_model_dir, _vocabulary(chat_model_dir))
    assert manifest.generation_defaults == {"temperature": 0.6, "top_p": 0.9}
    assert manifest.source_format is None
    assert BundleManifest.load(tmp_path / "bundle") == manifest  # the JSON round trip
    generator = Generator.from_bundle(tmp_path / "bundle")
    assert generator.chat == manifest.chat
    assert (generator.default_params.temperature, generator.default_params.top_p) == (0.6, 0.9)
    messages = [{"role": "user", "content": "hi"}]
    assert ChatTemplate(generator.chat.template).render(messages).endswith("assistant\n")


def test_plain_bundle_has_no_chat_and_old_manifests_load(tiny_plain_bundle, tmp_path):
    manifest = BundleManifest.load(tiny_plain_bundle)
    assert manifest.chat is None and manifest.source_format is None
    assert manifest.generation_defaults == {}
    data = json.loads((tiny_plain_bundle / "fst_bundle.json").read_text())
    for key in ("chat", "source_format", "generation_defaults"):
        data.pop(key)
    (tmp_path / "fst_bundle.json").write_text(json.dumps(data))
    old = BundleManifest.load(tmp_path)
    assert old.chat is None and old.source_format is None and old.generation_defaults == {}


def test_manifest_round_trip_with_chat(tiny_plain_bundle, tmp_path):
    chat = ChatInfo(
        template=CHATML_TEMPLATE,
        template_source="the GGUF file",
        special_tokens={"eos_token": "<|im_end|>"},
        stop_token_ids=[2, 7],
    )
    manifest = BundleManifest.load(tiny_plain_bundle).model_copy(
        update={"chat": chat, "source_format": "GGUF Q4_1"}
    )
    manifest.save(tmp_path)
    assert BundleManifest.load(tmp_path) == manifest
