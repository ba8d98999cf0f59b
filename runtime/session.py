"""ONNX Runtime session creation: provider choice, threads, TensorRT / CUDA options.

Torch-free (onnxruntime only). The bundle is provider-neutral; the provider is chosen here,
at load time, from an ordered preference list:

- `providers=None`: TensorRT → CUDA → CPU, keeping only those this onnxruntime build
  offers (`ort.get_available_providers()`); CPU is always there.
- an explicit list (names or the short aliases "tensorrt"/"trt", "cuda", "cpu"): every
  provider in it must be available, else `ProviderUnavailableError`. ONNX Runtime may
  also drop a provider at session creation (e.g. CUDA libraries missing): when the
  provider that actually runs is not the first one asked for explicitly, that is an error
  too, never a silent fall back to CPU.

TensorRT and CUDA code paths follow the ONNX Runtime execution provider docs
(onnxruntime.ai/docs/execution-providers/TensorRT-ExecutionProvider.html); UNTESTED HERE:
this machine has no GPU and a CPU-only onnxruntime.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort

from fst.core.bundle import BundleError
from fst.core.contract import GraphContract
from fst.runtime.huge_pages import collapse_resident_memory, mapped_ranges

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEFAULT_PROVIDERS = (TENSORRT, CUDA, CPU)
PROVIDER_ALIASES = {"tensorrt": TENSORRT, "trt": TENSORRT, "cuda": CUDA, "cpu": CPU}


class ProviderUnavailableError(RuntimeError):
    """An execution provider was asked for explicitly and cannot run here."""


def resolve_provider(name: str) -> str:
    """Full ONNX Runtime provider name for a name or alias ("cuda" -> CUDAExecutionProvider)."""
    return PROVIDER_ALIASES.get(name.strip().lower(), name.strip())


def default_threads() -> int:
    """CPUs this process may run on (the affinity mask, so containers limits count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def choose_providers(providers: Sequence[str] | None = None) -> list[str]:
    """The ordered provider list to ask ONNX Runtime for (see the module docstring)."""
    available = ort.get_available_providers()
    if providers is None:
        return [p for p in DEFAULT_PROVIDERS if p in available]
    if isinstance(providers, str):
        providers = [providers]
    wanted = [resolve_provider(p) for p in providers]
    if not wanted:
        raise ProviderUnavailableError("no execution provider given (e.g. cpu, cuda, tensorrt)")
    missing = [p for p in wanted if p not in available]
    if missing:
        raise ProviderUnavailableError(
            f"execution provider(s) {', '.join(missing)} not available in this onnxruntime "
            f"build (available: {', '.join(available)}); for CUDA/TensorRT install "
            "onnxruntime-gpu (the [gpu] extra) with matching CUDA/cuDNN/TensorRT libraries"
        )
    return wanted


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Latency-oriented CPU settings: all intra-op threads on one request, no inter-op."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def create_session(
    model_path: str | Path,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    trt_options: Mapping[str, Any] | None = None,
    cuda_options: Mapping[str, Any] | None = None,
    huge_pages: bool = False,
) -> tuple[ort.InferenceSession, str]:
    """An InferenceSession and the name of the provider that actually runs it.

    `huge_pages=True` (what fst-generate and fst-serve pass): on the CPU provider, the
    memory mapped while the session was built (its weights) then moves into huge pages
    when the OS allows it (see huge_pages.py). Off by default: a library call should not
    advise memory of the program that embeds it.
    """
    explicit = providers is not None
    before = mapped_ranges() if huge_pages else []
    chosen = choose_providers(providers)
    provider_options = [_options_for(p, trt_options, cuda_options) for p in chosen]
    try:
        session = ort.InferenceSession(
            str(model_path),
            sess_options=session_options(threads),
            providers=chosen,
            provider_options=provider_options,
        )
    except Exception as e:
        if not _is_model_error(e):
            raise
        raise BundleError(
            f"{model_path}: ONNX Runtime cannot load this model ({_ort_message(e)}); "
            "re-export the bundle"
        ) from e
    used = session.get_providers()[0]
    if explicit and used != chosen[0]:
        raise ProviderUnavailableError(
            f"{chosen[0]} was requested but ONNX Runtime fell back to {used} "
            "(see the onnxruntime warnings above for the missing library)"
        )
    log.info("ONNX Runtime provider: %s (asked for: %s)", used, ", ".join(chosen))
    if huge_pages and used == CPU:
        collapse_resident_memory(since=before)
    return session, used


# ONNX Runtime's errors for a file that is not a usable model (its exception classes have
# no common base but Exception; EPFail & co. are provider problems, not the file's).
_MODEL_ERRORS = ("InvalidProtobuf", "InvalidGraph", "NoModel", "NoSuchFile", "InvalidArgument")


def _is_model_error(error: Exception) -> bool:
    if isinstance(error, UnicodeDecodeError):  # a corrupted name or attribute string
        return True
    return type(error).__module__.startswith("onnxruntime") and (
        type(error).__name__ in _MODEL_ERRORS
    )


def _ort_message(error: Exception) -> str:
    """ONNX Runtime's message without its '[ONNXRuntimeError] : 7 : CODE : ' prefix."""
    return str(error).rsplit(" : ", 1)[-1].strip()


def _options_for(
    provider: str,
    trt_options: Mapping[str, Any] | None,
    cuda_options: Mapping[str, Any] | None,
) -> dict[str, str]:
    if provider == TENSORRT:
        return _stringify(trt_options or {})
    if provider == CUDA:
        return _stringify(cuda_options or {})
    return {}


def _stringify(options: Mapping[str, Any]) -> dict[str, str]:
    # Provider options are strings in the Python API; booleans are "True"/"False".
    return {k: str(v) for k, v in options.items()}


def tensorrt_options(
    *,
    contract: GraphContract,
    max_positions: int,
    fp16: bool = False,
    engine_cache_dir: str | Path | None = None,
    max_batch: int = 8,
    opt_batch: int = 1,
    opt_past: int = 128,
) -> dict[str, str]:
    """TensorRT provider options with an optimisation profile for the contract's shapes.

    One profile covers prefill (seq up to max_positions, past 0) and decode (seq 1, past up
    to max_positions - 1); it is tuned (opt) for decode of `opt_batch` sequences with
    `opt_past` tokens of context. Building an engine takes minutes: give an engine cache
    folder so it is built once. UNTESTED HERE (no GPU).
    """
    opt_past = min(opt_past, max_positions - 1)
    shapes = {
        "min": _profile(contract, 1, seq=1, past=0, total=1),
        "opt": _profile(contract, opt_batch, seq=1, past=opt_past, total=opt_past + 1),
        # Per input, the largest it ever gets: seq and total at a full prefill, past at the
        # last decode step.
        "max": _profile(
            contract, max_batch, seq=max_positions, past=max_positions - 1, total=max_positions
        ),
    }
    options: dict[str, Any] = {
        "trt_fp16_enable": fp16,
        "trt_profile_min_shapes": shapes["min"],
        "trt_profile_opt_shapes": shapes["opt"],
        "trt_profile_max_shapes": shapes["max"],
    }
    if engine_cache_dir is not None:
        Path(engine_cache_dir).mkdir(parents=True, exist_ok=True)
        options["trt_engine_cache_enable"] = True
        options["trt_engine_cache_path"] = str(engine_cache_dir)
    return _stringify(options)


def _profile(contract: GraphContract, batch: int, *, seq: int, past: int, total: int) -> str:
    """'name:dim1xdim2,...' for every input (the TensorRT EP's profile syntax)."""
    sizes = {"batch": batch, "seq": seq, "past_seq": past, "total_seq": total}
    sizes["kv_capacity"] = total
    shapes = contract.input_shapes(sizes)
    return ",".join(f"{n}:{'x'.join(str(d) for d in shape)}" for n, shape in shapes.items())
