#!/usr/bin/env bash
# Container entrypoint: check that the folders mounted from the host are writable by the
# (non-root) container user, then run the command (default: docker/start-lab.sh).
#
# notebooks/, runs/ and outputs/ must be writable (edits and results would be lost otherwise);
# datasets/ may be read-only (a warning only). The usual cause of a failure is a host folder
# owned by another user, e.g. one that Docker created as root because it did not exist.
set -euo pipefail

workspace="${WORKSPACE:-/workspace}"
cache_dir="${XDG_CACHE_HOME:-${HOME}/.cache}"
uid="$(id -u)"
gid="$(id -g)"
bad=()

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
        echo "(see 'Troubleshooting' in the README's docker section)."
    } >&2
    exit 1
fi

exec "$@"
