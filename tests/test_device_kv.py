"""The GPU path (kv_layout shared_right, fst.runtime.device_kv) exercised here on the CPU.

The stepper's device code is the same for "cpu" and "cuda": values allocated on the device,
bound once as past and present, only the logits read back. Tests marked `gpu` need
onnxruntime-gpu and a CUDA device; they are skipped here (never counted as passes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fst.core.bundle import BundleManifest
from fst.core.constants import BUNDLE_MODEL
from fst.runtime import Generator
from fst.runtime.device_kv import DeviceKVStepper, cache_device_for
from fst.runtime.kv_cache import CausalLMStepper, make_stepper
from fst.runtime.session import create_session

PROMPTS = [[464, 3290, 286, 1204, 318, 326, 340], [15496, 995], [32]]
CUDA_MISSING = "CUDAExecutionProvider" not in ort.get_available_providers()
gpu = pytest.mark.skipif(
    CUDA_MISSING, reason="needs onnxruntime-gpu and a CUDA device (see benchmarks/gpu/run.py)"
)


def stepper_for(bundle: Path, providers=("cpu",)) -> DeviceKVStepper:
    manifest = BundleManifest.load(bundle)
    session, _ = create_session(bundle / BUNDLE_MODEL, providers=list(providers), threads=1)
    stepper = make_stepper(session, manifest)
    assert isinstance(stepper, DeviceKVStepper)
    return stepper


def greedy_logits(stepper, prompts, steps: int, reserve: int = 16) -> list[np.ndarray]:
    """Prefill, then `steps` greedy decode steps; the logits [B, V] of each step."""
    logits, cache = stepper.prefill(prompts, pad_id=0, reserve=reserve)
    seen = [logits.copy()]
    for _ in range(steps):
        logits = stepper.decode(cache, logits.argmax(-1))
        seen.append(logits.copy())
    return seen


@pytest.fixture(scope="module")
def stepper(tiny_shared_right_bundle) -> DeviceKVStepper:
    return stepper_for(tiny_shared_right_bundle)


def test_cache_is_device_values_written_in_place(stepper) -> None:
    logits, cache = stepper.prefill(PROMPTS, pad_id=0, reserve=8)
    assert stepper.device == "cpu"  # the session's provider decides (cache_device_for)
    assert all(isinstance(v, ort.OrtValue) and v.device_name() == "cpu" for v in cache.presents)
    assert len(cache.presents) == 2 * stepper.num_layers
    pointers = [v.data_ptr() for v in cache.presents]
    binding = cache.binding
    for _ in range(3):
        logits = stepper.decode(cache, logits.argmax(-1))
    # The same buffers and the same binding at every step: no cache copy, no rebinding.
    assert [v.data_ptr() for v in cache.presents] == pointers and cache.binding is binding
    assert cache.logits.shape == (3, 1, stepper.vocab_size)  # the only output read back
    assert cache.lengths.tolist() == [len(p) + 3 for p in PROMPTS]


def test_rows_are_right_aligned_like_each_prompt_alone(stepper) -> None:
    _, batch = stepper.prefill(PROMPTS, pad_id=0)
    for row, prompt in enumerate(PROMPTS):
        _, alone = stepper.prefill([prompt], pad_id=0)
        for ours, theirs in zip(batch.presents, alone.presents, strict=True):
            np.testing.assert_allclose(
                ours.numpy()[row, :, : len(prompt)], theirs.numpy()[0, :, : len(prompt)], atol=1e-6
            )


def test_rows_of_different_lengths_decode_like_each_alone(stepper) -> None:
    batch = greedy_logits(stepper, PROMPTS, steps=4)
    for row, prompt in enumerate(PROMPTS):
        alone = greedy_logits(stepper, [prompt], steps=4)
        for ours, theirs in zip(batch, alone, strict=True):
            np.testing.assert_allclose(ours[row], theirs[0], atol=1e-5)


def test_outgrowing_the_buffers_moves_them_and_keeps_results(stepper) -> None:
    roomy = greedy_logits(stepper, PROMPTS, steps=5, reserve=32)
    logits, cache = stepper.prefill(PROMPTS, pad_id=0, reserve=1)
    first = cache.capacity
    seen = [logits.copy()]
    for _ in range(5):
        logits = stepper.decode(cache, logits.argmax(-1))
        seen.append(logits.copy())
    assert cache.capacity > first
    for ours, theirs in zip(seen, roomy, strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_select_and_merge_keep_each_rows_cache(stepper) -> None:
    logits, cache = stepper.prefill(PROMPTS, pad_id=0)
    tokens = logits.argmax(-1)
    picked = stepper.select(cache, [2, 0, 2])
    expected = stepper.decode(cache, tokens)[[2, 0, 2]].copy()
    np.testing.assert_allclose(stepper.decode(picked, tokens[[2, 0, 2]]), expected, atol=1e-5)

    first, running = stepper.prefill(PROMPTS[:1], pad_id=0)
    second, new = stepper.prefill(PROMPTS[1:], pad_id=0)
    merged = stepper.merge(running, [0], new, [1, 0])
    assert merged.lengths.tolist() == [len(PROMPTS[0]), len(PROMPTS[2]), len(PROMPTS[1])]
    step = np.array([first[0].argmax(), second[1].argmax(), second[0].argmax()])
    ours = stepper.decode(merged, step)
    theirs = stepper.decode(running, step[:1])
    np.testing.assert_allclose(ours[0], theirs[0], atol=1e-5)
    with pytest.raises(ValueError, match="no rows"):
        stepper.combine([(cache, [])])


def test_public_io_fallback_decodes_the_same(tiny_shared_right_bundle, stepper) -> None:
    from fst.runtime.ort_io import CLevelCalls, PublicCalls

    manifest = BundleManifest.load(tiny_shared_right_bundle)
    public = DeviceKVStepper.from_manifest(stepper.session, manifest, public_io=True)
    assert type(stepper.io.calls) is CLevelCalls and type(public.io.calls) is PublicCalls
    ours, theirs = greedy_logits(public, PROMPTS, 3), greedy_logits(stepper, PROMPTS, 3)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_device_follows_the_provider() -> None:
    assert cache_device_for("CUDAExecutionProvider") == "cuda"
    assert cache_device_for("TensorrtExecutionProvider") == "cuda"
    assert cache_device_for("CPUExecutionProvider") == "cpu"


def test_stepper_is_chosen_by_kv_layout(tiny_shared_right_bundle, tiny_plain_bundle) -> None:
    assert isinstance(Generator.from_bundle(tiny_shared_right_bundle)._stepper, DeviceKVStepper)
    assert isinstance(Generator.from_bundle(tiny_plain_bundle)._stepper, CausalLMStepper)
    manifest = BundleManifest.load(tiny_plain_bundle)
    session, _ = create_session(tiny_plain_bundle / BUNDLE_MODEL, providers=["cpu"])
    with pytest.raises(ValueError, match="shared_right"):
        DeviceKVStepper.from_manifest(session, manifest)


class _ReportsCuda:
    """A CPU session that says it runs on CUDA (to reach the provider checks)."""

    def __init__(self, session) -> None:
        self._session = session

    def get_providers(self):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def __getattr__(self, name):
        return getattr(self._session, name)


def test_host_buffer_layout_refuses_a_gpu_session(tiny_shared_bundle) -> None:
    manifest = BundleManifest.load(tiny_shared_bundle)
    session, _ = create_session(tiny_shared_bundle / BUNDLE_MODEL, providers=["cpu"])
    with pytest.raises(ValueError, match="shared_right"):
        CausalLMStepper.from_manifest(_ReportsCuda(session), manifest)


def test_the_default_providers_run_a_shared_layout_bundle_on_the_cpu(
    tiny_shared_bundle, tiny_shared_right_bundle, monkeypatch
) -> None:
    """With onnxruntime-gpu the default providers start with CUDA, which the shared layout's
    host buffers refuse: its bundles (fst-export's default) get the CPU provider instead."""
    from fst.runtime import generator

    asked = []

    def create(path, providers=None, **kwargs):
        asked.append(providers)
        return create_session(path, providers=["cpu"], **kwargs)  # no CUDA in this build

    monkeypatch.setattr(generator, "create_session", create)
    Generator.from_bundle(tiny_shared_bundle)
    Generator.from_bundle(tiny_shared_right_bundle)
    Generator.from_bundle(tiny_shared_bundle, providers=["cuda"])
    assert asked == [["cpu"], None, ["cuda"]]


def test_a_cuda_session_would_keep_the_cache_on_cuda(tiny_shared_right_bundle) -> None:
    manifest = BundleManifest.load(tiny_shared_right_bundle)
    session, _ = create_session(tiny_shared_right_bundle / BUNDLE_MODEL, providers=["cpu"])
    assert DeviceKVStepper.from_manifest(_ReportsCuda(session), manifest).device == "cuda"


@pytest.fixture(scope="module")
def fp16_bundle(tmp_path_factory, tiny_hf_model_dir) -> Path:
    from fst.export.exporter import export_bundle

    output = tmp_path_factory.mktemp("fp16_right") / "bundle"
    export_bundle(
        output,
        model_path=str(tiny_hf_model_dir),
        optimize=True,
        fp16=True,
        kv_layout="shared_right",
        progress=False,
    )
    return output


def test_fp16_graph_meets_the_cuda_kernels_constraints(fp16_bundle) -> None:
    """What ONNX Runtime's CUDA GroupQueryAttention takes: float16, no attention_bias, and
    total_sequence_length computed from shapes only (it must be in CPU memory)."""
    manifest = BundleManifest.load(fp16_bundle)
    assert manifest.graph.dtype == "float16" and manifest.parity.passed
    graph = onnx.load(str(fp16_bundle / BUNDLE_MODEL)).graph
    producers = {out: node for node in graph.node for out in node.output}
    attention = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    assert len(attention) == manifest.architecture.num_layers
    for node in attention:
        assert len(node.input) <= 7  # nothing from input 10 (attention_bias) on
        ops, pending = set(), [node.input[6]]
        while pending:
            name = pending.pop()
            if name in producers:
                ops.add(producers[name].op_type)
                pending.extend(producers[name].input)
        assert ops <= {"Shape", "Gather", "Cast", "Constant", "Squeeze", "Unsqueeze"}, ops
    past = next(i for i in graph.input if i.name.startswith("past_key_values"))
    assert past.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_fp16_bundle_decodes_like_fp32(fp16_bundle, stepper) -> None:
    ours = greedy_logits(stepper_for(fp16_bundle), PROMPTS, steps=3)
    reference = greedy_logits(stepper, PROMPTS, steps=3)
    for a, b in zip(ours, reference, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-2)


@pytest.mark.parametrize(
    "options, error",
    [
        ({"kv_layout": "shared_right", "optimize": False}, "drop --no_optimize"),
        ({"kv_layout": "shared_right", "quantize": "int8"}, "use --fp16"),
        ({"kv_layout": "shared_right", "logits": "all"}, "last token"),
    ],
)
def test_shared_right_export_errors(tmp_path, tiny_hf_model_dir, options, error) -> None:
    from fst.export.exporter import ExportError, export_bundle

    with pytest.raises(ExportError, match=error):
        export_bundle(tmp_path / "x", model_path=str(tiny_hf_model_dir), progress=False, **options)


# ---- on a GPU only (skipped here) ------------------------------------------------------------


@gpu
def test_cuda_cache_stays_on_the_device_and_matches_the_cpu(fp16_bundle) -> None:
    cuda = stepper_for(fp16_bundle, providers=("cuda",))
    logits, cache = cuda.prefill(PROMPTS, pad_id=0)
    assert cuda.device == "cuda"
    assert all(v.device_name().lower() == "cuda" for v in cache.presents)
    ours = greedy_logits(cuda, PROMPTS, steps=4)
    reference = greedy_logits(stepper_for(fp16_bundle), PROMPTS, steps=4)
    for a, b in zip(ours, reference, strict=True):
        assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.8
        np.testing.assert_allclose(a, b, atol=5e-2)


@gpu
def test_cuda_generator_batches_like_each_prompt_alone(fp16_bundle) -> None:
    generator = Generator.from_bundle(fp16_bundle, providers=["cuda"])
    texts = ["Hello world", "The quick brown fox jumps", "A"]
    batch = generator.generate(texts, temperature=0.0, max_new_tokens=8)
    alone = [generator.generate(t, temperature=0.0, max_new_tokens=8)[0] for t in texts]
    assert [c.token_ids for c in batch] == [c.token_ids for c in alone]
