"""One-file checkpoints: written atomically, validated on load, rebuilt into ready-to-sample models.

A checkpoint is a dict saved with ``torch.save``::

    format          "diffusion_lib.checkpoint"      (foreign files are rejected)
    format_version  1
    library_version diffusion_lib.__version__ of the writer
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

from .atomic import atomic_save

FORMAT = "diffusion_lib.checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "config", "model_config", "data", "model", "ema", "step")


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Stamp ``state`` with the format markers and write it atomically.

    Raises:
        ValueError: if ``state`` lacks a required key.
    """
    from . import __version__

    state = {"format": FORMAT, "format_version": FORMAT_VERSION, "library_version": __version__, **state}
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise ValueError(f"checkpoint state is missing {missing}")
    atomic_save(state, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read and validate a checkpoint.

    Args:
        path: file written by :func:`save_checkpoint`.
        map_location: where tensors are loaded.

    Returns:
        The checkpoint dict.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is corrupt or truncated, not a diffusion_lib checkpoint, of a newer
            format version, or missing required entries.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for truncated/corrupt files
        raise ValueError(f"checkpoint {path} is corrupt or not a torch file ({type(error).__name__}: {error})") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a diffusion_lib checkpoint (no format={FORMAT!r} marker); "
                         "was it written by another library?")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise ValueError(f"checkpoint {path} is missing {missing}")
    if state["format_version"] > FORMAT_VERSION:
        raise ValueError(f"checkpoint {path} has format_version {state['format_version']}; this library reads "
                         f"<= {FORMAT_VERSION}: upgrade diffusion_lib")
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
    from .config import ExperimentConfig, from_dict
    from .models import build_model
    from .schedules import NoiseSchedule

    state = load_checkpoint(path)
    config = from_dict(ExperimentConfig, state["config"])
    model = build_model(config.model.kind, state["model_config"])
    try:
        model.load_state_dict(state["ema" if use_ema else "model"])
    except RuntimeError as error:
        raise ValueError(f"checkpoint {path}: weights do not fit the stored model config ({error})") from error
    schedule = None
    if config.model.kind == "unet":
        schedule = NoiseSchedule(config.diffusion.beta_schedule, config.diffusion.num_train_timesteps,
                                 **config.diffusion.schedule_kwargs).to(device)
    return LoadedModel(model.to(device).eval(), schedule, config, state["data"], state["step"])
