"""Homework 1: the student's schedule (diffusion_lib/homework_schedules.py, registered as "homework").

Public checks run with `python -m diffusion_lib course check`; the grader adds hidden ones.
The structure measurement is the one notebook 02 plots (diffusion_lib.experiments.forward), computed
exactly: corr(x_0, x_t) = sqrt(a) s / sqrt(a s^2 + 1 - a) with a = alpha_bar_t, s = std of the digits.
Your schedule must keep it >= 0.1 strictly longer than every schedule the library registers (returning
one of them, or a trivial reparametrisation, scores nothing on that check).
"""

import numpy as np
import pytest
import torch

import diffusion_lib.homework_schedules as homework
from diffusion_lib.schedules import NoiseSchedule

T = 1000


def _betas(num_train_timesteps: int) -> np.ndarray:
    return np.asarray(homework.homework_schedule(num_train_timesteps), dtype=np.float64)


def test_betas_strictly_inside_0_1():
    betas = _betas(T)
    assert betas.shape == (T,), f"expected {T} betas, got shape {betas.shape}"
    bad = np.nonzero(~np.isfinite(betas))[0]
    assert len(bad) == 0, f"expected finite betas, got {len(bad)} non-finite, first beta[{bad[:1].tolist()}]"
    assert (betas > 0).all() and (betas < 1).all(), (
        f"betas must lie strictly inside (0, 1); got min {betas.min():.3g}, max {betas.max():.3g} "
        "(a beta of 1 erases x_0 in one step and makes alpha_bar 0)")


def test_alpha_bar_decreases_and_ends_in_noise():
    alpha_bar = np.cumprod(1.0 - _betas(T))
    rising = np.nonzero(np.diff(alpha_bar) >= 0)[0]
    t = int(rising[0]) if len(rising) else 0
    assert len(rising) == 0, (
        f"expected alpha_bar_t to decrease strictly, got alpha_bar[{t + 1}] = {alpha_bar[min(t + 1, T - 1)]:.6g} "
        f">= alpha_bar[{t}] = {alpha_bar[t]:.6g}")
    assert alpha_bar[-1] <= 0.01, (
        f"expected x_T to be (almost) pure noise, alpha_bar_T <= 0.01; got alpha_bar_T = {alpha_bar[-1]:.3g}")


def test_registered_as_homework():
    schedule = NoiseSchedule("homework", T)
    expected = torch.as_tensor(_betas(T)).float().double()
    assert schedule.betas.shape == expected.shape, (
        f"expected NoiseSchedule('homework', {T}).betas of shape {tuple(expected.shape)}, got {tuple(schedule.betas.shape)}")
    err = float((schedule.betas.double() - expected).abs().max())
    assert torch.allclose(schedule.betas.double(), expected), (
        f"expected NoiseSchedule('homework', {T}).betas to equal homework_schedule({T}), got max abs diff {err:.3g}")


def _horizons(num_train_timesteps: int = T) -> dict[str, int]:
    """Per schedule, the first t where corr(x_0, x_t) < 0.1 on the digits, computed exactly (no sampling)."""
    from diffusion_lib.experiments.forward import data_std, exact_structure_horizon, library_schedules

    std = data_std("digits")
    return {name: exact_structure_horizon(NoiseSchedule(name, num_train_timesteps).alphas_cumprod, std)
            for name in library_schedules() + ["homework"]}


def test_keeps_structure_longer_than_every_registered_schedule():
    horizon = _horizons()
    others = {name: h for name, h in horizon.items() if name != "homework"}
    best = max(others, key=others.get)
    assert horizon["homework"] > others[best], (
        f"expected corr(x_0, x_t) to fall below 0.1 later than with every registered schedule, after t = "
        f"{others[best]} (the best registered one, {best!r}); got t = {horizon['homework']} with yours "
        f"(all registered: {others})")

### BEGIN HIDDEN TESTS [lengths]
@pytest.mark.parametrize("num_train_timesteps", [1, 10, 50, 4000])
def test_valid_for_every_length(num_train_timesteps):
    betas = _betas(num_train_timesteps)
    assert betas.shape == (num_train_timesteps,)
    assert np.isfinite(betas).all() and (betas > 0).all() and (betas < 1).all(), (
        f"T={num_train_timesteps}: betas must lie strictly inside (0, 1)")
    if num_train_timesteps >= 10:
        alpha_bar = np.cumprod(1.0 - betas)
        assert (np.diff(alpha_bar) < 0).all() and alpha_bar[-1] <= 0.01, (
            f"T={num_train_timesteps}: alpha_bar must decrease to at most 0.01")


def test_noise_schedule_buffers_are_finite():
    schedule = NoiseSchedule("homework", T)
    for name in ("posterior_variance", "posterior_mean_coef1", "posterior_mean_coef2", "snr"):
        assert torch.isfinite(getattr(schedule, name)).all(), f"NoiseSchedule buffer {name} is not finite"
### END HIDDEN TESTS
