"""DDPM and DDIM against diffusers' schedulers, guidance identities, seeding and bad inputs.

DPM-Solver++ has its own oracle tests in tests/test_dpm_solver.py; the shared behaviour is parametrized here.
"""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from diffusion_lib import NoiseSchedule
from diffusion_lib.guidance import guided_prediction
from diffusion_lib.sampling import (cycle_labels, ddim_sample, ddpm_sample, inference_timesteps, predict_x0_and_eps,
                                    sample)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 10, 27, 31, 50, 1000])  # 27, 31: linspace hits a .5 tie
def test_timesteps_equal_diffusers(spacing, steps):
    ref = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    ref.set_timesteps(steps)
    torch.testing.assert_close(inference_timesteps(1000, steps, spacing), ref.timesteps.long())


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("T", [10, 100, 1000])
def test_timesteps_are_k_distinct_descending_values_in_range_for_every_k(spacing, T):
    for K in range(1, T + 1):
        steps = inference_timesteps(T, K, spacing)
        assert len(steps) == K and steps.min() >= 0 and steps.max() <= T - 1, (T, K)
        assert torch.all(steps[1:] < steps[:-1]), (T, K)


def _reference_loop(scheduler, model, noise, generator, **step_kwargs):
    x = noise.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t.expand(len(x))), t, x, generator=generator, **step_kwargs).prev_sample
    return x.clamp(-1, 1)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("schedule_name, ref_name", [("linear", "linear"), ("cosine", "squaredcos_cap_v2")])
def test_ddim_equals_diffusers(tiny_unet_model, eta, schedule_name, ref_name):
    kwargs = dict(beta_start=1e-4, beta_end=0.02) if schedule_name == "linear" else {}
    s = NoiseSchedule(schedule_name, 1000, **kwargs)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = ddim_sample(tiny_unet_model, s, noise=noise, num_inference_steps=20, eta=eta,
                       generator=torch.Generator().manual_seed(1)).images
    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule=ref_name, clip_sample=True)
    ref.set_timesteps(20)
    expected = _reference_loop(ref, tiny_unet_model, noise, torch.Generator().manual_seed(1), eta=eta,
                               use_clipped_model_output=True)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("steps", [None, 25])
def test_ddpm_equals_diffusers(tiny_unet_model, variance_type, steps):
    s = NoiseSchedule("linear", 1000, beta_start=1e-4, beta_end=0.02)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = ddpm_sample(tiny_unet_model, s, noise=noise, num_inference_steps=steps, variance_type=variance_type,
                       generator=torch.Generator().manual_seed(1)).images
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True, variance_type=variance_type)
    ref.set_timesteps(steps or 1000)
    expected = _reference_loop(ref, tiny_unet_model, noise, torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours, expected, atol=2e-4, rtol=1e-4)


def test_v_prediction_step_equals_diffusers(tiny_unet_model):
    s = NoiseSchedule("linear", 1000, beta_start=1e-4, beta_end=0.02)
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = ddim_sample(tiny_unet_model, s, noise=noise, num_inference_steps=10, prediction_type="v_prediction").images
    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True, prediction_type="v_prediction")
    ref.set_timesteps(10)
    expected = _reference_loop(ref, tiny_unet_model, noise, None, use_clipped_model_output=True)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)


def test_guidance_scale_0_and_1_are_unconditional_and_conditional(tiny_cond_unet):
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([5, 50, 90]), torch.tensor([0, 1, 2])
    null = torch.full_like(y, tiny_cond_unet.null_label)
    uncond, cond = tiny_cond_unet(x, t, null), tiny_cond_unet(x, t, y)
    torch.testing.assert_close(guided_prediction(tiny_cond_unet, x, t, y, 0.0), uncond)
    torch.testing.assert_close(guided_prediction(tiny_cond_unet, x, t, y, 1.0), cond)
    torch.testing.assert_close(guided_prediction(tiny_cond_unet, x, t, y, 3.0), uncond + 3.0 * (cond - uncond),
                               atol=1e-5, rtol=1e-5)


def test_clipping_rederives_eps_consistently(tiny_cond_unet, schedule):
    x = 5 * torch.randn(2, 1, 8, 8)  # far outside the data range, so x_0 predictions get clipped
    x0, eps = predict_x0_and_eps(tiny_cond_unet, schedule, x, 10, y=torch.tensor([0, 1]), guidance_scale=5.0)
    assert x0.abs().max() <= 1.0
    abar = schedule.alphas_cumprod[10]
    torch.testing.assert_close(abar.sqrt() * x0 + (1 - abar).sqrt() * eps, x, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmsolver++"])
def test_same_seed_same_samples(tiny_cond_unet, schedule, sampler):
    def run(seed):
        return sample(tiny_cond_unet, schedule, sampler, shape=(4, 1, 8, 8), y=cycle_labels(4, 3), guidance_scale=2.0,
                      num_inference_steps=10, generator=torch.Generator().manual_seed(seed)).images
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1


def test_ddim_eta1_is_stochastic_and_eta0_is_deterministic(tiny_cond_unet, schedule):
    noise = torch.randn(2, 1, 8, 8)
    run = lambda eta, seed: ddim_sample(tiny_cond_unet, schedule, noise=noise, num_inference_steps=5, eta=eta,
                                        generator=torch.Generator().manual_seed(seed)).images
    assert torch.equal(run(0.0, 0), run(0.0, 1))
    assert not torch.equal(run(1.0, 0), run(1.0, 1))


def test_trajectory_capture(tiny_cond_unet, schedule):
    out = ddim_sample(tiny_cond_unet, schedule, shape=(3, 1, 8, 8), num_inference_steps=10, capture_steps=[0, 4, 9])
    traj = out.trajectory
    assert traj.steps == [0, 4, 9]
    assert traj.timesteps == inference_timesteps(100, 10)[[0, 4, 9]].tolist()
    assert traj.x_t.shape == traj.pred_x0.shape == (3, 3, 1, 8, 8)
    full = ddpm_sample(tiny_cond_unet, schedule, shape=(1, 1, 8, 8), capture_steps="all").trajectory
    assert len(full.steps) == 100 and full.timesteps[0] == 99 and full.timesteps[-1] == 0
    with pytest.raises(ValueError, match="capture_steps"):
        ddim_sample(tiny_cond_unet, schedule, shape=(1, 1, 8, 8), num_inference_steps=10, capture_steps=[10])


def test_bad_sampler_inputs_raise_clear_errors(tiny_unet, tiny_cond_unet, schedule):
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        sample(tiny_unet, schedule, "euler", shape=(1, 1, 8, 8))
    with pytest.raises(ValueError, match="num_inference_steps must be an int in"):
        ddim_sample(tiny_unet, schedule, shape=(1, 1, 8, 8), num_inference_steps=101)
    with pytest.raises(ValueError, match="class-conditional model"):
        ddim_sample(tiny_unet, schedule, shape=(2, 1, 8, 8), y=torch.tensor([0, 1]), guidance_scale=3.0)
    with pytest.raises(ValueError, match="model is unconditional"):
        ddim_sample(tiny_unet, schedule, shape=(2, 1, 8, 8), y=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="needs labels"):
        ddim_sample(tiny_cond_unet, schedule, shape=(2, 1, 8, 8), guidance_scale=3.0)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\]"):
        ddim_sample(tiny_cond_unet, schedule, shape=(2, 1, 8, 8), y=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="variance_type"):
        ddpm_sample(tiny_unet, schedule, shape=(1, 1, 8, 8), variance_type="learned")
    with pytest.raises(ValueError, match=r"expected input \(B, 1, H, W\)"):
        ddim_sample(tiny_unet, schedule, shape=(1, 3, 8, 8), num_inference_steps=2)


def test_classifier_guidance_works_on_an_unconditional_unet(tiny_unet, schedule):
    from diffusion_lib.models import Classifier

    torch.manual_seed(0)
    classifier = Classifier(1, 3, base_channels=8, time_conditional=True, num_train_timesteps=100)
    noise = torch.randn(2, 1, 8, 8)
    run = lambda scale: ddim_sample(tiny_unet, schedule, noise=noise, y=torch.tensor([0, 2]), num_inference_steps=4,
                                    classifier=classifier, classifier_scale=scale).images
    plain = ddim_sample(tiny_unet, schedule, noise=noise, num_inference_steps=4).images
    torch.testing.assert_close(run(1e-6), plain, atol=1e-4, rtol=0)  # labels accepted; a vanishing scale is unguided
    assert not torch.allclose(run(50.0), plain)  # the classifier's gradient moves the samples
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\]"):
        ddim_sample(tiny_unet, schedule, noise=noise, y=torch.tensor([0, 3]), num_inference_steps=2,
                    classifier=classifier, classifier_scale=1.0)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmsolver++"])
def test_samplers_return_the_validated_int64_labels(tiny_cond_unet, schedule, sampler):
    out = sample(tiny_cond_unet, schedule, sampler, shape=(3, 1, 8, 8), y=[0, 2, 1], num_inference_steps=2)
    assert isinstance(out.labels, torch.Tensor) and out.labels.dtype == torch.int64
    assert out.labels.device == out.images.device and out.labels.tolist() == [0, 2, 1]
    assert sample(tiny_cond_unet, schedule, sampler, shape=(1, 1, 8, 8), num_inference_steps=2).labels is None


def test_classifier_scale_without_a_classifier_is_an_error(tiny_cond_unet, schedule):
    with pytest.raises(ValueError, match="classifier_scale=2.0 needs the noise-conditioned classifier"):
        ddim_sample(tiny_cond_unet, schedule, shape=(2, 1, 8, 8), y=[0, 1], num_inference_steps=2, classifier_scale=2.0)


def test_respaced_ddpm_step_uses_the_schedules_posterior_coefficients(schedule):
    from diffusion_lib.schedules import posterior_coefficients

    # on the full chain (previous step t - 1) the per-step coefficients are the schedule's buffers
    post = posterior_coefficients(schedule.alphas_cumprod, schedule.alphas_cumprod_prev)
    torch.testing.assert_close(post.beta, schedule.betas, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(post.variance, schedule.posterior_variance, atol=1e-7, rtol=1e-4)
    torch.testing.assert_close(post.coef_x0, schedule.posterior_mean_coef1, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(post.coef_xt, schedule.posterior_mean_coef2, atol=1e-6, rtol=1e-4)
    # respaced (previous step t - 10): beta_t = 1 - abar_t / abar_prev, and the mean weights sum as eq. 7 says
    abar, abar_prev = schedule.alphas_cumprod[50], schedule.alphas_cumprod[40]
    post = posterior_coefficients(abar, abar_prev)
    torch.testing.assert_close(post.beta, 1 - abar / abar_prev)
    x0, eps = torch.randn(4), torch.randn(4)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    # the posterior mean of x_{t_prev} given x_0 and x_t: sqrt(abar_prev) x_0 + sqrt(1 - abar_prev - var) eps
    expected = abar_prev.sqrt() * x0 + (1 - abar_prev - post.variance).sqrt() * eps
    torch.testing.assert_close(post.coef_x0 * x0 + post.coef_xt * x_t, expected, atol=1e-5, rtol=1e-5)
