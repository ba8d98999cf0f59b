"""fst.runtime: the ONNX Runtime generator against Hugging Face generate, and its contracts."""

from __future__ import annotations

from pathlib import Path

import pytest

from fst.core.documents import Document
from fst.core.generation_params import GenerationParams
from fst.runtime import Completion, GenerationRequest, Generator
from fst.runtime.cli import main as cli_main
from fst.runtime.streaming import TextStream

PROMPTS = ["Hello world", "The quick brown fox", "A", "It was the best of times", "1 2 3"]
GREEDY = GenerationParams(temperature=0.0, max_new_tokens=20)
SAMPLING = GenerationParams(temperature=1.5, top_k=0, top_p=1.0, max_new_tokens=24)
EOS_BOOST = 6.0  # scales EOS's embedding so greedy runs end with EOS after 1..9 tokens


@pytest.fixture(scope="module")
def eos_model_dir(tmp_path_factory, tiny_hf_model_dir) -> Path:
    """tiny_hf_model_dir with a boosted EOS embedding: some prompts end early, some don't."""
    import torch
    from transformers import GPT2LMHeadModel, GPT2TokenizerFast

    folder = tmp_path_factory.mktemp("eos_model")
    model = GPT2LMHeadModel.from_pretrained(tiny_hf_model_dir)
    with torch.no_grad():
        model.transformer.wte.weight[model.config.eos_token_id] *= EOS_BOOST
    model.save_pretrained(folder)
    GPT2TokenizerFast.from_pretrained(tiny_hf_model_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=["concat", "shared", "shared_right"])
def eos_generator(request, tmp_path_factory, eos_model_dir) -> Generator:
    """Every KV layout: a plain export, an --optimize one (shared buffers) and the GPU
    layout (right-padded device buffers, fst.runtime.device_kv, here on the CPU)."""
    from fst.export.exporter import export_bundle

    output = tmp_path_factory.mktemp("eos_bundle") / "bundle"
    layout = "auto" if request.param == "shared" else request.param
    manifest = export_bundle(
        output,
        model_path=str(eos_model_dir),
        optimize=request.param != "concat",
        kv_layout=layout,
        progress=False,
    )
    assert manifest.graph.kv_layout == request.param
    return Generator.from_bundle(output, threads=1)


@pytest.fixture(scope="module", params=["concat", "shared", "shared_right"])
def plain_generator(request) -> Generator:
    bundle = {
        "concat": "tiny_plain_bundle",
        "shared": "tiny_shared_bundle",
        "shared_right": "tiny_shared_right_bundle",
    }[request.param]
    return Generator.from_bundle(request.getfixturevalue(bundle), threads=1)


@pytest.fixture(scope="module")
def eos_hf_model(eos_model_dir):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(eos_model_dir).eval()


def hf_greedy(model, ids: list[int], **kwargs) -> list[int]:
    import torch

    out = model.generate(
        torch.tensor([ids]), do_sample=False, pad_token_id=model.config.eos_token_id, **kwargs
    )
    generated = out[0, len(ids) :].tolist()
    eos = model.config.eos_token_id
    return generated[: generated.index(eos) + 1] if eos in generated else generated


# ---- parity with Hugging Face ---------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [{}, {"repetition_penalty": 1.3}, {"min_new_tokens": 4}],
    ids=["plain", "repetition_penalty", "min_new_tokens"],
)
def test_greedy_matches_hf_generate(eos_generator, eos_hf_model, extra) -> None:
    params = GREEDY.with_overrides(**extra)
    completions = eos_generator.generate(PROMPTS, params)
    reasons = set()
    for prompt, completion in zip(PROMPTS, completions, strict=True):
        ids = eos_generator.encode_prompt(prompt)
        expected = hf_greedy(eos_hf_model, ids, max_new_tokens=20, **extra)
        assert completion.token_ids == expected, prompt
        ended_by_eos = expected[-1] == eos_generator.eos_token_id
        assert completion.finish_reason == ("stop" if ended_by_eos else "length")
        assert completion.prompt_tokens == len(ids)
        assert completion.text == eos_generator.tokenizer.decode(expected)
        reasons.add(completion.finish_reason)
    if not extra:
        assert reasons == {"stop", "length"}  # the fixture exercises both endings


def test_padded_batch_equals_each_alone(eos_generator) -> None:
    # Different prompt lengths (left padding) and different EOS steps (rows leave the batch).
    batch = eos_generator.generate(PROMPTS, GREEDY)
    alone = [eos_generator.generate(p, GREEDY)[0] for p in PROMPTS]
    assert [c.token_ids for c in batch] == [c.token_ids for c in alone]
    assert len({len(c.token_ids) for c in batch}) > 2


def test_ignore_eos_runs_to_max_new_tokens(eos_generator) -> None:
    completion = eos_generator.generate("A", GREEDY, ignore_eos=True)[0]
    assert completion.finish_reason == "length" and len(completion.token_ids) == 20
    assert eos_generator.eos_token_id in completion.token_ids


def test_top_k_1_equals_greedy(plain_generator) -> None:
    greedy = plain_generator.generate(PROMPTS, GREEDY)
    top1 = plain_generator.generate(PROMPTS, GREEDY, temperature=1.0, top_k=1, seed=3)
    assert [c.token_ids for c in top1] == [c.token_ids for c in greedy]


# ---- seeded sampling ------------------------------------------------------------------------


def test_same_seed_same_samples_and_order(plain_generator) -> None:
    params = SAMPLING.with_overrides(seed=11, num_return_sequences=3)
    first = plain_generator.generate(PROMPTS[:2], params)
    again = plain_generator.generate(PROMPTS[:2], params)
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    # prompt-major order, indices per prompt, samples of one prompt differ
    assert [(c.prompt, c.index) for c in first] == [(p, i) for p in PROMPTS[:2] for i in range(3)]
    assert len({tuple(c.token_ids) for c in first[:3]}) == 3
    other = plain_generator.generate(PROMPTS[:2], params.with_overrides(seed=12))
    assert [c.token_ids for c in other] != [c.token_ids for c in first]


def test_seeded_sample_does_not_depend_on_batch_neighbours(plain_generator) -> None:
    mine = GenerationRequest("It was the best of times", SAMPLING.with_overrides(seed=5))
    alone = plain_generator.run([mine])[0]
    neighbours = [
        GenerationRequest("A", SAMPLING.with_overrides(seed=1, num_return_sequences=3)),
        mine,
        GenerationRequest(
            "The quick brown fox jumps over the lazy dog again and again",
            GenerationParams(temperature=0.0, max_new_tokens=3, repetition_penalty=2.0),
        ),
    ]
    crowded = plain_generator.run(neighbours)[1]
    assert [c.token_ids for c in crowded] == [c.token_ids for c in alone]


def test_unseeded_requests_differ(plain_generator) -> None:
    a, b = (plain_generator.generate("A", SAMPLING)[0] for _ in range(2))
    assert a.token_ids != b.token_ids


# ---- stop strings and streaming -------------------------------------------------------------


def test_stop_string_ends_generation_and_is_not_in_the_text(plain_generator) -> None:
    full = plain_generator.generate("Hello world", SAMPLING, seed=4)[0]
    assert len(full.text) > 12
    stop = full.text[8:11]
    cut = full.text[: full.text.index(stop)]
    stopped = plain_generator.generate("Hello world", SAMPLING, seed=4, stop=("zzzz-never", stop))
    assert stopped[0].text == cut and stopped[0].finish_reason == "stop"
    assert len(stopped[0].token_ids) < len(full.token_ids)
    pieces = list(plain_generator.stream("Hello world", SAMPLING, seed=4, stop=(stop,)))
    assert "".join(pieces) == cut


@pytest.mark.parametrize("seed", range(6))
def test_stream_joins_to_the_generated_text(plain_generator, seed: int) -> None:
    # Sampling at high temperature from the whole vocabulary emits byte tokens that are
    # fragments of multi-byte characters: pieces must still join to the same text.
    params = SAMPLING.with_overrides(seed=seed, max_new_tokens=40)
    text = plain_generator.generate("Hello", params)[0].text
    assert "".join(plain_generator.stream("Hello", params)) == text


def test_run_reports_pieces_per_sequence(plain_generator) -> None:
    pieces: dict[tuple[int, int], str] = {}

    def on_piece(request: int, seq: int, piece: str) -> None:
        assert piece
        pieces[request, seq] = pieces.get((request, seq), "") + piece

    requests = [
        GenerationRequest("A", SAMPLING.with_overrides(seed=1, num_return_sequences=2)),
        GenerationRequest("Hello world", SAMPLING.with_overrides(seed=2)),
    ]
    results = plain_generator.run(requests, on_piece=on_piece)
    for r, completions in enumerate(results):
        for c in completions:
            assert pieces.get((r, c.index), "") == c.text


def gpt2_decode(gpt2_bpe_dir: Path):
    from fst.core.tokenization import DocumentTokenizer

    tok = DocumentTokenizer.from_gpt2_files(
        gpt2_bpe_dir / "vocab.json", gpt2_bpe_dir / "merges.txt", document_format=False
    )
    return tok


def test_text_stream_never_splits_a_multibyte_character(gpt2_bpe_dir) -> None:
    tok = gpt2_decode(gpt2_bpe_dir)
    text = "naïve café – 日本語 😀 Ωmega ok"
    ids = tok.encode_text(text)
    partial = [tok.decode(ids[:i]) for i in range(1, len(ids))]
    assert any(p.endswith("\ufffd") for p in partial), "no token splits a character"
    stream = TextStream(tok.decode)
    pieces = [stream.push(i) for i in ids] + [stream.finish()]
    assert not any("\ufffd" in p for p in pieces)
    assert "".join(pieces) == text == stream.text


def char_stream(stop: tuple[str, ...]) -> TextStream:
    return TextStream(lambda ids: "".join(chr(i) for i in ids), stop)


def test_text_stream_holds_back_possible_stop_prefixes() -> None:
    stream = char_stream(("END", "xy"))
    out = [stream.push(ord(c)) for c in "abEN"]
    assert out == ["a", "b", "", ""]  # "E", "EN" may start "END"
    assert stream.push(ord("o")) == "ENo"  # not a stop after all
    assert stream.push(ord("x")) == ""
    assert stream.push(ord("y")) == "" and stream.stopped
    assert stream.push(ord("z")) == "" and stream.finish() == ""
    assert stream.text == "abENo"


def test_text_stream_flushes_held_text_at_the_end() -> None:
    stream = char_stream(("END",))
    assert [stream.push(ord(c)) for c in "okEN"] == ["o", "k", "", ""]
    assert stream.finish() == "EN" and stream.text == "okEN"


def test_text_stream_earliest_stop_wins() -> None:
    stream = char_stream(("cd", "bcde"))
    for c in "abcdef":
        stream.push(ord(c))
    assert stream.text == "ab" and stream.stopped


# ---- validation, cancellation, prompts ------------------------------------------------------


def test_validation_errors(plain_generator) -> None:
    too_long = "word " * 200  # the tiny model has 128 positions
    with pytest.raises(ValueError, match="positions"):
        plain_generator.generate(too_long, GREEDY)
    n = len(plain_generator.encode_prompt("Hello world"))
    with pytest.raises(ValueError, match="exceeds the model's 128 positions"):
        plain_generator.generate("Hello world", GREEDY, max_new_tokens=129 - n)
    assert plain_generator.generate("Hello world", GREEDY, max_new_tokens=128 - n)
    with pytest.raises(ValueError, match="unknown generation parameter"):
        plain_generator.generate("A", GREEDY, temprature=0.5)
    with pytest.raises(ValueError, match="top_p"):
        plain_generator.generate("A", GREEDY, top_p=0.0)
    with pytest.raises(ValueError, match="num_return_sequences"):
        plain_generator.stream("A", GREEDY, num_return_sequences=2)
    with pytest.raises(ValueError, match="meta"):
        plain_generator.generate({"body": "A", "meta": "title"}, GREEDY)
    with pytest.raises(ValueError, match="body"):
        plain_generator.generate({"text": "A"}, GREEDY)
    with pytest.raises(ValueError, match="a string, a document or token ids"):
        plain_generator.generate([4.2], GREEDY)


def test_plain_bundle_accepts_documents_without_meta(plain_generator) -> None:
    as_str = plain_generator.generate("Hello world", GREEDY)[0].token_ids
    as_doc = plain_generator.generate(Document("Hello world"), GREEDY)[0].token_ids
    as_dict = plain_generator.generate({"body": "Hello world", "meta": None}, GREEDY)[0]
    assert as_str == as_doc == as_dict.token_ids


def test_cancellation_stops_only_the_cancelled_request(plain_generator) -> None:
    polls = {0: 0, 1: 0}

    def is_cancelled(request: int) -> bool:
        polls[request] += 1
        return request == 0 and polls[0] > 5

    params = GREEDY.with_overrides(ignore_eos=True)
    requests = [
        GenerationRequest("A", params.with_overrides(num_return_sequences=2)),
        GenerationRequest("Hello world", params),
    ]
    cancelled, other = plain_generator.run(requests, is_cancelled=is_cancelled)
    assert [c.finish_reason for c in cancelled] == ["cancelled", "cancelled"]
    assert all(0 < len(c.token_ids) < 20 for c in cancelled)
    assert cancelled[0].text == plain_generator.tokenizer.decode(cancelled[0].token_ids)
    alone = plain_generator.generate("Hello world", params)[0]
    assert other[0].token_ids == alone.token_ids and other[0].finish_reason == "length"


def test_empty_run_and_completion_fields(plain_generator) -> None:
    assert plain_generator.run([]) == []
    c = plain_generator.generate("A", GREEDY, max_new_tokens=2)[0]
    assert isinstance(c, Completion) and c.prompt == "A" and c.index == 0


DOCUMENTS = [
    Document("Hello there", "a title"),
    Document("Hello there"),
    Document("", "only a meta"),
    Document("a long body " * 30, "a meta much longer than the eight tokens kept of it"),
]


def test_document_prompts_are_encoded_as_in_training(tiny_document_bundle, tiny_checkpoint):
    from fst.training.checkpoint import load_checkpoint

    trained = load_checkpoint(tiny_checkpoint)
    generator = Generator.from_bundle(tiny_document_bundle, threads=1)
    tok = generator.tokenizer
    assert tok.document_format and tok.settings() == trained.tokenizer.settings()
    for doc in DOCUMENTS:
        expected = trained.tokenizer.encode_for_inference(doc)
        assert generator.encode_prompt(doc) == expected
        assert generator.encode_prompt({"body": doc.body, "meta": doc.meta}) == expected
    ids = generator.encode_prompt({"body": "Hello there", "meta": "a title"})
    body, meta = tok.encode_text("Hello there"), tok.encode_text("a title")
    assert ids == [*meta, tok.end_of_meta_id, tok.start_of_document_id, *body]
    assert generator.encode_prompt("Hello there") == [tok.start_of_document_id, *body]
    # and generation from them is the checkpoint's PyTorch model's greedy generation
    for doc in DOCUMENTS[:3]:
        completion = generator.generate(doc, GREEDY, max_new_tokens=12)[0]
        expected = hf_greedy(trained.model, generator.encode_prompt(doc), max_new_tokens=12)
        assert completion.token_ids == expected


# ---- CLI ------------------------------------------------------------------------------------


def test_cli_generates_and_streams(tiny_plain_bundle, plain_generator, capsys) -> None:
    args = [
        "--bundle",
        str(tiny_plain_bundle),
        "Hello world",
        "--temperature",
        "0",
        "--max_new_tokens",
        "8",
        "--threads",
        "1",
    ]
    assert cli_main(args) == 0
    expected = plain_generator.generate("Hello world", GREEDY, max_new_tokens=8)[0].text
    assert capsys.readouterr().out == expected + "\n"
    assert cli_main([*args, "--stream"]) == 0
    assert capsys.readouterr().out == expected + "\n"
    assert cli_main([*args, "--no_huge_pages"]) == 0  # same text from 4 KiB pages
    assert capsys.readouterr().out == expected + "\n"
    assert cli_main([*args, "--num_return_sequences", "2", "--top_k", "1"]) == 0
    assert capsys.readouterr().out.count("=== sample") == 2


def test_cli_errors_exit_2_with_one_line(tiny_plain_bundle, tmp_path, capsys) -> None:
    assert cli_main(["--bundle", str(tmp_path), "Hello"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fst-generate: error:") and "not an fst bundle" in err
    assert err.count("\n") == 1
    assert cli_main(["--bundle", str(tiny_plain_bundle), "Hi", "--top_p", "2"]) == 2
    assert "top_p" in capsys.readouterr().err
    assert cli_main(["--bundle", str(tiny_plain_bundle), "Hi", "--meta", "x"]) == 2
    assert "meta" in capsys.readouterr().err
    assert cli_main(["--bundle", str(tiny_plain_bundle), "Hi", "--providers", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_generation_defaults_come_from_the_bundle(tiny_plain_bundle, tmp_path) -> None:
    import json
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_plain_bundle, bundle)
    manifest = json.loads((bundle / "fst_bundle.json").read_text())
    manifest["generation_defaults"] = {"temperature": 0.0, "max_new_tokens": 5, "not_a_param": 1}
    (bundle / "fst_bundle.json").write_text(json.dumps(manifest))
    generator = Generator.from_bundle(bundle, threads=1)
    assert generator.default_params == GenerationParams(temperature=0.0, max_new_tokens=5)
    completion = generator.generate("Hello", ignore_eos=True)[0]
    assert len(completion.token_ids) == 5


def test_fp16_bundle_generates_like_fp32(tmp_path, eos_model_dir, eos_generator) -> None:
    from fst.export.exporter import export_bundle

    export_bundle(tmp_path / "fp16", model_path=str(eos_model_dir), fp16=True, progress=False)
    fp16 = Generator.from_bundle(tmp_path / "fp16", threads=1)
    assert fp16.manifest.graph.dtype == "float16"
    ours = fp16.generate(PROMPTS, GREEDY, max_new_tokens=6)
    reference = eos_generator.generate(PROMPTS, GREEDY, max_new_tokens=6)
    firsts = [a.token_ids[0] == b.token_ids[0] for a, b in zip(ours, reference, strict=True)]
    assert sum(firsts) >= len(PROMPTS) - 1  # fp16 rounding may flip a near tie
