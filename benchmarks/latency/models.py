"""The models run.py measures, and everything each engine loads: built from configs
(random weights, fixed seed; nothing is downloaded), exported with our exporter, converted for
CTranslate2 and llama.cpp, plus the prompts every engine sees. Runs in the main process
(torch allowed here; the workers never import this module's heavy parts).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.latency import engines_llamacpp
from benchmarks.latency.spec import Workload

log = logging.getLogger("latency")

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BPE = REPO / "fst" / "core" / "assets" / "gpt2_bpe"
DEFAULT_CORPUS = REPO / "data" / "documents" / "nietzsche" / "train.documents"
DEFAULT_OUT = REPO / "benchmarks" / "results"
DEFAULT_CACHE = Path(os.environ.get("FST_BENCH_CACHE", "/tmp/fst-bench"))

# GPT2Config overrides; everything else is GPT-2's default (vocab 50257, 1024 positions).
# {"preset": name}: fst's Llama-shaped training preset of that name (fst.training.model.PRESETS).
MODELS: dict[str, dict[str, Any]] = {
    "gpt2-small": {},
    "distilgpt2": {"n_layer": 6},
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 64},
    "smollm2-135m": {"preset": "smollm2-135m"},
    # The real SmolLM2-135M-Instruct from its GGUF file (--gguf), dequantized to fp32: every
    # engine runs its trained weights; llama.cpp also runs the GGUF file itself (llama-q4_1).
    "smollm2-135m-instruct": {"gguf": True},
}
# SmolLM2's vocabulary size: its random-weight stand-in gets GPT-2's BPE cut to this many
# tokens (the first 49152 ids and the merges that make them; nothing is downloaded).
SMOLLM2_VOCAB = 49152


@dataclass
class Artifacts:
    """Where one model's engines load from, and what its weights weigh."""

    name: str
    config: dict[str, Any]
    params: int
    weight_params: int  # read once per decode step: all but the position embeddings
    dims: dict[str, int]  # n_layer, n_embd, vocab_size: for the prefill FLOP count
    paths: dict[str, str] = field(default_factory=dict)  # engine -> folder
    bundles: dict[str, Any] = field(default_factory=dict)  # engine -> manifest summary


def build_hf_folder(name: str, cache: Path, bpe_dir: Path, gguf: Path | None = None) -> Path:
    """A random-weight GPT-2 (or Llama preset) saved as a Hugging Face folder, or the GGUF
    file's model dequantized to fp32 for the models that name one."""
    if MODELS[name].get("gguf"):
        return gguf_hf_folder(name, cache, gguf)
    folder = cache / name / "hf"
    stamp = {"config": MODELS[name], "seed": 0, "tokenizer": 2}
    marker = folder / "fst_bench.json"
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return folder
    import torch
    import transformers

    log.info("building %s from config", name)
    torch.manual_seed(0)
    if "preset" in MODELS[name]:
        from fst.training.model import PRESETS

        settings = dict(PRESETS[MODELS[name]["preset"]])
        config = transformers.AutoConfig.for_model(
            settings.pop("model_type"), **settings, vocab_size=SMOLLM2_VOCAB,
            bos_token_id=SMOLLM2_VOCAB - 1, eos_token_id=SMOLLM2_VOCAB - 1,
        )  # fmt: skip
        model = transformers.AutoModelForCausalLM.from_config(config).eval()
        folder.mkdir(parents=True, exist_ok=True)
        write_cut_bpe(bpe_dir, folder / "tokenizer.json", SMOLLM2_VOCAB)
    else:
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**MODELS[name])).eval()
        tokenizer = transformers.GPT2TokenizerFast(
            vocab=str(bpe_dir / "vocab.json"), merges=str(bpe_dir / "merges.txt")
        )
        tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    marker.write_text(json.dumps(stamp))
    return folder


def gguf_hf_folder(name: str, cache: Path, gguf: Path | None) -> Path:
    """The GGUF file's model and tokenizer as a Hugging Face folder (fst.training.gguf_import),
    so CTranslate2, llama.cpp's converter and Hugging Face read the same fp32 weights."""
    if gguf is None or not Path(gguf).is_file():
        raise ValueError(f"--models {name} needs --gguf FILE (got {gguf})")
    folder = cache / name / "hf"
    stamp = {"gguf": str(Path(gguf).resolve()), "bytes": Path(gguf).stat().st_size}
    marker = folder / "fst_bench.json"
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return folder
    from fst.training.gguf_import import load_gguf

    log.info("dequantizing %s to a Hugging Face folder", gguf)
    loaded = load_gguf(Path(gguf))
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    marker.write_text(json.dumps(stamp))
    return folder


def write_cut_bpe(bpe_dir: Path, path: Path, size: int) -> None:
    """GPT-2's byte-level BPE keeping ids < size (GPT-2's ids follow its merge order), with
    <|endoftext|> as id 0's stand-in special token; a tokenizer.json at `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = json.loads((bpe_dir / "vocab.json").read_text())
    kept = {token: i for token, i in vocab.items() if i < size - 1}
    lines = (bpe_dir / "merges.txt").read_text().splitlines()[1:]
    merges = [tuple(m.split()) for m in lines if "".join(m.split()) in kept][: size - 257]
    tokenizer = Tokenizer(models.BPE(vocab=kept, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(["<|endoftext|>"])  # id size - 1
    tokenizer.save(str(path))
    # Its BOS/EOS, as a model folder declares them (CTranslate2's converter needs them).
    config = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
    (path.parent / "tokenizer_config.json").write_text(json.dumps(config))


def count_params(folder: Path) -> tuple[int, int, dict[str, int]]:
    """All parameters (tied ones once), those a decode step reads (all but wpe), dims."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    total = sum(p.numel() for p in model.parameters())
    c = model.config
    dims = {"n_layer": c.num_hidden_layers, "n_embd": c.hidden_size, "vocab_size": c.vocab_size}
    positions = getattr(getattr(model, "transformer", None), "wpe", None)  # GPT-2 only
    return total, total - (positions.weight.numel() if positions is not None else 0), dims


def prefill_gflop(art: Artifacts, length: int) -> float:
    """FLOPs of a batch-1 prefill with logits for the last position only.

    2 per weight per token for the blocks, causal attention scores and mixing
    (2 × 2 × L²/2 × d per layer), and the LM head once.
    """
    d, layers, vocab = art.dims["n_embd"], art.dims["n_layer"], art.dims["vocab_size"]
    blocks = art.weight_params - vocab * d  # minus the tied embedding / LM head
    return (2 * blocks * length + 2 * layers * length**2 * d + 2 * vocab * d) / 1e9


FST_ENGINES = ("fst-fp32", "fst-int8", "fst-int4")  # ours, in the order they are made


def export_bundles(hf: Path, name: str, cache: Path, args: argparse.Namespace) -> dict[str, Path]:
    """Our fp32, int8 and int4 bundles, re-made when the options or the exporter changed.

    fp32 and int8 come from `export_bundle`. int4 is the fp32 bundle quantised with the
    exporter's default scheme without its gate (int4_bundle.py: random weights fail the gate
    at schemes a trained model passes, and speed does not depend on the values), except for
    a model read from a GGUF file: every bundle is exported from that file, and int4 keeps the
    file's own blocks (fst.export.gguf_blocks) and passes the gate like the others."""
    wanted = [e for e in FST_ENGINES if e in args.engines]
    if not wanted:
        return {}
    from benchmarks.latency.int4_bundle import quantized_bundle
    from fst.core.bundle import BundleManifest
    from fst.export.exporter import export_bundle
    from fst.export.quantize_int4 import DEFAULT_BLOCK_SIZE

    exporter = source_digest(Path(export_bundle.__code__.co_filename).parent)
    gguf = args.gguf if MODELS[name].get("gguf") else None
    source = str(gguf or hf)
    out = {}
    made = [e for e in FST_ENGINES if e in wanted or (e == "fst-fp32" and "fst-int4" in wanted)]
    for engine in made:  # fp32 first: int4 is made from it
        variant = engine.removeprefix("fst-")
        folder = cache / name / f"bundle-{variant}"
        quantize = None if variant == "fp32" else variant
        options = {"optimize": args.optimize, "quantize": quantize, "logits": args.logits}
        stamp = {**options, "exporter_source": exporter, "source": source}
        if variant == "int4" and gguf is None:
            stamp["int4"] = {"block_size": DEFAULT_BLOCK_SIZE, "gate": "not applied"}
        marker = folder / "fst_bench_export.json"
        fresh = marker.is_file() and json.loads(marker.read_text()) == stamp
        if not fresh or args.rebuild:
            log.info("exporting %s %s", name, engine)
            if variant == "int4" and gguf is None:
                shutil.rmtree(folder, ignore_errors=True)
                quantized_bundle(out["fst-fp32"], folder, block_size=DEFAULT_BLOCK_SIZE)
            else:
                export_bundle(folder, model_path=source, force=True, progress=False, **options)
            marker.write_text(json.dumps(stamp))
        BundleManifest.load(folder)  # fails loudly on a broken bundle
        out[engine] = folder
    return {e: f for e, f in out.items() if e in wanted}


def exporter_quantizations() -> list[str]:
    """The `fst-export --quantize` choices of the installed exporter (int4 arrives with the
    model-sizes work: checked at run time, so the benchmark picks it up once it is there)."""
    from fst.export.cli import build_parser

    for action in build_parser()._actions:
        if "--quantize" in action.option_strings:
            return list(action.choices or [])
    return []


def source_digest(folder: Path) -> str:
    """Digest of a package's *.py: a bundle exported by older exporter code is stale."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def convert_ct2(hf: Path, name: str, cache: Path, engines: list[str]) -> dict[str, Path]:
    """CTranslate2 models (fp32 and int8 weights) converted from the same HF folder."""
    out = {}
    for engine, quantization in (("ct2-fp32", None), ("ct2-int8", "int8")):
        if engine not in engines:
            continue
        folder = cache / name / engine
        if not (folder / "model.bin").is_file():
            import ctranslate2

            log.info("converting %s for %s", name, engine)
            converter = ctranslate2.converters.TransformersConverter(str(hf))
            converter.convert(str(folder), quantization=quantization, force=True)
        out[engine] = folder
    return out


def prepare(name: str, args: argparse.Namespace) -> Artifacts:
    cache = args.cache_dir
    hf = build_hf_folder(name, cache, args.bpe_dir, args.gguf)
    total, read, dims = count_params(hf)
    art = Artifacts(name=name, config=MODELS[name], params=total, weight_params=read, dims=dims)
    art.paths["hf"] = str(hf)
    for engine, folder in {
        **export_bundles(hf, name, cache, args),
        **convert_ct2(hf, name, cache, args.engines),
        **engines_llamacpp.convert(
            hf,
            cache / name / "gguf",
            args.engines,
            args.llamacpp_src,
            original=args.gguf if MODELS[name].get("gguf") else None,
        ),  # fmt: skip
    }.items():
        art.paths[engine] = str(folder)
        art.bundles[engine] = bundle_summary(engine, folder)
    return art


def bundle_summary(engine: str, folder: Path) -> dict[str, Any]:
    files = [folder] if folder.is_file() else [f for f in folder.iterdir() if f.is_file()]
    size = sum(f.stat().st_size for f in files)
    summary: dict[str, Any] = {"size_mb": round(size / 1e6, 1)}
    if engine.startswith("fst-"):
        from fst.core.bundle import BundleManifest

        manifest = BundleManifest.load(folder)
        summary["graph"] = manifest.graph.model_dump(exclude={"inputs", "outputs"})
        marker = folder / "fst_bench_export.json"
        stamp = json.loads(marker.read_text()) if marker.is_file() else {}
        if stamp.get("int4", {}).get("gate") == "not applied":  # int4_bundle.py: no check ran
            summary["parity"] = None
            summary["gate"] = "not applied (random weights; benchmarks/latency/int4_bundle.py)"
        else:
            summary["parity"] = manifest.parity.model_dump()
    return summary


def make_prompts(tokenizer_json: Path, corpus: Path, workload: Workload) -> dict[str, Any]:
    """Prompts cut from real text, as token ids plus a text that encodes to exactly them.

    HF and CTranslate2 get the ids, our runtime (which takes text) gets the text; every
    engine therefore sees the same tokens. Rows of the batch differ but have equal lengths,
    so no engine pads.
    """
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    bodies = [json.loads(line)["body"] for line in corpus.read_text().splitlines() if line]
    ids = tokenizer.encode("\n\n".join(bodies)).ids

    def window(start: int, n: int) -> dict[str, Any]:
        for s in range(start, min(start + 500, len(ids) - n)):
            text = tokenizer.decode(ids[s : s + n])
            if tokenizer.encode(text).ids == ids[s : s + n]:
                return {"ids": ids[s : s + n], "text": text}
        raise ValueError(f"{corpus}: no {n}-token window near token {start} survives re-encoding")

    first = workload.prompt_lengths[0]
    return {
        "prompt": {str(n): window(0, n) for n in workload.prompt_lengths},
        "batch": [window(2000 + 300 * i, first) for i in range(workload.batch)],
        "past": {str(n): window(6000, n) for n in workload.past_lengths},
    }
