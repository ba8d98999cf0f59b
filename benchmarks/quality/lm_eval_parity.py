"""lm-evaluation-harness against fst-serve and against its own `hf` backend, on a real model.

    python -m benchmarks.quality.lm_eval_parity --gguf SmolLM2-135M-Instruct.Q4_1.gguf

The GGUF file is dequantized to an fp32 Hugging Face folder (fst.training.gguf_import, as
fst-export reads it) and exported to an fp32 `--logits all --optimize` bundle; fst-serve
serves it on 127.0.0.1 and lm-eval scores the local tasks of tests/data/lm_eval (a
loglikelihood_rolling task and a multiple-choice one; nothing is downloaded) through its
`local-completions` model (remote tokenizer, token-id prompts, echo + logprobs), then
through its `hf` model on the folder. Reports both backends' metrics, the largest relative
difference of a request's log-likelihood, and each run's wall time.
Writes benchmarks/results/NAME.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import threading
import time
from pathlib import Path

from benchmarks import common

ROOT = Path(__file__).resolve().parents[2]
TASKS_DIR = ROOT / "tests" / "data" / "lm_eval"
TASKS = ["fst_tiny_rolling", "fst_tiny_choice"]


def prepare(gguf: Path, work: Path) -> tuple[Path, Path]:
    """(HF folder, bundle) made from the GGUF file once."""
    from fst.export.exporter import export_bundle
    from fst.training.gguf_import import load_gguf

    hf, bundle = work / "hf", work / "bundle-fp32-all"
    if not (hf / "config.json").is_file():
        loaded = load_gguf(gguf)
        loaded.model.save_pretrained(hf)
        loaded.tokenizer.save_pretrained(hf)
    if not (bundle / "fst_bundle.json").is_file():
        export_bundle(bundle, model_path=str(gguf), logits="all", optimize=True, progress=False)
    return hf, bundle


def evaluate(model: str, model_args: str) -> tuple[dict, float]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    start = time.perf_counter()
    results = lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=TASKS,
        task_manager=TaskManager(include_path=str(TASKS_DIR)),
        batch_size=1,
        device="cpu",
        log_samples=True,
    )
    return results, time.perf_counter() - start


def serve(bundle: Path, threads: int):
    """fst-serve (the app and uvicorn server fst-serve builds) in a thread; (server, base)."""
    import httpx

    from fst.serving.app import create_app
    from fst.serving.server import build_server
    from fst.serving.settings import ServingSettings

    app = create_app(ServingSettings(bundle=bundle, threads=threads, model_name="model"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = build_server(app, app.state.serving.settings)
    threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True).start()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return server, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("fst-serve did not become ready in 300 s")


def loglikelihoods(results: dict, task: str) -> list[float]:
    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    lls = [r[0] for s in samples for r in s["resps"]]
    return [float(ll[0] if isinstance(ll, (tuple, list)) else ll) for ll in lls]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__.split("\n")[0]
    )
    p.add_argument("--gguf", type=Path, required=True)
    p.add_argument("--work", type=Path, default=Path("/tmp/fst-bench/lm-eval-parity"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parents[1] / "results")
    p.add_argument("--out-name", default="lm-eval-parity-smollm2-135m-instruct-fst-serve-hf")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.chdir(TASKS_DIR)  # the task files name their data relative to here

    machine = common.machine_description()
    hf, bundle = prepare(args.gguf, args.work)
    server, base = serve(bundle, args.threads)
    try:
        served, served_s = evaluate(
            "local-completions",
            f"model=model,base_url={base}/v1/completions,tokenizer_backend=remote,"
            f"max_length={args.max_length},num_concurrent=1,max_retries=1",
        )
    finally:
        server.should_exit = True
    reference, reference_s = evaluate(
        "hf", f"pretrained={hf},max_length={args.max_length},dtype=float32"
    )
    tasks = {}
    for task in TASKS:
        ours, theirs = served["results"][task], reference["results"][task]
        metrics = [k for k in theirs if k.endswith(",none") and "stderr" not in k]
        a, b = loglikelihoods(served, task), loglikelihoods(reference, task)
        tasks[task] = {
            "metrics": {m: {"fst_serve": ours[m], "hf": theirs[m]} for m in metrics},
            "requests": len(a),
            "max_rel_diff_loglikelihood": max(
                abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b, strict=True)
            ),
        }
    report = {
        "command": "python -m benchmarks.quality.lm_eval_parity " + " ".join(argv or sys.argv[1:]),
        "machine": machine,
        "load_average_end": common.load_average(),
        "gguf": str(args.gguf),
        "bundle": "fp32, --logits all --optimize",
        "max_length": args.max_length,
        "wall_s": {"fst_serve": served_s, "hf": reference_s},
        "tasks": tasks,
    }
    common.write_report(args.out_dir, args.out_name, report, markdown(report))
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# lm-eval: fst-serve (local-completions) vs its hf backend",
        "",
        f"Command: `{report['command']}`  ",
        f"Model: `{Path(report['gguf']).name}` dequantized to fp32; bundle {report['bundle']}; "
        f"max_length {report['max_length']}; tasks from tests/data/lm_eval.  ",
        f"Machine: {m['cpu']['model']}, {m['cpu']['logical_cores']} cores, load average "
        f"{m['load_average']} at start, {report['load_average_end']} at end.  ",
        f"Wall time: fst-serve {report['wall_s']['fst_serve']:.0f} s, hf "
        f"{report['wall_s']['hf']:.0f} s (includes loading).",
        "",
        "| task | metric | fst-serve | hf | relative difference |",
        "|---|---|---|---|---|",
    ]
    for task, t in report["tasks"].items():
        for metric, v in t["metrics"].items():
            a, b = v["fst_serve"], v["hf"]
            rel = abs(a - b) / abs(b) if b else abs(a - b)
            lines.append(f"| {task} | {metric} | {a:.6g} | {b:.6g} | {rel:.1e} |")
        lines.append(
            f"| {task} | largest relative difference of one request's log-likelihood "
            f"({t['requests']} requests) | | | {t['max_rel_diff_loglikelihood']:.1e} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
