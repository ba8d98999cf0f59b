"""Host cost of one decode step: the GPU path's stepper (kv_layout shared_right, device_kv)
beside the CPU path's (kv_layout shared, kv_cache), both on the CPU provider.

    python -m benchmarks.gpu.host_overhead    # ~1-2 min

A 2-layer x 32 GPT-2 (random weights, seeded) makes the graph's own work small, so the
per-step figure is mostly binding, the ONNX Runtime call and numpy bookkeeping: the part of
a GPU decode step the GPU does not speed up. Rounds alternate between the two steppers;
medians of per-step medians. Not a GPU figure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0]
    ).parse_args()
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    from fst.core.bundle import BundleManifest
    from fst.core.tokenization import GPT2_BPE_DIR
    from fst.export.exporter import export_bundle
    from fst.runtime.kv_cache import make_stepper
    from fst.runtime.session import create_session

    work = Path(tempfile.mkdtemp(prefix="fst-host-overhead-"))
    tokenizer = GPT2TokenizerFast(
        vocab=str(GPT2_BPE_DIR / "vocab.json"), merges=str(GPT2_BPE_DIR / "merges.txt")
    )
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=256, vocab_size=len(tokenizer))
    GPT2LMHeadModel(config).save_pretrained(work / "hf")
    tokenizer.save_pretrained(work / "hf")
    steppers = {}
    for layout in ("shared", "shared_right"):
        bundle = work / layout
        export_bundle(bundle, model_path=str(work / "hf"), optimize=True, kv_layout=layout,
                      progress=False)  # fmt: skip
        session, _ = create_session(
            bundle / "model.onnx", providers=["cpu"], threads=1, huge_pages=True
        )
        steppers[layout] = make_stepper(session, BundleManifest.load(bundle))
    prompt = [[464, 3290, 286, 1204, 318, 326, 340, 11]]
    medians: dict[str, list[float]] = {k: [] for k in steppers}
    for _ in range(7):
        for layout, stepper in steppers.items():
            logits, cache = stepper.prefill(prompt, 0, reserve=100)
            steps = []
            for _ in range(64):
                start = time.perf_counter()
                logits = stepper.decode(cache, logits.argmax(-1))
                steps.append(time.perf_counter() - start)
            medians[layout].append(statistics.median(steps[4:]))
    for layout, values in medians.items():
        name = type(steppers[layout]).__name__
        print(f"{layout:13s} {name:17s} decode step {statistics.median(values) * 1e6:7.1f} us")
    ratio = statistics.median(medians["shared_right"]) / statistics.median(medians["shared"])
    print(f"shared_right / shared: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
