"""Cleaning and preparation: from image files of any mode and size to a cached training set.

The path of every file-based source (image folders, CelebA, Flowers102, StanfordCars):

1. ``scan_folder``   list image files, class subfolders -> labels
2. ``process_files`` decode each file once (threads); drop unreadable files, images
                     smaller than ``min_size`` and exact duplicates (same decoded pixels);
                     convert the mode (grayscale, palette, RGBA, CMYK, 16-bit) to L or RGB;
                     crop to a square (centre, or CelebA's face box); resize
3. ``split_dataset`` seeded train/validation split (stratified when labelled)
4. ``save_cache`` / ``load_cache``  prepared uint8 tensors on disk (artifact kind "data_cache"
                     of :mod:`diffusion_lib.checkpoint`), keyed by a hash of the source and
                     every setting, so a change invalidates the cache

Every dropped file appears in a report table (``path, reason, detail``).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from ..artifacts import load_artifact, save_artifact
from .dataset import ImageDataset, SourceInfo

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
CROPS = ("center", "celeba")
REPORT_COLUMNS = ["path", "reason", "detail"]


def _check_size(value, name: str, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}; got {value!r}")


def open_image(path) -> Image.Image:
    """Open and fully decode an image file (lazy PIL errors surface here, not later).

    Args:
        path: file path.

    Returns:
        the decoded PIL image in its original mode.

    Raises:
        OSError, ValueError, SyntaxError, ...: whatever PIL raises for a broken file;
        callers that clean data catch ``Exception``.
    """
    with Image.open(path) as img:
        img.load()
        return img.copy()


def to_channels(img: Image.Image, channels: int = 3, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any PIL mode to ``"L"`` (channels=1) or ``"RGB"`` (channels=3).

    Transparent images (RGBA, LA, palette with transparency) are composited over
    ``background`` instead of dropping alpha (which exposes whatever colour hides under
    transparent pixels). 16-bit images are scaled to 8 bits (÷257); float images with
    values in [0, 1] are scaled by 255. CMYK uses PIL's direct conversion (no ICC profile).
    Grayscale -> RGB replicates the channel; RGB -> L uses ITU-R 601-2 luma.

    Args:
        img: PIL image of any mode.
        channels: 1 or 3.
        background: RGB colour (0..255) shown through transparent pixels.

    Returns:
        PIL image in mode "L" or "RGB", same size.

    Raises:
        ValueError: if ``channels`` is not 1 or 3.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3; got {channels!r}")
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode.startswith("I") or mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 257.0
        elif mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        img = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), mode="L")
    elif mode == "1":
        img = img.convert("L")
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        base = Image.new("RGBA", img.size, tuple(background) + (255,))
        img = Image.alpha_composite(base, img.convert("RGBA"))
    return img.convert("L" if channels == 1 else "RGB")


def crop_box(width: int, height: int, crop: str = "center") -> tuple[int, int, int, int]:
    """The square box (left, top, right, bottom) to cut from a width x height image.

    Args:
        width, height: image size in pixels.
        crop: ``"center"``: the largest centred square. ``"celeba"``: the 128x128 face
            box centred at (x=89, y=121) of CelebA's aligned 178x218 images, as used for
            CelebA 64x64 in DDIM (Song et al., 2021) and many GANs; scaled
            proportionally for other sizes.

    Returns:
        integer box usable with ``PIL.Image.crop``.

    Raises:
        ValueError: for an unknown ``crop``.
    """
    if crop == "center":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        return left, top, left + side, top + side
    if crop == "celeba":
        side = max(1, min(width, height, round(128 * width / 178)))
        cx, cy = round(89 * width / 178), round(121 * height / 218)
        left = min(max(cx - side // 2, 0), width - side)
        top = min(max(cy - side // 2, 0), height - side)
        return left, top, left + side, top + side
    raise ValueError(f"crop must be one of {CROPS}; got {crop!r}")


def resize_pixels(pixels: torch.Tensor, size: int, chunk: int = 512) -> torch.Tensor:
    """Resize square uint8 images with antialiased bilinear interpolation.

    Args:
        pixels: uint8 tensor (N, H, W, C).
        size: output side in pixels (positive int).
        chunk: images converted to float at a time (bounds memory).

    Returns:
        uint8 tensor (N, size, size, C); the input itself when already that size.

    Raises:
        ValueError: for a bad ``size`` or non-uint8 / non-4-D ``pixels``.
    """
    _check_size(size, "image_size", allow_none=False)
    pixels = torch.as_tensor(pixels)
    if pixels.dtype != torch.uint8 or pixels.ndim != 4:
        raise ValueError(f"pixels must be uint8 (N, H, W, C); got {pixels.dtype} shape {tuple(pixels.shape)}")
    if pixels.shape[1] == size and pixels.shape[2] == size:
        return pixels
    out = []
    chunks = range(0, len(pixels), chunk)  # a bar when it takes a while (more than 20 chunks)
    for start in tqdm(chunks, desc=f"resizing to {size}px", unit="chunk", disable=len(chunks) <= 20, leave=False):
        x = pixels[start : start + chunk].permute(0, 3, 1, 2).float()
        x = TF.resize(x, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1))
    return torch.cat(out).contiguous() if out else pixels.new_zeros((0, size, size, pixels.shape[3]))


def content_hash(img: Image.Image) -> str:
    """Hash of the decoded pixels (mode, size and bytes): equal for exact duplicates,
    whatever their file names or encodings. Returns 16 hex characters (SHA-1 prefix)."""
    h = hashlib.sha1(f"{img.mode}{img.size}".encode())
    h.update(img.tobytes())
    return h.hexdigest()[:16]


def scan_folder(root) -> tuple[pd.DataFrame, pd.DataFrame]:
    """List the image files under ``root`` and their classes.

    Layout: if any subfolder of ``root`` contains image files (at any depth), each
    top-level subfolder is a class (its name the class name; nested folders inside it
    belong to it) and files lying directly in ``root`` are dropped. Otherwise the folder
    is flat and unlabeled. Hidden files and folders (".name") are ignored; other files
    without an image extension are reported.

    Args:
        root: folder path.

    Returns:
        (files, report): ``files`` has columns ``path`` (str, sorted) and
        ``class_name`` (str, or None when flat); ``report`` lists skipped files with
        columns ``path, reason, detail``.

    Raises:
        ValueError: if ``root`` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"root must be an existing directory; got {str(root)!r}")
    files, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(root)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = str(Path(dirpath) / name)
            if name.lower().endswith(IMAGE_EXTENSIONS):
                files.append((path, rel.parts[0] if rel.parts else None))
            else:
                skipped.append((path, "not_an_image", f"extension {Path(name).suffix or '(none)'!r}"))
    labelled = any(c is not None for _, c in files)
    if labelled:
        skipped += [(p, "outside_class_folder", "file directly in root of a class-folder layout") for p, c in files if c is None]
        files = [(p, c) for p, c in files if c is not None]
    table = pd.DataFrame(files, columns=["path", "class_name"]).sort_values("path", ignore_index=True)
    return table, pd.DataFrame(skipped, columns=REPORT_COLUMNS)


def _process_one(path, image_size, channels, crop, min_size, background):
    try:
        img = open_image(path)
    except Exception as e:  # noqa: BLE001 - any decoding failure means "unreadable"
        return {"status": "unreadable", "detail": f"{type(e).__name__}: {e}"[:200]}
    record = {"status": "ok", "width": img.width, "height": img.height, "mode": img.mode, "hash": content_hash(img)}
    if min(img.size) < min_size:
        return {**record, "status": "too_small", "detail": f"{img.width}x{img.height} < min_size {min_size}"}
    if image_size is not False:
        img = to_channels(img, channels or 3, background)
        if image_size is not None:
            img = img.crop(crop_box(img.width, img.height, crop))
        arr = np.asarray(img, dtype=np.uint8).reshape(img.height, img.width, -1)
        if image_size is not None:
            arr = resize_pixels(torch.from_numpy(arr.copy())[None], image_size)[0].numpy()
        record["pixels"] = arr
    return record


def process_files(paths, class_names_per_file=None, *, image_size=None, channels=None, crop="center",
                  min_size: int = 1, background=(255, 255, 255), keep_pixels: bool = True,
                  progress: bool = True, desc: str = "images", num_workers: int | None = None):
    """Decode, check, clean and (optionally) convert a list of image files.

    Drops, in this order: unreadable files (reason ``unreadable``), images whose smaller
    side is below ``min_size`` (``too_small``) and exact duplicates of an earlier file in
    ``paths`` order (``duplicate``; the first copy is kept).

    Args:
        paths: sequence of file paths.
        class_names_per_file: optional sequence (same length) of class names.
        image_size: output side (positive int): crop to a square with ``crop`` and resize.
            None keeps the native size (after mode conversion).
        channels: 1, 3, or None = 1 if every kept image is grayscale, else 3.
        crop: ``"center"`` or ``"celeba"`` (see :func:`crop_box`).
        min_size: smallest accepted width/height in pixels.
        background: RGB colour composited under transparent pixels.
        keep_pixels: False to only check files (faster; no pixels returned).
        progress: show a tqdm progress bar.
        desc: progress-bar label.
        num_workers: decoding threads (default: CPU count).

    Returns:
        dict with ``kept`` (DataFrame: path, class_name, width, height, mode, hash),
        ``report`` (DataFrame: path, reason, detail) and ``pixels`` (list of uint8
        (H, W, C) arrays for the kept files, or None when ``keep_pixels`` is False).

    Raises:
        ValueError: for bad ``image_size``, ``channels``, ``crop`` or ``min_size``.
    """
    _check_size(image_size, "image_size")
    _check_size(min_size, "min_size", allow_none=False)
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None; got {channels!r}")
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}; got {crop!r}")
    paths = [str(p) for p in paths]
    names = list(class_names_per_file) if class_names_per_file is not None else [None] * len(paths)
    target = image_size if keep_pixels else False
    workers = num_workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda p: _process_one(p, target, channels, crop, min_size, background), paths)
        results = list(tqdm(results, total=len(paths), desc=desc, disable=not progress))
    kept, report, pixels, first_seen = [], [], [], {}
    for path, name, r in zip(paths, names, results):
        if r["status"] == "ok" and r["hash"] in first_seen:
            r = {**r, "status": "duplicate", "detail": f"same pixels as {first_seen[r['hash']]}"}
        if r["status"] != "ok":
            report.append((path, r["status"], r["detail"]))
            continue
        first_seen[r["hash"]] = path
        kept.append((path, name, r["width"], r["height"], r["mode"], r["hash"]))
        if keep_pixels:
            pixels.append(r["pixels"])
    kept = pd.DataFrame(kept, columns=["path", "class_name", "width", "height", "mode", "hash"])
    if keep_pixels and channels is None and len(kept) and kept["mode"].isin(GRAY_MODES).all():
        pixels = [p[..., :1] for p in pixels]  # grayscale replicated to RGB: keep one channel
    return {"kept": kept, "report": pd.DataFrame(report, columns=REPORT_COLUMNS),
            "pixels": pixels if keep_pixels else None}


def clean_folder(root, *, min_size: int = 8, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check every file of an image folder without converting it.

    Args:
        root: folder (class subfolders or flat, see :func:`scan_folder`).
        min_size: smallest accepted width/height in pixels.
        progress: show a progress bar.

    Returns:
        (kept, report): ``kept`` columns path, class_name, width, height, mode, hash;
        ``report`` columns path, reason (not_an_image, outside_class_folder,
        unreadable, too_small, duplicate), detail.
    """
    files, skipped = scan_folder(root)
    out = process_files(files["path"], files["class_name"], min_size=min_size, keep_pixels=False,
                        progress=progress, desc=f"checking {Path(root).name}")
    return out["kept"], pd.concat([skipped, out["report"]], ignore_index=True)


def stack_pixels(arrays) -> torch.Tensor:
    """Stack same-size uint8 (H, W, C) arrays into a tensor (N, H, W, C).

    Raises:
        ValueError: if the arrays differ in size (pass an ``image_size`` to resize them)
        or are not square.
    """
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise ValueError(f"images have different sizes {shapes[:4]}...; pass image_size=<int> to crop and resize them")
    if shapes and shapes[0][0] != shapes[0][1]:
        raise ValueError(f"images are {shapes[0][1]}x{shapes[0][0]}, not square; pass image_size=<int> to crop and resize")
    return torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros((0, 1, 1, 1), dtype=torch.uint8)


def split_dataset(dataset: ImageDataset, val_fraction: float = 0.1, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    """Seeded train/validation split; stratified (per class) when the dataset is labelled.

    Args:
        dataset: the dataset to split.
        val_fraction: fraction in [0, 1) of each class (or of all images) for validation,
            rounded to the nearest count.
        seed: seed of the permutation; same seed, same split.

    Returns:
        (train, val) datasets; indices inside each are in ascending order, disjoint, and
        together cover the dataset.

    Raises:
        ValueError: if ``val_fraction`` is outside [0, 1).
    """
    if not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
        raise ValueError(f"val_fraction must be a number in [0, 1); got {val_fraction!r}")
    gen = torch.Generator().manual_seed(int(seed))
    groups = [torch.arange(len(dataset))] if dataset.labels is None else \
        [torch.nonzero(dataset.labels.cpu() == k).flatten() for k in range(dataset.num_classes)]
    val = []
    for idx in groups:
        n_val = int(round(len(idx) * val_fraction))
        val.append(idx[torch.randperm(len(idx), generator=gen)[:n_val]])
    val = torch.cat(val).sort().values if val else torch.zeros(0, dtype=torch.long)
    mask = torch.ones(len(dataset), dtype=torch.bool)
    mask[val] = False
    return dataset.subset(torch.nonzero(mask).flatten()), dataset.subset(val)


# ---------------------------------------------------------------- cache
def fingerprint(path) -> list:
    """(relative path, size in bytes, mtime in ns) of a file or of every file below a
    folder, sorted; changes whenever a file is added, removed, replaced or touched."""
    path = Path(path)
    if path.is_file():
        st = path.stat()
        return [[path.name, st.st_size, st.st_mtime_ns]]
    out = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            st = p.stat()
            out.append([str(p.relative_to(path)), st.st_size, st.st_mtime_ns])
    return out


def cache_key(settings: dict) -> str:
    """16-hex-character SHA-256 of the JSON of ``settings`` (keys sorted; non-JSON values
    by ``str``). Any change of source, fingerprint or setting gives a new key."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


CACHE_KIND = "data_cache"
CACHE_VERSION = 1
CACHE_KEYS = ("pixels", "labels", "class_names", "info", "report", "files")


def save_cache(path, dataset: ImageDataset) -> None:
    """Write a prepared dataset as artifact kind "data_cache" (:func:`diffusion_lib.artifacts.save_artifact`).

    The payload holds the uint8 pixels (N, H, W, C), int64 labels (N,) or None, class names, the
    SourceInfo fields, the cleaning report (columns of strings) and the source file paths; the file is
    written atomically (temporary file + ``os.replace``) and loads with ``torch.load(weights_only=True)``.

    Args:
        path: destination file (a ``.pt`` name; not ``.json``, which cannot hold tensors).
        dataset: the prepared dataset.
    """
    info = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataset.info.__dict__.items()}
    report = None if dataset.report is None else {c: [str(v) for v in dataset.report[c]] for c in dataset.report}
    payload = {"pixels": dataset.pixels.cpu(), "labels": None if dataset.labels is None else dataset.labels.cpu(),
               "class_names": dataset.class_names, "info": info, "report": report, "files": dataset.files}
    save_artifact(path, CACHE_KIND, payload, CACHE_VERSION)


def load_cache(path) -> ImageDataset | None:
    """Read a dataset written by :func:`save_cache`, or None so that the caller rebuilds it.

    Args:
        path: the cache file.

    Returns:
        the ImageDataset; None when the file is missing (silently) or is unreadable, truncated, foreign,
        of another kind or version, or incomplete (with a warning "ignoring unreadable data cache ...").
        Nothing is raised: a bad cache is rebuilt, never trusted.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        d = load_artifact(path, CACHE_KIND, CACHE_VERSION, required=CACHE_KEYS)
        info = SourceInfo(**{**d["info"], "class_names": tuple(d["info"].get("class_names") or ())})
        report = None if d["report"] is None else pd.DataFrame(d["report"])
        return ImageDataset(d["pixels"], d["labels"], d["class_names"], info, report, d["files"])
    except Exception as e:  # noqa: BLE001 - a bad cache is rebuilt, never trusted
        warnings.warn(f"ignoring unreadable data cache {path}: {type(e).__name__}: {e}")
        return None
