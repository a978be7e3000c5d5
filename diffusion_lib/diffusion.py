"""The forward process, its posterior, prediction conversions and the training loss.

Notation follows Ho et al. 2020 ("DDPM"): x_0 data in [-1, 1], eps ~ N(0, I), alpha_bar_t the
fraction of signal variance kept at step t. Timesteps are int64 in [0, T-1] (index 0 is the
paper's t = 1). Every function takes the :class:`~diffusion_lib.schedules.NoiseSchedule` whose
buffers it reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import PREDICTION_TYPES  # the accepted names live in config, a leaf
from .device import randn
from .models import is_conditional
from .schedules import NoiseSchedule, broadcast


def check_prediction_type(prediction_type: str) -> None:
    """Raise ValueError unless ``prediction_type`` is one of :data:`PREDICTION_TYPES`."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; accepted: {list(PREDICTION_TYPES)}")


def check_finite(tensor: torch.Tensor, name: str) -> None:
    """Raise ValueError unless every value of ``tensor`` is finite (no NaN, no inf).

    For the public entries (loss, samplers) to call once on their inputs: it reads one bool on the
    host (a GPU sync), so loops that run many steps check their own results instead.

    Args:
        tensor: any floating tensor (other dtypes are always finite).
        name: what to call it in the message, e.g. "x0" or "noise".

    Raises:
        ValueError: naming ``name`` and how many values are NaN or inf.
    """
    if tensor.is_floating_point() or tensor.is_complex():
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad = int(finite.numel() - finite.sum())
            raise ValueError(f"{name} holds {bad} NaN or infinite value(s) of {finite.numel()}; expected finite numbers")


def q_sample(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Sample x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)  (Ho et al. 2020, eq. 4).

    Args:
        schedule: the noise schedule.
        x0: clean images (B, C, H, W), float, in [-1, 1].
        t: int64 (B,) timesteps in [0, T-1].
        noise: eps, same shape as ``x0``, standard normal.

    Returns:
        x_t, same shape and dtype as ``x0``.
    """
    return broadcast(schedule.sqrt_alphas_cumprod, t, x0) * x0 + broadcast(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise


@dataclass
class Posterior:
    """Gaussian q(x_{t-1} | x_t, x_0): ``mean`` (B, C, H, W); ``variance`` and ``log_variance`` (B, 1, 1, 1)."""

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor


def q_posterior(schedule: NoiseSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> Posterior:
    """The forward-process posterior q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I)  (Ho et al. 2020, eqs. 6-7).

    mu~_t = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0 + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t.

    Args:
        schedule: the noise schedule.
        x0: (B, C, H, W) clean (or predicted clean) images.
        x_t: (B, C, H, W) noisy images at step t.
        t: int64 (B,) in [0, T-1].

    Returns:
        :class:`Posterior` with mean, variance beta~_t and its clipped log.
    """
    mean = broadcast(schedule.posterior_mean_coef1, t, x_t) * x0 + broadcast(schedule.posterior_mean_coef2, t, x_t) * x_t
    return Posterior(mean, broadcast(schedule.posterior_variance, t, x_t),
                     broadcast(schedule.posterior_log_variance_clipped, t, x_t))


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor | float) -> torch.Tensor:
    """x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)  (eq. 4 solved for x_0; Ho et al. 2020, eq. 15).

    Args:
        x_t: (B, C, H, W) noisy images.
        eps: (B, C, H, W) the noise (true or predicted).
        alpha_bar: alpha_bar_t in (0, 1], a float or a tensor broadcastable to ``x_t`` (e.g. (B, 1, 1, 1));
            any value, also one interpolated at a fractional timestep.

    Returns:
        x_0, shaped like ``x_t``.
    """
    alpha_bar = torch.as_tensor(alpha_bar, dtype=x_t.dtype, device=x_t.device)
    return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, alpha_bar: torch.Tensor | float) -> torch.Tensor:
    """eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t)  (eq. 4 solved for eps).

    Args and shapes as :func:`x0_from_eps`; ``alpha_bar`` must be < 1.
    """
    alpha_bar = torch.as_tensor(alpha_bar, dtype=x_t.dtype, device=x_t.device)
    return (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()


def v_from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor | float) -> torch.Tensor:
    """Velocity v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0  (Salimans & Ho 2022, sec. 4).

    Args and shapes as :func:`x0_from_eps`.
    """
    alpha_bar = torch.as_tensor(alpha_bar, dtype=x0.dtype, device=x0.device)
    return alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0


def prediction_to_x0_eps(model_output: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor | float,
                         prediction_type: str = "epsilon") -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a model output of any ``prediction_type`` to (predicted x_0, predicted eps), given alpha_bar_t.

    - "epsilon": the output is eps (Ho et al. 2020); x_0 by eq. 15.
    - "v_prediction": x_0 = sqrt(abar) x_t - sqrt(1-abar) v, eps = sqrt(1-abar) x_t + sqrt(abar) v
      (Salimans & Ho 2022, eq. 11 and appendix D).
    - "sample": the output is x_0; eps by eq. 4 solved for eps.

    This is the one home of the conversion: the samplers' shared prediction step
    (:func:`~diffusion_lib.sampling.predict_x0_and_eps`, also behind the diffusers adapter) calls it.

    Args:
        model_output: (B, C, H, W) network output.
        x_t: (B, C, H, W) the network's input.
        alpha_bar: alpha_bar_t, a float or a tensor broadcastable to ``x_t``.
        prediction_type: one of :data:`PREDICTION_TYPES`.

    Returns:
        (x0, eps), each shaped like ``x_t``.

    Raises:
        ValueError: unknown ``prediction_type``.
    """
    check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return x0_from_eps(x_t, model_output, alpha_bar), model_output
    if prediction_type == "sample":
        return model_output, eps_from_x0(x_t, model_output, alpha_bar)
    alpha_bar = torch.as_tensor(alpha_bar, dtype=x_t.dtype, device=x_t.device)
    a, b = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    return a * x_t - b * model_output, b * x_t + a * model_output


def v_target(schedule: NoiseSchedule, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """:func:`v_from_x0_eps` at the schedule's alpha_bar_t: the v-prediction regression target."""
    return v_from_x0_eps(x0, noise, broadcast(schedule.alphas_cumprod, t, x0))


def sample_timesteps(schedule: NoiseSchedule, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform training timesteps t ~ U{0, ..., T-1}  (Ho et al. 2020, Algorithm 1 line 3, whose 1..T these index).

    One per image of ``like``, drawn on the generator's device (so a seed gives the same t on every device),
    then moved to ``like``'s device.

    Args:
        schedule: the noise schedule (gives T).
        like: the batch (B, ...) the timesteps are for, e.g. x_0.
        generator: random source, or None for the global RNG.

    Returns:
        int64 (B,) in [0, T-1], on ``like``'s device.
    """
    source = generator.device if generator is not None else like.device
    t = torch.randint(0, schedule.num_train_timesteps, (like.shape[0],), generator=generator, device=source)
    return t.to(like.device)


def drop_labels(y: torch.Tensor | None, model: nn.Module, p_uncond: float,
                generator: torch.Generator | None) -> torch.Tensor | None:
    """Replace each label by the model's null label with probability ``p_uncond``  (Ho & Salimans 2022, Alg. 1 line 3).

    So one network learns both p(x | y) and p(x), as classifier-free guidance needs. Draws random numbers
    (on the generator's device) only when there is something to drop: ``y`` given and ``p_uncond`` > 0.

    Args:
        y: int64 (B,) labels, or None (returned unchanged).
        model: a class-conditional model (:func:`~diffusion_lib.models.is_conditional`) when ``p_uncond`` > 0.
        p_uncond: dropout probability in [0, 1] (validated by :func:`training_loss`).
        generator: random source, or None for the global RNG.

    Returns:
        int64 (B,) labels with some set to ``model.null_label``, or ``y`` itself.
    """
    if y is None or p_uncond == 0:
        return y
    ### BEGIN SOLUTION [3.2b]
    source = generator.device if generator is not None else y.device
    drop = torch.rand(y.shape[0], generator=generator, device=source).to(y.device) < p_uncond
    return torch.where(drop, torch.full_like(y, model.null_label), y)
    ### END SOLUTION


def regression_target(schedule: NoiseSchedule, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                      prediction_type: str) -> torch.Tensor:
    """What the network regresses on, by ``prediction_type``: eps (Ho et al. 2020, Algorithm 1 line 5),
    v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022, sec. 4), or x_0 itself ("sample").

    Only the chosen target is computed.

    Args:
        schedule: the noise schedule.
        x0: (B, C, H, W) clean images. noise: (B, C, H, W) the eps that made x_t. t: int64 (B,).
        prediction_type: one of :data:`PREDICTION_TYPES`.

    Returns:
        (B, C, H, W) target, shaped like ``x0``.

    Raises:
        ValueError: unknown ``prediction_type``.
    """
    check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    return v_target(schedule, x0, noise, t)


@dataclass
class TrainingLossOutput:
    """What one training step computed: ``loss`` (scalar), and the batch's ``t``, ``noise``, ``x_t``, ``model_output``, ``target``."""

    loss: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    x_t: torch.Tensor
    model_output: torch.Tensor
    target: torch.Tensor


def training_loss(model: nn.Module, schedule: NoiseSchedule, x0: torch.Tensor, y: torch.Tensor | None = None, *,
                  prediction_type: str = "epsilon", p_uncond: float = 0.0,
                  generator: torch.Generator | None = None, check_inputs: bool = True) -> TrainingLossOutput:
    """The simplified DDPM objective on one batch (Ho et al. 2020, Algorithm 1; L_simple, eq. 14).

    With ``p_uncond`` > 0 each label is replaced by the model's null label with that probability,
    so one network learns both p(x | y) and p(x) (Ho & Salimans 2022, Algorithm 1).
    Random draws, in this order: t, eps, then the dropout mask (only when labels are dropped).

    Args:
        model: ``model(x_t, t, y) -> prediction`` of the same shape as ``x_t``.
        schedule: the noise schedule (on the same device as ``x0``).
        x0: clean images (B, C, H, W), float32 in [-1, 1].
        y: int64 class labels (B,) in [0, num_classes-1], or None for an unconditional model.
        prediction_type: "epsilon" (target eps) or "v_prediction" (target v) or "sample" (target x_0).
        p_uncond: label-dropout probability in [0, 1]; needs a class-conditional model
            (:func:`~diffusion_lib.models.is_conditional`).
        generator: random source for t, eps and the dropout mask (same seed, same loss).
        check_inputs: check that ``x0`` is finite (:func:`check_finite`, one host sync); the Trainer
            passes False and watches the loss for NaN instead, so its steps never wait for the GPU.

    Returns:
        :class:`TrainingLossOutput`; ``loss`` is the mean squared error, a float scalar.

    Raises:
        ValueError: bad ``prediction_type`` or ``p_uncond``, label dropout on a model without a null label,
            or (``check_inputs``) NaN or infinite values in ``x0``.
    """
    check_prediction_type(prediction_type)
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"p_uncond must be in [0, 1]; got {p_uncond}")
    if y is not None and p_uncond > 0 and not is_conditional(model):
        raise ValueError("p_uncond > 0 needs a conditional model with a null label (ConditionalUNet)")
    if check_inputs:
        check_finite(x0, "x0")
    # Start
    t = sample_timesteps(schedule, x0, generator)  # Alg. 1 line 3: t ~ U{1..T}, here 0..T-1
    noise = randn(x0.shape, generator, x0.device)  # Alg. 1 line 4: eps ~ N(0, I)
    x_t = q_sample(schedule, x0, t, noise)  # eq. 4: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
    y = drop_labels(y, model, p_uncond, generator)  # Ho & Salimans 2022 Alg. 1 line 3: drop labels
    model_output = model(x_t, t, y)  # Alg. 1 line 5: the network's prediction (eps, v or x_0)
    target = regression_target(schedule, x0, noise, t, prediction_type)  # eps in Alg. 1; v or x_0
    loss = F.mse_loss(model_output.float(), target.float())  # Alg. 1 line 5: ||target - output||^2
    # End
    return TrainingLossOutput(loss, t, noise, x_t, model_output, target)
