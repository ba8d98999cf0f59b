#!/usr/bin/env bash
# Run a built fst-serve image's entrypoint without a container runtime, where podman can
# build images but not run them (on the machine this was written on, crun fails on
# setrlimit). Needs root.
#
#   sudo deploy/chroot-smoke.sh localhost/fst-serve:0.3.0 data/bundles/demo
#
# The image's file system (`podman create` + `podman mount`) becomes a chroot; the bundle
# is bind-mounted read-only at /models/bundle and fst-serve runs as the image's user with
# the image's environment (ENV, ENTRYPOINT and CMD read from the image; only FST_HOST is
# 127.0.0.1 and FST_PORT a free port). Checks: /ready within 120 s, one completion, the
# image's HEALTHCHECK command, exit status 0 on its STOPSIGNAL. Everything it mounts or
# creates is removed on exit. No namespaces or cgroups: it proves the files, not isolation.
set -euo pipefail

IMAGE="${1:?usage: chroot-smoke.sh IMAGE BUNDLE}"
BUNDLE="$(realpath "${2:?usage: chroot-smoke.sh IMAGE BUNDLE}")"
name="fst-chroot-smoke-$$"
root=""
pid=""

cleanup() {
    [ -n "$pid" ] && kill -KILL "$pid" 2> /dev/null || true
    if [ -n "$root" ]; then
        umount "$root/proc" 2> /dev/null || true
        umount "$root/models/bundle" 2> /dev/null || true
    fi
    podman umount "$name" > /dev/null 2>&1 || true
    podman rm "$name" > /dev/null 2>&1 || true
}
trap cleanup EXIT

inspect() { podman image inspect "$IMAGE" --format "$1"; }
user="$(inspect '{{.Config.User}}')"
workdir="$(inspect '{{.Config.WorkingDir}}')"
stopsignal="$(inspect '{{.Config.StopSignal}}')"
mapfile -t env < <(inspect '{{range .Config.Env}}{{println .}}{{end}}' | sed '/^$/d')
mapfile -t command < <(inspect '{{range .Config.Entrypoint}}{{println .}}{{end}}{{range .Config.Cmd}}{{println .}}{{end}}' | sed '/^$/d')
mapfile -t healthcheck < <(inspect '{{range .HealthCheck.Test}}{{println .}}{{end}}' | sed '/^$/d')
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

podman create --name "$name" "$IMAGE" > /dev/null
root="$(podman mount "$name")"
mkdir -p "$root/models/bundle" "$root/proc"
mount --bind "$BUNDLE" "$root/models/bundle"
mount -o remount,bind,ro "$root/models/bundle"
mount -t proc proc "$root/proc"

run_env=(env -i "${env[@]}" FST_HOST=127.0.0.1 "FST_PORT=$port")
echo "== ${command[*]} as $user in $workdir, port $port"
chroot --userspec="$user" "$root" "${run_env[@]}" /bin/sh -c 'cd "$0" && exec "$@"' \
    "$workdir" "${command[@]}" &
pid=$!

base="http://127.0.0.1:$port"
get() { python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).status)' "$1" 2> /dev/null || true; }
for _ in $(seq 1 120); do
    [ "$(get "$base/ready")" = 200 ] && break
    kill -0 "$pid" 2> /dev/null || { echo "chroot-smoke: fst-serve exited" >&2; exit 1; }
    sleep 1
done
[ "$(get "$base/ready")" = 200 ] || { echo "chroot-smoke: not ready in 120 s" >&2; exit 1; }
echo "== /ready 200"
python3 - "$base" << 'PY'
import json, sys, urllib.request
body = json.dumps({"prompt": "The with statement", "max_tokens": 8, "temperature": 0}).encode()
request = urllib.request.Request(sys.argv[1] + "/v1/completions", body, {"content-type": "application/json"})
choice = json.load(urllib.request.urlopen(request, timeout=60))["choices"][0]
assert choice["finish_reason"] == "length" and choice["text"], choice
print("== completion:", repr(choice["text"]))
PY
[ "${healthcheck[0]}" = CMD ] || { echo "chroot-smoke: HEALTHCHECK is not exec form" >&2; exit 1; }
chroot --userspec="$user" "$root" "${run_env[@]}" "${healthcheck[@]:1}"
echo "== HEALTHCHECK passed"
kill -s "${stopsignal#SIG}" "$pid"
status=0
wait "$pid" || status=$?
pid=""
[ "$status" = 0 ] || { echo "chroot-smoke: exit status $status on $stopsignal" >&2; exit 1; }
echo "== exit 0 on $stopsignal"
