"""Model presets, pretrained loading from a local folder, mean-initialised new embeddings."""

from __future__ import annotations

import pytest
import torch
import transformers

from fst.training.model import PRESETS, ModelError, build_model, resize_token_embeddings


def save_tiny_pretrained(
    folder, tie: bool = True, vocab_size: int = 50
) -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1,
        n_head=2,
        n_embd=16,
        n_positions=32,
        vocab_size=vocab_size,
        tie_word_embeddings=tie,
    )
    model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(folder)
    return model


def test_presets_are_gpt2_configs():
    model = build_model("tiny", vocab_size=123, eos_token_id=7)
    assert isinstance(model, transformers.GPT2LMHeadModel)
    assert model.config.vocab_size == 123
    assert model.config.eos_token_id == 7
    for key, value in PRESETS["tiny"].items():
        assert getattr(model.config, key) == value
    assert PRESETS["gpt2-small"] == {
        "n_layer": 12,
        "n_head": 12,
        "n_embd": 768,
        "n_positions": 1024,
    }
    assert PRESETS["gpt2-6l"]["n_layer"] == 6


def test_preset_overrides():
    model = build_model("tiny", vocab_size=40, overrides={"n_layer": 1, "n_embd": 32})
    assert (model.config.n_layer, model.config.n_embd, model.config.n_head) == (1, 32, 2)
    assert model.get_input_embeddings().weight.shape == (40, 32)


def test_pretrained_folder_new_rows_are_the_mean_of_the_old_ones(tmp_path):
    original = save_tiny_pretrained(tmp_path)
    old = original.get_input_embeddings().weight.detach().clone()  # [50, 16]

    model = build_model(str(tmp_path), vocab_size=53)

    weight = model.get_input_embeddings().weight.detach()
    assert weight.shape == (53, 16)
    torch.testing.assert_close(weight[:50], old)  # pretrained rows untouched
    mean = old.mean(dim=0)
    for row in range(50, 53):
        torch.testing.assert_close(weight[row], mean)
    # GPT-2 ties the output projection to the input embeddings: still tied, same rows.
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    assert model.config.vocab_size == 53
    # Other pretrained weights are loaded as saved.
    torch.testing.assert_close(
        model.transformer.h[0].attn.c_attn.weight, original.transformer.h[0].attn.c_attn.weight
    )


def test_untied_output_embeddings_also_get_the_mean(tmp_path):
    original = save_tiny_pretrained(tmp_path, tie=False)
    old_out = original.lm_head.weight.detach().clone()
    model = build_model(str(tmp_path), vocab_size=52)
    assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()
    torch.testing.assert_close(model.lm_head.weight[50:].detach(), old_out.mean(0).expand(2, -1))
    torch.testing.assert_close(model.lm_head.weight[:50].detach(), old_out)


def test_smaller_tokenizer_leaves_the_model_as_is(tmp_path):
    save_tiny_pretrained(tmp_path)
    model = build_model(str(tmp_path), vocab_size=40)
    assert model.get_input_embeddings().weight.shape[0] == 50


def test_resize_is_a_no_op_at_equal_size():
    model = build_model("tiny", vocab_size=30)
    before = model.get_input_embeddings().weight.detach().clone()
    resize_token_embeddings(model, 30)
    torch.testing.assert_close(model.get_input_embeddings().weight.detach(), before)


def test_bad_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match=r"not a preset .*\(no config.json\)"):
        build_model(str(tmp_path / "missing"), vocab_size=10)
    with pytest.raises(ModelError, match="no config.json"):
        build_model(str(tmp_path), vocab_size=10)  # exists, but is not a model folder
