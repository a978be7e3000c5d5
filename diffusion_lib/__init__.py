"""diffusion_lib: a small, readable library for teaching denoising diffusion models.

The flow: data -> NoiseSchedule + UNet -> training_loss (Algorithm 1) -> Trainer -> checkpoint
-> DDPM / DDIM samplers with classifier-free guidance -> images and metrics.

The public names below are loaded on first use (PEP 562): ``import diffusion_lib`` and
``python -m diffusion_lib --help`` do not import torch; ``diffusion_lib.UNet`` imports
``diffusion_lib.models`` (and torch) the first time it is asked for.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the submodule that defines it
_EXPORTS = {
    "NoiseSchedule": "schedules", "register_schedule": "schedules", "available_schedules": "schedules",
    "q_sample": "diffusion", "q_posterior": "diffusion", "to_x0_and_eps": "diffusion", "training_loss": "diffusion",
    "UNet": "models", "ConditionalUNet": "models", "VAE": "models", "Classifier": "models",
    "ddpm_sample": "sampling", "ddim_sample": "sampling", "sample": "sampling",
    "Trainer": "training", "load_or_train": "training",
    "ExperimentConfig": "config", "SamplingConfig": "config", "load_config": "config",
    "load_model": "checkpoint",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    """Import the submodule that defines ``name`` on first access, then cache the name here."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
