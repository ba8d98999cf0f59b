"""Running the graph through IO binding, and moving KV cache tensors in and out of ONNX Runtime.

The one place where fst.runtime touches ONNX Runtime internals, and why: the public
`IOBinding` wrapper rebuilds a device object for every output it binds and wraps every
output in a Python `OrtValue`; a GPT-2 small step binds ~50 names, and that costs about
2.5x the C-level binding's Python time (measured ~115-145 vs ~50-60 us a step). `FastIO`
therefore drives the C-level binding (`session._sess`, `IOBinding._iobinding`,
`OrtDevice._get_c_device`, `OrtValue._ortvalue`) with devices made once. If a future
onnxruntime drops one of those attributes, `make_io` falls back to `PublicIO`, which does
the same with the public API only. Both hand out values that `bind` back as inputs, and
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


class PublicIO:
    """IO binding with onnxruntime's public API only (the fallback; slower per step)."""

    def __init__(
        self,
        session: ort.InferenceSession,
        cpu_outputs: Sequence[str],
        cache_outputs: Sequence[str],
        cache_device: str,
    ) -> None:
        self.session = session
        self.cpu_outputs = list(cpu_outputs)
        self.cache_outputs = list(cache_outputs)
        self.cache_device = cache_device

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
        binding = self.session.io_binding()
        for name, array in arrays.items():
            binding.bind_cpu_input(name, array)
        for name, value in values.items():
            binding.bind_ortvalue_input(name, value)
        self._bind_outputs(binding, "cpu", self.cache_device, into)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        return outputs[: len(self.cpu_outputs)] if into is not None else outputs

    def _bind_outputs(self, binding, cpu: Any, cache: Any, into: Sequence[Any] | None) -> None:
        """`cpu_outputs` on the `cpu` device; `cache_outputs` written into the values `into`,
        or on the `cache` device (devices as `binding`'s bind_output takes them)."""
        for name in self.cpu_outputs:
            binding.bind_output(name, cpu)
        if into is not None:
            for name, value in zip(self.cache_outputs, into, strict=True):
                binding.bind_ortvalue_output(name, value)
        else:
            for name in self.cache_outputs:
                binding.bind_output(name, cache)

    def from_numpy(self, array: np.ndarray) -> Any:
        """A cache value holding `array` (on the CPU: its memory, not a copy; keep it alive)."""
        return ort.OrtValue.ortvalue_from_numpy(array, self.cache_device)

    def step_binding(
        self, input_names: Sequence[str], values: Sequence[Any], cpu_out: Sequence[np.ndarray]
    ) -> Any:
        """A binding kept across the decode steps of one shared-layout cache, its cache
        bound once: `values` as the inputs `input_names` and as the cache outputs (in order),
        the CPU outputs written into the numpy arrays `cpu_out` (the caller keeps them
        alive). Rebinding ~50 values every step cost ~80 us of a GPT-2 small step;
        `run_step` binds only the step's arrays.
        """
        binding = self.session.io_binding()
        for name, value in zip(input_names, values, strict=True):
            binding.bind_ortvalue_input(name, value)
        for name, array in zip(self.cpu_outputs, cpu_out, strict=True):
            binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(array))
        for name, value in zip(self.cache_outputs, values, strict=True):
            binding.bind_ortvalue_output(name, value)
        return binding

    def run_step(self, binding: Any, arrays: Mapping[str, np.ndarray]) -> None:
        """Run with a `step_binding` and this step's `arrays` (numpy, referenced until it
        returns) bound as the other inputs."""
        for name, array in arrays.items():
            binding.bind_cpu_input(name, array)
        self.session.run_with_iobinding(binding)

    @staticmethod
    def to_numpy(value: Any) -> np.ndarray:
        """The value as numpy: a view on the CPU, a copy from a GPU."""
        return value.numpy()

    @staticmethod
    def bindable(value: ort.OrtValue) -> Any:
        """A public `ort.OrtValue` in the form `step_binding` takes (here: itself)."""
        return value


class FastIO(PublicIO):
    """The same through the C-level binding (private attributes, checked at construction)."""

    def __init__(
        self,
        session: ort.InferenceSession,
        cpu_outputs: Sequence[str],
        cache_outputs: Sequence[str],
        cache_device: str,
    ) -> None:
        super().__init__(session, cpu_outputs, cache_outputs, cache_device)
        # Every private attribute is touched here, so a missing one fails now, not mid-run.
        self._c_session = session._sess
        self._c_session.run_with_iobinding  # noqa: B018
        session.io_binding()._iobinding  # noqa: B018
        self._cpu = ort.OrtDevice.make("cpu", 0)._get_c_device()
        self._cache = ort.OrtDevice.make(cache_device, 0)._get_c_device()
        ort.OrtValue.ortvalue_from_numpy(np.zeros(1, np.float32))._ortvalue  # noqa: B018
        # One binding for the session's life, cleared after each run: building the Python
        # IOBinding wrapper cost ~30 us a step. The lock keeps a Generator shared by
        # threads correct (their runs take turns).
        self._binding = session.io_binding()._iobinding
        self._lock = threading.Lock()
        self._binding.clear_binding_inputs  # noqa: B018
        self._binding.clear_binding_outputs  # noqa: B018
        self._binding.bind_ortvalue_output  # noqa: B018

    def run(
        self,
        arrays: Mapping[str, np.ndarray],
        values: Mapping[str, Any],
        into: Sequence[Any] | None = None,
    ) -> list[Any]:
        with self._lock:
            binding = self._binding
            try:
                for name, array in arrays.items():
                    binding.bind_input(name, array)
                for name, value in values.items():
                    binding.bind_ortvalue_input(name, value)
                self._bind_outputs(binding, self._cpu, self._cache, into)
                self._c_session.run_with_iobinding(binding, None)
                outputs = binding.get_outputs()
                # Values written `into` are the caller's already: wrapping them again in
                # Python objects cost ~45 us a GPT-2 small step.
                count = len(self.cpu_outputs) if into is not None else len(outputs)
                return [outputs[i] for i in range(count)]
            finally:
                # Drop the binding's references at once: it would otherwise keep the
                # previous step's KV cache (inputs) and this step's (outputs) alive.
                binding.clear_binding_inputs()
                binding.clear_binding_outputs()

    def from_numpy(self, array: np.ndarray) -> Any:
        return ort.OrtValue.ortvalue_from_numpy(array, self.cache_device)._ortvalue

    def step_binding(
        self, input_names: Sequence[str], values: Sequence[Any], cpu_out: Sequence[np.ndarray]
    ) -> Any:
        binding = self.session.io_binding()._iobinding
        for name, value in zip(input_names, values, strict=True):
            binding.bind_ortvalue_input(name, value)
        for name, array in zip(self.cpu_outputs, cpu_out, strict=True):
            binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(array)._ortvalue)
        for name, value in zip(self.cache_outputs, values, strict=True):
            binding.bind_ortvalue_output(name, value)
        return binding

    def run_step(self, binding: Any, arrays: Mapping[str, np.ndarray]) -> None:
        for name, array in arrays.items():
            binding.bind_input(name, array)
        self._c_session.run_with_iobinding(binding, None)

    @staticmethod
    def bindable(value: ort.OrtValue) -> Any:
        return value._ortvalue


def make_io(
    session: ort.InferenceSession,
    cpu_outputs: Sequence[str],
    cache_outputs: Sequence[str],
    cache_device: str,
    public: bool = False,
) -> PublicIO:
    """`FastIO` when this onnxruntime still has the attributes it needs, else `PublicIO`."""
    if not public:
        try:
            return FastIO(session, cpu_outputs, cache_outputs, cache_device)
        except AttributeError as exc:
            log.info("onnxruntime internals changed (%s): using the public IO binding API", exc)
    return PublicIO(session, cpu_outputs, cache_outputs, cache_device)
