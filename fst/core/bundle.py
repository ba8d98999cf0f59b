"""The bundle manifest: the one JSON file the torch-free runtime needs beside the model.

Written by `fst.export`, read by `fst.runtime` and summarised by `fst.serving`'s /version.
A pydantic model so both sides agree on the fields and a broken manifest fails with a
message that names the field. `check_bundle` is what every loader calls first: a missing,
empty, truncated or (with `hashes=True`) modified file fails there with a `BundleError`
naming it, instead of deep inside ONNX Runtime or `tokenizers`.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fst.core.constants import BUNDLE_FORMAT_VERSION, BUNDLE_MANIFEST


class BundleError(ValueError):
    """A bundle file is missing, unreadable, or does not match the manifest. The message
    starts with the file's path and says what to do; one line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ArchitectureInfo(_Strict):
    model_type: str = Field(description="Hugging Face model_type, e.g. 'gpt2'")
    num_layers: int
    num_heads: int
    num_kv_heads: int | None = Field(
        None,
        description="key/value heads (fewer than num_heads with grouped-query "
        "attention); None in bundles older than this field: num_heads",
    )
    head_dim: int
    hidden_size: int
    vocab_size: int
    max_positions: int

    @property
    def kv_heads(self) -> int:
        """Heads of the past/present tensors (see fst.core.contract)."""
        return self.num_kv_heads or self.num_heads


class Int4Scheme(_Strict):
    """How block-quantised weights were made (fst.export.quantize_int4): an int4 bundle's,
    or an int8 bundle's when dynamic int8 failed its gate (8-bit blocks)."""

    op: Literal["MatMulNBits"] = "MatMulNBits"
    bits: Literal[4, 8] = 4
    block_size: int = Field(description="weights per scale / zero point, along K")
    accuracy_level: int = Field(description="MatMulNBits compute type: 0 fp32, 4 int8")
    symmetric: bool = Field(description="False: a 4-bit zero point per block")
    lm_head: bool = Field(description="output projection quantised too")
    embedding: bool = Field(description="token embedding as GatherBlockQuantized")
    matmuls: int = Field(description="MatMulNBits nodes in the graph")
    from_gguf: int = Field(
        0, description="MatMulNBits / GatherBlockQuantized holding a GGUF file's own blocks"
    )


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
    kv_layout: Literal["concat", "shared", "shared_right"] = Field(
        "concat",
        description=(
            "'concat': past [B, H, past, D] -> present [B, H, past + seq, D]; 'shared': past "
            "and present are one buffer [B, H, capacity, D] (bind both to the same value); "
            "'shared_right': the same, rows right-padded (the GPU layout, fst.export.gqa_right)"
        ),
    )
    int8_weights: Literal["QInt8", "QUInt8", "MatMulNBits"] | None = Field(
        None,
        description="int8 bundles: the weight type kept (see fst.export.exporter); "
        "MatMulNBits: 8-bit blocks (int8_blocks), when dynamic int8 failed the gate",
    )
    int8_blocks: Int4Scheme | None = Field(
        None, description="int8 bundles of 8-bit blocks: the scheme (bits 8)"
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
    bos_token_id: int | None = Field(
        None, description="plain-LM prompts start with it (the tokenizer's own BOS)"
    )
    start_of_document_id: int | None = None
    end_of_meta_id: int | None = None
    max_meta_len: int | None = None
    max_body_len: int | None = None


class ChatInfo(_Strict):
    """How a chat model wants a conversation formatted (fst.core.chat_template)."""

    template: str = Field(description="Jinja2 chat template, as transformers renders it")
    template_source: str = Field(
        description="where it came from: tokenizer_config.json, chat_template.jinja, "
        "the GGUF file, or fst's default (ChatML)"
    )
    special_tokens: dict[str, str] = Field(
        default_factory=dict,
        description="variables the template reads besides the messages (bos_token, eos_token)",
    )
    stop_token_ids: list[int] = Field(
        default_factory=list,
        description="every token that ends an assistant turn (end-of-turn and eos ids)",
    )


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
    sizes: dict[str, int] = Field(
        default_factory=dict,
        description="file name -> bytes (checked at every load; absent before fst 0.3.1)",
    )
    parity: ParityReport
    generation_defaults: dict[str, Any] = Field(
        default_factory=dict,
        description="the model's own sampling defaults (GenerationParams field names)",
    )
    chat: ChatInfo | None = Field(
        None, description="chat models only: the chat template and end-of-turn tokens"
    )
    source_format: str | None = Field(
        None, description="where the weights came from when not PyTorch, e.g. 'GGUF Q4_1'"
    )

    def save(self, folder: Path) -> Path:
        path = Path(folder) / BUNDLE_MANIFEST
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> BundleManifest:
        """The manifest of `folder`; BundleError naming the file and the field if broken."""
        path = Path(folder) / BUNDLE_MANIFEST
        if not path.is_file():
            raise BundleError(f"{folder}: not an fst bundle (no {BUNDLE_MANIFEST})")
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BundleError(f"{path}: unreadable manifest ({e}); re-export the bundle") from e
        if not isinstance(data, dict):
            raise BundleError(f"{path}: the manifest is not a JSON object; re-export the bundle")
        if data.get("format_version") != BUNDLE_FORMAT_VERSION:
            raise BundleError(
                f"{path}: bundle format {data.get('format_version')} is not supported "
                f"(this fst reads format {BUNDLE_FORMAT_VERSION})"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise BundleError(f"{path}: {_first_error(e)}") from e

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
            "chat": self.chat is not None,
            "global_step": self.training.global_step,
            "epoch": self.training.epoch,
            "parity": {
                "max_abs_diff": self.parity.max_abs_diff,
                "top1_agreement": self.parity.top1_agreement,
                "passed": self.parity.passed,
            },
            "created_at": self.created_at,
        }


def _first_error(error: ValidationError) -> str:
    """'graph.opset: Field required (and 2 more errors)': the first problem, on one line."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "manifest"
    more = error.error_count() - 1
    return f"{where}: {first['msg']}" + (f" (and {more} more errors)" if more else "")


def check_bundle(folder: str | Path, *, hashes: bool = False) -> BundleManifest:
    """The manifest of the bundle in `folder`, once its files are known to be intact.

    Always (a few stat calls): the manifest parses, the model and tokenizer files it names
    and every file it lists exist, are not empty, and have the size it records. With
    `hashes`, also each file's sha256 (reads every byte: about a second per GB).
    Raises BundleError naming the first bad file.
    """
    folder = Path(folder)
    manifest = BundleManifest.load(folder)
    names = dict.fromkeys([manifest.graph.file, manifest.tokenizer.file, *manifest.files])
    if manifest.graph.external_data:
        names[manifest.graph.external_data] = None
    for name in names:
        _check_file(folder / name, manifest)
    if hashes:
        for name, expected in manifest.files.items():
            actual = sha256_file(folder / name)
            if actual != expected:
                raise BundleError(
                    f"{folder / name}: sha256 {actual[:16]}... differs from the manifest's "
                    f"{expected[:16]}... (the file changed after export); re-export the bundle"
                )
    return manifest


def verify_in_background(folder: str | Path) -> Future[BundleManifest]:
    """`check_bundle(folder, hashes=True)` in a worker thread, for a server that starts on the
    size check and wants the hashes too without waiting for them: the future's `result()`
    raises the BundleError, if any."""
    executor = ThreadPoolExecutor(1, thread_name_prefix="fst-bundle-verify")
    future = executor.submit(check_bundle, folder, hashes=True)
    executor.shutdown(wait=False)
    return future


def _check_file(path: Path, manifest: BundleManifest) -> None:
    if not path.is_file():
        raise BundleError(f"{path}: missing (the bundle manifest lists it); re-export the bundle")
    size = path.stat().st_size
    expected = manifest.sizes.get(path.name)
    if size == 0 and expected != 0:
        raise BundleError(f"{path}: empty file; re-export the bundle")
    if expected is not None and size != expected:
        raise BundleError(
            f"{path}: {size} bytes, the manifest says {expected} (truncated or replaced); "
            "re-export the bundle"
        )


def file_sizes(folder: str | Path, names: list[str]) -> dict[str, int]:
    """Bytes of each named file of `folder` (the manifest's `sizes`)."""
    return {name: (Path(folder) / name).stat().st_size for name in names}


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
