"""A small CNN image classifier: the course's judge, feature extractor and guidance classifier.

It plays three parts:

1. the judge of class accuracy of generated samples (trained on clean real images);
2. the domain feature extractor for FID / KID when the Inception weights are not on disk
   (``features`` gives the penultimate activations, ``forward`` the class logits for IS);
3. the noise-conditioned classifier p(y | x_t, t) of classifier guidance
   (Dhariwal & Nichol 2021, sec. 4), when built with ``time_conditional=True`` and trained
   on noised images x_t by :func:`train_classifier` with a noise schedule.

Shape: a 3x3 conv stem, then one residual block per entry of ``channel_mults`` with a
stride-2 convolution between levels, GroupNorm + SiLU, global average pooling (the
features, dimension ``base_channels * channel_mults[-1]``) and a linear head. Global pooling
makes it work for any image size >= 8.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import atomic_save
from ..device import resolve_device
from .unet import SinusoidalTimeEmbedding

CHECKPOINT_FORMAT = "diffusion_lib.classifier"
CHECKPOINT_VERSION = 1


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
            given, t is checked to lie in [0, T-1].
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
        if self.num_train_timesteps is not None and (t.min() < 0 or t.max() >= self.num_train_timesteps):
            raise ValueError(f"t must lie in [0, {self.num_train_timesteps - 1}]; got [{int(t.min())}, {int(t.max())}]")
        return t

    def features(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """Penultimate features: globally pooled activations of the last level.

        Args:
            x: float images (N, C, H, W) in [-1, 1], H, W >= 8.
            t: int64 timesteps (N,) (or a scalar) in [0, T-1]; required when time-conditional,
                ignored otherwise.

        Returns:
            float tensor (N, D) with D = ``self.feature_dim``.

        Raises:
            ValueError: wrong shape or dtype of x or t, or t out of range.
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


@dataclass
class TrainingHistory:
    """Per-step record of :func:`train_classifier`: cross-entropy loss (nats) and batch accuracy."""

    losses: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)


def train_classifier(model: Classifier, images: torch.Tensor, labels: torch.Tensor, *, steps: int = 500,
                     batch_size: int = 128, lr: float = 2e-3, weight_decay: float = 1e-4,
                     generator: torch.Generator | None = None, seed: int | None = None,
                     device: str | torch.device = "auto", noise_schedule=None) -> TrainingHistory:
    """Train ``model`` with cross-entropy on random minibatches (AdamW, cosine learning-rate decay).

    With ``noise_schedule`` the classifier learns p(y | x_t, t) for classifier guidance
    (Dhariwal & Nichol 2021, sec. 4): each image is noised to a uniformly drawn t with
    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, eps ~ N(0, I) (Ho et al. 2020, eq. 4).

    Args:
        model: the classifier, trained in place and left in eval mode on ``device``.
        images: float tensor (N, C, H, W) in [-1, 1], any device.
        labels: int64 tensor (N,) in [0, num_classes-1].
        steps: optimisation steps (>= 1).
        batch_size: minibatch size (>= 1; capped at N).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay.
        generator: CPU ``torch.Generator`` for batches, timesteps and noise; or
        seed: seed of a fresh generator (used when ``generator`` is None; default 0).
        device: "auto" (cuda, then mps, then cpu) or a torch device.
        noise_schedule: None for a clean classifier, or an object with a float32 buffer
            ``alphas_cumprod`` of shape (T,) (e.g. ``NoiseSchedule``); the model must then be
            time-conditional.

    Returns:
        TrainingHistory with one loss and one batch accuracy per step.

    Raises:
        ValueError: mismatched or malformed images/labels, bad steps/batch_size, or a noise
            schedule given to a classifier that is not time-conditional (or the reverse).
    """
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor (N, C, H, W); got {tuple(images.shape)} {images.dtype}")
    labels = torch.as_tensor(labels)
    if labels.shape != (images.shape[0],) or labels.is_floating_point():
        raise ValueError(f"labels must be int64 of shape ({images.shape[0]},); got {tuple(labels.shape)} {labels.dtype}")
    if labels.min() < 0 or labels.max() >= model.num_classes:
        raise ValueError(f"labels must lie in [0, {model.num_classes - 1}]; got [{int(labels.min())}, {int(labels.max())}]")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int; got {steps!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    if (noise_schedule is not None) != model.time_conditional:
        raise ValueError("a noise_schedule needs a time-conditional classifier and vice versa; got "
                         f"noise_schedule={'set' if noise_schedule is not None else None}, "
                         f"time_conditional={model.time_conditional}")
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
    device = resolve_device(device)
    model.to(device).train()
    images, labels = images.to(device, torch.float32), labels.to(device, torch.long)
    if noise_schedule is not None:
        alphas_cumprod = noise_schedule.alphas_cumprod.to(device, torch.float32)
        if model.num_train_timesteps is not None and len(alphas_cumprod) != model.num_train_timesteps:
            raise ValueError(f"noise schedule has T={len(alphas_cumprod)}; the classifier expects "
                             f"T={model.num_train_timesteps}")

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    history = TrainingHistory()
    batch_size = min(batch_size, images.shape[0])
    for _ in range(steps):
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=generator).to(device)
        x, y, t = images[idx], labels[idx], None
        if noise_schedule is not None:
            t = torch.randint(0, len(alphas_cumprod), (batch_size,), generator=generator).to(device)
            eps = torch.randn(x.shape, generator=generator).to(device)
            abar = alphas_cumprod[t].view(-1, 1, 1, 1)
            x = abar.sqrt() * x + (1 - abar).sqrt() * eps
        logits = model(x, t)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        history.losses.append(loss.item())
        history.accuracies.append((logits.argmax(1) == y).float().mean().item())
    model.eval()
    return history


def save_classifier(model: Classifier, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write the classifier (config + weights + ``meta``) to one file, atomically.

    Args:
        model: the classifier.
        path: destination file (parent folders are created).
        meta: optional JSON-like dict stored alongside (dataset name, accuracy, ...).

    Returns:
        the path written.
    """
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": dict(model.config),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "meta": dict(meta or {})}
    return atomic_save(payload, path)


def load_classifier(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Classifier, dict]:
    """Load a file written by :func:`save_classifier`, validating it.

    Args:
        path: the file.
        device: where to put the model ("auto" allowed).

    Returns:
        (model in eval mode on ``device``, meta dict).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not a classifier checkpoint of a supported version, or its
            weights do not match its config.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no classifier checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ValueError(f"{path} is not a readable classifier checkpoint: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a classifier checkpoint (format {CHECKPOINT_FORMAT!r} expected)")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path} has classifier checkpoint version {payload.get('version')!r}; "
                         f"this library reads version {CHECKPOINT_VERSION}")
    config = dict(payload["config"])
    config["channel_mults"] = tuple(config["channel_mults"])
    model = Classifier(**config)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not match the stored config: {err}") from err
    return model.to(resolve_device(device)).eval(), dict(payload.get("meta", {}))
