"""A real pretrained chat model end to end: SmolLM2-135M-Instruct's GGUF file → fst-export →
fst.runtime, against transformers running the same (dequantized) weights.

Slow (FST_RUN_SLOW=1): the model is fetched once per machine (tests/conftest.py,
`smollm2_gguf`) and each bundle is exported once per session (`smollm2_bundle`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REAL_MODEL_TIMEOUT

from fst.core.bundle import check_bundle
from fst.core.chat_template import ChatTemplate
from fst.core.generation_params import GenerationParams
from fst.runtime import GenerationRequest, Generator

pytestmark = [pytest.mark.slow, pytest.mark.timeout(REAL_MODEL_TIMEOUT)]

CAPITAL_QUESTION = "What is the capital of France? Answer in one sentence."
CONVERSATIONS = [
    [{"role": "user", "content": "Write a short poem about the sea."}],
    [
        {"role": "system", "content": "You are a patient teacher."},
        {"role": "user", "content": "Explain photosynthesis to a ten-year-old."},
    ],
    [
        {"role": "user", "content": "Hi! Can you help me plan a trip?"},
        {"role": "assistant", "content": "Of course! Where would you like to go?"},
        {"role": "user", "content": "Somewhere warm in Europe in March."},
    ],
]
NEW_TOKENS = 32


def chat_token_ids(bundle: Path, messages: list[dict]) -> list[int]:
    """The conversation's prompt ids as transformers' `apply_chat_template(tokenize=True)`
    makes them: the manifest's template rendered, its special tokens parsed as tokens."""
    import tokenizers

    manifest = check_bundle(bundle)
    assert manifest.chat is not None
    text = ChatTemplate(manifest.chat.template, manifest.chat.special_tokens).render(messages)
    tokenizer = tokenizers.Tokenizer.from_file(str(bundle / manifest.tokenizer.file))
    return tokenizer.encode(text, add_special_tokens=False).ids


def generate_ids(generator: Generator, prompt_ids: list[int], **params) -> list[int]:
    """Greedy continuation of token ids through the runtime's decode loop (prefill, KV cache,
    sampler, end-of-turn ids); a token-id prompt is taken as it is."""
    batch = generator.new_batch()
    request = GenerationRequest(prompt_ids, GenerationParams(temperature=0.0, **params))
    (rows,) = batch.add([request])
    while batch.num_live:
        batch.step()
    return rows[0].completion().token_ids


@pytest.fixture(scope="module")
def reference_model(smollm2_gguf):
    """transformers' model of the same GGUF file (fp32, dequantized) and its tokenizer."""
    from fst.training.gguf_import import load_gguf

    loaded = load_gguf(smollm2_gguf)
    return loaded.model, loaded.tokenizer


def test_gguf_bundle_manifest_carries_chat_and_provenance(smollm2_bundle, smollm2_gguf):
    manifest = check_bundle(smollm2_bundle("fp32"), hashes=True)
    assert manifest.source_format == "GGUF Q4_1"
    assert manifest.architecture.model_type == "llama"
    assert manifest.architecture.max_positions == 8192
    assert (manifest.architecture.num_heads, manifest.architecture.num_kv_heads) == (9, 3)
    assert manifest.tokenizer.bos_token_id is None  # the template writes <|im_start|> itself
    assert manifest.chat is not None and manifest.chat.template_source == "the GGUF file"
    assert "<|im_start|>" in manifest.chat.template
    assert manifest.chat.special_tokens["eos_token"] == "<|im_end|>"
    assert manifest.chat.stop_token_ids == [2]  # <|im_end|>
    assert manifest.parity.top1_agreement == 1.0 and manifest.parity.passed


def test_prompt_ids_equal_transformers_chat_tokenization(smollm2_bundle, reference_model):
    _, hf_tokenizer = reference_model
    for messages in CONVERSATIONS:
        expected = hf_tokenizer.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True, return_dict=False
        )
        assert chat_token_ids(smollm2_bundle("fp32"), messages) == list(expected)


def test_fp32_greedy_tokens_equal_transformers_generate(smollm2_bundle, reference_model):
    import torch

    model, _ = reference_model
    bundle = smollm2_bundle("fp32")
    generator = Generator.from_bundle(bundle)
    stop = list(generator.chat.stop_token_ids)
    for messages in CONVERSATIONS:
        prompt = chat_token_ids(bundle, messages)
        with torch.no_grad():
            output = model.generate(
                torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False,
                eos_token_id=stop, pad_token_id=stop[0],
            )  # fmt: skip
        expected = output[0, len(prompt) :].tolist()
        actual = generate_ids(generator, prompt, max_new_tokens=NEW_TOKENS)
        assert len(expected) >= 8, "the reference answer is too short to compare"
        assert actual == expected, generator.tokenizer.decode(actual)


def test_int8_export_falls_back_to_8bit_blocks(smollm2_bundle):
    manifest = check_bundle(smollm2_bundle("int8"))
    assert manifest.graph.int8_weights == "MatMulNBits" and manifest.parity.passed
    assert manifest.graph.int8_blocks is not None and manifest.graph.int8_blocks.bits == 8


def test_int4_export_keeps_the_gguf_blocks(smollm2_bundle):
    """Re-quantising the GGUF's 4-bit weights failed the parity gate (best top-1 0.52);
    its own Q4_1 blocks (and the Q8_0 token table) pass it."""
    manifest = check_bundle(smollm2_bundle("int4"))
    scheme = manifest.graph.int4
    # 30 layers x 7 matrices, the tied output projection and the token table.
    assert scheme.from_gguf == 212 and scheme.matmuls == 211 and scheme.embedding
    assert manifest.parity.passed and manifest.parity.top1_agreement >= 0.9


@pytest.mark.parametrize("variant", ["fp32", "int8", "int4"])
def test_capital_of_france(smollm2_bundle, variant):
    """Through the server's /v1/chat/completions with the official openai client."""
    import time

    import openai
    from fastapi.testclient import TestClient

    from fst.serving.app import create_app
    from fst.serving.settings import ServingSettings

    bundle = smollm2_bundle(variant)
    assert check_bundle(bundle).graph.variant == variant
    settings = ServingSettings(bundle=bundle, model_name="smollm2")
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 600
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "the server never got ready"
            time.sleep(0.2)
        api = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client)
        reply = api.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": CAPITAL_QUESTION}],
            temperature=0, max_completion_tokens=48,
        )  # fmt: skip
    (choice,) = reply.choices
    assert choice.finish_reason == "stop", choice
    assert "Paris" in choice.message.content, choice.message.content
