"""Reverse-process samplers: DDPM ancestral sampling and DDIM, with classifier-free and classifier guidance.

Both samplers walk a descending sub-sequence of the training timesteps (all T of them by
default for DDPM). At each step the network's output is turned into a prediction of x_0 and
of eps (:func:`predict_x0_and_eps`: guidance, then optional clipping of x_0 to [-1, 1] with eps
re-derived from the clipped x_0), and the sampler's update rule moves x_t to x_{t_prev}.

Guidance scale ``w`` follows diffusers: eps = eps_uncond + w * (eps_cond - eps_uncond), so
w = 0 is unconditional, w = 1 conditional and w > 1 guided. Ho & Salimans (2022) write the
same rule as (1 + w') eps_cond - w' eps_uncond: their w' = our w - 1.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .device import randn
from .diffusion import check_prediction_type, predict_eps_from_x0, predict_x0_from_eps, to_x0_and_eps
from .schedules import NoiseSchedule

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
VARIANCE_TYPES = ("fixed_small", "fixed_large")


@dataclass
class Trajectory:
    """Intermediate states of one sampling run.

    Attributes:
        steps: loop indices captured (0 = first, most noisy step).
        timesteps: the timestep t of each captured step.
        x_t: float32 (K, N, C, H, W), the sample entering each captured step.
        pred_x0: float32 (K, N, C, H, W), the (guided, clipped) prediction of x_0 at that step.
    """

    steps: list[int]
    timesteps: list[int]
    x_t: torch.Tensor
    pred_x0: torch.Tensor


@dataclass
class SamplerOutput:
    """``images`` float32 (N, C, H, W) in [-1, 1] (clipped); ``labels`` int64 (N,) or None; optional ``trajectory``."""

    images: torch.Tensor
    labels: torch.Tensor | None
    trajectory: Trajectory | None = None


def inference_timesteps(num_train_timesteps: int, num_inference_steps: int, spacing: str = "leading") -> torch.Tensor:
    """The descending timesteps a sampler visits.

    - "leading": 0, k, 2k, ... with k = T // K, reversed (DDIM paper, sec. 4.2; diffusers' default).
    - "trailing": T-1, T-1-k', ... with k' = T / K (Lin et al. 2024, table 2): starts from pure noise.
    - "linspace": round(linspace(0, T-1, K)), reversed.

    Args:
        num_train_timesteps: T.
        num_inference_steps: K, with 1 <= K <= T.
        spacing: one of :data:`TIMESTEP_SPACINGS`.

    Returns:
        int64 tensor (K,), strictly decreasing, values in [0, T-1].

    Raises:
        ValueError: K outside [1, T] or an unknown spacing.
    """
    T, K = num_train_timesteps, num_inference_steps
    if isinstance(K, bool) or not isinstance(K, numbers.Integral) or not 1 <= K <= T:
        raise ValueError(f"num_inference_steps must be an int in [1, num_train_timesteps={T}]; got {K!r}")
    K = int(K)
    if spacing == "leading":
        ascending = torch.arange(K) * (T // K)
    elif spacing == "trailing":
        ascending = (torch.round(T - torch.arange(K, dtype=torch.float64) * (T / K)) - 1).long().flip(0)
    elif spacing == "linspace":
        ascending = torch.linspace(0, T - 1, K, dtype=torch.float64).round().long()
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; accepted: {list(TIMESTEP_SPACINGS)}")
    return ascending.flip(0).long()


def guided_prediction(model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None,
                      guidance_scale: float = 1.0) -> torch.Tensor:
    """Network output with classifier-free guidance (Ho & Salimans 2022, eq. 6, in diffusers' convention).

    out = out_uncond + w * (out_cond - out_uncond); the conditional and unconditional passes
    run as one batch. w = 0 returns the unconditional output, w = 1 the conditional one (one pass
    each). Guiding eps or v is the same thing: both are affine in the output for a fixed x_t.

    Args:
        model: ``model(x_t, t, y)``; guidance needs a ``null_label`` attribute (ConditionalUNet).
        x_t: (B, C, H, W). t: int64 (B,). y: int64 (B,) labels, or None for an unconditional sample.
        guidance_scale: w >= 0.

    Returns:
        (B, C, H, W) guided output.

    Raises:
        ValueError: labels or w != 1 with a model that has no null label.
    """
    if y is None:
        return model(x_t, t)
    null_label = getattr(model, "null_label", None)
    if null_label is None:
        raise ValueError("labels/guidance need a class-conditional model (ConditionalUNet); this model is unconditional")
    if guidance_scale == 1.0:
        return model(x_t, t, y)
    null = torch.full_like(y, null_label)
    if guidance_scale == 0.0:
        return model(x_t, t, null)
    out_uncond, out_cond = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([null, y])).chunk(2)
    return out_uncond + guidance_scale * (out_cond - out_uncond)


def classifier_log_prob_grad(classifier: nn.Module, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient of log p_phi(y | x_t, t) with respect to x_t (Dhariwal & Nichol 2021, sec. 4.1).

    Args:
        classifier: ``classifier(x_t, t) -> logits (B, num_classes)``, trained on noisy images.
        x_t: (B, C, H, W). t: int64 (B,). y: int64 (B,) target classes.

    Returns:
        (B, C, H, W) gradient, float32.
    """
    with torch.enable_grad():
        x = x_t.detach().float().requires_grad_(True)
        log_probs = torch.log_softmax(classifier(x, t), dim=-1)
        selected = log_probs[torch.arange(len(y), device=y.device), y].sum()
        return torch.autograd.grad(selected, x)[0]


def predict_x0_and_eps(model: nn.Module, schedule: NoiseSchedule, x_t: torch.Tensor, t: int, *,
                       y: torch.Tensor | None = None, guidance_scale: float = 1.0, prediction_type: str = "epsilon",
                       clip_sample: bool = True, classifier: nn.Module | None = None,
                       classifier_scale: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One network evaluation turned into (predicted x_0, predicted eps) for the update rules.

    Order: classifier-free guidance on the output; conversion by ``prediction_type``; classifier
    guidance eps^ = eps - s sqrt(1 - abar_t) grad log p(y | x_t) (Dhariwal & Nichol 2021, eq. 14, used
    for both samplers); optional clipping of x_0 to [-1, 1], after which eps is re-derived from the
    clipped x_0 so the update stays consistent (diffusers' ``use_clipped_model_output``). Without that
    re-derivation, strong guidance washes samples out.

    Args:
        model, schedule: the network and its schedule.
        x_t: (B, C, H, W) current sample. t: the current timestep (python int).
        y: int64 (B,) labels or None. guidance_scale: classifier-free w.
        prediction_type: what the network predicts ("epsilon", "v_prediction" or "sample").
        clip_sample: clip x_0 to [-1, 1].
        classifier, classifier_scale: optional noise-conditioned classifier and its scale s.

    Returns:
        (x0, eps), each (B, C, H, W).
    """
    t_batch = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
    model_labels = y if getattr(model, "null_label", None) is not None else None  # unconditional UNet: classifier only
    output = guided_prediction(model, x_t, t_batch, model_labels, guidance_scale).float()
    x0, eps = to_x0_and_eps(schedule, output, x_t, t_batch, prediction_type)
    if classifier is not None and classifier_scale != 0.0:
        gradient = classifier_log_prob_grad(classifier, x_t, t_batch, y)
        eps = eps - classifier_scale * schedule.sqrt_one_minus_alphas_cumprod[t] * gradient
        x0 = predict_x0_from_eps(schedule, x_t, t_batch, eps)
    if clip_sample:
        x0 = x0.clamp(-1.0, 1.0)
        eps = predict_eps_from_x0(schedule, x_t, t_batch, x0)
    return x0, eps


@torch.no_grad()
def ddpm_sample(model: nn.Module, schedule: NoiseSchedule, shape: Sequence[int] | None = None, *,
                noise: torch.Tensor | None = None, y: torch.Tensor | None = None, guidance_scale: float = 1.0,
                num_inference_steps: int | None = None, timestep_spacing: str = "leading",
                variance_type: str = "fixed_small", prediction_type: str = "epsilon", clip_sample: bool = True,
                classifier: nn.Module | None = None, classifier_scale: float = 0.0,
                generator: torch.Generator | None = None, capture_steps: Sequence[int] | str | None = None,
                progress: bool = False) -> SamplerOutput:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2).

    Each step samples x_{t_prev} ~ N(mu~(x_t, x0_hat), sigma_t^2 I), the posterior of eq. 7 with the
    predicted x_0 (identical to Algorithm 2's line 4 when x_0 is not clipped). With
    ``num_inference_steps`` K < T the chain is respaced: beta_t = 1 - abar_t / abar_{t_prev}
    (Nichol & Dhariwal 2021, sec. 4), as diffusers' DDPMScheduler does.

    Args:
        model: ``model(x_t, t, y)``, in eval mode, on the device the sample is made on.
        schedule: the schedule the model was trained with (same device).
        shape: (N, C, H, W) of the sample; or give ``noise`` (the starting x_T) instead.
        noise: optional starting noise (N, C, H, W); sharing it makes samplers comparable.
        y: int64 (N,) class labels in [0, num_classes-1], or None.
        guidance_scale: classifier-free guidance w (0 unconditional, 1 conditional, > 1 guided).
        num_inference_steps: K in [1, T]; default T (the full chain).
        timestep_spacing: see :func:`inference_timesteps`.
        variance_type: "fixed_small" (sigma^2 = beta~_t, the posterior variance) or "fixed_large" (sigma^2 = beta_t);
            Ho et al. 2020, sec. 3.2.
        prediction_type: what the network predicts.
        clip_sample: clip predicted x_0 to [-1, 1] at every step.
        classifier, classifier_scale: classifier guidance (Dhariwal & Nichol 2021), off by default.
        generator: random source for x_T and every z; same seed, same samples.
        capture_steps: loop indices (0-based) whose x_t and predicted x_0 are recorded, or "all".
        progress: show a tqdm progress bar.

    Returns:
        :class:`SamplerOutput` with images clipped to [-1, 1].

    Raises:
        ValueError: bad names, steps, shapes or labels (see the messages).
    """
    if variance_type not in VARIANCE_TYPES:
        raise ValueError(f"unknown variance_type {variance_type!r}; accepted: {list(VARIANCE_TYPES)}")
    setup = _setup(model, schedule, shape, noise, y, guidance_scale, num_inference_steps or schedule.num_train_timesteps,
                   timestep_spacing, prediction_type, clip_sample, classifier, classifier_scale, generator, capture_steps)
    x, predict, recorder = setup.x, setup.predict, setup.recorder
    # Start
    for i, t in enumerate(tqdm(setup.timesteps.tolist(), desc="DDPM", disable=not progress)):  # Alg. 2 line 2: t = T..1
        abar_t, abar_prev = setup.alphas_cumprod[i], setup.alphas_cumprod_prev[i]
        beta_t = 1 - abar_t / abar_prev  # beta_t (of the respaced chain when K < T)
        x0, eps = predict(x, t)  # network call, guidance, clipping of x_0
        recorder(i, t, x, x0)  # keep x_t and x0_hat for the walkthrough
        mean = (abar_prev.sqrt() * beta_t * x0 + (1 - beta_t).sqrt() * (1 - abar_prev) * x) / (1 - abar_t)  # mu~_t, eq. 7
        variance = beta_t if variance_type == "fixed_large" else (1 - abar_prev) / (1 - abar_t) * beta_t  # sigma_t^2
        z = randn(x.shape, generator, x.device) if i < len(setup.timesteps) - 1 else torch.zeros_like(x)  # line 3
        x = mean + variance.sqrt() * z  # line 4: x_{t-1} = mu + sigma_t z
    # End
    return SamplerOutput(x.clamp(-1, 1), y, recorder.result())


@torch.no_grad()
def ddim_sample(model: nn.Module, schedule: NoiseSchedule, shape: Sequence[int] | None = None, *,
                noise: torch.Tensor | None = None, y: torch.Tensor | None = None, guidance_scale: float = 1.0,
                num_inference_steps: int = 50, eta: float = 0.0, timestep_spacing: str = "leading",
                prediction_type: str = "epsilon", clip_sample: bool = True,
                classifier: nn.Module | None = None, classifier_scale: float = 0.0,
                generator: torch.Generator | None = None, capture_steps: Sequence[int] | str | None = None,
                progress: bool = False) -> SamplerOutput:
    """DDIM sampling (Song et al. 2021, eq. 12) on K of the T training steps.

    x_{t_prev} = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma_t^2) eps_hat + sigma_t z, with
    sigma_t = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev) (eq. 16).
    eta = 0 is deterministic given x_T; eta = 1 is DDPM's ancestral sampler on the same sub-sequence.
    After the last step abar_prev = 1 (diffusers' ``set_alpha_to_one``).

    Args:
        num_inference_steps: K in [1, T].
        eta: stochasticity in [0, 1]; above 1 the direction term sqrt(1 - abar_prev - sigma^2) is undefined.
        Others: as for :func:`ddpm_sample`.

    Returns:
        :class:`SamplerOutput`.

    Raises:
        ValueError: bad names, steps, eta, shapes or labels.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1] (0 deterministic DDIM, 1 DDPM-like); got {eta}")
    setup = _setup(model, schedule, shape, noise, y, guidance_scale, num_inference_steps, timestep_spacing,
                   prediction_type, clip_sample, classifier, classifier_scale, generator, capture_steps)
    x, predict, recorder = setup.x, setup.predict, setup.recorder
    # Start
    for i, t in enumerate(tqdm(setup.timesteps.tolist(), desc="DDIM", disable=not progress)):  # sub-sequence tau, sec. 4.2
        abar_t, abar_prev = setup.alphas_cumprod[i], setup.alphas_cumprod_prev[i]
        x0, eps = predict(x, t)  # network call, guidance, clipping of x_0 (eps re-derived)
        recorder(i, t, x, x0)  # keep x_t and x0_hat for the walkthrough
        sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt()  # eq. 16
        direction = (1 - abar_prev - sigma ** 2).sqrt() * eps  # "direction pointing to x_t", eq. 12
        z = randn(x.shape, generator, x.device) if eta > 0 else torch.zeros_like(x)  # random noise, eq. 12
        x = abar_prev.sqrt() * x0 + direction + sigma * z  # eq. 12
    # End
    return SamplerOutput(x.clamp(-1, 1), y, recorder.result())


SAMPLERS: dict[str, Callable[..., SamplerOutput]] = {"ddpm": ddpm_sample, "ddim": ddim_sample}


def sample(model: nn.Module, schedule: NoiseSchedule, sampler: str = "ddim", **kwargs) -> SamplerOutput:
    """Run the sampler named ``sampler`` ("ddpm" or "ddim") with ``kwargs``.

    Raises:
        ValueError: unknown sampler name.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; accepted: {sorted(SAMPLERS)}")
    return SAMPLERS[sampler](model, schedule, **kwargs)


def cycle_labels(num_samples: int, num_classes: int) -> torch.Tensor:
    """Labels 0, 1, ..., K-1, 0, 1, ... of length ``num_samples``: every class equally often (int64)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1; got {num_classes}")
    return torch.arange(num_samples) % num_classes


def check_guidance_inputs(model: nn.Module, y, batch: int, guidance_scale: float, device: torch.device | str,
                          classifier: nn.Module | None = None) -> torch.Tensor | None:
    """Validate labels and guidance scale for sampling; return the labels as int64 on ``device``.

    Labels condition a ConditionalUNet (and its classifier-free guidance). With classifier
    guidance they may also go to an unconditional UNet: then only the classifier sees them.

    Args:
        model: the network.
        y: labels (anything ``torch.as_tensor`` takes) of shape (batch,), or None.
        batch: number of samples N.
        guidance_scale: classifier-free guidance w.
        device: where the labels should live.
        classifier: the classifier of classifier guidance, if used.

    Returns:
        int64 (N,) labels, or None.

    Raises:
        ValueError: w < 0; w not in {0, 1} without labels or with an unconditional model; labels for an
            unconditional model without classifier guidance; labels of the wrong shape or outside
            [0, num_classes - 1].
    """
    if guidance_scale < 0:
        raise ValueError(f"guidance_scale must be >= 0; got {guidance_scale}")
    conditional = getattr(model, "null_label", None) is not None
    if guidance_scale not in (0.0, 1.0) and (y is None or not conditional):
        raise ValueError(f"guidance_scale={guidance_scale} needs labels y and a class-conditional model "
                         "(classifier-free guidance toward a class)")
    if y is None:
        return None
    if not conditional and classifier is None:
        raise ValueError("labels/guidance given, but the model is unconditional (no null label); use a ConditionalUNet "
                         "or classifier guidance")
    num_classes = model.num_classes if conditional else getattr(classifier, "num_classes", None)
    y = torch.as_tensor(y, dtype=torch.long, device=device)
    if y.shape != (batch,):
        raise ValueError(f"labels y must have shape ({batch},); got {tuple(y.shape)}")
    if num_classes is not None and y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes - 1}]; got values in [{int(y.min())}, {int(y.max())}]")
    return y


# --- set-up shared by both samplers ---------------------------------------------------------------


class _Recorder:
    """Collects (x_t, x0_hat) at the requested loop indices."""

    def __init__(self, capture_steps: Sequence[int] | str | None, num_steps: int):
        if capture_steps == "all":
            capture_steps = range(num_steps)
        self.wanted = sorted(set(capture_steps or []))
        if any(not 0 <= s < num_steps for s in self.wanted):
            raise ValueError(f"capture_steps must be loop indices in [0, {num_steps - 1}]; got {self.wanted}")
        self.steps, self.timesteps, self.x_t, self.pred_x0 = [], [], [], []

    def __call__(self, i: int, t: int, x: torch.Tensor, x0: torch.Tensor) -> None:
        if i in self.wanted:
            self.steps.append(i)
            self.timesteps.append(t)
            self.x_t.append(x.float().cpu())
            self.pred_x0.append(x0.float().cpu())

    def result(self) -> Trajectory | None:
        if not self.wanted:
            return None
        return Trajectory(self.steps, self.timesteps, torch.stack(self.x_t), torch.stack(self.pred_x0))


@dataclass
class _Setup:
    x: torch.Tensor
    timesteps: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    predict: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]
    recorder: _Recorder


def _setup(model, schedule, shape, noise, y, guidance_scale, num_inference_steps, timestep_spacing, prediction_type,
           clip_sample, classifier, classifier_scale, generator, capture_steps) -> _Setup:
    """Validate the arguments common to both samplers and prepare x_T, the timesteps and their alpha_bars."""
    check_prediction_type(prediction_type)
    device = next(model.parameters()).device
    if noise is None and shape is None:
        raise ValueError("give either shape=(N, C, H, W) or the starting noise")
    x = noise.to(device).float() if noise is not None else randn(tuple(shape), generator, device)
    if x.ndim != 4:
        raise ValueError(f"samples must be (N, C, H, W); got shape {tuple(x.shape)}")
    y = check_guidance_inputs(model, y, x.shape[0], guidance_scale, device,
                              classifier if classifier_scale != 0.0 else None)
    if classifier is not None and classifier_scale != 0.0 and y is None:
        raise ValueError("classifier guidance needs target labels y")
    schedule = schedule.to(device)
    timesteps = inference_timesteps(schedule.num_train_timesteps, num_inference_steps, timestep_spacing)
    alphas_cumprod = schedule.alphas_cumprod[timesteps.to(device)]
    alphas_cumprod_prev = torch.cat([alphas_cumprod[1:], torch.ones(1, device=device)])

    def predict(x_t: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        return predict_x0_and_eps(model, schedule, x_t, t, y=y, guidance_scale=guidance_scale,
                                  prediction_type=prediction_type, clip_sample=clip_sample,
                                  classifier=classifier, classifier_scale=classifier_scale)

    return _Setup(x, timesteps, alphas_cumprod, alphas_cumprod_prev, predict, _Recorder(capture_steps, len(timesteps)))
