"""llama.cpp as a latency-benchmark engine: GGUF conversion and a batch-1 generate loop.

Optional, never needed by the tests or CI. It needs two things that the registry provides
only as source:

- the `llama_cpp` bindings (`pip install llama-cpp-python`, which compiles llama.cpp with
  `-march=native`; see benchmarks/README.md for how long that takes);
- llama.cpp's `convert_hf_to_gguf.py` with its `gguf-py`, e.g. the copy vendored in that
  sdist (`pip download --no-binary :all: --no-deps llama-cpp-python`, unpacked:
  `llama_cpp_python-*/vendor/llama.cpp`), given as `--llamacpp-src` or `LLAMACPP_SRC`.

The same Hugging Face folder as the other engines is converted to f32 and Q8_0 GGUFs by
`convert_hf_to_gguf.py`; Q4_0 is quantized from the f32 GGUF by llama.cpp's own
`llama_model_quantize` (the converter has no Q4_0 output), with its default recipe.

The engine decodes with the bindings' `Llama.generate` (llama.cpp's sampler chain: repeat
penalty, top-k, top-p, temperature), one token per `llama_decode` call: the same work as a
chat request to llama-server. It runs batch 1 only (`max_batch = 1`); llama.cpp's batched
decoding of independent sequences is not exposed by the high-level bindings.

llama.cpp's CPU threads meet at OpenMP barriers (`#pragma omp barrier` in ggml-cpu), which
by default spin. On a shared, oversubscribed machine a spinning thread burns the time slice
its peer needs: decode was 4.3-4.6x slower than with OMP_WAIT_POLICY=PASSIVE at load
average 14 on 2 cores (ONNX Runtime's spinning cost us 1.6x the same way). run.py
therefore runs both with sleeping threads unless told `--wait spin` (which may win on an
idle machine; not measured here, the machine was never idle).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.latency.spec import SAMPLING, Timing

# engine name -> (how the GGUF is made, file name)
VARIANTS = {"llama-f32": "f32", "llama-q8_0": "q8_0", "llama-q4_0": "q4_0"}
# The model's own GGUF file as distributed (a model built from one: `--gguf`).
VARIANTS["llama-q4_1"] = "q4_1"
CONVERT_TIMEOUT_S = 1800


def available() -> str | None:
    """None when the bindings import, else why not (one line, with the fix)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as e:
        return f"llama_cpp not importable ({e}): pip install llama-cpp-python"
    except OSError as e:  # the bindings are installed but libllama is not where they look
        return f"llama_cpp has no libllama ({e}): set LLAMA_CPP_LIB_PATH (benchmarks/README.md)"
    return None


def find_converter(src: Path | None) -> Path:
    """convert_hf_to_gguf.py under a llama.cpp source tree, or a clear error."""
    if src is None:
        raise ValueError(
            "llama.cpp engines need a llama.cpp source tree for convert_hf_to_gguf.py: "
            "--llamacpp-src DIR or LLAMACPP_SRC (e.g. the sdist's vendor/llama.cpp)"
        )
    script = src / "convert_hf_to_gguf.py"
    if not script.is_file() or not (src / "gguf-py").is_dir():
        raise ValueError(f"--llamacpp-src {src}: no convert_hf_to_gguf.py and gguf-py there")
    return script


def convert(
    hf: Path,
    out_dir: Path,
    engines: list[str],
    src: Path | None,
    original: Path | None = None,
    quantize_bin: Path | None = None,
) -> dict[str, Path]:
    """GGUFs for the wanted llama-* engines, made once per HF folder (cached by name).
    `original`: the GGUF file the model came from, run as is by llama-q4_1. `quantize_bin`:
    llama.cpp's `llama-quantize` program, used for Q4_0 instead of the Python bindings."""
    wanted = [e for e in engines if e in VARIANTS]
    if "llama-q4_1" in wanted:
        wanted.remove("llama-q4_1")
        if original is not None:  # only models made from a GGUF file have one
            return {"llama-q4_1": Path(original), **convert(hf, out_dir, wanted, src)}
    if not wanted:
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {e: out_dir / f"model-{VARIANTS[e]}.gguf" for e in wanted}
    f32 = out_dir / "model-f32.gguf"
    needs_f32 = any(not paths[e].is_file() for e in wanted if VARIANTS[e] in ("f32", "q4_0"))
    if needs_f32 and not f32.is_file():
        _convert_hf(hf, f32, "f32", find_converter(src))
    if "llama-q8_0" in paths and not paths["llama-q8_0"].is_file():
        _convert_hf(hf, paths["llama-q8_0"], "q8_0", find_converter(src))
    if "llama-q4_0" in paths and not paths["llama-q4_0"].is_file():
        if quantize_bin is not None:
            _quantize_program(quantize_bin, f32, paths["llama-q4_0"], "Q4_0")
        else:
            _quantize(f32, paths["llama-q4_0"], "LLAMA_FTYPE_MOSTLY_Q4_0")
    return paths


def _convert_hf(hf: Path, out: Path, outtype: str, script: Path) -> None:
    """convert_hf_to_gguf.py in its own process, writing to a temp name then renaming.

    transformers 5 no longer writes GPT-2's legacy `n_ctx` into config.json, which the
    converter reads: it gets a staging folder whose config adds n_ctx = n_positions, with
    the weights and tokenizer files linked, not copied.
    """
    with tempfile.TemporaryDirectory(prefix="fst-gguf-") as tmp:
        stage = Path(tmp)
        for f in hf.iterdir():
            if f.name != "config.json":
                (stage / f.name).symlink_to(f.resolve())
        config = json.loads((hf / "config.json").read_text())
        if "n_positions" in config:
            config.setdefault("n_ctx", config["n_positions"])
        (stage / "config.json").write_text(json.dumps(config))
        partial = out.with_suffix(".partial")
        env = dict(os.environ, PYTHONPATH=str(script.parent / "gguf-py"))
        cmd = [sys.executable, str(script), str(stage), "--outtype", outtype]
        proc = subprocess.run(
            [*cmd, "--outfile", str(partial)],
            env=env,
            capture_output=True,
            text=True,
            timeout=CONVERT_TIMEOUT_S,
        )
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise RuntimeError(f"convert_hf_to_gguf.py --outtype {outtype} failed:\n{tail}")
        os.replace(partial, out)


def _quantize(src: Path, out: Path, ftype: str) -> None:
    """llama.cpp's own quantizer (`llama_model_quantize`), default recipe, in a subprocess
    (the bindings' library stays out of the benchmark's main process)."""
    code = (
        "import sys, llama_cpp as l\n"
        "p = l.llama_model_quantize_default_params()\n"
        f"p.ftype = l.{ftype}\n"
        "sys.exit(l.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))\n"
    )
    partial = out.with_suffix(".partial")
    proc = subprocess.run(
        [sys.executable, "-c", code, str(src), str(partial)],
        capture_output=True,
        text=True,
        timeout=CONVERT_TIMEOUT_S,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"llama_model_quantize {ftype} failed: {proc.stderr.strip()[-300:]}")
    os.replace(partial, out)


def _quantize_program(program: Path, src: Path, out: Path, ftype: str) -> None:
    """The same default recipe through the `llama-quantize` program (for a llama.cpp build
    without the Python bindings); its shared libraries sit beside it."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(Path(program).resolve().parent), env.get("LD_LIBRARY_PATH")) if p
    )
    partial = out.with_suffix(".partial")
    proc = subprocess.run(
        [str(program), str(src), str(partial), ftype],
        env=env,
        capture_output=True,
        text=True,
        timeout=CONVERT_TIMEOUT_S,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{program} {ftype} failed: {proc.stderr.strip()[-300:]}")
    os.replace(partial, out)


class LlamaCppEngine:
    """llama.cpp through `llama_cpp.Llama`, batch 1, `threads` threads for both phases."""

    max_batch = 1

    def __init__(self, gguf: str, threads: int, name: str, n_ctx: int = 2048) -> None:
        import llama_cpp

        self.name = name
        self._threads = threads
        self._llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(
            model_path=gguf,
            n_ctx=n_ctx,  # past 1000 + new tokens fit; the 512-token prompt is one batch
            n_batch=512,
            n_threads=threads,
            n_threads_batch=threads,
            seed=0,
            verbose=False,
        )

    def run(self, prompts: list[list[int]], new_tokens: int, greedy: bool = False) -> Timing:
        if len(prompts) != 1:
            raise ValueError(f"{self.name}: batch 1 only, got {len(prompts)} prompts")
        # n_tokens = 0: generate() skips its prompt-prefix reuse and eval() drops the whole
        # KV cache, so every call pays its full prefill like the other engines.
        self.llm.reset()
        self.llm.set_seed(0)
        if greedy:
            sampling: dict[str, Any] = {"temp": 0.0}
        else:
            sampling = {
                "top_k": SAMPLING["top_k"],
                "top_p": SAMPLING["top_p"],
                "temp": SAMPLING["temperature"],
                "repeat_penalty": SAMPLING["repetition_penalty"],
                "min_p": 0.0,  # llama.cpp's default 0.05 is a filter the others lack
            }
        tokens: list[int] = []
        start = time.perf_counter()
        first = start
        # generate() never stops by itself (EOS included): exactly new_tokens come out.
        for token in self.llm.generate(prompts[0], **sampling):
            tokens.append(token)
            if len(tokens) == 1:
                first = time.perf_counter()
            if len(tokens) == new_tokens:
                break
        total = time.perf_counter() - start
        return Timing(first - start, total, [tokens])

    def info(self) -> dict[str, Any]:
        lib = self._llama_cpp
        return {
            "threads": self._threads,
            "llama_cpp_python": lib.__version__,
            "system_info": lib.llama_print_system_info().decode().strip(),
            "gguf_mb": round(Path(self.llm.model_path).stat().st_size / 1e6, 1),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        }
