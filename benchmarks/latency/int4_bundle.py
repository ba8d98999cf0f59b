"""An int4 bundle made from an fp32 bundle the way the exporter makes it, without its gate.

The benchmarks' models have random weights. Their logits are nearly flat, so int4 flips
near-ties and the exporter's greedy top-1 gate refuses coarse schemes that a trained model
passes (GPT-2 small at block 128: top-1 0.71 random, perplexity +0.17% trained;
benchmarks/results/int4-scheme-choice-perplexity-decode-fst-epyc.md). Speed does not depend on the weights' values, so the
benchmarks quantise the fp32 bundle with a given scheme directly: the same
`fst.export.quantize_int4` call on the same graph as `fst-export --optimize --quantize int4`.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def quantized_bundle(src: Path, bundle: Path, **scheme) -> None:
    """`src` (an fp32 bundle) with int4 weights as the exporter makes them, in `bundle`."""
    from fst.core.bundle import BundleManifest, file_sizes, sha256_file
    from fst.export.external_data import load_onnx, move_external, save_external
    from fst.export.quantize_int4 import quantize_int4
    from fst.export.simplify import simplify_file

    manifest = BundleManifest.load(src)
    work = bundle.with_name(bundle.name + "-work")
    shutil.rmtree(work, ignore_errors=True)  # what an interrupted run left
    work.mkdir()
    bundle.mkdir()
    save_external(untie(load_onnx(src / "model.onnx")), work / "t.onnx")
    simplify_file(work / "t.onnx", work / "s.onnx")
    applied = quantize_int4(
        work / "s.onnx", work / "q.onnx", vocab_size=manifest.architecture.vocab_size, **scheme
    )
    move_external(work / "q.onnx", bundle / "model.onnx")
    shutil.rmtree(work)
    shutil.copy(src / "tokenizer.json", bundle / "tokenizer.json")
    names = [n for n in manifest.files if n.startswith("model.onnx")]
    manifest.graph = manifest.graph.model_copy(update={"variant": "int4", "int4": applied})
    manifest.files.update({n: sha256_file(bundle / n) for n in names})
    manifest.sizes.update(file_sizes(bundle, names))
    manifest.save(bundle)


def untie(model):
    """The bundle feeds lm_head Transpose(embedding) (tied_weights.py); quantisation runs before
    that step in the exporter, so give lm_head its own [hidden, vocab] weight again."""
    from onnx import numpy_helper

    tables = {t.name: t for t in model.graph.initializer}
    for node in list(model.graph.node):
        if node.op_type == "Transpose" and node.input[0] in tables:
            weight = numpy_helper.to_array(tables[node.input[0]]).T.copy()
            model.graph.initializer.append(numpy_helper.from_array(weight, node.output[0]))
            model.graph.node.remove(node)
    return model
