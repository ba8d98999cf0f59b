"""GGUF sources of fst-export (fst.training.gguf_import): which paths are GGUF files, the
weight type they record, and one-line failures that leave nothing behind. The real model's
import, parity and chat are the slow tests in tests/test_real_model.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fst.export import cli
from fst.training.gguf_import import GGUFError, find_gguf, read_header


def write_gguf(path: Path, architecture: str = "llama", file_type: int | None = 3) -> Path:
    """A small GGUF file: metadata and one F32 matrix (no model transformers could load)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    if file_type is not None:
        writer.add_file_type(file_type)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def cli_fails(args: list[str], capsys) -> str:
    """fst-export in-process: exit 2, one line on stderr, no output folder."""
    output = Path(args[args.index("--output") + 1])
    capsys.readouterr()
    code = cli.main([*args, "--quiet", "--log_file", str(output.parent / "debug.log")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not output.exists()
    assert not list(output.parent.glob(f"{output.name}.tmp-*"))
    return err


def test_find_gguf_takes_a_file_or_a_folder_with_exactly_one(tmp_path):
    (tmp_path / "one").mkdir()
    file = write_gguf(tmp_path / "one" / "model.Q4_1.gguf")
    assert find_gguf(file) == file
    assert find_gguf(tmp_path / "one") == file
    (tmp_path / "one" / "config.json").write_text("{}")  # a Hugging Face folder wins
    assert find_gguf(tmp_path / "one") is None
    (tmp_path / "empty").mkdir()
    assert find_gguf(tmp_path / "empty") is None
    assert find_gguf(tmp_path / "missing") is None
    (tmp_path / "two").mkdir()
    write_gguf(tmp_path / "two" / "a.gguf")
    write_gguf(tmp_path / "two" / "b.gguf")
    with pytest.raises(GGUFError, match="several GGUF files"):
        find_gguf(tmp_path / "two")


@pytest.mark.parametrize(("file_type", "expected"), [(3, "Q4_1"), (7, "Q8_0"), (1, "F16")])
def test_weight_type_is_read_from_the_header(tmp_path, file_type, expected):
    path = write_gguf(tmp_path / "m.gguf", file_type=file_type)
    assert read_header(path) == ("llama", expected)


def test_weight_type_without_file_type_is_the_matrices_type(tmp_path):
    assert read_header(write_gguf(tmp_path / "m.gguf", file_type=None)) == ("llama", "F32")


def test_unreadable_gguf_fails_in_one_line(tmp_path, capsys):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00truncated")
    err = cli_fails(["--model_path", str(bad), "--output", str(tmp_path / "out")], capsys)
    assert "not a readable GGUF file" in err and str(bad) in err


def test_unsupported_gguf_architecture_fails_in_one_line(tmp_path, capsys):
    path = write_gguf(tmp_path / "bert.gguf", architecture="bert")
    err = cli_fails(["--model_path", str(path), "--output", str(tmp_path / "out")], capsys)
    assert "'bert'" in err and str(path) in err


def test_folder_with_several_gguf_files_fails_in_one_line(tmp_path, capsys):
    write_gguf(tmp_path / "a.gguf")
    write_gguf(tmp_path / "b.gguf")
    err = cli_fails(["--model_path", str(tmp_path), "--output", str(tmp_path / "out")], capsys)
    assert "several GGUF files (a.gguf, b.gguf)" in err


def test_folder_without_config_or_gguf_names_both(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    err = cli_fails(
        ["--model_path", str(tmp_path / "model"), "--output", str(tmp_path / "out")], capsys
    )
    assert "no config.json" in err and "GGUF" in err
