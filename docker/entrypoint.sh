#!/usr/bin/env bash
# Container entrypoint: check that the folders mounted from the host are writable by the
# (non-root) container user, then run the command (default: docker/start-lab.sh).
#
# notebooks/, runs/ and outputs/ must be writable (edits and results would be lost otherwise);
# datasets/ may be read-only (a warning only). The usual cause of a failure is a host folder
# owned by another user, e.g. one that Docker created as root because it did not exist.
# The cache folder is a named volume of compose, one per USER_UID/USER_GID (docker-compose.yml), so a
# rebuild with other ids starts on a fresh cache; a volume left from another build is named as the cause.
#
# JupyterHub's docker-stacks convention NB_UID/NB_GID (the user ids asked of the image) is honoured as a
# check: the ids are fixed when the image is built (USER_UID/USER_GID), and a container asked for other
# ids stops with a message instead of running with files owned by somebody else.
set -euo pipefail

workspace="${WORKSPACE:-/workspace}"
cache_dir="${XDG_CACHE_HOME:-${HOME}/.cache}"
uid="$(id -u)"
gid="$(id -g)"
bad=()

for pair in "NB_UID:${uid}" "NB_GID:${gid}"; do
    name="${pair%%:*}"; have="${pair#*:}"; want="${!name:-$have}"
    if [[ "$want" != "$have" ]]; then
        echo "entrypoint: ${name}=${want} was asked for, but this image runs as uid ${uid}, gid ${gid}" \
             "(fixed at build time); rebuild with --build-arg USER_UID=... --build-arg USER_GID=..." >&2
        exit 1
    fi
done

for dir in "${workspace}/notebooks" "${workspace}/runs" "${workspace}/outputs" "${cache_dir}"; do
    mkdir -p "${dir}" 2>/dev/null || true
    if [[ ! -w "${dir}" ]]; then
        bad+=("${dir}")
    fi
done
if [[ -d "${workspace}/datasets" && ! -w "${workspace}/datasets" ]]; then
    echo "entrypoint: warning: ${workspace}/datasets is read-only for uid ${uid};" \
         "datasets that download themselves cannot be stored there." >&2
fi

if (( ${#bad[@]} )); then
    {
        echo "entrypoint: these folders are not writable by the container user (uid ${uid}, gid ${gid}):"
        printf '  %s\n' "${bad[@]}"
        echo "Fix on the host, in the project folder, either:"
        echo "  sudo chown -R ${uid}:${gid} notebooks runs outputs datasets"
        echo "or set USER_UID=\$(id -u) and USER_GID=\$(id -g) in .env and rebuild: docker compose build"
        if [[ " ${bad[*]} " == *" ${cache_dir} "* ]]; then
            echo "${cache_dir} is the named volume 'cache': one left from an image built with other ids."
            echo "Remove it (it holds caches only): docker compose down -v   then: docker compose up -d"
        fi
        echo "(see 'Troubleshooting' in docs/docker.md)."
    } >&2
    exit 1
fi

exec "$@"
