"""fst.core.contract: the one declaration of the graph interface (names, dims, KV shapes)."""

from __future__ import annotations

import json
import shutil

import pytest

from fst.core.bundle import BundleManifest
from fst.core.constants import BUNDLE_MANIFEST
from fst.core.contract import GraphContract


def test_names_and_dynamic_axes_of_both_kv_layouts():
    concat = GraphContract(num_layers=2, num_kv_heads=3, head_dim=8, vocab_size=50)
    assert concat.input_names == [
        "input_ids", "attention_mask", "position_ids",
        "past_key_values.0.key", "past_key_values.0.value",
        "past_key_values.1.key", "past_key_values.1.value",
    ]  # fmt: skip
    assert concat.output_names == [
        "logits",
        "present.0.key",
        "present.0.value",
        "present.1.key",
        "present.1.value",
    ]
    axes = concat.dynamic_axes()
    assert axes["input_ids"] == {0: "batch", 1: "seq"}
    assert axes["attention_mask"] == {0: "batch", 1: "total_seq"}
    assert axes["logits"] == {0: "batch", 1: "seq"}
    assert axes["past_key_values.1.value"] == {0: "batch", 2: "past_seq"}
    assert axes["present.0.key"] == {0: "batch", 2: "total_seq"}
    shared = GraphContract(
        num_layers=2, num_kv_heads=3, head_dim=8, vocab_size=50, kv_layout="shared", logits="last"
    )
    axes = shared.dynamic_axes()
    assert axes["logits"] == {0: "batch"}  # [batch, 1, vocab]
    assert axes["past_key_values.0.key"] == axes["present.0.key"] == {0: "batch", 2: "kv_capacity"}
    assert shared.kv_shape(4, 10) == (4, 3, 10, 8)
    sizes = {"batch": 2, "seq": 5, "total_seq": 9, "past_seq": 4, "kv_capacity": 12}
    shapes = shared.input_shapes(sizes)
    assert shapes["attention_mask"] == (2, 9) and shapes["past_key_values.1.key"] == (2, 3, 12, 8)


@pytest.mark.parametrize(
    "field, value", [("num_kv_heads", 0), ("head_dim", 2.5), ("num_layers", True)]
)
def test_bad_sizes_name_the_field(field, value):
    sizes = {"num_layers": 1, "num_kv_heads": 1, "head_dim": 1, "vocab_size": 1, field: value}
    with pytest.raises(ValueError, match=f"GraphContract.{field}"):
        GraphContract(**sizes)


def test_bundles_without_the_new_fields_still_load_and_generate(tiny_plain_bundle, tmp_path):
    """Bundles written before num_kv_heads / bos_token_id: KV heads = heads, no BOS."""
    from fst.runtime import Generator

    old = tmp_path / "old"
    shutil.copytree(tiny_plain_bundle, old)
    data = json.loads((old / BUNDLE_MANIFEST).read_text())
    del data["architecture"]["num_kv_heads"]
    del data["tokenizer"]["bos_token_id"]
    (old / BUNDLE_MANIFEST).write_text(json.dumps(data))
    manifest = BundleManifest.load(old)
    assert manifest.architecture.kv_heads == manifest.architecture.num_heads
    contract = GraphContract.from_manifest(manifest)
    assert contract.num_kv_heads == manifest.architecture.num_heads
    greedy = {"temperature": 0.0, "max_new_tokens": 6, "ignore_eos": True}
    (then,) = Generator.from_bundle(old, threads=1).generate("Hello", **greedy)
    (now,) = Generator.from_bundle(tiny_plain_bundle, threads=1).generate("Hello", **greedy)
    assert then.token_ids == now.token_ids and len(then.token_ids) == 6
