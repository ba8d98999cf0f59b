"""The engines the latency benchmark compares, behind one small interface.

Each engine runs in its own worker process (see worker.py), so importing one
never costs another memory or threads. Every engine gets the same token ids and the same
sampling settings and must produce exactly `new_tokens` tokens per sequence (EOS is
suppressed), so the work compared is identical; timings include sampling, because a user
pays for it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Protocol

from benchmarks.latency.spec import SAMPLING, Timing


class Engine(Protocol):
    name: str

    def run(self, prompts: list[list[int]], new_tokens: int, greedy: bool = False) -> Timing:
        """Continue every prompt (equal lengths, no padding) by exactly `new_tokens` tokens."""
        ...

    def info(self) -> dict[str, Any]:
        """What configuration was measured (threads, providers, attention kernel...)."""
        ...


# --- Hugging Face transformers, PyTorch eager --------------------------------------------


class HFEngine:
    """`model.generate` in PyTorch eager mode (no compile, default attention), fp32."""

    name = "hf"

    def __init__(self, folder: str, threads: int) -> None:
        import torch
        import transformers

        torch.set_num_threads(threads)
        self._torch = torch
        self._threads = threads
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32
        ).eval()
        self._eos = self.model.config.eos_token_id

    def run(self, prompts: list[list[int]], new_tokens: int, greedy: bool = False) -> Timing:
        torch = self._torch
        ids = torch.tensor(prompts, dtype=torch.long)  # [B, S]
        streamer = _FirstTokenClock()
        if greedy:
            sampling: dict[str, Any] = {"do_sample": False}
        else:
            sampling = {"do_sample": True, **SAMPLING}
        with torch.inference_mode():
            start = time.perf_counter()
            out = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=self._eos,
                streamer=streamer,
                **sampling,
            )
            total = time.perf_counter() - start
        return Timing(streamer.first - start, total, out[:, ids.shape[1] :].tolist())

    def info(self) -> dict[str, Any]:
        return {
            "threads": self._torch.get_num_threads(),
            "attn_implementation": self.model.config._attn_implementation,
            "dtype": "float32",
        }


class _FirstTokenClock:
    """A `generate` streamer that only notes when the first new token arrives.

    `generate` calls put() with the prompt first, then once per step with the new tokens.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.first = float("nan")

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


# --- CTranslate2 ---------------------------------------------------------------------------


class CT2Engine:
    """CTranslate2's `Generator.generate_batch`, prompt forwarded at once (its fast path)."""

    def __init__(self, folder: str, threads: int, compute_type: str) -> None:
        import ctranslate2

        self.name = f"ct2-{'int8' if 'int8' in compute_type else 'fp32'}"
        self._compute_type = compute_type
        self._threads = threads
        self.generator = ctranslate2.Generator(
            folder, device="cpu", compute_type=compute_type, intra_threads=threads, inter_threads=1
        )
        vocabulary = json.loads((Path(folder) / "vocabulary.json").read_text())
        self._token = list(vocabulary)  # id -> token string, CTranslate2 takes strings

    def run(self, prompts: list[list[int]], new_tokens: int, greedy: bool = False) -> Timing:
        first: list[float] = []

        def on_step(step: Any) -> bool:
            if not first:
                first.append(time.perf_counter())
            return False  # keep going

        if greedy:
            sampling: dict[str, Any] = {"sampling_topk": 1}
        else:
            sampling = {
                "sampling_topk": SAMPLING["top_k"],
                "sampling_topp": SAMPLING["top_p"],
                "sampling_temperature": SAMPLING["temperature"],
                "repetition_penalty": SAMPLING["repetition_penalty"],
            }
        start = time.perf_counter()
        results = self.generator.generate_batch(
            [[self._token[i] for i in p] for p in prompts],
            max_length=new_tokens,
            min_length=new_tokens,
            include_prompt_in_result=False,
            callback=on_step,
            **sampling,
        )
        total = time.perf_counter() - start
        return Timing(first[0] - start, total, [r.sequences_ids[0] for r in results])

    def info(self) -> dict[str, Any]:
        return {"threads": self._threads, "compute_type": self._compute_type}


# --- ours ---------------------------------------------------------------------------------


class FSTEngine:
    """Our runtime (`fst.runtime.Generator`) on an exported bundle.

    The runtime takes text prompts: the worker passes texts that encode to exactly the
    token ids the other engines get (checked here). The runtime's `on_model_call` hook
    times every graph run (input binding + ONNX Runtime run + logits copy). That gives the time to the first token (the first decode step
    starts right after the first token is sampled) and the per-step Python overhead: the
    share of the decode phase spent outside the stepper (sampling, detokenising, stop
    checks, bookkeeping).
    """

    def __init__(self, folder: str, threads: int, variant: str) -> None:
        from fst.runtime import Generator

        self.name = f"fst-{variant}"
        self._threads = threads
        self._spinning = os.environ.get("FST_BENCH_ORT_SPINNING", "1")
        _set_ort_spinning(self._spinning)
        self.generator = Generator.from_bundle(folder, threads=threads, huge_pages=True)
        self.clock = _StepClock()
        self.generator.on_model_call = self.clock.record
        self.texts: dict[tuple[int, ...], str] = {}
        self._stats: dict[str, float] = {}

    def add_texts(self, ids_and_texts: list[tuple[list[int], str]]) -> None:
        """Register the text of each id prompt; fails if our tokenizer disagrees."""
        for ids, text in ids_and_texts:
            encoded = self.generator.encode_prompt(text)
            if encoded != ids:
                raise ValueError(f"{self.name}: prompt text encodes to other ids than given")
            self.texts[tuple(ids)] = text

    def run(self, prompts: list[list[int]], new_tokens: int, greedy: bool = False) -> Timing:
        from fst.runtime import GenerationParams, GenerationRequest

        if greedy:
            params = GenerationParams(
                max_new_tokens=new_tokens, min_new_tokens=new_tokens, temperature=0.0
            )
        else:
            params = GenerationParams(
                max_new_tokens=new_tokens, min_new_tokens=new_tokens, seed=0, **SAMPLING
            )
        requests = [GenerationRequest(self.texts[tuple(p)], params) for p in prompts]
        calls = self.clock.calls
        calls.clear()
        start = time.perf_counter()
        results = self.generator.run(requests)
        total = time.perf_counter() - start
        # calls[0] is the prefill; calls[1] the first decode step, after the first sample.
        first = calls[1][0] - start if len(calls) > 1 else total
        decode_phase, steps = total - first, len(calls) - 1
        in_steps = sum(end - begin for begin, end in calls[1:])
        self._stats = {
            "stepper_ms": in_steps / steps * 1e3 if steps else float("nan"),
            "python_overhead_share": 1 - in_steps / decode_phase if steps else float("nan"),
        }
        return Timing(first, total, [c.token_ids for per in results for c in per])

    def last_stats(self) -> dict[str, float]:
        """Of the last run: mean time of a stepper decode call, and the share of the decode
        phase spent outside the stepper (sampling, detokenising, bookkeeping)."""
        return dict(self._stats)

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "threads": self._threads,
            "provider": self.generator.provider,
            "ort_allow_spinning": self._spinning,
            "runtime_source": runtime_fingerprint(),
        }
        graph = self.generator.manifest.graph
        info.update(variant=graph.variant, optimized=graph.optimized, logits=graph.logits)
        return info


def _set_ort_spinning(value: str) -> None:
    """session.intra_op.allow_spinning for the sessions this worker creates (run.py
    --wait): the runtime's own setting is ONNX Runtime's default, spinning."""
    import fst.runtime.session as session_module

    base = session_module.session_options

    def options(threads: int | None = None) -> Any:
        opts = base(threads)
        opts.add_session_config_entry("session.intra_op.allow_spinning", value)
        return opts

    session_module.session_options = options


class _StepClock:
    """Records (start, end) of every model call the runtime reports."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, float]] = []

    def record(self, kind: str, batch_size: int, start: float, end: float) -> None:
        self.calls.append((start, end))


def runtime_fingerprint() -> str:
    """A short digest of runtime/*.py (the sampler included): the runtime is still being
    optimised, and rounds measured on different code must not be mixed unnoticed."""
    import hashlib

    import fst.runtime

    digest = hashlib.sha256()
    files = sorted(Path(fst.runtime.__file__).parent.glob("*.py"))
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def make_engine(name: str, folder: str, threads: int) -> Engine:
    if name == "hf":
        return HFEngine(folder, threads)
    if name in ("ct2-fp32", "ct2-int8"):
        return CT2Engine(folder, threads, "float32" if name == "ct2-fp32" else "int8")
    if name in ("fst-fp32", "fst-int8", "fst-int4"):
        return FSTEngine(folder, threads, name.removeprefix("fst-"))
    if name.startswith("llama-"):
        from benchmarks.latency.engines_llamacpp import LlamaCppEngine

        return LlamaCppEngine(folder, threads, name)
    raise ValueError(f"unknown engine {name!r}")
