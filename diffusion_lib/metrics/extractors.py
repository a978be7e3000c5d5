"""Feature extractors for FID / KID / IS, and the caches of what they compute.

Two extractors, whose numbers are NOT comparable (every result names its extractor):

* ``"inception-v3"``: the standard Inception network of FID (Heusel et al. 2017), as
  torch-fidelity implements it, when its weights file is in the local torch cache
  (``torch.hub.get_dir()/checkpoints/weights-inception-2015-12-05-6726825d.pth``; the
  Docker image bakes it in). Features: 2048-d pool3; IS logits: the 1008 "unbiased" logits.
* ``"domain-classifier:<dataset>:<hash>"``: otherwise, the small CNN of
  :mod:`diffusion_lib.models.classifier` trained on the real labelled images of that dataset
  (saved as a "classifier" artifact in the cache folder and reused). Features: its penultimate
  layer; IS logits: its class logits.

Nothing is ever downloaded: the weights file is looked up on disk first. Every image is quantised
to 8 bits first (``to_uint8``), as it would be when saved as PNG, so real and generated images pass
through the same pipeline. Real-image features are cached per dataset, extractor and image content
(artifact kind "features").
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..artifacts import load_artifact, save_artifact
from ..classifier_training import load_classifier, save_classifier, train_classifier
from ..device import resolve_device
from ..images import from_uint8, to_uint8
from ..models.classifier import Classifier
from .scores import check_images, class_accuracy

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                         "weights-inception-2015-12-05-6726825d.pth")
INCEPTION_NAME = "inception-v3"
FEATURES_KIND = "features"


# ----------------------------------------------------------------------------- cache helpers

def default_cache_dir() -> Path:
    """Folder for domain classifiers and real-image features: ``$DIFFUSION_LIB_CACHE/metrics``,
    default ``~/.cache/diffusion_lib/metrics``."""
    return Path(os.environ.get("DIFFUSION_LIB_CACHE", Path.home() / ".cache" / "diffusion_lib")) / "metrics"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def content_hash(images: torch.Tensor, labels: torch.Tensor | None = None, extra: dict | None = None) -> str:
    """12-hex-character SHA-256 of the 8-bit images (and labels, and a JSON dict), for cache keys.

    Args:
        images: float (N, C, H, W) in [-1, 1]; hashed as the uint8 pixels ``to_uint8`` gives.
        labels: optional int tensor (N,).
        extra: optional JSON-serialisable settings that also identify the cached object.
    """
    h = hashlib.sha256(repr(tuple(images.shape)).encode())
    for start in range(0, images.shape[0], 1024):
        h.update(to_uint8(images[start:start + 1024]).tobytes())
    if labels is not None:
        h.update(torch.as_tensor(labels).to(torch.int64).cpu().numpy().tobytes())
    if extra:
        h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()[:12]


def _quantise(images: torch.Tensor) -> torch.Tensor:
    """Round-trip through 8 bits, as saving to PNG would."""
    return from_uint8(to_uint8(images))


# ----------------------------------------------------------------------------- extractors

@dataclass
class Features:
    """Extractor output for N images: ``features`` float64 (N, D) and ``logits`` float64 (N, K), CPU."""

    features: torch.Tensor
    logits: torch.Tensor


def inception_weights_path() -> Path:
    """Where the FID Inception weights must be for offline use (torch-fidelity's file name in the
    torch hub cache, the same place ``torch.hub.load_state_dict_from_url`` would store it)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def inception_available() -> bool:
    """True when the Inception weights file exists locally and torch-fidelity is installed."""
    return inception_weights_path().is_file() and importlib.util.find_spec("torch_fidelity") is not None


class InceptionExtractor:
    """The standard FID Inception-v3 (torch-fidelity's port of the TF graph), loaded from disk only.

    Args:
        weights_path: the weights file; default :func:`inception_weights_path`.
        device: "auto" or a torch device.
        batch_size: images per forward pass.

    Raises:
        FileNotFoundError: if the weights file is absent (it is never downloaded here).
        ModuleNotFoundError: if torch-fidelity is not installed.
    """

    name = INCEPTION_NAME
    progress = False  # set True for a progress bar over the batches of a call

    def __init__(self, weights_path: str | os.PathLike | None = None, device: str | torch.device = "auto",
                 batch_size: int = 64):
        path = Path(weights_path) if weights_path is not None else inception_weights_path()
        if not path.is_file():
            raise FileNotFoundError(f"Inception weights not found at {path}; download {INCEPTION_WEIGHTS_URL} "
                                    "there (the Docker image does), or use extractor='domain'")
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                               feature_extractor_weights_path=str(path)).to(self.device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> Features:
        """Features of float images (N, C, H, W) in [-1, 1]; grey images are repeated to RGB, and
        every image is resized to 299 x 299 inside the network.

        Raises:
            ValueError: bad images (see :func:`~diffusion_lib.metrics.scores.check_images`).
        """
        images = check_images(images)
        feats, logits = [], []
        for start in tqdm(range(0, images.shape[0], self.batch_size), desc="Inception features",
                          disable=not self.progress, leave=False):
            pixels = torch.from_numpy(to_uint8(images[start:start + self.batch_size])).permute(0, 3, 1, 2)
            pixels = pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels
            f, lg = self.net(pixels.contiguous().to(self.device))
            feats.append(f.double().cpu())
            logits.append(lg.double().cpu())
        return Features(torch.cat(feats), torch.cat(logits))


class ClassifierExtractor:
    """Features and logits of a :class:`~diffusion_lib.models.classifier.Classifier`.

    Args:
        classifier: the network (used on its own device, in eval mode; a time-conditional one
            is given t = 0).
        name: the extractor name recorded in results, e.g. ``"domain-classifier:digits:ab12..."``.
        image_shape: (C, H, W) it was trained on; inputs of another shape are refused.
        batch_size: images per forward pass.
        meta: free-form information (e.g. validation accuracy) kept for reports.
    """

    progress = False  # set True for a progress bar over the batches of a call

    def __init__(self, classifier: Classifier, name: str, image_shape: tuple[int, int, int] | None = None,
                 batch_size: int = 256, meta: dict | None = None):
        self.classifier, self.name = classifier.eval(), name
        self.image_shape = tuple(image_shape) if image_shape is not None else None
        self.batch_size, self.meta = batch_size, dict(meta or {})

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> Features:
        """Features (N, D) and logits (N, K) of float images (N, C, H, W) in [-1, 1].

        Raises:
            ValueError: bad images, or images of another (C, H, W) than the classifier was trained on.
        """
        images = check_images(images)
        if self.image_shape is not None and tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"extractor {self.name} was trained on images of shape {self.image_shape}; "
                             f"got {tuple(images.shape[1:])}")
        device = next(self.classifier.parameters()).device
        feats, logits = [], []
        for start in tqdm(range(0, images.shape[0], self.batch_size), desc="domain features",
                          disable=not self.progress, leave=False):
            x = _quantise(images[start:start + self.batch_size]).to(device)
            t = torch.zeros(x.shape[0], dtype=torch.long, device=device) if self.classifier.time_conditional else None
            f = self.classifier.features(x, t)
            feats.append(f.double().cpu())
            logits.append(self.classifier.head(f).double().cpu())
        return Features(torch.cat(feats), torch.cat(logits))


def domain_extractor(real: torch.Tensor, real_labels: torch.Tensor, *, dataset: str = "custom",
                     cache_dir: str | os.PathLike | None = None, device: str | torch.device = "auto",
                     steps: int | None = None, batch_size: int = 128, base_channels: int = 32, seed: int = 0,
                     val_fraction: float = 0.1, progress: bool = False) -> ClassifierExtractor:
    """The domain feature extractor of a dataset: a Classifier trained on its real labelled images.

    Trained once and cached as ``<cache_dir>/domain_classifier-<dataset>-<hash>.pt`` (a
    "classifier" artifact), where the hash covers the 8-bit images, the labels and the training
    settings; later calls load it (an unreadable cache file is retrained, with a warning).
    A random ``val_fraction`` of the images is held out to report its validation accuracy.

    Args:
        real: float (N, C, H, W) in [-1, 1], the real images.
        real_labels: int64 (N,) class labels, at least two classes.
        dataset: a name for the data, used in the extractor name and file name.
        cache_dir: default :func:`default_cache_dir`.
        device: "auto" or a torch device, for training and extraction.
        steps: training steps; default 5 epochs, clipped to [200, 5000] steps.
        batch_size, base_channels, seed: training settings (see ``train_classifier``).
        val_fraction: share of images held out for the validation accuracy, in [0, 0.5].
        progress: progress bar while training (not part of the cache key).

    Returns:
        a ClassifierExtractor named ``"domain-classifier:<dataset>:<hash>"`` whose ``meta`` holds
        ``val_accuracy``.

    Raises:
        ValueError: bad images or labels.
    """
    real = check_images(real, "real")
    labels = torch.as_tensor(real_labels).long().cpu()
    if labels.shape != (real.shape[0],):
        raise ValueError(f"real_labels must have shape ({real.shape[0]},); got {tuple(labels.shape)}")
    if labels.min() < 0:
        raise ValueError(f"real_labels must be >= 0; got min {int(labels.min())}")
    if not 0.0 <= val_fraction <= 0.5:
        raise ValueError(f"val_fraction must be in [0, 0.5]; got {val_fraction!r}")
    num_classes = max(int(labels.max()) + 1, 2)
    if steps is None:
        steps = min(5000, max(200, math.ceil(5 * real.shape[0] / batch_size)))
    settings = dict(steps=steps, batch_size=batch_size, base_channels=base_channels, seed=seed,
                    val_fraction=val_fraction, num_classes=num_classes, version=1)
    key = content_hash(real, labels, settings)
    path = Path(cache_dir or default_cache_dir()) / f"domain_classifier-{_slug(dataset)}-{key}.pt"
    name = f"domain-classifier:{dataset}:{key}"
    if path.is_file():
        try:
            model, meta = load_classifier(path, device=device)
            return ClassifierExtractor(model, name, image_shape=tuple(meta["image_shape"]), meta=meta)
        except ValueError as error:  # e.g. a file of an older library: retrain and overwrite it
            warnings.warn(f"retraining the domain classifier: {error}", stacklevel=2)
    real_q = _quantise(real)
    perm = torch.randperm(real.shape[0], generator=torch.Generator().manual_seed(seed))
    n_val = int(round(val_fraction * real.shape[0]))
    val, train = perm[:n_val], perm[n_val:]
    with torch.random.fork_rng(devices=[]):  # seeded initial weights, caller's global RNG untouched
        torch.manual_seed(seed)
        model = Classifier(real.shape[1], num_classes, base_channels=base_channels)
    train_classifier(model, real_q[train], labels[train], steps=steps, batch_size=batch_size, seed=seed,
                     device=device, progress=progress)
    val_accuracy = class_accuracy(real_q[val], labels[val], model) if n_val else None
    meta = dict(dataset=dataset, hash=key, image_shape=list(real.shape[1:]), val_accuracy=val_accuracy,
                num_images=real.shape[0], **settings)
    save_classifier(model, path, meta)
    return ClassifierExtractor(model, name, image_shape=tuple(meta["image_shape"]), meta=meta)


def real_features(real: torch.Tensor, extractor, *, dataset: str = "custom",
                  cache_dir: str | os.PathLike | None = None) -> Features:
    """Features of the real images, cached per dataset, extractor and image content.

    File: ``<cache_dir>/real_features-<dataset>-<extractor>-<hash>.pt``, a "features" artifact whose
    payload holds the extractor name and float32 ``features`` and ``logits`` (written atomically;
    N x D x 4 bytes, e.g. 80 MB for 10k Inception features). An unreadable or mismatching file is
    rebuilt (with a warning when unreadable).

    Args:
        real: float (N, C, H, W) in [-1, 1].
        extractor: an InceptionExtractor or ClassifierExtractor.
        dataset: name used in the file name.
        cache_dir: default :func:`default_cache_dir`; ``False`` disables caching.

    Returns:
        Features of the N images (float64, CPU).
    """
    if cache_dir is False:
        return extractor(real)
    key = content_hash(real)
    path = Path(cache_dir or default_cache_dir()) / f"real_features-{_slug(dataset)}-{_slug(extractor.name)}-{key}.pt"
    if path.is_file():
        try:
            d = load_artifact(path, FEATURES_KIND, required=("extractor", "features", "logits"))
            if d["extractor"] == extractor.name and d["features"].shape[0] == real.shape[0]:
                return Features(d["features"].double(), d["logits"].double())
        except ValueError as error:  # a broken or foreign cache file is rebuilt
            warnings.warn(f"ignoring unreadable feature cache {path}: {error}", stacklevel=2)
    out = extractor(real)
    save_artifact(path, FEATURES_KIND, {"extractor": extractor.name, "features": out.features.float(),
                                        "logits": out.logits.float()})
    return out
