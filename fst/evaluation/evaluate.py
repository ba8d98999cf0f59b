"""The unlikelihood paper's evaluation (Welleck et al. 2019, arXiv 1908.04319) of a causal LM
on documents: perplexity, next-token metrics and the repetition of generated continuations.

Protocol (the metric definitions themselves are in `fst.core.metrics`):

- Token level, on the true text. Every document is encoded as in training (meta never
  dropped): chunks of `[meta, END_OF_META] + [START_OF_DOCUMENT] + body + EOS`. The scored
  tokens are those training puts a loss on: body tokens and the final EOS; meta, control
  tokens, padding and the first token of a continuation chunk (whose context is cut) are
  not scored. perplexity = exp(sum of NLL / number of scored tokens), the token-weighted
  `Perplexity/valid` of training. acc/rep/wrep/uniq use the argmax prediction for each
  scored token from one forward pass over its chunk; the repeat context of a prediction is
  the previous `window` (128) scored tokens of the same chunk.
- Sequence level. Each document's body token stream is cut into consecutive, non-overlapping
  `prefix_len` (50) token blocks (the reference's `batch_input_sequence_by_prefix_length`);
  the prompt of a block is its inference encoding, `[meta, END_OF_META] + [START_OF_DOCUMENT]
  + block`. Every continuation has exactly `continuation_len` (100) tokens: EOS is masked
  out (Hugging Face's `min_new_tokens`), as the reference generates a fixed length and the
  documents' EOS would otherwise end continuations at different lengths. seq-rep-4 and
  uniq-seq are computed for greedy, top-k (k=50) and top-p (p=0.9) sampling (temperature 1,
  seeded); "human" is the same for the true continuations that have `continuation_len`
  tokens left in their document.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import transformers

from fst.core.constants import LOSS_IGNORE
from fst.core.documents import Document
from fst.core.generation_params import GenerationParams
from fst.core.metrics import (
    CONTEXT_WINDOW,
    mean_seq_rep_n,
    token_prediction_metrics_over,
    uniq_seq,
)
from fst.core.tokenization import DocumentTokenizer, Encoding
from fst.evaluation.config import (  # noqa: F401  (re-exported: the protocol's names)
    DECODINGS,
    SEQ_REP_N,
    EvalConfig,
    EvaluationError,
)


@dataclass(frozen=True)
class Prefix:
    """One sequence-level prompt: the model's input and the true text around it."""

    prompt_ids: list[int]  # header + block
    block: list[int]  # the prefix_len body tokens
    true_continuation: list[int]  # up to continuation_len body tokens that follow the block
    meta: str | None = None  # the document's meta (the header encodes it)


@dataclass
class _Totals:
    """What the token-level pass accumulates over batches."""

    nll_sum: float = 0.0
    num_tokens: int = 0
    predictions: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)


# ---- token level ---------------------------------------------------------------------------


@torch.no_grad()
def token_level_metrics(
    model: transformers.PreTrainedModel,
    tokenizer: DocumentTokenizer,
    documents: list[Document],
    window: int = CONTEXT_WINDOW,
    batch_size: int = 16,
) -> dict[str, float]:
    """Perplexity and acc/rep/wrep/uniq of next-token predictions on the true text."""
    encodings = tokenizer.encode_documents(documents)  # no rng: the meta is never dropped
    # Sorted by length so batches carry little padding; the order does not change any sum.
    encodings.sort(key=lambda e: len(e.token_ids))
    totals = _Totals()
    for start in range(0, len(encodings), batch_size):
        _score_batch(model, encodings[start : start + batch_size], tokenizer.pad_token_id, totals)
    if totals.num_tokens == 0:
        raise EvaluationError("the documents have no scored tokens")
    nll = totals.nll_sum / totals.num_tokens
    true_tokens = set()
    for _, targets in totals.predictions:
        true_tokens.update(targets.tolist())
    return {
        "perplexity": math.exp(nll),
        "nll": nll,
        "num_tokens": totals.num_tokens,
        **token_prediction_metrics_over(totals.predictions, window),
        "human_uniq": len(true_tokens),
    }


def _score_batch(
    model: transformers.PreTrainedModel, batch: list[Encoding], pad_id: int, totals: _Totals
) -> None:
    input_ids, attention_mask, labels = _pad_right(batch, pad_id)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    logits, targets = logits[:, :-1], labels[:, 1:]  # logits[:, t] predicts labels[:, t + 1]
    scored = targets != LOSS_IGNORE  # [B, T-1]
    nll = F.cross_entropy(logits[scored], targets[scored], reduction="sum")
    totals.nll_sum += float(nll.double())
    totals.num_tokens += int(scored.sum())
    predictions = logits.argmax(dim=-1)  # [B, T-1]
    for row in range(len(batch)):
        keep = scored[row]
        totals.predictions.append((predictions[row, keep].numpy(), targets[row, keep].numpy()))


def _pad_right(
    batch: list[Encoding], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right padding: positions stay 0..n-1, as in training's collate."""
    width = max(len(e.token_ids) for e in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), LOSS_IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, enc in enumerate(batch):
        n = len(enc.token_ids)
        input_ids[row, :n] = torch.tensor(enc.token_ids)
        labels[row, :n] = torch.tensor(enc.labels)
        attention_mask[row, :n] = 1
    return input_ids, attention_mask, labels


# ---- sequence level ------------------------------------------------------------------------


def make_prefixes(
    tokenizer: DocumentTokenizer,
    documents: list[Document],
    prefix_len: int = 50,
    continuation_len: int = 100,
    max_prefixes: int | None = None,
) -> list[Prefix]:
    """Consecutive `prefix_len`-token blocks of every body, with their prompts (see module
    docstring); `max_prefixes` keeps that many blocks evenly spaced over all of them."""
    prefixes = []
    for doc in documents:
        header = _prompt_header(tokenizer, doc)
        body = tokenizer.encode_text(doc.body)
        for start in range(0, len(body) - prefix_len + 1, prefix_len):
            block = body[start : start + prefix_len]
            after = body[start + prefix_len : start + prefix_len + continuation_len]
            prefixes.append(Prefix([*header, *block], block, after, doc.meta))
    if max_prefixes is not None and len(prefixes) > max_prefixes:
        prefixes = [prefixes[i * len(prefixes) // max_prefixes] for i in range(max_prefixes)]
    return prefixes


def _prompt_header(tokenizer: DocumentTokenizer, doc: Document) -> list[int]:
    """What precedes the body in a prompt: meta + [END_OF_META] + [START_OF_DOCUMENT]."""
    if not tokenizer.document_format:
        return []
    return tokenizer.encode_for_inference(Document(body="", meta=doc.meta))


def generation_config(
    decoding: str, config: EvalConfig, tokenizer: DocumentTokenizer
) -> transformers.GenerationConfig:
    """Exactly `continuation_len` new tokens (EOS masked), greedy or sampled at temperature 1:
    `runtime_params` in Hugging Face's terms."""
    kwargs = runtime_params(decoding, config).hf_generation_kwargs(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    return transformers.GenerationConfig(**kwargs)


@torch.no_grad()
def generate_continuations(
    model: transformers.PreTrainedModel,
    prompts: list[list[int]],
    generation: transformers.GenerationConfig,
    pad_id: int,
    batch_size: int = 16,
    seed: int = 0,
) -> list[list[int]]:
    """Hugging Face `generate` over left-padded batches; the new tokens of each prompt.

    Sampling is seeded once per call (the global RNG is restored afterwards), so a run is
    reproducible for the same prompts and batch size.
    """
    continuations: list[list[int]] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            input_ids, attention_mask = _pad_left(prompts[start : start + batch_size], pad_id)
            output = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, generation_config=generation
            )
            continuations += output[:, input_ids.shape[1] :].tolist()
    return continuations


def _pad_left(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left padding, so every prompt ends where generation starts; `generate` derives the
    position ids from the attention mask."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
        attention_mask[row, width - len(prompt) :] = 1
    return input_ids, attention_mask


def sequence_metrics(continuations: list[list[int]]) -> dict[str, float]:
    return {
        f"seq_rep_{SEQ_REP_N}": mean_seq_rep_n(continuations, SEQ_REP_N),
        "uniq_seq": uniq_seq(continuations),
        "num_continuations": len(continuations),
    }


# ---- everything ----------------------------------------------------------------------------


def evaluate(
    model: transformers.PreTrainedModel,
    tokenizer: DocumentTokenizer,
    documents: list[Document],
    config: EvalConfig | None = None,
) -> dict[str, Any]:
    """All metrics of the paper's Table 1/2 for one model (the JSON fst-eval writes)."""
    config = config or EvalConfig()
    model.eval()
    started = time.perf_counter()
    results: dict[str, Any] = {
        "protocol": _protocol(config),
        "num_documents": len(documents),
        "token_level": token_level_metrics(
            model, tokenizer, documents, config.window, config.batch_size
        ),
    }
    prefixes = make_prefixes(
        tokenizer, documents, config.prefix_len, config.continuation_len, config.max_prefixes
    )
    if not prefixes:
        raise EvaluationError(f"no document body has {config.prefix_len} tokens to use as a prefix")
    _check_fits(model, prefixes, config.continuation_len)
    sequence_level: dict[str, Any] = {}
    for decoding in config.decodings:
        continuations = generate_continuations(
            model,
            [p.prompt_ids for p in prefixes],
            generation_config(decoding, config, tokenizer),
            tokenizer.pad_token_id,
            config.batch_size,
            config.seed,
        )
        sequence_level[decoding] = sequence_metrics(continuations)
        if decoding == "greedy":
            results["greedy_examples"] = _examples(tokenizer, prefixes, continuations)
    human = [
        p.true_continuation for p in prefixes if len(p.true_continuation) == config.continuation_len
    ]
    if human:
        sequence_level["human"] = sequence_metrics(human)
    results["sequence_level"] = sequence_level
    results["num_prefixes"] = len(prefixes)
    results["seconds"] = round(time.perf_counter() - started, 2)
    return results


def _protocol(config: EvalConfig) -> dict[str, Any]:
    return {**asdict(config), "decodings": list(config.decodings), "seq_rep_n": SEQ_REP_N}


def _add_human(sequence_level: dict[str, Any], prefixes: list[Prefix], config: EvalConfig) -> None:
    """The true continuations that have `continuation_len` tokens, scored like the models'."""
    human = [
        p.true_continuation for p in prefixes if len(p.true_continuation) == config.continuation_len
    ]
    if human:
        sequence_level["human"] = sequence_metrics(human)


def _check_fits(model: transformers.PreTrainedModel, prefixes: list[Prefix], new: int) -> None:
    limit = getattr(model.config, "n_positions", None) or getattr(
        model.config, "max_position_embeddings", None
    )
    longest = max(len(p.prompt_ids) for p in prefixes) + new
    if limit is not None and longest > limit:
        raise EvaluationError(
            f"prompt + continuation_len is {longest} tokens, more than the model's {limit} "
            "positions: lower prefix_len or continuation_len"
        )


def _examples(
    tokenizer: DocumentTokenizer, prefixes: list[Prefix], continuations: list[list[int]], n: int = 3
) -> list[dict[str, str]]:
    """A few decoded greedy continuations, so a reader can see what the numbers mean."""
    return [
        {"prefix": tokenizer.decode(p.block), "continuation": tokenizer.decode(c)}
        for p, c in list(zip(prefixes, continuations, strict=True))[:n]
    ]


# ---- bundle (ONNX runtime) ----------------------------------------------------------------


def evaluate_bundle(
    bundle_dir: str | Path,
    documents: list[Document],
    config: EvalConfig | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Sequence-level metrics of an exported bundle, generated by `fst.runtime.Generator`.

    Token-level metrics (perplexity...) only for a bundle exported with `--logits all`,
    scored through ONNX Runtime by `fst.evaluation.bundle_scoring.BundleScorer`. The runtime takes text prompts, so each block is decoded and re-encoded;
    `reencoded_mismatches` counts the prompts whose ids differ from the block's. Sampling
    uses the runtime's seeded generators (prompt i: seed + i), so samples differ from
    `generate`'s; greedy continuations are the same.
    """
    from fst.runtime import GenerationRequest, Generator

    config = config or EvalConfig()
    started = time.perf_counter()
    generator = Generator.from_bundle(bundle_dir, threads=threads)
    tokenizer = generator.tokenizer
    prefixes = make_prefixes(
        tokenizer, documents, config.prefix_len, config.continuation_len, config.max_prefixes
    )
    if not prefixes:
        raise EvaluationError(f"no document body has {config.prefix_len} tokens to use as a prefix")
    prompts = [
        Document(tokenizer.decode(p.block), p.meta)
        if tokenizer.document_format
        else tokenizer.decode(p.block)
        for p in prefixes
    ]
    mismatches = sum(
        generator.encode_prompt(q) != p.prompt_ids for q, p in zip(prompts, prefixes, strict=True)
    )
    sequence_level: dict[str, Any] = {}
    for decoding in config.decodings:
        params = runtime_params(decoding, config)
        # One seed per prompt: the runtime seeds a sample from its params only, so a shared
        # seed would draw the same random numbers for every prompt and correlate them.
        requests = [
            GenerationRequest(prompt, params.with_overrides(seed=config.seed + i))
            for i, prompt in enumerate(prompts)
        ]
        continuations = []
        for start in range(0, len(requests), config.batch_size):
            completions = generator.run(requests[start : start + config.batch_size])
            continuations += [c.token_ids for (c,) in completions]
        sequence_level[decoding] = sequence_metrics(continuations)
    _add_human(sequence_level, prefixes, config)
    token_level = {}
    if generator.manifest.graph.logits == "all":  # every position's logits: perplexity too
        from fst.evaluation.bundle_scoring import BundleScorer

        scorer = BundleScorer(bundle_dir, threads=threads)
        token_level = {
            "token_level": token_level_metrics(
                scorer, tokenizer, documents, config.window, config.batch_size
            )
        }
    return {
        "protocol": _protocol(config),
        "num_documents": len(documents),
        **token_level,
        "sequence_level": sequence_level,
        "num_prefixes": len(prefixes),
        "reencoded_mismatches": mismatches,
        "seconds": round(time.perf_counter() - started, 2),
    }


def runtime_params(decoding: str, config: EvalConfig) -> GenerationParams:
    """One decoding of the protocol as generation parameters (the runtime's, and through
    `hf_generation_kwargs` Hugging Face's)."""
    n = config.continuation_len
    common = {"max_new_tokens": n, "min_new_tokens": n, "seed": config.seed}
    return GenerationParams(
        **common,
        **{
            "greedy": {"temperature": 0.0},
            "top-k": {"temperature": 1.0, "top_k": config.top_k, "top_p": 1.0},
            "top-p": {"temperature": 1.0, "top_k": 0, "top_p": config.top_p},
        }[decoding],
    )


# ---- report --------------------------------------------------------------------------------

# Token-level columns: (title, metric, format).
_COLUMNS = (
    ("ppl", "perplexity", "{:.2f}"),
    ("acc", "acc", "{:.3f}"),
    ("rep", "rep", "{:.3f}"),
    ("wrep", "wrep", "{:.3f}"),
    ("uniq", "uniq", "{:,}"),
)


def markdown_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """The paper's table layout: one row per model, token-level then sequence-level columns
    ("–" where a result has no such metric, e.g. a bundle has no token level)."""
    decodings = [d for d in DECODINGS if any(d in r["sequence_level"] for _, r in rows)]
    titles = ["model", *(c[0] for c in _COLUMNS)]
    for d in decodings:
        titles += [f"seq-rep-4 {d}", f"uniq-seq {d}"]
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for name, r in rows:
        token = r.get("token_level")
        cells = [name, *(fmt.format(token[key]) if token else "–" for _, key, fmt in _COLUMNS)]
        for d in decodings:
            m = r["sequence_level"].get(d)
            cells += [f"{m['seq_rep_4']:.3f}", f"{m['uniq_seq']:,}"] if m else ["–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    human = next((r for _, r in rows if "human" in r["sequence_level"]), None)
    if human is None:
        return "\n".join(lines) + "\n"
    # The true text is the same for every row: one reference line, repeated per decoding.
    h, token = human["sequence_level"]["human"], human.get("token_level")
    cells = ["human", "–", "–", "–", "–", "–"]
    if token:
        cells[3], cells[5] = f"{token['human_rep']:.3f}", f"{token['human_uniq']:,}"
    cells += [f"{h['seq_rep_4']:.3f}", f"{h['uniq_seq']:,}"] * len(decodings)
    lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        f"\nhuman: the true text; its seq-rep-4/uniq-seq use the {h['num_continuations']} "
        f"true continuations (of {human['num_prefixes']} prefixes) that have "
        f"{human['protocol']['continuation_len']} tokens left in their document."
    )
    return "\n".join(lines) + "\n"
