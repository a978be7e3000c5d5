"""Forward process, posterior, prediction conversions and the training loss."""

import pytest
import torch

from diffusion_lib import NoiseSchedule, prediction_to_x0_eps, q_posterior, q_sample, training_loss
from diffusion_lib.diffusion import v_target
from diffusion_lib.schedules import broadcast


def test_forward_process_statistics_match_eq4():
    s = NoiseSchedule("linear", 1000)
    x0 = torch.full((20000, 1, 1, 1), 0.5)
    for step in [0, 100, 500, 999]:
        t = torch.full((len(x0),), step)
        x_t = q_sample(s, x0, t, torch.randn(x0.shape, generator=torch.Generator().manual_seed(step)))
        abar = s.alphas_cumprod[step].item()
        assert x_t.mean().item() == pytest.approx(abar ** 0.5 * 0.5, abs=0.02)
        assert x_t.var().item() == pytest.approx(1 - abar, abs=0.03)


def test_last_step_is_nearly_pure_noise():
    s = NoiseSchedule("linear", 1000)
    assert s.alphas_cumprod[-1].item() < 1e-4


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_conversions_recover_x0_and_eps(prediction_type):
    s = NoiseSchedule("cosine", 100)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(8, 3, 4, 4, generator=g) * 2 - 1, torch.randn(8, 3, 4, 4, generator=g)
    t = torch.randint(0, 100, (8,), generator=g)
    x_t = q_sample(s, x0, t, eps)
    output = {"epsilon": eps, "v_prediction": v_target(s, x0, eps, t), "sample": x0}[prediction_type]
    x0_hat, eps_hat = prediction_to_x0_eps(output, x_t, broadcast(s.alphas_cumprod, t, x_t), prediction_type)
    torch.testing.assert_close(x0_hat, x0, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(eps_hat, eps, atol=2e-3, rtol=1e-3)


def test_posterior_mean_is_a_convex_mix_at_t0_equal_to_x0():
    s = NoiseSchedule("linear", 100)
    x0, x_t = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    post = q_posterior(s, x0, x_t, torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(post.mean, x0, atol=1e-5, rtol=1e-5)  # alpha_bar_prev = 1: the posterior collapses on x_0
    assert torch.all(post.variance == 0)


def test_posterior_equals_bayes_rule_numerically():
    """q(x_{t-1}|x_t,x_0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x_0): check mean/variance by completing the square in 1-D."""
    s = NoiseSchedule("linear", 50)
    t = 20
    a, b = s.alphas[t].double(), s.betas[t].double()
    abar_prev = s.alphas_cumprod_prev[t].double()
    x0, x_t = torch.tensor(0.3, dtype=torch.float64), torch.tensor(-0.7, dtype=torch.float64)
    precision = a / b + 1 / (1 - abar_prev)
    mean = (a.sqrt() * x_t / b + abar_prev.sqrt() * x0 / (1 - abar_prev)) / precision
    post = q_posterior(s, x0.float().view(1, 1, 1, 1), x_t.float().view(1, 1, 1, 1), torch.tensor([t]))
    assert post.mean.item() == pytest.approx(mean.item(), rel=1e-4)
    assert post.variance.item() == pytest.approx((1 / precision).item(), rel=1e-4)


def test_training_loss_is_seeded_and_differentiable(tiny_cond_unet):
    s = NoiseSchedule("linear", 100)
    x0, y = torch.rand(4, 1, 8, 8) * 2 - 1, torch.tensor([0, 1, 2, 0])
    a = training_loss(tiny_cond_unet, s, x0, y, p_uncond=0.5, generator=torch.Generator().manual_seed(3))
    b = training_loss(tiny_cond_unet, s, x0, y, p_uncond=0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.loss, b.loss) and torch.equal(a.t, b.t)
    a.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_cond_unet.parameters())


def test_training_loss_targets(tiny_unet):
    s = NoiseSchedule("linear", 100)
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    out = training_loss(tiny_unet, s, x0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.target, out.noise)
    torch.testing.assert_close(out.loss, ((out.model_output - out.noise) ** 2).mean())
    out = training_loss(tiny_unet, s, x0, prediction_type="v_prediction", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.target, v_target(s, x0, out.noise, out.t))


def test_label_dropout_uses_the_null_label(tiny_cond_unet):
    seen = []
    forward = tiny_cond_unet.forward
    tiny_cond_unet.forward = lambda x, t, y=None: (seen.append(y.clone()), forward(x, t, y))[1]
    s = NoiseSchedule("linear", 10)
    training_loss(tiny_cond_unet, s, torch.zeros(2000, 1, 4, 4), torch.zeros(2000, dtype=torch.long), p_uncond=0.25,
                  generator=torch.Generator().manual_seed(0))
    fraction_null = (seen[0] == tiny_cond_unet.null_label).float().mean().item()
    assert fraction_null == pytest.approx(0.25, abs=0.03)
    assert set(seen[0].unique().tolist()) == {0, 3}


def test_training_loss_bad_inputs(tiny_unet):
    s = NoiseSchedule("linear", 10)
    x0 = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match="prediction_type 'noise'"):
        training_loss(tiny_unet, s, x0, prediction_type="noise")
    with pytest.raises(ValueError, match="p_uncond must be in"):
        training_loss(tiny_unet, s, x0, p_uncond=1.5)
    with pytest.raises(ValueError, match="null label"):
        training_loss(tiny_unet, s, x0, torch.zeros(2, dtype=torch.long), p_uncond=0.1)
