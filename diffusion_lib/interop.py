"""diffusers interoperability: its schedulers drive our UNet, our models save in its format, open pipelines load.

Three bridges to the Hugging Face ``diffusers`` library (https://github.com/huggingface/diffusers):

1. **Schedulers on our model.** :func:`scheduler_from_schedule` builds any diffusers scheduler on
   our betas (``trained_betas``), and :func:`sample_with_diffusers_scheduler` runs its loop on our
   network through :class:`DiffusersUNetAdapter` (classifier-free guidance, x_0 clipping with eps
   re-derived, conversion to the scheduler's ``prediction_type``). Our ``ddim_sample`` and
   diffusers' ``DDIMScheduler`` then agree to float32 rounding on the same model and noise.
2. **diffusers' folder format.** :func:`save_pretrained` writes a trained model as a
   ``DDPMPipeline`` folder (written into a temporary folder, then renamed into place)::

       folder/
         model_index.json                      {"_class_name": "DDPMPipeline", "unet": ["diffusion_lib.interop", "DiffusersUNet"], ...}
         unet/config.json                      our UNet's constructor arguments + sample_size
         unet/diffusion_pytorch_model.safetensors
         scheduler/scheduler_config.json       DDPMScheduler with trained_betas = our betas
         diffusion_lib.json                    schedule name, prediction type, data info, step, experiment config

   Our network is not a diffusers ``UNet2DModel``; :class:`DiffusersUNet` wraps it in a
   ``ModelMixin`` + ``ConfigMixin`` so that diffusers' own loaders read the folder:
   ``DiffusersUNet.from_pretrained(folder, subfolder="unet")`` or
   ``DDPMPipeline.from_pretrained(folder)`` (after ``import diffusion_lib.interop``, since the
   class lives here). :func:`load_pretrained` reads it back into a ready-to-sample
   :class:`~diffusion_lib.checkpoint.LoadedModel`.
3. **Open pretrained pipelines.** :func:`load_pretrained_pipeline` loads a local folder, the local
   Hugging Face cache, or (when the hub answers within seconds) a hub name such as
   ``"google/ddpm-cifar10-32"``; offline it says what it would have loaded and returns None.
   :func:`pipeline_sample` runs any such pipeline with a chosen scheduler, steps and guidance.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import (DDIMScheduler, DDPMPipeline, DDPMScheduler, DEISMultistepScheduler, DiffusionPipeline,
                       DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                       HeunDiscreteScheduler, KDPM2DiscreteScheduler, LMSDiscreteScheduler, PNDMScheduler,
                       UniPCMultistepScheduler)
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import LoadedModel
from .device import randn, resolve_device
from .diffusion import check_prediction_type
from .models.unet import build_unet
from .sampling import SamplerOutput, check_guidance_inputs, guided_prediction
from .schedules import NoiseSchedule

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
METADATA_FILE = "diffusion_lib.json"
METADATA_FORMAT = "diffusion_lib.diffusers"
METADATA_VERSION = 1
HUB_PROBE_TIMEOUT_S = 5.0
_TRUE = {"1", "ON", "YES", "TRUE"}


# ----------------------------------------------------------------------------- schedulers on our model

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

    Each call: classifier-free guidance (:func:`~diffusion_lib.sampling.guided_prediction`);
    conversion of the output (``prediction_type``) to x_0 and eps with abar_t
    (:func:`alpha_bar_at`); optional clipping of x_0 to [-1, 1] with eps re-derived from the
    clipped x_0 (diffusers' ``use_clipped_model_output``: strong guidance washes out without
    it); and conversion to what the scheduler expects (``scheduler_prediction_type``).

    The input must be the scheduler's ``scale_model_input`` output: for sigma-space schedulers
    that is x / sqrt(sigma^2 + 1), i.e. the variance-preserving x_t our network was trained on.

    Args:
        model: ``model(x_t, t, y)``; a ConditionalUNet for labels and guidance.
        schedule: its noise schedule (same device).
        y: int64 (N,) class labels in [0, num_classes - 1], or None.
        guidance_scale: w (0 unconditional, 1 conditional, > 1 guided; Ho & Salimans' w = ours - 1).
        prediction_type: what the network predicts.
        scheduler_prediction_type: what the scheduler expects; default ``prediction_type``.
        clip_sample: clip predicted x_0 to [-1, 1] (then eps is re-derived).

    Attributes:
        num_evaluations: calls so far; each is one network pass (on a 2N batch when guided).
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
        """Guided, clipped prediction for x_t = ``sample`` (N, C, H, W) at scalar ``timestep``; same shape, float32."""
        timestep = torch.as_tensor(timestep, device=sample.device)
        integral = not timestep.is_floating_point() or float(timestep) == round(float(timestep))
        t = timestep.to(torch.long if integral else torch.float32).reshape(1).expand(sample.shape[0])
        out = guided_prediction(self.model, sample, t, self.y, self.guidance_scale).float()
        self.num_evaluations += 1
        if not self.clip_sample and self.prediction_type == self.scheduler_prediction_type:
            return out
        abar = alpha_bar_at(self.schedule, timestep)
        a, b = float(abar.sqrt()), float((1 - abar).sqrt())
        if self.prediction_type == "epsilon":       # x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar), Ho et al. eq. 15
            x0, eps = (sample - b * out) / a, out
        elif self.prediction_type == "sample":
            x0, eps = out, (sample - a * out) / b
        else:                                       # v = a eps - b x_0 (Salimans & Ho 2022, sec. 4)
            x0, eps = a * sample - b * out, b * sample + a * out
        if self.clip_sample:
            x0 = x0.clamp(-1, 1)
            eps = (sample - a * x0) / b
        return {"epsilon": eps, "sample": x0, "v_prediction": a * eps - b * x0}[self.scheduler_prediction_type]


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


# ----------------------------------------------------------------------------- diffusers' folder format

class DiffusersUNet(ModelMixin, ConfigMixin):
    """Our :class:`~diffusion_lib.models.UNet` / ``ConditionalUNet`` as a diffusers model.

    ``save_pretrained`` writes ``config.json`` (these constructor arguments) and
    ``diffusion_pytorch_model.safetensors`` (weights under ``net.``); ``from_pretrained`` rebuilds
    it from a local folder. ``forward`` follows ``UNet2DModel``'s signature, so diffusers'
    ``DDPMPipeline`` can run it (a conditional model without labels is queried with its null
    label, i.e. unconditionally).

    Args:
        in_channels ... norm_groups: as for :class:`~diffusion_lib.models.UNet`.
        num_classes: K for a ConditionalUNet, None for an unconditional UNet.
        sample_size: image side H = W the model was trained on (read by ``DDPMPipeline``).

    Attributes:
        net: the wrapped network (what our samplers take).
    """

    @register_to_config
    def __init__(self, in_channels: int = 3, out_channels: int | None = None, base_channels: int = 64,
                 channel_mults: tuple[int, ...] = (1, 2, 2), num_res_blocks: int = 2,
                 attention_levels: tuple[int, ...] = (1,), num_heads: int = 4, dropout: float = 0.0,
                 norm_groups: int = 8, num_classes: int | None = None, sample_size: int | None = None):
        super().__init__()
        self.net = build_unet(dict(in_channels=in_channels, out_channels=out_channels, base_channels=base_channels,
                                   channel_mults=tuple(channel_mults), num_res_blocks=num_res_blocks,
                                   attention_levels=tuple(attention_levels), num_heads=num_heads, dropout=dropout,
                                   norm_groups=norm_groups, num_classes=num_classes))

    @classmethod
    def from_unet(cls, unet: nn.Module, sample_size: int | None = None) -> "DiffusersUNet":
        """Wrap a copy of ``unet``'s weights (``unet.config`` gives the architecture), on the CPU in eval mode.

        Raises:
            ValueError: ``unet`` is not a diffusion_lib UNet (no ``config`` dict).
        """
        if not isinstance(getattr(unet, "config", None), dict) or "base_channels" not in unet.config:
            raise ValueError(f"expected a diffusion_lib UNet/ConditionalUNet with a .config dict; got {type(unet).__name__}")
        try:
            wrapper = cls(**unet.config, sample_size=sample_size)
        except TypeError as error:
            raise ValueError(f"{type(unet).__name__} is not a diffusion_lib UNet/ConditionalUNet ({error})") from error
        wrapper.net.load_state_dict(unet.state_dict())
        return wrapper.eval()

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int, class_labels: torch.Tensor | None = None,
                return_dict: bool = True) -> UNet2DOutput | tuple[torch.Tensor]:
        """Run the wrapped network with ``UNet2DModel``'s signature.

        Args:
            sample: x_t, float (B, C, H, W). timestep: int64 (B,) or a scalar in [0, T-1].
            class_labels: int64 (B,) labels of a conditional model, or None (null label).
            return_dict: wrap the output in ``UNet2DOutput(sample=...)`` (else a 1-tuple).

        Returns:
            the prediction, (B, C, H, W), in ``UNet2DOutput`` or a tuple.
        """
        out = self.net(sample, timestep, class_labels)
        return UNet2DOutput(sample=out) if return_dict else (out,)


def _replace_folder(folder: Path, write) -> None:
    """Call ``write(tmp)`` on a new temporary folder beside ``folder``, then rename it into place.

    An existing ``folder`` is first renamed aside and deleted only after the new one is in
    place, so a crash leaves the old folder (or, between the two renames, its ``.old`` copy).
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        write(tmp)
        if folder.exists():
            old = tmp.with_suffix(".old")
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_pretrained(model: LoadedModel | nn.Module, schedule: NoiseSchedule | None = None,
                    folder: str | os.PathLike | None = None, *, image_size: int | None = None,
                    prediction_type: str | None = None, overwrite: bool = True) -> Path:
    """Save a model in diffusers' ``DDPMPipeline`` folder layout (see the module docstring), atomically.

    Args:
        model: a :class:`~diffusion_lib.checkpoint.LoadedModel` (``load_model(path)``: its schedule,
            config, data info and step are kept) or a bare UNet/ConditionalUNet.
        schedule: the noise schedule; default ``model.schedule`` of a LoadedModel.
        folder: destination folder (created; its parent too).
        image_size: H = W of the images, stored as ``sample_size``; default ``data["image_size"]``.
        prediction_type: default the LoadedModel's config, else "epsilon".
        overwrite: replace an existing folder written by this function (a folder holding other
            files is never replaced).

    Returns:
        the folder.

    Raises:
        ValueError: missing schedule / image size, a VAE or foreign module, a bad prediction type.
        FileExistsError: ``folder`` exists and ``overwrite`` is False or it is not a saved pipeline.
    """
    from . import __version__

    loaded = model if isinstance(model, LoadedModel) else None
    net = loaded.model if loaded else model
    schedule = schedule if schedule is not None else (loaded.schedule if loaded else None)
    if folder is None or schedule is None:
        raise ValueError("save_pretrained needs a folder and the noise schedule (give schedule=, or a LoadedModel)")
    config = loaded.config if loaded else None
    data = dict(loaded.data) if loaded else {}
    image_size = image_size or data.get("image_size")
    if not image_size:
        raise ValueError("image_size (the side H = W of the training images) is needed: diffusers' DDPMPipeline "
                         "reads it as unet.config.sample_size")
    prediction_type = prediction_type or (config.diffusion.prediction_type if config is not None else "epsilon")
    check_prediction_type(prediction_type)
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        if not overwrite or not (folder / "model_index.json").is_file():
            raise FileExistsError(f"{folder} exists and is not empty" + ("" if overwrite else " (overwrite=False)") +
                                  "; only a folder written by save_pretrained is replaced")

    pipeline = DDPMPipeline(unet=DiffusersUNet.from_unet(net, int(image_size)),
                            scheduler=scheduler_from_schedule("ddpm", schedule, prediction_type))
    metadata = {
        "format": METADATA_FORMAT, "format_version": METADATA_VERSION, "library_version": __version__,
        "schedule": {"name": schedule.name, "num_train_timesteps": schedule.num_train_timesteps,
                     "kwargs": dict(schedule.schedule_kwargs)},
        "prediction_type": prediction_type,
        "data": {"image_size": int(image_size), "channels": net.config["in_channels"],
                 "num_classes": net.config.get("num_classes") or 0, **data},
        "step": loaded.step if loaded else None,
        "config": config.to_dict() if config is not None else None,
    }

    def write(tmp: Path) -> None:
        pipeline.save_pretrained(tmp, safe_serialization=True)
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str))

    _replace_folder(folder, write)
    return folder


def load_pretrained(folder: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model saved by :func:`save_pretrained` (pipeline folder, or its ``unet/`` model folder).

    The schedule is rebuilt from ``diffusion_lib.json`` (name, T, arguments) when present, else
    from the scheduler config's ``trained_betas``; either way it is checked against the
    scheduler's betas.

    Args:
        folder: the pipeline folder (with ``unet/`` and ``scheduler/``) or a model folder with ``config.json``.
        device: "auto" or a torch device.

    Returns:
        :class:`~diffusion_lib.checkpoint.LoadedModel`: ``model`` (our network, eval mode), ``schedule``,
        ``config`` (the ExperimentConfig, or None when the folder has none), ``data`` (image_size, channels,
        num_classes, ... and ``prediction_type``), ``step`` (None if unknown).

    Raises:
        FileNotFoundError: no such folder, or no config.json in it.
        ValueError: the folder holds another diffusers model, or its schedule cannot be rebuilt.
    """
    from .config import ExperimentConfig, from_dict

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    root, unet_dir = (folder, folder / "unet") if (folder / "unet" / "config.json").is_file() else (folder.parent, folder)
    if not (unet_dir / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has neither unet/config.json nor config.json: not a diffusers model folder")
    class_name = json.loads((unet_dir / "config.json").read_text()).get("_class_name")
    if class_name != DiffusersUNet.__name__:
        raise ValueError(f"{unet_dir} holds a diffusers {class_name}, not a diffusion_lib model; "
                         "open it with load_pretrained_pipeline")
    wrapper = DiffusersUNet.from_pretrained(unet_dir, low_cpu_mem_usage=False)
    meta_path = root / METADATA_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    scheduler_path = root / "scheduler" / "scheduler_config.json"
    scheduler_config = json.loads(scheduler_path.read_text()) if scheduler_path.is_file() else {}

    if meta.get("schedule", {}).get("name") not in (None, "custom"):
        s = meta["schedule"]
        schedule = NoiseSchedule(s["name"], s["num_train_timesteps"], **s.get("kwargs", {}))
    elif scheduler_config.get("trained_betas"):
        schedule = NoiseSchedule(None, betas=np.asarray(scheduler_config["trained_betas"], dtype=np.float64))
    else:
        raise ValueError(f"{folder}: cannot rebuild the noise schedule (no {METADATA_FILE} schedule name and no "
                         "trained_betas in scheduler/scheduler_config.json)")
    if scheduler_config.get("trained_betas") is not None:
        stored = torch.tensor(scheduler_config["trained_betas"], dtype=torch.float64)
        if stored.shape != schedule.betas.shape or not torch.allclose(stored, schedule.betas.double(), rtol=1e-5):
            raise ValueError(f"{folder}: the schedule in {METADATA_FILE} disagrees with the scheduler's trained_betas")
    config = from_dict(ExperimentConfig, meta["config"]) if meta.get("config") else None
    data = dict(meta.get("data") or {"image_size": wrapper.config.sample_size, "channels": wrapper.config.in_channels,
                                     "num_classes": wrapper.config.num_classes or 0})
    data["prediction_type"] = meta.get("prediction_type") or scheduler_config.get("prediction_type", "epsilon")
    device = resolve_device(device)
    return LoadedModel(wrapper.net.to(device).eval(), schedule.to(device), config, data, meta.get("step"))


# ----------------------------------------------------------------------------- open pretrained pipelines

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

    from .data.torchvision_sources import probe

    if os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE or constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")
    failure = probe(f"{endpoint}/api/models/{name}", timeout=timeout)
    return None if failure is None else f"{endpoint} unreachable: {failure}"


def _from_pretrained(name_or_path, **kwargs) -> DiffusionPipeline:
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
    images = pipeline(**kwargs).images
    if isinstance(images, np.ndarray):  # pipelines without "pt" output: (N, H, W, C) floats in [0, 1]
        images = torch.from_numpy(images).permute(0, 3, 1, 2)
    return (images.detach().float().cpu() * 2 - 1).clamp(-1, 1)
