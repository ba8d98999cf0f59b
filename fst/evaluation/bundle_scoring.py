"""A bundle's graph as a scoring model: logits of every position of right-padded batches.

fst-eval's token-level metrics (perplexity, acc/rep/wrep) need the logits of every
position, which a bundle exported with `--logits all` returns. `BundleScorer` runs one
prefill with an empty past (a zero buffer for the shared KV layout) through ONNX Runtime
and looks like the Hugging Face model call `token_level_metrics` makes, so fp32, int8 and
int4 bundles are scored by exactly the same code as the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from fst.core.bundle import BundleManifest
from fst.core.constants import (
    ONNX_ATTENTION_MASK,
    ONNX_INPUT_IDS,
    ONNX_POSITION_IDS,
    onnx_past_names,
)


class BundleScorer:
    """`scorer(input_ids=..., attention_mask=...).logits`: [B, S, V] float32 logits."""

    def __init__(self, bundle_dir: str | Path, threads: int | None = None) -> None:
        from fst.runtime.session import create_session

        self.manifest = BundleManifest.load(bundle_dir)
        if self.manifest.graph.logits != "all":
            raise ValueError(
                f"{bundle_dir}: exported with --logits last; token-level metrics need a bundle "
                "exported with --logits all"
            )
        path = Path(bundle_dir) / self.manifest.graph.file
        self.session, _ = create_session(path, providers=["cpu"], threads=threads)

    def __call__(self, *, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        arch, graph = self.manifest.architecture, self.manifest.graph
        ids, mask = input_ids.numpy(), attention_mask.numpy()
        batch, width = ids.shape
        capacity = width + 1 if graph.kv_layout == "shared" else 0
        past = np.zeros((batch, arch.kv_heads, capacity, arch.head_dim), dtype=graph.dtype)
        positions = np.clip(np.cumsum(mask, axis=-1) - 1, 0, None).astype(np.int64)
        feed = {ONNX_INPUT_IDS: ids, ONNX_ATTENTION_MASK: mask, ONNX_POSITION_IDS: positions}
        for layer in range(arch.num_layers):
            for name in onnx_past_names(layer):
                feed[name] = past
        (logits,) = self.session.run([self.session.get_outputs()[0].name], feed)
        return SimpleNamespace(logits=torch.from_numpy(logits.astype(np.float32)))
