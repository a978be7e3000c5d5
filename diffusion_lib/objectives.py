"""What the Trainer optimises and how it samples, one small object per model kind.

    DiffusionObjective   UNet: L_simple of Ho et al. 2020 (Alg. 1, eq. 14) via diffusion.training_loss;
                         samples with the config's sampler (SamplingConfig.sampler_kwargs)
    VAEObjective         VAE baseline: beta-weighted negative ELBO (Kingma & Welling 2014; Higgins et al. 2017);
                         samples decode prior draws z ~ N(0, I)

``models.KINDS`` names each kind's objective; :func:`build_objective` builds it and :func:`build_schedule` the
noise schedule (the one place a schedule is built from a config). Both have the same interface, so the Trainer's loop reads top to bottom without asking which kind it trains:

    schedule      the NoiseSchedule (None for the VAE)
    log_fields    the loss terms, in log.csv column order
    loss(model, x0, y, generator) -> (loss, {term: detached scalar tensor})
    generate(model, shape, y, generator) -> images (N, C, H, W) in [-1, 1]
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .config import ExperimentConfig
from .diffusion import training_loss
from .models import KINDS, model_kind
from .sampling import sample
from .schedules import NoiseSchedule


class DiffusionObjective:
    """The diffusion UNet's objective and sampler, from the config's ``diffusion`` and ``sampling`` sections.

    Args:
        config: the experiment (``diffusion``: schedule, T, prediction_type, p_uncond; ``sampling``).
        device: where the schedule's buffers live (the model's device).
    """

    log_fields = ("loss",)

    def __init__(self, config: ExperimentConfig, device: torch.device):
        d = config.diffusion
        self.schedule = build_schedule(config).to(device)
        self.prediction_type, self.p_uncond = d.prediction_type, d.p_uncond
        self.sampling = config.sampling

    def loss(self, model: nn.Module, x0: torch.Tensor, y: torch.Tensor | None,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_simple on a batch: x0 float (N, C, H, W) in [-1, 1], y int64 (N,) or None.

        Returns:
            (the scalar loss to back-propagate, {"loss": its detached copy}).
        """
        out = training_loss(model, self.schedule, x0, y, prediction_type=self.prediction_type,
                            p_uncond=self.p_uncond, generator=generator, check_inputs=False)  # no sync per step
        return out.loss, {"loss": out.loss.detach()}

    def generate(self, model: nn.Module, shape: Sequence[int], y: torch.Tensor | None,
                 generator: torch.Generator) -> torch.Tensor:
        """Samples of ``shape`` (N, C, H, W) with the config's sampler; ``y`` int64 (N,) labels or None.

        Returns:
            float32 (N, C, H, W) in [-1, 1] on the model's device.
        """
        kwargs = self.sampling.sampler_kwargs(conditional=y is not None)
        return sample(model, self.schedule, shape=shape, y=y, prediction_type=self.prediction_type,
                      generator=generator, **kwargs).images


class VAEObjective:
    """The VAE baseline's objective (beta-weighted negative ELBO) and prior sampling.

    Args:
        config: the experiment (``training.vae_beta``: weight of the KL term).
        device: unused (the VAE has no schedule); kept so both objectives are built alike.
    """

    log_fields = ("loss", "recon", "kl")
    schedule = None

    def __init__(self, config: ExperimentConfig, device: torch.device):
        self.beta = config.training.vae_beta

    def loss(self, model: nn.Module, x0: torch.Tensor, y: torch.Tensor | None,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """recon + beta * kl on a batch x0 (N, C, H, W) in [-1, 1] (labels ignored), nats per image.

        Returns:
            (the scalar loss, {"loss", "recon", "kl": detached scalars}).
        """
        out = model.loss(x0, beta=self.beta, generator=generator)
        return out.loss, {"loss": out.loss.detach(), "recon": out.recon.detach(), "kl": out.kl.detach()}

    def generate(self, model: nn.Module, shape: Sequence[int], y: torch.Tensor | None,
                 generator: torch.Generator) -> torch.Tensor:
        """``shape[0]`` decodes of prior draws z ~ N(0, I) (labels ignored), (N, C, H, W) in [-1, 1]."""
        return model.sample(shape[0], generator=generator)


def build_schedule(config: ExperimentConfig) -> NoiseSchedule | None:
    """The NoiseSchedule of ``config.diffusion`` (float32 buffers on the CPU), or None for a kind without one
    (``models.KINDS[kind].uses_schedule``; the VAE).

    Raises:
        ValueError: an unknown kind, or a schedule the registry rejects.
    """
    if not model_kind(config.model.kind).uses_schedule:
        return None
    d = config.diffusion
    return NoiseSchedule(d.beta_schedule, d.num_train_timesteps, **d.schedule_kwargs)


def build_objective(config: ExperimentConfig, device: torch.device) -> DiffusionObjective | VAEObjective:
    """The objective ``models.KINDS`` names for ``config.model.kind`` ("unet": :class:`DiffusionObjective`,
    "vae": :class:`VAEObjective`).

    Raises:
        ValueError: an unknown kind (names the accepted ones).
    """
    if config.model.kind not in KINDS:
        raise ValueError(f"model.kind {config.model.kind!r} has no objective; accepted: {list(KINDS)}")
    return globals()[KINDS[config.model.kind].objective](config, device)  # the class the table names
