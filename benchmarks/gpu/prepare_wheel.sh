#!/usr/bin/env bash
# Prepare what a device call cannot download: the onnxruntime-gpu wheel (~256 MB, split into
# parts that fit one call each) and pydantic's wheels (the device image has no pydantic).
# Run HERE, in the root of the checkout that the device tool sends (see transfer.md):
#
#   bash benchmarks/gpu/prepare_wheel.sh            # downloads into /work/gpu-wheel, stages .gpu_transfer/
#
# Downloads stay OUTSIDE the repository (DOWNLOAD, never committed); the parts are staged in
# .gpu_transfer/, which this script adds to the repository's info/exclude (never committed,
# carried by the device calls). It ends by printing the exact call sequence.
set -euo pipefail

ORT_VERSION=${ORT_VERSION:-1.31.1}
DOWNLOAD=${DOWNLOAD:-/work/gpu-wheel}
STAGE=.gpu_transfer
PY=${PY:-python3}
LIMIT_MIB=64           # what one device call carries: the working tree + the carried paths
MARGIN_MIB=2           # room for files that appear in the tree meanwhile
MAX_PART_MIB=55
# pydantic for the device's Python 3.12 (the versions this project is tested with here).
DEPS=(pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

[ -f pyproject.toml ] && [ -d benchmarks/gpu ] || { echo "run me in the repository root" >&2; exit 2; }
mkdir -p "$DOWNLOAD/deps"
case "$(realpath "$DOWNLOAD")/" in "$(realpath .)"/*) echo "DOWNLOAD must be outside the repo" >&2; exit 2;; esac

wheel=$(ls "$DOWNLOAD"/onnxruntime_gpu-"$ORT_VERSION"-cp312-cp312-manylinux*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
  "$PY" -m pip download "onnxruntime-gpu==$ORT_VERSION" --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp "${PLATFORMS[@]}" -d "$DOWNLOAD"
  wheel=$(ls "$DOWNLOAD"/onnxruntime_gpu-"$ORT_VERSION"-cp312-cp312-manylinux*.whl | head -1)
fi
"$PY" -m pip download "${DEPS[@]}" --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp "${PLATFORMS[@]}" -d "$DOWNLOAD/deps" -q

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF "/$STAGE/" "$exclude" 2>/dev/null || echo "/$STAGE/" >> "$exclude"
rm -rf "$STAGE" && mkdir -p "$STAGE/deps"
cp "$DOWNLOAD"/deps/*.whl "$STAGE/deps/"

# What travels besides the parts: tracked + untracked-not-ignored files (and shared/, if any).
tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
deps=$(du -cb "$STAGE"/deps/*.whl | tail -1 | cut -f1)
mib=$((1024 * 1024))
part_mib=$(( (LIMIT_MIB * mib - tree - deps) / mib - MARGIN_MIB ))
[ "$part_mib" -gt "$MAX_PART_MIB" ] && part_mib=$MAX_PART_MIB
[ "$part_mib" -ge 8 ] || { echo "the working tree ($((tree / mib)) MiB) leaves no room for parts" >&2; exit 2; }
split -b "${part_mib}M" -d -a 2 "$wheel" "$STAGE/ort.part"
parts=$(ls "$STAGE"/ort.part* | wc -l)
sha=$(sha256sum "$wheel" | cut -d' ' -f1)
cat > "$STAGE/deps/MANIFEST" <<MANIFEST
WHEEL=$(basename "$wheel")
SHA256=$sha
PARTS=$parts
MANIFEST

echo "wheel: $wheel ($(du -m "$wheel" | cut -f1) MB, sha256 $sha)"
echo "tree: $((tree / mib)) MiB; parts: $parts x <= $part_mib MiB; deps: $((deps / 1024)) KiB"
echo
echo "Device calls, back to back (the machine stays warm 30 s after each; see transfer.md):"
last=$((parts - 1))
for i in $(seq 0 "$last"); do
  p=$(printf "%s/ort.part%02d" "$STAGE" "$i")
  carry="[\"$p\"]"
  [ "$i" -eq 0 ] && carry="[\"$STAGE/deps\", \"$p\"]"
  if [ "$i" -lt "$last" ]; then
    echo "  $((i + 1)). run(carry=$carry, timeout_s=120, command=\"bash benchmarks/gpu/device.sh stash\")"
  else
    echo "  $((i + 1)). run(carry=$carry, timeout_s=540, command=\"bash benchmarks/gpu/device.sh run\")"
  fi
done
echo "  then: give_back(); cp /work/.device/.../results/gpu.{json,md} benchmarks/results/ (files_at)"
