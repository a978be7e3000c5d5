"""The run log: what a training run reports while it trains, in three places at once.

    log.csv     one row per ``training.log_every`` steps: step, the objective's loss terms, lr, images/s
    trackers    the same rows (plus grad_norm, ema_decay) and the sample grids, to TensorBoard / wandb
                (:mod:`diffusion_lib.loggers`)
    run.json    the run's summary (artifact kind "run_summary", :mod:`diffusion_lib.artifacts`): step,
                max_steps (the step the run ends at: ``training.max_steps``, or ``training.max_epochs``
                epochs if that comes first), finished, num_images, wall_seconds (summed over resumed
                sessions), final_loss, best_loss, images_per_sec

Only the main process writes (``enabled=False`` elsewhere: every method does nothing). Every reader of
run.json goes through :func:`read_run_summary`.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Mapping, Sequence

from .artifacts import load_artifact, save_artifact
from .atomic import WriteError, atomic_write_text
from .loggers import flatten_config, open_trackers, read_png

SUMMARY_FILE = "run.json"
SUMMARY_KIND = "run_summary"


def read_run_summary(run_dir: str | Path) -> dict:
    """The payload of ``run_dir/run.json`` ({} when there is none, or it is damaged or foreign)."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        return {}
    try:
        summary = load_artifact(path, SUMMARY_KIND)
    except ValueError:
        return {}
    summary.pop("_version")
    return summary


class RunSummary:
    """Keeps the numbers a run comparison needs and writes them to ``<run>/run.json`` (atomic JSON).

    Fields: ``step``, ``max_steps`` (the step the run ends at), ``finished`` (step reached it),
    ``num_images`` (training images), ``wall_seconds`` (summed over resumed sessions), ``final_loss``,
    ``best_loss`` (of the logged rows), ``images_per_sec`` (mean of the logged rows).

    Args:
        run_dir: the run folder; an existing run.json is continued (its wall time is added to).
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / SUMMARY_FILE
        self.data = {"wall_seconds": 0.0, "best_loss": None, "final_loss": None, "images_per_sec": None,
                     "num_rows": 0}
        self.data.update(read_run_summary(run_dir))  # a damaged summary is rewritten from this session's numbers
        self._previous_wall = float(self.data["wall_seconds"])

    def add_row(self, row: Mapping[str, float]) -> None:
        """Record one logged row (``loss``, ``images_per_sec``)."""
        loss = row.get("loss")
        if loss is not None and math.isfinite(loss):
            self.data["final_loss"] = loss
            best = self.data["best_loss"]
            self.data["best_loss"] = loss if best is None else min(best, loss)
        speed, n = row.get("images_per_sec"), self.data["num_rows"]
        if speed is not None:
            mean = self.data["images_per_sec"] or 0.0
            self.data["images_per_sec"] = (mean * n + speed) / (n + 1)
            self.data["num_rows"] = n + 1

    def save(self, step: int, max_steps: int, session_seconds: float, num_images: int | None = None) -> Path:
        """Write run.json with the step reached, the step the run ends at (``max_steps``: the Trainer's
        :attr:`~diffusion_lib.training.Trainer.max_steps`, which ``max_epochs`` can shorten) and the wall time
        of all sessions so far."""
        self.data.update(step=int(step), max_steps=int(max_steps), finished=step >= max_steps,
                         wall_seconds=round(self._previous_wall + session_seconds, 3))
        if num_images is not None:
            self.data["num_images"] = int(num_images)
        save_artifact(self.path, SUMMARY_KIND, self.data)
        return self.path

    def metrics(self) -> dict[str, float | None]:
        """The final metrics reported to the trackers' hparams: final_loss, best_loss, images_per_sec, wall_seconds."""
        return {k: self.data.get(k) for k in ("final_loss", "best_loss", "images_per_sec", "wall_seconds")}


def open_csv_log(path: str | Path, fields: Sequence[str], step: int):
    """A function appending a row to the CSV file ``path``; rows past ``step`` (from a crashed run) are dropped.

    Args:
        path: log.csv.
        fields: the columns, in order.
        step: the step training starts from.

    Raises:
        WriteError: the file cannot be written (``cannot write PATH: reason``), now or at a later row.
    """
    path = Path(path)
    rows = []
    if path.exists():
        with path.open(newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= step]
    kept = io.StringIO()
    writer = csv.DictWriter(kept, fieldnames=list(fields))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, kept.getvalue())

    def log(row: dict) -> None:
        try:
            with path.open("a", newline="") as handle:
                csv.DictWriter(handle, fieldnames=list(fields)).writerow(
                    {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        except OSError as error:
            raise WriteError(error.errno, error.strerror or str(error), str(path)) from error

    return log


class RunLog:
    """log.csv, the trackers and run.json of one training session, opened at step ``step``.

    Args:
        config: the :class:`~diffusion_lib.config.ExperimentConfig`.
        run_dir: the run folder.
        loss_fields: the objective's loss terms (log.csv columns after ``step``).
        step: the step the session starts from (later rows of log.csv and TensorBoard are dropped).
        enabled: False on every process but the main one (DDP): nothing is written.

    Raises:
        ImportError: a tracker's package is missing; WriteError: log.csv cannot be written.
    """

    def __init__(self, config, run_dir: str | Path, loss_fields: Sequence[str], step: int, enabled: bool = True):
        self.config, self.enabled = config, enabled
        fields = ["step", *loss_fields, "lr", "images_per_sec"]
        self._csv = open_csv_log(Path(run_dir) / "log.csv", fields, step) if enabled else (lambda row: None)
        self.trackers = open_trackers(config, run_dir, step, enabled=enabled)
        self.summary = RunSummary(run_dir)

    def row(self, row: dict, **extra: float) -> None:
        """One log row (``step``, the loss terms, ``lr``, ``images_per_sec``) to log.csv, run.json's running numbers
        and the trackers (which also receive ``extra``: grad_norm, ema_decay)."""
        self._csv(row)
        self.summary.add_row(row)
        self.trackers.log_scalars(row["step"], {**row, **extra})

    def image(self, step: int, path: str | Path) -> None:
        """A sample grid (a PNG written by ``viz.save_grid``) to the trackers."""
        if self.enabled:
            self.trackers.log_image(step, "samples", read_png(path))

    def finish(self, step: int, max_steps: int, num_images: int, session_seconds: float) -> None:
        """Write run.json and close the trackers, with the config as hyper-parameters and the final metrics."""
        if self.enabled:
            self.summary.save(step, max_steps, session_seconds, num_images)
        self.trackers.finish(flatten_config(self.config.to_dict()), self.summary.metrics())
