"""Running the graph through IO binding, and moving KV cache tensors in and out of ONNX Runtime.

The one place where fst.runtime touches ONNX Runtime internals, and why: the public
`IOBinding` wrapper rebuilds a device object for every output it binds and wraps every
output in a Python `OrtValue`; a step binds ~2 values per layer, so that Python time is a
visible part of a small model's step (the "Python overhead" of
benchmarks/results/latency-gpt2small-9engines-epyc-quiet-passive.md). `OrtIO` is the one
implementation; the handful of calls that differ go through a thin shim: `CLevelCalls`
drives the C-level binding (`session._sess`, `IOBinding._iobinding`,
`OrtDevice._get_c_device`, `OrtValue._ortvalue`) with devices made once, and if a future
onnxruntime drops one of those attributes, `make_io` falls back to `PublicCalls`, the same
calls through the public API only. Values handed out `bind` back as inputs, and
`.numpy()` of a CPU value is a view (no copy).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)


class PublicCalls:
    """The calls `OrtIO` makes, through onnxruntime's public API (the fallback)."""

    def __init__(self, session: ort.InferenceSession, cache_device: str) -> None:
        self.session = session
        self.cpu: Any = "cpu"  # devices as the binding's bind_output takes them
        self.cache: Any = cache_device

    def new_binding(self) -> Any:
        return self.session.io_binding()

    @staticmethod
    def bind_array(binding: Any, name: str, array: np.ndarray) -> None:
        binding.bind_cpu_input(name, array)

    def run(self, binding: Any) -> None:
        self.session.run_with_iobinding(binding)

    @staticmethod
    def value(value: ort.OrtValue) -> Any:
        """A public `ort.OrtValue` in the form the binding takes (here: itself)."""
        return value


class CLevelCalls(PublicCalls):
    """The same calls on the C-level binding (private attributes, checked at construction)."""

    def __init__(self, session: ort.InferenceSession, cache_device: str) -> None:
        super().__init__(session, cache_device)
        # Every private attribute is touched here, so a missing one fails now, not mid-run.
        self._c_session = session._sess
        self._c_session.run_with_iobinding  # noqa: B018
        binding = session.io_binding()._iobinding
        for name in ("bind_input", "bind_ortvalue_input", "bind_output", "bind_ortvalue_output"):
            getattr(binding, name)
        binding.clear_binding_inputs  # noqa: B018
        binding.clear_binding_outputs  # noqa: B018
        self.cpu = ort.OrtDevice.make("cpu", 0)._get_c_device()
        self.cache = ort.OrtDevice.make(cache_device, 0)._get_c_device()
        ort.OrtValue.ortvalue_from_numpy(np.zeros(1, np.float32))._ortvalue  # noqa: B018

    def new_binding(self) -> Any:
        return self.session.io_binding()._iobinding

    @staticmethod
    def bind_array(binding: Any, name: str, array: np.ndarray) -> None:
        binding.bind_input(name, array)

    def run(self, binding: Any) -> None:
        self._c_session.run_with_iobinding(binding, None)

    @staticmethod
    def value(value: Any) -> Any:
        """The C value of an `ort.OrtValue` (a C value already: itself)."""
        return value._ortvalue if isinstance(value, ort.OrtValue) else value


class OrtIO:
    """Runs the session through IO binding: numpy inputs, cache values kept in ORT's hands."""

    def __init__(
        self,
        calls: PublicCalls,
        cpu_outputs: Sequence[str],
        cache_outputs: Sequence[str],
        cache_device: str,
    ) -> None:
        self.calls = calls
        self.cpu_outputs = list(cpu_outputs)
        self.cache_outputs = list(cache_outputs)
        self.cache_device = cache_device
        # One binding for the session's life, cleared after each run (building a binding
        # every step costs Python time). The lock keeps a Generator shared by threads
        # correct: their runs take turns.
        self._binding = calls.new_binding()
        self._lock = threading.Lock()

    def run(
        self,
        arrays: Mapping[str, np.ndarray],
        values: Mapping[str, Any],
        into: Sequence[Any] | None = None,
    ) -> list[Any]:
        """Run once; `arrays` are numpy inputs, `values` cache values from earlier runs.

        Returns the outputs in order: `cpu_outputs` (on the CPU), then `cache_outputs` (on
        the cache device) — or, when `into` gives one value per cache output to write into
        (the shared KV layout binds each present to its past buffer), `cpu_outputs` only.
        The numpy inputs must stay referenced until it returns.
        """
        calls = self.calls
        with self._lock:
            binding = self._binding
            try:
                for name, array in arrays.items():
                    calls.bind_array(binding, name, array)
                for name, value in values.items():
                    binding.bind_ortvalue_input(name, value)
                for name in self.cpu_outputs:
                    binding.bind_output(name, calls.cpu)
                if into is not None:
                    for name, value in zip(self.cache_outputs, into, strict=True):
                        binding.bind_ortvalue_output(name, value)
                else:
                    for name in self.cache_outputs:
                        binding.bind_output(name, calls.cache)
                calls.run(binding)
                outputs = binding.get_outputs()
                # Values written `into` are the caller's already: not wrapped again.
                count = len(self.cpu_outputs) if into is not None else len(outputs)
                return [outputs[i] for i in range(count)]
            finally:
                # Drop the binding's references at once: it would otherwise keep the
                # previous step's KV cache (inputs) and this step's (outputs) alive.
                binding.clear_binding_inputs()
                binding.clear_binding_outputs()

    def from_numpy(self, array: np.ndarray) -> Any:
        """A cache value holding `array` (on the CPU: its memory, not a copy; keep it alive)."""
        return self.calls.value(ort.OrtValue.ortvalue_from_numpy(array, self.cache_device))

    def step_binding(
        self, input_names: Sequence[str], values: Sequence[Any], cpu_out: Sequence[np.ndarray]
    ) -> Any:
        """A binding kept across the decode steps of one cache, its cache bound once:
        `values` as the inputs `input_names` and as the cache outputs (in order), the CPU
        outputs written into the numpy arrays `cpu_out` (the caller keeps them alive).
        `run_step` then binds only the step's arrays.
        """
        binding = self.calls.new_binding()
        for name, value in zip(input_names, values, strict=True):
            binding.bind_ortvalue_input(name, value)
        for name, array in zip(self.cpu_outputs, cpu_out, strict=True):
            binding.bind_ortvalue_output(
                name, self.calls.value(ort.OrtValue.ortvalue_from_numpy(array))
            )
        for name, value in zip(self.cache_outputs, values, strict=True):
            binding.bind_ortvalue_output(name, value)
        return binding

    def run_step(self, binding: Any, arrays: Mapping[str, np.ndarray]) -> None:
        """Run with a `step_binding` and this step's `arrays` (numpy, referenced until it
        returns) bound as the other inputs."""
        for name, array in arrays.items():
            self.calls.bind_array(binding, name, array)
        self.calls.run(binding)

    @staticmethod
    def to_numpy(value: Any) -> np.ndarray:
        """The value as numpy: a view on the CPU, a copy from a GPU."""
        return value.numpy()

    def bindable(self, value: ort.OrtValue) -> Any:
        """A public `ort.OrtValue` in the form `step_binding` takes."""
        return self.calls.value(value)


def make_io(
    session: ort.InferenceSession,
    cpu_outputs: Sequence[str],
    cache_outputs: Sequence[str],
    cache_device: str,
    public: bool = False,
) -> OrtIO:
    """`OrtIO` on the C-level calls when this onnxruntime still has them, else the public."""
    calls: PublicCalls | None = None
    if not public:
        try:
            calls = CLevelCalls(session, cache_device)
        except AttributeError as exc:
            log.info("onnxruntime internals changed (%s): using the public IO binding API", exc)
    if calls is None:
        calls = PublicCalls(session, cache_device)
    return OrtIO(calls, cpu_outputs, cache_outputs, cache_device)
