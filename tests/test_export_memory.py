"""Export memory and int4: weights written once, stages on external data, MatMulNBits bundles.

References: the plain TorchScript export's initializers (for the external-data trace),
PyTorch's logits (the recorded reference, bundle perplexity) and peak RSS of child processes
measured by the kernel (wait4's ru_maxrss) for the memory budget.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from fst.core.bundle import BundleManifest
from fst.core.constants import BUNDLE_MODEL
from fst.core.documents import Document
from fst.export.exporter import export_bundle
from fst.export.reference import record_reference
from fst.export.verify import verify_parity
from fst.runtime import GenerationParams, Generator

PROMPTS = [[464, 3290, 286, 1204, 318, 326, 262], [15496, 995]]


def hf_model(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


def initializers(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.fixture(scope="module")
def int4_bundle(tmp_path_factory, tiny_hf_model_dir) -> Path:
    output = tmp_path_factory.mktemp("int4") / "bundle"
    export_bundle(
        output, model_path=str(tiny_hf_model_dir), optimize=True, quantize="int4", progress=False
    )
    return output


def test_trace_writes_the_weights_the_plain_exporter_writes(tmp_path, tiny_hf_model_dir):
    from fst.export import onnx_export, trace_weights

    model = hf_model(tiny_hf_model_dir)
    assert trace_weights.check_supported()
    lean = onnx_export.export_onnx(model, tmp_path / "lean.onnx", logits="last")
    onnx_export._trace(model, tmp_path / "plain.onnx", 17, "last", "concat")  # in-proto weights
    assert (tmp_path / "lean.onnx.data").is_file()
    graph = onnx.load(str(lean), load_external_data=False).graph
    assert sum(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer) >= 10
    ours, plain = initializers(lean), initializers(tmp_path / "plain.onnx")
    assert ours.keys() == plain.keys()
    for name, value in plain.items():
        assert ours[name].dtype == value.dtype and np.array_equal(ours[name], value), name
    plain_graph = onnx.load(str(tmp_path / "plain.onnx")).graph
    assert [n.op_type for n in graph.node] == [n.op_type for n in plain_graph.node]


def test_reference_is_each_prompt_alone_and_catches_another_model(tiny_hf_model_dir, tmp_path):
    model = hf_model(tiny_hf_model_dir)
    reference = record_reference(model, PROMPTS, decode_steps=2)
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([PROMPTS[1]])).logits[0].numpy()
    np.testing.assert_allclose(reference.prompt_logits[1], alone, atol=1e-6)
    np.testing.assert_array_equal(reference.last_logits[0, 1], alone[-1])
    assert reference.tokens.shape == (2, 2) and reference.tokens[0, 1] == alone[-1].argmax()
    bundle = tmp_path / "bundle"
    export_bundle(bundle, model_path=str(tiny_hf_model_dir), logits="all", progress=False)
    assert verify_parity(reference, bundle / BUNDLE_MODEL, pad_id=50256).passed
    torch.manual_seed(1)
    other = type(model)(model.config).eval()  # same shapes, other weights
    report = verify_parity(record_reference(other, PROMPTS, 2), bundle / BUNDLE_MODEL, pad_id=50256)
    assert not report.passed


def test_int4_bundle_quantizes_every_weight_matmul_and_records_the_scheme(
    int4_bundle, tiny_plain_bundle
):
    manifest = BundleManifest.load(int4_bundle)
    graph = manifest.graph
    assert graph.variant == "int4" and graph.optimized and graph.external_data == "model.onnx.data"
    scheme = graph.int4
    assert (scheme.op, scheme.bits, scheme.block_size, scheme.accuracy_level) == (
        "MatMulNBits",
        4,
        32,  # the default 128, fitted to this model's 32-wide rows (no padded blocks)
        4,
    )
    assert scheme.lm_head and scheme.embedding
    model = onnx.load(str(int4_bundle / BUNDLE_MODEL))
    weights = {t.name for t in model.graph.initializer}
    ops = [n.op_type for n in model.graph.node]
    # Every projection (4 per layer, 2 layers) and lm_head: no fp32 MatMul weight is left.
    assert ops.count("MatMulNBits") == scheme.matmuls == 2 * 4 + 1
    assert not [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert ops.count("GatherBlockQuantized") == 1
    # No fp32 copy of the [vocab, hidden] table is left (only per-block scales are float).
    full = [t for t in model.graph.initializer if math.prod(t.dims) >= 50257 * 32]
    assert full and all(t.data_type != onnx.TensorProto.FLOAT for t in full)
    assert manifest.parity.passed and manifest.parity.top1_agreement >= 0.8
    size = sum(f.stat().st_size for f in int4_bundle.glob("model.onnx*"))
    fp32 = sum(f.stat().st_size for f in tiny_plain_bundle.glob("model.onnx*"))
    assert size < 0.4 * fp32  # the fp32 position table stays


@pytest.mark.parametrize(
    ("rows", "asked", "fitted"), [(768, 128, 128), (64, 128, 64), (48, 128, 32), (768, 32, 32)]
)
def test_int4_block_size_fits_the_shortest_row(rows, asked, fitted):
    """MatMulNBits pads each row to whole blocks: a block longer than a row stores padding."""
    from onnx import TensorProto, helper, numpy_helper

    from fst.export.quantize_int4 import fit_block_size

    weights = [np.zeros((rows, 8), np.float32), np.zeros((8 * rows, rows), np.float32)]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w0"], ["h"]),
            helper.make_node("MatMul", ["h", "w1"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, rows])],
        [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)],
    )
    assert fit_block_size(helper.make_model(graph), asked) == fitted


def test_runtime_generates_from_an_int4_bundle_like_pytorch(int4_bundle, tiny_hf_model_dir):
    generator = Generator.from_bundle(int4_bundle, threads=1)
    params = GenerationParams(max_new_tokens=6, min_new_tokens=6, temperature=0.0)
    prompt = "The meaning of life is that"
    (completion,) = generator.generate(prompt, params)
    ids = generator.encode_prompt(prompt)
    model = hf_model(tiny_hf_model_dir)
    expected = model.generate(
        torch.tensor([ids]), max_new_tokens=6, min_new_tokens=6, do_sample=False
    )
    agree = np.mean(np.array(completion.token_ids) == expected[0, len(ids) :].numpy())
    assert len(completion.token_ids) == 6 and agree >= 0.5  # 4-bit weights: near ties may flip


def test_bundle_perplexity_equals_the_checkpoints(tmp_path, tiny_hf_model_dir):
    from fst.core.tokenization import DocumentTokenizer
    from fst.evaluation.bundle_scoring import BundleScorer
    from fst.evaluation.evaluate import token_level_metrics

    bundle = tmp_path / "bundle"
    export_bundle(bundle, model_path=str(tiny_hf_model_dir), logits="all", progress=False)
    tokenizer = DocumentTokenizer.from_pretrained(bundle / "tokenizer.json", document_format=False)
    documents = [Document("The meaning of life is that we do not know."), Document("Hello world")]
    ours = token_level_metrics(BundleScorer(bundle, threads=1), tokenizer, documents)
    reference = token_level_metrics(hf_model(tiny_hf_model_dir), tokenizer, documents)
    assert ours["num_tokens"] == reference["num_tokens"] > 5
    assert ours["perplexity"] == pytest.approx(reference["perplexity"], rel=1e-4)
    last = tmp_path / "last"
    export_bundle(last, model_path=str(tiny_hf_model_dir), progress=False)
    with pytest.raises(ValueError, match="--logits all"):
        BundleScorer(last)


def test_int8_weights_read_one_at_a_time_equal_quantize_dynamics(tmp_path, tiny_hf_model_dir):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from fst.export.quantize_int8 import quantize_int8

    bundle = tmp_path / "bundle"
    export_bundle(bundle, model_path=str(tiny_hf_model_dir), optimize=True, progress=False)
    src = bundle / BUNDLE_MODEL
    for weight_type in ("QInt8", "QUInt8"):
        ours, theirs = tmp_path / f"ours-{weight_type}.onnx", tmp_path / f"ort-{weight_type}.onnx"
        quantize_int8(src, ours, weight_type=weight_type)
        quantize_dynamic(
            str(src),
            str(theirs),
            op_types_to_quantize=["MatMul", "Gather"],
            weight_type=QuantType[weight_type],
            per_channel=False,
            reduce_range=False,
            use_external_data_format=True,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        graph = onnx.load(str(ours), load_external_data=False).graph
        assert sum(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer) >= 4
        mine, reference = initializers(ours), initializers(theirs)
        assert mine.keys() == reference.keys()
        assert any(v.dtype in (np.int8, np.uint8) and v.size >= 1024 for v in mine.values())
        for name, value in reference.items():
            assert mine[name].dtype == value.dtype and np.array_equal(mine[name], value), name
        nodes = [(n.op_type, list(n.input)) for n in onnx.load(str(theirs)).graph.node]
        assert [(n.op_type, list(n.input)) for n in graph.node] == nodes


def test_fp16_weights_converted_one_at_a_time_equal_the_whole_model_conversion(
    tmp_path, tiny_hf_model_dir
):
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from fst.export.external_data import load_onnx, save_external
    from fst.export.optimize import convert_fp16

    bundle = tmp_path / "bundle"
    export_bundle(bundle, model_path=str(tiny_hf_model_dir), progress=False)
    src = bundle / BUNDLE_MODEL
    ours, theirs = tmp_path / "ours.onnx", tmp_path / "whole.onnx"
    convert_fp16(src, ours)
    whole = convert_float_to_float16(load_onnx(src), keep_io_types=False, disable_shape_infer=True)
    save_external(whole, theirs)
    mine, reference = initializers(ours), initializers(theirs)
    assert mine.keys() == reference.keys()
    assert sum(v.dtype == np.float16 and v.size >= 1024 for v in mine.values()) >= 4
    for name, value in reference.items():
        assert mine[name].dtype == value.dtype and np.array_equal(mine[name], value), name
    graph, other = onnx.load(str(ours)).graph, onnx.load(str(theirs)).graph
    assert [(n.op_type, list(n.input)) for n in graph.node] == [
        (n.op_type, list(n.input)) for n in other.node
    ]


# ---- memory: the property the exporter's design exists for ------------------------------

# Big enough that the model, not the interpreter, decides the peak: 50257 x 384 embedding
# plus 2 layers, ~80 MB of fp32 weights.
MEMORY_CONFIG = {"n_layer": 2, "n_head": 6, "n_embd": 384, "n_positions": 256}
# Peak RSS above an import-only process, over the fp32 weight bytes. At this size fixed costs
# (session arenas, tokenizer, model code) still weigh ~1.5x, so the fp32 bounds sit above the
# 2.5x goal, which benchmarks/sizes/bundles.py measures on real sizes. int8 and fp16 read and
# convert one weight at a time (quantize_int8, optimize.convert_fp16); holding the whole
# fp32 model in those stages, as onnxruntime's quantize_dynamic and a whole-model fp16
# conversion do, takes several times the weights here: a copy per stage comes back as a
# failure. Figures: benchmarks/results/export-sizes-memory-decode-gpt2-family-epyc.md.
MEMORY_BUDGET = {"fp32": 3.0, "optimize": 3.0, "int8": 3.0, "int4": 3.0, "fp16": 2.0}
VARIANTS = {
    "fp32": ["--no_optimize"],
    "optimize": [],
    "int8": ["--quantize", "int8"],
    "int4": ["--quantize", "int4"],
    "fp16": ["--fp16"],
}


def child_peak_mb(args: list[str]) -> float:
    """Peak RSS of exactly this child (the kernel's ru_maxrss), in MB."""
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, args
    return usage.ru_maxrss / 1024


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_export_memory_stays_within_a_small_multiple_of_the_weights(tmp_path, gpt2_bpe_dir):
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    folder = tmp_path / "model"
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**MEMORY_CONFIG)).eval()
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    model.save_pretrained(folder)
    GPT2TokenizerFast(
        vocab=str(gpt2_bpe_dir / "vocab.json"), merges=str(gpt2_bpe_dir / "merges.txt")
    ).save_pretrained(folder)
    del model
    baseline = child_peak_mb(["-c", "import fst.export.exporter, onnxruntime.quantization"])
    excess = {}
    for variant, flags in VARIANTS.items():
        out = tmp_path / variant
        cli = ["-m", "fst.export.cli", "--model_path", str(folder), "--output", str(out)]
        log = ["--quiet", "--log_file", str(tmp_path / f"{variant}.log")]
        excess[variant] = (child_peak_mb([*cli, *log, *flags]) - baseline) / weights_mb
        manifest = json.loads((out / "fst_bundle.json").read_text())
        assert manifest["parity"]["passed"] and manifest["graph"]["external_data"]
    print(f"fp32 weights {weights_mb:.0f} MiB, baseline {baseline:.0f} MiB, excess x: {excess}")
    assert all(excess[v] <= MEMORY_BUDGET[v] for v in VARIANTS), (weights_mb, excess)
    assert not math.isnan(sum(excess.values()))
