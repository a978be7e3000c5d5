"""A small CNN image classifier: the course's judge, feature extractor and guidance classifier.

It plays three parts:

1. the judge of class accuracy of generated samples (trained on clean real images);
2. the domain feature extractor for FID / KID when the Inception weights are not on disk
   (``features`` gives the penultimate activations, ``forward`` the class logits for IS);
3. the noise-conditioned classifier p(y | x_t, t) of classifier guidance
   (Dhariwal & Nichol 2021, sec. 4), when built with ``time_conditional=True`` and trained
   on noised images x_t (:func:`diffusion_lib.classifier_training.train_classifier` with a
   noise schedule).

This module holds the network only: training and its file live in
:mod:`diffusion_lib.classifier_training`. ``forward`` checks shapes and dtypes only (nothing is
read back from the device); label and timestep ranges are checked once by the public entries
(``train_classifier``, ``metrics.class_accuracy``, the extractors), or by :meth:`Classifier.check_timesteps`.

Shape: a 3x3 conv stem, then one residual block per entry of ``channel_mults`` with a
stride-2 convolution between levels, GroupNorm + SiLU, global average pooling (the
features, dimension ``base_channels * channel_mults[-1]``) and a linear head. Global pooling
makes it work for any image size >= 8.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .unet import SinusoidalTimeEmbedding


def _groups(channels: int) -> int:
    """Number of GroupNorm groups: up to 8, always a divisor of ``channels``."""
    return math.gcd(8, channels)


class _Block(nn.Module):
    """Residual block: (GroupNorm, SiLU, conv3x3) twice, plus an optional time-embedding shift."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int | None, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_channels), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_channels) if emb_dim else None
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb is not None:
            h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + self.skip(x)


class Classifier(nn.Module):
    """Small CNN classifier for images in [-1, 1], optionally conditioned on the diffusion timestep.

    Args:
        in_channels: image channels C, 1 or 3.
        num_classes: number of classes K >= 2.
        base_channels: channels of the first level (default 32).
        time_conditional: if True, ``forward`` needs timesteps t and models p(y | x_t, t)
            for classifier guidance; if False, t is ignored (so a clean classifier can be
            plugged into guidance as a baseline).
        num_train_timesteps: T of the noise schedule the classifier is trained with; when
            given, :meth:`check_timesteps` and ``train_classifier`` check t against it.
        channel_mults: channel multiplier per level; a stride-2 downsampling sits between
            consecutive levels. Default (1, 2, 2): features of dimension 64 for base 32.
        dropout: dropout rate inside the residual blocks, in [0, 1).

    Raises:
        ValueError: for a bad argument (named in the message).
    """

    def __init__(self, in_channels: int, num_classes: int, base_channels: int = 32, time_conditional: bool = False,
                 num_train_timesteps: int | None = None, channel_mults: tuple[int, ...] = (1, 2, 2),
                 dropout: float = 0.0):
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3; got {in_channels!r}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2; got {num_classes!r}")
        if not isinstance(base_channels, int) or base_channels < 1:
            raise ValueError(f"base_channels must be a positive int; got {base_channels!r}")
        channel_mults = tuple(channel_mults)
        if not channel_mults or not all(isinstance(m, int) and m >= 1 for m in channel_mults):
            raise ValueError(f"channel_mults must be a non-empty tuple of positive ints; got {channel_mults!r}")
        if num_train_timesteps is not None and (not isinstance(num_train_timesteps, int) or num_train_timesteps < 1):
            raise ValueError(f"num_train_timesteps must be a positive int or None; got {num_train_timesteps!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")
        self.config = dict(in_channels=in_channels, num_classes=num_classes, base_channels=base_channels,
                           channel_mults=list(channel_mults), time_conditional=bool(time_conditional),
                           num_train_timesteps=num_train_timesteps, dropout=dropout)
        self.in_channels, self.num_classes = in_channels, num_classes
        self.time_conditional, self.num_train_timesteps = bool(time_conditional), num_train_timesteps

        emb_dim = 4 * base_channels if self.time_conditional else None
        if self.time_conditional:
            self.time_embed = nn.Sequential(SinusoidalTimeEmbedding(base_channels), nn.Linear(base_channels, emb_dim),
                                            nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.stem = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        channels = base_channels
        for i, mult in enumerate(channel_mults):
            self.blocks.append(_Block(channels, base_channels * mult, emb_dim, dropout))
            channels = base_channels * mult
            last = i == len(channel_mults) - 1
            self.downs.append(nn.Identity() if last else nn.Conv2d(channels, channels, 3, stride=2, padding=1))
        self.out_norm = nn.GroupNorm(_groups(channels), channels)
        self.feature_dim = channels
        self.head = nn.Linear(channels, num_classes)

    def _check(self, x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor | None:
        """Shape and dtype checks of a forward pass (nothing is read back from the device)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (N, {self.in_channels}, H, W); got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < 8:
            raise ValueError(f"images must be at least 8x8; got {tuple(x.shape[-2:])}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a float tensor in [-1, 1]; got dtype {x.dtype}")
        if not self.time_conditional:
            return None
        if t is None:
            raise ValueError("this classifier is time-conditional: pass timesteps t (N,) int64 in [0, T-1]")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],) or t.is_floating_point():
            raise ValueError(f"t must be an int tensor of shape ({x.shape[0]},); got {tuple(t.shape)} {t.dtype}")
        return t

    def check_timesteps(self, t) -> None:
        """Check that timesteps lie in [0, T-1] for the T this classifier was built for.

        Reads ``t`` on the host (a device sync), so call it once at a public entry, not per step;
        ``forward`` does not call it. Without ``num_train_timesteps`` any int timesteps are accepted.

        Args:
            t: int timesteps (any shape), or an int.

        Raises:
            ValueError: float timesteps, or values outside [0, num_train_timesteps - 1].
        """
        t = torch.as_tensor(t)
        if t.is_floating_point():
            raise ValueError(f"t must be int64 timesteps; got dtype {t.dtype}")
        if self.num_train_timesteps is not None and t.numel() and (t.min() < 0 or t.max() >= self.num_train_timesteps):
            raise ValueError(f"t must lie in [0, {self.num_train_timesteps - 1}]; got [{int(t.min())}, {int(t.max())}]")

    def features(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """Penultimate features: globally pooled activations of the last level.

        Args:
            x: float images (N, C, H, W) in [-1, 1], H, W >= 8.
            t: int64 timesteps (N,) (or a scalar) in [0, T-1]; required when time-conditional,
                ignored otherwise.

        Returns:
            float tensor (N, D) with D = ``self.feature_dim``.

        Raises:
            ValueError: wrong shape or dtype of x or t (ranges are not read here: see :meth:`check_timesteps`).
        """
        t = self._check(x, t)
        emb = self.time_embed(t) if t is not None else None
        h = self.stem(x)
        for block, down in zip(self.blocks, self.downs):
            h = down(block(h, emb))
        return F.silu(self.out_norm(h)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits.

        Args:
            x: float images (N, C, H, W) in [-1, 1] (x_t for a time-conditional classifier).
            t: int64 timesteps (N,) in [0, T-1]; required when time-conditional, else ignored.

        Returns:
            float tensor (N, num_classes) of unnormalised log-probabilities.
        """
        return self.head(self.features(x, t))
