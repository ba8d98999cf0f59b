"""The one GenerationParams → Hugging Face GenerationConfig translation and the one
library_versions: checked against the constructions each caller used to write itself."""

from __future__ import annotations

import pytest
import transformers

from fst.core.generation_params import TRAINING_SAMPLE_PARAMS, GenerationParams
from fst.core.versions import library_versions
from fst.evaluation.config import EvalConfig

EOS, PAD = 0, 1
# Settings that change nothing in HF's generate: left out or given, the same decoding.
NO_OPS = {"num_return_sequences": 1, "repetition_penalty": 1.0, "use_cache": True}


def effective(generation: transformers.GenerationConfig) -> dict:
    return {k: v for k, v in generation.to_diff_dict().items() if NO_OPS.get(k, object()) != v}


def config(params: GenerationParams) -> dict:
    kwargs = params.hf_generation_kwargs(eos_token_id=EOS, pad_token_id=PAD)
    return effective(transformers.GenerationConfig(**kwargs))


def test_training_samples_decode_as_before() -> None:
    p = TRAINING_SAMPLE_PARAMS
    before = transformers.GenerationConfig(
        do_sample=True, max_new_tokens=p.max_new_tokens,
        num_return_sequences=p.num_return_sequences, repetition_penalty=p.repetition_penalty,
        eos_token_id=EOS, pad_token_id=PAD, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p,
    )  # fmt: skip
    assert config(p) == effective(before)
    greedy = GenerationParams(temperature=0.0, max_new_tokens=5, repetition_penalty=2.0)
    before = transformers.GenerationConfig(
        do_sample=False, max_new_tokens=5, num_return_sequences=1, repetition_penalty=2.0,
        eos_token_id=EOS, pad_token_id=PAD,
    )  # fmt: skip
    assert config(greedy) == effective(before)


@pytest.mark.parametrize("decoding", ["greedy", "top-k", "top-p"])
def test_fst_eval_decodings_are_as_before(decoding: str) -> None:
    from fst.evaluation.evaluate import runtime_params

    c = EvalConfig(continuation_len=7, top_k=3, top_p=0.8)
    sampling = {
        "greedy": {"do_sample": False},
        "top-k": {"do_sample": True, "temperature": 1.0, "top_k": 3, "top_p": 1.0},
        "top-p": {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 0.8},
    }[decoding]
    before = transformers.GenerationConfig(
        max_new_tokens=7, min_new_tokens=7, eos_token_id=EOS, pad_token_id=PAD, **sampling
    )
    assert config(runtime_params(decoding, c)) == effective(before)


def test_sequence_ul_greedy_continuations_are_as_before() -> None:
    before = transformers.GenerationConfig(
        do_sample=False, max_new_tokens=9, min_new_tokens=9, eos_token_id=EOS,
        pad_token_id=EOS, use_cache=True,
    )  # fmt: skip
    greedy = GenerationParams(max_new_tokens=9, min_new_tokens=9, temperature=0.0)
    kwargs = greedy.hf_generation_kwargs(eos_token_id=EOS, pad_token_id=None)  # pad: EOS
    assert effective(transformers.GenerationConfig(**kwargs)) == effective(before)


def test_library_versions_are_the_imported_ones_without_importing() -> None:
    import pytorch_lightning
    import tokenizers
    import torch

    import fst
    from fst.training.lightning_module import library_versions as checkpoint_versions

    versions = checkpoint_versions()
    assert versions["fst"] == fst.__version__
    assert versions["torch"] == str(torch.__version__)
    assert versions["transformers"] == transformers.__version__
    assert versions["pytorch_lightning"] == pytorch_lightning.__version__
    assert versions["tokenizers"] == tokenizers.__version__
    assert "no-such-dist" not in library_versions(("numpy", "no-such-dist"))
