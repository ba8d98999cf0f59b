"""ONNX files whose weights live in a side file, so no stage holds a serialised copy.

`onnx.save_model` of a proto with inline weights first serialises the whole message into
one bytes object (a second copy of every weight, and impossible past 2 GB). Saved with
external data, each tensor is written to `<name>.data` and its bytes dropped from the proto
as it goes, so a stage peaks at the one copy it loaded. ONNX Runtime and `onnx.load` read
such files directly; the exporter writes every intermediate file this way.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import onnx

EXTERNAL_DATA_SUFFIX = ".data"
# Smaller tensors (shape constants, biases of tiny models) stay in the graph.
SIZE_THRESHOLD = 1024
T = TypeVar("T")


def data_file(path: Path) -> Path:
    return path.with_name(path.name + EXTERNAL_DATA_SUFFIX)


def save_external(model: onnx.ModelProto, path: Path) -> str:
    """Save `model` at `path` with its weights in `<name>.data`; returns that file's name.

    The proto's tensors are emptied on the way (their bytes now live in the file): do not
    use `model` afterwards.
    """
    path = Path(path)
    # onnx appends to an existing data file; a stale one would be read as garbage.
    data_file(path).unlink(missing_ok=True)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data_file(path).name,
        size_threshold=SIZE_THRESHOLD,
        convert_attribute=True,
    )
    return data_file(path).name


def load_onnx(path: Path) -> onnx.ModelProto:
    """The model at `path` with every weight in memory (external data read in)."""
    return onnx.load(str(path), load_external_data=True)


def remove_onnx(path: Path) -> None:
    """Delete a model file and its side file (a stage's input once the next one is written)."""
    Path(path).unlink(missing_ok=True)
    data_file(Path(path)).unlink(missing_ok=True)


def weight_bytes(path: Path) -> int:
    """Bytes of the initializers of the model at `path` (graph file plus side file)."""
    path = Path(path)
    side = data_file(path)
    return path.stat().st_size + (side.stat().st_size if side.is_file() else 0)


def move_external(src: Path, dst: Path) -> str:
    """Move a model saved by `save_external` to `dst` and its data to `<dst>.data` (two
    renames; only the small graph file is rewritten, to point at the new data file name)."""
    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src), load_external_data=False)
    old, new = data_file(src).name, data_file(dst).name
    for tensor in _external_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location":
                if entry.value != old:
                    raise ValueError(f"{src}: weights in {entry.value!r}, expected {old!r}")
                entry.value = new
    data_file(src).replace(data_file(dst))
    onnx.save_model(model, str(dst))
    src.unlink()
    # onnx creates the data file private (0600); a bundle is read by servers running as
    # other users, so give both files the permissions a plain open() would.
    mode = 0o666 & ~_umask()
    for path in (dst, data_file(dst)):
        os.chmod(path, mode)
    return new


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _external_tensors(model: onnx.ModelProto):
    from onnx.external_data_helper import _get_all_tensors

    return [t for t in _get_all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]


def rewrite_graph_only(src: Path, dst: Path, rewrite: Callable[[onnx.ModelProto], T]) -> T:
    """Run a graph rewrite that reads no weight values on `src`'s graph alone; the result is
    saved at `dst`, whose data file becomes `src`'s (renamed, never read or copied).

    The weights stay on disk, so a rewrite (or a library it calls that copies the model for
    shape inference) costs memory for the graph only. It runs with the working directory
    set to `src`'s folder (onnx resolves external data relative to it). Tensors the rewrite adds stay in the
    graph file (shape constants). `src` is consumed: its data file moves to `dst`.
    """
    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src), load_external_data=False)
    # A rewrite that reads a small constant (a bias) finds it through onnx's relative
    # external-data path: run it from the model's folder.
    with contextlib.chdir(src.parent):
        result = rewrite(model)
    old, new = data_file(src).name, data_file(dst).name
    for tensor in _external_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new
    if data_file(src).is_file():
        data_file(src).replace(data_file(dst))
    onnx.save_model(model, str(dst))
    src.unlink()
    return result
