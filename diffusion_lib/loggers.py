"""Experiment trackers behind one small interface: TensorBoard and Weights & Biases next to log.csv.

The Trainer writes ``log.csv`` itself (the file every run has); the trackers named in
``training.loggers`` receive the same rows, the sample grids and, at the end, the resolved
config as hyper-parameters with the final metrics::

    tensorboard   SummaryWriter event files in the run folder (``tensorboard --logdir runs``);
                  scalars train/loss, train/lr, train/images_per_sec, train/grad_norm, train/ema_decay,
                  images samples, and the hparams plugin's table
    wandb         a Weights & Biases run in ``<run>/wandb``; offline unless WANDB_MODE says otherwise,
                  uploaded later with ``wandb sync <run>/wandb/offline-run-*``

Only the main process logs (``enabled=False`` elsewhere gives a tracker that does nothing), so a
data-parallel Trainer only has to pass its rank-0 flag. The summary of a run (``run.json``) and
log.csv are written by :mod:`diffusion_lib.run_log`.
"""

from __future__ import annotations

import math
import os
import secrets
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .config import LOGGER_NAMES, check_logger_names  # noqa: F401  (the names live in config, a leaf)

INSTALL_HINT = "pip install 'diffusion_lib[tracking]' (or: pip install wandb)"


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"training": {"learning_rate": 1e-3}}`` -> ``{"training.learning_rate": 1e-3}`` (nested mappings only)."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _hparam_value(value: Any) -> int | float | str | bool:
    """A value TensorBoard's hparams plugin accepts: numbers and strings as they are, the rest as text."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)


class Tracker:
    """The interface: every method is a no-op here, so a disabled tracker (non-zero rank) is this class."""

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Scalars of one step, e.g. ``{"loss": 0.1, "lr": 2e-4}``."""

    def log_image(self, step: int, tag: str, image: np.ndarray) -> None:
        """An uint8 image (H, W, 3) or (H, W), e.g. a sample grid read back from its PNG."""

    def finish(self, config: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """The flat resolved config as hyper-parameters and the run's final metrics; closes the files."""


class TensorBoardTracker(Tracker):
    """Writes event files to ``log_dir`` through ``torch.utils.tensorboard.SummaryWriter``.

    Args:
        log_dir: the run folder.
        purge_step: on resume, events at or after this step (left by an interrupted run) are dropped.
    """

    def __init__(self, log_dir: str | Path, purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # torch imports tensorboard lazily
            raise ImportError("training.loggers includes 'tensorboard' but the tensorboard package is missing: "
                              "pip install tensorboard (or pip install 'diffusion_lib[tracking]')") from error
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step or None)

    def log_scalars(self, step, values):
        for key, value in values.items():
            self.writer.add_scalar(f"train/{key}", value, step)

    def log_image(self, step, tag, image):
        self.writer.add_image(tag, image, step, dataformats="HWC" if image.ndim == 3 else "HW")

    def finish(self, config, metrics):
        from torch.utils.tensorboard.summary import hparams

        metrics = {f"final/{k}": float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}
        experiment, start, end = hparams({k: _hparam_value(v) for k, v in config.items()}, metrics)
        for summary in (experiment, start, end):  # into this run's file, not a new sub-folder (add_hparams)
            self.writer.file_writer.add_summary(summary)
        for key, value in metrics.items():
            self.writer.add_scalar(key, value)
        self.writer.close()


class WandbTracker(Tracker):
    """A Weights & Biases run in ``<run_dir>/wandb``, offline unless ``WANDB_MODE`` is set.

    Args:
        run_dir: the run folder; the wandb run id is kept in ``<run_dir>/wandb/run_id`` so a resume continues it.
        name: the run's display name.
        config: the resolved config (flat).
        project: wandb project.
        group: wandb group (a sweep's runs share one).

    Raises:
        ImportError: wandb is not installed (the message names the extra to install).
    """

    def __init__(self, run_dir: str | Path, name: str, config: Mapping[str, Any], project: str,
                 group: str | None = None):
        try:
            import wandb
        except ImportError as error:
            raise ImportError(f"training.loggers includes 'wandb' but wandb is not installed: {INSTALL_HINT}") from error
        folder = Path(run_dir) / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / "run_id"
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
        self.wandb = wandb
        self.run = wandb.init(project=project, group=group, name=name, id=run_id, resume="allow", dir=str(run_dir),
                              config=dict(config), mode=os.environ.get("WANDB_MODE", "offline"),
                              settings=wandb.Settings(console="off", x_disable_stats=True))

    def log_scalars(self, step, values):
        self.run.log({f"train/{k}": v for k, v in values.items()}, step=step)

    def log_image(self, step, tag, image):
        self.run.log({tag: self.wandb.Image(image)}, step=step)

    def finish(self, config, metrics):
        self.run.summary.update({f"final/{k}": v for k, v in metrics.items() if v is not None})
        self.run.finish()


class Trackers(Tracker):
    """Several trackers as one: each call goes to all of them."""

    def __init__(self, trackers: Sequence[Tracker]):
        self.trackers = list(trackers)

    def log_scalars(self, step, values):
        values = {k: v for k, v in values.items() if k != "step"}  # the step is the x axis, not a curve
        for tracker in self.trackers:
            tracker.log_scalars(step, values)

    def log_image(self, step, tag, image):
        for tracker in self.trackers:
            tracker.log_image(step, tag, image)

    def finish(self, config, metrics):
        for tracker in self.trackers:
            tracker.finish(config, metrics)


def open_trackers(config, run_dir: str | Path, step: int = 0, enabled: bool = True) -> Trackers:
    """The trackers ``config.training.loggers`` names ("csv" is the Trainer's own log.csv, not opened here).

    Args:
        config: the :class:`~diffusion_lib.config.ExperimentConfig`.
        run_dir: the run folder.
        step: the step training starts from (a resume drops TensorBoard events from a crashed run after it).
        enabled: False on every process but the main one: nothing is opened or written.

    Raises:
        ValueError: an unknown tracker name.
        ImportError: a named tracker's package is missing (the message says what to install).
    """
    t = config.training
    names = list(getattr(t, "loggers", ("csv", "tensorboard")))
    check_logger_names(names)
    if not enabled:
        return Trackers([])
    trackers: list[Tracker] = []
    if "tensorboard" in names:
        trackers.append(TensorBoardTracker(run_dir, purge_step=step))
    if "wandb" in names:
        trackers.append(WandbTracker(run_dir, config.name, flatten_config(config.to_dict()),
                                     project=getattr(t, "wandb_project", "diffusion_lib"),
                                     group=getattr(t, "wandb_group", None)))
    return Trackers(trackers)


def read_png(path: str | Path) -> np.ndarray:
    """The uint8 RGB array (H, W, 3) of a PNG file (a sample grid as written by ``viz.save_grid``)."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
