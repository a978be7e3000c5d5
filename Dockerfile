# diffusion_lib course image: the pinned course environment + JupyterLab, run as a non-root user.
# The same image serves a single user through `docker compose up` (JupyterLab behind a token) and
# a class through JupyterHub (jupyterhub-singleuser, when a spawner starts it; docs/class.md).
#
# GPU and driver: requirements.txt pins torch==2.14.1 / torchvision==0.29.1, whose PyPI wheels
# are CUDA 13.0 builds that bring their own CUDA runtime. The host needs only the NVIDIA driver
# and the NVIDIA Container Toolkit. CUDA 13.x needs a driver of branch R580 or newer
# (NVIDIA lists >= 580.65.06 for CUDA 13.0 on Linux); check with `nvidia-smi`.
# Older driver: rebuild with another CUDA build of the same torch/torchvision versions, e.g.
#   docker compose build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
# (CUDA 12.x builds run on drivers >= 525.60.13; pick a CUDA tag that pytorch.org lists for
# torch 2.14.1). The versions always come from requirements.txt.
#
# Build:  docker compose build       Run: docker compose up       (see docs/docker.md)
# No `# syntax=` line: the Dockerfile uses only what the builder's built-in frontend knows, so it
# builds with BuildKit or the classic builder without pulling a frontend image from a registry.
#
# Base image: the tag plus the digest of its multi-arch index, so that every build starts from
# the same bytes (the tag itself is rebuilt upstream for Debian/Python patch releases; this
# digest is a Python 3.11.16 build). To move to a newer build, on a machine with Docker:
#   docker buildx imagetools inspect python:3.11-slim-bookworm   # "Digest:" line
# and replace the sha256 below (keep the tag: it documents what the digest is). It is a build
# argument so that a machine that cannot reach the registry can build on an equivalent base of
# its own (Debian bookworm, Python 3.11 with pip first on PATH, CA certificates).
ARG BASE_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b
FROM ${BASE_IMAGE}

# Container user; match your host user (id -u / id -g) so files in mounted folders are yours.
ARG USER_UID=1000
ARG USER_GID=1000
# Empty: torch/torchvision from PyPI (CUDA 13). Otherwise a PyTorch wheel index URL.
ARG TORCH_INDEX_URL=""
# Two images from this one file: "instructor" (built from the instructor repository: solutions, hidden
# tests) and "student" (built from the folder `python -m diffusion_lib course release` writes; it holds
# coursework/release_manifest.json). "auto" takes the edition from the build context; "instructor" or
# "student" make the build fail on the wrong context. The edition is written to /etc/diffusion-lib-edition.
ARG COURSE_EDITION=auto
# pip's package index settings, for a build machine that uses a mirror or a proxy with its own CA
# (`docker compose build --build-arg PIP_INDEX_URL=...`). Unset: pip's defaults (PyPI). They apply
# to the build steps only and are not kept in the image's environment; they do show in
# `docker history`, so never put credentials in them.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST
ARG PIP_CERT
# 1: skip the Inception weights step below. For tests/test_docker_image.py alone, on a machine that
# cannot reach the weights' host; such an image cannot score FID / IS / KID. (Declared up here, before
# SHELL: hadolint forgets the bash SHELL after a later ARG.)
ARG TEST_ONLY_NO_INCEPTION_WEIGHTS=0

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    TORCH_HOME=/opt/torch \
    WORKSPACE=/workspace \
    DIFFUSION_LIB_DATA=/workspace/datasets

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

RUN groupadd --non-unique --gid "${USER_GID}" student \
    && useradd --non-unique --uid "${USER_UID}" --gid "${USER_GID}" --create-home --shell /bin/bash student \
    && install -d -o "${USER_UID}" -g "${USER_GID}" /workspace /home/student/.cache "${TORCH_HOME}"

WORKDIR /workspace

# The course environment: exactly the requirements file CI installs, with the same command.
# With TORCH_INDEX_URL, torch/torchvision of the pinned versions come from that index first;
# `pip install -r requirements.txt` then finds them already satisfied.
COPY requirements.txt ./
RUN if [[ -n "${TORCH_INDEX_URL}" ]]; then \
        pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" \
            "$(grep -oE '^torch==[0-9A-Za-z.+!]+' requirements.txt)" \
            "$(grep -oE '^torchvision==[0-9A-Za-z.+!]+' requirements.txt)"; \
    fi \
    && pip install --no-cache-dir -r requirements.txt

# Inception weights for FID / IS / KID (torchmetrics -> torch-fidelity), fetched into the torch
# cache now so that scoring works offline. A failed download fails the build.
# (TEST_ONLY_NO_INCEPTION_WEIGHTS, declared above, skips it for the image test alone.)
RUN if [[ "${TEST_ONLY_NO_INCEPTION_WEIGHTS}" == 1 ]]; then \
        echo "test build: Inception weights not fetched"; \
    else \
        python -c "from torchmetrics.image.fid import FrechetInceptionDistance; FrechetInceptionDistance(feature=2048)" \
        && test -s "${TORCH_HOME}/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth"; \
    fi \
    && chown -R "${USER_UID}:${USER_GID}" "${TORCH_HOME}"

# The project itself (see .dockerignore), its Jupyter kernel, and the entry scripts.
# The kernel takes the name "python3", the kernelspec name the notebooks are stored with, so
# they open on it without a kernel dialog and papermill's `-k python3` runs it too; JupyterLab
# offers only it (docker/jupyter_server_config.py). docker/overrides.json: no news prompt.
COPY --chown=${USER_UID}:${USER_GID} . /workspace
RUN pip install --no-cache-dir --no-deps -e . \
    && python -m ipykernel install --sys-prefix --name python3 --display-name "Python (diffusion_lib)" \
    && install -D -m 0644 docker/overrides.json "$(python -c 'import sys; print(sys.prefix)')/share/jupyter/lab/settings/overrides.json" \
    && chmod 0755 docker/entrypoint.sh docker/start-lab.sh docker/start-singleuser.sh \
    && ln -s /workspace/docker/start-singleuser.sh /usr/local/bin/start-singleuser.sh \
    && chown -R "${USER_UID}:${USER_GID}" /workspace

# The library is installed editable (above), so the notebooks import /workspace/diffusion_lib, the
# folder docker-compose.yml bind-mounts from the host: a student's edits are what runs, and they stay
# on the host across `docker compose down` / `up`.
RUN edition=instructor; \
    if [[ -f coursework/release_manifest.json ]]; then edition=student; fi; \
    if [[ "${COURSE_EDITION}" != auto && "${COURSE_EDITION}" != "${edition}" ]]; then \
        echo "COURSE_EDITION=${COURSE_EDITION}, but the build context is the ${edition} edition" \
             "(build the student image from the release folder)" >&2; \
        exit 1; \
    fi; \
    echo "${edition}" > /etc/diffusion-lib-edition

# NB_USER / NB_UID / NB_GID: the docker-stacks names a JupyterHub admin looks for (docker/entrypoint.sh).
ENV HOME=/home/student \
    NB_USER=student \
    NB_UID=${USER_UID} \
    NB_GID=${USER_GID}
USER ${USER_UID}:${USER_GID}
EXPOSE 8888
# The server's own address: JUPYTER_PORT standalone, JUPYTERHUB_SERVICE_URL when a hub spawned it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/workspace/docker/healthcheck.py"]

ENTRYPOINT ["/workspace/docker/entrypoint.sh"]
CMD ["/workspace/docker/start-lab.sh"]
