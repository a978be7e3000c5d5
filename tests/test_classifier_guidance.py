"""Classifier guidance (Dhariwal & Nichol 2021) in the samplers, and the guidance sweep built on it."""

import copy

import pytest
import torch

from diffusion_lib import sampling
from diffusion_lib.experiments.guidance import guidance_sweep, within_class_diversity
from diffusion_lib.guidance import classifier_free_guidance, classifier_guided_eps, classifier_log_prob_grad
from diffusion_lib.models.classifier import Classifier
from diffusion_lib.sampling import ddim_sample, ddpm_sample, dpm_solver_sample, predict_x0_and_eps

from conftest import BrightnessClassifier


@pytest.fixture
def noisy_classifier():
    torch.manual_seed(0)
    return Classifier(1, 3, base_channels=8, channel_mults=(1, 2), time_conditional=True, num_train_timesteps=100).eval()




def _log_prob(classifier, x, t, y):
    return torch.log_softmax(classifier(x, t), dim=-1)[torch.arange(len(y)), y]


@pytest.mark.parametrize("sampler", [ddpm_sample, ddim_sample])
def test_zero_scale_equals_the_unguided_sampler(tiny_cond_unet, schedule, noisy_classifier, sampler):
    y = torch.tensor([0, 1, 2, 1])
    run = lambda **kw: sampler(tiny_cond_unet, schedule, shape=(4, 1, 8, 8), y=y, guidance_scale=0.0,
                               num_inference_steps=10, generator=torch.Generator().manual_seed(0), **kw).images
    unguided = run()
    assert torch.equal(run(classifier=noisy_classifier, classifier_scale=0.0), unguided)
    assert not torch.equal(run(classifier=noisy_classifier, classifier_scale=5.0), unguided)


def test_gradient_raises_the_log_probability_of_the_target(noisy_classifier):
    x_t = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 10, 30, 50, 70, 99])
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    grad = classifier_log_prob_grad(noisy_classifier, x_t, t, y)
    assert grad.shape == x_t.shape and grad.dtype == torch.float32
    with torch.no_grad():
        before = _log_prob(noisy_classifier, x_t, t, y)
        after = _log_prob(noisy_classifier, x_t + 1e-2 * grad, t, y)
        assert torch.all(after > before)
        # it is the gradient: the directional derivative along grad equals |grad|^2 (central differences, float64)
        f64, x64, g64, h = copy.deepcopy(noisy_classifier).double(), x_t.double(), grad.double(), 1e-4
        slope = (_log_prob(f64, x64 + h * g64, t, y) - _log_prob(f64, x64 - h * g64, t, y)) / (2 * h)
        torch.testing.assert_close(slope, g64.flatten(1).pow(2).sum(1), rtol=1e-3, atol=1e-9)


def test_guided_eps_follows_dhariwal_nichol_eq_14(tiny_cond_unet, schedule, noisy_classifier):
    x_t = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y, t, s = torch.tensor([0, 1, 2]), 40, 3.0
    common = dict(y=y, guidance_scale=0.0, clip_sample=False)
    _, eps = predict_x0_and_eps(tiny_cond_unet, schedule, x_t, t, **common)
    x0_g, eps_g = predict_x0_and_eps(tiny_cond_unet, schedule, x_t, t, classifier=noisy_classifier, classifier_scale=s,
                                     **common)
    grad = classifier_log_prob_grad(noisy_classifier, x_t, torch.full((3,), t), y)
    torch.testing.assert_close(eps_g, eps - s * schedule.sqrt_one_minus_alphas_cumprod[t] * grad)
    abar = schedule.alphas_cumprod[t]
    torch.testing.assert_close(x0_g, (x_t - (1 - abar).sqrt() * eps_g) / abar.sqrt())


def test_guidance_moves_samples_towards_the_target_class(tiny_cond_unet, schedule):
    classifier = BrightnessClassifier()
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    mean = lambda y, s: ddim_sample(tiny_cond_unet, schedule, noise=noise, y=torch.full((4,), y), guidance_scale=0.0,
                                    classifier=classifier, classifier_scale=s, num_inference_steps=10).images.mean()
    assert mean(2, 2.0) > mean(2, 0.0) + 0.1  # towards "bright"
    assert mean(0, 2.0) < mean(0, 0.0) - 0.1  # towards "dark"


def test_classifier_guidance_needs_labels(tiny_cond_unet, schedule, noisy_classifier):
    with pytest.raises(ValueError, match="classifier guidance needs target labels"):
        ddim_sample(tiny_cond_unet, schedule, shape=(1, 1, 8, 8), num_inference_steps=2, guidance_scale=0.0,
                    classifier=noisy_classifier, classifier_scale=1.0)


def test_guidance_sweep_table_samples_and_errors(tiny_cond_unet, schedule, noisy_classifier):
    judge = BrightnessClassifier()
    kwargs = dict(image_shape=(1, 8, 8), classes=[0, 2], samples_per_class=3, num_inference_steps=4, seed=5)
    cfg = guidance_sweep(tiny_cond_unet, schedule, judge, [0, 1, 3], **kwargs)
    assert list(cfg.table["scale"]) == [0.0, 1.0, 3.0] and set(cfg.table["method"]) == {"classifier-free"}
    assert cfg.labels.tolist() == [0, 2, 0, 2, 0, 2]
    assert set(cfg.samples) == {0.0, 1.0, 3.0} and cfg.samples[1.0].shape == (6, 1, 8, 8)
    # same seed at every scale: w = 0 equals a plain unconditional DDIM run from that seed
    plain = ddim_sample(tiny_cond_unet, schedule, shape=(6, 1, 8, 8), y=cfg.labels, guidance_scale=0.0,
                        num_inference_steps=4, generator=torch.Generator().manual_seed(5)).images
    torch.testing.assert_close(cfg.samples[0.0], plain)
    assert cfg.table["class_accuracy"].between(0, 1).all() and cfg.table["diversity"].gt(0).all()

    bright = guidance_sweep(tiny_cond_unet, schedule, judge, [0, 4], method="classifier", classifier=judge, **kwargs)
    accuracy = bright.table.set_index("scale")["class_accuracy"]
    assert accuracy[4.0] >= accuracy[0.0]
    assert accuracy[4.0] == 1.0  # the brightness judge is also the guide: every sample ends in its class

    with pytest.raises(ValueError, match="unknown guidance method"):
        guidance_sweep(tiny_cond_unet, schedule, judge, [1], method="free", **kwargs)
    with pytest.raises(ValueError, match="needs the noise-conditioned classifier"):
        guidance_sweep(tiny_cond_unet, schedule, judge, [1], method="classifier", **kwargs)
    with pytest.raises(ValueError, match="samples_per_class"):
        guidance_sweep(tiny_cond_unet, schedule, judge, [1], **{**kwargs, "samples_per_class": 1})


def test_within_class_diversity():
    same = torch.zeros(4, 1, 8, 8)
    labels = torch.tensor([0, 0, 1, 1])
    assert within_class_diversity(same, labels) == 0.0
    images = torch.cat([torch.full((2, 1, 8, 8), -1.0), torch.full((2, 1, 8, 8), 1.0)])
    assert within_class_diversity(images, torch.tensor([0, 1, 0, 1])) == pytest.approx(2.0)  # -1 vs 1 in each class
    assert within_class_diversity(images, torch.tensor([0, 0, 1, 1])) == 0.0
    with pytest.raises(ValueError, match="at least one class"):
        within_class_diversity(images, torch.tensor([0, 1, 2, 3]))


def test_classifier_free_mix_and_the_papers_convention():
    uncond, cond = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.0])
    assert torch.equal(classifier_free_guidance(uncond, cond, 0.0), uncond)
    assert torch.equal(classifier_free_guidance(uncond, cond, 1.0), cond)
    w_prime = 2.0  # Ho & Salimans 2022, eq. 6: (1 + w') eps_cond - w' eps_uncond, with w' = w - 1
    ho_salimans = (1 + w_prime) * cond - w_prime * uncond
    torch.testing.assert_close(classifier_free_guidance(uncond, cond, w_prime + 1), ho_salimans)


def test_classifier_guided_eps_is_eq_14_and_the_identity_at_scale_0():
    eps, grad, abar = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4), torch.tensor(0.36)
    assert classifier_guided_eps(eps, grad, abar, 0.0) is eps
    torch.testing.assert_close(classifier_guided_eps(eps, grad, abar, 2.0), eps - 2.0 * 0.8 * grad)


def test_the_shared_step_skips_the_classifier_at_scale_0(tiny_cond_unet, schedule, noisy_classifier, monkeypatch):
    """classifier_log_prob_grad and classifier_guided_eps run only when s != 0 (a branch, not a no-op call)."""
    calls = []
    monkeypatch.setattr(sampling, "classifier_log_prob_grad", lambda *args: calls.append("gradient"))
    monkeypatch.setattr(sampling, "classifier_guided_eps", lambda *args: calls.append("guided eps"))
    x_t, y = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1])
    unguided = predict_x0_and_eps(tiny_cond_unet, schedule, x_t, 10, y=y, guidance_scale=0.0)
    at_zero = predict_x0_and_eps(tiny_cond_unet, schedule, x_t, 10, y=y, guidance_scale=0.0,
                                 classifier=noisy_classifier, classifier_scale=0.0)
    assert calls == [] and all(torch.equal(a, b) for a, b in zip(unguided, at_zero))
    with pytest.raises(ValueError, match="classifier_scale=2.0 needs the noise-conditioned classifier"):
        predict_x0_and_eps(tiny_cond_unet, schedule, x_t, 10, y=y, classifier_scale=2.0)


@pytest.mark.parametrize("sampler", [ddpm_sample, ddim_sample, dpm_solver_sample], ids=lambda f: f.__name__)
def test_one_network_evaluation_per_step(tiny_cond_unet, schedule, sampler):
    """The shared step adds no model calls: K steps of guided sampling are K forward passes (of 2N images)."""
    batches = []
    handle = tiny_cond_unet.register_forward_hook(lambda module, args, output: batches.append(len(args[0])))
    try:
        sampler(tiny_cond_unet, schedule, shape=(3, 1, 8, 8), y=torch.tensor([0, 1, 2]), guidance_scale=3.0,
                num_inference_steps=5, generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    assert batches == [6] * 5
