"""diffusion_lib: a small, readable library for teaching denoising diffusion models.

The flow: data -> NoiseSchedule + UNet -> training_loss (Algorithm 1) -> Trainer -> checkpoint
-> DDPM / DDIM samplers with classifier-free guidance -> images and metrics.
"""

__version__ = "0.1.0"

from .checkpoint import load_model
from .config import ExperimentConfig, load_config
from .diffusion import q_posterior, q_sample, to_x0_and_eps, training_loss
from .models import VAE, Classifier, ConditionalUNet, UNet
from .sampling import ddim_sample, ddpm_sample, sample
from .schedules import NoiseSchedule, available_schedules, register_schedule
from .training import Trainer

__all__ = [
    "__version__", "NoiseSchedule", "register_schedule", "available_schedules",
    "q_sample", "q_posterior", "to_x0_and_eps", "training_loss", "UNet", "ConditionalUNet", "VAE", "Classifier",
    "ddpm_sample", "ddim_sample", "sample", "Trainer", "ExperimentConfig", "load_config", "load_model",
]
