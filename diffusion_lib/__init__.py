"""diffusion_lib: a small, readable library for teaching denoising diffusion models.

The flow: data -> NoiseSchedule + UNet -> training_loss (Algorithm 1) -> Trainer -> checkpoint
-> DDPM / DDIM samplers with classifier-free guidance -> images and metrics.

The public names below are loaded on first use (PEP 562): ``import diffusion_lib`` and
``python -m diffusion_lib --help`` do not import torch; ``diffusion_lib.UNet`` imports
``diffusion_lib.models`` (and torch) the first time it is asked for.
"""

from __future__ import annotations

from ._lazy import lazy_exports

__version__ = "0.1.0"

# submodule -> the public names it defines
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "schedules": ("NoiseSchedule", "register_schedule", "available_schedules"),
    "diffusion": ("q_sample", "q_posterior", "prediction_to_x0_eps", "training_loss"),
    "models": ("UNet", "ConditionalUNet", "VAE", "Classifier"),
    "sampling": ("ddpm_sample", "ddim_sample", "dpm_solver_sample", "sample"),
    "training": ("Trainer", "load_or_train"),
    "config": ("ExperimentConfig", "SamplingConfig", "load_config"),
    "checkpoint": ("load_model",),
}, extra=("__version__",))
