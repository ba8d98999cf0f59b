"""GGUF sources of fst-export (fst.training.gguf_import): which paths are GGUF files, the
weight type they record, and one-line failures that leave nothing behind. The real model's
import, parity and chat are the slow tests in tests/test_real_model.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fst.core.bundle import check_bundle
from fst.export import cli
from fst.training.gguf_import import GGUFError, find_gguf, load_gguf, read_header

# A template that needs no special tokens beyond the EOS, so a tiny vocabulary has them all.
TINY_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)
TINY_MERGES = 200  # GPT-2's first merges: its ids 256 .. 455 are their results
EOS = "<|endoftext|>"


def write_gguf(path: Path, architecture: str = "llama", file_type: int | None = 3) -> Path:
    """A small GGUF file: metadata and one F32 matrix (no model transformers could load)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    if file_type is not None:
        writer.add_file_type(file_type)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _llama_cpp_rope_order(weight: np.ndarray, heads: int) -> np.ndarray:
    """q/k rows as llama.cpp's converter stores them (transformers undoes it on load)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, -1).swapaxes(1, 2).reshape(weight.shape)


@pytest.fixture(scope="module")
def tiny_llama_gguf(tmp_path_factory, gpt2_bpe_dir):
    """(GGUF path, the Hugging Face model it was written from): a 2-layer grouped-query Llama
    with Q8_0 matrices, a 457-token byte-level BPE (GPT-2's first merges), EOS and a chat
    template, laid out as llama.cpp's converter writes it."""
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("tiny_gguf"), gpt2_bpe_dir, "Q8_0")


@pytest.fixture(scope="module")
def tiny_q4_1_gguf(tmp_path_factory, gpt2_bpe_dir):
    """The same model as SmolLM2's file stores it: Q4_1 matrices, a Q8_0 token table."""
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("tiny_q4_1"), gpt2_bpe_dir, "Q4_1")


def write_tiny_llama_gguf(folder: Path, gpt2_bpe_dir: Path, matrices: str):
    """(path, model): the tiny Llama, its layer matrices in `matrices` blocks."""
    import json

    import gguf
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = json.loads((gpt2_bpe_dir / "vocab.json").read_text())
    tokens = [*sorted(vocab, key=vocab.get)[: 256 + TINY_MERGES], EOS]
    merges = (gpt2_bpe_dir / "merges.txt").read_text().splitlines()[1 : 1 + TINY_MERGES]
    eos_id = len(tokens) - 1
    config = LlamaConfig(
        vocab_size=len(tokens), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, bos_token_id=eos_id, eos_token_id=eos_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    path = folder / f"tiny-llama.{matrices}.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(256)
    writer.add_embedding_length(64)
    writer.add_block_count(2)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(16)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(getattr(gguf.LlamaFileType, f"MOSTLY_{matrices}"))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * eos_id + [gguf.TokenType.CONTROL])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(eos_id)
    writer.add_eos_token_id(eos_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(TINY_TEMPLATE)

    def blocks(name: str, weight: np.ndarray, kind: str = matrices) -> None:
        kind = getattr(gguf.GGMLQuantizationType, kind)
        writer.add_tensor(name, gguf.quants.quantize(weight, kind), raw_dtype=kind)

    blocks("token_embd.weight", weights["model.embed_tokens.weight"], "Q8_0")
    writer.add_tensor("output_norm.weight", weights["model.norm.weight"])
    for i in range(2):
        layer, block = f"model.layers.{i}.", f"blk.{i}."
        writer.add_tensor(block + "attn_norm.weight", weights[layer + "input_layernorm.weight"])
        writer.add_tensor(
            block + "ffn_norm.weight", weights[layer + "post_attention_layernorm.weight"]
        )
        blocks(
            block + "attn_q.weight",
            _llama_cpp_rope_order(weights[layer + "self_attn.q_proj.weight"], 4),
        )
        blocks(
            block + "attn_k.weight",
            _llama_cpp_rope_order(weights[layer + "self_attn.k_proj.weight"], 2),
        )
        for ours, theirs in [
            ("attn_v", "self_attn.v_proj"), ("attn_output", "self_attn.o_proj"),
            ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"), ("ffn_down", "mlp.down_proj"),
        ]:  # fmt: skip
            blocks(f"{block}{ours}.weight", weights[f"{layer}{theirs}.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, model


@pytest.fixture(scope="module")
def tiny_loaded(tiny_llama_gguf):
    return load_gguf(tiny_llama_gguf[0])


def test_gguf_loads_as_the_model_it_was_written_from(tiny_llama_gguf, tiny_loaded):
    import torch

    _, original = tiny_llama_gguf
    loaded = tiny_loaded
    assert loaded.source_format == "GGUF Q8_0" and loaded.architecture == "llama"
    assert getattr(loaded.model.config, "quantization_config", None) is None
    assert (
        loaded.model.lm_head.weight.data_ptr() == loaded.model.model.embed_tokens.weight.data_ptr()
    )
    ids = torch.tensor([[31, 82, 257, 300, 44, 12]])
    with torch.no_grad():
        expected, actual = original(ids).logits, loaded.model(ids).logits
    # Q8_0 rounding only (a wrong q/k row order would change the attention pattern).
    scale = float(expected.abs().max())
    assert float((actual - expected).abs().max()) < 0.05 * scale
    assert torch.equal(actual.argmax(-1), expected.argmax(-1))


def test_fst_export_takes_a_gguf_file(tiny_llama_gguf, tmp_path, capsys):
    path, _ = tiny_llama_gguf
    output = tmp_path / "bundle"
    code = cli.main(["--model_path", str(path.parent), "--output", str(output), "--quiet",
                     "--log_file", str(tmp_path / "log")])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "weights dequantized from GGUF Q8_0" in out.out and "the GGUF file" in out.out
    assert out.err == ""  # no progress bar of transformers' dequantization
    manifest = check_bundle(output, hashes=True)
    assert manifest.source_format == "GGUF Q8_0"
    assert manifest.training.source == str(path)
    assert manifest.parity.passed and manifest.parity.top1_agreement == 1.0
    assert manifest.chat is not None and manifest.chat.template == TINY_TEMPLATE
    assert manifest.chat.template_source == "the GGUF file"
    assert manifest.chat.special_tokens["eos_token"] == EOS
    assert manifest.chat.stop_token_ids == [manifest.tokenizer.eos_token_id]
    assert manifest.architecture.max_positions == 256


def test_int4_export_keeps_the_gguf_files_own_blocks(tiny_q4_1_gguf, tmp_path, capsys):
    """A Q4_1 file exported as int4 holds exactly the weights PyTorch dequantized: with fp32
    activations (accuracy level 0) the graph's logits are PyTorch's to float rounding,
    where re-quantising the weights would move every block's offset."""
    import onnx

    from fst.core.constants import BUNDLE_MODEL
    from fst.export.exporter import PARITY_PROMPTS
    from fst.export.reference import record_reference
    from fst.export.verify import verify_parity

    path, _ = tiny_q4_1_gguf
    output = tmp_path / "bundle"
    code = cli.main(["--model_path", str(path), "--output", str(output), "--quantize", "int4",
                     "--optimize", "--quiet", "--log_file", str(tmp_path / "log")])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    manifest = check_bundle(output, hashes=True)
    scheme = manifest.graph.int4
    # 2 layers x 7 matrices, the tied output projection and the token table.
    assert scheme.from_gguf == 16 and scheme.lm_head and scheme.embedding
    assert scheme.block_size == 32 and scheme.matmuls == 15
    assert manifest.parity.passed
    model = onnx.load(str(output / BUNDLE_MODEL), load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulNBits") == 15 and ops.count("GatherBlockQuantized") == 1
    assert "MatMul" in ops  # Q4_1's offset terms
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.name == "accuracy_level":
                attribute.i = 0
    fp32_activations = output / "fp32_activations.onnx"
    onnx.save(model, str(fp32_activations))
    loaded = load_gguf(path)
    prompts = [loaded.tokenizer.encode(p) for p in PARITY_PROMPTS]
    reference = record_reference(loaded.model, prompts)
    pad = manifest.tokenizer.pad_token_id
    graph = manifest.graph
    report = verify_parity(
        reference, fp32_activations, pad_id=pad, logits=graph.logits, kv_layout=graph.kv_layout
    )
    assert report.top1_agreement == 1.0
    assert report.max_abs_diff < 1e-4, report


def test_fst_train_builds_a_gguf_model_and_its_tokenizer(tiny_llama_gguf, tiny_loaded):
    from fst.training.gguf_import import gguf_tokenizer
    from fst.training.model import build_model

    path, _ = tiny_llama_gguf
    tokenizer = gguf_tokenizer(path, document_format=True)
    assert tokenizer.eos_token == EOS
    text = "the theory of the thing, then"
    assert tokenizer.encode_text(text) == tiny_loaded.tokenizer.encode(
        text, add_special_tokens=False
    )
    model = build_model(str(path), tokenizer.vocab_size)
    assert model.training
    assert model.get_input_embeddings().weight.shape[0] == tokenizer.vocab_size


def cli_fails(args: list[str], capsys) -> str:
    """fst-export in-process: exit 2, one line on stderr, no output folder."""
    output = Path(args[args.index("--output") + 1])
    capsys.readouterr()
    code = cli.main([*args, "--quiet", "--log_file", str(output.parent / "debug.log")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not output.exists()
    assert not list(output.parent.glob(f"{output.name}.tmp-*"))
    return err


def test_find_gguf_takes_a_file_or_a_folder_with_exactly_one(tmp_path):
    (tmp_path / "one").mkdir()
    file = write_gguf(tmp_path / "one" / "model.Q4_1.gguf")
    assert find_gguf(file) == file
    assert find_gguf(tmp_path / "one") == file
    (tmp_path / "one" / "config.json").write_text("{}")  # a Hugging Face folder wins
    assert find_gguf(tmp_path / "one") is None
    (tmp_path / "empty").mkdir()
    assert find_gguf(tmp_path / "empty") is None
    assert find_gguf(tmp_path / "missing") is None
    (tmp_path / "two").mkdir()
    write_gguf(tmp_path / "two" / "a.gguf")
    write_gguf(tmp_path / "two" / "b.gguf")
    with pytest.raises(GGUFError, match="several GGUF files"):
        find_gguf(tmp_path / "two")


@pytest.mark.parametrize(("file_type", "expected"), [(3, "Q4_1"), (7, "Q8_0"), (1, "F16")])
def test_weight_type_is_read_from_the_header(tmp_path, file_type, expected):
    path = write_gguf(tmp_path / "m.gguf", file_type=file_type)
    assert read_header(path) == ("llama", expected)


def test_weight_type_without_file_type_is_the_matrices_type(tmp_path):
    assert read_header(write_gguf(tmp_path / "m.gguf", file_type=None)) == ("llama", "F32")


def test_unreadable_gguf_fails_in_one_line(tmp_path, capsys):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00truncated")
    err = cli_fails(["--model_path", str(bad), "--output", str(tmp_path / "out")], capsys)
    assert "not a readable GGUF file" in err and str(bad) in err


def test_unsupported_gguf_architecture_fails_in_one_line(tmp_path, capsys):
    path = write_gguf(tmp_path / "bert.gguf", architecture="bert")
    err = cli_fails(["--model_path", str(path), "--output", str(tmp_path / "out")], capsys)
    assert "'bert'" in err and str(path) in err


def test_folder_with_several_gguf_files_fails_in_one_line(tmp_path, capsys):
    write_gguf(tmp_path / "a.gguf")
    write_gguf(tmp_path / "b.gguf")
    err = cli_fails(["--model_path", str(tmp_path), "--output", str(tmp_path / "out")], capsys)
    assert "several GGUF files (a.gguf, b.gguf)" in err


def test_folder_without_config_or_gguf_names_both(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    err = cli_fails(
        ["--model_path", str(tmp_path / "model"), "--output", str(tmp_path / "out")], capsys
    )
    assert "no config.json" in err and "GGUF" in err
