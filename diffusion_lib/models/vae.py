"""Convolutional variational autoencoder: the course's baseline generative model.

Kingma & Welling 2014, "Auto-Encoding Variational Bayes". An encoder q(z|x) = N(mean, diag(exp(logvar)))
and a decoder p(x|z) = N(decode(z), sigma^2 I) with sigma^2 = 1/2, trained by maximising the
evidence lower bound (ELBO)

    log p(x) >= E_q[log p(x|z)] - KL(q(z|x) || p(z)),   p(z) = N(0, I)     (K&W eq. 3)

weighted as in beta-VAE (Higgins et al. 2017): loss = recon + beta * kl.

Conventions (per image, then averaged over the batch):
    recon = sum over the C*H*W pixels of (x - decode(z))^2, z one reparameterised sample.
            This is -log p(x|z) for sigma^2 = 1/2 up to the constant (C*H*W/2) log(pi), so it is >= 0.
    kl    = sum over latent dims of -1/2 (1 + logvar - mean^2 - exp(logvar))    (K&W appendix B), >= 0.
With beta = 1, ``recon + kl`` is the negative ELBO in nats (minus that constant).

Images are float tensors in [-1, 1], NCHW; the decoder ends in tanh so means stay in range.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..device import randn


class VAEOutput(NamedTuple):
    """Result of ``VAE.forward``: recon (N, C, H, W) in [-1, 1]; mean and logvar (N, latent_dim)."""

    recon: torch.Tensor
    mean: torch.Tensor
    logvar: torch.Tensor


class VAELoss(NamedTuple):
    """Result of ``VAE.loss``: scalar tensors, each averaged over the batch (nats per image).

    loss = recon + beta * kl is the one to backpropagate; recon and kl are logged separately.
    """

    loss: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor


def _groups(channels: int) -> int:
    return math.gcd(8, channels)


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """conv3x3 -> GroupNorm -> SiLU."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1),
                         nn.GroupNorm(_groups(out_channels), out_channels), nn.SiLU())


class VAE(nn.Module):
    """Convolutional VAE with a Gaussian encoder and a tanh decoder.

    Each entry of ``channel_mults`` adds one level: a conv block, then a stride-2 conv in the
    encoder (nearest upsampling + conv in the decoder). The bottleneck is a
    (base_channels * channel_mults[-1], image_size / 2**L, image_size / 2**L) map with
    L = len(channel_mults), flattened into linear layers to and from the latent.

    Args:
        in_channels: image channels C, 1 or 3.
        image_size: height = width of the images, divisible by 2**len(channel_mults).
        latent_dim: dimension of z (default 32).
        base_channels: channels of the first level (default 32).
        channel_mults: channel multiplier per level (default (1, 2, 2): three downsamplings).

    Raises:
        ValueError: for a bad argument (named in the message).
    """

    def __init__(self, in_channels: int = 3, image_size: int = 32, latent_dim: int = 32, base_channels: int = 32,
                 channel_mults: tuple[int, ...] = (1, 2, 2)):
        super().__init__()
        channel_mults = tuple(channel_mults)
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3; got {in_channels!r}")
        if not channel_mults or not all(isinstance(m, int) and m >= 1 for m in channel_mults):
            raise ValueError(f"channel_mults must be a non-empty tuple of positive ints; got {channel_mults!r}")
        levels = len(channel_mults)
        if not isinstance(image_size, int) or image_size < 2 ** levels or image_size % 2 ** levels:
            raise ValueError(f"image_size must be a positive multiple of 2**len(channel_mults) = {2 ** levels}; "
                             f"got {image_size!r}")
        if not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive int; got {latent_dim!r}")
        if not isinstance(base_channels, int) or base_channels < 1:
            raise ValueError(f"base_channels must be a positive int; got {base_channels!r}")
        self.config = dict(in_channels=in_channels, image_size=image_size, latent_dim=latent_dim,
                           base_channels=base_channels, channel_mults=list(channel_mults))
        self.in_channels, self.image_size, self.latent_dim = in_channels, image_size, latent_dim
        widths = [base_channels * m for m in channel_mults]
        self.bottleneck = (widths[-1], image_size // 2 ** levels, image_size // 2 ** levels)
        flat = widths[-1] * self.bottleneck[1] * self.bottleneck[2]

        encoder, channels = [nn.Conv2d(in_channels, base_channels, 3, padding=1)], base_channels
        for width in widths:
            encoder += [_conv_block(channels, width), nn.Conv2d(width, width, 3, stride=2, padding=1), nn.SiLU()]
            channels = width
        self.encoder = nn.Sequential(*encoder, nn.Flatten())
        self.to_moments = nn.Linear(flat, 2 * latent_dim)

        self.from_latent = nn.Linear(latent_dim, flat)
        decoder = []
        for width in reversed(widths):
            decoder += [nn.Upsample(scale_factor=2, mode="nearest"), _conv_block(channels, width)]
            channels = width
        self.decoder = nn.Sequential(*decoder, nn.Conv2d(channels, in_channels, 3, padding=1), nn.Tanh())

    def _check(self, x: torch.Tensor) -> None:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must be (N, {', '.join(map(str, expected))}); got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a float tensor in [-1, 1]; got dtype {x.dtype}")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameters of q(z|x).

        Args:
            x: float images (N, C, H, W) in [-1, 1].

        Returns:
            (mean, logvar), each (N, latent_dim); logvar is the natural log of the variance.

        Raises:
            ValueError: wrong shape or dtype.
        """
        self._check(x)
        mean, logvar = self.to_moments(self.encoder(x)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean of p(x|z): z (N, latent_dim) -> images (N, C, H, W) in [-1, 1]."""
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must be (N, {self.latent_dim}); got shape {tuple(z.shape)}")
        return self.decoder(self.from_latent(z).view(-1, *self.bottleneck))

    def reparameterize(self, mean: torch.Tensor, logvar: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mean + exp(logvar / 2) * eps, eps ~ N(0, I) (K&W sec. 2.4); differentiable in mean, logvar."""
        return mean + (0.5 * logvar).exp() * randn(mean.shape, generator, mean.device)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> VAEOutput:
        """Encode, draw one z by reparameterisation, decode.

        Args:
            x: float images (N, C, H, W) in [-1, 1].
            generator: optional ``torch.Generator`` for the reparameterisation noise.

        Returns:
            VAEOutput(recon (N, C, H, W) in [-1, 1], mean (N, latent_dim), logvar (N, latent_dim)).
        """
        mean, logvar = self.encode(x)
        return VAEOutput(self.decode(self.reparameterize(mean, logvar, generator)), mean, logvar)

    def loss(self, x: torch.Tensor, beta: float = 1.0, generator: torch.Generator | None = None) -> VAELoss:
        """Beta-weighted negative ELBO (see the module docstring for the exact convention).

        Args:
            x: float images (N, C, H, W) in [-1, 1].
            beta: weight of the KL term, >= 0 (1 = the plain ELBO).
            generator: optional ``torch.Generator`` for the reparameterisation noise.

        Returns:
            VAELoss(loss, recon, kl): scalar tensors averaged over the batch, in nats per image
            (recon up to an additive constant); recon >= 0 and kl >= 0.

        Raises:
            ValueError: negative beta, or bad x.
        """
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0; got {beta!r}")
        recon_x, mean, logvar = self(x, generator)
        recon = F.mse_loss(recon_x, x, reduction="none").flatten(1).sum(1).mean()
        kl = (-0.5 * (1 + logvar - mean.pow(2) - logvar.exp())).sum(1).mean()
        return VAELoss(recon + beta * kl, recon, kl)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw n images from the model: z ~ N(0, I), x = decode(z) (the decoder mean, no pixel noise).

        Args:
            n: number of images, >= 1.
            generator: optional ``torch.Generator``; the same seed gives the same images.

        Returns:
            float tensor (n, C, H, W) in [-1, 1] on the model's device.
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int; got {n!r}")
        device = next(self.parameters()).device
        return self.decode(randn((n, self.latent_dim), generator, device))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction decode(mean of q(z|x)): (N, C, H, W) -> (N, C, H, W) in [-1, 1]."""
        return self.decode(self.encode(x)[0])

    @torch.no_grad()
    def interpolate(self, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 8) -> torch.Tensor:
        """Decode a straight line between the posterior means of two images.

        z_k = (1 - k / (steps-1)) * mean(x_a) + k / (steps-1) * mean(x_b), k = 0..steps-1.

        Args:
            x_a, x_b: images (C, H, W), or batches (N, C, H, W) of pairs, in [-1, 1].
            steps: number of points on the line including both ends, >= 2.

        Returns:
            (steps, C, H, W) for single images, (N, steps, C, H, W) for batches; values in [-1, 1].

        Raises:
            ValueError: mismatched shapes or steps < 2.
        """
        if x_a.shape != x_b.shape:
            raise ValueError(f"x_a and x_b must have the same shape; got {tuple(x_a.shape)} and {tuple(x_b.shape)}")
        if not isinstance(steps, int) or steps < 2:
            raise ValueError(f"steps must be an int >= 2; got {steps!r}")
        single = x_a.ndim == 3
        if single:
            x_a, x_b = x_a[None], x_b[None]
        z_a, z_b = self.encode(x_a)[0], self.encode(x_b)[0]
        w = torch.linspace(0, 1, steps, device=z_a.device)[None, :, None]
        z = (1 - w) * z_a[:, None] + w * z_b[:, None]
        images = self.decode(z.flatten(0, 1)).view(x_a.shape[0], steps, *x_a.shape[1:])
        return images[0] if single else images
