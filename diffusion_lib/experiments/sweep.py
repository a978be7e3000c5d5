"""Grid sweeps over config keys: every combination trained in its own folder, resumable, then compared.

    python -m diffusion_lib sweep --config configs/digits_cfg.yaml \\
        --grid training.learning_rate=1e-3,3e-4 diffusion.p_uncond=0.1,0.2 --output runs/sweep_lr_puncond

A run whose ``run.json`` says finished (at the step the config ends at: ``training.max_steps``, or
``training.max_epochs`` epochs if that comes first) is skipped when the sweep is
run again; a run with a checkpoint short of it resumes exactly (the Trainer's resume). With
``wandb`` among ``training.loggers`` every run of the sweep joins one wandb group (the output
folder's name, unless ``training.wandb_group`` is set).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from pathlib import Path
from typing import Callable, Sequence

import yaml

from ..atomic import atomic_write_text
from ..config import TrainingConfig, load_config, total_steps
from ..run_log import read_run_summary
from ..training import Trainer
from .runs import compare_runs


def parse_grid(items: Sequence[str]) -> dict[str, list]:
    """``["training.learning_rate=1e-3,3e-4", "diffusion.p_uncond=0.1,0.2"]`` -> ``{key: [values]}``.

    Values are parsed as YAML (1e-3 a float, true a bool); a list value is written in brackets
    (``model.channel_mults=[1,2],[1,2,2]``: commas inside brackets do not split).

    Raises:
        ValueError: an item without "=", an empty value list, or a key given twice.
    """
    grid: dict[str, list] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--grid item {item!r} must look like section.key=v1,v2 (e.g. training.learning_rate=1e-3,3e-4)")
        key, raw = (part.strip() for part in item.split("=", 1))
        if key in grid:
            raise ValueError(f"--grid key {key!r} is given twice")
        values = [v for v in re.split(r",(?![^\[]*\])", raw) if v.strip()]
        if not values:
            raise ValueError(f"--grid item {item!r} has no values")
        grid[key] = [_parse_value(v) for v in values]
    return grid


def _parse_value(raw: str):
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads 1e-3 as a string
        except ValueError:
            return value
    return value


def grid_points(grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values, in order (the last key varies fastest)."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def run_name(point: dict) -> str:
    """A folder name for one grid point: ``learning_rate=0.001_p_uncond=0.1`` (last part of each key)."""
    def text(value):
        return json.dumps(value).replace(" ", "") if isinstance(value, (list, dict)) else f"{value:g}" \
            if isinstance(value, float) else str(value)

    short = [k.split(".")[-1] for k in point]
    keys = short if len(set(short)) == len(short) else [k.replace(".", "-") for k in point]
    name = "_".join(f"{k}={text(v)}" for k, v in zip(keys, point.values()))
    return re.sub(r"[^\w=.,\-\[\]]", "-", name)


def is_finished(run_dir: str | Path, training: TrainingConfig | int) -> bool:
    """True when ``run_dir/run.json`` records a finished run at the step ``training`` ends at (its checkpoint is
    saved first).

    Args:
        run_dir: the run folder.
        training: the run's :class:`~diffusion_lib.config.TrainingConfig` (the end is
            :func:`~diffusion_lib.config.total_steps` of it and run.json's ``num_images``), or that end step.
    """
    summary = read_run_summary(run_dir)
    if not summary or not (Path(run_dir) / "checkpoints" / "last.ckpt").is_file():
        return False
    if isinstance(training, TrainingConfig):
        if training.max_epochs is not None and "num_images" not in summary:
            return False  # an older run.json: resuming finds out (at once, when the run is done)
        training = total_steps(training, summary.get("num_images", 1))
    return bool(summary.get("finished")) and summary.get("step") == training


def run_sweep(config: str | Path, grid: dict[str, list] | Sequence[str], output: str | Path,
              overrides: Sequence[str] = (), progress: bool = True, dataset=None,
              log: Callable[[str], None] = print):
    """Train every grid point into ``output/<run_name>``, skipping finished runs; return the comparison table.

    Args:
        config: YAML config path (the base of every run).
        grid: ``{dotted key: [values]}`` or ``--grid`` strings (:func:`parse_grid`).
        output: the sweep folder (``sweep.json`` lists its points).
        overrides: dotted ``key=value`` strings applied to every run before the grid values.
        progress: show each run's progress bar.
        dataset: training data shared by every run (default: each run loads ``config.data``).
        log: where the one-line status of each run goes.

    Returns:
        :func:`~diffusion_lib.experiments.runs.compare_runs` of the sweep's runs (a DataFrame).

    Raises:
        ValueError: a bad grid or config key/value (checked for every point before any training).
    """
    grid = parse_grid(grid) if not isinstance(grid, dict) else grid
    points = grid_points(grid)
    output = Path(output)
    configs = []
    for point in points:  # validate every point first: a typo fails now, not after hours of training
        cfg = load_config(config, [*overrides, *(f"{k}={json.dumps(v)}" for k, v in point.items())])
        name = run_name(point)
        group = cfg.training.wandb_group or output.name
        cfg = _replace(cfg, name=f"{cfg.name}_{name}", group=group)
        configs.append((name, cfg))
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / "sweep.json", json.dumps(
        {"config": str(config), "overrides": list(overrides), "grid": grid, "runs": [n for n, _ in configs]},
        indent=2) + "\n")
    for i, (name, cfg) in enumerate(configs, 1):
        run_dir = output / name
        if is_finished(run_dir, cfg.training):
            log(f"[{i}/{len(configs)}] {name}: finished, skipped")
            continue
        resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
        log(f"[{i}/{len(configs)}] {name}: {'resuming' if resume else 'training'}")
        Trainer(cfg, run_dir, dataset=dataset, resume=resume, progress=progress).train()
    return compare_runs([output / name for name, _ in configs])


def _replace(cfg, name: str, group: str):
    return dataclasses.replace(cfg, name=name, training=dataclasses.replace(cfg.training, wandb_group=group))
