"""Model checkpoints: the training state in one artifact file (:mod:`diffusion_lib.artifacts`, kind "checkpoint").

A model checkpoint's payload::

    config          ExperimentConfig.to_dict()
    model_config    the network's constructor arguments (model.config)
    data            source name, channels, image_size, num_classes, class_names
    model, ema      state dicts (the EMA weights are the ones to sample from)
    optimizer, lr_scheduler, grad_scaler, step, rng   (everything --resume needs)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .artifacts import load_artifact, save_artifact
from .config import ExperimentConfig, from_dict
from .models import build_model
from .objectives import build_schedule

CHECKPOINT_KIND = "checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("config", "model_config", "data", "model", "ema", "step")


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write a model checkpoint (artifact kind "checkpoint") atomically.

    Raises:
        ValueError: if ``state`` lacks a required key.
    """
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise ValueError(f"checkpoint state is missing {missing}")
    save_artifact(path, CHECKPOINT_KIND, state, CHECKPOINT_VERSION)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read and validate a model checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the file.
        map_location: where tensors are loaded.

    Returns:
        The checkpoint dict (config, model_config, data, model, ema, step, and the resume state).

    Raises:
        FileNotFoundError: no such file.
        ValueError: as :func:`load_artifact`.
    """
    state = load_artifact(path, CHECKPOINT_KIND, CHECKPOINT_VERSION, required=REQUIRED_KEYS, map_location=map_location)
    state.pop("_version")
    return state


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, ready to sample: ``model`` (eval mode), ``schedule``, ``config``
    (ExperimentConfig), ``data`` info dict (channels, image_size, num_classes, class_names, source), ``step``."""

    model: nn.Module
    schedule: nn.Module | None
    config: object
    data: dict
    step: int


def load_model(path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True) -> LoadedModel:
    """Rebuild the network (EMA weights by default) and its noise schedule from a checkpoint.

    Raises:
        ValueError / FileNotFoundError: as :func:`load_checkpoint`, or weights that do not fit the stored model config.
    """
    state = load_checkpoint(path)
    config = from_dict(ExperimentConfig, state["config"])
    model = build_model(config.model.kind, state["model_config"])
    try:
        model.load_state_dict(state["ema" if use_ema else "model"])
    except RuntimeError as error:
        raise ValueError(f"checkpoint {path}: weights do not fit the stored model config ({error})") from error
    schedule = build_schedule(config)
    schedule = None if schedule is None else schedule.to(device)
    return LoadedModel(model.to(device).eval(), schedule, config, state["data"], state["step"])
