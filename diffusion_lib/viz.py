"""Pictures: image grids and NPZ exports (the uint8 edge), schedule and structure plots, forward-process strips,
reverse-process trajectories and GIFs, sweep plots (guidance, steps, sample size), training logs, labelled rows.

Figures are matplotlib ``Figure`` objects (no pyplot state, nothing is shown twice). A notebook shows
them as PNG images once IPython's inline formatter is on: every course notebook starts with
``%matplotlib inline`` (without it a Figure prints as the text ``<Figure size ...>``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import nn
from torchvision.utils import make_grid

from .atomic import atomic_write
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
    atomic_write(Path(path), lambda tmp: picture.save(tmp, format="PNG"))
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

    atomic_write(Path(path), write)
    return Path(path)


def by_class(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Reorder images so each class fills one row of a grid (stable within a class).

    Returns:
        (images sorted by label, images per row = the largest class count).
    """
    order = torch.sort(labels.cpu(), stable=True).indices
    return images[order], int(torch.bincount(labels.cpu()).max())


# ----- figures for the notebooks (matplotlib Figures, not pyplot: nothing is shown twice) ---------


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure (PNG, SVG, PDF by suffix), atomically; returns the path."""
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png"))
    return path


def _show(ax, images: torch.Tensor, nrow: int, value_range: tuple[float, float] = (-1.0, 1.0)) -> None:
    """Draw a grid of images (N, C, H, W) on ``ax``, mapping ``value_range`` to black..white (clipped)."""
    lo, hi = value_range
    if hi <= lo:
        raise ValueError(f"value_range must be (low, high) with low < high; got {value_range}")
    scaled = (images.detach().float().cpu() - lo) / (hi - lo) * 2 - 1
    pixels = grid_image(scaled, nrow=nrow)
    ax.imshow(pixels[..., 0] if pixels.shape[-1] == 1 else pixels, cmap="gray", vmin=0, vmax=255,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def image_figure(images: torch.Tensor, nrow: int = 8, title: str | None = None,
                 row_labels: Sequence[str] | None = None, scale: float = 0.5) -> Figure:
    """One grid of images as a figure.

    Args:
        images: float (N, C, H, W) in [-1, 1] (values outside are clipped).
        nrow: images per row.
        title: optional title.
        row_labels: optional label per grid row (e.g. class names after :func:`by_class`).
        scale: figure inches per image.

    Returns:
        matplotlib Figure.

    Raises:
        ValueError: ``row_labels`` of the wrong length.
    """
    rows = math.ceil(len(images) / nrow)
    if row_labels is not None and len(row_labels) != rows:
        raise ValueError(f"row_labels has {len(row_labels)} entries for {rows} grid rows")
    fig = Figure(figsize=(max(2.0, scale * min(nrow, len(images))) + (0.6 if row_labels else 0), max(1.5, scale * rows)),
                 layout="constrained")
    ax = fig.subplots()
    _show(ax, images, nrow)
    if row_labels is not None:
        height = images.shape[-2] + 1
        ax.set_yticks([1 + height * (i + 0.5) for i in range(rows)], labels=list(row_labels))
    if title:
        ax.set_title(title)
    return fig


def image_rows(rows: Mapping[str, torch.Tensor], column_titles: Sequence[str] | None = None,
               value_ranges: Mapping[str, tuple[float, float]] | None = None, scale: float = 1.0,
               cell_nrow: int | None = None) -> Figure:
    """A table of images: one labelled row per entry of ``rows``, one column per image.

    Args:
        rows: label -> float images (K, C, H, W), the same K for every row; or (K, N, C, H, W), in which
            case each cell shows the N images side by side.
        column_titles: optional K titles (e.g. "t = 999").
        value_ranges: label -> (low, high) shown as black..white; default (-1, 1). Use e.g. (-3, 3) for noise.
        scale: figure inches per image.
        cell_nrow: with 5-D rows, images per row inside a cell (default all N side by side; 1 stacks them).

    Returns:
        matplotlib Figure.

    Raises:
        ValueError: empty ``rows``, rows of different K, or titles of the wrong length.
    """
    if not rows:
        raise ValueError("rows is empty")
    counts = {len(v) for v in rows.values()}
    if len(counts) != 1:
        raise ValueError(f"every row needs the same number of images; got {sorted(counts)}")
    k = counts.pop()
    if column_titles is not None and len(column_titles) != k:
        raise ValueError(f"column_titles has {len(column_titles)} entries for {k} columns")
    value_ranges = dict(value_ranges or {})
    first = next(iter(rows.values()))
    n = first.shape[1] if first.ndim == 5 else 1
    per_row = min(n, cell_nrow or n)
    fig = Figure(figsize=(scale * k * per_row + 1.4, scale * len(rows) * math.ceil(n / per_row) + 0.4),
                 layout="constrained")
    axes = np.asarray(fig.subplots(len(rows), k, squeeze=False))
    for r, (label, images) in enumerate(rows.items()):
        for c in range(k):
            cell = images[c] if images.ndim == 5 else images[c:c + 1]
            _show(axes[r, c], cell, nrow=per_row, value_range=value_ranges.get(label, (-1.0, 1.0)))
            if column_titles is not None and r == 0:
                axes[r, c].set_title(column_titles[c], fontsize=9)
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    return fig


@torch.no_grad()
def forward_strip(schedules: Mapping[str, nn.Module], x0: torch.Tensor, timesteps: Sequence[int],
                  noise: torch.Tensor | None = None, seed: int = 0, scale: float = 1.0) -> Figure:
    """The forward process on real images: x_t ~ q(x_t | x_0) at chosen t, one row per schedule.

    Every schedule uses the same noise, so the rows differ only by schedule (Ho et al. 2020, eq. 4:
    x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps). Values of x_t outside [-1, 1] are clipped
    for display.

    Args:
        schedules: name -> NoiseSchedule (all with the same T).
        x0: float (N, C, H, W) in [-1, 1]; each cell shows the N images side by side.
        timesteps: the t of each column, in [0, T-1].
        noise: eps (N, C, H, W); default standard normal from ``seed``.
        seed: seed of the default noise.
        scale: figure inches per image.

    Returns:
        matplotlib Figure.

    Raises:
        ValueError: a timestep outside [0, T-1] for some schedule.
    """
    from .device import randn
    from .diffusion import q_sample

    if noise is None:
        noise = randn(x0.shape, torch.Generator().manual_seed(seed)).to(x0.device)
    rows = {}
    for name, schedule in schedules.items():
        T = schedule.num_train_timesteps
        if any(not 0 <= int(t) < T for t in timesteps):
            raise ValueError(f"timesteps must lie in [0, {T - 1}] for schedule {name!r}; got {list(timesteps)}")
        schedule = schedule.to(x0.device)
        rows[name] = torch.stack([q_sample(schedule, x0, torch.full((len(x0),), int(t), device=x0.device), noise)
                                  for t in timesteps])
    return image_rows(rows, [f"t = {int(t)}" for t in timesteps], scale=scale)


def plot_schedules(schedules: Mapping[str, nn.Module] | None = None, num_train_timesteps: int = 1000) -> Figure:
    """beta_t, alpha_bar_t and log-SNR log(alpha_bar_t / (1 - alpha_bar_t)) against t, one line per schedule.

    Args:
        schedules: name -> NoiseSchedule; default every registered schedule (``available_schedules()``) with
            ``num_train_timesteps`` steps, so a schedule registered in a notebook appears too.
        num_train_timesteps: T of the default schedules.

    Returns:
        matplotlib Figure with three panels (betas on a log axis).
    """
    if schedules is None:
        from .schedules import NoiseSchedule, available_schedules

        schedules = {name: NoiseSchedule(name, num_train_timesteps) for name in available_schedules()}
    fig = Figure(figsize=(14, 3.8), layout="constrained")
    ax_beta, ax_abar, ax_snr = fig.subplots(1, 3)
    for name, s in schedules.items():
        t = np.arange(s.num_train_timesteps)
        ax_beta.plot(t, s.betas.cpu().numpy(), label=name)
        ax_abar.plot(t, s.alphas_cumprod.cpu().numpy(), label=name)
        ax_snr.plot(t, s.log_snr().cpu().numpy(), label=name)
    ax_beta.set(xlabel="t", ylabel="beta_t", yscale="log", title="variance added per step")
    ax_abar.set(xlabel="t", ylabel="alpha_bar_t", title="signal variance kept")
    ax_snr.axhline(0.0, color="k", ls=":", lw=1)
    ax_snr.set(xlabel="t", ylabel="log SNR", title="log(alpha_bar / (1 - alpha_bar))")
    ax_abar.legend(fontsize=8)
    return fig


STRUCTURE_LABELS = {"correlation": "corr(x_0, x_t)", "accuracy": "clean classifier accuracy on x_t",
                    "mean": "mean of x_t", "std": "std of x_t", "ks": "KS distance to N(0, 1)",
                    "sliced_w2": "sliced W2 to N(0, I)"}


def plot_structure(table: pd.DataFrame, measures: Sequence[str] = ("correlation", "accuracy", "ks", "sliced_w2"),
                   x: str = "t") -> Figure:
    """Each structure measure against t (or ``x="log_snr"``), one line per schedule.

    Args:
        table: output of :func:`diffusion_lib.experiments.forward.structure_table`.
        measures: columns to plot, one panel each (columns that are all NaN are skipped).
        x: "t" or "log_snr" (x axis).

    Returns:
        matplotlib Figure; the accuracy panel shows chance (``table.attrs["chance"]``) as a dotted line.

    Raises:
        ValueError: a measure or ``x`` that is not a column of ``table``.
    """
    missing = [m for m in (*measures, x) if m not in table.columns]
    if missing:
        raise ValueError(f"columns {missing} are not in the table; it has {list(table.columns)}")
    measures = [m for m in measures if table[m].notna().any()]
    fig = Figure(figsize=(4.2 * len(measures), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(measures)))
    for ax, measure in zip(axes, measures):
        for name, rows in table.groupby("schedule", sort=False):
            rows = rows.sort_values(x)
            ax.plot(rows[x], rows[measure], marker=".", label=name)
        if measure == "accuracy" and "chance" in table.attrs:
            ax.axhline(table.attrs["chance"], color="k", ls=":", lw=1, label="chance")
        ax.set(xlabel=x, title=STRUCTURE_LABELS.get(measure, measure))
        if x == "log_snr":
            ax.invert_xaxis()
    axes[0].legend(fontsize=8)
    return fig


def trajectory_figure(trajectory, num_images: int = 4, columns: int | None = 8, scale: float = 0.8) -> Figure:
    """The reverse process at the captured steps: x_t (top row) and the predicted x_0 (bottom row).

    Args:
        trajectory: a :class:`diffusion_lib.sampling.Trajectory` (x_t and pred_x0 of shape (K, N, C, H, W)).
        num_images: how many of the N samples each cell shows, one above the other.
        columns: show at most this many captured steps, evenly spaced, first and last included (None: all).
        scale: figure inches per image.

    Returns:
        matplotlib Figure with one column per shown step, titled with its timestep.
    """
    k, n = trajectory.x_t.shape[0], min(num_images, trajectory.x_t.shape[1])
    keep = list(range(k)) if columns is None or columns >= k else \
        sorted({int(round(v)) for v in np.linspace(0, k - 1, max(columns, 2))})
    rows = {"x_t": trajectory.x_t[keep, :n], "predicted x_0": trajectory.pred_x0[keep, :n]}
    return image_rows(rows, [f"t = {trajectory.timesteps[i]}" for i in keep], scale=scale, cell_nrow=1)


def trajectory_frames(trajectory, final: torch.Tensor | None = None, with_pred_x0: bool = True) -> torch.Tensor:
    """Frames for :func:`save_gif` from a sampling trajectory.

    Args:
        trajectory: a :class:`diffusion_lib.sampling.Trajectory`.
        final: optional final samples (N, C, H, W), appended as the last frame (its prediction = itself).
        with_pred_x0: put the predicted x_0 to the right of each x_t (separated by a black column).

    Returns:
        float (K', N, C, H, W or 2W + 1) in [-1, 1] (values clipped).
    """
    x_t, pred = trajectory.x_t, trajectory.pred_x0
    if final is not None:
        x_t = torch.cat([x_t, final.detach().float().cpu()[None]])
        pred = torch.cat([pred, final.detach().float().cpu()[None]])
    if with_pred_x0:
        spacer = torch.full((*x_t.shape[:-1], 1), -1.0)
        x_t = torch.cat([x_t, spacer, pred], dim=-1)
    return x_t.clamp(-1, 1)


def save_gif(frames: torch.Tensor, path: str | Path, nrow: int = 8, duration_ms: int = 80, hold_last_ms: int = 1500,
             scale: int = 4) -> Path:
    """Write an animated GIF (looping) of image grids, atomically, with Pillow.

    Args:
        frames: float (K, N, C, H, W) in [-1, 1]: K frames, each a grid of N images.
        path: destination file (".gif").
        nrow: images per grid row.
        duration_ms: time per frame.
        hold_last_ms: time the last frame stays before the loop restarts.
        scale: integer upscaling (nearest neighbour) so small images stay visible.

    Returns:
        The path written.

    Raises:
        ValueError: ``frames`` not 5-D or empty, or ``scale`` < 1.
    """
    if frames.ndim != 5 or len(frames) == 0:
        raise ValueError(f"frames must be (K, N, C, H, W) with K >= 1; got shape {tuple(frames.shape)}")
    if scale < 1:
        raise ValueError(f"scale must be an int >= 1; got {scale}")
    pictures = []
    for frame in frames:
        pixels = grid_image(frame, nrow=nrow)
        picture = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        pictures.append(picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST))
    durations = [duration_ms] * (len(pictures) - 1) + [hold_last_ms]
    atomic_write(Path(path), lambda tmp: pictures[0].save(tmp, format="GIF", save_all=True, append_images=pictures[1:],
                                                           duration=durations, loop=0))
    return Path(path)


def plot_sweep(table: pd.DataFrame, x: str, metrics: Sequence[str], by: str | None = None, *,
               xlabel: str | None = None, log_x: bool = False, tradeoff: tuple[str, str] | None = None,
               tradeoff_title: str | None = None, tradeoff_log_x: bool = False) -> Figure:
    """Metrics of a sweep against the swept setting: one panel per metric, one line per group.

    Args:
        table: one row per setting, e.g. a :class:`diffusion_lib.experiments.SamplerSweep` table or a
            guidance sweep; the columns ``x``, ``metrics`` (and ``by``, the tradeoff columns) are read.
        x: the swept column (guidance scale, steps, sample size, ...), the x axis of each metric panel.
        metrics: metric columns, one panel each (y axis).
        by: column whose values name one line each (sampler, method, draw); None: one line.
        xlabel: x-axis label of the metric panels (default ``x``); titles read "<metric> vs <xlabel>".
        log_x: log x axis with a tick at every value of ``x`` (e.g. steps 5, 10, 25, 50).
        tradeoff: ``(x_column, y_column)``: a last panel plotting one against the other, each point
            annotated with its value of ``x`` (e.g. ``("sec_per_image", "fid")`` or a quality/diversity
            trade-off).
        tradeoff_title: title of that panel (default "trade-off (labels: <xlabel>)").
        tradeoff_log_x: log x axis on that panel (e.g. for seconds per image).

    Returns:
        matplotlib Figure with ``len(metrics)`` (+1 with ``tradeoff``) panels; the first has the legend.

    Raises:
        ValueError: no metrics, or a named column missing from ``table``.
    """
    if not metrics:
        raise ValueError("metrics is empty; name at least one metric column")
    columns = [x, *metrics, *([by] if by else []), *(tradeoff or ())]
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"columns {missing} are not in the table; it has {list(table.columns)}")
    xlabel = xlabel or x
    panels = len(metrics) + (1 if tradeoff else 0)
    fig = Figure(figsize=(4.5 * panels, 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, panels))
    groups = table.groupby(by, sort=False) if by else [("", table)]
    for name, rows in groups:
        rows = rows.sort_values(x)
        for ax, metric in zip(axes, metrics):
            ax.plot(rows[x], rows[metric], marker="o", label=str(name))
            ax.set(xlabel=xlabel, ylabel=metric, title=f"{metric} vs {xlabel}")
        if tradeoff:
            ax = axes[-1]
            ax.plot(rows[tradeoff[0]], rows[tradeoff[1]], marker="o", label=str(name))
            for _, row in rows.iterrows():
                ax.annotate(f"{row[x]:g}", (row[tradeoff[0]], row[tradeoff[1]]), fontsize=8,
                            textcoords="offset points", xytext=(3, 3))
            ax.set(xlabel=tradeoff[0], ylabel=tradeoff[1], title=tradeoff_title or f"trade-off (labels: {xlabel})")
    if log_x:
        ticks = sorted(float(v) for v in table[x].dropna().unique())
        for ax in axes[:len(metrics)]:
            ax.set_xscale("log")
            ax.minorticks_off()
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    if tradeoff and tradeoff_log_x:
        axes[-1].set_xscale("log")
    if by:
        axes[0].legend(fontsize=8)
    return fig


def plot_guidance_sweep(table: pd.DataFrame, scale: str = "scale", method: str = "method",
                        metrics: Sequence[str] = ("class_accuracy", "diversity")) -> Figure:
    """Sample quality against guidance strength: each metric against the scale, plus the trade-off.

    :func:`plot_sweep` with x label "guidance <scale>"; with two metrics a last panel plots the first
    against the second (the trade-off curve, each point annotated with its scale).

    Args:
        table: one row per (method, scale) with the metric columns, e.g. from
            :func:`diffusion_lib.experiments.guidance_sweep`.
        scale: the column holding the guidance scale.
        method: the column naming the guidance method (one line each).
        metrics: metric columns.

    Returns:
        matplotlib Figure.

    Raises:
        ValueError: a named column missing from ``table``.
    """
    tradeoff = (metrics[1], metrics[0]) if len(metrics) == 2 else None
    return plot_sweep(table, scale, metrics, method, xlabel=f"guidance {scale}", tradeoff=tradeoff,
                      tradeoff_title="trade-off (labels: scale)")


def plot_training_log(log: pd.DataFrame | str | Path, columns: Sequence[str] = ("loss",), x: str = "step",
                      title: str | None = None) -> Figure:
    """Training curves from a run's ``log.csv``: one panel per logged column against the step.

    Args:
        log: the Trainer's log (a DataFrame, or the path of ``log.csv``), e.g. with columns step, loss,
            recon, kl for a VAE.
        columns: the columns to plot, one panel each.
        x: the x column (default "step").
        title: optional figure title (e.g. "loss = recon + 1 x kl").

    Returns:
        matplotlib Figure.

    Raises:
        ValueError: a named column missing from the log.
    """
    log = pd.read_csv(log) if isinstance(log, (str, Path)) else log
    missing = [c for c in (x, *columns) if c not in log.columns]
    if missing:
        raise ValueError(f"columns {missing} are not in the log; it has {list(log.columns)}")
    fig = Figure(figsize=(4 * len(columns), 3.2), layout="constrained")
    for ax, column in zip(np.atleast_1d(fig.subplots(1, len(columns))), columns):
        ax.plot(log[x], log[column])
        ax.set(xlabel=x, ylabel=column, title=column)
    if title:
        fig.suptitle(title)
    return fig


def labelled_rows(rows: Mapping[str, torch.Tensor], title: str | None = None, scale: float = 0.5) -> Figure:
    """One grid row of images per setting, labelled on the left (e.g. a sampler sweep's ``grid_rows()``).

    Args:
        rows: label -> float images (K, C, H, W) in [-1, 1], the same K for every row (e.g. one image per
            class, all from the same starting noise).
        title: optional title.
        scale: figure inches per image.

    Returns:
        matplotlib Figure (one axes: the grid, row labels as y tick labels).

    Raises:
        ValueError: empty ``rows`` or rows of different lengths.
    """
    if not rows:
        raise ValueError("rows is empty")
    counts = {len(v) for v in rows.values()}
    if len(counts) != 1:
        raise ValueError(f"every row needs the same number of images; got {sorted(counts)}")
    images = torch.cat([v.detach().float().cpu() for v in rows.values()])
    fig = image_figure(images, nrow=counts.pop(), title=title, row_labels=list(rows), scale=scale)
    if title:  # wide enough for the title (about 0.085 inch per character at the default font size), which is
        # centred over the images, right of the row labels: so the labels' width counts twice
        labels_width = 0.085 * max(len(str(label)) for label in rows)
        fig.set_figwidth(max(fig.get_figwidth(), 0.085 * len(title) + 0.6 + 2 * labels_width))
    return fig


def class_grid(columns: Mapping[str, torch.Tensor], labels: torch.Tensor, class_names: Sequence[str] | None = None,
               per_class: int = 4, scale: float = 0.5) -> Figure:
    """Samples of several settings side by side: one row per class, one column per setting.

    Args:
        columns: title -> images (N, C, H, W) in [-1, 1], all generated for the same ``labels``
            (e.g. ``{"w = 0": ..., "w = 3": ...}`` from a guidance sweep).
        labels: int64 (N,) class of each image.
        class_names: row labels, indexed by class (default the class numbers).
        per_class: images shown per class and setting (the first ones), side by side.
        scale: figure inches per image.

    Returns:
        matplotlib Figure.

    Raises:
        ValueError: an entry of ``columns`` with a different number of images than ``labels``, or a class with
            fewer than ``per_class`` images.
    """
    labels = torch.as_tensor(labels).cpu()
    for title, images in columns.items():
        if len(images) != len(labels):
            raise ValueError(f"column {title!r} has {len(images)} images for {len(labels)} labels")
    rows = {}
    for c in labels.unique().tolist():
        index = torch.nonzero(labels == c).flatten()[:per_class]
        if len(index) < per_class:
            raise ValueError(f"class {c} has {len(index)} images; per_class is {per_class}")
        name = str(class_names[c]) if class_names is not None else str(c)
        rows[name] = torch.stack([images.cpu()[index] for images in columns.values()])
    return image_rows(rows, list(columns), scale=scale)
