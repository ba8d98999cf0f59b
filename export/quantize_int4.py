"""Block-wise int4 weights: ONNX Runtime's MatMulNBits (and GatherBlockQuantized).

Every MatMul with a constant [K, N] weight becomes `MatMulNBits`: 4-bit weights in blocks of
`block_size` values along K, one float scale and one 4-bit zero point per block (asymmetric
round-to-nearest, `onnxruntime.quantization.MatMulNBitsQuantizer`). With `accuracy_level` 4
the CPU kernel quantises the activations to int8 per block and runs integer dot products
(the fast path on AVX2 / AVX-512 VNNI); 0 keeps fp32 activations.

The output projection (lm_head, the largest matrix of GPT-2) is quantised with the rest
unless `lm_head=False`; the token embedding, then no longer shared with the head, becomes
`GatherBlockQuantized` (`embedding=True`), so no fp32 copy of the vocabulary table stays.
The position embedding and every other Gather keep their dtype.

The exporter's parity gate (greedy top-1 agreement with PyTorch) decides whether the result
is good enough; the manifest records the scheme (`Int4Scheme`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from fst.core.bundle import Int4Scheme
from fst.export.external_data import load_onnx, save_external
from fst.export.options import DEFAULT_INT4_BLOCK_SIZE as DEFAULT_BLOCK_SIZE
from fst.export.options import INT4_BLOCK_SIZES

log = logging.getLogger(__name__)

# Measured choices (benchmarks/results/int4-scheme-choice-perplexity-decode-fst-epyc.md): see the exporter for the gate.
# The block sizes MatMulNBits takes and the default are declared with fst-export's option.
FINE_INT4_BLOCK_SIZE = 32  # the exporter's fallback when 128 fails the parity gate
DEFAULT_ACCURACY_LEVEL = 4


def quantize_int4(
    src: Path,
    dst: Path,
    *,
    vocab_size: int,
    block_size: int = DEFAULT_BLOCK_SIZE,
    accuracy_level: int = DEFAULT_ACCURACY_LEVEL,
    lm_head: bool = True,
    embedding: bool = True,
    bits: int = 4,
    keep: tuple[str, ...] = (),
) -> Int4Scheme:
    """Write `src` with int4 weights to `dst` (external data); returns the scheme applied.

    `bits=8`: symmetric 8-bit blocks (llama.cpp's Q8_0 layout at block 32), the int8
    bundles' fallback when dynamic int8 fails the gate; the token table stays fp32 (the
    8-bit GatherBlockQuantized is not made by ONNX Runtime's quantizer). `keep`: nodes left
    as they are (the offset terms of a GGUF file's Q4_1 blocks)."""
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    model = load_onnx(src)
    block_size = fit_block_size(model, block_size, keep)
    head = _lm_head_nodes(model, vocab_size)
    token_table = _token_embedding_nodes(model, vocab_size)
    exclude = [*keep, *([] if lm_head else head)]
    embedding = embedding and lm_head and bits == 4  # a fp32 head shares the fp32 table
    op_types = ("MatMul", "Gather") if embedding else ("MatMul",)
    if embedding:  # only the token table: positions and shape Gathers stay as they are
        exclude += [n.name for n in model.graph.node if n.op_type == "Gather"]
        exclude = [n for n in exclude if n not in token_table]
    quantizer = nbits.MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=block_size,
        is_symmetric=bits == 8,
        accuracy_level=accuracy_level,
        nodes_to_exclude=exclude,
        op_types_to_quantize=op_types,
        quant_axes=(("MatMul", 0), ("Gather", 1)),
    )
    del model
    quantizer.process()
    quantized = quantizer.model.model
    del quantizer
    counts = {op: sum(n.op_type == op for n in quantized.graph.node) for op in QUANTIZED_OPS}
    log.info("int4: %s", counts)
    save_external(quantized, dst)
    return Int4Scheme(
        bits=bits,
        block_size=block_size,
        accuracy_level=accuracy_level,
        symmetric=bits == 8,
        lm_head=lm_head and bool(head),
        embedding=embedding and bool(token_table),
        matmuls=counts["MatMulNBits"],
    )


QUANTIZED_OPS = ("MatMulNBits", "GatherBlockQuantized")


def fit_block_size(model: onnx.ModelProto, block_size: int, keep: tuple[str, ...] = ()) -> int:
    """`block_size`, lowered to the largest allowed size that fits the shortest quantised
    row (a MatMul weight's K, a table's hidden size): MatMulNBits pads every row to whole
    blocks, so a 128 block on a 32-wide model would store four times the weights."""
    dims = _initializer_dims(model)
    weights = [
        dims.get(n.input[1], [])
        for n in model.graph.node
        if n.op_type == "MatMul" and n.name not in keep
    ]
    rows = [w[0] for w in weights if len(w) == 2]  # constant [K, N] weights only
    if not rows:
        return block_size
    shortest = min(rows)
    fitting = [b for b in INT4_BLOCK_SIZES if b <= min(block_size, shortest)]
    fitted = max(fitting) if fitting else min(INT4_BLOCK_SIZES)
    if fitted != block_size:
        log.info("int4: block size %d -> %d (rows of %d weights)", block_size, fitted, shortest)
    return fitted


def _initializer_dims(model: onnx.ModelProto) -> dict[str, list[int]]:
    return {t.name: list(t.dims) for t in model.graph.initializer}


def _lm_head_nodes(model: onnx.ModelProto, vocab_size: int) -> list[str]:
    """MatMuls whose constant weight is [hidden, vocab]: the output projection."""
    dims = _initializer_dims(model)
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and len(dims.get(n.input[1], [])) == 2
        if dims[n.input[1]][1] == vocab_size
    ]


def _token_embedding_nodes(model: onnx.ModelProto, vocab_size: int) -> list[str]:
    """Gathers from a constant [vocab, hidden] table: the token embedding."""
    dims = _initializer_dims(model)
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "Gather" and len(dims.get(n.input[0], [])) == 2
        if dims[n.input[0]][0] == vocab_size
    ]
