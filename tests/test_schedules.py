"""Beta schedules against the papers' formulas and against diffusers' schedulers."""

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from diffusion_lib import NoiseSchedule, available_schedules, register_schedule
from diffusion_lib import schedules
from diffusion_lib.schedules import get_betas


@pytest.fixture
def registry():
    """Schedules registered inside a test are removed afterwards (the registry is global)."""
    saved = dict(schedules._SCHEDULES)
    yield
    schedules._SCHEDULES.clear()
    schedules._SCHEDULES.update(saved)


def test_linear_matches_ho_et_al():
    s = NoiseSchedule("linear", 1000)
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(s.alphas_cumprod, torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0).float())


def test_linear_scales_with_T():
    betas = get_betas("linear", 250)
    assert betas[0].item() == pytest.approx(4e-4) and betas[-1].item() == pytest.approx(0.08)


def test_cosine_matches_nichol_dhariwal_formula():
    T, s = 1000, 0.008
    s_ = NoiseSchedule("cosine", T)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    for t in [0, 10, 500, 998]:  # alphas_cumprod[t] is alpha_bar at paper step t + 1
        assert s_.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-4, abs=1e-7)
    assert s_.betas.max().item() == pytest.approx(0.999)


@pytest.mark.parametrize("T", [1000, 50])
def test_linear_and_cosine_equal_diffusers(T):
    ours = NoiseSchedule("linear", T, beta_start=1e-4, beta_end=0.02)
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    torch.testing.assert_close(ours.betas, ref.betas, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod, rtol=1e-5, atol=1e-7)
    ours = NoiseSchedule("cosine", T)
    ref = DDIMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    torch.testing.assert_close(ours.betas, ref.betas, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod, rtol=1e-5, atol=1e-7)


def test_quadratic_equals_diffusers_scaled_linear():
    ours = NoiseSchedule("quadratic", 1000, beta_start=0.00085, beta_end=0.012)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    torch.testing.assert_close(ours.betas, ref.betas, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["linear", "cosine", "quadratic", "sigmoid", "sqrt", "jsd"])
@pytest.mark.parametrize("T", [1, 10, 1000, 4000])
def test_every_schedule_is_valid_at_any_T(name, T):
    s = NoiseSchedule(name, T)
    assert s.num_train_timesteps == T
    assert torch.all((s.betas > 0) & (s.betas <= 1))
    assert torch.all(s.alphas_cumprod[1:] <= s.alphas_cumprod[:-1])  # signal only decays
    assert s.alphas_cumprod_prev[0] == 1.0
    assert torch.all(s.posterior_variance >= 0) and torch.isfinite(s.posterior_log_variance_clipped).all()
    assert torch.isfinite(s.log_snr()).all()


def test_posterior_coefficients_match_eq7():
    s = NoiseSchedule("cosine", 200)
    b = get_betas("cosine", 200)  # float64 reference, computed independently of the buffers
    a = 1 - b
    ab = torch.cumprod(a, 0)
    abp = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    torch.testing.assert_close(s.posterior_variance.double(), b * (1 - abp) / (1 - ab), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(s.posterior_mean_coef1.double(), abp.sqrt() * b / (1 - ab), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(s.posterior_mean_coef2.double(), a.sqrt() * (1 - abp) / (1 - ab), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(s.snr.double(), ab / (1 - ab), rtol=1e-6, atol=1e-9)


def test_buffers_are_float32_and_move_with_module():
    s = NoiseSchedule("linear", 10)
    names = dict(s.named_buffers())
    assert {"betas", "alphas_cumprod", "alphas_cumprod_prev", "posterior_variance"} <= set(names)
    assert all(v.dtype == torch.float32 for v in names.values())


def test_registered_schedule_is_usable_by_name(registry):
    @register_schedule("test_constant")
    def constant(num_train_timesteps, beta=0.01):
        return np.full(num_train_timesteps, beta)

    assert "test_constant" in available_schedules()
    s = NoiseSchedule("test_constant", 20, beta=0.05)
    assert torch.allclose(s.betas, torch.full((20,), 0.05))


def test_bad_schedule_inputs_raise_clear_errors(registry):
    with pytest.raises(ValueError, match="unknown beta schedule 'nope'"):
        NoiseSchedule("nope", 10)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        NoiseSchedule("linear", 0)

    @register_schedule("test_broken")
    def broken(num_train_timesteps):
        return np.full(num_train_timesteps, 1.5)

    with pytest.raises(ValueError, match="outside"):
        NoiseSchedule("test_broken", 10)


def test_test_registrations_do_not_leak():
    assert "test_broken" not in available_schedules() and "test_constant" not in available_schedules()
