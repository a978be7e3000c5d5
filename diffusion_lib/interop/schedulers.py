"""diffusers' schedulers drive our networks: any diffusers sampler loop on a diffusion_lib UNet.

:func:`scheduler_from_schedule` builds a diffusers scheduler (https://github.com/huggingface/diffusers)
on our betas (``trained_betas``, same T), and :func:`sample_with_diffusers_scheduler` runs its loop
(``set_timesteps``, ``scale_model_input``, ``step``) on our network through
:class:`DiffusersUNetAdapter`, which per call runs our samplers' own prediction step,
:func:`diffusion_lib.sampling.predict_x0_and_eps` (classifier-free guidance,
:func:`diffusion_lib.guidance.guided_prediction`; the x_0 and eps prediction; clipping of x_0 to
[-1, 1] with eps re-derived), at alpha_bar_t interpolated for the fractional timesteps of
sigma-space schedulers (:func:`alpha_bar_at`), then converts to the scheduler's ``prediction_type``.

Our ``ddim_sample`` / ``ddpm_sample`` and diffusers' ``DDIMScheduler`` / ``DDPMScheduler`` then agree
to float32 rounding on the same model and noise.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field

import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DEISMultistepScheduler, DPMSolverMultistepScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler,
                       KDPM2DiscreteScheduler, LMSDiscreteScheduler, PNDMScheduler, UniPCMultistepScheduler)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import nn
from tqdm.auto import tqdm

from ..device import randn
from ..diffusion import check_prediction_type, v_from_x0_eps
from ..guidance import check_guidance_inputs
from ..sampling import SamplerOutput, predict_x0_and_eps
from ..schedules import NoiseSchedule

SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "ddpm": DDPMScheduler,                          # Ho et al. 2020, ancestral
    "ddim": DDIMScheduler,                          # Song et al. 2021
    "pndm": PNDMScheduler,                          # Liu et al. 2022, pseudo linear multistep
    "dpmsolver++": DPMSolverMultistepScheduler,     # Lu et al. 2022, DPM-Solver++(2M)
    "unipc": UniPCMultistepScheduler,               # Zhao et al. 2023, predictor-corrector
    "deis": DEISMultistepScheduler,                 # Zhang & Chen 2023, exponential integrator
    "euler": EulerDiscreteScheduler,                # Karras et al. 2022, Algorithm 1 (ODE, sigma space)
    "euler_ancestral": EulerAncestralDiscreteScheduler,  # Euler with fresh noise each step (SDE-like)
    "heun": HeunDiscreteScheduler,                  # Karras et al. 2022, Algorithm 1 2nd order: 2 evaluations/step
    "lms": LMSDiscreteScheduler,                    # Karras et al. 2022, linear multistep in sigma space
    "kdpm2": KDPM2DiscreteScheduler,                # Karras et al. 2022, DPM-Solver-2: 2 evaluations/step
}


def scheduler_class(name: str | type) -> type[SchedulerMixin]:
    """The diffusers scheduler class for a short name (a key of :data:`SCHEDULERS`) or a class name.

    Args:
        name: "ddim", "euler", ... or "DDIMScheduler", ...; a SchedulerMixin subclass is returned as is.

    Returns:
        the class.

    Raises:
        ValueError: unknown name (the message lists the accepted ones).
    """
    if isinstance(name, type) and issubclass(name, SchedulerMixin):
        return name
    by_class_name = {cls.__name__: cls for cls in SCHEDULERS.values()}
    if name in SCHEDULERS or name in by_class_name:
        return SCHEDULERS.get(name) or by_class_name[name]
    raise ValueError(f"unknown scheduler {name!r}; accepted: {sorted(SCHEDULERS)} (or their class names)")


def scheduler_from_schedule(name: str | type, schedule: NoiseSchedule, prediction_type: str = "epsilon",
                            **kwargs) -> SchedulerMixin:
    """A diffusers scheduler on our noise schedule: ``trained_betas`` = our betas, same T.

    diffusers' own defaults hold for everything else (e.g. DDPM/DDIM: "leading" timesteps and
    ``clip_sample=True`` like our samplers; Euler, DPM-Solver, UniPC: "linspace" timesteps);
    override any of them with ``kwargs``.

    Args:
        name: a key of :data:`SCHEDULERS` ("ddpm", "ddim", "dpmsolver++", "euler", "heun", "unipc", ...),
            a diffusers class name ("EulerDiscreteScheduler") or class.
        schedule: the noise schedule the model was trained with.
        prediction_type: what the scheduler expects the model to return ("epsilon", "v_prediction", "sample").
        **kwargs: constructor arguments of that scheduler (``variance_type``, ``timestep_spacing``,
            ``use_karras_sigmas``, ``solver_order``, ...).

    Returns:
        the scheduler, ``num_train_timesteps`` = T.

    Raises:
        ValueError: unknown name or prediction type, or a keyword the scheduler does not take.
    """
    cls = scheduler_class(name)
    check_prediction_type(prediction_type)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "kwargs")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown or "trained_betas" in kwargs or "num_train_timesteps" in kwargs:
        raise ValueError(f"{cls.__name__} does not take {unknown or ['trained_betas/num_train_timesteps']} here "
                         f"(the betas come from the schedule); accepted: {accepted}")
    return cls(num_train_timesteps=schedule.num_train_timesteps, trained_betas=schedule.betas.double().cpu().tolist(),
               prediction_type=prediction_type, **kwargs)


def alpha_bar_at(schedule: NoiseSchedule, t: float | torch.Tensor) -> torch.Tensor:
    """alpha_bar at a (possibly fractional) timestep t in [0, T-1], as a float64 scalar tensor.

    Integer t reads ``schedule.alphas_cumprod[t]``. Sigma-space schedulers (Euler, Heun, LMS with
    "linspace" spacing) visit fractional t; there sigma = sqrt((1 - abar) / abar) is interpolated
    linearly between neighbours, as diffusers does, and abar = 1 / (1 + sigma^2)
    (Karras et al. 2022, sec. 2: x_t / sqrt(abar) = x_0 + sigma eps).

    Args:
        schedule: the noise schedule.
        t: a scalar timestep (Python number or 0-d tensor), integral or fractional.

    Returns:
        float64 0-d tensor on the CPU, in (0, 1].

    Raises:
        ValueError: t outside [0, T-1].
    """
    t = float(t)
    abar = schedule.alphas_cumprod.double().cpu()
    if not 0 <= t <= len(abar) - 1:
        raise ValueError(f"timestep {t} is outside [0, {len(abar) - 1}]")
    if t.is_integer():
        return abar[int(t)]
    sigmas = ((1 - abar) / abar).sqrt()
    low, w = math.floor(t), t - math.floor(t)
    sigma = (1 - w) * sigmas[low] + w * sigmas[low + 1]
    return 1 / (1 + sigma ** 2)


class DiffusersUNetAdapter:
    """Our network as the ``model(sample, t)`` a diffusers scheduler loop calls.

    Each call is our samplers' prediction step, :func:`~diffusion_lib.sampling.predict_x0_and_eps`
    at abar_t = :func:`alpha_bar_at`: classifier-free guidance
    (:func:`~diffusion_lib.guidance.guided_prediction`), conversion of the output
    (``prediction_type``) to x_0 and eps, optional clipping of x_0 to [-1, 1] with eps re-derived
    from the clipped x_0 (diffusers' ``use_clipped_model_output``: strong guidance washes out
    without it); then conversion to what the scheduler expects (``scheduler_prediction_type``; v by
    :func:`~diffusion_lib.diffusion.v_from_x0_eps`).

    The input must be the scheduler's ``scale_model_input`` output: for sigma-space schedulers
    that is x / sqrt(sigma^2 + 1), i.e. the variance-preserving x_t our network was trained on.

    Args:
        model: ``model(x_t, t, y)``; a ConditionalUNet for labels and guidance.
        schedule: its noise schedule (same device).
        y: int64 (N,) class labels in [0, num_classes - 1], or None; validated by the caller
            (:func:`sample_with_diffusers_scheduler` uses :func:`~diffusion_lib.guidance.check_guidance_inputs`).
        guidance_scale: w (0 unconditional, 1 conditional, > 1 guided; Ho & Salimans' w = ours - 1).
        prediction_type: what the network predicts.
        scheduler_prediction_type: what the scheduler expects; default ``prediction_type``.
        clip_sample: clip predicted x_0 to [-1, 1] (then eps is re-derived).

    Attributes:
        num_evaluations: calls so far; each is one network pass (on a 2N batch when guided).

    Raises:
        ValueError: an unknown prediction type.
    """

    def __init__(self, model: nn.Module, schedule: NoiseSchedule, *, y: torch.Tensor | None = None,
                 guidance_scale: float = 1.0, prediction_type: str = "epsilon",
                 scheduler_prediction_type: str | None = None, clip_sample: bool = True):
        check_prediction_type(prediction_type)
        check_prediction_type(scheduler_prediction_type or prediction_type)
        self.model, self.schedule, self.y, self.guidance_scale = model, schedule, y, guidance_scale
        self.prediction_type = prediction_type
        self.scheduler_prediction_type = scheduler_prediction_type or prediction_type
        self.clip_sample = clip_sample
        self.num_evaluations = 0

    @torch.no_grad()
    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor | float) -> torch.Tensor:
        """Guided, clipped prediction for x_t = ``sample`` at one timestep, in the scheduler's prediction type.

        Args:
            sample: x_t, float (N, C, H, W) (the scheduler's ``scale_model_input`` output).
            timestep: a scalar in [0, T-1], integral or fractional (sigma-space schedulers).

        Returns:
            float32 (N, C, H, W): eps, x_0 or v, as ``scheduler_prediction_type`` says.

        Raises:
            ValueError: ``timestep`` outside [0, T-1]; labels or guidance for an unconditional model.
        """
        t = float(timestep)  # one host read: diffusers' loops pass 0-d tensors, fractional for sigma-space ones
        abar = alpha_bar_at(self.schedule, t)
        x0, eps = predict_x0_and_eps(self.model, self.schedule, sample, t, y=self.y, guidance_scale=self.guidance_scale,
                                     prediction_type=self.prediction_type, clip_sample=self.clip_sample,
                                     alpha_bar=abar)
        self.num_evaluations += 1
        if self.scheduler_prediction_type == "epsilon":
            return eps
        if self.scheduler_prediction_type == "sample":
            return x0
        return v_from_x0_eps(x0, eps, abar)  # v = sqrt(abar) eps - sqrt(1 - abar) x_0


@dataclass
class DiffusersSamplerOutput(SamplerOutput):
    """:class:`~diffusion_lib.sampling.SamplerOutput` plus ``scheduler`` (class name), the ``timesteps``
    visited and ``num_model_evaluations`` (network passes; Heun/KDPM2 use 2 per step)."""

    scheduler: str = ""
    timesteps: list[float] = field(default_factory=list)
    num_model_evaluations: int = 0


def _check_scheduler(scheduler: SchedulerMixin, schedule: NoiseSchedule) -> None:
    """Refuse a scheduler built on other betas than the model's schedule (silently wrong samples otherwise)."""
    T = schedule.num_train_timesteps
    if scheduler.config.num_train_timesteps != T:
        raise ValueError(f"scheduler has num_train_timesteps={scheduler.config.num_train_timesteps}; the model's "
                         f"schedule has T={T}: build it with scheduler_from_schedule(name, schedule)")
    theirs = getattr(scheduler, "alphas_cumprod", None)
    if theirs is not None and not torch.allclose(theirs.double().cpu(), schedule.alphas_cumprod.double().cpu(),
                                                 rtol=1e-4, atol=1e-6):
        raise ValueError(f"{type(scheduler).__name__} uses other betas than the model's schedule "
                         f"{schedule.name!r}: build it with scheduler_from_schedule(name, schedule)")


@torch.no_grad()
def sample_with_diffusers_scheduler(model: nn.Module, schedule: NoiseSchedule, scheduler: str | SchedulerMixin = "ddim",
                                    shape: tuple[int, ...] | None = None, *, noise: torch.Tensor | None = None,
                                    y: torch.Tensor | None = None, guidance_scale: float = 1.0,
                                    num_inference_steps: int = 50, generator: torch.Generator | None = None,
                                    prediction_type: str = "epsilon", clip_sample: bool = True,
                                    step_kwargs: dict | None = None, progress: bool = False,
                                    **scheduler_kwargs) -> DiffusersSamplerOutput:
    """Sample from our network with a diffusers scheduler's loop (``set_timesteps``, ``scale_model_input``, ``step``).

    x_T = noise * ``scheduler.init_noise_sigma`` (1 for DDPM/DDIM; sqrt(sigma_max^2 + 1) for
    sigma-space schedulers such as Euler, whose state is x / sqrt(abar)), so the same standard
    normal ``noise`` (or the same seed) starts every scheduler, and our own samplers, from the same point.
    DDIM gets ``use_clipped_model_output=True`` and our DDIM's update: with the same noise, steps
    and eta the result equals :func:`~diffusion_lib.sampling.ddim_sample`'s.

    Args:
        model: ``model(x_t, t, y)`` in eval mode; a ConditionalUNet for labels.
        schedule: the noise schedule the model was trained with.
        scheduler: a name for :func:`scheduler_from_schedule` or a scheduler built on this schedule.
        shape: (N, C, H, W), or give ``noise``.
        noise: standard normal starting noise (N, C, H, W).
        y: int64 (N,) labels in [0, num_classes - 1] or None.
        guidance_scale: classifier-free guidance w >= 0 (0 unconditional, 1 conditional, > 1 guided).
        num_inference_steps: K in [1, T] (Heun-type schedulers call the network about 2K times).
        generator: random source for x_T and the schedulers' noise.
        prediction_type: what the network predicts.
        clip_sample: clip predicted x_0 to [-1, 1] at every step (eps re-derived), for every scheduler.
        step_kwargs: extra arguments of ``scheduler.step`` (e.g. ``{"eta": 0.5}`` for DDIM, ``s_churn`` for Euler).
        progress: tqdm progress bar.
        **scheduler_kwargs: constructor arguments when ``scheduler`` is a name.

    Returns:
        :class:`DiffusersSamplerOutput`, images float32 (N, C, H, W) clipped to [-1, 1].

    Raises:
        ValueError: bad shapes, labels, guidance, steps, step arguments, or a scheduler built on other betas.
    """
    device = next(model.parameters()).device
    schedule = schedule.to(device)
    if isinstance(scheduler, (str, type)):
        scheduler = scheduler_from_schedule(scheduler, schedule, prediction_type, **scheduler_kwargs)
    elif scheduler_kwargs:
        raise ValueError(f"scheduler keyword arguments {sorted(scheduler_kwargs)} need a scheduler name, not an object")
    _check_scheduler(scheduler, schedule)
    T = schedule.num_train_timesteps
    if not isinstance(num_inference_steps, int) or not 1 <= num_inference_steps <= T:
        raise ValueError(f"num_inference_steps must be an int in [1, num_train_timesteps={T}]; got {num_inference_steps!r}")
    if noise is None and shape is None:
        raise ValueError("give either shape=(N, C, H, W) or the starting noise")
    x = noise.to(device).float() if noise is not None else randn(tuple(shape), generator, device)
    if x.ndim != 4:
        raise ValueError(f"samples must be (N, C, H, W); got shape {tuple(x.shape)}")
    y = check_guidance_inputs(model, y, x.shape[0], guidance_scale, device)

    parameters = inspect.signature(scheduler.step).parameters
    step_kwargs = dict(step_kwargs or {})
    unknown = sorted(set(step_kwargs) - set(parameters) | set(step_kwargs) & {"model_output", "timestep", "sample"})
    if unknown:
        raise ValueError(f"{type(scheduler).__name__}.step does not take {unknown}; accepted: {list(parameters)[3:]}")
    if "use_clipped_model_output" in parameters:
        step_kwargs.setdefault("use_clipped_model_output", True)
    if "generator" in parameters:
        step_kwargs["generator"] = generator

    adapter = DiffusersUNetAdapter(model, schedule, y=y, guidance_scale=guidance_scale, prediction_type=prediction_type,
                                   scheduler_prediction_type=scheduler.config.prediction_type, clip_sample=clip_sample)
    scheduler.set_timesteps(num_inference_steps, device=device)
    x = x * scheduler.init_noise_sigma
    for t in tqdm(scheduler.timesteps, desc=type(scheduler).__name__, disable=not progress):  # the scheduler's t_i
        model_input = scheduler.scale_model_input(x, t)  # sigma-space: x / sqrt(sigma^2 + 1) = the VP x_t
        prediction = adapter(model_input, t)  # guidance, x_0 clipping, the scheduler's prediction type
        x = scheduler.step(prediction, t, x, **step_kwargs).prev_sample  # the scheduler's update rule
    return DiffusersSamplerOutput(x.clamp(-1, 1), y, None, scheduler=type(scheduler).__name__,
                                  timesteps=[float(t) for t in scheduler.timesteps],
                                  num_model_evaluations=adapter.num_evaluations)
