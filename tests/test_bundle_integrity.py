"""Broken bundles and bad arguments: one line naming the file or argument, exit 2.

Each case copies the tiny exported bundle, breaks one file as a crash, a bad copy or an edit
would, and checks what `Generator.from_bundle` raises and what `fst-generate` prints.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fst.core.bundle import BundleError, BundleManifest, check_bundle, verify_in_background
from fst.runtime import Generator
from fst.runtime.cli import main as cli_main


@pytest.fixture
def bundle(tmp_path, tiny_plain_bundle) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_plain_bundle, copy)
    return copy


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _edit_manifest(bundle: Path, edit) -> None:
    path = bundle / "fst_bundle.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


BREAKS = {
    "truncated model": ("model.onnx", lambda b: _truncate(b / "model.onnx")),
    "garbled model": (  # same size: only ONNX Runtime can tell
        "model.onnx",
        lambda b: (b / "model.onnx").write_bytes((b / "model.onnx").read_bytes()[::-1]),
    ),
    "empty model": ("model.onnx", lambda b: (b / "model.onnx").write_bytes(b"")),
    "missing model": ("model.onnx", lambda b: (b / "model.onnx").unlink()),
    "missing tokenizer": ("tokenizer.json", lambda b: (b / "tokenizer.json").unlink()),
    "truncated tokenizer": ("tokenizer.json", lambda b: _truncate(b / "tokenizer.json")),
    "manifest not JSON": ("fst_bundle.json", lambda b: (b / "fst_bundle.json").write_text("{")),
    "manifest field missing": (
        "fst_bundle.json",
        lambda b: _edit_manifest(b, lambda d: d["graph"].pop("opset")),
    ),
}


@pytest.mark.parametrize("case", list(BREAKS))
def test_a_broken_bundle_fails_with_one_line_naming_the_file_and_exit_2(
    case, bundle, capsys
) -> None:
    name, breaks = BREAKS[case]
    breaks(bundle)
    with pytest.raises(BundleError) as error:
        Generator.from_bundle(bundle, threads=1)
    assert str(error.value).startswith(str(bundle / name))
    assert cli_main(["--bundle", str(bundle), "Hello", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fst-generate: error: {bundle / name}:") and err.count("\n") == 1
    if case == "manifest field missing":
        assert "graph.opset" in err


def test_truncation_the_parsers_would_accept_is_caught_by_the_recorded_sizes(bundle) -> None:
    # JSON still valid, tokenizer still loadable: only the size recorded at export tells.
    tokenizer = bundle / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text() + " ")
    with pytest.raises(BundleError, match=r"tokenizer\.json: \d+ bytes, the manifest says \d+"):
        check_bundle(bundle)
    # Bundles written before sizes were recorded still load (only --verify checks them).
    _edit_manifest(bundle, lambda d: d.pop("sizes"))
    assert BundleManifest.load(bundle).sizes == {}
    check_bundle(bundle)


def test_verify_compares_every_sha256_and_names_the_changed_file(bundle, capsys) -> None:
    # A weight's byte: same size, still a valid model (the weights live in the data file).
    weights = bundle / (BundleManifest.load(bundle).graph.external_data or "model.onnx")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    Generator.from_bundle(bundle, threads=1)  # sizes agree: loads without --verify
    name = re.escape(weights.name)
    with pytest.raises(BundleError, match=rf"{name}: sha256 .* differs from the manifest"):
        Generator.from_bundle(bundle, threads=1, verify=True)
    with pytest.raises(BundleError, match=rf"{name}: sha256"):
        verify_in_background(bundle).result(timeout=60)
    args = ["--bundle", str(bundle), "Hi", "--max_new_tokens", "2", "--threads", "1"]
    assert cli_main([*args, "--verify"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fst-generate: error: {weights}: sha256") and err.count("\n") == 1


def test_an_intact_bundle_passes_verify(tiny_plain_bundle) -> None:
    manifest = check_bundle(tiny_plain_bundle, hashes=True)
    assert verify_in_background(tiny_plain_bundle).result(timeout=60) == manifest
    assert set(manifest.sizes) == set(manifest.files) >= {"model.onnx", "tokenizer.json"}


def test_a_non_utf8_argument_is_one_line_and_exit_2(tiny_plain_bundle) -> None:
    # The real command line: Python turns undecodable argv bytes into lone surrogates.
    command = [sys.executable, "-m", "fst.runtime.cli", "--bundle", str(tiny_plain_bundle)]
    done = subprocess.run(
        [*command, b"caf\xe9 \xff", "--max_new_tokens", "2"], capture_output=True, timeout=120
    )
    assert done.returncode == 2, done.stderr.decode(errors="replace")
    assert (
        done.stderr
        == b"fst-generate: error: argument prompt: not valid UTF-8 (byte 0xe9 at character 3)\n"
    )


def test_the_library_rejects_a_lone_surrogate_with_a_value_error(tiny_plain_bundle) -> None:
    generator = Generator.from_bundle(tiny_plain_bundle, threads=1)
    with pytest.raises(ValueError, match="not valid text"):
        generator.encode_prompt("ab\ud800cd")
    with pytest.raises(ValueError, match="not valid text"):
        generator.generate("ab\ud800cd", max_new_tokens=2)


def test_fst_eval_reports_a_broken_bundle_in_one_line(bundle, tmp_path, capsys) -> None:
    from conftest import NIETZSCHE

    from fst.evaluation.cli import main as eval_main

    (bundle / "tokenizer.json").unlink()
    documents = str(NIETZSCHE / "valid.documents")
    args = ["--bundle", str(bundle), "--documents", documents, "--output_dir", str(tmp_path)]
    assert eval_main(args) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"fst-eval: error: {bundle / 'tokenizer.json'}: missing (the bundle manifest lists it); re-export the bundle\n"
    )
