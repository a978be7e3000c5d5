"""The batch sampler: a seeded random permutation of the training images, reshuffled every epoch.

``training.batch_size`` is the global batch: every process draws the same permutation and cursor, and
rank r of N takes positions r, r + N, r + 2N, ... of the global batch (a disjoint 1/N share). The last
incomplete batch of an epoch is dropped, so an epoch is ``len(dataset) // batch_size`` steps. The
permutation, the cursor and the generator are saved in checkpoints, so a resumed run draws the same batches.
"""

from __future__ import annotations

import torch

from .distributed import Context


def check_labels(dataset, num_classes: int) -> None:
    """Check once, before training, that every label of ``dataset`` is an integer in [0, num_classes - 1].

    (The conditional UNet does not check labels at each forward pass: that would sync the GPU every step.)

    Args:
        dataset: has ``labels`` (int tensor (N,)) or ``get_batch(indices) -> (images, labels)``.
        num_classes: K of the conditional model (label K is its null label, never a data label).

    Raises:
        ValueError: no labels, non-integer labels, or a label outside [0, K - 1] (the message names it).
    """
    labels = getattr(dataset, "labels", None)
    if labels is None and not hasattr(dataset, "labels"):
        labels = dataset.get_batch(torch.arange(len(dataset)))[1]
    if labels is None:
        raise ValueError("a conditional model needs labelled data; the dataset has no labels "
                         "(set model.conditional=false)")
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"dataset labels must be integers in [0, {num_classes - 1}]; got dtype {labels.dtype}")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
        raise ValueError(f"dataset label {int(bad[0])} is outside [0, {num_classes - 1}] "
                         f"({len(bad)} bad label(s) for a model of {num_classes} classes)")


class BatchSampler:
    """Draws this process's share of each global batch.

    Args:
        dataset: ``get_batch(indices) -> (images float (B, C, H, W) in [-1, 1], labels int64 (B,) or None)``
            and ``__len__``.
        batch_size: the global batch (capped at the dataset's size); divisible by ``dist.world_size``.
        seed: the data order's seed (``training.seed + 1``).
        dist: the process group (:func:`diffusion_lib.distributed.init_from_env`).
        device: where batches go.
        memory_format: ``torch.contiguous_format`` or ``torch.channels_last``.
        labels: return labels (conditional models); otherwise the second value is None.
    """

    def __init__(self, dataset, batch_size: int, seed: int, dist: Context, device: torch.device,
                 memory_format: torch.memory_format = torch.contiguous_format, labels: bool = False):
        self.dataset, self.dist, self.device = dataset, dist, device
        self.batch_size = min(batch_size, len(dataset))
        self.memory_format, self.labels = memory_format, labels
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)
        self.cursor = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The next batch: (x0 float (B / N, C, H, W) on the device, labels int64 (B / N,) or None)."""
        if self.cursor + self.batch_size > len(self.order):
            self.order = torch.randperm(len(self.dataset), generator=self.generator)
            self.cursor = 0
        indices = self.order[self.cursor:self.cursor + self.batch_size][self.dist.rank::self.dist.world_size]
        self.cursor += self.batch_size
        x0, y = self.dataset.get_batch(indices)
        x0 = x0.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return x0, (y.to(self.device) if self.labels else None)

    def state_dict(self) -> dict:
        """The data order (global: the same on every process): generator state, permutation and cursor."""
        return {"data_generator": self.generator.get_state(), "order": self.order, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        """Continue the data order of :meth:`state_dict` (for any number of processes)."""
        self.generator.set_state(state["data_generator"])
        self.order, self.cursor = state["order"], state["cursor"]
