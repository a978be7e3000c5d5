"""The one pair of helpers that crosses the library's edge between image formats.

Inside ``diffusion_lib`` images are float tensors in [-1, 1], shape (N, C, H, W).
Outside (PNG files, NPZ exports, metric inputs) they are uint8 arrays in [0, 255],
shape (N, H, W, C). Nothing else in the library converts between the two.
"""

from __future__ import annotations

import numpy as np
import torch


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Map model-space images to uint8 pixels.

    Args:
        images: float tensor (N, C, H, W) with values nominally in [-1, 1]; values
            outside are clipped. Any device.

    Returns:
        numpy uint8 array (N, H, W, C) in [0, 255]; -1 maps to 0 and 1 to 255
        (rounded to nearest).

    Raises:
        ValueError: if ``images`` is not 4-D or not floating point.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be 4-D (N, C, H, W); got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor in [-1, 1]; got dtype {images.dtype}")
    pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Map uint8 pixels to model-space images; the inverse of :func:`to_uint8`.

    Args:
        pixels: uint8 array or tensor (N, H, W, C) in [0, 255].

    Returns:
        float32 tensor (N, C, H, W) in [-1, 1] on the CPU.

    Raises:
        ValueError: if ``pixels`` is not 4-D or not uint8.
    """
    pixels = torch.as_tensor(pixels)
    if pixels.ndim != 4:
        raise ValueError(f"pixels must be 4-D (N, H, W, C); got shape {tuple(pixels.shape)}")
    if pixels.dtype != torch.uint8:
        raise ValueError(f"pixels must be uint8 in [0, 255]; got dtype {pixels.dtype}")
    return pixels.permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()
