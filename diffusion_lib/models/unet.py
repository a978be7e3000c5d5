"""The noise-prediction UNet (Ho et al. 2020, sec. 4 and appendix B) and its class-conditional variant.

Shape of the network, for ``channel_mults = (1, 2, 2)`` and an H x W input::

    conv_in                              H       base
    DownBlock 0  (ResBlocks [+attn]) --skip-->  H       base*1   -> downsample
    DownBlock 1  (ResBlocks [+attn]) --skip-->  H/2     base*2   -> downsample
    DownBlock 2  (ResBlocks [+attn]) --skip-->  H/4     base*2
    MidBlock     (ResBlock, attn, ResBlock)     H/4
    UpBlock 2    (cat skip, ResBlocks)          H/4              -> upsample
    UpBlock 1    (cat skip, ResBlocks)          H/2              -> upsample
    UpBlock 0    (cat skip, ResBlocks)          H
    GroupNorm, SiLU, conv_out

Any H, W divisible by 2^(len(channel_mults) - 1) works; nothing depends on a fixed size.
The timestep enters every ResBlock through a sinusoidal embedding and an MLP.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SinusoidalTimeEmbedding(nn.Module):
    """Sinusoidal position embedding of the timestep (Vaswani et al. 2017, sec. 3.5; Ho et al. 2020, app. B).

    Args:
        dim: embedding size (even).

    Shapes: t int or float (B,) -> float32 (B, dim), the first half sines, the second cosines.
    """

    def __init__(self, dim: int):
        super().__init__()
        if dim % 2:
            raise ValueError(f"time embedding dim must be even; got {dim}")
        half = dim // 2
        self.register_buffer("frequencies", torch.exp(-math.log(10000.0) * torch.arange(half) / half), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.float()[:, None] * self.frequencies[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, the embedding added in between, and a residual connection.

    Shapes: x (B, in_channels, H, W), emb (B, emb_dim) -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions, with a residual connection.

    Shapes: (B, C, H, W) -> (B, C, H, W). Uses ``F.scaled_dot_product_attention`` (fused kernels where available).
    """

    def __init__(self, channels: int, num_heads: int, groups: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention channels {channels} are not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C/heads)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class DownBlock(nn.Module):
    """ResBlocks (each optionally followed by attention) at one resolution, then an optional stride-2 conv.

    forward returns (output, skip): skip (B, out_channels, H, W) feeds the matching UpBlock;
    output is (B, out_channels, H/2, W/2) when ``downsample`` else the skip itself.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, num_res_blocks: int, attention: bool,
                 downsample: bool, dropout: float, groups: int, num_heads: int):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResBlock(in_channels if i == 0 else out_channels, out_channels, emb_dim, dropout, groups) for i in range(num_res_blocks))
        self.attentions = nn.ModuleList(
            SelfAttention(out_channels, num_heads, groups) if attention else nn.Identity() for _ in range(num_res_blocks))
        self.downsample = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1) if downsample else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for resnet, attention in zip(self.resnets, self.attentions):
            x = attention(resnet(x, emb))
        return self.downsample(x), x


class MidBlock(nn.Module):
    """ResBlock, self-attention, ResBlock at the lowest resolution. Shapes: (B, C, h, w) -> same."""

    def __init__(self, channels: int, emb_dim: int, dropout: float, groups: int, num_heads: int):
        super().__init__()
        self.resnet1 = ResBlock(channels, channels, emb_dim, dropout, groups)
        self.attention = SelfAttention(channels, num_heads, groups)
        self.resnet2 = ResBlock(channels, channels, emb_dim, dropout, groups)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.resnet2(self.attention(self.resnet1(x, emb)), emb)


class UpBlock(nn.Module):
    """Optional 2x nearest upsampling + conv, concatenation with the skip, then ResBlocks (optionally with attention).

    Shapes: x (B, in_channels, h, w), skip (B, skip_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, emb_dim: int, num_res_blocks: int,
                 attention: bool, upsample: bool, dropout: float, groups: int, num_heads: int):
        super().__init__()
        self.upsample = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                      nn.Conv2d(in_channels, in_channels, 3, padding=1)) if upsample else nn.Identity()
        self.resnets = nn.ModuleList(
            ResBlock((in_channels + skip_channels) if i == 0 else out_channels, out_channels, emb_dim, dropout, groups)
            for i in range(num_res_blocks))
        self.attentions = nn.ModuleList(
            SelfAttention(out_channels, num_heads, groups) if attention else nn.Identity() for _ in range(num_res_blocks))

    def forward(self, x: torch.Tensor, skip: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.upsample(x), skip], dim=1)
        for resnet, attention in zip(self.resnets, self.attentions):
            x = attention(resnet(x, emb))
        return x


class UNet(nn.Module):
    """Unconditional denoising UNet: ``model(x_t, t) -> prediction`` of the same shape as ``x_t``.

    Args:
        in_channels: image channels C (1 or 3 in the course).
        out_channels: output channels; defaults to ``in_channels`` (eps, v or x_0 prediction).
        base_channels: channels of the first level.
        channel_mults: per-level multipliers of ``base_channels``; the input is downsampled
            len(channel_mults) - 1 times, so H and W must be divisible by 2^(len - 1).
        num_res_blocks: ResBlocks per level.
        attention_levels: indices of the levels (0 = full resolution) that get self-attention
            after each ResBlock; level i runs at H / 2^i. The MidBlock always has attention.
        num_heads: attention heads, an int >= 1 dividing the channels of every level with attention
            (and of the last level: the MidBlock always attends).
        dropout: dropout probability inside ResBlocks (Ho et al. used 0.1 on CIFAR-10).
        norm_groups: GroupNorm groups; must divide every level's channel count.

    Forward:
        x: float (B, C, H, W); t: int64 (B,) in [0, T-1] (a scalar is broadcast); y: must be None.
        Returns float (B, out_channels, H, W).

    Raises:
        ValueError: bad hyper-parameters at construction; at call time a wrong channel count,
            an H or W not divisible by the downsampling factor, or labels given to this unconditional model.
    """

    def __init__(self, in_channels: int = 3, out_channels: int | None = None, base_channels: int = 64,
                 channel_mults: tuple[int, ...] = (1, 2, 2), num_res_blocks: int = 2,
                 attention_levels: tuple[int, ...] = (1,), num_heads: int = 4, dropout: float = 0.0, norm_groups: int = 8):
        super().__init__()
        channel_mults, attention_levels = tuple(channel_mults), tuple(attention_levels)
        if in_channels < 1 or base_channels < 1 or num_res_blocks < 1 or not channel_mults:
            raise ValueError("in_channels, base_channels and num_res_blocks must be >= 1 and channel_mults non-empty; "
                             f"got {in_channels}, {base_channels}, {num_res_blocks}, {channel_mults}")
        if any(level not in range(len(channel_mults)) for level in attention_levels):
            raise ValueError(f"attention_levels {attention_levels} must be level indices in [0, {len(channel_mults) - 1}]")
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"num_heads must be an int >= 1; got {num_heads!r}")
        if isinstance(norm_groups, bool) or not isinstance(norm_groups, int) or norm_groups < 1:
            raise ValueError(f"norm_groups must be an int >= 1; got {norm_groups!r}")
        level_channels = [base_channels * m for m in channel_mults]
        if any(c % norm_groups for c in level_channels):
            raise ValueError(f"norm_groups={norm_groups} must divide every level's channels {level_channels}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout}")
        self.config = dict(in_channels=in_channels, out_channels=out_channels, base_channels=base_channels,
                           channel_mults=list(channel_mults), num_res_blocks=num_res_blocks,
                           attention_levels=list(attention_levels), num_heads=num_heads, dropout=dropout,
                           norm_groups=norm_groups)
        self.in_channels = in_channels
        self.downsample_factor = 2 ** (len(channel_mults) - 1)
        emb_dim = 4 * base_channels
        common = dict(emb_dim=emb_dim, dropout=dropout, groups=norm_groups, num_heads=num_heads)

        self.time_embedding = nn.Sequential(SinusoidalTimeEmbedding(base_channels), nn.Linear(base_channels, emb_dim),
                                            nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        last = len(channel_mults) - 1
        self.down_blocks = nn.ModuleList(
            DownBlock([base_channels, *level_channels][i], level_channels[i], num_res_blocks=num_res_blocks,
                      attention=i in attention_levels, downsample=i < last, **common)
            for i in range(len(channel_mults)))
        self.mid_block = MidBlock(level_channels[-1], **common)
        self.up_blocks = nn.ModuleList(
            UpBlock(level_channels[min(i + 1, last)], level_channels[i], level_channels[i], num_res_blocks=num_res_blocks,
                    attention=i in attention_levels, upsample=i < last, **common)
            for i in reversed(range(len(channel_mults))))
        self.norm_out = nn.GroupNorm(norm_groups, base_channels)
        self.conv_out = nn.Conv2d(base_channels, out_channels or in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # start as the zero predictor (a common, stabilising choice)
        nn.init.zeros_(self.conv_out.bias)

    def embed(self, t: torch.Tensor, y: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Conditioning vector (B, emb_dim) from timesteps (and, in subclasses, labels)."""
        if y is not None:
            raise ValueError("this UNet is unconditional and takes no labels y; use ConditionalUNet for class conditioning")
        return self.time_embedding(t)

    def forward(self, x: torch.Tensor, t: torch.Tensor | int, y: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, H, W); got shape {tuple(x.shape)}")
        if x.shape[2] % self.downsample_factor or x.shape[3] % self.downsample_factor:
            raise ValueError(f"image size {tuple(x.shape[2:])} is not divisible by the UNet's downsampling factor "
                             f"{self.downsample_factor}; resize/pad the images or use fewer channel_mults levels")
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        emb = self.embed(t, y, x.shape[0])
        h = self.conv_in(x)
        skips = []
        for block in self.down_blocks:
            h, skip = block(h, emb)
            skips.append(skip)
        h = self.mid_block(h, emb)
        for block in self.up_blocks:
            h = block(h, skips.pop(), emb)
        return self.conv_out(F.silu(self.norm_out(h)))


class ConditionalUNet(UNet):
    """Class-conditional UNet: a learned class embedding is added to the time embedding.

    Label index ``num_classes`` is reserved as the null label ("no class"), so one network can
    be trained with label dropout and queried both ways for classifier-free guidance
    (Ho & Salimans 2022, sec. 3.2).

    Args:
        num_classes: number of real classes K (labels 0..K-1; K is the null label).
        **unet_kwargs: as for :class:`UNet`.

    Forward:
        y: int64 (B,) in [0, K]; None means every sample gets the null label. Values are not checked
        here (that would sync with the GPU at every call): callers validate them once at their public
        entry; an out-of-range label fails inside ``nn.Embedding`` (an IndexError on the CPU, a device-side
        assert on CUDA).

    Raises:
        ValueError: ``num_classes`` < 1, or labels of the wrong dtype or shape.
    """

    def __init__(self, num_classes: int, **unet_kwargs):
        super().__init__(**unet_kwargs)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int; got {num_classes!r}")
        ### BEGIN SOLUTION [3.2a]
        self.num_classes = num_classes
        self.null_label = num_classes
        self.config["num_classes"] = num_classes
        self.class_embedding = nn.Embedding(num_classes + 1, self.time_embedding[-1].out_features)
        ### END SOLUTION

    def embed(self, t: torch.Tensor, y: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Time embedding plus class embedding, (B, emb_dim); ``y`` None means the null label for every sample.

        Checks only shape and dtype (no host sync): label values are validated once at the public entry
        (the samplers' :func:`~diffusion_lib.guidance.check_guidance_inputs`, the Trainer).

        Raises:
            ValueError: ``y`` not int64 of shape (B,).
        """
        ### BEGIN SOLUTION [3.2a]
        if y is None:
            y = torch.full((batch,), self.null_label, dtype=torch.long, device=t.device)
        if y.shape != (batch,) or y.dtype != torch.long:
            raise ValueError(f"labels y must be int64 of shape ({batch},); got dtype {y.dtype}, shape {tuple(y.shape)}")
        return self.time_embedding(t) + self.class_embedding(y)
        ### END SOLUTION


def build_unet(config: dict) -> UNet:
    """Rebuild a UNet or ConditionalUNet from its ``model.config`` dict (as stored in checkpoints).

    Raises:
        ValueError: unknown keys or bad values (from the constructors).
    """
    config = dict(config)
    num_classes = config.pop("num_classes", None)
    return ConditionalUNet(num_classes=num_classes, **config) if num_classes else UNet(**config)
