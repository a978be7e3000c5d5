"""The VAE baseline: shapes, the ELBO terms, a short training run on digits, reproducible sampling."""

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from diffusion_lib.data import load_dataset
from diffusion_lib.models.vae import VAE, VAELoss, VAEOutput


def tiny_vae(**kwargs) -> VAE:
    torch.manual_seed(0)
    config = dict(in_channels=1, image_size=16, latent_dim=8, base_channels=8, channel_mults=(1, 2))
    return VAE(**{**config, **kwargs})


@pytest.mark.parametrize("channels,size,mults", [(1, 16, (1, 2)), (3, 32, (1, 2, 2)), (3, 8, (1,))])
def test_shapes(channels, size, mults):
    model = tiny_vae(in_channels=channels, image_size=size, channel_mults=mults)
    x = torch.rand(4, channels, size, size) * 2 - 1
    out = model(x)
    assert isinstance(out, VAEOutput)
    assert out.recon.shape == x.shape and out.mean.shape == out.logvar.shape == (4, 8)
    assert out.recon.abs().max() <= 1
    assert model.sample(3).shape == (3, channels, size, size)
    assert model.reconstruct(x).shape == x.shape
    assert model.interpolate(x[0], x[1], steps=5).shape == (5, channels, size, size)
    assert model.interpolate(x[:2], x[2:], steps=4).shape == (2, 4, channels, size, size)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="image_size"):
        VAE(1, image_size=20, channel_mults=(1, 2, 2))
    with pytest.raises(ValueError, match="in_channels"):
        VAE(2, image_size=16)
    model = tiny_vae()
    with pytest.raises(ValueError, match=r"\(N, 1, 16, 16\)"):
        model(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="beta"):
        model.loss(torch.zeros(2, 1, 16, 16), beta=-1.0)
    with pytest.raises(ValueError, match="steps"):
        model.interpolate(torch.zeros(1, 16, 16), torch.zeros(1, 16, 16), steps=1)


def test_loss_terms_match_their_definitions():
    model = tiny_vae()
    x = torch.rand(6, 1, 16, 16) * 2 - 1
    out = model.loss(x, beta=0.5, generator=torch.Generator().manual_seed(1))
    assert isinstance(out, VAELoss) and out.loss.ndim == 0
    recon_x, mean, logvar = model(x, generator=torch.Generator().manual_seed(1))
    # recon: summed squared error per image, averaged over the batch
    torch.testing.assert_close(out.recon, (recon_x - x).pow(2).sum(dim=(1, 2, 3)).mean())
    # KL(q(z|x) || N(0, I)) summed over latent dims, checked against torch.distributions
    q = Normal(mean, (0.5 * logvar).exp())
    kl = kl_divergence(q, Normal(torch.zeros_like(mean), torch.ones_like(mean))).sum(1).mean()
    torch.testing.assert_close(out.kl, kl)
    torch.testing.assert_close(out.loss, out.recon + 0.5 * out.kl)
    assert out.recon >= 0 and out.kl >= 0


def test_loss_falls_on_digits_and_terms_keep_their_signs():
    ds = load_dataset("digits", image_size=16)
    images, _ = ds.get_batch(torch.arange(len(ds)))
    model = tiny_vae(latent_dim=16, base_channels=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    history = []
    for _ in range(120):
        batch = images[torch.randint(0, len(images), (64,), generator=generator)]
        out = model.loss(batch, beta=1.0, generator=generator)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        assert out.recon.item() >= 0 and out.kl.item() >= 0
        history.append(out.loss.item())
    first, last = sum(history[:10]) / 10, sum(history[-10:]) / 10
    assert last < 0.5 * first, (first, last)
    # a trained VAE reconstructs better than its prior samples match the same images
    with torch.no_grad():
        recon_error = (model.reconstruct(images[:200]) - images[:200]).pow(2).mean()
        sample_error = (model.sample(200, torch.Generator().manual_seed(0)) - images[:200]).pow(2).mean()
    assert recon_error < sample_error


def test_sampling_is_reproducible_with_a_seeded_generator():
    model = tiny_vae()
    a = model.sample(4, generator=torch.Generator().manual_seed(7))
    b = model.sample(4, generator=torch.Generator().manual_seed(7))
    c = model.sample(4, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    la = model.loss(x, generator=torch.Generator().manual_seed(3))
    lb = model.loss(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(la.loss, lb.loss)


def test_interpolation_endpoints_are_reconstructions():
    model = tiny_vae()
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    path = model.interpolate(x[0], x[1], steps=6)
    recon = model.reconstruct(x)
    torch.testing.assert_close(path[0], recon[0])
    torch.testing.assert_close(path[-1], recon[1])
