"""Pictures: image grids and NPZ exports (the uint8 edge), schedule plots, forward-process strips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from .checkpoint import _atomic_write
from .images import to_uint8


def grid_image(images: torch.Tensor, nrow: int = 8, padding: int = 1) -> np.ndarray:
    """Tile images into one picture with torchvision's ``make_grid``.

    Args:
        images: float (N, C, H, W) in [-1, 1].
        nrow: images per row.
        padding: pixels between images (filled with -1, i.e. black).

    Returns:
        uint8 array (H', W', C) in [0, 255], C as in ``images``.
    """
    grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=padding, pad_value=-1.0)
    return to_uint8(grid[None, : images.shape[1]])[0]  # make_grid repeats 1 channel to 3; keep grayscale


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, padding: int = 1) -> Path:
    """Save images as one PNG grid, atomically. Arguments as :func:`grid_image`; returns the path."""
    pixels = grid_image(images, nrow, padding)
    picture = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    _atomic_write(Path(path), lambda tmp: picture.save(tmp, format="PNG"))
    return Path(path)


def save_npz(images: torch.Tensor, path: str | Path, labels: torch.Tensor | None = None) -> Path:
    """Save samples as an NPZ with ``images`` uint8 (N, H, W, C) in [0, 255] and ``labels`` int64 (N,), atomically.

    Unlabeled samples get labels -1.
    """
    arrays = {"images": to_uint8(images),
              "labels": (labels.cpu().long() if labels is not None else torch.full((len(images),), -1)).numpy()}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    _atomic_write(Path(path), write)
    return Path(path)


def by_class(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Reorder images so each class fills one row of a grid (stable within a class).

    Returns:
        (images sorted by label, images per row = the largest class count).
    """
    order = torch.sort(labels.cpu(), stable=True).indices
    return images[order], int(torch.bincount(labels.cpu()).max())
