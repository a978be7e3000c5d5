"""Open pretrained diffusers pipelines: a local folder, the local Hugging Face cache, or the hub.

:func:`load_pretrained_pipeline` loads a local folder, the local Hugging Face cache, or (when the hub
answers within seconds, :func:`hub_offline_reason`) a hub name such as ``"google/ddpm-cifar10-32"``;
offline it says what it would have loaded and returns None (or raises
:class:`PretrainedUnavailableError`). :func:`pipeline_sample` runs any such pipeline with a chosen
scheduler, steps and guidance and returns its images in the library's convention (float32
(N, C, H, W) in [-1, 1], converted by :func:`diffusion_lib.images.from_uint8`).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..device import resolve_device
from ..images import from_uint8
from .schedulers import scheduler_class

HUB_PROBE_TIMEOUT_S = 5.0
_TRUE = {"1", "ON", "YES", "TRUE"}


class PretrainedUnavailableError(RuntimeError):
    """A pretrained pipeline is neither on disk nor downloadable; the message says what would have been loaded."""


def hub_offline_reason(name: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the Hugging Face hub cannot serve ``name`` now, or None when it answers.

    ``HF_HUB_OFFLINE=1`` counts as offline without any network access; otherwise the hub
    (``HF_ENDPOINT``, default https://huggingface.co) is probed with a HEAD request in a daemon
    thread, so even a hanging DNS lookup gives up after ``timeout`` seconds.

    Args:
        name: a repository id, e.g. "google/ddpm-cifar10-32".
        timeout: seconds to wait for the hub.

    Returns:
        None when the hub answered (any HTTP status), else a one-line reason.
    """
    from huggingface_hub import constants

    from ..data.torchvision_sources import probe

    if os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE or constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")
    failure = probe(f"{endpoint}/api/models/{name}", timeout=timeout)
    return None if failure is None else f"{endpoint} unreachable: {failure}"


def _from_pretrained(name_or_path, **kwargs) -> DiffusionPipeline:
    """``DiffusionPipeline.from_pretrained``, without diffusers' warning when accelerate is missing."""
    if importlib.util.find_spec("accelerate") is None:
        kwargs.setdefault("low_cpu_mem_usage", False)  # without accelerate diffusers would warn and do this itself
    return DiffusionPipeline.from_pretrained(name_or_path, **kwargs)


def load_pretrained_pipeline(name_or_path: str | os.PathLike, device: str | torch.device = "auto",
                             offline_ok: bool = True, timeout: float = HUB_PROBE_TIMEOUT_S,
                             **from_pretrained_kwargs) -> DiffusionPipeline | None:
    """Open a diffusers pipeline: a local folder, the local Hugging Face cache, or the hub.

    Order: (1) an existing folder (``save_pretrained`` output of diffusers or of this module);
    (2) the local cache (``HF_HOME``; the Docker image can pre-download weights there), without
    network; (3) the hub, only if :func:`hub_offline_reason` finds it answering within ``timeout``
    seconds. Nothing blocks for longer than that when the network is down.

    Args:
        name_or_path: a folder, or a hub name such as "google/ddpm-cifar10-32" (unconditional DDPM,
            32x32 CIFAR-10) or a text-to-image pipeline (GPU recommended).
        device: "auto" or a torch device.
        offline_ok: when the pipeline cannot be had, warn and return None (True) or raise (False).
        timeout: seconds allowed for the hub check.
        **from_pretrained_kwargs: passed to ``DiffusionPipeline.from_pretrained`` (``torch_dtype``, ``variant``, ...).

    Returns:
        the pipeline on ``device``, or None (offline, ``offline_ok``).

    Raises:
        PretrainedUnavailableError: not on disk and the hub unreachable, with ``offline_ok=False``.
        FileNotFoundError: a path-like name (starting with ".", "/" or "~") that does not exist.
        ValueError: a name that is neither a folder nor a hub repository id.
    """
    device = resolve_device(device)
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return _from_pretrained(path, local_files_only=True, **from_pretrained_kwargs).to(device)
    if text.startswith((".", "/", "~")) or isinstance(name_or_path, Path):
        raise FileNotFoundError(f"pipeline folder {path} does not exist")
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", text):
        raise ValueError(f"{text!r} is neither an existing folder nor a Hugging Face repository id like "
                         "'google/ddpm-cifar10-32'")
    try:
        return _from_pretrained(text, local_files_only=True, **from_pretrained_kwargs).to(device)
    except OSError:
        pass  # not in the local cache
    reason = hub_offline_reason(text, timeout)
    if reason is None:
        return _from_pretrained(text, **from_pretrained_kwargs).to(device)
    from huggingface_hub import constants

    message = (f"pretrained pipeline {text!r} is not available: it is not in the local Hugging Face cache "
               f"({constants.HF_HUB_CACHE}) and the hub cannot be reached ({reason}). Online, this would have "
               f"downloaded https://huggingface.co/{text} and loaded it with DiffusionPipeline.from_pretrained. "
               "To use it offline, run `DiffusionPipeline.from_pretrained(name)` once where the network works "
               "(the Docker image can do this at build time) and copy that cache folder here.")
    if offline_ok:
        warnings.warn(message, stacklevel=2)
        return None
    raise PretrainedUnavailableError(message)


@torch.no_grad()
def pipeline_sample(pipeline: DiffusionPipeline, *, num_inference_steps: int = 50, batch_size: int = 8,
                    scheduler: str | SchedulerMixin | None = None, guidance_scale: float | None = None,
                    prompt: str | list[str] | None = None, generator: torch.Generator | None = None,
                    **call_kwargs) -> torch.Tensor:
    """Run a diffusers pipeline once and return its images in the library's convention.

    Args:
        pipeline: e.g. from :func:`load_pretrained_pipeline` or ``DDPMPipeline.from_pretrained``.
        num_inference_steps: sampler steps.
        batch_size: images (``batch_size`` of unconditional pipelines, ``num_images_per_prompt`` of text ones).
        scheduler: a name/class of :data:`SCHEDULERS` (built with ``from_config`` on the pipeline's
            scheduler config, so the betas stay the same) or a scheduler object; it replaces
            ``pipeline.scheduler`` (kept for later calls). None keeps the current one.
        guidance_scale: classifier-free guidance of text-conditional pipelines (diffusers' w).
        prompt: text prompt(s) of text-to-image pipelines.
        generator: random source.
        **call_kwargs: further arguments of ``pipeline.__call__`` (e.g. ``eta`` for DDIMPipeline).

    Returns:
        float32 (N, C, H, W) in [-1, 1], on the CPU.

    Raises:
        ValueError: ``guidance_scale`` or ``prompt`` for a pipeline that does not take them, or an unknown scheduler.
    """
    if scheduler is not None:
        pipeline.scheduler = (scheduler_class(scheduler).from_config(pipeline.scheduler.config)
                              if isinstance(scheduler, (str, type)) else scheduler)
    parameters = inspect.signature(pipeline.__call__).parameters
    kwargs = dict(num_inference_steps=num_inference_steps, generator=generator, output_type="pt", **call_kwargs)
    kwargs["batch_size" if "batch_size" in parameters else "num_images_per_prompt"] = batch_size
    for key, value in (("guidance_scale", guidance_scale), ("prompt", prompt)):
        if value is not None:
            if key not in parameters:
                raise ValueError(f"{type(pipeline).__name__} takes no {key} (it is unconditional); leave it None")
            kwargs[key] = value
    if hasattr(pipeline, "set_progress_bar_config"):
        pipeline.set_progress_bar_config(disable=True)
    images = pipeline(**kwargs).images  # (N, C, H, W) floats in [0, 1]; numpy (N, H, W, C) without "pt" output
    return from_uint8(images, value_range=(0.0, 1.0), channels_last=isinstance(images, np.ndarray))
