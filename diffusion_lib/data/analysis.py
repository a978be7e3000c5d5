"""Look before you train: a per-image table, summaries, and the plots a practitioner wants.

    table = analyse_folder("my_images")            # one row per file, readable or not
    table = analyse_dataset(ds, sample=5000)        # one row per prepared image
    summarize(table); summarize(table, by="class_name")
    plot_sizes(table); plot_class_balance(table); plot_channel_histograms(ds); plot_samples_per_class(ds)

Statistics are computed on 8-bit RGB (grayscale replicated, transparency composited over
white, see ``prepare.to_channels``), so every row has the same columns:

=================  ==============================================================
width, height      pixels; ``aspect_ratio`` = width / height
mode, channels     PIL mode of the file ("L", "RGB", "RGBA", "P", "CMYK", ...) and its band count
file_size          bytes on disk (NaN for in-memory images)
mean_r/g/b,        per-channel mean and standard deviation, 0..255
std_r/g/b
brightness         mean luma (ITU-R 601: 0.299 R + 0.587 G + 0.114 B), 0..255
sharpness          variance of the Laplacian of the luma (Pech-Pacheco et al., 2000); higher is
                   sharper; depends on image size, compare images of one size
hash               16-hex content hash of the decoded pixels: equal for exact duplicates
=================  ==============================================================
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from PIL import Image
from scipy import ndimage
from torchvision.utils import make_grid
from tqdm.auto import tqdm

from .dataset import ImageDataset
from .prepare import content_hash, open_image, scan_folder, to_channels

STAT_COLUMNS = ["width", "height", "aspect_ratio", "mode", "channels", "file_size", "mean_r", "mean_g", "mean_b",
                "std_r", "std_g", "std_b", "brightness", "sharpness", "hash"]
LUMA = np.array([0.299, 0.587, 0.114])


def image_stats(img: Image.Image) -> dict:
    """The table's statistics for one PIL image (see the module docstring).

    Args:
        img: PIL image of any mode.

    Returns:
        dict with the keys of ``STAT_COLUMNS`` except ``file_size``.
    """
    rgb = np.asarray(to_channels(img, 3), dtype=np.float64)
    luma = rgb @ LUMA
    mean, std = rgb.reshape(-1, 3).mean(0), rgb.reshape(-1, 3).std(0)
    return {"width": img.width, "height": img.height, "aspect_ratio": img.width / img.height, "mode": img.mode,
            "channels": len(img.getbands()), "mean_r": mean[0], "mean_g": mean[1], "mean_b": mean[2],
            "std_r": std[0], "std_g": std[1], "std_b": std[2], "brightness": float(luma.mean()),
            "sharpness": float(ndimage.laplace(luma).var()), "hash": content_hash(img)}


def _sample_indices(n: int, sample: int | None, seed: int) -> np.ndarray:
    if sample is not None and (isinstance(sample, bool) or not isinstance(sample, int) or sample < 1):
        raise ValueError(f"sample must be a positive int or None; got {sample!r}")
    if sample is None or sample >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:sample])


def _file_row(path: str) -> dict:
    row = {"path": path, "file_size": os.path.getsize(path), "readable": True, "error": ""}
    try:
        row.update(image_stats(open_image(path)))
    except Exception as e:  # noqa: BLE001 - a broken file is a row, not a crash
        row.update(readable=False, error=f"{type(e).__name__}: {e}"[:200])
    return row


def analyse_files(paths, class_names=None, *, sample: int | None = None, seed: int = 0, progress: bool = True,
                  num_workers: int | None = None) -> pd.DataFrame:
    """Per-file table for image files on disk (unreadable files get a row with the error).

    Args:
        paths: sequence of file paths.
        class_names: optional sequence (same length) of class names.
        sample: analyse a seeded random subset of this many files (for large datasets).
        seed: seed of the subset.
        progress: show a tqdm progress bar.
        num_workers: decoding threads (default CPU count).

    Returns:
        DataFrame with columns ``path, class_name, readable, error`` + ``STAT_COLUMNS``
        (NaN where a file is unreadable).
    """
    paths = [str(p) for p in paths]
    names = list(class_names) if class_names is not None else [None] * len(paths)
    idx = _sample_indices(len(paths), sample, seed)
    with ThreadPoolExecutor(max_workers=num_workers or os.cpu_count() or 1) as pool:
        rows = list(tqdm(pool.map(_file_row, [paths[i] for i in idx]), total=len(idx), desc="analysing",
                         disable=not progress))
    for row, i in zip(rows, idx):
        row["class_name"] = names[i]
    return pd.DataFrame(rows, columns=["path", "class_name", "readable", "error"] + STAT_COLUMNS)


def analyse_folder(root, *, sample: int | None = None, seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Per-file table for an image folder (layout as ``prepare.scan_folder``: class
    subfolders or flat). Files without an image extension are not listed.

    Returns:
        see :func:`analyse_files`.
    """
    files, _ = scan_folder(root)
    return analyse_files(files["path"], files["class_name"], sample=sample, seed=seed, progress=progress)


def analyse_images(images, class_names=None) -> pd.DataFrame:
    """Per-image table for in-memory PIL images, e.g. :func:`~diffusion_lib.data.gallery_images`.

    Args:
        images: dict name -> PIL image, or a sequence of PIL images.
        class_names: optional sequence of class names, one per image.

    Returns:
        DataFrame with columns ``name, class_name`` + ``STAT_COLUMNS`` (file_size NaN).
    """
    items = list(images.items()) if isinstance(images, dict) else [(str(i), im) for i, im in enumerate(images)]
    names = list(class_names) if class_names is not None else [None] * len(items)
    rows = [{"name": n, "class_name": c, "file_size": np.nan, **image_stats(im)} for (n, im), c in zip(items, names)]
    return pd.DataFrame(rows, columns=["name", "class_name"] + STAT_COLUMNS)


def analyse_dataset(ds: ImageDataset, *, sample: int | None = None, seed: int = 0, progress: bool = True,
                    chunk: int = 1024) -> pd.DataFrame:
    """Per-image table for a prepared dataset, vectorised over chunks of its uint8 pixels.

    Args:
        ds: the dataset.
        sample: analyse a seeded random subset of this many images.
        seed: seed of the subset.
        progress: show a tqdm progress bar.
        chunk: images processed at a time.

    Returns:
        DataFrame with columns ``index, class_name`` + ``STAT_COLUMNS`` (file_size NaN;
        mode "L" or "RGB").
    """
    idx = _sample_indices(len(ds), sample, seed)
    kernel = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]])[None, None].double()
    frames = []
    for start in tqdm(range(0, len(idx), chunk), desc="analysing", disable=not progress):
        ids = torch.from_numpy(idx[start : start + chunk])
        px = ds.pixels[ids].cpu()
        rgb = px.double().expand(-1, -1, -1, 3)  # grayscale replicated, as for files
        luma = rgb @ torch.from_numpy(LUMA)
        lap = torch.nn.functional.conv2d(torch.nn.functional.pad(luma[:, None], (1, 1, 1, 1), mode="replicate"), kernel)
        mean, std = rgb.mean((1, 2)), rgb.std((1, 2), correction=0)
        frame = pd.DataFrame({"index": ids.numpy(), "width": ds.image_size, "height": ds.image_size,
                              "aspect_ratio": 1.0, "mode": "L" if ds.channels == 1 else "RGB",
                              "channels": ds.channels, "file_size": np.nan})
        for k, c in enumerate("rgb"):
            frame[f"mean_{c}"], frame[f"std_{c}"] = mean[:, k].numpy(), std[:, k].numpy()
        frame["brightness"] = luma.mean((1, 2)).numpy()
        frame["sharpness"] = lap.flatten(1).var(1, correction=0).numpy()
        mode = "L" if ds.channels == 1 else "RGB"
        frame["hash"] = [content_hash(Image.fromarray(p.numpy().squeeze(-1) if ds.channels == 1 else p.numpy(), mode))
                         for p in px]
        frame["class_name"] = None if ds.labels is None else [ds.class_names[int(y)] for y in ds.labels[ids]]
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["index"] + STAT_COLUMNS)
    return table[["index", "class_name"] + STAT_COLUMNS]


def summarize(table: pd.DataFrame, by: str | None = None) -> pd.DataFrame:
    """Summary statistics of a per-image table, for the whole table or per group.

    Args:
        table: output of one of the ``analyse_*`` functions.
        by: optional column to group by, e.g. ``"class_name"``.

    Returns:
        DataFrame (one row, or one per group) with ``images``, ``unreadable``,
        ``duplicates`` (images whose hash occurred before), min/median/max of width and
        height, median aspect ratio, the most common mode, mean brightness, median
        sharpness, mean per-channel means, and ``total_mb`` on disk.
    """
    if by is not None and by not in table.columns:
        raise ValueError(f"by must be a column of the table {list(table.columns)}; got {by!r}")

    def one(g: pd.DataFrame) -> pd.Series:
        ok = g[g["readable"]] if "readable" in g else g
        return pd.Series({
            "images": len(g), "unreadable": int(len(g) - len(ok)),
            "duplicates": int(ok["hash"].duplicated().sum()),
            "width_min": ok["width"].min(), "width_median": ok["width"].median(), "width_max": ok["width"].max(),
            "height_min": ok["height"].min(), "height_median": ok["height"].median(), "height_max": ok["height"].max(),
            "aspect_median": ok["aspect_ratio"].median(),
            "mode": ok["mode"].mode().iloc[0] if len(ok) else None,
            "brightness_mean": ok["brightness"].mean(), "sharpness_median": ok["sharpness"].median(),
            "mean_r": ok["mean_r"].mean(), "mean_g": ok["mean_g"].mean(), "mean_b": ok["mean_b"].mean(),
            "total_mb": g["file_size"].sum(min_count=1) / 1e6,
        })

    if by is None:
        return one(table).to_frame("all").T
    return pd.DataFrame({name: one(g) for name, g in table.groupby(by, dropna=False)}).T.rename_axis(by)


# ---------------------------------------------------------------- plots (return matplotlib Figures)
def plot_sizes(table: pd.DataFrame) -> Figure:
    """Width-vs-height scatter and aspect-ratio histogram of a per-image table."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ok = table.dropna(subset=["width", "height"])
    ax1.scatter(ok["width"], ok["height"], s=12, alpha=0.6)
    lo = max(min(ok["width"].min(), ok["height"].min(), 1e9), 1) / 1.2
    hi = max(ok["width"].max(), ok["height"].max(), 1) * 1.2
    ax1.plot([lo, hi], [lo, hi], "k:", lw=1, label="square")
    log = hi / lo > 30  # sizes spanning orders of magnitude: log axes
    ax1.set(xlabel="width (px)", ylabel="height (px)", title=f"image sizes (n={len(ok)})",
            xlim=(lo if log else 0, hi), ylim=(lo if log else 0, hi),
            xscale="log" if log else "linear", yscale="log" if log else "linear")
    ax1.legend()
    ax2.hist(ok["aspect_ratio"], bins=30)
    ax2.axvline(1.0, color="k", ls=":", lw=1)
    ax2.set(xlabel="aspect ratio (width / height)", ylabel="images", title="aspect ratios")
    return fig


def _pixels_of(images, sample: int | None, seed: int) -> list[np.ndarray]:
    if isinstance(images, ImageDataset):
        idx = _sample_indices(len(images), sample, seed)
        px = images.pixels[torch.from_numpy(idx)].cpu().numpy()
        return [px.reshape(-1, images.channels)]
    images = list(images.values()) if isinstance(images, dict) else list(images)
    idx = _sample_indices(len(images), sample, seed)
    out = []
    for i in idx:
        img = images[i]
        if isinstance(img, (str, os.PathLike)):
            img = open_image(img)
        img = img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))
        gray = img.mode in ("1", "L", "I", "F") or img.mode.startswith("I;16")
        out.append(np.asarray(to_channels(img, 1 if gray else 3)).reshape(-1, 1 if gray else 3))
    return out


def plot_channel_histograms(images, *, bins: int = 64, sample: int | None = 2000, seed: int = 0) -> Figure:
    """Histogram of pixel values per channel (density, 0..255).

    Args:
        images: an ImageDataset, a dict name -> PIL image, or a sequence of PIL images,
            uint8 arrays or readable file paths.
        bins: histogram bins.
        sample: use a seeded random subset of this many images.
        seed: seed of the subset.
    """
    arrays = _pixels_of(images, sample, seed)
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.subplots()
    gray = np.concatenate([a for a in arrays if a.shape[1] == 1]) if any(a.shape[1] == 1 for a in arrays) else None
    rgb = np.concatenate([a for a in arrays if a.shape[1] == 3]) if any(a.shape[1] == 3 for a in arrays) else None
    if rgb is not None:
        for k, color in enumerate(("red", "green", "blue")):
            ax.hist(rgb[:, k], bins=bins, range=(0, 255), density=True, histtype="step", color=color, label=color)
    if gray is not None:
        ax.hist(gray[:, 0], bins=bins, range=(0, 255), density=True, histtype="step", color="k", label="gray")
    ax.set(xlabel="pixel value", ylabel="density", title="channel histograms")
    ax.legend()
    return fig


def plot_class_balance(data) -> Figure:
    """Bar chart of images per class.

    Args:
        data: an ImageDataset, or a per-image table with a ``class_name`` column.

    Raises:
        ValueError: if the data are unlabeled.
    """
    if isinstance(data, ImageDataset):
        if data.labels is None:
            raise ValueError("dataset is unlabeled: no class balance to plot")
        counts = pd.Series(torch.bincount(data.labels.cpu(), minlength=data.num_classes).numpy(), index=data.class_names)
    else:
        if data["class_name"].isna().all():
            raise ValueError("table has no class_name values: no class balance to plot")
        counts = data["class_name"].value_counts().sort_index()
    fig = Figure(figsize=(max(5, 0.25 * len(counts)), 3.5), layout="constrained")
    ax = fig.subplots()
    ax.bar([str(c) for c in counts.index], counts.values)
    ax.axhline(counts.mean(), color="k", ls=":", lw=1, label=f"mean {counts.mean():.0f}")
    ax.set(xlabel="class", ylabel="images", title=f"class balance (max/min = {counts.max() / max(counts.min(), 1):.2f})")
    ax.tick_params(axis="x", rotation=90 if len(counts) > 12 else 0)
    ax.legend()
    return fig


def plot_samples_per_class(ds: ImageDataset, *, per_class: int = 8, max_classes: int = 20, seed: int = 0) -> Figure:
    """A grid of random images, one row per class (one block for unlabeled data).

    Args:
        ds: the dataset.
        per_class: images per row.
        max_classes: show at most this many classes (the first ones).
        seed: seed of the random choice.
    """
    gen = torch.Generator().manual_seed(seed)
    groups = [("all", torch.arange(len(ds)))] if ds.labels is None else \
        [(name, torch.nonzero(ds.labels.cpu() == k).flatten()) for k, name in enumerate(ds.class_names[:max_classes])]
    rows, names = [], []
    for name, idx in groups:
        take = idx[torch.randperm(len(idx), generator=gen)[: per_class if ds.labels is not None else per_class * 4]]
        images = ds.get_batch(take)[0].cpu() if len(take) else torch.zeros(0, ds.channels, ds.image_size, ds.image_size)
        pad = per_class - len(images) % per_class if len(images) % per_class or not len(images) else 0
        images = torch.cat([images, -torch.ones(pad, *images.shape[1:])])  # black filler for small classes
        rows.append(images)
        names += [name] + [""] * (len(images) // per_class - 1)
    grid = make_grid(torch.cat(rows) * 0.5 + 0.5, nrow=per_class, padding=1, pad_value=1.0)
    fig = Figure(figsize=(per_class * 0.8 + 1.5, len(names) * 0.8 + 0.5), layout="constrained")
    ax = fig.subplots()
    ax.imshow(grid.permute(1, 2, 0).numpy().squeeze(), cmap="gray" if ds.channels == 1 else None, vmin=0, vmax=1)
    cell = ds.image_size + 1
    ticks = [(1 + cell * (i + 0.5), name) for i, name in enumerate(names) if name]
    ax.set_yticks([t for t, _ in ticks], [n for _, n in ticks])
    ax.set_xticks([])
    ax.set_title(f"{ds.info.name}: {len(ds)} images, {ds.image_size}x{ds.image_size}x{ds.channels}")
    return fig


def sources_table(datasets) -> pd.DataFrame:
    """One row per dataset: name, images, size, channels, classes, license, citation, url.

    Args:
        datasets: sequence of ImageDatasets (or a dict name -> ImageDataset).
    """
    items = datasets.values() if isinstance(datasets, dict) else datasets
    return pd.DataFrame([{"name": d.info.name, "images": len(d), "size": d.image_size, "channels": d.channels,
                          "classes": d.num_classes, "license": d.info.license, "citation": d.info.citation,
                          "url": d.info.url} for d in items]).set_index("name")


def plot_before_after(ds: ImageDataset, *, n: int = 6, indices=None, seed: int = 0) -> Figure:
    """Original files (native size, aspect and mode) above their prepared versions.

    Args:
        ds: a dataset prepared from files (``ds.files`` set: image folders, CelebA, ...).
        n: number of pairs shown when ``indices`` is None (a seeded random choice).
        indices: optional positions in ``ds`` to show.
        seed: seed of the random choice.

    Raises:
        ValueError: if the dataset does not record its source files.
    """
    if ds.files is None:
        raise ValueError(f"dataset {ds.info.name!r} has no source files (ds.files is None): nothing to compare")
    if indices is None:
        indices = _sample_indices(len(ds), n, seed)
    indices = [int(i) for i in indices]
    fig = Figure(figsize=(2.2 * len(indices), 4.8), layout="constrained")
    axes = fig.subplots(2, len(indices), squeeze=False)
    after = ds.get_batch(torch.tensor(indices))[0].cpu() * 0.5 + 0.5
    for col, i in enumerate(indices):
        img = open_image(ds.files[i])
        axes[0, col].imshow(to_channels(img, 3))
        axes[0, col].set_title(f"{os.path.basename(ds.files[i])[:18]}\n{img.width}x{img.height} {img.mode}", fontsize=8)
        axes[1, col].imshow(after[col].permute(1, 2, 0).numpy().squeeze(), cmap="gray", vmin=0, vmax=1)
        axes[1, col].set_title(f"{ds.image_size}x{ds.image_size}x{ds.channels}", fontsize=8)
        for ax in axes[:, col]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("before")
    axes[1, 0].set_ylabel("after")
    return fig
