"""Grammar libraries for JSON-schema-constrained decoding, measured on real vocabularies.

    python -m benchmarks.latency.structured_libraries --tokenizer GPT-2=gpt2 \
        --tokenizer SmolLM2=/path/to/smollm2/tokenizer.json --rounds 5

For each tokenizer (`[LABEL=]gpt2`: the BPE shipped with fst; `[LABEL=]PATH`: a
tokenizer.json or a folder with one) and each
installed candidate (llguidance, outlines-core, lm-format-enforcer; xgrammar is reported as
excluded when it requires torch), it measures, in one process, candidates interleaved
round by round:

- prepare: the one-off per-tokenizer set-up (what a server does once at start);
- compile: a typical JSON schema (SCHEMA) → a matcher ready for its first mask (per request);
- mask: the allowed-token mask of one step, following the tokens of a valid document
  (DOCUMENT) to its end, into the form each library gives (median over steps and rounds);
- mask+apply: the mask, applied to a float32 logits row (-inf where not allowed), and the
  matcher advanced by the token: the whole per-token cost a sampler pays.

Medians of `--rounds` rounds. Results: benchmarks/results/structured-output-libraries-gpt2-smollm2-vocabularies.{md,json}.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import fmt, machine_description, write_report

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "benchmarks" / "results"

# A typical API schema: nested object, array, enum, integer, optional field.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
            "required": ["city", "country"],
        },
        "email": {"type": "string"},
    },
    "required": ["name", "age", "role", "tags", "address"],
}
DOCUMENT = (
    '{"name": "Marie Curie", "age": 66, "role": "admin", "tags": ["physics", "chemistry", '
    '"radioactivity"], "address": {"city": "Paris", "country": "France"}}'
)


# --- tokenizers ----------------------------------------------------------------------------


class Vocab:
    """A tokenizer.json and what every library needs from it: each id's bytes, the EOS."""

    def __init__(self, spec: str) -> None:
        from fst.core.tokenization import DocumentTokenizer

        label, _, path = spec.rpartition("=")
        if path == "gpt2":
            tok = DocumentTokenizer.gpt2(document_format=False)
        else:
            tok = DocumentTokenizer.from_pretrained(path, document_format=False)
        self.name = f"{label or Path(path).name} ({tok.vocab_size:,})"
        self.json = tok.to_json()
        self.size = tok.vocab_size
        self.eos = tok.eos_token_id
        self.encode = tok.encode_text
        raw = tok._tokenizer
        byte_of = {c: b for b, c in _bytes_to_unicode().items()}
        special = set(raw.get_added_tokens_decoder())
        self.token_bytes: dict[int, bytes] = {}
        for i in range(self.size):
            piece = raw.id_to_token(i)
            if piece is None or i in special:
                continue
            self.token_bytes[i] = bytes(byte_of[c] for c in piece if c in byte_of)
        self.document_ids = self.encode(DOCUMENT)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable-character table (byte-level BPE token spelling)."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


# --- candidates: prepare(vocab) -> state; compile(state) -> matcher; step(matcher, ...) ----


class Llguidance:
    name = "llguidance"

    def prepare(self, vocab: Vocab) -> Any:
        import llguidance

        return llguidance.LLTokenizer(vocab.json, n_vocab=vocab.size, eos_token=vocab.eos)

    def compile(self, tokenizer: Any) -> Any:
        import llguidance

        grammar = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA)
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        assert not matcher.is_error(), matcher.get_error()
        return matcher

    def runner(self, vocab: Vocab) -> Callable[[Any, np.ndarray | None, int], None]:
        words = (vocab.size + 31) // 32
        mask = np.zeros(words, dtype=np.int32)
        ptr, size = mask.ctypes.data, mask.nbytes

        def step(matcher: Any, row: np.ndarray | None, token: int) -> None:
            matcher.unsafe_compute_mask_ptr(ptr, size)
            if row is not None:
                allowed = np.unpackbits(mask.view(np.uint8), count=row.size, bitorder="little")
                row[allowed == 0] = -np.inf
                assert row[token] > -np.inf
            assert matcher.consume_token(token), matcher.get_error()

        return step


class OutlinesCore:
    name = "outlines-core"

    def prepare(self, vocab: Vocab) -> Any:
        from outlines_core import Vocabulary

        by_bytes: dict[bytes, list[int]] = {}
        for i, b in vocab.token_bytes.items():
            if i != vocab.eos:
                by_bytes.setdefault(b, []).append(i)
        return Vocabulary(vocab.eos, by_bytes)

    def compile(self, vocabulary: Any) -> Any:
        from outlines_core import Guide, Index
        from outlines_core.json_schema import build_regex_from_schema

        regex = build_regex_from_schema(json.dumps(SCHEMA), r"[ ]?")
        return Guide(Index(regex, vocabulary))

    def runner(self, vocab: Vocab) -> Callable[[Any, np.ndarray | None, int], None]:
        words = (vocab.size + 31) // 32
        mask = np.zeros(words, dtype=np.int32)
        ptr = mask.ctypes.data

        def step(guide: Any, row: np.ndarray | None, token: int) -> None:
            guide.write_mask_into(ptr, words, 4)
            if row is not None:
                allowed = np.unpackbits(mask.view(np.uint8), count=row.size, bitorder="little")
                row[allowed == 0] = -np.inf
                assert row[token] > -np.inf
            guide.advance(token, return_tokens=False)

        return step


class LmFormatEnforcer:
    name = "lm-format-enforcer"

    def prepare(self, vocab: Vocab) -> Any:
        from lmformatenforcer import TokenEnforcerTokenizerData

        regular = [
            (i, b.decode("utf-8", errors="replace"), b[:1] == b" ")
            for i, b in vocab.token_bytes.items()
            if i != vocab.eos
        ]
        tok = __import__("tokenizers").Tokenizer.from_str(vocab.json)
        return TokenEnforcerTokenizerData(regular, tok.decode, vocab.eos, False, vocab.size)

    def compile(self, data: Any) -> Any:
        from lmformatenforcer import JsonSchemaParser, TokenEnforcer

        return [TokenEnforcer(data, JsonSchemaParser(SCHEMA)), []]

    def runner(self, vocab: Vocab) -> Callable[[Any, np.ndarray | None, int], None]:
        def step(state: Any, row: np.ndarray | None, token: int) -> None:
            enforcer, seen = state
            allowed = enforcer.get_allowed_tokens(seen).allowed_tokens
            if row is not None:
                keep = np.zeros(row.size, dtype=bool)
                keep[allowed] = True
                row[~keep] = -np.inf
                assert row[token] > -np.inf
            seen.append(token)

        return step


CANDIDATES = {c.name: c for c in (Llguidance(), OutlinesCore(), LmFormatEnforcer())}


def installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def requires_torch(distribution: str) -> bool | None:
    """Whether a distribution (installed or not) declares torch as a requirement."""
    try:
        requires = importlib.metadata.requires(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    return any(r.split(";")[0].strip().startswith("torch") for r in requires)


# --- measuring ----------------------------------------------------------------------------


def measure_round(candidate: Any, state: Any, vocab: Vocab) -> dict[str, Any]:
    ids = vocab.document_ids + [vocab.eos]
    step = candidate.runner(vocab)
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((len(ids), vocab.size)).astype(np.float32)
    gc.collect()
    t0 = time.perf_counter()
    matcher = candidate.compile(state)
    compile_s = time.perf_counter() - t0
    masks = []
    for token in ids[:-1]:
        t0 = time.perf_counter()
        step(matcher, None, token)
        masks.append(time.perf_counter() - t0)
    matcher = candidate.compile(state)
    applied = []
    for i, token in enumerate(ids[:-1]):
        t0 = time.perf_counter()
        step(matcher, rows[i], token)
        applied.append(time.perf_counter() - t0)
    return {"compile_s": compile_s, "mask_s": masks, "apply_s": applied}


def run(vocab_specs: list[str], rounds: int) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    for spec in vocab_specs:
        vocab = Vocab(spec)
        print(f"{vocab.name}: document = {len(vocab.document_ids)} tokens", file=sys.stderr)
        states, prepare_s = {}, {}
        for name, candidate in CANDIDATES.items():
            if installed(name) is None:
                continue
            t0 = time.perf_counter()
            states[name] = candidate.prepare(vocab)
            prepare_s[name] = time.perf_counter() - t0
        per: dict[str, list[dict[str, Any]]] = {name: [] for name in states}
        for r in range(rounds):
            order = list(states) if r % 2 == 0 else list(states)[::-1]
            for name in order:
                per[name].append(measure_round(CANDIDATES[name], states[name], vocab))
        for name, runs in per.items():
            results.append(
                {
                    "tokenizer": vocab.name,
                    "library": name,
                    "version": installed(name),
                    "tokens": len(vocab.document_ids),
                    "prepare_ms": prepare_s[name] * 1e3,
                    "compile_ms": statistics.median(x["compile_s"] for x in runs) * 1e3,
                    "mask_us": statistics.median(t for x in runs for t in x["mask_s"]) * 1e6,
                    "mask_p90_us": _p90([t for x in runs for t in x["mask_s"]]) * 1e6,
                    "apply_us": statistics.median(t for x in runs for t in x["apply_s"]) * 1e6,
                }
            )
    return {
        "machine": machine_description(),
        "rounds": rounds,
        "schema": SCHEMA,
        "document": DOCUMENT,
        "excluded": {
            "xgrammar": "requires torch (and transformers, triton) to install"
            if requires_torch("xgrammar") in (True, None)
            else None
        },
        "results": results,
    }


def _p90(xs: list[float]) -> float:
    return sorted(xs)[int(0.9 * (len(xs) - 1))]


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Structured output: grammar libraries on real vocabularies",
        "",
        f"`python -m benchmarks.latency.structured_libraries` — {report['rounds']} rounds, candidates "
        "interleaved; medians. CPU: "
        f"{m['cpu']['model']} ({m['cpu']['usable_cores']} usable cores, shared; load "
        f"{m['load_average']}).",
        "",
        "- prepare: once per tokenizer; compile: the schema below → a ready matcher (per "
        "request); mask: one step's allowed-token mask; mask+apply: the mask applied to a "
        "float32 logits row and the matcher advanced (the sampler's whole per-token cost).",
        "- Steps follow the tokens of a valid document to its end.",
        "",
        "| tokenizer | library | version | prepare ms | compile ms | mask µs (p90) "
        "| mask+apply µs |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['tokenizer']} | {r['library']} | {r['version']} | {fmt(r['prepare_ms'], 0)} "
            f"| {fmt(r['compile_ms'], 1)} | {fmt(r['mask_us'], 0)} ({fmt(r['mask_p90_us'], 0)}) "
            f"| {fmt(r['apply_us'], 0)} |"
        )
    for name, why in report["excluded"].items():
        if why:
            lines += ["", f"Excluded: **{name}** — {why}; the runtime must stay torch-free."]
    lines += [
        "",
        "Schema:",
        "",
        "```json",
        json.dumps(report["schema"]),
        "```",
        "",
        f"Document: `{report['document']}`",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--tokenizer", action="append", help="[LABEL=]gpt2 or [LABEL=]PATH (a tokenizer.json)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    report = run(args.tokenizer or ["gpt2"], args.rounds)
    write_report(
        args.out, "structured-output-libraries-gpt2-smollm2-vocabularies", report, markdown(report)
    )
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
