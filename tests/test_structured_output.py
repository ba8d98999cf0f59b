"""Structured output: constrained samples of a random-weight model always parse and validate.

The reference is the constraint itself: `jsonschema` validates every JSON output against
its schema, `re.fullmatch` every regex output. A random tiny GPT-2 would almost never write
valid JSON on its own, so each pass is the mask at work. The schemas bound every string,
array and number, so each sample completes within its token budget ("stop", not "length").
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from fastapi.testclient import TestClient

from fst.core.generation_params import GenerationParams
from fst.runtime import Constraint, ConstraintError, GenerationRequest, Generator
from fst.runtime.constraints import RowGrammar
from fst.serving.app import create_app
from fst.serving.settings import ServingSettings

pytestmark = pytest.mark.timeout(180)

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 2},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 10}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "verified": {"type": "boolean"},
    },
    "required": ["name", "age", "role", "tags", "address"],
    "additionalProperties": False,
}
SAMPLING = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}


@pytest.fixture(scope="module")
def generator(tiny_plain_bundle: Path) -> Generator:
    return Generator.from_bundle(tiny_plain_bundle, threads=1)


# ---- runtime ----------------------------------------------------------------------------


def test_fifty_seeded_samples_all_validate_against_the_schema(generator: Generator) -> None:
    constraint = Constraint.json_schema(PERSON)
    requests = [
        GenerationRequest(
            "A user record:",
            GenerationParams(max_new_tokens=120, num_return_sequences=10, seed=seed, **SAMPLING),
            constraint=constraint,
        )
        for seed in range(5)
    ]
    completions = [c for per_request in generator.run(requests) for c in per_request]
    assert len(completions) == 50
    for c in completions:
        assert c.finish_reason == "stop", c
        jsonschema.validate(json.loads(c.text), PERSON)
    assert len({c.text for c in completions}) > 40  # sampled, not one forced text


def test_greedy_json_object_and_penalised_sampling_still_parse(generator: Generator) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}  # fmt: skip
    params = [
        GenerationParams(max_new_tokens=40, temperature=0.0),
        GenerationParams(max_new_tokens=40, num_return_sequences=4, seed=3, top_k=5,
                         repetition_penalty=1.3, min_new_tokens=2),
    ]  # fmt: skip
    for p in params:
        for c in generator.run(
            [GenerationRequest("x", p, constraint=Constraint.json_schema(schema))]
        )[0]:
            assert c.finish_reason == "stop"
            jsonschema.validate(json.loads(c.text), schema)


def test_regex_and_grammars_constrain_every_sample(generator: Generator) -> None:
    cases = [
        (Constraint.regex(r"(yes|no|maybe)!{0,3}"), r"(yes|no|maybe)!{0,3}"),
        (Constraint.regex(r"[0-9]{3}-[a-z]{2}"), r"[0-9]{3}-[a-z]{2}"),
        (Constraint.grammar_text('root ::= "red" | "green" | "blue" " sky"'), r"red|green|blue sky"),
        (Constraint.grammar_text('start: ("a" | "b")~2 "."'), r"[ab]{2}\."),
    ]  # fmt: skip
    for constraint, pattern in cases:
        params = GenerationParams(max_new_tokens=20, num_return_sequences=8, seed=1, **SAMPLING)
        for c in generator.run([GenerationRequest("Answer:", params, constraint=constraint)])[0]:
            assert c.finish_reason == "stop", (pattern, c)
            assert re.fullmatch(pattern, c.text), (pattern, c.text)


def test_constrained_and_free_rows_share_a_batch_without_changing_each_other(
    generator: Generator,
) -> None:
    free = GenerationRequest("Hello", GenerationParams(max_new_tokens=8, seed=4, **SAMPLING))
    (alone,) = generator.run([free])[0]
    constrained = GenerationRequest(
        "Hello",
        GenerationParams(max_new_tokens=30, seed=4, **SAMPLING),
        constraint=Constraint.regex("ok"),
    )
    mixed = generator.run([constrained, free])
    assert mixed[0][0].text == "ok"
    assert mixed[1][0].text == alone.text  # a neighbour's grammar changes nothing


def test_a_dead_end_ends_that_row_only(generator: Generator, monkeypatch) -> None:
    """A grammar that allows no token ends its row with "grammar_dead_end"; the batch's
    other rows (the same request's other sample, here) go on."""
    real_mask = RowGrammar.mask
    calls = {"n": 0}

    def mask(self: RowGrammar, row: np.ndarray) -> bool:
        calls["n"] += 1
        return False if calls["n"] == 3 else real_mask(self, row)  # row 0, second step

    monkeypatch.setattr(RowGrammar, "mask", mask)
    params = GenerationParams(max_new_tokens=20, num_return_sequences=2, seed=0, **SAMPLING)
    dead, alive = generator.run(
        [GenerationRequest("x", params, constraint=Constraint.regex("[ab]{5}"))]
    )[0]
    assert dead.finish_reason == "grammar_dead_end" and len(dead.token_ids) == 1
    assert alive.finish_reason == "stop" and re.fullmatch("[ab]{5}", alive.text)


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: Constraint.json_schema({"type": "foo"}), "Invalid type"),
        (lambda: Constraint.json_schema({"not": {"type": "string"}}), "Unimplemented keys"),
        (lambda: Constraint.json_schema({"$ref": "#/nowhere"}), "does not exist"),
        (lambda: Constraint.regex("[a-"), "unclosed character class"),
        (lambda: Constraint.grammar_text("start: missing_rule"), "unknown name"),
        (lambda: Constraint.grammar_text("root ::= ("), "GBNF"),
    ],
)
def test_what_does_not_compile_is_a_one_line_error(make, words) -> None:
    with pytest.raises(ConstraintError, match=words) as info:
        make()
    assert "\n" not in str(info.value)


def test_no_constraint_never_imports_the_grammar_engine(tiny_plain_bundle: Path) -> None:
    """The zero-cost path: unconstrained generation does not even load llguidance."""
    code = (
        "import sys; from fst.runtime import Generator; "
        f"g = Generator.from_bundle({str(tiny_plain_bundle)!r}, threads=1); "
        "g.generate('Hello', max_new_tokens=4, num_return_sequences=2, seed=1); "
        "assert 'llguidance' not in sys.modules, 'llguidance imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---- HTTP ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(tiny_plain_bundle: Path) -> TestClient:
    app = create_app(ServingSettings(bundle=tiny_plain_bundle, threads=1, model_name="tiny"))
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield client


def _json_schema_format(schema: object) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema,
                                                   "strict": True}}  # fmt: skip


def test_completions_response_format_through_the_openai_client(client: TestClient) -> None:
    openai = pytest.importorskip("openai")
    api = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client)
    answer = api.completions.create(
        model="tiny", prompt="Person:", max_tokens=120, n=4, seed=2, temperature=1.0,
        extra_body={"response_format": _json_schema_format(PERSON)},
    )  # fmt: skip
    assert len(answer.choices) == 4
    for choice in answer.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.text), PERSON)
    obj = api.completions.create(
        model="tiny", prompt="{}", max_tokens=60, temperature=0.0,
        extra_body={"response_format": {"type": "json_object"}},
    )  # fmt: skip
    if obj.choices[0].finish_reason == "stop":  # any object may be longer than 60 tokens
        assert isinstance(json.loads(obj.choices[0].text), dict)
    else:
        assert obj.choices[0].text.startswith("{")


def test_streamed_equals_non_streamed_under_a_constraint(client: TestClient) -> None:
    body = {"prompt": "Pick:", "max_tokens": 30, "n": 2, "seed": 7, "temperature": 1.0,
            "guided_regex": "(alpha|beta|gamma) [0-9]{1,4}"}  # fmt: skip
    whole = client.post("/v1/completions", json=body)
    assert whole.status_code == 200, whole.text
    streamed = client.post("/v1/completions", json={**body, "stream": True})
    texts, finish = ["", ""], [None, None]
    for line in streamed.text.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:])["choices"]:
                texts[choice["index"]] += choice["text"]
                finish[choice["index"]] = choice["finish_reason"] or finish[choice["index"]]
    choices = whole.json()["choices"]
    assert texts == [c["text"] for c in choices]
    assert finish == [c["finish_reason"] for c in choices] == ["stop", "stop"]
    for text in texts:
        assert re.fullmatch(r"(alpha|beta|gamma) [0-9]{1,4}", text)


def test_guided_grammar_on_completions(client: TestClient) -> None:
    body = {"prompt": "Colour:", "max_tokens": 10, "n": 3, "seed": 1, "temperature": 1.0,
            "guided_grammar": 'root ::= "red" | "green" | "blue"'}  # fmt: skip
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    assert all(c["text"] in {"red", "green", "blue"} for c in r.json()["choices"])


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"response_format": _json_schema_format({"type": "foo"})},
         "response_format.json_schema.schema", "Invalid type"),
        ({"response_format": _json_schema_format({"not": {}})},
         "response_format.json_schema.schema", "Unimplemented keys"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "required"),
        ({"guided_regex": "(unclosed"}, "guided_regex", "does not compile"),
        ({"guided_grammar": "start: nowhere"}, "guided_grammar", "unknown name"),
        ({"guided_regex": "a", "guided_grammar": 'root ::= "a"'}, "guided_grammar",
         "at most one"),
        ({"response_format": {"type": "xml"}}, "response_format", ""),
    ],
)  # fmt: skip
def test_bad_constraints_are_400s_naming_the_field(
    client: TestClient, extra: dict, param: str, words: str
) -> None:
    r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 4, **extra})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert param in (error["param"] or "") + error["message"]
    assert words in error["message"]


def test_text_response_format_is_no_constraint(client: TestClient) -> None:
    body = {"prompt": "Hello", "max_tokens": 5, "seed": 3, "temperature": 1.0}
    plain = client.post("/v1/completions", json=body).json()["choices"]
    text = client.post(
        "/v1/completions", json={**body, "response_format": {"type": "text"}}
    ).json()["choices"]
    assert plain == text


def test_the_mask_is_llguidance_bitmask_with_eos_exactly_when_accepting(
    generator: Generator,
) -> None:
    """RowGrammar.mask against the bitmask llguidance computes itself, step by step."""
    from fst.runtime.constraints import GrammarMasks

    tokenizer = generator.tokenizer
    vocab = generator.stepper.vocab_size
    eos = tokenizer.eos_token_id
    masks = GrammarMasks(tokenizer, vocab, [eos])
    (grammar,) = masks.rows(Constraint.regex(r"ab?"), 1)
    reference = grammar._matcher.deep_copy()
    for text in ["a", "b"]:
        row = np.zeros(vocab, dtype=np.float32)
        assert grammar.mask(row)
        bits = np.frombuffer(reference.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(bits, count=vocab, bitorder="little").astype(bool)
        allowed[eos] = reference.is_accepting()
        np.testing.assert_array_equal(row > -np.inf, allowed)
        (token,) = tokenizer.encode_text(text)
        assert grammar.consume(token) and reference.consume_token(token)
    assert reference.is_accepting() and grammar.stopped


# ---- the real model (slow) ----------------------------------------------------------------

CAPITAL_SCHEMA = {
    "type": "object",
    "properties": {
        "capital": {"type": "string", "maxLength": 40},
        "population": {"type": "integer", "minimum": 0},
    },
    "required": ["capital", "population"],
    "additionalProperties": False,
}


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_smollm2_answers_a_schema_with_a_valid_object_naming_paris(smollm2_bundle) -> None:
    from test_real_model import chat_token_ids

    bundle = smollm2_bundle("fp32")
    generator = Generator.from_bundle(bundle)
    question = "Give me a JSON object with the capital and population of France."
    prompt = chat_token_ids(bundle, [{"role": "user", "content": question}])
    batch = generator.new_batch()
    batch._encode_request = lambda request: list(request.prompt)  # token-id prompt
    params = GenerationParams(max_new_tokens=60, temperature=0.0)
    (rows,) = batch.add(
        [GenerationRequest(prompt, params, constraint=Constraint.json_schema(CAPITAL_SCHEMA))]
    )
    while batch.num_live:
        batch.step()
    completion = rows[0].completion()
    assert completion.finish_reason == "stop", completion
    answer = json.loads(completion.text)
    jsonschema.validate(answer, CAPITAL_SCHEMA)
    assert "Paris" in answer["capital"], answer
