"""Homework 1: the student's schedule (diffusion_lib/homework_schedules.py, registered as "homework").

Public checks run with `python -m diffusion_lib course check`; the grader adds hidden ones.
The structure measurement is the one notebook 02 plots (diffusion_lib.experiments.forward).
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
    assert np.isfinite(betas).all(), "betas must be finite"
    assert (betas > 0).all() and (betas < 1).all(), (
        f"betas must lie strictly inside (0, 1); got min {betas.min():.3g}, max {betas.max():.3g} "
        "(a beta of 1 erases x_0 in one step and makes alpha_bar 0)")


def test_alpha_bar_decreases_and_ends_in_noise():
    alpha_bar = np.cumprod(1.0 - _betas(T))
    assert (np.diff(alpha_bar) < 0).all(), "alpha_bar_t must decrease strictly"
    assert alpha_bar[-1] <= 0.01, f"x_T must be (almost) pure noise: alpha_bar_T = {alpha_bar[-1]:.3g} > 0.01"


def test_registered_as_homework():
    schedule = NoiseSchedule("homework", T)
    assert torch.allclose(schedule.betas.double(), torch.as_tensor(_betas(T)).float().double())


def _horizon(names: tuple[str, ...], num_train_timesteps: int = T) -> dict[str, int]:
    """Per schedule, the first t where corr(x_0, x_t) < 0.1 on the digits (T when never on the grid)."""
    from diffusion_lib.data import load_dataset
    from diffusion_lib.experiments.forward import structure_horizon, structure_table, timestep_grid

    pixels = load_dataset("digits").pixels[:128]
    x0 = pixels.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    schedules = {name: NoiseSchedule(name, num_train_timesteps) for name in names}
    table = structure_table(schedules, x0, timesteps=timestep_grid(num_train_timesteps, 30), seed=0)
    horizon = structure_horizon(table)["correlation"]
    return {name: num_train_timesteps if horizon.isna()[name] else int(horizon[name]) for name in names}


def test_keeps_structure_longer_than_linear():
    horizon = _horizon(("linear", "homework"))
    assert horizon["homework"] > horizon["linear"], (
        f"correlation(x_0, x_t) falls below 0.1 at t = {horizon['homework']} with your schedule, "
        f"at t = {horizon['linear']} with the linear one: it must keep the structure longer")

### BEGIN HIDDEN TESTS
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
