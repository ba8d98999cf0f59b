"""The KV cache goes to transformers under the name the installed version takes.

transformers 5 renamed `past_key_values` to `cache` (the old name warns, FutureWarning, and
goes in 5.40); pyproject's filterwarnings makes that warning an error in every test, so a
forward call that still uses the old name fails the suite, not a later upgrade.
"""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from fst.export.hf_cache import CACHE_NAME, cache_kwargs, returned_cache

MODELS = {
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50)),
    "llama": lambda: LlamaForCausalLM(
        LlamaConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=50,
            max_position_embeddings=32,
        )  # fmt: skip
    ),
}


@pytest.mark.parametrize("family", sorted(MODELS))
def test_cache_name_is_a_forward_keyword_and_the_cache_is_used(family):
    torch.manual_seed(0)
    model = MODELS[family]().eval()
    assert CACHE_NAME in inspect.signature(model.forward).parameters
    ids = torch.tensor([[3, 7, 11, 5]])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        whole = model(input_ids=ids).logits
        first = model(input_ids=ids[:, :3], **cache_kwargs(DynamicCache()), use_cache=True)
        cache = returned_cache(first)
        assert isinstance(cache, DynamicCache) and cache.get_seq_length() == 3
        last = model(input_ids=ids[:, 3:], **cache_kwargs(cache), use_cache=True)
    # Decoding the 4th token from the cache gives the full forward's logits: the cache was read.
    torch.testing.assert_close(last.logits[0, -1], whole[0, -1], atol=1e-5, rtol=1e-5)
    assert returned_cache(last).get_seq_length() == 4
