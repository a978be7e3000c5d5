"""Noise (beta) schedules and the NoiseSchedule that holds every derived coefficient.

A schedule function maps ``num_train_timesteps`` T to the variances beta_1..beta_T of the
forward process q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)  (Ho et al. 2020, eq. 2).
Index 0 of every tensor here is the paper's t = 1, the least noisy step.

Register your own schedule with the decorator and use it by name everywhere::

    @register_schedule("my_schedule")
    def my_schedule(num_train_timesteps: int) -> np.ndarray:
        return np.linspace(1e-4, 0.02, num_train_timesteps)

    NoiseSchedule("my_schedule", num_train_timesteps=1000)
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import nn

ScheduleFn = Callable[..., np.ndarray]
_SCHEDULES: dict[str, ScheduleFn] = {}


def register_schedule(name: str) -> Callable[[ScheduleFn], ScheduleFn]:
    """Decorator registering a beta-schedule function under ``name``.

    The function takes ``num_train_timesteps`` (int, T) plus optional keyword arguments and
    returns the betas: a float array of shape (T,) with values in (0, 1].
    Registering an existing name replaces it (so a notebook cell can be re-run).

    Raises:
        ValueError: if ``name`` is empty or not a string.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"schedule name must be a non-empty string; got {name!r}")

    def decorator(fn: ScheduleFn) -> ScheduleFn:
        _SCHEDULES[name] = fn
        return fn

    return decorator


def available_schedules() -> list[str]:
    """Names of every registered schedule, sorted."""
    return sorted(_SCHEDULES)


def get_betas(name: str, num_train_timesteps: int, **kwargs) -> torch.Tensor:
    """Betas of the named schedule, validated.

    Args:
        name: a registered schedule name (see :func:`available_schedules`).
        num_train_timesteps: T, a positive int.
        **kwargs: passed to the schedule function (e.g. ``beta_start``, ``s``).

    Returns:
        float64 tensor (T,) of betas in (0, 1].

    Raises:
        ValueError: unknown name, T < 1, or a schedule returning bad values.
    """
    if name not in _SCHEDULES:
        raise ValueError(f"unknown beta schedule {name!r}; available: {available_schedules()}")
    if not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be a positive int; got {num_train_timesteps!r}")
    betas = torch.as_tensor(np.asarray(_SCHEDULES[name](num_train_timesteps, **kwargs)), dtype=torch.float64)
    if betas.shape != (num_train_timesteps,):
        raise ValueError(f"schedule {name!r} returned shape {tuple(betas.shape)}; expected ({num_train_timesteps},)")
    if not torch.all((betas > 0) & (betas <= 1)):
        raise ValueError(f"schedule {name!r} returned betas outside (0, 1]: min {betas.min():.3g}, max {betas.max():.3g}")
    return betas


def betas_from_alphas_cumprod(alpha_bar: Callable[[np.ndarray], np.ndarray], num_train_timesteps: int,
                              max_beta: float = 0.999) -> np.ndarray:
    """Discretise a continuous alpha_bar(s), s in [0, 1], into betas.

    beta_t = min(1 - alpha_bar(t / T) / alpha_bar((t - 1) / T), max_beta)  (Nichol & Dhariwal 2021, sec. 3.2).

    Args:
        alpha_bar: vectorised function from s in [0, 1] to the fraction of signal variance kept.
        num_train_timesteps: T.
        max_beta: upper clip that avoids singularities near s = 1.

    Returns:
        float64 array (T,).
    """
    s = np.arange(num_train_timesteps + 1, dtype=np.float64) / num_train_timesteps
    abar = alpha_bar(s)
    return np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)


@register_schedule("linear")
def linear(num_train_timesteps: int, beta_start: float | None = None, beta_end: float | None = None,
           max_beta: float = 0.999) -> np.ndarray:
    """Linear betas (Ho et al. 2020, sec. 4: 1e-4 to 0.02 for T = 1000).

    Without explicit bounds, both are scaled by 1000 / T so any T gives about the same total
    noise (Nichol & Dhariwal 2021, improved-diffusion's ``get_named_beta_schedule``); for T < 50
    the scaled betas would pass 1, so they are clipped at ``max_beta``.
    """
    scale = 1000.0 / num_train_timesteps
    beta_start = scale * 1e-4 if beta_start is None else beta_start
    beta_end = scale * 0.02 if beta_end is None else beta_end
    return np.minimum(np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64), max_beta)


@register_schedule("cosine")
def cosine(num_train_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Cosine schedule: alpha_bar(s) = cos((s + 0.008) / 1.008 * pi / 2)^2, betas clipped at 0.999
    (Nichol & Dhariwal 2021, eq. 17)."""
    return betas_from_alphas_cumprod(lambda u: np.cos((u + s) / (1 + s) * math.pi / 2) ** 2, num_train_timesteps, max_beta)


@register_schedule("quadratic")
def quadratic(num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """Quadratic betas: linear in sqrt(beta) (Song et al. 2021 DDIM code's "quad"; diffusers' "scaled_linear")."""
    return np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=np.float64) ** 2


@register_schedule("sigmoid")
def sigmoid(num_train_timesteps: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0,
            max_beta: float = 0.999) -> np.ndarray:
    """Sigmoid schedule on alpha_bar (Chen 2023, "On the Importance of Noise Scheduling", Algorithm 1)."""
    def sig(z):
        return 1.0 / (1.0 + np.exp(-z))

    v_start, v_end = sig(start / tau), sig(end / tau)
    return betas_from_alphas_cumprod(
        lambda u: np.clip((v_end - sig((u * (end - start) + start) / tau)) / (v_end - v_start), 1e-9, 1.0),
        num_train_timesteps, max_beta)


@register_schedule("sqrt")
def sqrt(num_train_timesteps: int, s: float = 1e-4, max_beta: float = 0.999) -> np.ndarray:
    """Square-root schedule: alpha_bar(s) = 1 - sqrt(s + 1e-4) (Li et al. 2022, Diffusion-LM, sec. 4.2)."""
    return betas_from_alphas_cumprod(lambda u: 1.0 - np.sqrt(u + s), num_train_timesteps, max_beta)


@register_schedule("jsd")
def jsd(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """beta_t = 1 / (T - t + 1): 1/T, 1/(T-1), ..., 1 (Sohl-Dickstein et al. 2015; DDPM code's "jsd").

    The last beta (exactly 1) is clipped to ``max_beta`` so alpha_bar_T > 0 and x_0 stays recoverable.
    """
    return np.minimum(1.0 / np.linspace(num_train_timesteps, 1, num_train_timesteps, dtype=np.float64), max_beta)


def all_schedules(num_train_timesteps: int = 1000) -> dict[str, "NoiseSchedule"]:
    """One :class:`NoiseSchedule` per registered schedule (default arguments), keyed by name, sorted.

    The table that schedule comparisons (plots, forward-process measurements) all read.

    Raises:
        ValueError: bad ``num_train_timesteps``, or a registered schedule that returns bad betas.
    """
    return {name: NoiseSchedule(name, num_train_timesteps) for name in available_schedules()}


def broadcast(values: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Gather ``values[t]`` and shape it to broadcast against ``x``.

    Args:
        values: (T,) coefficient buffer.
        t: int64 timesteps, shape (B,) or scalar, in [0, T-1].
        x: the tensor (B, ...) the result multiplies.

    Returns:
        tensor (B, 1, ..., 1) (or (1, ..., 1) for scalar t) in ``x``'s dtype.
    """
    coef = values[t.to(values.device)].to(device=x.device, dtype=x.dtype)
    return coef.reshape(-1, *([1] * (x.ndim - 1)))


class PosteriorCoefficients(NamedTuple):
    """The coefficients of q(x_{t-1} | x_t, x_0) = N(coef_x0 x_0 + coef_xt x_t, variance I)  (Ho et al. 2020, eqs. 6-7).

    Each field has the shape and dtype of the ``alphas_cumprod`` it was computed from.

    Attributes:
        beta: beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}, the step's variance (eq. 2; of the respaced chain
            when the previous step is not t - 1, Nichol & Dhariwal 2021, sec. 4).
        variance: beta~_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t (eq. 7).
        coef_x0: sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t), the weight of x_0 in mu~_t (eq. 7).
        coef_xt: sqrt(1 - beta_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t), the weight of x_t in mu~_t (eq. 7).
    """

    beta: torch.Tensor
    variance: torch.Tensor
    coef_x0: torch.Tensor
    coef_xt: torch.Tensor


def posterior_coefficients(alphas_cumprod: torch.Tensor, alphas_cumprod_prev: torch.Tensor) -> PosteriorCoefficients:
    """Posterior coefficients from alpha_bar_t and alpha_bar_{t-1} alone  (Ho et al. 2020, eqs. 6-7).

    The one home of these formulas: :class:`NoiseSchedule` computes its ``posterior_*`` buffers with it
    (float64, every step), and the DDPM sampler calls it per step of a respaced chain, where "the
    previous step" is the previous inference timestep.

    Args:
        alphas_cumprod: alpha_bar_t, a float tensor of any shape, values in (0, 1).
        alphas_cumprod_prev: alpha_bar_{t-1}, same shape (or broadcastable), values in (0, 1] and
            >= ``alphas_cumprod`` (1 for the first step).

    Returns:
        :class:`PosteriorCoefficients`, computed in the inputs' dtype.
    """
    abar, abar_prev = alphas_cumprod, alphas_cumprod_prev
    beta = 1.0 - abar / abar_prev
    return PosteriorCoefficients(beta=beta,
                                 variance=beta * (1.0 - abar_prev) / (1.0 - abar),
                                 coef_x0=abar_prev.sqrt() * beta / (1.0 - abar),
                                 coef_xt=(1.0 - beta).sqrt() * (1.0 - abar_prev) / (1.0 - abar))


def log_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """log SNR = log(alpha_bar / (1 - alpha_bar))  (Kingma et al. 2021, eq. 1; SNR as in :class:`NoiseSchedule`).

    Half of it is DPM-Solver's lambda_t = log(alpha_t / sigma_t) with alpha_t = sqrt(alpha_bar_t),
    sigma_t = sqrt(1 - alpha_bar_t) (Lu et al. 2022, sec. 2).

    Args:
        alphas_cumprod: alpha_bar, a float tensor of any shape, values in (0, 1].

    Returns:
        a tensor of the same shape and dtype; +inf where alpha_bar = 1 (clean data).
    """
    return alphas_cumprod.log() - (1.0 - alphas_cumprod).log()


class NoiseSchedule(nn.Module):
    """Every coefficient of the forward process and its posterior, for one beta schedule.

    Computed in float64, stored as float32 buffers named as in diffusers, so ``.to(device)`` moves
    them. The buffers are not persistent (not in ``state_dict``): a checkpoint stores the schedule's
    name, T and arguments (in the config) and rebuilds them. With alpha_t = 1 - beta_t and
    alpha_bar_t = prod_{s<=t} alpha_s (Ho et al. 2020, sec. 2):

    ============================== ==================================================== =============
    buffer (T,)                    value                                                paper
    ============================== ==================================================== =============
    betas                          beta_t                                               eq. 2
    alphas                         alpha_t = 1 - beta_t                                 eq. 4
    alphas_cumprod                 alpha_bar_t                                          eq. 4
    alphas_cumprod_prev            alpha_bar_{t-1} (1 for the first step)               eq. 7
    sqrt_alphas_cumprod            sqrt(alpha_bar_t)                                    eq. 4
    sqrt_one_minus_alphas_cumprod  sqrt(1 - alpha_bar_t)                                eq. 4
    posterior_variance             beta~_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t  eq. 7
    posterior_log_variance_clipped log beta~_t, with beta~_1 (=0) replaced by beta~_2   DDPM code
    posterior_mean_coef1           sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t)     eq. 7 (x_0)
    posterior_mean_coef2           sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)  eq. 7 (x_t)
    snr                            alpha_bar_t / (1 - alpha_bar_t)                      Kingma et al. 2021
    ============================== ==================================================== =============

    Args:
        name: registered schedule name (``available_schedules()``), or None with ``betas`` given.
        num_train_timesteps: T (int >= 1). Ignored when ``betas`` is given.
        betas: explicit betas (T,) in (0, 1], instead of a name.
        **schedule_kwargs: forwarded to the schedule function.

    Raises:
        ValueError: unknown name, bad T, or betas outside (0, 1].
    """

    def __init__(self, name: str | None = "linear", num_train_timesteps: int = 1000,
                 betas: torch.Tensor | np.ndarray | None = None, **schedule_kwargs):
        super().__init__()
        if betas is None:
            betas = get_betas(name, num_train_timesteps, **schedule_kwargs)
        else:
            betas = torch.as_tensor(np.asarray(betas), dtype=torch.float64)
            if betas.ndim != 1 or len(betas) < 1 or not torch.all((betas > 0) & (betas <= 1)):
                raise ValueError("betas must be a non-empty 1-D array with values in (0, 1]")
        self.name = name or "custom"
        self.schedule_kwargs = dict(schedule_kwargs)

        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        posterior = posterior_coefficients(alphas_cumprod, alphas_cumprod_prev)
        log_var_floor = posterior.variance[1] if len(betas) > 1 else betas[0]
        coefficients = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            "posterior_variance": posterior.variance,
            "posterior_log_variance_clipped": torch.cat([log_var_floor[None], posterior.variance[1:]]).log(),
            "posterior_mean_coef1": posterior.coef_x0,
            "posterior_mean_coef2": posterior.coef_xt,
            "snr": alphas_cumprod / (1.0 - alphas_cumprod),
        }
        for key, value in coefficients.items():
            self.register_buffer(key, value.float(), persistent=False)

    @property
    def num_train_timesteps(self) -> int:
        """T, the number of diffusion steps the model is trained with."""
        return len(self.betas)

    def log_snr(self) -> torch.Tensor:
        """:func:`log_snr` of every timestep's alpha_bar_t, float32 (T,)."""
        return log_snr(self.alphas_cumprod)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_train_timesteps={self.num_train_timesteps}"
