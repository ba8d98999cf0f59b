"""Evaluation-grade /v1/completions on a real tiny bundle: logprobs and echo against
PyTorch's log-softmax, token-id prompts, the remote-tokenizer endpoints, and the official
openai client parsing the answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from serving_fakes import running_server

from fst.serving.app import create_app
from fst.serving.settings import ServingSettings

pytestmark = pytest.mark.timeout(120)

IDS = [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13]
GREEDY = {"temperature": 0, "top_k": 0}


def _serve(bundle: Path) -> Any:
    return running_server(create_app(ServingSettings(bundle=bundle, threads=1, model_name="tiny")))


@pytest.fixture(scope="module")
def base(tiny_scoring_bundle: Path) -> Iterator[str]:
    with _serve(tiny_scoring_bundle) as url:
        yield url


@pytest.fixture(scope="module")
def torch_logprobs(tiny_hf_model_dir: Path):
    import torch
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(tiny_hf_model_dir).eval()

    def run(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()
        return torch.log_softmax(logits, dim=-1).numpy()

    return run


@pytest.fixture(scope="module")
def detokenize(base: str):
    return lambda ids: _post(base, "/detokenize", {"tokens": ids}).json()["prompt"]


def _post(base: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{base}{path}", json=body, timeout=60)


def _completion(base: str, **body: Any) -> dict[str, Any]:
    r = _post(base, "/v1/completions", {**GREEDY, **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_echo_logprobs_of_token_id_prompts_equal_torch_log_softmax(
    base: str, torch_logprobs, detokenize
) -> None:
    # lm-eval's log-likelihood request, two prompts in one.
    prompts = [IDS, IDS[:4]]
    body = {"prompt": prompts, "max_tokens": 1, "logprobs": 3, "echo": True, "seed": 1234}
    answer = _completion(base, **body)
    assert [c["index"] for c in answer["choices"]] == [0, 1]
    for ids, choice in zip(prompts, answer["choices"], strict=True):
        lp = choice["logprobs"]
        generated = answer_token = None
        assert len(lp["tokens"]) == len(ids) + 1  # the prompt, then the one generated token
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        assert lp["tokens"][: len(ids)] == [detokenize([t]) for t in ids]
        text = choice["text"]
        offsets = zip(lp["text_offset"], lp["tokens"], strict=True)
        assert all(text.startswith(token, offset) for offset, token in offsets)
        assert text.startswith(detokenize(ids))
        # The generated token is greedy: the best of the last position.
        reference = torch_logprobs(ids)
        answer_token = int(reference[-1].argmax())
        generated = lp["tokens"][-1]
        assert generated == detokenize([answer_token])
        full = torch_logprobs([*ids, answer_token])
        for i in range(1, len(ids) + 1):
            token = ([*ids, answer_token])[i]
            assert lp["token_logprobs"][i] == pytest.approx(full[i - 1][token], abs=1e-4)
            top = lp["top_logprobs"][i]
            best = np.argsort(-full[i - 1])[:3]
            expected = {detokenize([int(t)]): full[i - 1][t] for t in best}
            expected.setdefault(lp["tokens"][i], full[i - 1][token])
            assert top == pytest.approx(expected, abs=1e-4)
        assert lp["token_logprobs"][-1] == max(lp["top_logprobs"][-1].values())  # greedy


def test_max_tokens_0_echoes_the_scored_prompt_only(base: str, torch_logprobs) -> None:
    answer = _completion(base, prompt="Hello world, again", max_tokens=0, echo=True, logprobs=0)
    (choice,) = answer["choices"]
    assert choice["text"] == "Hello world, again"
    assert choice["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 0
    ids = _post(base, "/tokenize", {"prompt": "Hello world, again"}).json()["tokens"]
    reference = torch_logprobs(ids)
    expected = [reference[i - 1][ids[i]] for i in range(1, len(ids))]
    assert choice["logprobs"]["token_logprobs"][1:] == pytest.approx(expected, abs=1e-4)
    # logprobs 0: each position shows only the chosen token.
    assert all(len(top) == 1 for top in choice["logprobs"]["top_logprobs"][1:])


def test_generated_logprobs_are_the_raw_models_whatever_the_sampling(
    base: str, torch_logprobs, tiny_plain_bundle: Path
) -> None:
    body = {"prompt": IDS, "max_tokens": 5, "logprobs": 2, "temperature": 1.5, "top_k": 4}
    answer = _completion(base, **body, seed=7)
    lp = answer["choices"][0]["logprobs"]
    tokens = _post(base, "/tokenize", {"prompt": answer["choices"][0]["text"]}).json()["tokens"]
    assert len(lp["token_logprobs"]) == 5
    full = torch_logprobs(IDS + tokens[:5])
    if len(tokens) == 5:  # re-tokenizing the text gives the same ids (usually)
        expected = [full[len(IDS) - 1 + k][tokens[k]] for k in range(5)]
        assert lp["token_logprobs"] == pytest.approx(expected, abs=1e-4)
    assert lp["text_offset"][0] == 0
    # A bundle with the last position only: generated logprobs yes, prompt logprobs no.
    with _serve(tiny_plain_bundle) as last:
        same = _completion(last, **body, seed=7)
        refused = _post(last, "/v1/completions", {**body, "echo": True})
    assert same["choices"][0]["logprobs"]["token_logprobs"] == pytest.approx(
        lp["token_logprobs"], abs=1e-5
    )
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "echo" and "--logits all" in error["message"]


def test_streamed_logprobs_equal_the_non_streamed(base: str) -> None:
    body = {"prompt": "The cat", "max_tokens": 6, "logprobs": 2, "echo": True, "seed": 3}
    answer = _completion(base, **body)
    chunks = []
    with httpx.stream(
        "POST", f"{base}/v1/completions", json={**GREEDY, **body, "stream": True}, timeout=60
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line[6:]))
    text = "".join(c["choices"][0]["text"] for c in chunks)
    logprobs = [c["choices"][0]["logprobs"] for c in chunks if c["choices"][0]["logprobs"]]
    assert text == answer["choices"][0]["text"]
    assert logprobs == [answer["choices"][0]["logprobs"]]


def test_remote_tokenizer_endpoints(base: str, detokenize) -> None:
    info = httpx.get(f"{base}/tokenizer_info", timeout=10).json()
    assert info["eos_token"] == "<|endoftext|>" and info["model_max_length"] == 128
    plain = _post(base, "/tokenize", {"prompt": "Hello<|endoftext|>", "add_special_tokens": False})
    assert plain.json()["tokens"] == [15496, 50256]  # GPT-2's ids
    assert detokenize([15496, 50256]) == "Hello<|endoftext|>"
    bad = _post(base, "/detokenize", {"tokens": [10**7]})
    assert bad.status_code == 400 and "tokens: 10000000 is not in the vocabulary" in bad.text
    too_big = _post(base, "/v1/completions", {"prompt": [[1, 10**7]], "max_tokens": 1})
    assert too_big.status_code == 400 and "vocabulary" in too_big.json()["error"]["message"]


def test_openai_client_parses_logprobs_and_echo(base: str) -> None:
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=60)
    completion = client.completions.create(
        model="tiny", prompt="Hello there", max_tokens=3, logprobs=5, echo=True, temperature=0
    )
    (choice,) = completion.choices
    assert choice.text.startswith("Hello there")
    assert choice.logprobs.token_logprobs[0] is None
    assert len(choice.logprobs.tokens) == len(choice.logprobs.text_offset)
    assert all(len(top) in (5, 6) for top in choice.logprobs.top_logprobs[1:])
    assert "".join(choice.logprobs.tokens) == choice.text
