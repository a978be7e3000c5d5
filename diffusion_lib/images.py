"""The one pair of helpers that crosses the library's edge between image formats.

Inside ``diffusion_lib`` images are float tensors in [-1, 1], shape (N, C, H, W).
Outside (PNG files, NPZ exports, metric inputs) they are uint8 arrays in [0, 255],
shape (N, H, W, C). Nothing else in the library converts between the two:

- :func:`to_uint8`: model space -> uint8 (N, H, W, C). With ``value_range`` it also quantises
  foreign float arrays (e.g. [0, 1] images in a ``.npy`` file), with ``channels_last`` NHWC input.
- :func:`from_uint8`: uint8 (N, H, W, C) -> model space. With ``value_range`` it also reads foreign
  float images (e.g. diffusers pipelines' [0, 1] output), with ``channels_last=False`` NCHW input.

Both map the range linearly: ``value_range`` (lo, hi) <-> [0, 255] <-> [-1, 1].
"""

from __future__ import annotations

import numpy as np
import torch

MODEL_RANGE = (-1.0, 1.0)   # the library's float images
PIXEL_RANGE = (0.0, 255.0)  # uint8 pixels


def _check_range(value_range) -> tuple[float, float]:
    lo, hi = (float(v) for v in value_range)
    if not lo < hi:
        raise ValueError(f"value_range must be (lo, hi) with lo < hi; got {tuple(value_range)}")
    return lo, hi


def to_uint8(images: torch.Tensor | np.ndarray, *, value_range: tuple[float, float] = MODEL_RANGE,
             channels_last: bool = False) -> np.ndarray:
    """Map float images to uint8 pixels: ``value_range`` (default [-1, 1]) linearly onto [0, 255].

    pixel = round((x - lo) * 255 / (hi - lo)), rounded half to even, after clipping x to [lo, hi];
    for the default range that is round((x + 1) * 127.5): -1 maps to 0 and 1 to 255.

    Args:
        images: float tensor (any device) or numpy array, (N, C, H, W), or (N, H, W, C) with
            ``channels_last``; values nominally in ``value_range`` (outside values are clipped).
            float64 input is computed in float64, every other float dtype in float32.
        value_range: (lo, hi) of the input, e.g. (0, 1) or (0, 255) for foreign arrays.
        channels_last: the input is (N, H, W, C) already.

    Returns:
        numpy uint8 array (N, H, W, C) in [0, 255].

    Raises:
        ValueError: if ``images`` is not 4-D or not floating point, or ``value_range`` is not lo < hi.
    """
    images = torch.as_tensor(images)
    if images.ndim != 4:
        layout = "(N, H, W, C)" if channels_last else "(N, C, H, W)"
        raise ValueError(f"images must be 4-D {layout}; got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor in {value_range}; got dtype {images.dtype}")
    lo, hi = _check_range(value_range)
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    pixels = ((images.detach().to(dtype).clamp(lo, hi) - lo) * (255.0 / (hi - lo))).round().to(torch.uint8)
    return (pixels if channels_last else pixels.permute(0, 2, 3, 1)).cpu().numpy()


def from_uint8(pixels: np.ndarray | torch.Tensor, *, value_range: tuple[float, float] = PIXEL_RANGE,
               channels_last: bool = True) -> torch.Tensor:
    """Map pixels to model-space images: ``value_range`` (default uint8 [0, 255]) linearly onto [-1, 1].

    x = (p - lo) / ((hi - lo) / 2) - 1, computed in float32, clipped to [-1, 1]; for uint8 pixels that is
    p / 127.5 - 1, the inverse of :func:`to_uint8`.

    Args:
        pixels: uint8 array or tensor in [0, 255] (N, H, W, C); with another ``value_range`` a float
            array or tensor in that range (e.g. (0, 1) for diffusers' pipeline output). With
            ``channels_last=False`` the input is (N, C, H, W).
        value_range: (lo, hi) of the input.
        channels_last: the input is (N, H, W, C) (True) or (N, C, H, W) (False).

    Returns:
        float32 tensor (N, C, H, W) in [-1, 1] on the CPU.

    Raises:
        ValueError: if ``pixels`` is not 4-D; not uint8 for the default range, or neither uint8 nor
            float for another range; or ``value_range`` is not lo < hi.
    """
    pixels = torch.as_tensor(pixels)
    if pixels.ndim != 4:
        layout = "(N, H, W, C)" if channels_last else "(N, C, H, W)"
        raise ValueError(f"pixels must be 4-D {layout}; got shape {tuple(pixels.shape)}")
    lo, hi = _check_range(value_range)
    if pixels.dtype != torch.uint8 and ((lo, hi) == PIXEL_RANGE or not pixels.is_floating_point()):
        raise ValueError(f"pixels must be uint8 in [0, 255] (or float with a value_range); got dtype {pixels.dtype}")
    images = pixels.detach().cpu().float()
    images = images.permute(0, 3, 1, 2) if channels_last else images
    return images.sub(lo).div((hi - lo) / 2).sub(1.0).clamp(-1.0, 1.0).contiguous()
