"""Reverse-process samplers: DDPM ancestral sampling, DDIM and DPM-Solver++(2M), with classifier-free and
classifier guidance.

The samplers walk a descending sub-sequence of the training timesteps (all T of them by default
for DDPM). Each step has two halves, each written out once between ``# Start`` and ``# End``:

1. the prediction step every sampler shares, in :func:`predict_x0_and_eps`: the network call with
   classifier-free guidance; the prediction of x_0 and eps; classifier guidance (only when its scale
   is not 0); clipping of x_0 to [-1, 1] with eps re-derived from the clipped x_0;
2. the sampler's own update from x_t to x_{t_prev}, in :func:`ddpm_sample`, :func:`ddim_sample` and
   :func:`dpm_solver_sample`.

The guidance rules live in :mod:`diffusion_lib.guidance` (scale ``w`` as in diffusers: 0 unconditional,
1 conditional, > 1 guided; Ho & Salimans' w' = w - 1). Labels and guidance settings are validated once,
at the sampler's entry, by :func:`~diffusion_lib.guidance.check_guidance_inputs`.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .config import TIMESTEP_SPACINGS, VARIANCE_TYPES  # the accepted names live in config, a leaf
from .device import randn
from .diffusion import check_finite, check_prediction_type, eps_from_x0, prediction_to_x0_eps, x0_from_eps
from .guidance import check_guidance_inputs, classifier_guided_eps, classifier_log_prob_grad, guided_prediction
from .models import is_conditional
from .schedules import NoiseSchedule, log_snr, posterior_coefficients


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
    elif spacing == "linspace":  # as numpy.linspace computes it (i * step), so .5 ties round as in diffusers
        ascending = (torch.arange(K, dtype=torch.float64) * ((T - 1) / max(K - 1, 1))).round().long()
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; accepted: {list(TIMESTEP_SPACINGS)}")
    return ascending.flip(0).long()


def dpm_solver_timesteps(num_train_timesteps: int, num_inference_steps: int, spacing: str = "linspace") -> torch.Tensor:
    """The descending timesteps DPM-Solver++ visits, placed as diffusers' ``DPMSolverMultistepScheduler`` places them.

    The solver's last step runs from the smallest of these timesteps to clean data (alpha_bar = 1), so
    t = 0 is not spent as a step of its own: "leading" and "linspace" are the K + 1 timesteps of
    :func:`inference_timesteps` without their final 0; "trailing" is :func:`inference_timesteps`' own
    (it ends at T/K - 1, so 0 only for K = T).

    Args:
        num_train_timesteps: T.
        num_inference_steps: K, in [1, T - 1] for "leading" and "linspace", in [1, T] for "trailing".
        spacing: one of :data:`TIMESTEP_SPACINGS`.

    Returns:
        int64 tensor (K,), strictly decreasing, values in [0, T-1].

    Raises:
        ValueError: K outside its range or an unknown spacing.
    """
    T, K = num_train_timesteps, num_inference_steps
    if spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; accepted: {list(TIMESTEP_SPACINGS)}")
    if spacing == "trailing":
        return inference_timesteps(T, K, spacing)
    if isinstance(K, bool) or not isinstance(K, numbers.Integral) or not 1 <= K <= T - 1:
        raise ValueError(f"num_inference_steps must be an int in [1, num_train_timesteps - 1 = {T - 1}] for "
                         f"DPM-Solver with {spacing!r} spacing; got {K!r}")
    return inference_timesteps(T, int(K) + 1, spacing)[:-1]


def predict_x0_and_eps(model: nn.Module, schedule: NoiseSchedule, x_t: torch.Tensor, t: int | float, *,
                       y: torch.Tensor | None = None, guidance_scale: float = 1.0, prediction_type: str = "epsilon",
                       clip_sample: bool = True, classifier: nn.Module | None = None, classifier_scale: float = 0.0,
                       alpha_bar: torch.Tensor | float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One network evaluation turned into (predicted x_0, predicted eps): the prediction step every sampler shares.

    The one home of that step: :func:`ddpm_sample`, :func:`ddim_sample`, :func:`dpm_solver_sample` and
    the diffusers adapter (:class:`~diffusion_lib.interop.schedulers.DiffusersUNetAdapter`) call it once
    per step, and notebook 04 runs one step by hand with it. Its ``# Start``/``# End`` region, in order:
    classifier-free guidance on the network output (:func:`~diffusion_lib.guidance.guided_prediction`);
    conversion by ``prediction_type`` (:func:`~diffusion_lib.diffusion.prediction_to_x0_eps`);
    classifier guidance eps^ = eps - s sqrt(1 - abar_t) grad log p(y | x_t) (Dhariwal & Nichol 2021,
    eq. 14) with x_0 recomputed from eps^, only when s != 0 (at s = 0 the classifier is not called);
    optional clipping of x_0 to [-1, 1], after which eps is re-derived from the clipped x_0 (diffusers'
    ``use_clipped_model_output``; without it strong guidance washes samples out). The samplers validate
    labels and guidance settings once at their entry; here only a missing classifier is refused.

    Args:
        model, schedule: the network and its schedule (same device as ``x_t``).
        x_t: (B, C, H, W) current sample.
        t: the current timestep in [0, T-1]: a Python int, or a float (the fractional timesteps of
            diffusers' sigma-space schedulers; then give ``alpha_bar``).
        y: int64 (B,) labels or None; the network sees them only when it is class-conditional
            (:func:`~diffusion_lib.models.is_conditional`), the classifier always.
        guidance_scale: classifier-free w (0 unconditional, 1 conditional, > 1 guided).
        prediction_type: what the network predicts ("epsilon", "v_prediction" or "sample").
        clip_sample: clip x_0 to [-1, 1] (and re-derive eps).
        classifier, classifier_scale: optional noise-conditioned classifier and its scale s.
        alpha_bar: alpha_bar_t; default ``schedule.alphas_cumprod[t]`` (integral ``t`` only).

    Returns:
        (x0, eps), each (B, C, H, W) float32.

    Raises:
        ValueError: s != 0 without a classifier; a fractional ``t`` without ``alpha_bar``.
    """
    if classifier_scale != 0 and classifier is None:
        raise ValueError(f"classifier_scale={classifier_scale} needs the noise-conditioned classifier=")
    integral = float(t).is_integer()
    if alpha_bar is None and not integral:
        raise ValueError(f"timestep {t} is fractional: give its alpha_bar (interop.alpha_bar_at)")
    t_batch = torch.full((x_t.shape[0],), t, dtype=torch.long if integral else torch.float32, device=x_t.device)
    abar_t = schedule.alphas_cumprod[int(t)] if alpha_bar is None else alpha_bar
    model_y = y if is_conditional(model) else None  # an unconditional UNet under classifier guidance: classifier only
    w, s = guidance_scale, classifier_scale  # the papers' symbols
    # Start
    out = guided_prediction(model, x_t, t_batch, model_y, w)  # network, CFG: Ho & Salimans eq. 6
    x0, eps = prediction_to_x0_eps(out, x_t, abar_t, prediction_type)  # eq. 15: x0_hat, eps_hat
    if s != 0:  # classifier guidance (D&N eq. 14), skipped at s = 0
        grad = classifier_log_prob_grad(classifier, x_t, t_batch, y)  # D&N eq. 14: the gradient
        eps = classifier_guided_eps(eps, grad, abar_t, s)  # D&N eq. 14: eps - s sqrt(1-abar_t) grad
        x0 = x0_from_eps(x_t, eps, abar_t)  # eq. 15: x0_hat of the guided eps
    if clip_sample:  # clipping, before the update uses x0_hat (eq. 7, eq. 12, Alg. 2)
        x0 = x0.clamp(-1, 1)  # eq. 4's x_0 lies in [-1, 1]: clip x0_hat to that range
        eps = eps_from_x0(x_t, x0, abar_t)  # eq. 4 solved for eps: the eps of the clipped x0_hat
    # End
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
    predicted x_0 (identical to Algorithm 2's line 4 with the eps re-derived from x0_hat). With
    ``num_inference_steps`` K < T the chain is respaced: beta_t = 1 - abar_t / abar_{t_prev}
    (Nichol & Dhariwal 2021, sec. 4), as diffusers' DDPMScheduler does; the coefficients come from
    :func:`~diffusion_lib.schedules.posterior_coefficients`. No noise is added at the last step.

    Args:
        model: ``model(x_t, t, y)``, in eval mode, on the device the sample is made on.
        schedule: the schedule the model was trained with (moved to the model's device).
        shape: (N, C, H, W) of the sample; or give ``noise`` (the starting x_T) instead.
        noise: optional starting noise (N, C, H, W); sharing it makes samplers comparable.
        y: (N,) class labels in [0, num_classes-1] (anything ``torch.as_tensor`` takes), or None.
        guidance_scale: classifier-free guidance w (0 unconditional, 1 conditional, > 1 guided).
        num_inference_steps: K in [1, T]; default T (the full chain).
        timestep_spacing: see :func:`inference_timesteps`.
        variance_type: "fixed_small" (sigma^2 = beta~_t, the posterior variance) or "fixed_large" (sigma^2 = beta_t);
            Ho et al. 2020, sec. 3.2.
        prediction_type: what the network predicts ("epsilon", "v_prediction" or "sample").
        clip_sample: clip predicted x_0 to [-1, 1] at every step (and re-derive eps from it).
        classifier, classifier_scale: classifier guidance (Dhariwal & Nichol 2021, eq. 14), off by default.
        generator: random source for x_T and every z; same seed, same samples.
        capture_steps: loop indices (0-based) whose x_t and predicted x_0 are recorded, or "all".
        progress: show a tqdm progress bar.

    Returns:
        :class:`SamplerOutput`: images float32 (N, C, H, W) clipped to [-1, 1], the validated int64
        labels (on the images' device) or None, and the trajectory if requested.

    Raises:
        ValueError: bad names, steps, shapes, labels or guidance settings (see the messages).
    """
    if variance_type not in VARIANCE_TYPES:
        raise ValueError(f"unknown variance_type {variance_type!r}; accepted: {list(VARIANCE_TYPES)}")
    setup = _setup(model, schedule, _SamplerArgs(
        shape=shape, noise=noise, generator=generator, y=y, guidance_scale=guidance_scale, classifier=classifier,
        classifier_scale=classifier_scale, prediction_type=prediction_type, clip_sample=clip_sample,
        num_inference_steps=num_inference_steps or schedule.num_train_timesteps, timestep_spacing=timestep_spacing,
        capture_steps=capture_steps))
    x, last_step = setup.x, len(setup.timesteps) - 1
    fixed_large = variance_type == "fixed_large"  # sigma_t^2 = beta_t ("fixed_large") or beta~_t ("fixed_small")
    for i, timestep in enumerate(tqdm(setup.timesteps.tolist(), desc="DDPM", disable=not progress)):
        x_t, abar_t, abar_prev = x, setup.alphas_cumprod[i], setup.alphas_cumprod_prev[i]
        x0, _ = predict_x0_and_eps(model, schedule, x_t, timestep, **setup.prediction)  # the shared step
        # Start
        post = posterior_coefficients(abar_t, abar_prev)  # eq. 6-7: beta_t, beta~_t, mu~_t weights
        mean = post.coef_x0 * x0 + post.coef_xt * x_t  # eq. 7 (= Alg. 2 line 4's mean with eps)
        variance = post.beta if fixed_large else post.variance  # sigma_t^2: beta_t or eq. 7's beta~
        z = randn(x_t.shape, generator, x_t.device) if i < last_step else 0  # Alg. 2 line 3
        x = mean + variance.sqrt() * z  # Alg. 2 line 4: x_{t-1} = mu + sigma_t z
        # End
        setup.recorder(i, timestep, x_t, x0)
    return SamplerOutput(x.clamp(-1, 1), setup.y, setup.recorder.result())


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
        :class:`SamplerOutput`, as for :func:`ddpm_sample`.

    Raises:
        ValueError: bad names, steps, eta, shapes, labels or guidance settings.
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1] (0 deterministic DDIM, 1 DDPM-like); got {eta}")
    setup = _setup(model, schedule, _SamplerArgs(
        shape=shape, noise=noise, generator=generator, y=y, guidance_scale=guidance_scale, classifier=classifier,
        classifier_scale=classifier_scale, prediction_type=prediction_type, clip_sample=clip_sample,
        num_inference_steps=num_inference_steps, timestep_spacing=timestep_spacing, capture_steps=capture_steps))
    x = setup.x
    for i, timestep in enumerate(tqdm(setup.timesteps.tolist(), desc="DDIM", disable=not progress)):
        x_t, abar_t, abar_prev = x, setup.alphas_cumprod[i], setup.alphas_cumprod_prev[i]
        x0, eps = predict_x0_and_eps(model, schedule, x_t, timestep, **setup.prediction)  # the shared step
        # Start
        sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt()  # eq. 16
        direction = (1 - abar_prev - sigma ** 2).sqrt() * eps  # eq. 12: direction pointing to x_t
        z = randn(x_t.shape, generator, x_t.device) if eta > 0 else 0  # eq. 12: the random noise
        x = abar_prev.sqrt() * x0 + direction + sigma * z  # eq. 12: x_{t-1}
        # End
        setup.recorder(i, timestep, x_t, x0)
    return SamplerOutput(x.clamp(-1, 1), setup.y, setup.recorder.result())


@torch.no_grad()
def dpm_solver_sample(model: nn.Module, schedule: NoiseSchedule, shape: Sequence[int] | None = None, *,
                      noise: torch.Tensor | None = None, y: torch.Tensor | None = None, guidance_scale: float = 1.0,
                      num_inference_steps: int = 20, timestep_spacing: str = "linspace",
                      prediction_type: str = "epsilon", clip_sample: bool = True,
                      classifier: nn.Module | None = None, classifier_scale: float = 0.0,
                      generator: torch.Generator | None = None, capture_steps: Sequence[int] | str | None = None,
                      progress: bool = False) -> SamplerOutput:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
    Probabilistic Models", Algorithm 2): a second-order multistep solver of the diffusion ODE in its
    data-prediction form, deterministic given x_T; Lu et al. report good guided samples in 10-20 steps.

    With alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t) and the half log-SNR
    lambda_t = log(alpha_t / sigma_t), each step from t to the next timestep t' (h = lambda_t' - lambda_t) is

        r = h_previous / h                                                               (Alg. 2 line 7)
        D = (1 + 1 / (2 r)) x0_hat - x0_hat_previous / (2 r)
          = x0_hat + (x0_hat - x0_hat_previous) / (2 r)                                  (Alg. 2 line 8)
        x_t' = (sigma_t' / sigma_t) x_t - alpha_t' (e^-h - 1) D                          (Alg. 2 line 9)

    the region's lines, in the algorithm's order. With x_t = alpha_t x0_hat + sigma_t eps_hat substituted,
    line 9 reads x_t' = alpha_t' (x0_hat + (1 - e^-h) (D - x0_hat)) + sigma_t' eps_hat: with D = x0_hat
    (first order, Alg. 2 line 4) it is DDIM's eta = 0 update. The first step is first order (the
    algorithm has no previous x0_hat yet), and so is the last, which goes to clean data (abar = 1,
    sigma = 0, lambda = +inf, e^-h = 0): it returns that step's x0_hat, as DDIM's last step and diffusers'
    ``DPMSolverMultistepScheduler`` (final_sigmas_type="zero") do. Guidance is applied to the network
    output before the solver sees it; clipping replaces x0_hat by its clipped value and re-derives eps
    (the rule of :func:`ddim_sample`). Without clipping, with ``solver_order=2``,
    ``solver_type="midpoint"``, ``algorithm_type="dpmsolver++"`` and the same betas and spacing, the
    result equals diffusers'; with clipping it equals diffusers' run on the clipped prediction (diffusers'
    scheduler has no ``clip_sample``; its ``thresholding`` is Imagen's dynamic thresholding, another rule).

    Args:
        num_inference_steps: K network evaluations, on :func:`dpm_solver_timesteps` (K in [1, T - 1], or
            [1, T] for "trailing").
        timestep_spacing: "linspace" (default, as diffusers' scheduler: starts at T - 1), "leading" or "trailing".
        Others: as for :func:`ddim_sample`.

    Returns:
        :class:`SamplerOutput`, as for :func:`ddpm_sample`.

    Raises:
        ValueError: bad names, steps, shapes, labels or guidance settings.
    """
    setup = _setup(model, schedule, _SamplerArgs(
        shape=shape, noise=noise, generator=generator, y=y, guidance_scale=guidance_scale, classifier=classifier,
        classifier_scale=classifier_scale, prediction_type=prediction_type, clip_sample=clip_sample,
        num_inference_steps=num_inference_steps, timestep_spacing=timestep_spacing, capture_steps=capture_steps),
        timesteps_fn=dpm_solver_timesteps)
    x, last_step = setup.x, len(setup.timesteps) - 1
    abar = torch.cat([setup.alphas_cumprod, setup.alphas_cumprod_prev[-1:]])  # the K timesteps', then 1 (clean)
    lambdas = log_snr(abar) / 2  # lambda_t = log(alpha_t / sigma_t), half the log-SNR; +inf when clean
    x0_last = h_last = None
    for i, timestep in enumerate(tqdm(setup.timesteps.tolist(), desc="DPM-Solver++", disable=not progress)):
        x_t, abar_t, abar_next, lambda_t, lambda_next = x, *abar[i:i + 2], *lambdas[i:i + 2]
        sigma_t, alpha_next, sigma_next = (1 - abar_t).sqrt(), abar_next.sqrt(), (1 - abar_next).sqrt()
        x0, _ = predict_x0_and_eps(model, schedule, x_t, timestep, **setup.prediction)  # the shared step
        # Start
        h = lambda_next - lambda_t  # Alg. 2 line 1: h_i = lambda_{t_i} - lambda_{t_{i-1}}
        D = x0  # Alg. 2 line 4: first order on the first step and on the last (to clean data)
        if 0 < i < last_step:  # Alg. 2 line 6: second order on the steps between
            r = h_last / h  # Alg. 2 line 7: r_i = h_{i-1} / h_i
            D = x0 + (x0 - x0_last) / (2 * r)  # Alg. 2 line 8: (1 + 1/2r) x0 - x0_last / 2r
        x = sigma_next / sigma_t * x_t - alpha_next * torch.expm1(-h) * D  # Alg. 2 lines 4 and 9
        x0_last, h_last = x0, h  # Alg. 2 lines 5 and 10: buffer x_theta (and h_i)
        # End
        setup.recorder(i, timestep, x_t, x0)
    return SamplerOutput(x.clamp(-1, 1), setup.y, setup.recorder.result())


SAMPLERS: dict[str, Callable[..., SamplerOutput]] = {"ddpm": ddpm_sample, "ddim": ddim_sample,
                                                     "dpmsolver++": dpm_solver_sample}


def sample(model: nn.Module, schedule: NoiseSchedule, sampler: str = "ddim", **kwargs) -> SamplerOutput:
    """Run the sampler named ``sampler`` ("ddpm", "ddim" or "dpmsolver++"; see :data:`SAMPLERS`) with ``kwargs``.

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


# --- set-up shared by the samplers ---------------------------------------------------------------


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


@dataclass(frozen=True)
class _SamplerArgs:
    """The arguments every sampler validates at its entry (their meaning: :func:`ddpm_sample`'s Args)."""

    shape: Sequence[int] | None
    noise: torch.Tensor | None
    y: torch.Tensor | None
    guidance_scale: float
    classifier: nn.Module | None
    classifier_scale: float
    prediction_type: str
    clip_sample: bool
    generator: torch.Generator | None
    num_inference_steps: int
    timestep_spacing: str
    capture_steps: Sequence[int] | str | None


@dataclass
class _Setup:
    """What the samplers prepare before the loop: x_T, validated labels, timesteps and their alpha_bars, and
    ``prediction``, the keyword arguments of every step's :func:`predict_x0_and_eps` (with those labels)."""

    x: torch.Tensor
    y: torch.Tensor | None
    timesteps: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    recorder: _Recorder
    prediction: dict[str, Any]


def _setup(model: nn.Module, schedule: NoiseSchedule, args: _SamplerArgs,
           timesteps_fn: Callable[[int, int, str], torch.Tensor] = inference_timesteps) -> _Setup:
    """Validate the arguments common to the samplers (once) and prepare x_T, the timesteps and their alpha_bars.

    Moves ``schedule`` to the model's device (in place, as ``nn.Module.to`` does). ``timesteps_fn(T, K, spacing)``
    places the timesteps (:func:`inference_timesteps` or :func:`dpm_solver_timesteps`); after the last one
    comes alpha_bar = 1 (clean data).
    """
    check_prediction_type(args.prediction_type)
    device = next(model.parameters()).device
    if args.noise is None and args.shape is None:
        raise ValueError("give either shape=(N, C, H, W) or the starting noise")
    if args.noise is not None:
        x = args.noise.to(device).float()
        check_finite(x, "noise")  # one host read per sampling call
    else:
        x = randn(tuple(args.shape), args.generator, device)
    if x.ndim != 4:
        raise ValueError(f"samples must be (N, C, H, W); got shape {tuple(x.shape)}")
    y = check_guidance_inputs(model, args.y, x.shape[0], args.guidance_scale, device, args.classifier,
                              args.classifier_scale)
    schedule.to(device)
    timesteps = timesteps_fn(schedule.num_train_timesteps, args.num_inference_steps, args.timestep_spacing)
    alphas_cumprod = schedule.alphas_cumprod[timesteps.to(device)]
    alphas_cumprod_prev = torch.cat([alphas_cumprod[1:], torch.ones(1, device=device)])
    recorder = _Recorder(args.capture_steps, len(timesteps))
    prediction = dict(y=y, guidance_scale=args.guidance_scale, prediction_type=args.prediction_type,
                      clip_sample=args.clip_sample, classifier=args.classifier, classifier_scale=args.classifier_scale)
    return _Setup(x, y, timesteps, alphas_cumprod, alphas_cumprod_prev, recorder, prediction)
