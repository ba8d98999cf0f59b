"""fst.export: ONNX bundles with KV cache, checked against PyTorch / Hugging Face.

Tiny models only (2 layers, n_embd 32). The references are the Hugging Face model itself:
its logits and `generate(do_sample=False)` tokens.
"""

from __future__ import annotations

import collections
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from transformers import AutoModelForCausalLM

from fst.core.bundle import BundleManifest, ParityReport, sha256_file
from fst.core.constants import BUNDLE_MANIFEST, BUNDLE_MODEL, BUNDLE_TOKENIZER, onnx_past_names
from fst.core.contract import GraphContract
from fst.core.tokenization import DocumentTokenizer
from fst.export import cli
from fst.export.exporter import ExportError, export_bundle
from fst.export.reference import record_reference
from fst.export.tied_weights import share_tied_embedding
from fst.export.verify import padded, verify_parity
from fst.runtime.session import (
    CPU,
    ProviderUnavailableError,
    choose_providers,
    create_session,
    session_options,
    tensorrt_options,
)

PROMPTS = [[464, 3290, 286, 1204, 318, 326, 262], [15496, 995]]  # GPT-2 ids, lengths 7 and 2


# ---- helpers ------------------------------------------------------------------------------


def hf_model(folder: Path):
    return AutoModelForCausalLM.from_pretrained(folder).eval()


def left_pad(prompts, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    return padded(prompts, pad_id, side="left")


def position_ids_for(mask: np.ndarray) -> np.ndarray:
    """Positions counted over real tokens only: left padding does not shift them."""
    return np.clip(np.cumsum(mask, axis=-1) - 1, 0, None).astype(np.int64)


def run(session, manifest: BundleManifest, ids, mask, past=None):
    """One ONNX step; past=None means an empty past (past_seq = 0; with the shared KV
    layout, empty buffers with room for 16 more tokens)."""
    arch = manifest.architecture
    if past is None:
        capacity = mask.shape[1] + 16 if manifest.graph.kv_layout == "shared" else 0
        shape = (ids.shape[0], arch.num_heads, capacity, arch.head_dim)
        past = {
            name: np.zeros(shape, dtype=manifest.graph.dtype)
            for i in range(arch.num_layers)
            for name in onnx_past_names(i)
        }
    positions = position_ids_for(mask)[:, -ids.shape[1] :]
    feed = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, **past}
    logits, *presents = session.run(None, feed)
    return logits, dict(zip(past, presents, strict=True))


def ort_greedy(bundle: Path, prompts, steps: int, pad_id: int) -> np.ndarray:
    """Greedy tokens [B, steps] from an ONNX Runtime loop with KV cache."""
    manifest = BundleManifest.load(bundle)
    session, _ = create_session(bundle / BUNDLE_MODEL, providers=["cpu"], threads=1)
    ids, mask = left_pad(prompts, pad_id)
    past, tokens = None, []
    for _ in range(steps):
        logits, past = run(session, manifest, ids, mask, past)
        ids = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
        mask = np.concatenate([mask, np.ones_like(ids)], axis=1)
        tokens.append(ids[:, 0])
    return np.stack(tokens, axis=1)


def embedding_sized(model: onnx.ModelProto, vocab: int = 50257, hidden: int = 32) -> list[str]:
    """Initializers shaped like the token embedding or its transpose."""
    return [t.name for t in model.graph.initializer if sorted(t.dims) == sorted([vocab, hidden])]


def head_weight_producer(model: onnx.ModelProto, op_type: str) -> onnx.NodeProto:
    """The node computing the second input of the (only) `op_type` node that makes logits."""
    head = next(n for n in model.graph.node if n.op_type == op_type and "lm_head" in n.name)
    return next(n for n in model.graph.node if head.input[1] in n.output)


def no_temp_dirs(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


@pytest.fixture(scope="module")
def all_logits_bundle(tmp_path_factory, tiny_hf_model_dir) -> Path:
    """The plain graph (--no_optimize): the tests run it raw, with concatenated KV caches."""
    output = tmp_path_factory.mktemp("all_logits") / "bundle"
    export_bundle(
        output, model_path=str(tiny_hf_model_dir), optimize=False, logits="all", progress=False
    )
    return output


# ---- the plain (Hugging Face folder) bundle -------------------------------------------------


def test_manifest_is_complete_and_matches_the_files(tiny_plain_bundle, tiny_hf_model_dir):
    manifest = BundleManifest.load(tiny_plain_bundle)
    config = json.loads((tiny_hf_model_dir / "config.json").read_text())
    arch = manifest.architecture
    assert (arch.model_type, arch.num_layers, arch.num_heads) == ("gpt2", 2, 2)
    assert (arch.hidden_size, arch.head_dim, arch.max_positions) == (32, 16, 128)
    assert arch.vocab_size == config["vocab_size"] == 50257
    assert manifest.graph.variant == "fp32" and manifest.graph.dtype == "float32"
    assert manifest.graph.logits == "last" and manifest.graph.external_data == "model.onnx.data"
    # The graph really has the names the manifest promises, in that order.
    graph = onnx.load(str(tiny_plain_bundle / BUNDLE_MODEL), load_external_data=False).graph
    assert [i.name for i in graph.input] == manifest.graph.inputs
    assert [o.name for o in graph.output] == manifest.graph.outputs
    assert manifest.graph.inputs[3:5] == ["past_key_values.0.key", "past_key_values.0.value"]
    assert manifest.graph.outputs[1:3] == ["present.0.key", "present.0.value"]
    # Plain LM: GPT-2's EOS, no document tokens.
    tok = manifest.tokenizer
    assert tok.document_format is False and tok.eos_token_id == 50256
    assert tok.start_of_document_id is None and tok.end_of_meta_id is None
    assert manifest.training.source == str(tiny_hf_model_dir)
    assert manifest.training.global_step is None
    assert {"torch", "transformers", "onnx", "onnxruntime", "fst"} <= set(manifest.versions)
    # Every file is listed with its real sha256, and nothing else is in the folder.
    files = sorted(p.name for p in tiny_plain_bundle.iterdir())
    assert files == sorted([*manifest.files, BUNDLE_MANIFEST])
    for name, digest in manifest.files.items():
        assert sha256_file(tiny_plain_bundle / name) == digest
    # Readable like any folder made with mkdir (servers may run as another user).
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(tiny_plain_bundle.stat().st_mode) == 0o777 & ~umask
    for name in files:
        assert stat.S_IMODE((tiny_plain_bundle / name).stat().st_mode) == 0o666 & ~umask
    assert manifest.parity.passed and manifest.parity.tolerance == pytest.approx(1e-3)
    assert manifest.parity.max_abs_diff <= manifest.parity.tolerance
    assert manifest.parity.checked_positions == 2 * 7  # 2 rows x (prefill + 6 decode steps)
    assert no_temp_dirs(tiny_plain_bundle.parent)


def test_bundle_tokenizer_is_gpt2s(tiny_plain_bundle):
    tokenizer = DocumentTokenizer.from_pretrained(
        tiny_plain_bundle / BUNDLE_TOKENIZER, document_format=False
    )
    assert tokenizer.encode_text("Hello world") == [15496, 995]


def test_verification_passes_again_on_the_written_bundle(tiny_plain_bundle, tiny_hf_model_dir):
    reference = record_reference(hf_model(tiny_hf_model_dir), PROMPTS, decode_steps=5)
    report = verify_parity(reference, tiny_plain_bundle / BUNDLE_MODEL, pad_id=50256, logits="last")
    assert report.passed and report.max_abs_diff < 1e-4 and report.top1_agreement == 1.0
    assert report.checked_positions == 2 * 6


def test_verification_drives_the_runtime_stepper(tiny_plain_bundle, tiny_hf_model_dir, monkeypatch):
    """A position bug in the runtime's own decode path fails the export's parity check."""
    from fst.runtime import kv_cache

    reference = record_reference(hf_model(tiny_hf_model_dir), PROMPTS, decode_steps=3)
    prefill = kv_cache.CausalLMStepper.prefill

    def off_by_one(self, *args, **kwargs):
        logits, cache = prefill(self, *args, **kwargs)
        cache.next_positions = cache.next_positions + 1
        return logits, cache

    monkeypatch.setattr(kv_cache.CausalLMStepper, "prefill", off_by_one)
    report = verify_parity(reference, tiny_plain_bundle / BUNDLE_MODEL, pad_id=50256, logits="last")
    assert not report.passed and report.max_abs_diff > report.tolerance


def test_all_logits_verification_scores_every_prompt_position(all_logits_bundle, tiny_hf_model_dir):
    reference = record_reference(hf_model(tiny_hf_model_dir), PROMPTS, decode_steps=2)
    report = verify_parity(reference, all_logits_bundle / BUNDLE_MODEL, pad_id=50256, logits="all")
    # the scoring prefill's 7 + 2 valid positions, then 2 rows x (prefill + 2 decode steps)
    assert report.passed and report.checked_positions == 9 + 2 * 3


def hf_greedy(model_dir: Path, prompts: list[list[int]], steps: int) -> np.ndarray:
    """Hugging Face `generate` (greedy, left-padded batch, always `steps` tokens)."""
    model = hf_model(model_dir)
    model.generation_config.eos_token_id = None  # always `steps` tokens, no early stop
    ids, mask = left_pad(prompts, 50256)
    return model.generate(
        input_ids=torch.from_numpy(ids),
        attention_mask=torch.from_numpy(mask),
        max_new_tokens=steps,
        do_sample=False,
        pad_token_id=50256,
    )[:, ids.shape[1] :].numpy()


def test_greedy_onnx_loop_equals_hf_generate(tiny_plain_bundle, tiny_hf_model_dir):
    expected = hf_greedy(tiny_hf_model_dir, PROMPTS, steps=8)
    got = ort_greedy(tiny_plain_bundle, PROMPTS, steps=8, pad_id=50256)
    np.testing.assert_array_equal(got, expected)


def test_prefill_with_empty_past_and_chunked_prefill_match_pytorch(
    all_logits_bundle, tiny_hf_model_dir
):
    manifest = BundleManifest.load(all_logits_bundle)
    session, _ = create_session(all_logits_bundle / BUNDLE_MODEL, providers=["cpu"], threads=1)
    ids = np.array([PROMPTS[0]], dtype=np.int64)
    with torch.no_grad():
        expected = hf_model(tiny_hf_model_dir)(torch.from_numpy(ids)).logits.numpy()
    # Whole prompt with past_seq = 0.
    full, presents = run(session, manifest, ids, np.ones_like(ids))
    assert full.shape == expected.shape
    np.testing.assert_allclose(full, expected, atol=1e-5)
    assert presents["past_key_values.0.key"].shape == (1, 2, 7, 16)
    # The same prompt in two chunks: 3 tokens with past 0, then 4 tokens with past 3.
    first, past = run(session, manifest, ids[:, :3], np.ones((1, 3), dtype=np.int64))
    second, _ = run(session, manifest, ids[:, 3:], np.ones((1, 7), dtype=np.int64), past)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), expected, atol=1e-5)


def test_left_padded_batch_equals_single_prompts(all_logits_bundle):
    manifest = BundleManifest.load(all_logits_bundle)
    session, _ = create_session(all_logits_bundle / BUNDLE_MODEL, providers=["cpu"], threads=1)
    ids, mask = left_pad(PROMPTS, 50256)
    batch_logits, batch_past = run(session, manifest, ids, mask)
    short = np.array([PROMPTS[1]], dtype=np.int64)
    single_logits, single_past = run(session, manifest, short, np.ones_like(short))
    # Row 1 is padded on the left by 5: its real positions are the last two.
    np.testing.assert_allclose(batch_logits[1, -2:], single_logits[0], atol=1e-5)
    # ... and the next decode step agrees too.
    step = np.array([[11], [11]], dtype=np.int64)
    batch_next, _ = run(session, manifest, step, np.concatenate([mask, [[1], [1]]], 1), batch_past)
    single_next, _ = run(session, manifest, step[1:], np.ones((1, 3), np.int64), single_past)
    np.testing.assert_allclose(batch_next[1], single_next[0], atol=1e-5)


def test_share_tied_embedding_replaces_only_an_exact_transpose():
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    table = rng.standard_normal((5, 3)).astype(np.float32)  # [vocab, hidden]
    other = table.T + np.float32(1.0)  # the same shape, not the table's transpose
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["embedded"]),
            helper.make_node("MatMul", ["x", "tied"], ["tied_out"], name="lm_head"),
            helper.make_node("MatMul", ["x", "other"], ["other_out"]),
        ],
        "g",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, [2]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
        ],
        [
            helper.make_tensor_value_info(
                name, TensorProto.FLOAT, [2, 3] if name == "embedded" else [2, 5]
            )
            for name in ("embedded", "tied_out", "other_out")
        ],
        [
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(table.T.copy(), "tied"),
            numpy_helper.from_array(other, "other"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert share_tied_embedding(model) == ["tied"]
    onnx.checker.check_model(model)
    assert sorted(t.name for t in model.graph.initializer) == ["other", "table"]
    session = ort.InferenceSession(model.SerializeToString(), providers=[CPU])
    ids, x = np.array([4, 0]), rng.standard_normal((2, 3)).astype(np.float32)
    embedded, tied_out, other_out = session.run(None, {"ids": ids, "x": x})
    np.testing.assert_array_equal(embedded, table[ids])
    np.testing.assert_allclose(tied_out, x @ table.T, rtol=1e-6)
    np.testing.assert_allclose(other_out, x @ other, rtol=1e-6)
    assert share_tied_embedding(model) == []  # nothing left to share


def test_tied_lm_head_is_stored_once_and_folded_by_onnx_runtime(tiny_plain_bundle, tmp_path):
    model = onnx.load(str(tiny_plain_bundle / BUNDLE_MODEL))
    # The tracer folded lm_head's Transpose(wte) into a second [32, vocab] copy; it is gone.
    assert embedding_sized(model) == ["model.transformer.wte.weight"]
    transpose = head_weight_producer(model, "MatMul")
    assert transpose.op_type == "Transpose"
    assert list(transpose.input) == ["model.transformer.wte.weight"]
    # ONNX Runtime folds that Transpose when the session loads: no transpose per decode step.
    options = session_options(threads=1)
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tiny_plain_bundle / BUNDLE_MODEL), options, providers=[CPU])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"), load_external_data=False)
    assert "Transpose" not in {n.op_type for n in optimized.graph.node if "wte" in n.input[0]}


# ---- variants -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory, tiny_hf_model_dir, tiny_plain_bundle) -> Path:
    """A plain-graph (--no_optimize) int8 export through the CLI, with --force over a copy
    of the plain bundle."""
    import shutil

    output = tmp_path_factory.mktemp("int8") / "bundle"
    shutil.copytree(tiny_plain_bundle, output)
    args = ["--model_path", str(tiny_hf_model_dir), "--output", str(output)]
    log = str(output.parent / "debug.log")
    flags = ["--force", "--no_optimize", "--quantize", "int8", "--quiet", "--log_file", log]
    assert cli.main([*args, *flags]) == 0
    return output


def test_int8_export_is_smaller_and_reports_its_parity(int8_bundle, tiny_plain_bundle):
    manifest = BundleManifest.load(int8_bundle)
    assert manifest.graph.variant == "int8" and manifest.graph.dtype == "float32"
    assert manifest.graph.int8_weights in ("QInt8", "QUInt8")
    parity = manifest.parity
    assert parity.tolerance is None and parity.passed
    assert 0 < parity.max_abs_diff < 1.0 and parity.top1_agreement >= 0.8
    assert sha256_file(int8_bundle / BUNDLE_MODEL) == manifest.files[BUNDLE_MODEL]
    fp32_size = sum(f.stat().st_size for f in tiny_plain_bundle.glob("model.onnx*"))
    assert sum(f.stat().st_size for f in int8_bundle.glob("model.onnx*")) < 0.5 * fp32_size
    model = onnx.load(str(int8_bundle / BUNDLE_MODEL))
    assert "MatMulInteger" in {n.op_type for n in model.graph.node}
    # The lm_head is quantized too, and shares the quantized embedding (one uint8 copy).
    assert embedding_sized(model) == ["model.transformer.wte.weight_quantized"]
    transpose = head_weight_producer(model, "MatMulInteger")
    assert list(transpose.input) == ["model.transformer.wte.weight_quantized"]


def test_default_export_traces_attention_into_a_shared_kv_buffer(tmp_path, tiny_hf_model_dir):
    """The default graph is the optimized one (--no_optimize: the plain traced graph)."""
    output = tmp_path / "optimized"
    manifest = export_bundle(output, model_path=str(tiny_hf_model_dir), progress=False)
    assert manifest.graph.optimized and manifest.parity.passed
    assert manifest.graph.kv_layout == "shared"
    assert manifest.parity.max_abs_diff < 1e-4
    model = onnx.load(str(output / BUNDLE_MODEL))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("GroupQueryAttention") == 2 and "Softmax" not in ops  # one per layer
    attention = [n for n in model.graph.node if "attn" in n.name]
    # No cache Concat; q/k/v as the op's packed input, straight from the QKV projection
    # (no Split, no split-heads / merge-heads reshapes).
    assert not {"Concat", "Split", "Reshape"} & {n.op_type for n in attention}
    assert all(n.input[1:3] == ["", ""] for n in attention if n.op_type == "GroupQueryAttention")
    # Past and present have the buffer's length (one dynamic dimension for both).
    values = {v.name: v for v in [*model.graph.input, *model.graph.output]}
    dims = [
        values[n].type.tensor_type.shape.dim[2].dim_param
        for n in ("past_key_values.1.value", "present.1.value")
    ]
    assert dims == ["kv_capacity", "kv_capacity"]
    # Static shapes (export/simplify.py): no per-layer shape arithmetic, no Gemm sandwich;
    # what Shape nodes remain build the attention bias once per step.
    assert "Gemm" not in ops and ops.count("Shape") <= 6, collections.Counter(ops)
    # Left-padded batch, prefill then decode (buffers fed back): HF's greedy tokens.
    expected = hf_greedy(tiny_hf_model_dir, PROMPTS, steps=8)
    np.testing.assert_array_equal(ort_greedy(output, PROMPTS, steps=8, pad_id=50256), expected)


def test_optimize_keeps_multihead_attention_when_heads_are_not_a_multiple_of_8(
    tmp_path, gpt2_bpe_dir
):
    """GroupQueryAttention's CPU kernel wants head_dim % 8 == 0: 4-wide heads keep the
    fused MultiHeadAttention with a Concat cache."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    folder = tmp_path / "hf"
    tokenizer = GPT2TokenizerFast(
        vocab=str(gpt2_bpe_dir / "vocab.json"), merges=str(gpt2_bpe_dir / "merges.txt")
    )
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_head=8, n_embd=32, n_positions=64, vocab_size=len(tokenizer))
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    manifest = export_bundle(tmp_path / "b", model_path=str(folder), optimize=True, progress=False)
    assert manifest.graph.kv_layout == "concat" and manifest.parity.passed
    ops = [n.op_type for n in onnx.load(str(tmp_path / "b" / BUNDLE_MODEL)).graph.node]
    assert ops.count("MultiHeadAttention") == 1 and "GroupQueryAttention" not in ops
    with pytest.raises(ExportError, match="multiple of 8"):
        export_bundle(tmp_path / "s", model_path=str(folder), optimize=True, kv_layout="shared")
    expected = hf_greedy(folder, PROMPTS, steps=6)
    np.testing.assert_array_equal(
        ort_greedy(tmp_path / "b", PROMPTS, steps=6, pad_id=50256), expected
    )


def test_optimized_export_can_keep_the_concat_kv_layout(tmp_path, tiny_hf_model_dir):
    """--kv_layout concat (for CUDA / TensorRT): fused MultiHeadAttention + Concat."""
    output = tmp_path / "concat"
    manifest = export_bundle(
        output, model_path=str(tiny_hf_model_dir), optimize=True, kv_layout="concat", progress=False
    )
    assert manifest.graph.kv_layout == "concat" and manifest.parity.passed
    ops = [n.op_type for n in onnx.load(str(output / BUNDLE_MODEL)).graph.node]
    assert ops.count("MultiHeadAttention") == 2 and "GroupQueryAttention" not in ops
    expected = hf_greedy(tiny_hf_model_dir, PROMPTS, steps=6)
    np.testing.assert_array_equal(ort_greedy(output, PROMPTS, steps=6, pad_id=50256), expected)
    with pytest.raises(ExportError, match="needs the optimized graph"):
        export_bundle(
            tmp_path / "x", model_path=str(tiny_hf_model_dir), optimize=False, kv_layout="shared"
        )


def test_optimized_fp16_export_has_fusions_and_float16_io(tmp_path, tiny_hf_model_dir):
    output = tmp_path / "fp16"
    manifest = export_bundle(
        output, model_path=str(tiny_hf_model_dir), optimize=True, fp16=True, progress=False
    )
    assert manifest.graph.optimized and manifest.graph.variant == "fp16"
    assert manifest.graph.dtype == "float16" and manifest.parity.passed
    model = onnx.load(str(output / BUNDLE_MODEL))
    ops = {n.op_type for n in model.graph.node}
    assert {"MultiHeadAttention", "SkipLayerNormalization", "FastGelu"} <= ops
    assert len(embedding_sized(model)) == 1
    types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert types["past_key_values.0.key"] == onnx.TensorProto.FLOAT16
    assert types["input_ids"] == onnx.TensorProto.INT64


def test_big_models_keep_their_weights_in_one_external_file(
    tmp_path, tiny_hf_model_dir, monkeypatch
):
    from fst.export import onnx_export

    # Pretend the protobuf limit is 1 MB above the graph margin: the 13 MB tiny model is "big".
    monkeypatch.setattr(onnx_export, "PROTOBUF_LIMIT", onnx_export.GRAPH_MARGIN + 2**20)
    output = tmp_path / "bundle"
    manifest = export_bundle(output, model_path=str(tiny_hf_model_dir), progress=False)
    assert manifest.graph.external_data == "model.onnx.data"
    assert sorted(manifest.files) == ["model.onnx", "model.onnx.data", "tokenizer.json"]
    assert (
        (output / "model.onnx").stat().st_size < 2**20 < (output / "model.onnx.data").stat().st_size
    )
    for name, digest in manifest.files.items():
        assert sha256_file(output / name) == digest
    assert manifest.parity.passed  # ONNX Runtime found the weights beside the graph


# ---- the document (training checkpoint) bundle ----------------------------------------------


def test_document_bundle_from_training_checkpoint(tiny_document_bundle, tiny_checkpoint):
    from fst.training.checkpoint import load_checkpoint

    loaded = load_checkpoint(tiny_checkpoint)
    manifest = BundleManifest.load(tiny_document_bundle)
    tok, info = manifest.tokenizer, loaded.info
    assert tok.document_format is True
    assert tok.start_of_document_id == loaded.tokenizer.start_of_document_id is not None
    assert tok.end_of_meta_id == loaded.tokenizer.end_of_meta_id is not None
    assert tok.eos_token_id == loaded.tokenizer.eos_token_id
    assert (tok.max_meta_len, tok.max_body_len) == (
        info["document"]["max_meta_len"],
        info["document"]["max_body_len"],
    )
    assert manifest.training.global_step == info["global_step"]
    assert manifest.training.epoch == info["epoch"]
    assert manifest.training.args == info["training_args"]
    assert manifest.architecture.vocab_size == loaded.model.config.vocab_size
    assert manifest.parity.passed
    # The bundle's tokenizer.json is the training tokenizer.
    tokenizer = DocumentTokenizer.from_pretrained(
        tiny_document_bundle / BUNDLE_TOKENIZER, document_format=True
    )
    assert tokenizer.encode_text("the cat sat") == loaded.tokenizer.encode_text("the cat sat")
    # Greedy decoding through ONNX Runtime equals Hugging Face generate on the trained model.
    prompts = [loaded.tokenizer.encode_for_inference(p) for p in ("The cat", "A dog ran after")]
    model = loaded.model
    model.generation_config.eos_token_id = None
    ids, mask = left_pad(prompts, tok.pad_token_id)
    expected = model.generate(
        input_ids=torch.from_numpy(ids),
        attention_mask=torch.from_numpy(mask),
        max_new_tokens=8,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
    )[:, ids.shape[1] :].numpy()
    got = ort_greedy(tiny_document_bundle, prompts, steps=8, pad_id=tok.pad_token_id)
    np.testing.assert_array_equal(got, expected)


# ---- atomic writes, --force, bad inputs -----------------------------------------------------


def cli_fails(args: list[str], capsys) -> str:
    """Run fst-export in-process; assert exit 2 with exactly one line on stderr."""
    capsys.readouterr()  # drop what the test printed before
    output = Path(args[args.index("--output") + 1])
    code = cli.main([*args, "--log_file", str(output.parent / "debug.log")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_bad_checkpoints_fail_cleanly(tmp_path, capsys):
    text_file = tmp_path / "notes.ckpt"
    text_file.write_text("not a checkpoint\n")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    cases = {
        tmp_path / "missing.ckpt": "no such checkpoint file",
        text_file: "not a PyTorch checkpoint",
        foreign: "not an fst checkpoint",
    }
    for ckpt, message in cases.items():
        out = tmp_path / f"bundle-{ckpt.stem}"
        err = cli_fails(["--ckpt", str(ckpt), "--output", str(out)], capsys)
        assert message in err and str(ckpt) in err
        assert not out.exists()
    assert no_temp_dirs(tmp_path)


def test_unsupported_architecture_names_the_supported_ones(tmp_path, capsys):
    from transformers import OPTConfig, OPTForCausalLM

    folder = tmp_path / "opt"
    config = OPTConfig(
        hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
        word_embed_proj_dim=16, vocab_size=64,
    )  # fmt: skip
    OPTForCausalLM(config).save_pretrained(folder)
    err = cli_fails(["--model_path", str(folder), "--output", str(tmp_path / "out")], capsys)
    assert "'opt' is not supported" in err
    assert "supported: gpt2, llama, qwen2, qwen3, mistral" in err
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_force(tmp_path, tiny_hf_model_dir, tiny_plain_bundle, capsys):
    import shutil

    output = tmp_path / "bundle"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    args = ["--model_path", str(tiny_hf_model_dir), "--output", str(output)]
    err = cli_fails(args, capsys)
    assert "already exists" in err and "--force" in err
    # --force never deletes a folder that is not a bundle.
    err = cli_fails([*args, "--force"], capsys)
    assert "not an fst bundle" in err and (output / "keep.txt").read_text() == "mine"
    # An existing bundle is kept without --force.
    shutil.rmtree(output)
    shutil.copytree(tiny_plain_bundle, output)
    cli_fails(args, capsys)
    assert BundleManifest.load(output) == BundleManifest.load(tiny_plain_bundle)
    assert no_temp_dirs(tmp_path)


def test_int8_falls_back_to_8bit_blocks_when_dynamic_int8_fails_the_gate(
    tmp_path, tiny_hf_model_dir, monkeypatch
):
    """Dynamic int8 (one activation scale per tensor) fails on models with activation
    outliers; the export then writes 8-bit weight blocks (MatMulNBits, block 32), which
    the verify stage checks like any bundle. The dynamic candidates are made to fail here,
    on the plain graph (--no_optimize), whose Gemm projections this path turns into MatMuls
    first; the optimized graph's fallback runs in the SmolLM2 tests."""
    import fst.export.exporter as exporter

    real = exporter.verify_parity

    def failing_dynamic(reference, path, **kwargs):
        report = real(reference, path, **kwargs)
        if Path(path).name.startswith("int8-"):  # QInt8 / QUInt8 candidates
            return report.model_copy(update={"passed": False, "top1_agreement": 0.5})
        return report

    monkeypatch.setattr(exporter, "verify_parity", failing_dynamic)
    bundle = tmp_path / "int8"
    manifest = export_bundle(
        bundle, model_path=str(tiny_hf_model_dir), optimize=False, quantize="int8", progress=False
    )
    assert manifest.graph.variant == "int8" and manifest.parity.passed
    assert manifest.graph.int8_weights == "MatMulNBits"
    blocks = manifest.graph.int8_blocks
    assert blocks is not None and (blocks.bits, blocks.block_size, blocks.symmetric) == (
        8,
        32,
        True,
    )
    ops = {n.op_type for n in onnx.load(str(bundle / BUNDLE_MODEL)).graph.node}
    assert "MatMulNBits" in ops and "MatMulInteger" not in ops
    assert BundleManifest.load(bundle) == manifest


def test_int8_keeps_qint8_weights_unless_clearly_less_accurate():
    from fst.export.exporter import choose_int8_weights

    def report(diff: float, passed: bool = True) -> ParityReport:
        return ParityReport(
            max_abs_diff=diff,
            logit_scale=3.0,
            tolerance=None,
            top1_agreement=1.0 if passed else 0.5,
            checked_positions=14,
            passed=passed,
        )

    assert choose_int8_weights(report(0.12), report(0.11)) == "QInt8"  # as accurate: faster
    assert choose_int8_weights(report(0.43), report(0.08)) == "QUInt8"  # saturated
    assert choose_int8_weights(report(0.05, passed=False), report(0.08)) == "QUInt8"


def test_force_replaces_an_existing_bundle(int8_bundle):
    # int8_bundle was a copy of the fp32 plain bundle before `--force --quantize int8`.
    assert BundleManifest.load(int8_bundle).graph.variant == "int8"
    assert sorted(p.name for p in int8_bundle.iterdir()) == sorted(
        [BUNDLE_MANIFEST, BUNDLE_MODEL, f"{BUNDLE_MODEL}.data", BUNDLE_TOKENIZER]
    )
    assert no_temp_dirs(int8_bundle.parent)


def test_failed_verification_leaves_no_bundle(tmp_path, tiny_hf_model_dir, monkeypatch):
    from fst.core.bundle import ParityReport
    from fst.export import exporter

    def failing(*args, **kwargs):
        return ParityReport(
            max_abs_diff=0.5, logit_scale=1.0, tolerance=1e-3, top1_agreement=0.5,
            checked_positions=14, passed=False,
        )  # fmt: skip

    monkeypatch.setattr(exporter, "verify_parity", failing)
    output = tmp_path / "bundle"
    with pytest.raises(ExportError, match="FAILED; no bundle written"):
        export_bundle(output, model_path=str(tiny_hf_model_dir), progress=False)
    assert not output.exists() and list(tmp_path.iterdir()) == []


def test_option_errors():
    with pytest.raises(ExportError, match="exactly one of"):
        export_bundle(Path("/tmp/never"), progress=False)
    with pytest.raises(ExportError, match="exclude each other"):
        export_bundle(Path("/tmp/never"), model_path="x", fp16=True, quantize="int8")
    with pytest.raises(ExportError, match="--opset"):
        export_bundle(Path("/tmp/never"), model_path="x", opset=12)


def test_cli_help_runs_as_a_console_script():
    fst_export = Path(sys.executable).parent / "fst-export"
    result = subprocess.run(
        [str(fst_export), "--help"], capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0
    for option in ("--ckpt", "--model_path", "--output", "--optimize", "--quantize", "--fp16",
                   "--opset", "--force", "--logits", "--kv_layout"):  # fmt: skip
        assert option in result.stdout


# ---- session creation -----------------------------------------------------------------------


def test_session_defaults_to_an_available_provider(tiny_plain_bundle):
    assert choose_providers()[-1] == "CPUExecutionProvider"
    session, used = create_session(tiny_plain_bundle / BUNDLE_MODEL, threads=1)
    assert used == session.get_providers()[0] == "CPUExecutionProvider"


def test_explicit_unavailable_provider_is_an_error(tiny_plain_bundle):
    with pytest.raises(ProviderUnavailableError, match="CUDAExecutionProvider not available"):
        create_session(tiny_plain_bundle / BUNDLE_MODEL, providers=["cuda"])
    with pytest.raises(ProviderUnavailableError, match="TensorrtExecutionProvider"):
        choose_providers(["tensorrt", "cpu"])


def test_tensorrt_profiles_cover_prefill_and_decode(tmp_path):
    # One layer, 2 key/value heads of 16; the contract lists key and value of layer 0.
    contract = GraphContract(num_layers=1, num_kv_heads=2, head_dim=16, vocab_size=10)
    options = tensorrt_options(
        contract=contract,
        max_positions=128,
        fp16=True,
        engine_cache_dir=tmp_path / "trt",
        max_batch=4,
        opt_past=64,
    )
    assert options["trt_fp16_enable"] == "True"
    assert options["trt_engine_cache_path"] == str(tmp_path / "trt")
    assert options["trt_profile_min_shapes"] == (
        "input_ids:1x1,attention_mask:1x1,position_ids:1x1,past_key_values.0.key:1x2x0x16,"
        "past_key_values.0.value:1x2x0x16"
    )
    assert options["trt_profile_opt_shapes"] == (
        "input_ids:1x1,attention_mask:1x65,position_ids:1x1,past_key_values.0.key:1x2x64x16,"
        "past_key_values.0.value:1x2x64x16"
    )
    assert options["trt_profile_max_shapes"] == (
        "input_ids:4x128,attention_mask:4x128,position_ids:4x128,past_key_values.0.key:4x2x127x16,"
        "past_key_values.0.value:4x2x127x16"
    )
