#!/usr/bin/env bash
# Build the fst-serve image with podman where no container registry is reachable.
#
#   sudo deploy/build-image.sh [TAG]          # default tag: localhost/fst-serve:<version>
#
# `FROM python:3.11-slim` cannot be pulled without a registry, so this script makes the
# base itself: a Debian bookworm rootfs (mmdebstrap, minbase + python3.11 + venv; bookworm's
# python3 is 3.11, the same minor version as python:3.11-slim), `podman import`-ed as a local
# image and passed to deploy/Containerfile as PYTHON_IMAGE. RUN steps use chroot isolation
# (no user namespaces or cgroups needed); pip still needs PyPI. The build context is
# `git archive HEAD`: the tracked files only, never .venv or data/.
#
# Where a registry is reachable, the script is not needed:
#   docker build -f deploy/Containerfile -t fst-serve .
# Not run in CI. Needs: podman, mmdebstrap, git, root (or a rootless podman set-up).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/pyproject.toml")"
TAG="${1:-localhost/fst-serve:$VERSION}"
BASE="${FST_BASE_IMAGE:-localhost/fst-python-base:3.11-bookworm}"
MIRROR="${FST_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# A CA bundle pip must trust inside the build (a TLS-intercepting proxy, as on the machine
# this was written on): bind-mounted for the RUN steps with a pip.conf naming it, so it
# never lands in a layer. Default: pip's own setting on this host, if any.
CA_BUNDLE="${FST_BUILD_CA_BUNDLE:-${PIP_CERT:-}}"

for tool in podman mmdebstrap git; do
    command -v "$tool" > /dev/null || { echo "build-image.sh: $tool is not installed" >&2; exit 2; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if ! podman image exists "$BASE"; then
    echo "== base image $BASE (mmdebstrap bookworm)"
    # python-is-python3: `python` as in python:3.11-slim; passwd: useradd; ca-certificates: pip.
    mmdebstrap --variant=minbase \
        --include=python3,python3-venv,python-is-python3,ca-certificates,passwd \
        --aptopt='APT::Install-Recommends "false"' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        bookworm "$work/rootfs.tar" "$MIRROR"
    podman import --change 'CMD ["python3"]' "$work/rootfs.tar" "$BASE"
fi

echo "== context: git archive HEAD"
mkdir "$work/context"
git -C "$REPO" archive HEAD | tar -x -C "$work/context"

mounts=()
if [ -n "$CA_BUNDLE" ]; then
    cp "$CA_BUNDLE" "$work/ca.crt"
    printf '[global]\ncert = /run/fst-build/ca.crt\n' > "$work/pip.conf"
    mounts=(--volume "$work/ca.crt:/run/fst-build/ca.crt:ro" --volume "$work/pip.conf:/etc/pip.conf:ro")
fi

echo "== podman build $TAG"
start=$(date +%s)
podman build --isolation=chroot --format docker "${mounts[@]}" \
    --build-arg "PYTHON_IMAGE=$BASE" \
    -f "$work/context/deploy/Containerfile" -t "$TAG" "$work/context"
echo "== built $TAG in $(( $(date +%s) - start )) s"
podman image inspect "$TAG" --format '{{.Size}}' | awk '{printf "== image size: %.0f MB\n", $1 / 1e6}'
