"""A bundle's graph as a scoring model: logits of every position of right-padded batches.

fst-eval's token-level metrics (perplexity, acc/rep/wrep) need the logits of every
position, which a bundle exported with `--logits all` returns. `BundleScorer` runs one
prefill with an empty past through ONNX Runtime (`fst.runtime.scoring.prefill_logits`, the
function the exporter's parity check verifies) and looks like the Hugging Face model call
`token_level_metrics` makes, so fp32, int8 and int4 bundles are scored by exactly the same
code as the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from fst.core.bundle import BundleManifest
from fst.core.contract import GraphContract


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
        self.contract = GraphContract.from_manifest(self.manifest)
        path = Path(bundle_dir) / self.manifest.graph.file
        self.session, _ = create_session(path, providers=["cpu"], threads=threads)

    def __call__(self, *, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        from fst.runtime.scoring import prefill_logits

        ids, mask = input_ids.numpy(), attention_mask.numpy()
        logits = prefill_logits(self.session, self.contract, ids, mask)
        return SimpleNamespace(logits=torch.from_numpy(logits))
