"""DPM-Solver++(2M) against diffusers' DPMSolverMultistepScheduler, step by step; clipping and guidance."""

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler
from torch import nn

from diffusion_lib import NoiseSchedule
from diffusion_lib.diffusion import eps_from_x0, prediction_to_x0_eps
from diffusion_lib.guidance import guided_prediction
from diffusion_lib.sampling import (SAMPLERS, cycle_labels, ddim_sample, dpm_solver_sample, dpm_solver_timesteps,
                                    predict_x0_and_eps, sample)

LINEAR = dict(beta_start=1e-4, beta_end=0.02)


def _reference(model, noise, steps, spacing="linspace", prediction_type="epsilon", beta_schedule="linear"):
    """diffusers' DPM-Solver++(2M) loop: the x entering every step, and the final sample (clamped like ours)."""
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule, solver_order=2,
                                            algorithm_type="dpmsolver++", solver_type="midpoint",
                                            timestep_spacing=spacing, prediction_type=prediction_type)
    scheduler.set_timesteps(steps)
    x, entering = noise.clone(), []
    with torch.no_grad():
        for t in scheduler.timesteps:
            entering.append(x)
            x = scheduler.step(model(x, t.expand(len(x))), t, x).prev_sample
    return torch.stack(entering), x.clamp(-1, 1), scheduler.timesteps


class _Wrapped(nn.Module):
    """An unconditional model whose output is ``fn(x_t, t)``: the guided mix, or a clipped prediction."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.anchor = nn.Parameter(torch.zeros(()))  # the samplers read the device from the parameters

    def forward(self, x, t, y=None):
        return self.fn(x, t)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_timesteps_equal_diffusers(spacing):
    for steps in [*range(1, 40), 50, 99, 100, 250, 333, 500, 999]:
        ref = DPMSolverMultistepScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
        ref.set_timesteps(steps)
        ours = dpm_solver_timesteps(1000, steps, spacing)
        torch.testing.assert_close(ours, ref.timesteps.long(), msg=f"{spacing}, {steps} steps")
        assert torch.all(ours[1:] < ours[:-1]) and ours.min() >= 0 and ours.max() <= 999


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("steps", [1, 2, 5, 10, 25])
def test_unclipped_dpm_solver_equals_diffusers_step_by_step(tiny_unet_model, prediction_type, spacing, steps):
    schedule = NoiseSchedule("linear", 1000, **LINEAR)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = dpm_solver_sample(tiny_unet_model, schedule, noise=noise, num_inference_steps=steps, timestep_spacing=spacing,
                            prediction_type=prediction_type, clip_sample=False, capture_steps="all")
    entering, final, timesteps = _reference(tiny_unet_model, noise, steps, spacing, prediction_type)
    assert out.trajectory.timesteps == timesteps.tolist()
    # unclipped eps-prediction states reach |x| ~ 400 (x0 = (x_t - sigma eps) / alpha with alpha ~ 0.006)
    torch.testing.assert_close(out.trajectory.x_t, entering, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out.images, final, atol=1e-4, rtol=1e-4)


def test_unclipped_dpm_solver_equals_diffusers_on_the_cosine_schedule(tiny_unet_model):
    schedule = NoiseSchedule("cosine", 1000)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = dpm_solver_sample(tiny_unet_model, schedule, noise=noise, num_inference_steps=10, clip_sample=False,
                            prediction_type="v_prediction", capture_steps="all")
    entering, final, _ = _reference(tiny_unet_model, noise, 10, prediction_type="v_prediction",
                                    beta_schedule="squaredcos_cap_v2")
    torch.testing.assert_close(out.trajectory.x_t, entering, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out.images, final, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [5, 10, 25])
def test_clipped_dpm_solver_is_diffusers_on_the_clipped_prediction(tiny_unet_model, prediction_type, steps):
    """Clipping replaces x0_hat by clip(x0_hat) (eps re-derived): diffusers fed with that prediction agrees."""
    schedule = NoiseSchedule("linear", 1000, **LINEAR)

    def clipped_output(x, t):  # the network output whose x0_hat is the clipped one, in its own prediction_type
        abar = schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
        x0, _ = prediction_to_x0_eps(tiny_unet_model(x, t), x, abar, prediction_type)
        x0 = x0.clamp(-1, 1)
        eps = eps_from_x0(x, x0, abar)
        return eps if prediction_type == "epsilon" else abar.sqrt() * eps - (1 - abar).sqrt() * x0  # v

    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = dpm_solver_sample(tiny_unet_model, schedule, noise=noise, num_inference_steps=steps,
                            prediction_type=prediction_type, clip_sample=True, capture_steps="all")
    entering, final, _ = _reference(_Wrapped(clipped_output), noise, steps, prediction_type=prediction_type)
    torch.testing.assert_close(out.trajectory.x_t, entering, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.images, final, atol=1e-4, rtol=1e-4)
    assert out.trajectory.pred_x0.abs().max() <= 1.0
    assert not torch.allclose(out.images, dpm_solver_sample(tiny_unet_model, schedule, noise=noise,
                                                            num_inference_steps=steps, clip_sample=False,
                                                            prediction_type=prediction_type).images)


def test_first_step_is_the_clipped_ddim_update_and_the_last_returns_x0(tiny_cond_unet, schedule):
    """DPM-Solver-1 is DDIM (Lu et al. 2022): x_1 = sqrt(abar_1) clip(x0_hat) + sqrt(1 - abar_1) eps(clip(x0_hat))."""
    noise = 4 * torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))  # x0_hat gets clipped
    y = torch.tensor([0, 2])
    out = dpm_solver_sample(tiny_cond_unet, schedule, noise=noise, y=y, guidance_scale=3.0, num_inference_steps=4,
                            capture_steps="all")
    t0, t1 = dpm_solver_timesteps(100, 4, "linspace")[:2].tolist()
    x0, eps = predict_x0_and_eps(tiny_cond_unet, schedule, noise, t0, y=y, guidance_scale=3.0)
    assert x0.abs().max() == 1.0  # clipping was active
    abar = schedule.alphas_cumprod[t1]
    torch.testing.assert_close(out.trajectory.x_t[1], abar.sqrt() * x0 + (1 - abar).sqrt() * eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.images, out.trajectory.pred_x0[-1])  # last step: to abar = 1, x = x0_hat
    one_step = dpm_solver_sample(tiny_cond_unet, schedule, noise=noise, y=y, guidance_scale=3.0, num_inference_steps=1)
    ddim_one = ddim_sample(tiny_cond_unet, schedule, noise=noise, y=y, guidance_scale=3.0, num_inference_steps=1,
                           timestep_spacing="trailing")  # both: one step from t = 99 to clean data
    torch.testing.assert_close(one_step.images, ddim_one.images)


@pytest.mark.parametrize("steps", [5, 10])
def test_guided_dpm_solver_is_the_solver_on_the_guided_mix(tiny_cond_unet, schedule, steps):
    """Guidance is applied to the network output before the solver: same result as a model that outputs the mix."""
    y, w = torch.tensor([0, 1, 2]), 3.0
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    mix = _Wrapped(lambda x, t: guided_prediction(tiny_cond_unet, x, t, y, w))
    guided = dpm_solver_sample(tiny_cond_unet, schedule, noise=noise, y=y, guidance_scale=w, num_inference_steps=steps)
    on_mix = dpm_solver_sample(mix, schedule, noise=noise, num_inference_steps=steps)
    torch.testing.assert_close(guided.images, on_mix.images, atol=1e-6, rtol=0)
    assert guided.labels.tolist() == [0, 1, 2] and on_mix.labels is None
    conditional = dpm_solver_sample(tiny_cond_unet, schedule, noise=noise, y=y, num_inference_steps=steps).images
    assert not torch.allclose(guided.images, conditional)


def test_guided_unclipped_dpm_solver_equals_diffusers_on_the_guided_mix(tiny_cond_unet):
    schedule = NoiseSchedule("linear", 1000, **LINEAR)
    y, w = torch.tensor([0, 2]), 2.5
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    out = dpm_solver_sample(tiny_cond_unet, schedule, noise=noise, y=y, guidance_scale=w, num_inference_steps=8,
                            clip_sample=False)
    mix = _Wrapped(lambda x, t: guided_prediction(tiny_cond_unet, x, t, y, w))
    _, final, _ = _reference(mix, noise, 8)
    torch.testing.assert_close(out.images, final, atol=1e-4, rtol=1e-4)


def test_classifier_guidance_works_with_dpm_solver(tiny_unet, schedule):
    from diffusion_lib.models import Classifier

    torch.manual_seed(0)
    classifier = Classifier(1, 3, base_channels=8, time_conditional=True, num_train_timesteps=100)
    noise = torch.randn(2, 1, 8, 8)
    run = lambda scale: dpm_solver_sample(tiny_unet, schedule, noise=noise, y=torch.tensor([0, 2]),
                                          num_inference_steps=4, classifier=classifier, classifier_scale=scale).images
    plain = dpm_solver_sample(tiny_unet, schedule, noise=noise, num_inference_steps=4).images
    torch.testing.assert_close(run(1e-6), plain, atol=1e-4, rtol=0)
    assert not torch.allclose(run(50.0), plain)


def test_registered_seeded_and_validated(tiny_cond_unet, schedule):
    assert SAMPLERS["dpmsolver++"] is dpm_solver_sample
    run = lambda seed: sample(tiny_cond_unet, schedule, "dpmsolver++", shape=(3, 1, 8, 8), y=cycle_labels(3, 3),
                              guidance_scale=2.0, num_inference_steps=5, generator=torch.Generator().manual_seed(seed))
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert a.images.min() >= -1 and a.images.max() <= 1
    assert a.labels.dtype == torch.int64 and a.labels.tolist() == [0, 1, 2] and a.labels.device == a.images.device
    with pytest.raises(ValueError, match=r"num_inference_steps must be an int in \[1, num_train_timesteps - 1 = 99\]"):
        dpm_solver_sample(tiny_cond_unet, schedule, shape=(1, 1, 8, 8), num_inference_steps=100)
    assert len(dpm_solver_timesteps(100, 100, "trailing")) == 100  # trailing reaches K = T
    with pytest.raises(ValueError, match="unknown timestep spacing 'uniform'"):
        dpm_solver_sample(tiny_cond_unet, schedule, shape=(1, 1, 8, 8), timestep_spacing="uniform")
    with pytest.raises(ValueError, match="needs labels"):
        dpm_solver_sample(tiny_cond_unet, schedule, shape=(2, 1, 8, 8), guidance_scale=3.0)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\]"):
        dpm_solver_sample(tiny_cond_unet, schedule, shape=(2, 1, 8, 8), y=[0, 3])
    with pytest.raises(ValueError, match="unknown prediction_type"):
        dpm_solver_sample(tiny_cond_unet, schedule, shape=(1, 1, 8, 8), prediction_type="score")
