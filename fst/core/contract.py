"""The ONNX graph's input/output contract, declared once as data. Torch-free.

Every fst graph, whatever its architecture, has the same interface:

    input_ids                 [batch, seq]                        int64
    attention_mask            [batch, total_seq]                  int64, 0 = left padding
    position_ids              [batch, seq]                        int64
    past_key_values.{i}.key   [batch, kv_heads, past, head_dim]   float (key, then value)
    ->
    logits                    [batch, seq or 1, vocab]            float
    present.{i}.key           [batch, kv_heads, present, head_dim]

`past` / `present` are `past_seq` / `total_seq` (= past_seq + seq) with kv_layout "concat",
and both the buffer's `kv_capacity` with kv_layout "shared" / "shared_right" (one buffer
bound as both).
`kv_heads` is the number of key/value heads: GPT-2's heads, fewer with grouped-query
attention. The exporter traces with these names and dynamic axes, the parity check and the
runtime feed them, and TensorRT profiles resolve the same dimensions: all from
`GraphContract`, so no stage spells a shape of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from fst.core.constants import (
    ONNX_ATTENTION_MASK,
    ONNX_INPUT_IDS,
    ONNX_LOGITS,
    ONNX_POSITION_IDS,
    onnx_past_names,
    onnx_present_names,
)

if TYPE_CHECKING:
    from fst.core.bundle import BundleManifest

LogitsMode = Literal["all", "last"]
KVLayout = Literal["concat", "shared", "shared_right"]
# Layouts with one buffer per past/present pair, bound as both ("shared_right": the GPU
# variant, rows right-aligned for ORT's CUDA GroupQueryAttention).
SHARED_BUFFER_LAYOUTS = ("shared", "shared_right")
Dim = str | int  # a named dynamic axis, or a fixed size


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its name, element type and dimensions."""

    name: str
    dtype: str  # "int64", or the graph's float dtype ("float32" / "float16")
    dims: tuple[Dim, ...]

    def shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        """Concrete shape: named axes looked up in `sizes`."""
        return tuple(d if isinstance(d, int) else int(sizes[d]) for d in self.dims)


@dataclass(frozen=True)
class GraphContract:
    """The interface of one exported graph (see the module docstring)."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    kv_layout: KVLayout = "concat"
    logits: LogitsMode = "all"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_kv_heads", "head_dim", "vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GraphContract.{name} must be a positive integer, got {value!r}")
        if self.kv_layout not in ("concat", *SHARED_BUFFER_LAYOUTS):
            raise ValueError(
                f"kv_layout must be concat, shared or shared_right, got {self.kv_layout!r}"
            )
        if self.logits not in ("all", "last"):
            raise ValueError(f"logits must be all or last, got {self.logits!r}")

    @classmethod
    def from_manifest(cls, manifest: BundleManifest) -> GraphContract:
        arch, graph = manifest.architecture, manifest.graph
        return cls(
            num_layers=arch.num_layers,
            num_kv_heads=arch.kv_heads,
            head_dim=arch.head_dim,
            vocab_size=arch.vocab_size,
            kv_layout=graph.kv_layout,
            logits=graph.logits,
            dtype=graph.dtype,
        )

    # ---- names ------------------------------------------------------------------------

    @property
    def past_names(self) -> list[str]:
        return [n for i in range(self.num_layers) for n in onnx_past_names(i)]

    @property
    def present_names(self) -> list[str]:
        return [n for i in range(self.num_layers) for n in onnx_present_names(i)]

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    # ---- specs ------------------------------------------------------------------------

    @property
    def past_axis(self) -> str:
        return "kv_capacity" if self.kv_layout in SHARED_BUFFER_LAYOUTS else "past_seq"

    @property
    def present_axis(self) -> str:
        return "kv_capacity" if self.kv_layout in SHARED_BUFFER_LAYOUTS else "total_seq"

    def kv_dims(self, axis: str) -> tuple[Dim, ...]:
        return ("batch", self.num_kv_heads, axis, self.head_dim)

    @property
    def inputs(self) -> list[TensorSpec]:
        past = self.kv_dims(self.past_axis)
        return [
            TensorSpec(ONNX_INPUT_IDS, "int64", ("batch", "seq")),
            TensorSpec(ONNX_ATTENTION_MASK, "int64", ("batch", "total_seq")),
            TensorSpec(ONNX_POSITION_IDS, "int64", ("batch", "seq")),
            *(TensorSpec(name, self.dtype, past) for name in self.past_names),
        ]

    @property
    def outputs(self) -> list[TensorSpec]:
        steps: Dim = 1 if self.logits == "last" else "seq"
        present = self.kv_dims(self.present_axis)
        return [
            TensorSpec(ONNX_LOGITS, self.dtype, ("batch", steps, self.vocab_size)),
            *(TensorSpec(name, self.dtype, present) for name in self.present_names),
        ]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """The exporter's `dynamic_axes`: every named dimension of every tensor."""
        return {
            spec.name: {i: d for i, d in enumerate(spec.dims) if isinstance(d, str)}
            for spec in (*self.inputs, *self.outputs)
        }

    def kv_shape(self, batch: int, length: int) -> tuple[int, int, int, int]:
        """Shape of one past/present tensor holding `length` positions."""
        return (batch, self.num_kv_heads, length, self.head_dim)

    def input_shapes(self, sizes: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
        """Concrete input shapes for named sizes (batch, seq, past_seq, total_seq, ...)."""
        return {spec.name: spec.shape(sizes) for spec in self.inputs}
