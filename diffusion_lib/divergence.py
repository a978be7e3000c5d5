"""The divergence guard: a NaN or infinite loss, gradient or weight stops the run, keeping the last finite checkpoint.

Checked without a per-step GPU sync: each step folds "was this step finite?" into a flag on the device
(:meth:`DivergenceGuard.record`); the flag is read (one host sync, the earliest bad step over all processes)
at log rows and before every save, which also checks that every weight is finite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import torch

from . import distributed


class TrainingDiverged(RuntimeError):
    """The loss or a gradient became NaN or infinite (or a weight did); the message names the step
    and the last finite checkpoint, which is kept."""


class DivergenceGuard:
    """Remembers the first non-finite step on the device and raises :class:`TrainingDiverged` when asked.

    Args:
        device: where the flag lives (the model's device).
        dist: the process group (the earliest bad step over all processes counts).
        checkpoint_path: the checkpoint the message says is kept.
        learning_rate: named in the message (the usual cause).
    """

    def __init__(self, device: torch.device, dist: distributed.Context, checkpoint_path: Path, learning_rate: float):
        self.first_bad_step = torch.zeros((), dtype=torch.long, device=device)  # 0: every step finite
        self.dist, self.checkpoint_path, self.learning_rate = dist, checkpoint_path, learning_rate
        self.saved_step: int | None = None  # the step of the last finite checkpoint written
        self.before_raise: Callable[[], None] = lambda: None  # e.g. close the progress bar

    def record(self, bad: torch.Tensor, step: int) -> None:
        """Fold step ``step``'s flag ``bad`` (a bool tensor on the device) into the first bad step (no host sync)."""
        self.first_bad_step = torch.where(bad & (self.first_bad_step == 0), step, self.first_bad_step)

    def check(self) -> None:
        """Raise :class:`TrainingDiverged` if a step so far had a NaN or infinite loss or gradient (one host sync)."""
        bad = int(distributed.first_bad_step(self.first_bad_step, self.dist))  # the earliest, over processes
        if bad:
            self.diverged(f"the loss or gradient was NaN or infinite at step {bad}")

    def check_weights(self, tensors: Iterable[torch.Tensor], step: int) -> None:
        """Raise :class:`TrainingDiverged` unless every floating-point tensor of ``tensors`` is finite (one host sync)."""
        tensors = [t for t in tensors if t.is_floating_point()]
        if not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
            self.diverged(f"a weight became NaN or infinite by step {step}")

    def diverged(self, what: str) -> None:
        """Raise :class:`TrainingDiverged` saying ``what`` happened and which checkpoint is kept."""
        self.before_raise()
        kept = (f"the last finite checkpoint {self.checkpoint_path} (step {self.saved_step}) is kept"
                if self.saved_step is not None else "no checkpoint was written")
        raise TrainingDiverged(f"training diverged: {what} (training.learning_rate={self.learning_rate}); "
                               f"{kept}. Lower the learning rate, raise warmup_steps or set grad_clip")
