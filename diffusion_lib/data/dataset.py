"""The dataset object every source returns: compact uint8 pixels plus optional labels.

Pixels are stored as uint8 (N, H, W, C) — a quarter of the memory of float32 — and
converted to the library's float32 (N, C, H, W) in [-1, 1] only when a batch is taken,
through :func:`diffusion_lib.images.from_uint8`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from ..images import from_uint8


@dataclass(frozen=True)
class SourceInfo:
    """Where a dataset comes from and how it may be used.

    Attributes:
        name: registry name of the source, e.g. ``"digits"``.
        description: one or two sentences on what the images show.
        license: the license of the images (not of the code that loads them).
        citation: the reference to cite when using the data.
        url: the dataset's home page.
        class_names: names of the classes, index = label; empty when unlabeled.
    """

    name: str
    description: str = ""
    license: str = "unknown"
    citation: str = ""
    url: str = ""
    class_names: tuple[str, ...] = field(default_factory=tuple)


class ImageDataset(torch.utils.data.Dataset):
    """Square images held as uint8 (N, H, W, C), with optional int64 class labels.

    Args:
        pixels: uint8 tensor (N, H, W, C) with H == W and C in {1, 3}.
        labels: int64 tensor (N,) with values in [0, num_classes - 1], or None when
            unlabeled.
        class_names: one name per class (index = label). Required with ``labels``
            unless the labels are 0..K-1, in which case the names default to "0".."K-1".
        info: license, citation and description of the source.
        report: optional pandas DataFrame (columns ``path, reason, detail``) of what
            was dropped while the dataset was prepared; None when nothing was cleaned.
        files: optional list of N source file paths (one per image), for file sources.

    Raises:
        ValueError: on a wrong dtype, rank, non-square images, a channel count other
            than 1 or 3, labels of the wrong length or out of range, or class names
            that do not match the labels.
    """

    def __init__(self, pixels, labels=None, class_names=None, info: SourceInfo | None = None, report=None,
                 files=None):
        pixels = torch.as_tensor(pixels)
        if pixels.dtype != torch.uint8 or pixels.ndim != 4:
            raise ValueError(f"pixels must be uint8 (N, H, W, C); got {pixels.dtype} shape {tuple(pixels.shape)}")
        n, h, w, c = pixels.shape
        if h != w:
            raise ValueError(f"images must be square (H == W); got H={h}, W={w}")
        if c not in (1, 3):
            raise ValueError(f"images must have 1 or 3 channels; got C={c}")
        if labels is not None:
            labels = torch.as_tensor(labels)
            if labels.dtype.is_floating_point or labels.ndim != 1 or len(labels) != n:
                raise ValueError(f"labels must be integer (N,) with N={n}; got {labels.dtype} shape {tuple(labels.shape)}")
            labels = labels.long()
            if n and int(labels.min()) < 0:
                raise ValueError(f"labels must be >= 0; got min {int(labels.min())}")
            if class_names is None:
                class_names = [str(k) for k in range(int(labels.max()) + 1 if n else 0)]
            if n and int(labels.max()) >= len(class_names):
                raise ValueError(f"label {int(labels.max())} out of range for {len(class_names)} class names")
        elif class_names is not None and len(class_names) > 0:
            raise ValueError("class_names given for an unlabeled dataset (labels=None)")
        if files is not None and len(files) != n:
            raise ValueError(f"files must list one path per image ({n}); got {len(files)}")
        self.pixels = pixels.contiguous()
        self.labels = labels
        self.class_names = list(class_names) if labels is not None else None
        info = info or SourceInfo(name="unnamed")
        self.info = replace(info, class_names=tuple(self.class_names or ()))
        self.report = report
        self.files = None if files is None else [str(f) for f in files]

    @property
    def num_classes(self) -> int:
        """Number of classes; 0 when the dataset is unlabeled."""
        return len(self.class_names) if self.class_names is not None else 0

    @property
    def channels(self) -> int:
        """Channels per image: 1 (grayscale) or 3 (RGB)."""
        return int(self.pixels.shape[3])

    @property
    def image_size(self) -> int:
        """Side of the square images in pixels."""
        return int(self.pixels.shape[1])

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def __getitem__(self, i):
        """One example.

        Returns:
            (image, label): image float32 (C, H, W) in [-1, 1]; label an int64 scalar
            tensor, -1 when the dataset is unlabeled.
        """
        image = from_uint8(self.pixels[i].unsqueeze(0))[0]
        label = self.labels[i] if self.labels is not None else torch.tensor(-1, dtype=torch.long)
        return image, label

    def get_batch(self, indices: torch.Tensor):
        """Vectorised batch access (much faster than a DataLoader over ``__getitem__``).

        Args:
            indices: int64 tensor (B,) of positions in [0, len - 1].

        Returns:
            (images, labels): images float32 (B, C, H, W) in [-1, 1] on the pixels'
            device; labels int64 (B,) or None when unlabeled.
        """
        indices = torch.as_tensor(indices, dtype=torch.long, device=self.pixels.device)
        images = from_uint8(self.pixels[indices])
        if images.device != self.pixels.device:
            images = images.to(self.pixels.device)
        labels = self.labels[indices.to(self.labels.device)] if self.labels is not None else None
        return images, labels

    def subset(self, indices) -> "ImageDataset":
        """A new dataset holding the examples at ``indices`` (int64 (K,)), same info."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        labels = self.labels[indices] if self.labels is not None else None
        files = None if self.files is None else [self.files[i] for i in indices.tolist()]
        return ImageDataset(self.pixels[indices], labels, self.class_names, self.info, self.report, files)

    def to(self, device) -> "ImageDataset":
        """A new dataset whose pixels and labels live on ``device`` (e.g. the GPU)."""
        labels = self.labels.to(device) if self.labels is not None else None
        out = ImageDataset.__new__(ImageDataset)
        out.__dict__.update(self.__dict__, pixels=self.pixels.to(device), labels=labels)
        return out

    def __repr__(self) -> str:
        return (f"ImageDataset({self.info.name!r}, n={len(self)}, size={self.image_size}, "
                f"channels={self.channels}, classes={self.num_classes})")
