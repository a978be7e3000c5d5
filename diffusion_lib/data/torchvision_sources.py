"""torchvision datasets behind the source registry: download when possible, fail fast when not.

    ds = load_dataset("celeba", image_size=64, root="datasets", limit=20000)

Each source first looks for the files under ``root`` (torchvision's own layout). If they
are missing and ``download=True``, it checks within seconds that the download host
answers, then lets torchvision download and extract into a hidden temporary folder
under ``root`` that is moved into place only when complete (deleted on any failure),
so a broken download never leaves a folder that later looks valid. Archives are
extracted with Python's ``tarfile`` "data" filter (:func:`safe_tar_extraction`): a member
with an absolute path, ``..``, or a link out of the folder is refused. Whatever fails
raises :class:`DatasetUnavailableError`, whose message says what failed, where to put
manually downloaded files, the expected layout and the known mirrors.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .dataset import ImageDataset, SourceInfo
from .prepare import process_files, resize_pixels, stack_pixels
from .sources import register_source

PROBE_TIMEOUT_S = 5.0      # seconds to wait for a download host before giving up
DOWNLOAD_TIMEOUT_S = 60.0  # socket timeout while downloading: a stalled transfer fails, never hangs


class DatasetUnavailableError(RuntimeError):
    """A dataset is neither on disk nor downloadable; the message says what to do."""


def default_root() -> Path:
    """Where downloaded datasets live: ``$DIFFUSION_LIB_DATA`` if set, else ``./datasets``."""
    return Path(os.environ.get("DIFFUSION_LIB_DATA", "datasets"))


# What each source needs on disk, and how to get it by hand. ``{root}`` is filled in.
MANUAL = {
    "celeba": """Expected layout (torchvision's; the .txt files are checked by MD5):
  {root}/celeba/img_align_celeba/000001.jpg ... 202599.jpg
  {root}/celeba/list_eval_partition.txt, list_attr_celeba.txt, identity_CelebA.txt,
  {root}/celeba/list_bbox_celeba.txt, list_landmarks_align_celeba.txt
Also accepted: the Kaggle copy (jessicali9530/celeba-dataset) unzipped to {root}/celeba/, i.e.
  {root}/celeba/img_align_celeba/[img_align_celeba/]*.jpg with list_eval_partition.csv, list_attr_celeba.csv;
  without any partition file every image is used (split="all").
Known sources: the authors' Google Drive folder linked from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html
  ("Align&Cropped Images" -> img_align_celeba.zip, and "Anno", "Eval"); its daily quota often runs out, then try
  the next day, the Baidu link on the same page, or Kaggle https://www.kaggle.com/datasets/jessicali9530/celeba-dataset.
Automatic download needs `pip install gdown`.""",
    "flowers102": """Expected layout:
  {root}/flowers-102/jpg/image_00001.jpg ... image_08189.jpg   (from 102flowers.tgz)
  {root}/flowers-102/imagelabels.mat, {root}/flowers-102/setid.mat
Download by hand: https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ (102flowers.tgz, imagelabels.mat, setid.mat);
  extract 102flowers.tgz inside {root}/flowers-102/.""",
    "stanford_cars": """torchvision cannot download Stanford Cars: the original URL (ai.stanford.edu/~jkrause/cars) is dead.
Expected layout:
  {root}/stanford_cars/cars_train/00001.jpg ...   {root}/stanford_cars/cars_test/00001.jpg ...
  {root}/stanford_cars/devkit/cars_meta.mat, cars_train_annos.mat
  {root}/stanford_cars/cars_test_annos_withlabels.mat
Known mirrors: images from Kaggle https://www.kaggle.com/datasets/jessicali9530/stanford-cars-dataset (flatten the
  doubled folders cars_train/cars_train -> cars_train); devkit from https://github.com/pytorch/vision/files/11644847/car_devkit.tgz
  and cars_test_annos_withlabels.mat as linked in https://github.com/pytorch/vision/issues/7545 .
  A copy sorted into class folders (e.g. Kaggle cyizhuo/stanford-cars-by-classes-folder) loads with
  load_dataset("image_folder", root=".../train", image_size=...).""",
    "mnist": """Expected layout: {root}/MNIST/raw/train-images-idx3-ubyte, train-labels-idx1-ubyte,
  t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (the .gz files may stay next to them).
Mirrors: https://ossci-datasets.s3.amazonaws.com/mnist/ (torchvision's first), http://yann.lecun.com/exdb/mnist/.""",
    "fashion_mnist": """Expected layout: {root}/FashionMNIST/raw/train-images-idx3-ubyte, train-labels-idx1-ubyte,
  t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte.
Download by hand: http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ or https://github.com/zalandoresearch/fashion-mnist (data/fashion).""",
    "cifar10": """Expected layout: {root}/cifar-10-batches-py/data_batch_1 ... data_batch_5, test_batch, batches.meta
  (extract cifar-10-python.tar.gz inside {root}/).
Download by hand: https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz""",
}

PROBE_URLS = {
    "celeba": "https://drive.google.com/",
    "flowers102": "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/",
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/",
}

INFOS = {
    "celeba": SourceInfo("celeba", "202,599 aligned and cropped 178x218 face images of 10,177 celebrities with 40 "
                         "binary attributes (Liu et al., 2015).",
                         "non-commercial research and educational use only (CelebA agreement)",
                         "Z. Liu, P. Luo, X. Wang, X. Tang. Deep Learning Face Attributes in the Wild. ICCV 2015.",
                         "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"),
    "flowers102": SourceInfo("flowers102", "8,189 photographs of 102 flower species common in the UK, 40-258 per class, "
                             "varied sizes (Oxford 102 Flowers).", "no license stated; research use (Visual Geometry Group, Oxford)",
                             "M.-E. Nilsback, A. Zisserman. Automated Flower Classification over a Large Number of "
                             "Classes. ICVGIP 2008.", "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"),
    "stanford_cars": SourceInfo("stanford_cars", "16,185 photographs of 196 car models (make, model, year).",
                                "non-commercial research use (ImageNet terms)",
                                "J. Krause, M. Stark, J. Deng, L. Fei-Fei. 3D Object Representations for Fine-Grained "
                                "Categorization. 3dRR workshop, ICCV 2013.",
                                "https://ai.stanford.edu/~jkrause/cars/car_dataset.html"),
    "mnist": SourceInfo("mnist", "70,000 handwritten digits 28x28 grayscale, white on black.",
                        "CC BY-SA 3.0 (as distributed by Y. LeCun and C. Cortes)",
                        "Y. LeCun, L. Bottou, Y. Bengio, P. Haffner. Gradient-based learning applied to document "
                        "recognition. Proc. IEEE 86(11), 1998.", "http://yann.lecun.com/exdb/mnist/"),
    "fashion_mnist": SourceInfo("fashion_mnist", "70,000 Zalando article images 28x28 grayscale in 10 classes.", "MIT",
                                "H. Xiao, K. Rasul, R. Vollgraf. Fashion-MNIST: a Novel Image Dataset for Benchmarking "
                                "Machine Learning Algorithms. arXiv:1708.07747, 2017.",
                                "https://github.com/zalandoresearch/fashion-mnist"),
    "cifar10": SourceInfo("cifar10", "60,000 32x32 colour images in 10 classes.", "no license stated; free to use with citation",
                          "A. Krizhevsky. Learning Multiple Layers of Features from Tiny Images. Tech. report, U. Toronto, 2009.",
                          "https://www.cs.toronto.edu/~kriz/cifar.html"),
}

FOLDERS = {"celeba": "celeba", "flowers102": "flowers-102", "stanford_cars": "stanford_cars", "mnist": "MNIST",
           "fashion_mnist": "FashionMNIST", "cifar10": "cifar-10-batches-py"}


def _unavailable(name: str, root: Path, what: str) -> DatasetUnavailableError:
    return DatasetUnavailableError(f"{name}: {what}\n\nTo use {name} without the automatic download, put the files "
                                   f"under {root.resolve()}.\n" + MANUAL[name].format(root=root))


@contextlib.contextmanager
def safe_tar_extraction():
    """Within the block, every ``tarfile`` extraction that does not choose a filter (torchvision's
    ``extract_archive`` does not) uses :func:`tarfile.data_filter` (PEP 706): members with absolute
    paths, ``..`` components, links pointing outside the destination, device files or setuid bits
    raise :class:`tarfile.FilterError` instead of being written.

    Sets the class attribute ``tarfile.TarFile.extraction_filter`` and restores it on exit.
    """
    missing = object()
    previous = tarfile.TarFile.__dict__.get("extraction_filter", missing)
    tarfile.TarFile.extraction_filter = staticmethod(tarfile.data_filter)
    try:
        yield
    finally:
        if previous is missing:
            del tarfile.TarFile.extraction_filter
        else:
            tarfile.TarFile.extraction_filter = previous


def probe(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Check within ``timeout`` seconds that ``url``'s host answers HTTP (any status).

    Runs in a daemon thread so that even a hanging DNS lookup cannot block the caller.

    Args:
        url: the URL to send a HEAD request to (proxies from the environment apply).
        timeout: seconds to wait in total.

    Returns:
        None when the host answered, else a one-line description of the failure.
    """
    result: list[str | None] = []

    def run():
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout)
            result.append(None)
        except urllib.error.HTTPError:
            result.append(None)  # the host answered, with an error status: it is reachable
        except Exception as e:  # noqa: BLE001 - every failure is reported, not raised
            result.append(f"{type(e).__name__}: {getattr(e, 'reason', e)}")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return result[0] if result else f"no answer within {timeout:.0f} s"


def _acquire(name: str, root: Path, download: bool, make):
    """Return ``make(root, download=False)``; download first (safely) when needed."""
    try:
        return make(root, False)
    except (RuntimeError, FileNotFoundError, OSError, ValueError) as e:
        reason = str(e).replace(" You can use download=True to download it", "").strip()
        missing = f"not found or incomplete under {root.resolve()} ({reason})"
    if not download:
        raise _unavailable(name, root, missing + "; download=False")
    if name == "stanford_cars":
        raise _unavailable(name, root, missing)
    if name == "celeba":
        try:
            import gdown  # noqa: F401
        except ImportError:
            raise _unavailable(name, root, missing + "; the automatic download needs gdown (pip install gdown)") from None
    failure = probe(PROBE_URLS[name])
    if failure:
        raise _unavailable(name, root, f"{missing}; the download host {PROBE_URLS[name]} is unreachable ({failure})")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".download-{name}-", dir=root))
    old_timeout = socket.getdefaulttimeout()
    try:
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        with safe_tar_extraction():  # a path-traversing archive member fails the download
            make(tmp, True)
        for entry in tmp.iterdir():  # complete: move into place (old incomplete copies set aside)
            dest = root / entry.name
            if dest.exists():
                dest.rename(root / f"{entry.name}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(entry, dest)
    except Exception as e:  # noqa: BLE001 - reported with the manual instructions
        raise _unavailable(name, root, f"{missing}; the download failed ({type(e).__name__}: {e})") from e
    finally:
        socket.setdefaulttimeout(old_timeout)
        shutil.rmtree(tmp, ignore_errors=True)
    return make(root, False)


RAW_IMAGES = {"celeba": "celeba/img_align_celeba", "flowers102": "flowers-102/jpg",
              "stanford_cars": "stanford_cars/cars_train"}


def raw_image_folder(name: str, root=None) -> Path:
    """The folder of original image files of a file-based torchvision source, for
    ``analysis.analyse_folder`` (e.g. ``datasets/flowers-102/jpg``).

    Args:
        name: "celeba", "flowers102" or "stanford_cars".
        root: dataset folder (default :func:`default_root`).

    Raises:
        ValueError: for another name.
        DatasetUnavailableError: if the folder does not exist (yet).
    """
    if name not in RAW_IMAGES:
        raise ValueError(f"name must be one of {sorted(RAW_IMAGES)}; got {name!r}")
    root = Path(root or default_root())
    folder = root / RAW_IMAGES[name]
    if name == "celeba" and (folder / "img_align_celeba").is_dir():  # Kaggle's doubled folder
        folder = folder / "img_align_celeba"
    if not folder.is_dir():
        raise _unavailable(name, root, f"no image folder {folder}")
    return folder


def _shallow_fingerprint(name):
    def fp(root=None, **kwargs):
        base = Path(root or default_root()) / FOLDERS[name]
        if not base.exists():
            return None
        entries = [base, *base.iterdir()]
        entries += [p for d in entries[1:] if d.is_dir() for p in d.iterdir()][:1000]
        return sorted((str(p.relative_to(base.parent)), p.stat().st_size, p.stat().st_mtime_ns) for p in entries)
    return fp


def _subset(n: int, limit: int | None, seed: int) -> np.ndarray:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None; got {limit!r}")
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


def _from_arrays(name, pixels, labels, classes, image_size, limit, seed):
    idx = torch.from_numpy(_subset(len(pixels), limit, seed))
    pixels = torch.as_tensor(pixels)[idx]
    pixels = pixels[..., None] if pixels.ndim == 3 else pixels
    if image_size is not None:
        pixels = resize_pixels(pixels, image_size)
    return ImageDataset(pixels, torch.as_tensor(labels)[idx].long(), list(classes), INFOS[name])


def _from_files(name, paths, labels, classes, image_size, crop, min_size, limit, seed, progress):
    idx = _subset(len(paths), limit, seed)
    paths = [str(paths[i]) for i in idx]
    names = None if labels is None else [classes[int(labels[i])] for i in idx]
    out = process_files(paths, names, image_size=image_size, channels=3, crop=crop, min_size=min_size,
                        progress=progress, desc=name)
    kept = out["kept"]
    if len(kept) == 0:
        raise ValueError(f"{name}: no usable image; dropped {out['report']['reason'].value_counts().to_dict()}")
    y = None if labels is None else torch.tensor([classes.index(c) for c in kept["class_name"]], dtype=torch.long)
    return ImageDataset(stack_pixels(out["pixels"]), y, None if labels is None else list(classes), INFOS[name],
                        out["report"], list(kept["path"]))


def _check_split(split, allowed):
    if split not in allowed:
        raise ValueError(f"split must be one of {allowed}; got {split!r}")


@register_source("mnist", fingerprint=_shallow_fingerprint("mnist"))
def mnist(image_size=None, root=None, split="train", download=True, limit=None, seed=0):
    """MNIST (torchvision): 60,000 train / 10,000 test digits 28x28, 1 channel, labels 0-9.

    Args:
        image_size: output side (antialiased bilinear), None keeps 28.
        root: dataset folder (default :func:`default_root`).
        split: "train" or "test".
        download: download when missing.
        limit: keep a seeded random subset of this many images (None: all).
        seed: seed of that subset.

    Raises:
        DatasetUnavailableError: files missing and not downloadable (message says what to do).
    """
    from torchvision.datasets import MNIST

    _check_split(split, ("train", "test"))
    root = Path(root or default_root())
    ds = _acquire("mnist", root, download, lambda r, d: MNIST(r, train=split == "train", download=d))
    return _from_arrays("mnist", ds.data, ds.targets, ds.classes, image_size, limit, seed)


@register_source("fashion_mnist", fingerprint=_shallow_fingerprint("fashion_mnist"))
def fashion_mnist(image_size=None, root=None, split="train", download=True, limit=None, seed=0):
    """Fashion-MNIST (torchvision): 60,000 / 10,000 images 28x28, 1 channel, 10 classes.

    Args and errors as :func:`mnist`.
    """
    from torchvision.datasets import FashionMNIST

    _check_split(split, ("train", "test"))
    root = Path(root or default_root())
    ds = _acquire("fashion_mnist", root, download, lambda r, d: FashionMNIST(r, train=split == "train", download=d))
    return _from_arrays("fashion_mnist", ds.data, ds.targets, ds.classes, image_size, limit, seed)


@register_source("cifar10", fingerprint=_shallow_fingerprint("cifar10"))
def cifar10(image_size=None, root=None, split="train", download=True, limit=None, seed=0):
    """CIFAR-10 (torchvision): 50,000 / 10,000 colour images 32x32, 10 classes.

    Args and errors as :func:`mnist` (``image_size=None`` keeps 32).
    """
    from torchvision.datasets import CIFAR10

    _check_split(split, ("train", "test"))
    root = Path(root or default_root())
    ds = _acquire("cifar10", root, download, lambda r, d: CIFAR10(r, train=split == "train", download=d))
    return _from_arrays("cifar10", ds.data, ds.targets, ds.classes, image_size, limit, seed)


@register_source("flowers102", fingerprint=_shallow_fingerprint("flowers102"))
def flowers102(image_size=None, root=None, split="train", download=True, limit=None, seed=0, crop="center",
               min_size=32, progress=True):
    """Oxford Flowers102 (torchvision): photographs of varied sizes, 102 classes.

    The official splits are small for training a generator (1,020 train, 1,020 val,
    6,149 test); ``split="all"`` joins them (8,189 images).

    Args:
        image_size: output side after the square ``crop`` (required: sizes vary).
        root, download, limit, seed: as :func:`mnist`.
        split: "train", "val", "test" or "all".
        crop: "center".
        min_size: drop images whose smaller side is below this.
        progress: show a progress bar while decoding.

    Raises:
        DatasetUnavailableError: files missing and not downloadable.
        ValueError: ``image_size`` None, bad split.
    """
    from torchvision.datasets import Flowers102

    _check_split(split, ("train", "val", "test", "all"))
    if image_size is None:
        raise ValueError("flowers102 images differ in size; pass image_size=<int>")
    root = Path(root or default_root())
    paths, labels = [], []
    for s in (("train", "val", "test") if split == "all" else (split,)):
        ds = _acquire("flowers102", root, download, lambda r, d, s=s: Flowers102(r, split=s, download=d))
        paths += list(ds._image_files)
        labels += list(ds._labels)
    return _from_files("flowers102", paths, labels, list(ds.classes), image_size, crop, min_size, limit, seed, progress)


@register_source("stanford_cars", fingerprint=_shallow_fingerprint("stanford_cars"))
def stanford_cars(image_size=None, root=None, split="train", download=True, limit=None, seed=0, crop="center",
                  min_size=32, progress=True):
    """Stanford Cars (torchvision, manual download only): 8,144 train / 8,041 test, 196 classes.

    Args: as :func:`flowers102`; split "train" or "test". ``download`` is accepted for
    symmetry, but the files must be put in place by hand (see :data:`MANUAL`).

    Raises:
        DatasetUnavailableError: files missing (message gives layout and mirrors).
    """
    from torchvision.datasets import StanfordCars

    _check_split(split, ("train", "test"))
    if image_size is None:
        raise ValueError("stanford_cars images differ in size; pass image_size=<int>")
    root = Path(root or default_root())
    ds = _acquire("stanford_cars", root, download, lambda r, d: StanfordCars(r, split=split, download=False))
    paths, labels = zip(*ds._samples) if len(ds._samples) else ((), ())
    return _from_files("stanford_cars", list(paths), list(labels), list(ds.classes), image_size, crop, min_size,
                       limit, seed, progress)


def _read_celeba_table(base: Path, stem: str) -> pd.DataFrame | None:
    """A CelebA annotation file as a DataFrame indexed by file name, from the official
    .txt (whitespace separated; list_attr has a count line first) or Kaggle's .csv."""
    if (base / f"{stem}.csv").is_file():
        return pd.read_csv(base / f"{stem}.csv", index_col=0)
    if (base / f"{stem}.txt").is_file():
        skip = 1 if stem == "list_attr_celeba" else 0
        header = 0 if stem == "list_attr_celeba" else None
        table = pd.read_csv(base / f"{stem}.txt", sep=r"\s+", skiprows=skip, header=header)
        return table if header == 0 else table.set_index(0)
    return None


def _celeba_files(root: Path, split: str, download: bool):
    """(image paths, attribute DataFrame or None) for CelebA, via torchvision when its
    files verify, else from a manual (e.g. Kaggle) copy of the images."""
    from torchvision.datasets import CelebA

    base = root / "celeba"
    images = base / "img_align_celeba"
    if (images / "img_align_celeba").is_dir():  # Kaggle's doubled folder
        images = images / "img_align_celeba"
    has_images = images.is_dir() and any(images.iterdir())
    try:
        ds = _acquire("celeba", root, download and not has_images,
                      lambda r, d: CelebA(r, split=split, target_type=[], download=d))
        names = [n for n in ds.attr_names if n]  # the official header ends with a space: drop the empty name
        attrs = pd.DataFrame(ds.attr.numpy() * 2 - 1, index=list(ds.filename), columns=names)
        return [base / "img_align_celeba" / f for f in ds.filename], attrs
    except DatasetUnavailableError:
        if not has_images:
            raise
    names = sorted(p.name for p in images.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    partition = _read_celeba_table(base, "list_eval_partition")
    if split != "all":
        if partition is None:
            raise _unavailable("celeba", root, f"split={split!r} needs list_eval_partition.txt/.csv in {base}; "
                                               "use split='all' to take every image")
        wanted = {"train": 0, "valid": 1, "test": 2}[split]
        keep = set(partition.index[partition.iloc[:, 0] == wanted])
        names = [n for n in names if n in keep]
    return [images / n for n in names], _read_celeba_table(base, "list_attr_celeba")


@register_source("celeba", fingerprint=_shallow_fingerprint("celeba"))
def celeba(image_size=None, root=None, split="train", download=True, limit=None, seed=0, crop="celeba",
           attribute=None, min_size=32, progress=True):
    """CelebA aligned faces (torchvision), face-cropped and resized.

    Args:
        image_size: output side after the crop (required, e.g. 64).
        root, download, limit, seed: as :func:`mnist`. Use ``limit`` (e.g. 20000) for
            a course-sized subset: only those files are decoded.
        split: "train" (162,770), "valid", "test" or "all".
        crop: "celeba" (the 128x128 face box, see ``prepare.crop_box``) or "center".
        attribute: optional attribute name (e.g. "Smiling", "Eyeglasses") turned into two
            classes ["not <attr>", "<attr>"]; None gives an unlabeled dataset.
        min_size, progress: as :func:`flowers102`.

    Raises:
        DatasetUnavailableError: files missing and not downloadable (Google Drive quota,
            offline, gdown missing): the message gives the layout and the mirrors.
        ValueError: bad split, unknown attribute.
    """
    _check_split(split, ("train", "valid", "test", "all"))
    if image_size is None:
        raise ValueError("celeba images are 178x218; pass image_size=<int> (e.g. 64)")
    root = Path(root or default_root())
    paths, attrs = _celeba_files(root, split, download)
    labels, classes = None, None
    if attribute is not None:
        if attrs is None or attribute not in attrs.columns:
            known = [] if attrs is None else list(attrs.columns)
            raise ValueError(f"attribute must be one of the CelebA attributes {known}; got {attribute!r}")
        values = attrs[attribute].reindex([p.name for p in paths]).to_numpy()
        labels, classes = (values > 0).astype(np.int64), [f"not {attribute}", attribute]
    return _from_files("celeba", paths, labels, classes, image_size, crop, min_size, limit, seed, progress)
