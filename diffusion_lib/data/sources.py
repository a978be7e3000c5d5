"""The source registry: every dataset, bundled or downloaded, by name.

    ds = load_dataset("digits", image_size=16)            # bundled, offline
    ds = load_dataset("image_folder", root="my_images", image_size=64)

A source is a function ``loader(image_size, **kwargs) -> ImageDataset`` registered with
``@register_source("name")``; a student can add one in a notebook and load it by name.
Bundled sources (offline, shipped inside scikit-learn / scikit-image): ``digits``,
``lfw_faces``, ``gallery``. File sources: ``image_folder``, ``npy``. The torchvision
sources (``celeba``, ``flowers102``, ...) live in ``torchvision_sources.py``.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..images import to_uint8
from .dataset import ImageDataset, SourceInfo
from .prepare import (_check_size, cache_key, crop_box, fingerprint, load_cache, process_files, resize_pixels,
                      save_cache, scan_folder, stack_pixels, to_channels)


@dataclass(frozen=True)
class _Source:
    loader: Callable[..., ImageDataset]
    fingerprint: Callable[..., object] | None


_SOURCES: dict[str, _Source] = {}
NOT_IN_CACHE_KEY = frozenset({"progress", "download"})  # arguments that do not change the data


def register_source(name: str, *, fingerprint: Callable[..., object] | None = None):
    """Decorator registering ``loader(image_size, **kwargs) -> ImageDataset`` under ``name``.

    Args:
        name: registry name (re-registering a name replaces the loader).
        fingerprint: optional ``f(**kwargs) -> JSON-able`` that changes whenever the
            source's files change; it keys the cache. Default: the size and mtime of
            every file under any keyword argument that names an existing path.

    Returns:
        the decorator, which returns the loader unchanged.

    Raises:
        ValueError: if ``name`` is not a non-empty string.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"source name must be a non-empty string; got {name!r}")

    def decorator(loader):
        _SOURCES[name] = _Source(loader, fingerprint)
        return loader

    return decorator


def available_sources() -> list[str]:
    """Names of all registered sources, sorted."""
    return sorted(_SOURCES)


def _default_fingerprint(**kwargs):
    return {k: fingerprint(v) for k, v in kwargs.items()
            if isinstance(v, (str, Path)) and str(v) and Path(v).exists()}


def load_dataset(name: str, image_size: int | None = None, *, cache_dir=None, **kwargs) -> ImageDataset:
    """Load a registered source as an :class:`ImageDataset` of square images.

    Args:
        name: registry name, see :func:`available_sources`.
        image_size: side in pixels after cropping/resizing (antialiased bilinear), or
            None to keep the native size (only for sources whose images are already
            square and of one size, e.g. 8 for digits).
        cache_dir: optional folder; the prepared uint8 tensors are saved there under a key
            hashing the source name, ``image_size``, every keyword argument and the
            source's fingerprint (file sizes and mtimes), and loaded from there next
            time. Any change gives a new key, so stale caches are never used
            (``progress`` and ``download`` do not change the data and are not hashed).
        **kwargs: source-specific arguments (``root=``, ``path=``, ...).

    Returns:
        the dataset.

    Raises:
        ValueError: for an unknown ``name`` (the message lists the available ones), a bad
            ``image_size`` or bad source arguments.
        ValueError: an unknown source name, a bad size, or an option the source does not take.
        RuntimeError: when a downloadable source is neither on disk nor downloadable
            (the message says what to do).
    """
    if name not in _SOURCES:
        raise ValueError(f"unknown dataset source {name!r}; available: {', '.join(available_sources())}")
    _check_size(image_size, "image_size")
    source = _SOURCES[name]
    parameters = inspect.signature(source.loader).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        unknown = sorted(set(kwargs) - set(parameters))
        if unknown:
            accepted = [k for k in parameters if k != "image_size"]
            raise ValueError(f"data source {name!r} does not take {unknown}; accepted options: {accepted}")
    path = None
    if cache_dir is not None:
        fp = (source.fingerprint or _default_fingerprint)(**kwargs)
        settings = {k: v for k, v in kwargs.items() if k not in NOT_IN_CACHE_KEY}
        key = cache_key({"source": name, "image_size": image_size, "kwargs": settings, "fingerprint": fp,
                         "loader": getattr(source.loader, "__qualname__", str(source.loader))})
        path = Path(cache_dir) / f"{name}-{image_size or 'native'}-{key}.pt"
        cached = load_cache(path)
        if cached is not None:
            return cached
    ds = source.loader(image_size, **kwargs)
    if not isinstance(ds, ImageDataset):
        raise ValueError(f"source {name!r} returned {type(ds).__name__}, expected ImageDataset")
    if image_size is not None and ds.image_size != image_size:
        raise ValueError(f"source {name!r} returned images of size {ds.image_size}, asked for {image_size}")
    if path is not None:
        save_cache(path, ds)
    return ds


def _versions(*packages):
    return lambda **kwargs: {p: importlib.metadata.version(p) for p in packages}


# ---------------------------------------------------------------- bundled sources
DIGITS_INFO = SourceInfo(
    name="digits",
    description="1,797 handwritten digits 0-9, 8x8 grayscale (scikit-learn's copy of the UCI test set). "
                "Intensities 0..16 are mapped linearly to 0..255: white ink on a black background.",
    license="CC BY 4.0 (UCI Machine Learning Repository)",
    citation="E. Alpaydin and C. Kaynak. Optical Recognition of Handwritten Digits. UCI Machine Learning "
             "Repository, 1998. doi:10.24432/C50P49",
    url="https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits",
)


@register_source("digits", fingerprint=_versions("scikit-learn"))
def digits(image_size: int | None = None) -> ImageDataset:
    """scikit-learn's handwritten digits: 1797 images (N, 8, 8, 1), labels 0-9.

    Args:
        image_size: output side (antialiased bilinear resize), None keeps 8.

    Returns:
        ImageDataset, grayscale (C=1), white ink on black, class names "0".."9".
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = torch.from_numpy(np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8))[..., None]
    if image_size is not None:
        pixels = resize_pixels(pixels, image_size)
    return ImageDataset(pixels, torch.from_numpy(bunch.target).long(), [str(d) for d in range(10)], DIGITS_INFO)


LFW_INFO = SourceInfo(
    name="lfw_faces",
    description="scikit-image's lfw_subset: 200 grayscale 25x25 crops from Labeled Faces in the Wild; the "
                "first 100 are faces, the last 100 non-faces cut from the photos' backgrounds.",
    license="LFW: no license stated; distributed for research use by UMass Amherst (images are news photos)",
    citation="G. B. Huang, M. Ramesh, T. Berg, E. Learned-Miller. Labeled Faces in the Wild: A Database for "
             "Studying Face Recognition in Unconstrained Environments. UMass Amherst TR 07-49, 2007.",
    url="http://vis-www.cs.umass.edu/lfw/",
)


@register_source("lfw_faces", fingerprint=_versions("scikit-image"))
def lfw_faces(image_size: int | None = None, faces_only: bool = False) -> ImageDataset:
    """scikit-image's LFW subset: 200 images 25x25, label 0 = "face", 1 = "non-face".

    Args:
        image_size: output side (antialiased bilinear resize), None keeps 25.
        faces_only: keep only the 100 faces (then unlabeled: one class is no class).

    Returns:
        ImageDataset, grayscale (C=1).
    """
    from skimage.data import lfw_subset

    arr = lfw_subset()
    if arr.dtype != np.uint8:  # float64 in [0, 1] in scikit-image 0.26
        arr = np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)
    pixels = torch.from_numpy(arr)[..., None]
    labels = torch.cat([torch.zeros(100, dtype=torch.long), torch.ones(len(arr) - 100, dtype=torch.long)])
    if image_size is not None:
        pixels = resize_pixels(pixels, image_size)
    if faces_only:
        return ImageDataset(pixels[:100], None, None, LFW_INFO)
    return ImageDataset(pixels, labels, ["face", "non-face"], LFW_INFO)


# name -> (package, loader name, credit and license); photographs of varied sizes and modes
GALLERY = {
    "astronaut": ("skimage", "astronaut", "Eileen Collins, NASA; public domain"),
    "coffee": ("skimage", "coffee", "Rachel Michetti; CC0"),
    "chelsea": ("skimage", "chelsea", "Stefan van der Walt; CC0"),
    "rocket": ("skimage", "rocket", "SpaceX (DSCOVR launch); public domain"),
    "camera": ("skimage", "camera", "Lav Varshney; CC0"),
    "coins": ("skimage", "coins", "Brooklyn Museum collection; no known copyright restrictions"),
    "hubble_deep_field": ("skimage", "hubble_deep_field", "NASA / Hubble; public domain"),
    "immunohistochemistry": ("skimage", "immunohistochemistry", "CMMI; no known copyright restrictions"),
    "motorcycle": ("skimage", "stereo_motorcycle", "Middlebury 2014 stereo benchmark (Scharstein et al.)"),
    "retina": ("skimage", "retina", "Mikael Häggström; CC0"),
    "cell": ("skimage", "cell", "Paul Müller (quantitative phase image); CC0"),
    "clock": ("skimage", "clock", "Stefan van der Walt; public domain"),
    "moon": ("skimage", "moon", "scikit-image sample data"),
    "grass": ("skimage", "grass", "linolafett (DeviantArt); CC0"),
    "gravel": ("skimage", "gravel", "CC0Textures; CC0"),
    "brick": ("skimage", "brick", "CC0Textures; CC0"),
    "china": ("sklearn", "china.jpg", "danielbuechele (Flickr); CC BY 2.0"),
    "flower": ("sklearn", "flower.jpg", "vultilion (Flickr); CC BY 2.0"),
}

GALLERY_INFO = SourceInfo(
    name="gallery",
    description=f"{len(GALLERY)} real photographs of varied sizes (102 to 1411 px), aspect ratios and modes "
                "(RGB and grayscale) shipped with scikit-image and scikit-learn: something real to analyse offline.",
    license="per image, see diffusion_lib.data.sources.GALLERY: public domain, CC0, or CC BY 2.0 (china, flower)",
    citation="van der Walt et al., scikit-image: image processing in Python, PeerJ 2:e453, 2014; "
             "Pedregosa et al., Scikit-learn: Machine Learning in Python, JMLR 12, 2011.",
    url="https://scikit-image.org/docs/stable/api/skimage.data.html",
)


def gallery_images() -> dict[str, Image.Image]:
    """The bundled photographs at their native size and mode ("RGB" or "L").

    Returns:
        dict name -> PIL image, in the order of ``GALLERY``.
    """
    import skimage.data
    from sklearn.datasets import load_sample_image

    out = {}
    for name, (package, attr, _) in GALLERY.items():
        if package == "sklearn":
            arr = load_sample_image(attr)
        else:
            arr = getattr(skimage.data, attr)()
            arr = arr[0] if isinstance(arr, tuple) else arr
        out[name] = Image.fromarray(np.ascontiguousarray(arr))
    return out


@register_source("gallery", fingerprint=_versions("scikit-image", "scikit-learn"))
def gallery(image_size: int | None = None, crop: str = "center") -> ImageDataset:
    """The bundled photographs, centre-cropped to squares and resized, as RGB.

    Args:
        image_size: output side; required, since the photographs differ in size.
        crop: ``"center"`` (see :func:`~diffusion_lib.data.prepare.crop_box`).

    Returns:
        unlabeled ImageDataset (C=3), one image per photograph.

    Raises:
        ValueError: if ``image_size`` is None.
    """
    if image_size is None:
        raise ValueError("gallery photographs differ in size; pass image_size=<int>")
    arrays = []
    for img in gallery_images().values():
        img = to_channels(img, 3)
        img = img.crop(crop_box(img.width, img.height, crop))
        arrays.append(np.asarray(img, dtype=np.uint8))
    pixels = torch.cat([resize_pixels(torch.from_numpy(a.copy())[None], image_size) for a in arrays])
    return ImageDataset(pixels, None, None, GALLERY_INFO)


# ---------------------------------------------------------------- file sources
@register_source("image_folder")
def image_folder(image_size: int | None = None, root=None, channels: int | None = None, crop: str = "center",
                 min_size: int = 8, progress: bool = True) -> ImageDataset:
    """Images from a folder: class subfolders give labels, a flat folder is unlabeled.

    Files are cleaned on the way (see :func:`~diffusion_lib.data.prepare.process_files`):
    unreadable files, images smaller than ``min_size`` and exact duplicates are dropped
    and listed in ``dataset.report``; every mode is converted to L or RGB.

    Args:
        image_size: output side (crop to a square, then resize), or None when every image
            is already square and of one size.
        root: the folder (required). Layout: ``root/<class>/**/<image>`` or ``root/<image>``.
        channels: 1, 3, or None (1 if all images are grayscale, else 3).
        crop: ``"center"`` or ``"celeba"``.
        min_size: smallest accepted width/height in pixels.
        progress: show a progress bar.

    Returns:
        ImageDataset with labels = index of the class folder in sorted order (folders
        left without any usable image are not classes; a warning names them), or None.

    Raises:
        ValueError: if ``root`` is missing or not a folder, no image survives cleaning, or
            sizes differ with ``image_size=None``.
    """
    if root is None:
        raise ValueError("image_folder needs root=<folder with images or class subfolders>")
    files, skipped = scan_folder(root)
    out = process_files(files["path"], files["class_name"], image_size=image_size, channels=channels,
                        crop=crop, min_size=min_size, progress=progress, desc=f"reading {Path(root).name}")
    report = pd.concat([skipped, out["report"]], ignore_index=True)
    kept = out["kept"]
    if len(kept) == 0:
        raise ValueError(f"no usable image in {str(root)!r}; dropped: {report['reason'].value_counts().to_dict()}")
    pixels = stack_pixels(out["pixels"])
    labels, class_names = None, None
    if kept["class_name"].notna().all():
        class_names = sorted(kept["class_name"].unique())
        empty = sorted(set(files["class_name"].dropna()) - set(class_names))
        if empty:
            warnings.warn(f"class folders without any usable image are left out of the classes: {empty}")
        labels = torch.tensor([class_names.index(c) for c in kept["class_name"]], dtype=torch.long)
    info = SourceInfo(name="image_folder", description=f"images from {root}", license="as stated by the images' owner")
    return ImageDataset(pixels, labels, class_names, info, report, list(kept["path"]))


def _npy_pixels(arr: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) pixels of a ``.npy`` image array (N, H, W, C) of any numeric dtype.

    uint8 is taken as is and bool as {0, 255}; every other dtype is quantised by
    :func:`diffusion_lib.images.to_uint8` from the range its values lie in: floats within [-1, 1]
    from [-1, 1] when a negative value occurs, else from [0, 1]; anything else from [0, 255].

    Raises:
        ValueError: NaN or infinite values (the message counts them), or values outside [0, 255],
            [0, 1] and [-1, 1] (the message gives the range found).
    """
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"array values must be numbers; got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.inexact):
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise ValueError(f"array holds {bad} NaN or infinite value(s) of {arr.size} ({arr.dtype}); "
                             "images must be finite numbers")
    lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
    floating = np.issubdtype(arr.dtype, np.floating)
    if floating and lo >= -1.0 and hi <= 1.0:
        value_range = (-1.0, 1.0) if lo < 0 else (0.0, 1.0)
    elif lo < 0 or hi > 255:
        raise ValueError(f"array values must lie in [0, 255], [0, 1] or [-1, 1]; got [{lo}, {hi}] ({arr.dtype})")
    else:
        value_range = (0.0, 255.0)
    return to_uint8(arr if floating else arr.astype(np.float64), value_range=value_range, channels_last=True)


@register_source("npy")
def npy(image_size: int | None = None, path=None, labels_path=None, class_names=None) -> ImageDataset:
    """Images from a ``.npy`` array, labels optionally from a second one.

    Args:
        image_size: output side (centre-crop to square, then resize), or None to keep a
            square native size.
        path: ``.npy`` file with images (N, H, W), (N, H, W, C) or (N, C, H, W), C in
            {1, 3}. uint8 is taken as is; bool as {0, 255}; floats in [0, 1] or [-1, 1]
            (when negative values occur) are scaled; other numbers must lie in [0, 255].
        labels_path: optional ``.npy`` of N integer labels. Without ``class_names`` the
            distinct values are renumbered 0..K-1 in sorted order and named after them.
        class_names: optional names; then labels must already lie in [0, len - 1].

    Returns:
        ImageDataset.

    Raises:
        ValueError: missing/unreadable file, bad shape, NaN or infinite values, value range,
            label count or non-square images with ``image_size=None``.
    """
    if path is None:
        raise ValueError("npy needs path=<file.npy>")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read images from {str(path)!r}: {e}") from e
    try:
        return _npy_dataset(arr, image_size, path, labels_path, class_names)
    except ValueError as e:
        raise ValueError(f"{str(path)!r}: {e}") from e


def _npy_dataset(arr, image_size, path, labels_path, class_names) -> ImageDataset:
    """:func:`npy` after the file is read: shape, pixels, crop, labels."""
    if arr.ndim == 3:
        arr = arr[..., None]
    elif arr.ndim == 4 and arr.shape[-1] not in (1, 3) and arr.shape[1] in (1, 3):
        arr = arr.transpose(0, 2, 3, 1)
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W), (N, H, W, C) or (N, C, H, W) with C in (1, 3); got {arr.shape}")
    pixels = torch.from_numpy(np.ascontiguousarray(_npy_pixels(arr)))
    h, w = pixels.shape[1:3]
    if h != w:
        if image_size is None:
            raise ValueError(f"images are {w}x{h}, not square; pass image_size=<int> to centre-crop and resize")
        left, top, right, bottom = crop_box(w, h, "center")
        pixels = pixels[:, top:bottom, left:right].contiguous()
    if image_size is not None:
        pixels = resize_pixels(pixels, image_size)
    labels = None
    if labels_path is not None:
        y = np.load(labels_path, allow_pickle=False).reshape(-1)
        if len(y) != len(pixels):
            raise ValueError(f"{len(y)} labels in {str(labels_path)!r} for {len(pixels)} images")
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"labels must be integers; got dtype {y.dtype}")
        if class_names is None:
            values, y = np.unique(y, return_inverse=True)
            class_names = [str(v) for v in values]
        labels = torch.from_numpy(y.astype(np.int64))
    elif class_names is not None:
        raise ValueError("class_names given without labels_path")
    info = SourceInfo(name="npy", description=f"images from {path}", license="as stated by the array's owner")
    return ImageDataset(pixels, labels, class_names, info)


# ---------------------------------------------------------------- a messy folder to practise on
DEMO_MARKER = ".diffusion_lib_demo"


def write_demo_folder(root, *, n_faces: int = 40, n_digits: int = 12, overwrite: bool = False) -> pd.DataFrame:
    """Write a small, deliberately messy image folder built from the bundled sources.

    Layout: ``root/photos`` (the gallery at native size, JPEG for colour, PNG for
    grayscale), ``root/faces`` (LFW faces, 25x25 PNG), ``root/digits`` (8x8 PNG, too
    small for ``min_size`` >= 9). Planted problems: a byte-identical copy (duplicate), a
    truncated JPEG and an empty PNG (unreadable), a text file (not an image), a photo in
    the root (outside the class folders), and photos saved as CMYK JPEG, RGBA PNG with
    transparent corners, 64-colour palette GIF and 16-bit PNG (to be converted).

    Args:
        root: folder to create (must not exist, be empty, or be an earlier demo folder
            when ``overwrite`` is True).
        n_faces: number of LFW faces to write (<= 100).
        n_digits: number of digits to write.
        overwrite: replace an earlier demo folder at ``root``.

    Returns:
        DataFrame with columns ``path``, ``class_name`` and ``planted`` (the problem
        planted in the file: "", "duplicate", "unreadable", "not_an_image",
        "outside_class_folder", "too_small", or a conversion such as "cmyk").

    Raises:
        ValueError: if ``root`` holds other files, or the counts are out of range.
    """
    root = Path(root)
    if not (0 <= n_faces <= 100 and 0 <= n_digits <= 1797):
        raise ValueError(f"n_faces must be in [0, 100] and n_digits in [0, 1797]; got {n_faces}, {n_digits}")
    if root.exists() and any(root.iterdir()):
        if not (overwrite and (root / DEMO_MARKER).exists()):
            raise ValueError(f"{str(root)!r} is not empty; pick a new folder (or overwrite=True for an earlier demo folder)")
        shutil.rmtree(root)
    for sub in ("photos", "faces", "digits"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / DEMO_MARKER).write_text("written by diffusion_lib.data.write_demo_folder\n")
    rows = []

    def put(rel, img, planted="", **kw):
        img.save(root / rel, **kw)
        rows.append((str(root / rel), rel.split("/")[0] if "/" in rel else None, planted))

    photos = gallery_images()
    for name, img in photos.items():
        put(f"photos/{name}.{'png' if img.mode == 'L' else 'jpg'}", img, **({} if img.mode == "L" else {"quality": 90}))
    put("photos/coffee_cmyk.jpg", photos["coffee"].convert("CMYK"), "cmyk", quality=90)
    rgba = photos["chelsea"].convert("RGBA")
    alpha = Image.new("L", rgba.size, 0)
    alpha.paste(255, (40, 20, rgba.width - 40, rgba.height - 20))
    rgba.putalpha(alpha)
    put("photos/chelsea_rgba.png", rgba, "rgba")
    put("photos/astronaut_palette.gif", photos["astronaut"].quantize(64), "palette")
    moon16 = np.asarray(photos["moon"], dtype=np.uint16)[:, ::-1] * 257  # mirrored: not a duplicate of moon.png
    put("photos/moon_mirrored_16bit.png", Image.fromarray(np.ascontiguousarray(moon16)), "16-bit")
    (root / "photos/china_copy.jpg").write_bytes((root / "photos/china.jpg").read_bytes())
    rows.append((str(root / "photos/china_copy.jpg"), "photos", "duplicate"))
    data = (root / "photos/rocket.jpg").read_bytes()
    (root / "photos/rocket_truncated.jpg").write_bytes(data[: len(data) // 3])
    rows.append((str(root / "photos/rocket_truncated.jpg"), "photos", "unreadable"))
    (root / "photos/README.txt").write_text("photographs from scikit-image and scikit-learn\n")
    rows.append((str(root / "photos/README.txt"), "photos", "not_an_image"))
    (root / "faces/empty.png").write_bytes(b"")
    rows.append((str(root / "faces/empty.png"), "faces", "unreadable"))
    put("stray_photo.jpg", photos["coffee"], "outside_class_folder", quality=90)
    lfw = lfw_faces()
    for i in range(n_faces):
        put(f"faces/face_{i:03d}.png", Image.fromarray(lfw.pixels[i, ..., 0].numpy()))
    digit_set = digits()
    for i in range(n_digits):
        put(f"digits/digit_{i:04d}_{int(digit_set.labels[i])}.png", Image.fromarray(digit_set.pixels[i, ..., 0].numpy()),
            "too_small")
    return pd.DataFrame(rows, columns=["path", "class_name", "planted"]).sort_values("path", ignore_index=True)
