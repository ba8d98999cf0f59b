"""The bundle manifest: the one JSON file the torch-free runtime needs beside the model.

Written by `fst.export`, read by `fst.runtime` and summarised by `fst.serving`'s /version.
A pydantic model so both sides agree on the fields and a broken manifest fails with a
message that names the field.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fst.constants import BUNDLE_FORMAT_VERSION, BUNDLE_MANIFEST


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ArchitectureInfo(_Strict):
    model_type: str = Field(description="Hugging Face model_type, e.g. 'gpt2'")
    num_layers: int
    num_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    max_positions: int


class Int4Scheme(_Strict):
    """How an int4 bundle's weights were quantised (fst.export.quantize_int4)."""

    op: Literal["MatMulNBits"] = "MatMulNBits"
    bits: Literal[4] = 4
    block_size: int = Field(description="weights per scale / zero point, along K")
    accuracy_level: int = Field(description="MatMulNBits compute type: 0 fp32, 4 int8")
    symmetric: bool = Field(description="False: a 4-bit zero point per block")
    lm_head: bool = Field(description="output projection quantised too")
    embedding: bool = Field(description="token embedding as GatherBlockQuantized")
    matmuls: int = Field(description="MatMulNBits nodes in the graph")


class GraphInfo(_Strict):
    file: str = "model.onnx"
    external_data: str | None = Field(None, description="external weights file")
    opset: int
    variant: Literal["fp32", "fp16", "int8", "int4"] = "fp32"
    dtype: Literal["float32", "float16"] = Field(
        "float32", description="dtype of logits and past/present tensors"
    )
    optimized: bool = Field(False, description="ONNX Runtime transformer fusions applied")
    logits: Literal["all", "last"] = Field(
        "all", description="'last': logits only for the last position ([batch, 1, vocab])"
    )
    kv_layout: Literal["concat", "shared"] = Field(
        "concat",
        description=(
            "'concat': past [B, H, past, D] -> present [B, H, past + seq, D]; 'shared': past "
            "and present are one buffer [B, H, capacity, D] (bind both to the same value)"
        ),
    )
    int8_weights: Literal["QInt8", "QUInt8"] | None = Field(
        None, description="int8 bundles: the weight type kept (see fst.export.exporter)"
    )
    int4: Int4Scheme | None = Field(None, description="int4 bundles: the quantisation scheme")
    inputs: list[str]
    outputs: list[str]


class TokenizerInfo(_Strict):
    file: str = "tokenizer.json"
    document_format: bool = Field(
        description="True: prompts are {body, meta} documents as in training; False: plain LM"
    )
    eos_token_id: int | None
    pad_token_id: int | None
    start_of_document_id: int | None = None
    end_of_meta_id: int | None = None
    max_meta_len: int | None = None
    max_body_len: int | None = None


class ParityReport(_Strict):
    max_abs_diff: float
    logit_scale: float = Field(description="max |logit| of the PyTorch reference")
    tolerance: float | None = Field(None, description="the fp32 gate; None for int8/fp16")
    top1_agreement: float = Field(description="fraction of positions with equal argmax")
    checked_positions: int
    passed: bool


class TrainingInfo(_Strict):
    source: str = Field(description="checkpoint path or Hugging Face model name/folder")
    global_step: int | None = None
    epoch: int | None = None
    args: dict[str, Any] = Field(default_factory=dict)


class BundleManifest(_Strict):
    format_version: int = BUNDLE_FORMAT_VERSION
    created_at: str
    architecture: ArchitectureInfo
    graph: GraphInfo
    tokenizer: TokenizerInfo
    training: TrainingInfo
    versions: dict[str, str]
    files: dict[str, str] = Field(description="file name -> sha256 hex digest")
    parity: ParityReport
    generation_defaults: dict[str, Any] = Field(default_factory=dict)

    def save(self, folder: Path) -> Path:
        path = Path(folder) / BUNDLE_MANIFEST
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> BundleManifest:
        path = Path(folder) / BUNDLE_MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: not an fst bundle (no {BUNDLE_MANIFEST})")
        data = json.loads(path.read_text())
        if data.get("format_version") != BUNDLE_FORMAT_VERSION:
            raise ValueError(
                f"{path}: bundle format {data.get('format_version')} is not supported "
                f"(this fst reads format {BUNDLE_FORMAT_VERSION})"
            )
        return cls.model_validate(data)

    def summary(self) -> dict[str, Any]:
        """What /version shows: no raw internals, no training args."""
        return {
            "model_type": self.architecture.model_type,
            "num_layers": self.architecture.num_layers,
            "vocab_size": self.architecture.vocab_size,
            "max_positions": self.architecture.max_positions,
            "variant": self.graph.variant,
            "optimized": self.graph.optimized,
            "document_format": self.tokenizer.document_format,
            "global_step": self.training.global_step,
            "epoch": self.training.epoch,
            "parity": {
                "max_abs_diff": self.parity.max_abs_diff,
                "top1_agreement": self.parity.top1_agreement,
                "passed": self.parity.passed,
            },
            "created_at": self.created_at,
        }


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
