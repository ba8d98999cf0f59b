"""export_bundle: checkpoint or HF model → verified, self-contained ONNX bundle.

Stages: load → export (trace) → [optimize] → [fp16 | quantize] → write → verify. Everything
is built in a temporary folder beside the output and renamed into place only after the
parity check passed (see bundle_writer).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from fst.core.bundle import (
    ArchitectureInfo,
    BundleManifest,
    GraphInfo,
    Int4Scheme,
    ParityReport,
    TokenizerInfo,
    TrainingInfo,
    file_sizes,
)
from fst.core.constants import BUNDLE_MODEL, BUNDLE_TOKENIZER
from fst.export import bundle_writer
from fst.export.architectures import architecture_for
from fst.export.external_data import move_external, remove_onnx
from fst.export.gguf_blocks import BLOCK, import_gguf_blocks
from fst.export.gqa_right import ORT_GQA_RIGHT
from fst.export.gqa_right import register as register_gqa_right
from fst.export.memory import release_memory
from fst.export.onnx_export import export_onnx
from fst.export.optimize import apply_fusions, convert_fp16
from fst.export.options import ExportOptions, ExportOptionsError
from fst.export.ort_attention import ORT_GQA, ORT_MHA, attention_implementation
from fst.export.progress import Stages
from fst.export.quantize_int4 import FINE_INT4_BLOCK_SIZE, quantize_int4
from fst.export.quantize_int8 import quantize_int8
from fst.export.reference import record_reference
from fst.export.simplify import simplify_file
from fst.export.source import ExportSource, SourceError, load_source
from fst.export.tied_weights import share_tied_embedding_file
from fst.export.verify import describe, verify_parity
from fst.export.wrapper import input_names, output_names

log = logging.getLogger(__name__)

# Dynamic int8 weight types. QInt8 weights run ONNX Runtime's U8S8 kernels, the fast ones on
# x86 (faster prefill and decode than QUInt8's U8U8). Without VNNI the U8S8 kernel can
# saturate its 16-bit pair sums: on some models QInt8's error against PyTorch is several
# times QUInt8's, on others it is as accurate. So both are made and checked against PyTorch,
# and QInt8 is kept unless its error exceeds QUInt8's by more than this factor.
INT8_WEIGHT_TYPES = ("QInt8", "QUInt8")
INT8_QINT8_MAX_ERROR_RATIO = 1.25
# Prompts of the parity check (two lengths, so the batch is left-padded).
PARITY_PROMPTS = ("The meaning of life is that", "Hello")


class ExportError(RuntimeError):
    """The export failed; the message is one line for the user."""


def export_bundle(
    output: Path,
    *,
    ckpt: Path | None = None,
    model_path: str | None = None,
    options: ExportOptions | None = None,
    force: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> BundleManifest:
    """Export `ckpt` or `model_path` to a bundle folder at `output`; returns its manifest.

    The graph is `options` (default: `ExportOptions()`) with `overrides` replaced, so
    `export_bundle(out, model_path=m, optimize=False, quantize="int8")` (the plain graph,
    int8) works as well."""
    output = Path(output).expanduser().absolute()
    try:
        options = replace(options or ExportOptions(), **overrides)
    except ExportOptionsError as e:
        raise ExportError(str(e)) from None
    try:
        bundle_writer.check_output(output, force)
    except bundle_writer.OutputExistsError as e:
        raise ExportError(str(e)) from e
    variant = options.variant
    names = ["load", "export", *(["optimize"] if options.optimize else [])]
    names += {"fp16": ["fp16"], "int8": ["quantize"], "int4": ["quantize"], "fp32": []}[variant]
    names += ["write", "verify"]
    with Stages(names, enabled=progress) as stages:
        with stages.stage("load", str(ckpt or model_path)):
            try:
                source = load_source(ckpt, model_path)
            except SourceError as e:
                raise ExportError(str(e)) from e
        try:
            with bundle_writer.staging_folder(output, force) as tmp:
                graph, parity = _build(tmp, source, stages, options)
                manifest = _manifest(tmp, source, graph, parity)
                manifest.save(tmp)
        except bundle_writer.OutputExistsError as e:
            raise ExportError(str(e)) from e
    log.info("bundle written to %s", output)
    return manifest


def _build(
    tmp: Path, source: ExportSource, stages: Stages, options: ExportOptions
) -> tuple[GraphInfo, ParityReport]:
    """Write model.onnx and tokenizer.json into `tmp` and verify them."""
    work = tmp / "work"
    work.mkdir()
    variant, optimize, opset, logits = (
        options.variant, options.optimize, options.opset, options.logits
    )  # fmt: skip
    kv_layout = choose_kv_layout(source.config, optimize, variant, options.kv_layout)
    attention = {
        "shared": "GroupQueryAttention, shared KV buffer",
        "shared_right": "GroupQueryAttention, right-padded shared KV buffer (GPU layout)",
        "concat": "fused MultiHeadAttention" if optimize else "eager attention",
    }[kv_layout]
    with stages.stage("export", f"opset {opset}, logits={logits}, {attention}"):
        traced = _trace(source, work / "traced.onnx", opset, logits, optimize, kv_layout)
        prompts = [source.tokenizer.encode_for_inference(p) for p in PARITY_PROMPTS]
        # PyTorch's side of every parity check, recorded now: the model's weights are freed
        # before the ONNX Runtime stages, each of which holds a copy of its own.
        reference = record_reference(source.model, prompts)
        source.model = None
        release_memory()
    dtype = "float16" if variant == "fp16" else "float32"

    def check(path: Path) -> ParityReport:
        return verify_parity(
            reference,
            path,
            pad_id=source.tokenizer.pad_token_id,
            variant=variant,
            logits=logits,
            dtype=dtype,
            kv_layout=kv_layout,
        )

    final, weights = _transform(traced, source.config, stages, options, check, source.gguf_file)
    with stages.stage("write"):
        # A tied lm_head was traced as a second, transposed copy of the embedding.
        shared = share_tied_embedding_file(final, final.with_name("shared.onnx"))
        remove_onnx(final)
        external = move_external(final.with_name("shared.onnx"), tmp / BUNDLE_MODEL)
        shutil.rmtree(work)
        # Not tokenizer.save(): its private temp file would leave tokenizer.json 0600,
        # and the whole folder is atomic anyway.
        (tmp / BUNDLE_TOKENIZER).write_text(source.tokenizer.to_json(), encoding="utf-8")
    log.info("initializers replaced by a Transpose of the embedding: %s", shared or "none")
    padding = "right-padded" if kv_layout == "shared_right" else "left-padded"
    with stages.stage("verify", f"ONNX Runtime vs PyTorch, prefill + decode, {padding} batch"):
        parity = check(tmp / BUNDLE_MODEL)
    stages.note(describe(parity, variant))
    if not parity.passed:
        raise ExportError(describe(parity, variant) + "; no bundle written")
    layers = int(source.config.num_hidden_layers)
    graph = GraphInfo(
        file=BUNDLE_MODEL,
        external_data=external,
        opset=opset,
        variant=variant,
        dtype=dtype,
        optimized=optimize,
        logits=logits,
        kv_layout=kv_layout,
        **weights,
        inputs=input_names(layers),
        outputs=output_names(layers),
    )
    return graph, parity


def _transform(
    path: Path,
    config,
    stages: Stages,
    options: ExportOptions,
    check: Callable[[Path], ParityReport],
    gguf_file: Path | None = None,
) -> tuple[Path, dict]:
    """Fusions, then fp16, int8 or int4; each step writes a new file beside `path` and
    removes its input. int4 from a GGUF file keeps the file's own blocks (gguf_blocks).

    Returns the final file and the GraphInfo fields of the weights: for int8 the weight
    type kept (`check` measures each), for int4 the scheme.
    """
    variant, optimize = options.variant, options.optimize
    if optimize:
        with stages.stage("optimize", "static shapes, then ONNX Runtime GPT-2 fusions"):
            simplified = simplify_file(path, path.with_name("simplified.onnx"))
            path = _next(path, "simplified.onnx")
            fused = apply_fusions(
                path,
                path.with_name("fused.onnx"),
                num_heads=int(config.num_attention_heads),
                hidden_size=int(config.hidden_size),
            )
            path = _next(path, "fused.onnx")
        counts = ", ".join(f"{op} {n}" for op, n in fused.items()) or "none"
        stages.note(
            f"shape arithmetic removed: {simplified['nodes_removed']} nodes "
            f"({simplified['gemm_to_matmul']} Gemm sandwiches → MatMul, "
            f"{simplified['constant_reshapes']} reshapes made static); fused operators: {counts}"
        )
    if variant == "fp16":
        with stages.stage("fp16"):
            convert_fp16(path, path.with_name("fp16.onnx"))
            path = _next(path, "fp16.onnx")
    if variant == "int4":
        with stages.stage("quantize", "int4 blocks (MatMulNBits)"):
            if not optimize:  # GPT-2's Conv1D traces as Gemm; MatMulNBits replaces MatMuls
                simplify_file(path, path.with_name("simplified.onnx"))
                path = _next(path, "simplified.onnx")
            imported = None
            if gguf_file is not None:
                imported = import_gguf_blocks(
                    path, path.with_name("gguf.onnx"), gguf_file, int(config.vocab_size)
                )
                path = _next(path, "gguf.onnx")
            keep = imported.fp32_nodes if imported is not None else ()
            path, scheme = _quantize_int4(
                path, config, stages, check, options.int4_block_size, keep
            )
        if imported is not None and (imported.matmuls or imported.tables):
            stages.note(
                f"the GGUF file's own blocks ({', '.join(imported.kinds)}) kept in "
                f"{imported.matmuls} MatMuls and {imported.tables} token tables"
            )
            scheme = scheme.model_copy(
                update={
                    "from_gguf": imported.matmuls + imported.tables,
                    # Every MatMulNBits holds the file's blocks: its block size, not the
                    # (unused) one of the quantiser that ran on the rest.
                    **({"block_size": BLOCK} if scheme.matmuls == imported.matmuls else {}),
                    "lm_head": scheme.lm_head or imported.head,
                    "embedding": scheme.embedding or imported.tables > 0,
                }
            )
        stages.note(f"int4: {scheme.model_dump()}")
        return path, {"int4": scheme}
    if variant != "int8":
        return path, {}
    with stages.stage("quantize", "dynamic int8, QInt8 and QUInt8 weights compared"):
        made = {}
        for weight_type in INT8_WEIGHT_TYPES:
            quantized = path.with_name(f"int8-{weight_type}.onnx")
            quantize_int8(path, quantized, weight_type=weight_type)
            made[weight_type] = (quantized, check(quantized))
    chosen = choose_int8_weights(made["QInt8"][1], made["QUInt8"][1])
    passed = made[chosen][1].passed
    stages.note(
        f"max |onnx - torch|: QInt8 {made['QInt8'][1].max_abs_diff:.3g}, "
        f"QUInt8 {made['QUInt8'][1].max_abs_diff:.3g}: "
        + (f"keeping {chosen}" if passed else "both fail the gate")
    )
    if not passed:  # activations with outliers: see _int8_blocks
        for quantized, _ in made.values():
            remove_onnx(quantized)
        return _int8_blocks(path, config, stages, optimize)
    remove_onnx(path)
    for weight_type, (quantized, _) in made.items():
        if weight_type != chosen:
            remove_onnx(quantized)
    return made[chosen][0], {"int8_weights": chosen}


def _int8_blocks(path: Path, config, stages: Stages, optimize: bool) -> tuple[Path, dict]:
    """int8 as 8-bit weight blocks (MatMulNBits, symmetric, block 32: llama.cpp's Q8_0),
    with activations quantised per block at run time. Dynamic int8 quantises a whole
    activation tensor with one scale; a trained Llama's MLP inputs reach |x| ~ 450 with a
    mean of 1.5 (SmolLM2-135M), so most values round to zero and the gate fails; per block
    they do not. The verify stage checks the result like any bundle."""
    with stages.stage("quantize", "8-bit blocks (MatMulNBits): dynamic int8 failed the gate"):
        if not optimize:  # GPT-2's Conv1D traces as Gemm; MatMulNBits replaces MatMuls
            simplify_file(path, path.with_name("simplified.onnx"))
            path = _next(path, "simplified.onnx")
        blocks = path.with_name("int4.onnx")
        scheme = quantize_int4(
            path, blocks, vocab_size=config.vocab_size, block_size=FINE_INT4_BLOCK_SIZE, bits=8
        )
    stages.note(f"int8 blocks: {scheme.model_dump()}")
    return _next(path, "int4.onnx"), {"int8_weights": "MatMulNBits", "int8_blocks": scheme}


def _quantize_int4(
    path: Path,
    config,
    stages: Stages,
    check: Callable[[Path], ParityReport],
    block_size: int,
    keep: tuple[str, ...] = (),
) -> tuple[Path, Int4Scheme]:
    """int4 weights, coarsest first: `block_size` with the output projection in int4, then
    with it fp32, then the same two at block 32, until the parity gate passes (the last one
    is checked by the verify stage). Schemes that would repeat one already tried (a model
    whose rows fit block 32 or less, a model without an output projection) are skipped.

    The output projection is the most sensitive matrix, and small hidden sizes lose most to
    coarse blocks (a 64-wide Llama in tests/test_architectures.py needs block 32 and an fp32
    head); GPT-2 small passes at 128 (benchmarks/results/int4-scheme-choice-perplexity-decode-fst-epyc.md).
    """
    int4 = path.with_name("int4.onnx")
    quantize = partial(quantize_int4, path, int4, vocab_size=config.vocab_size, keep=keep)
    scheme = quantize(block_size=block_size)
    fitted = scheme.block_size  # lowered to the model's shortest row
    blocks = [fitted] + ([FINE_INT4_BLOCK_SIZE] if fitted > FINE_INT4_BLOCK_SIZE else [])
    heads = [True, False] if scheme.lm_head else [True]
    for block, head in [(b, h) for b in blocks for h in heads][1:]:
        report = check(int4)
        if report.passed:
            break
        where = "int4" if scheme.lm_head else "fp32"
        stages.note(
            f"int4, block {scheme.block_size}, output projection {where}: "
            f"{describe(report, 'int4')}; trying a finer scheme"
        )
        remove_onnx(int4)
        scheme = quantize(block_size=block, lm_head=head)
    return _next(path, "int4.onnx"), scheme


def _next(previous: Path, name: str) -> Path:
    """The file a step wrote beside `previous`, which is no longer needed (disk space)."""
    remove_onnx(previous)
    return previous.with_name(name)


def choose_int8_weights(qint8: ParityReport, quint8: ParityReport) -> str:
    """QInt8 (faster kernels) unless it is clearly less accurate than QUInt8."""
    if qint8.passed and qint8.max_abs_diff <= INT8_QINT8_MAX_ERROR_RATIO * quint8.max_abs_diff:
        return "QInt8"
    return "QUInt8"


def choose_kv_layout(config, optimize: bool, variant: str, requested: str = "auto") -> str:
    """The KV cache layout of the graph.

    "shared" (GroupQueryAttention writing into one KV buffer, no per-step cache copy) for
    optimized fp32/int8 graphs; "concat" otherwise: fp16 bundles (meant for GPUs, where
    that op's attention_bias path is untested here) and head sizes that are not a multiple
    of 8 (the op's CPU kernel refuses them) keep MultiHeadAttention with a Concat.
    `requested` "shared" or "concat" overrides the choice (ExportError if impossible).
    """
    head_dim = architecture_for(config).head_dim(config)
    if requested == "concat" or not optimize:
        return "concat"
    if head_dim % 8:
        if requested in ("shared", "shared_right"):
            raise ExportError(
                f"--kv_layout {requested} needs a head size that is a multiple of 8 (this model: "
                f"{head_dim}); use --kv_layout concat"
            )
        return "concat"
    if requested == "shared_right":
        if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
            # gqa_right passes no local_window_size: the window would be lost.
            raise ExportError(
                "--kv_layout shared_right does not support sliding-window attention yet; "
                "use --kv_layout concat"
            )
        if variant == "int8":
            raise ExportError("--kv_layout shared_right is a GPU layout: use --fp16, not int8")
        return "shared_right"
    if requested == "shared" or variant != "fp16":
        return "shared"
    return "concat"


def _trace(
    source: ExportSource, path: Path, opset: int, logits: str, optimize: bool, kv_layout: str
) -> Path:
    """Trace with eager attention: its additive mask keeps fully padded rows finite (SDPA's
    boolean mask can give NaN there) and it traces to fewer nodes. With --optimize the same
    attention becomes ONNX Runtime's fused MultiHeadAttention or, with the shared KV
    layout, GroupQueryAttention (see ort_attention). PyTorch's reference in the parity
    check keeps the model's own attention implementation."""
    attention = {
        "shared": ORT_GQA,
        "shared_right": ORT_GQA_RIGHT,
        "concat": ORT_MHA if optimize else "eager",
    }[kv_layout]
    if kv_layout == "shared_right":
        register_gqa_right()
    with attention_implementation(source.model, attention):
        return export_onnx(source.model, path, opset=opset, logits=logits, kv_layout=kv_layout)


def _manifest(
    folder: Path, source: ExportSource, graph: GraphInfo, parity: ParityReport
) -> BundleManifest:
    config, tokenizer = source.config, source.tokenizer
    architecture = architecture_for(config)
    settings = tokenizer.settings()
    digests = bundle_writer.file_digests(folder)
    return BundleManifest(
        created_at=bundle_writer.utc_now(),
        architecture=ArchitectureInfo(
            model_type=config.model_type,
            num_layers=int(config.num_hidden_layers),
            num_heads=architecture.num_heads(config),
            num_kv_heads=architecture.kv_heads(config),
            head_dim=architecture.head_dim(config),
            hidden_size=int(config.hidden_size),
            vocab_size=int(config.vocab_size),
            max_positions=int(config.max_position_embeddings),
        ),
        graph=graph,
        tokenizer=TokenizerInfo(
            file=BUNDLE_TOKENIZER,
            document_format=tokenizer.document_format,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            start_of_document_id=tokenizer.start_of_document_id,
            end_of_meta_id=tokenizer.end_of_meta_id,
            max_meta_len=settings["max_meta_len"],
            max_body_len=settings["max_body_len"],
        ),
        training=TrainingInfo(
            source=source.source,
            global_step=source.global_step,
            epoch=source.epoch,
            args=source.training_args,
        ),
        versions=bundle_writer.library_versions(),
        files=digests,
        sizes=file_sizes(folder, list(digests)),
        parity=parity,
        generation_defaults=source.generation_defaults,
        chat=source.chat,
        source_format=source.source_format,
    )
