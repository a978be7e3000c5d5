"""Compare training runs: one table (config differences, losses, evaluation scores, speed) and one figure.

A run folder is what :class:`~diffusion_lib.training.Trainer` writes: ``config.yaml``, ``log.csv``,
``run.json`` (wall time, final and best loss, images/s), ``samples/*.png`` and the ``evaluate``
results ``checkpoints/last.eval.<setting>.json`` (one file per sampler, steps, guidance, seed and
sample count: :func:`evaluation_path`). A folder without ``config.yaml`` whose sub-folders are runs
(a sweep) stands for all of them.

    python -m diffusion_lib runs runs/digits_cfg runs/digits_cfg_cosine --figure compare.png
    >>> table = compare_runs(["runs/a", "runs/b"]); fig = plot_runs(["runs/a", "runs/b"])
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd
import yaml

from ..loggers import flatten_config
from ..run_log import read_run_summary

# evaluation fields shown in the comparison (the JSON holds more)
EVAL_COLUMNS = ("fid", "kid_mean", "is_mean", "diversity", "class_accuracy", "extractor")
IGNORED_KEYS = ("name",)  # differs between runs by construction; the run column names them


@dataclass
class RunRecord:
    """What one run folder holds, read back.

    Attributes:
        path: the run folder.
        name: its folder name.
        config: flat ``{dotted key: value}`` of config.yaml.
        log: log.csv as a DataFrame (step, loss, lr, images_per_sec, ...); empty if missing.
        summary: run.json's payload (step, finished, wall_seconds, final_loss, best_loss, images_per_sec); {} if missing.
        evaluations: the ``evaluate`` reports of its checkpoints, one dict per setting (with ``file``).
        samples: the final (else the latest) sample grid PNG, or None.
    """

    path: Path
    name: str
    config: dict
    log: pd.DataFrame
    summary: dict = field(default_factory=dict)
    evaluations: list[dict] = field(default_factory=list)
    samples: Path | None = None


def evaluation_path(checkpoint: str | Path, report: dict) -> Path:
    """Where ``evaluate`` writes the scores of ``checkpoint`` under one setting (so other settings are kept).

    ``<checkpoint stem>.eval.<sampler>-<K>steps-g<guidance>-seed<seed>-n<N>.json`` beside the checkpoint
    (guidance left out for unconditional models; ``prior-seed<seed>-n<N>`` for a VAE).

    Args:
        checkpoint: the checkpoint file.
        report: has ``seed``, ``num_generated`` and, for diffusion models, ``sampler``, ``num_inference_steps``,
            ``guidance_scale`` (None: unconditional) and ``eta`` (DDIM, left out when 0).
    """
    parts = ["prior"] if report.get("sampler") is None else [report["sampler"], f"{report['num_inference_steps']}steps"]
    if report.get("eta"):
        parts.append(f"eta{report['eta']:g}")
    if report.get("guidance_scale") is not None:
        parts.append(f"g{report['guidance_scale']:g}")
    parts += [f"seed{report['seed']}", f"n{report['num_generated']}"]
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.eval.{'-'.join(parts)}.json")


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """The run folders ``paths`` stand for: a folder with config.yaml, or every such sub-folder (a sweep).

    Raises:
        FileNotFoundError: a path that does not exist, or holds no run.
    """
    runs = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise FileNotFoundError(f"run folder {path} does not exist")
        found = [path] if (path / "config.yaml").is_file() else sorted(
            p for p in path.iterdir() if (p / "config.yaml").is_file())
        if not found:
            raise FileNotFoundError(f"{path} holds no run (no config.yaml in it or in its sub-folders)")
        runs += found
    return runs


def load_run(path: str | Path) -> RunRecord:
    """Read a run folder (see :class:`RunRecord`).

    Raises:
        FileNotFoundError: no config.yaml in ``path``.
    """
    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(f"{path} is not a run folder (no config.yaml)")
    config = flatten_config(yaml.safe_load((path / "config.yaml").read_text()) or {})
    log = pd.read_csv(path / "log.csv") if (path / "log.csv").is_file() else pd.DataFrame(columns=["step", "loss"])
    summary = read_run_summary(path)
    evaluations = []
    for file in sorted((path / "checkpoints").glob("*.eval*.json")):
        report = json.loads(file.read_text())
        evaluations.append({**report, "file": file.name})
    grids = sorted((path / "samples").glob("step_*.png"))
    final = path / "samples" / "final.png"
    samples = final if final.is_file() else (grids[-1] if grids else None)
    return RunRecord(path, path.name, config, log, summary, evaluations, samples)


def config_differences(records: Sequence[RunRecord]) -> list[str]:
    """The dotted config keys whose values are not the same in every run (``name`` left out), sorted."""
    keys = sorted(set().union(*(r.config for r in records)) - set(IGNORED_KEYS))
    missing = object()
    return [k for k in keys if len({json.dumps(r.config.get(k, missing), default=str) for r in records}) > 1]


def _evaluation_label(report: dict) -> str:
    name = report["file"].split(".eval", 1)[1].strip(".").removesuffix("json").strip(".")
    return name or "default"


def compare_runs(runs: Sequence[str | Path | RunRecord]) -> pd.DataFrame:
    """The comparison table: one row per run and evaluation setting (one row for a run never evaluated).

    Columns: ``run``; the config keys that differ between the runs (:func:`config_differences`);
    ``steps``, ``final_loss``, ``best_loss`` (from run.json, else log.csv), ``wall_seconds``, ``images_per_sec``;
    ``evaluation`` (the setting: sampler, steps, guidance, seed, n) and the scores ``fid``, ``kid_mean``,
    ``is_mean``, ``diversity``, ``class_accuracy``, ``extractor`` (missing scores are NaN / None).

    Args:
        runs: run folders (a sweep folder counts as all its runs) or :class:`RunRecord` objects.

    Raises:
        FileNotFoundError: a folder that holds no run.
    """
    records = _records(runs)
    differences = config_differences(records) if len(records) > 1 else []
    rows = []
    for r in records:
        losses = pd.to_numeric(r.log["loss"], errors="coerce") if "loss" in r.log else pd.Series(dtype=float)
        base = {"run": r.name, **{k: _cell(r.config.get(k)) for k in differences},
                "steps": r.summary.get("step", int(r.log["step"].max()) if len(r.log) else 0),
                "final_loss": r.summary.get("final_loss", losses.iloc[-1] if len(losses) else math.nan),
                "best_loss": r.summary.get("best_loss", losses.min() if len(losses) else math.nan),
                "wall_seconds": r.summary.get("wall_seconds", math.nan),
                "images_per_sec": r.summary.get("images_per_sec", math.nan)}
        evaluations = r.evaluations or [None]
        for report in evaluations:
            scores = {"evaluation": _evaluation_label(report) if report else None}
            scores.update({k: (report or {}).get(k) for k in EVAL_COLUMNS})
            rows.append({**base, **scores})
    table = pd.DataFrame(rows)
    return table.dropna(axis=1, how="all") if len(table) else table


def _cell(value):
    """A table cell: lists and dicts as text so the column stays comparable."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _records(runs) -> list[RunRecord]:
    records = [r for r in runs if isinstance(r, RunRecord)]
    folders = find_runs([r for r in runs if not isinstance(r, RunRecord)]) if len(records) < len(runs) else []
    return records + [load_run(p) for p in folders]


def format_comparison(table: pd.DataFrame) -> str:
    """The table as aligned text for the terminal (floats to 4 significant digits)."""
    return table.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def plot_runs(runs: Sequence[str | Path | RunRecord], smooth: int = 1, max_grids: int = 6):
    """Loss curves of every run on one axis, and their sample grids side by side below.

    Args:
        runs: run folders or :class:`RunRecord` objects.
        smooth: rolling-mean window over logged rows (1: raw).
        max_grids: show at most this many sample grids.

    Returns:
        A matplotlib Figure.

    Raises:
        ValueError: smooth < 1.
    """
    from matplotlib.figure import Figure
    from PIL import Image

    if smooth < 1:
        raise ValueError(f"smooth must be >= 1; got {smooth}")
    records = _records(runs)
    grids = [r for r in records if r.samples is not None][:max_grids]
    columns = max(len(grids), 1)
    fig = Figure(figsize=(max(6.0, 2.6 * columns), 6.5 if grids else 3.5), layout="constrained")
    spec = fig.add_gridspec(2 if grids else 1, columns, height_ratios=[1, 1.2] if grids else [1])
    ax = fig.add_subplot(spec[0, :])
    for r in records:
        if len(r.log) and "loss" in r.log:
            ax.plot(r.log["step"], r.log["loss"].rolling(smooth, min_periods=1).mean(), label=r.name)
    ax.set(xlabel="step", ylabel="training loss", title="loss" + (f" (mean of {smooth} rows)" if smooth > 1 else ""))
    ax.set_yscale("log")
    ax.legend(fontsize="small")
    for i, r in enumerate(grids):
        image_ax = fig.add_subplot(spec[1, i])
        with Image.open(r.samples) as image:
            image_ax.imshow(image.convert("RGB"))
        image_ax.set_title(f"{r.name}\n{r.samples.name}", fontsize="small")
        image_ax.axis("off")
    return fig
