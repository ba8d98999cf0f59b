"""fst.evaluation.evaluate and fst-eval on tiny GPT-2 models built from configs (no training).

References: perplexity recomputed with a plain per-sequence torch loop; a model rigged to
give the same logits everywhere, whose perplexity, predictions and continuations are known
in closed form.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import transformers

from fst.core.constants import CHECKPOINT_FORMAT_VERSION, CHECKPOINT_KEY, LOSS_IGNORE
from fst.core.documents import Document, read_documents, write_documents
from fst.core.metrics import token_prediction_metrics_over
from fst.core.tokenization import DocumentTokenizer
from fst.evaluation.evaluate import (
    EvalConfig,
    EvaluationError,
    evaluate,
    generate_continuations,
    generation_config,
    make_prefixes,
    markdown_table,
    token_level_metrics,
)

RIG_LOGIT = 10.0


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models on a shared 2-core machine: threads only add contention.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def documents(nietzsche_dir: Path) -> list[Document]:
    """Six real documents cut to ~1,200 characters, two of them with a meta."""
    docs = read_documents(nietzsche_dir / "valid.documents")[:6]
    metas = [None, "Aphorism", None, "On the free spirit, part two", None, None]
    return [Document(d.body[:1200], meta) for d, meta in zip(docs, metas, strict=True)]


@pytest.fixture(scope="module")
def tokenizer(documents, tmp_path_factory) -> DocumentTokenizer:
    path = tmp_path_factory.mktemp("docs") / "train.documents"
    write_documents(path, documents)
    # max_body_len 64: documents become several chunks, so continuation chunks are covered.
    return DocumentTokenizer.train_bpe([path], vocab_size=400, max_body_len=64, max_meta_len=8)


def tiny_model(tokenizer: DocumentTokenizer, seed: int = 0) -> transformers.GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        n_positions=256,
        vocab_size=tokenizer.vocab_size,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return transformers.GPT2LMHeadModel(config).eval()


def rigged_model(tokenizer: DocumentTokenizer, token: int) -> transformers.GPT2LMHeadModel:
    """Logits are RIG_LOGIT for `token` and 0 for every other id, at every position.

    The final layer norm outputs the unit vector e0 whatever its input (weight 0, bias e0),
    and the tied output embedding's column 0 is RIG_LOGIT at `token`, 0 elsewhere.
    """
    model = tiny_model(tokenizer)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        model.transformer.wte.weight[:, 0] = 0.0
        model.transformer.wte.weight[token, 0] = RIG_LOGIT
    return model


def scored_tokens(tokenizer: DocumentTokenizer, documents: list[Document]) -> list[list[int]]:
    """Per training sequence, the targets that carry a loss (the ones perplexity counts)."""
    return [
        [label for label in enc.labels[1:] if label != LOSS_IGNORE]
        for enc in tokenizer.encode_documents(documents)
    ]


# ---- token level ---------------------------------------------------------------------------


def test_perplexity_and_predictions_match_a_plain_torch_loop(tokenizer, documents):
    model = tiny_model(tokenizer)
    got = token_level_metrics(model, tokenizer, documents, window=16, batch_size=4)

    # Reference: one unpadded sequence at a time, log-softmax by hand.
    nll_sum, count, sequences = 0.0, 0, []
    for enc in tokenizer.encode_documents(documents):
        ids = torch.tensor([enc.token_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].double(), dim=-1)
        labels = torch.tensor(enc.labels[1:])
        keep = labels != LOSS_IGNORE
        nll_sum -= logp[keep].gather(1, labels[keep, None]).sum().item()
        count += int(keep.sum())
        sequences.append((logp[keep].argmax(-1).numpy(), labels[keep].numpy()))

    assert got["num_tokens"] == count == sum(len(s) for s in scored_tokens(tokenizer, documents))
    assert got["perplexity"] == pytest.approx(math.exp(nll_sum / count), rel=1e-5)
    assert got["nll"] == pytest.approx(nll_sum / count, rel=1e-5)
    reference = token_prediction_metrics_over(sequences, window=16)
    for key in ("acc", "rep", "wrep", "uniq", "human_rep", "num_predictions"):
        assert got[key] == pytest.approx(reference[key]), key


def test_rigged_model_token_level_in_closed_form(tokenizer, documents):
    token = tokenizer.encode_text(" the")[0]
    got = token_level_metrics(rigged_model(tokenizer, token), tokenizer, documents, window=8)

    # p(token) = e^10 / Z and p(other) = 1 / Z, with Z = e^10 + V - 1.
    vocab = tokenizer.vocab_size
    log_z = math.log(math.exp(RIG_LOGIT) + vocab - 1)
    sequences = scored_tokens(tokenizer, documents)
    targets = [t for seq in sequences for t in seq]
    hits = sum(t == token for t in targets)
    expected_nll = (len(targets) * log_z - RIG_LOGIT * hits) / len(targets)
    assert got["perplexity"] == pytest.approx(math.exp(expected_nll), rel=1e-5)
    assert got["acc"] == pytest.approx(hits / len(targets))
    assert got["uniq"] == 1
    # The prediction is always `token`: a repeat where it is among the last 8 targets.
    repeats = sum(token in seq[max(0, t - 8) : t] for seq in sequences for t in range(len(seq)))
    wrong = sum(
        token in seq[max(0, t - 8) : t] and seq[t] != token
        for seq in sequences
        for t in range(len(seq))
    )
    assert got["rep"] == pytest.approx(repeats / len(targets))
    assert got["wrep"] == pytest.approx(wrong / len(targets))
    assert 0 < got["rep"] < 1  # the document text exercises both cases


# ---- prefixes ------------------------------------------------------------------------------


def test_prefixes_are_consecutive_body_blocks_with_the_inference_header(tokenizer, documents):
    doc = documents[1]  # has a meta
    body = tokenizer.encode_text(doc.body)
    prefixes = make_prefixes(tokenizer, [doc], prefix_len=20, continuation_len=30)

    assert len(prefixes) == len(body) // 20
    header = tokenizer.encode_for_inference(Document("", doc.meta))
    assert header[-2:] == [tokenizer.end_of_meta_id, tokenizer.start_of_document_id]
    for i, p in enumerate(prefixes):
        assert p.block == body[20 * i : 20 * (i + 1)]
        assert p.prompt_ids == header + p.block
        assert p.true_continuation == body[20 * (i + 1) : 20 * (i + 1) + 30]
        assert p.meta == doc.meta
    # The prompt of the first block is exactly what the runtime would encode for its text.
    first_text = Document(tokenizer.decode(prefixes[0].block), doc.meta)
    assert tokenizer.encode_for_inference(first_text) == prefixes[0].prompt_ids


def test_max_prefixes_keeps_evenly_spaced_blocks(tokenizer, documents):
    every = make_prefixes(tokenizer, documents, prefix_len=10)
    some = make_prefixes(tokenizer, documents, prefix_len=10, max_prefixes=4)
    n = len(every)
    assert [p.block for p in some] == [every[i * n // 4].block for i in range(4)]


# ---- sequence level ------------------------------------------------------------------------


def test_rigged_greedy_continuations_repeat_one_token(tokenizer, documents):
    token = tokenizer.encode_text(" the")[0]
    config = EvalConfig(max_prefixes=5, decodings=("greedy",), batch_size=4)
    results = evaluate(rigged_model(tokenizer, token), tokenizer, documents, config)

    greedy = results["sequence_level"]["greedy"]
    length = config.continuation_len
    # [token] * 100 has 97 4-grams, all the same.
    assert greedy["seq_rep_4"] == 1 - 1 / (length - 3)
    assert greedy["uniq_seq"] == 1
    assert greedy["num_continuations"] == 5 == results["num_prefixes"]
    assert results["greedy_examples"][0]["continuation"] == tokenizer.decode([token] * length)


def test_eos_is_masked_so_continuations_have_exactly_the_asked_length(tokenizer, documents):
    model = rigged_model(tokenizer, tokenizer.eos_token_id)  # EOS would win every step
    prompts = [p.prompt_ids for p in make_prefixes(tokenizer, documents, max_prefixes=3)]
    config = EvalConfig(continuation_len=12)
    for decoding in ("greedy", "top-k"):
        out = generate_continuations(
            model, prompts, generation_config(decoding, config, tokenizer), tokenizer.pad_token_id
        )
        assert [len(c) for c in out] == [12, 12, 12]
        assert all(tokenizer.eos_token_id not in c for c in out)


def test_left_padded_batches_generate_what_single_prompts_do(tokenizer, documents):
    model = tiny_model(tokenizer, seed=1)
    # Documents with and without meta give prompts of different lengths: real padding.
    prompts = [make_prefixes(tokenizer, [d], prefix_len=10)[0].prompt_ids for d in documents]
    assert len({len(p) for p in prompts}) > 1
    greedy = generation_config("greedy", EvalConfig(continuation_len=8), tokenizer)
    batched = generate_continuations(model, prompts, greedy, tokenizer.pad_token_id, batch_size=6)
    single = generate_continuations(model, prompts, greedy, tokenizer.pad_token_id, batch_size=1)
    assert batched == single


def test_sampling_is_reproducible_with_its_seed(tokenizer, documents):
    model = tiny_model(tokenizer)
    prompts = [p.prompt_ids for p in make_prefixes(tokenizer, documents, max_prefixes=4)]
    config = EvalConfig(continuation_len=20)
    top_p = generation_config("top-p", config, tokenizer)
    assert top_p.top_k == 0 and top_p.top_p == 0.9 and top_p.do_sample

    def run(seed):
        return generate_continuations(model, prompts, top_p, tokenizer.pad_token_id, seed=seed)

    torch.manual_seed(123)
    before = torch.rand(1)
    first = run(0)
    torch.manual_seed(123)
    assert run(0) == first
    assert torch.rand(1) == before  # the global RNG is left as it was
    assert run(1) != first


def test_evaluate_schema_and_table(tokenizer, documents):
    config = EvalConfig(max_prefixes=4, continuation_len=20, batch_size=4)
    results = evaluate(tiny_model(tokenizer), tokenizer, documents, config)
    assert set(results["sequence_level"]) == {"greedy", "top-k", "top-p", "human"}
    for decoding in ("greedy", "top-k", "top-p"):
        m = results["sequence_level"][decoding]
        assert 0.0 <= m["seq_rep_4"] <= 1.0 and m["num_continuations"] == 4
    assert results["protocol"]["window"] == 128
    json.dumps(results)  # plain data

    table = markdown_table([("random", results)])
    lines = table.splitlines()
    assert lines[0].startswith("| model | ppl | acc | rep | wrep | uniq | seq-rep-4 greedy")
    row = lines[2].split(" | ")
    assert row[0] == "| random" and row[1] == f"{results['token_level']['perplexity']:.2f}"
    assert lines[3].startswith("| human |")


def test_settings_and_inputs_are_checked(tokenizer, documents):
    with pytest.raises(EvaluationError, match="prefix_len must be an integer >= 1"):
        EvalConfig(prefix_len=0)
    with pytest.raises(EvaluationError, match="top_p must be in"):
        EvalConfig(top_p=0.0)
    with pytest.raises(EvaluationError, match="decodings: unknown"):
        EvalConfig(decodings=("beam",))
    model = tiny_model(tokenizer)  # 256 positions
    with pytest.raises(EvaluationError, match="more than the model's 256 positions"):
        evaluate(model, tokenizer, documents, EvalConfig(prefix_len=100, continuation_len=200))
    with pytest.raises(EvaluationError, match="no document body has 5000 tokens"):
        evaluate(model, tokenizer, documents, EvalConfig(prefix_len=5000))


# ---- fst-eval ------------------------------------------------------------------------------


def write_checkpoint(path: Path, model, tokenizer: DocumentTokenizer) -> Path:
    """A checkpoint laid out as DEVELOPERS.md's "Checkpoint" contract says fst-train writes."""
    info = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "model_type": model.config.model_type,
        "model_config": model.config.to_dict(),
        "tokenizer_json": tokenizer.to_json(),
        "document": tokenizer.settings(),
        "training_args": {"unlikelihood_alpha": 1.0},
        "global_step": 7,
        "epoch": 0,
        "versions": {},
    }
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, CHECKPOINT_KEY: info}, path)
    return path


def test_cli_end_to_end(tokenizer, documents, tmp_path, capsys):
    from fst.evaluation.cli import main

    model = tiny_model(tokenizer)
    ckpt = write_checkpoint(tmp_path / "last.ckpt", model, tokenizer)
    docs = write_documents(tmp_path / "valid.documents", documents)
    out = tmp_path / "out"
    code = main(
        ["--ckpt", str(ckpt), "--documents", str(docs), "--output_dir", str(out),
         "--max_prefixes", "3", "--continuation_len", "16", "--decodings", "greedy,top-p"]
    )  # fmt: skip
    assert code == 0
    results = json.loads((out / "last.eval.json").read_text())
    assert results["source"]["global_step"] == 7
    assert results["source"]["training_args"]["unlikelihood_alpha"] == 1.0
    assert set(results["sequence_level"]) == {"greedy", "top-p", "human"}
    # Same numbers as the library call on the same model.
    direct = token_level_metrics(model, tokenizer, documents)
    assert results["token_level"]["perplexity"] == pytest.approx(direct["perplexity"], rel=1e-6)
    table = (out / "last.eval.md").read_text()
    assert table in capsys.readouterr().out
    assert not list(out.glob("*.tmp"))


@pytest.mark.parametrize("what", ["ckpt", "documents", "setting"])
def test_cli_bad_input_is_one_line_and_exit_2(what, tokenizer, documents, tmp_path, capsys):
    from fst.evaluation.cli import main

    ckpt = write_checkpoint(tmp_path / "m.ckpt", tiny_model(tokenizer), tokenizer)
    docs = write_documents(tmp_path / "valid.documents", documents)
    args = {"ckpt": str(ckpt), "documents": str(docs), "prefix_len": "50"}
    expected = {
        "ckpt": "no such",
        "documents": "no such file",
        "setting": "prefix_len must be an integer >= 1",
    }[what]
    if what == "setting":
        args["prefix_len"] = "0"
    else:
        args[what] = str(tmp_path / "missing")
    code = main([f"--{k}={v}" for k, v in args.items()])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("fst-eval: error: ") and expected in err
    assert err.count("\n") == 1, err


def test_cli_refuses_a_file_that_is_not_a_checkpoint(tokenizer, documents, tmp_path, capsys):
    from fst.evaluation.cli import main

    bogus = tmp_path / "bogus.ckpt"
    bogus.write_text("not a checkpoint")
    docs = write_documents(tmp_path / "valid.documents", documents)
    assert main(["--ckpt", str(bogus), "--documents", str(docs)]) == 2
    err = capsys.readouterr().err
    assert "not a readable PyTorch checkpoint" in err and err.count("\n") == 1


def test_bundle_greedy_matches_the_checkpoint(tokenizer, documents, tmp_path):
    """The same model through fst-export + the runtime gives the same greedy continuations."""
    from fst.evaluation.evaluate import evaluate_bundle
    from fst.export.cli import main as export_main

    model = tiny_model(tokenizer, seed=3)
    ckpt = write_checkpoint(tmp_path / "m.ckpt", model, tokenizer)
    assert export_main(["--ckpt", str(ckpt), "--output", str(tmp_path / "bundle"), "--quiet"]) == 0
    config = EvalConfig(max_prefixes=4, continuation_len=24, decodings=("greedy", "top-p"))

    from_bundle = evaluate_bundle(tmp_path / "bundle", documents, config, threads=1)
    from_torch = evaluate(model, tokenizer, documents, config)
    assert from_bundle["reencoded_mismatches"] == 0
    assert from_bundle["sequence_level"]["greedy"] == from_torch["sequence_level"]["greedy"]
    assert from_bundle["sequence_level"]["human"] == from_torch["sequence_level"]["human"]
    assert from_bundle["sequence_level"]["top-p"]["num_continuations"] == 4
    assert "token_level" not in from_bundle
    assert markdown_table([("bundle", from_bundle)]).splitlines()[2].startswith("| bundle | – |")
