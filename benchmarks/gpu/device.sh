#!/usr/bin/env bash
# Runs ON THE DEVICE MACHINE (see transfer.md), in the copy of the repository root.
#
#   bash benchmarks/gpu/device.sh stash   # keep this call's .gpu_transfer/ files in /tmp/fst-gpu
#   bash benchmarks/gpu/device.sh run     # stash, join + install the wheel, check CUDA, test, bench
#
# `run` writes into $OUT (what comes back): providers.txt, pytest.log, gpu.json, gpu.md, run.log.
# BUDGET_S (default 300) is benchmarks/gpu/run.py's wall-clock budget; GPU_ARGS adds arguments.
set -uo pipefail
KEEP=/tmp/fst-gpu
OUT=${OUT:-/tmp/fst-gpu-out}
mkdir -p "$KEEP" "$OUT"

stash() {
  if [ -d .gpu_transfer ]; then cp -r .gpu_transfer/. "$KEEP/"; fi
  echo "kept in $KEEP:"; ls -la "$KEEP" "$KEEP/deps" 2>/dev/null | grep -v '^total'
}

install() {
  # shellcheck disable=SC1091
  . "$KEEP/deps/MANIFEST" || { echo "no MANIFEST: the first call (with deps) did not land" >&2; return 3; }
  local missing=0
  for i in $(seq 0 $((PARTS - 1))); do
    [ -f "$(printf '%s/ort.part%02d' "$KEEP" "$i")" ] || { echo "missing part $i" >&2; missing=1; }
  done
  [ "$missing" -eq 0 ] || { echo "parts missing: the machine went cold? start again at call 1" >&2; return 3; }
  cat "$KEEP"/ort.part* > "$KEEP/$WHEEL"
  echo "$SHA256  $KEEP/$WHEEL" | sha256sum -c - || return 3
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$KEEP/site" "$KEEP/$WHEEL" "$KEEP"/deps/*.whl || return 3
  # fst from this tree, as its pyproject maps it (fst/, export/ -> fst.export, ...), no build.
  rm -rf "$KEEP/src" && mkdir -p "$KEEP/src/fst"
  for f in "$PWD"/fst/*; do ln -s "$f" "$KEEP/src/fst/"; done
  for d in export runtime serving; do ln -s "$PWD/$d" "$KEEP/src/fst/$d"; done
}

check_cuda() {
  python3 - <<'PY'
import torch  # first: loads the CUDA libraries that onnxruntime's CUDA provider links
import numpy as np, onnx, onnxruntime as ort
from onnx import TensorProto, helper
print("onnxruntime", ort.__version__, "from", ort.__file__)
print("providers", ort.get_available_providers())
if hasattr(ort, "preload_dlls"):
    ort.preload_dlls()
assert "CUDAExecutionProvider" in ort.get_available_providers(), "no CUDAExecutionProvider"
node = helper.make_node("Add", ["x", "x"], ["y"])
graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [4])])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
s = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"])
print("session providers", s.get_providers())
assert s.get_providers()[0] == "CUDAExecutionProvider", "the session fell back to the CPU"
print("ran on CUDA:", s.run(None, {"x": np.ones(4, np.float16)})[0])
PY
}

case "${1:-}" in
  stash) stash; nvidia-smi -L 2>/dev/null || true ;;
  run)
    exec > >(tee "$OUT/run.log") 2>&1
    stash
    install || exit $?
    export PYTHONPATH="$KEEP/src:$KEEP/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    check_cuda 2>&1 | tee "$OUT/providers.txt"
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "CUDA provider check failed" >&2; exit 4; }
    timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_device_kv.py -k "cuda or fp16" \
      -rs 2>&1 | tee "$OUT/pytest.log"
    timeout $(( ${BUDGET_S:-300} + 45 )) python3 -m benchmarks.gpu.run --budget-s "${BUDGET_S:-300}" \
      --out-dir "$OUT" ${GPU_ARGS:-}
    echo "benchmarks.gpu.run exit $?"
    ;;
  *) echo "usage: $0 stash|run" >&2; exit 2 ;;
esac
