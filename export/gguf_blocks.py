"""A GGUF file's own quantised blocks as the int4 graph's weights, instead of re-quantising.

A Q4_1 GGUF stores each weight row as blocks of 32 4-bit codes q with a scale d and an
offset m (w = d·q + m). Quantising the dequantized weights a second time for an int4 bundle
rounds again: ONNX Runtime's 4-bit zero point is an integer, so every block's offset moves by
up to half a step, and SmolLM2-135M-Instruct then fails the parity gate (top-1 0.52). Here the
file's codes and scales become the MatMulNBits weights, so the graph holds exactly the weights
PyTorch dequantized:

- Q4_0 (w = d·(q - 8)): 4-bit MatMulNBits with its default zero point 8;
- Q8_0 (w = d·q): 8-bit MatMulNBits (zero point 128); a Q8_0 or Q4_0 token table becomes an
  8-bit / 4-bit GatherBlockQuantized;
- Q4_1: w = d·(q - 8) + (m + 8d): MatMulNBits with the default zero point, and the offset
  term Σ_blocks (m + 8d)·(sum of x over the block) added by two small MatMuls (x @ S, S =
  [K, K/32] of ones, gives the block sums; then @ M, [K/32, N]), the decomposition llama.cpp's
  own Q4_1 kernel uses. A float zero point would also be exact, but ONNX Runtime runs it on a
  slow path (measured ~40x slower per MatMul than uint8 ones).

Weights are found by value, not by name: each column of a graph MatMul weight (a row of
PyTorch's [N, K] weight) is looked up among the GGUF rows dequantized the way transformers
dequantizes them. Permuted q/k rows, the tied output projection and fused projections need
no name map, and a matrix whose rows are not all found keeps the ordinary quantiser.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fst.export.external_data import load_onnx, save_external

log = logging.getLogger(__name__)

BLOCK = 32  # every type handled here: Q4_0, Q4_1, Q8_0
ACCURACY_LEVEL = 4  # int8 activations per block, as llama.cpp's Q8_0/Q8_1 activations
# Bytes per 32-weight block after the fp16 scale (and Q4_1's fp16 offset).
_LAYOUT = {"Q4_0": (1, 16), "Q4_1": (2, 16), "Q8_0": (1, 32)}


@dataclass
class GGUFRows:
    """One GGUF tensor as codes and scales: row r, weight k = scales[r, k // 32] *
    (codes[r, k] - zero) + offsets[r, k // 32] (offsets: Q4_1 only)."""

    kind: str
    codes: np.ndarray  # [rows, K] uint8: 0..15, or Q8_0's q + 128
    scales: np.ndarray  # [rows, K/32] float32
    offsets: np.ndarray | None  # [rows, K/32] float32

    @property
    def bits(self) -> int:
        return 8 if self.kind == "Q8_0" else 4

    @property
    def zero(self) -> int:
        return {"Q4_0": 8, "Q4_1": 0, "Q8_0": 128}[self.kind]

    def dequantize(self) -> np.ndarray:
        rows, k = self.codes.shape
        blocks = self.codes.reshape(rows, k // BLOCK, BLOCK).astype(np.float32) - self.zero
        weights = blocks * self.scales[..., None]
        if self.offsets is not None:
            weights += self.offsets[..., None]
        return weights.reshape(rows, k)


def parse_blocks(kind: str, raw: np.ndarray) -> GGUFRows:
    """The codes and scales of `raw` ([rows, bytes] as GGUFReader gives a tensor)."""
    halves, code_bytes = _LAYOUT[kind]
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, 2 * halves + code_bytes)
    header = np.ascontiguousarray(blocks[..., : 2 * halves]).view(np.float16).astype(np.float32)
    packed = blocks[..., 2 * halves :]
    if kind == "Q8_0":
        codes = (packed.view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    else:  # byte j holds weight j (low nibble) and weight j + 16 (high nibble)
        codes = np.concatenate([packed & 0x0F, packed >> 4], axis=-1)
    return GGUFRows(
        kind=kind,
        codes=codes.reshape(rows, -1),
        scales=np.ascontiguousarray(header[..., 0]),
        offsets=np.ascontiguousarray(header[..., 1]) if halves == 2 else None,
    )


def _digest(row: np.ndarray) -> bytes:
    return hashlib.blake2b(
        np.ascontiguousarray(row, dtype=np.float32).tobytes(), digest_size=16
    ).digest()


class GGUFBlockIndex:
    """Every row of the file's Q4_0 / Q4_1 / Q8_0 tensors, by the digest of its dequantized
    values (what transformers loaded into the model)."""

    def __init__(self, path: Path) -> None:
        from gguf import GGUFReader, dequantize

        self.tensors: list[GGUFRows] = []
        self._rows: dict[bytes, tuple[int, int]] = {}
        for tensor in GGUFReader(str(path)).tensors:
            kind = tensor.tensor_type.name
            if kind not in _LAYOUT or len(tensor.data.shape) != 2:
                continue
            rows = parse_blocks(kind, np.asarray(tensor.data))
            values = dequantize(tensor.data, tensor.tensor_type).reshape(rows.codes.shape)
            if not np.array_equal(rows.dequantize(), values):  # guards the parsing above
                log.warning("gguf blocks: %s (%s) not parsed exactly; skipped", tensor.name, kind)
                continue
            index = len(self.tensors)
            self.tensors.append(rows)
            for r, row in enumerate(values):
                self._rows.setdefault(_digest(row), (index, r))

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(self, rows: np.ndarray) -> GGUFRows | None:
        """`rows` ([n, K] float32) as GGUF blocks of one type, or None if any row is not in
        the file."""
        found = []
        for row in rows:
            hit = self._rows.get(_digest(row))
            if hit is None:
                return None
            found.append(hit)
        kinds = {self.tensors[t].kind for t, _ in found}
        if len(kinds) != 1:
            return None

        def gather(field: str) -> np.ndarray:
            return np.stack([getattr(self.tensors[t], field)[r] for t, r in found])

        offsets = None if kinds != {"Q4_1"} else gather("offsets")
        return GGUFRows(kinds.pop(), gather("codes"), gather("scales"), offsets)


@dataclass
class Imported:
    matmuls: int = 0  # MatMulNBits made from the file's blocks
    tables: int = 0  # GatherBlockQuantized made from the file's blocks
    head: bool = False  # the output projection ([hidden, vocab]) among the MatMuls
    kinds: tuple[str, ...] = ()  # the block types found: ("Q4_1", "Q8_0")
    fp32_nodes: tuple[str, ...] = ()  # Q4_1's offset-term MatMuls: to stay fp32


def import_gguf_blocks(src: Path, dst: Path, gguf_path: Path, vocab_size: int) -> Imported:
    """Write `src` to `dst` with every MatMul (and token-table Gather) whose weights are a
    GGUF file's Q4_0 / Q4_1 / Q8_0 rows replaced by those blocks; the rest unchanged."""
    index = GGUFBlockIndex(gguf_path)
    model = load_onnx(src)
    graph = _Graph(model)
    done, kinds = Imported(), set()
    for node in list(model.graph.node):
        if node.op_type == "MatMul" and graph.weight(node.input[1]) is not None:
            weight = graph.weight(node.input[1])
            if weight.ndim == 2 and weight.shape[0] % BLOCK == 0:
                rows = index.lookup(weight.T)
                if rows is not None:
                    graph.replace_matmul(node, rows)
                    done.matmuls += 1
                    done.head |= weight.shape[1] == vocab_size
                    kinds.add(rows.kind)
        elif node.op_type == "Gather" and graph.weight(node.input[0]) is not None:
            table = graph.weight(node.input[0])
            if table.ndim == 2 and table.shape[1] % BLOCK == 0:
                rows = index.lookup(table)
                if rows is not None and rows.kind != "Q4_1":  # no float offset in that op
                    graph.replace_gather(node, rows)
                    done.tables += 1
                    kinds.add(rows.kind)
    graph.drop_unused_initializers()
    done.kinds = tuple(sorted(kinds))
    done.fp32_nodes = tuple(graph.fp32_nodes)
    log.info("gguf blocks: %d MatMuls, %d tables from %s", done.matmuls, done.tables, gguf_path)
    save_external(model, dst)
    return done


class _Graph:
    """The edits: new nodes and initializers in place of a MatMul or Gather."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.initializers = {t.name: t for t in model.graph.initializer}
        self._arrays: dict[str, np.ndarray] = {}
        self._block_sums: dict[str, str] = {}  # activation → its block sums
        self.fp32_nodes: list[str] = []  # the MatMuls added (block sums, offset terms)
        self._names = 0

    def weight(self, name: str) -> np.ndarray | None:
        if name not in self.initializers:
            return None
        if name not in self._arrays:
            self._arrays[name] = numpy_helper.to_array(self.initializers[name])
        return self._arrays[name]

    def _name(self, stem: str) -> str:
        self._names += 1
        return f"gguf_{stem}_{self._names}"

    def _add(self, array: np.ndarray, stem: str) -> str:
        name = self._name(stem)
        self.model.graph.initializer.append(numpy_helper.from_array(array, name))
        return name

    def _insert(self, before: onnx.NodeProto, *nodes: onnx.NodeProto) -> None:
        """`nodes` where `before` is (keeps the list topologically sorted)."""
        at = list(self.model.graph.node).index(before)
        for i, node in enumerate(nodes):
            self.model.graph.node.insert(at + i, node)

    def replace_matmul(self, node: onnx.NodeProto, rows: GGUFRows) -> None:
        n, k = rows.codes.shape
        blocks = rows.codes.reshape(n, k // BLOCK, BLOCK)
        if rows.bits == 4:  # MatMulNBits packs weight 2j in the low nibble of byte j
            blocks = blocks[..., 0::2] | (blocks[..., 1::2] << 4)
        inputs = [
            node.input[0],
            self._add(np.ascontiguousarray(blocks, dtype=np.uint8), "blocks"),
            self._add(rows.scales.reshape(-1), "scales"),
        ]
        output = node.output[0]
        product = self._name("product") if rows.offsets is not None else output
        nbits = helper.make_node(
            "MatMulNBits", inputs, [product], name=self._name("matmul"), domain="com.microsoft",
            K=k, N=n, bits=rows.bits, block_size=BLOCK, accuracy_level=ACCURACY_LEVEL,
        )  # fmt: skip
        new = [nbits]
        if rows.offsets is not None:
            sums = self._block_sums_of(node.input[0], k, new)
            # The op's default zero point (8) centres the codes: d·q + m = d·(q - 8) + (m + 8d).
            # Centred, the int8 activations' rounding errors are multiplied by q - 8, not by
            # q (with zero point 0 SmolLM2-135M's top-1 agreement drops from 0.93 to 0.79).
            centred = rows.offsets + 8 * rows.scales
            offsets = self._add(np.ascontiguousarray(centred.T), "offsets")  # [K/32, N]
            term = self._name("offset_term")
            new.append(helper.make_node("MatMul", [sums, offsets], [term], name=term))
            self.fp32_nodes.append(term)
            new.append(helper.make_node("Add", [product, term], [output], name=self._name("add")))
        self._insert(node, *new)
        self.model.graph.node.remove(node)

    def _block_sums_of(self, activation: str, k: int, new: list[onnx.NodeProto]) -> str:
        """x @ S ([..., K/32]), made once per activation (q, k and v share theirs)."""
        if activation not in self._block_sums:
            ones = np.zeros((k, k // BLOCK), np.float32)
            ones[np.arange(k), np.arange(k) // BLOCK] = 1.0
            sums = self._name("block_sums")
            node = helper.make_node(
                "MatMul", [activation, self._add(ones, "ones")], [sums], name=sums
            )
            new.insert(0, node)
            self.fp32_nodes.append(sums)
            self._block_sums[activation] = sums
        return self._block_sums[activation]

    def replace_gather(self, node: onnx.NodeProto, rows: GGUFRows) -> None:
        n, k = rows.codes.shape
        data = rows.codes
        if rows.bits == 4:
            data = data[:, 0::2] | (data[:, 1::2] << 4)
        gather = helper.make_node(
            "GatherBlockQuantized",
            [self._add(np.ascontiguousarray(data, dtype=np.uint8), "table"), node.input[1],
             self._add(rows.scales, "table_scales")],
            list(node.output), name=self._name("gather"), domain="com.microsoft",
            bits=rows.bits, block_size=BLOCK, gather_axis=0, quantize_axis=1,
        )  # fmt: skip
        self._insert(node, gather)
        self.model.graph.node.remove(node)

    def drop_unused_initializers(self) -> None:
        used = {name for node in self.model.graph.node for name in node.input}
        for name, tensor in self.initializers.items():
            if name not in used:
                self.model.graph.initializer.remove(tensor)
        if not any(o.domain == "com.microsoft" for o in self.model.opset_import):
            self.model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
