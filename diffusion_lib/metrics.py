"""Scoring generated images: FID, KID, Inception Score, diversity and class accuracy, one entry point.

FID, KID and IS compare images through the features of a pretrained network (the *extractor*):

* ``"inception-v3"``: the standard Inception network of FID (Heusel et al. 2017), as
  torch-fidelity implements it, when its weights file is in the local torch cache
  (``torch.hub.get_dir()/checkpoints/weights-inception-2015-12-05-6726825d.pth``; the
  Docker image bakes it in). Features: 2048-d pool3; IS logits: the 1008 "unbiased" logits.
* ``"domain-classifier:<dataset>:<hash>"``: otherwise, the small CNN of
  :mod:`diffusion_lib.models.classifier` trained on the real labelled images of that dataset
  (saved and reused from the cache folder). Features: its penultimate layer; IS logits:
  its class logits.

Numbers from the two extractors are NOT comparable, so every result names its extractor.
Nothing is ever downloaded at scoring time: the weights file is looked up on disk first.

The statistics themselves are computed by torchmetrics (``FrechetInceptionDistance``,
``KernelInceptionDistance``, ``InceptionScore``) on features extracted once here, so the
real-image features can be cached per dataset and extractor.

Every image is quantised to 8 bits first (``to_uint8``), as it would be when saved as PNG,
so real and generated images pass through the same pipeline.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from .data.dataset import ImageDataset
from .images import from_uint8, to_uint8
from .atomic import atomic_save
from .device import resolve_device
from .models.classifier import Classifier, load_classifier, save_classifier, train_classifier

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                         "weights-inception-2015-12-05-6726825d.pth")
INCEPTION_NAME = "inception-v3"
METRICS = ("fid", "kid", "is", "diversity", "accuracy")
_RANGE_TOLERANCE = 1e-3


# ----------------------------------------------------------------------------- helpers

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


def check_images(images, name: str = "images", check_range: bool = True) -> torch.Tensor:
    """Validate a batch of library images and return it (float32, CPU).

    Args:
        images: float (N, C, H, W) in [-1, 1].
        name: how error messages call the argument.
        check_range: require values in [-1, 1]; False accepts any finite values (noisy x_t).

    Raises:
        ValueError: not a tensor, not float, not (N, C, H, W) with C in {1, 3} and H, W >= 8,
            empty, non-finite, or (with ``check_range``) values outside [-1, 1] beyond a 1e-3 tolerance.
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor (N, C, H, W) in [-1, 1]; got {type(images).__name__}")
    if not images.is_floating_point():
        raise ValueError(f"{name} must be float in [-1, 1]; got dtype {images.dtype} "
                         "(convert uint8 NHWC pixels with diffusion_lib.images.from_uint8)")
    if images.ndim != 4 or images.shape[1] not in (1, 3) or min(images.shape[-2:]) < 8 or images.shape[0] < 1:
        raise ValueError(f"{name} must be (N, C, H, W) with N >= 1, C in {{1, 3}}, H, W >= 8; "
                         f"got shape {tuple(images.shape)}")
    images = images.detach().float().cpu()
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contains NaN or inf")
    lo, hi = images.min().item(), images.max().item()
    if check_range and (lo < -1 - _RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE):
        raise ValueError(f"{name} must lie in [-1, 1]; got values in [{lo:.3g}, {hi:.3g}] "
                         "(clamp samples, or convert [0, 1] images with x * 2 - 1)")
    return images


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
        every image is resized to 299 x 299 inside the network."""
        feats, logits = [], []
        for start in range(0, images.shape[0], self.batch_size):
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

    def __init__(self, classifier: Classifier, name: str, image_shape: tuple[int, int, int] | None = None,
                 batch_size: int = 256, meta: dict | None = None):
        self.classifier, self.name = classifier.eval(), name
        self.image_shape = tuple(image_shape) if image_shape is not None else None
        self.batch_size, self.meta = batch_size, dict(meta or {})

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> Features:
        """Features (N, D) and logits (N, K) of float images (N, C, H, W) in [-1, 1]."""
        if self.image_shape is not None and tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"extractor {self.name} was trained on images of shape {self.image_shape}; "
                             f"got {tuple(images.shape[1:])}")
        device = next(self.classifier.parameters()).device
        feats, logits = [], []
        for start in range(0, images.shape[0], self.batch_size):
            x = _quantise(images[start:start + self.batch_size]).to(device)
            t = torch.zeros(x.shape[0], dtype=torch.long, device=device) if self.classifier.time_conditional else None
            f = self.classifier.features(x, t)
            feats.append(f.double().cpu())
            logits.append(self.classifier.head(f).double().cpu())
        return Features(torch.cat(feats), torch.cat(logits))


def domain_extractor(real: torch.Tensor, real_labels: torch.Tensor, *, dataset: str = "custom",
                     cache_dir: str | os.PathLike | None = None, device: str | torch.device = "auto",
                     steps: int | None = None, batch_size: int = 128, base_channels: int = 32, seed: int = 0,
                     val_fraction: float = 0.1) -> ClassifierExtractor:
    """The domain feature extractor of a dataset: a Classifier trained on its real labelled images.

    Trained once and cached as ``<cache_dir>/domain_classifier-<dataset>-<hash>.pt``, where the
    hash covers the 8-bit images, the labels and the training settings; later calls load it.
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
        model, meta = load_classifier(path, device=device)
    else:
        real_q = _quantise(real)
        perm = torch.randperm(real.shape[0], generator=torch.Generator().manual_seed(seed))
        n_val = int(round(val_fraction * real.shape[0]))
        val, train = perm[:n_val], perm[n_val:]
        with torch.random.fork_rng(devices=[]):  # seeded initial weights, caller's global RNG untouched
            torch.manual_seed(seed)
            model = Classifier(real.shape[1], num_classes, base_channels=base_channels)
        train_classifier(model, real_q[train], labels[train], steps=steps, batch_size=batch_size, seed=seed,
                         device=device)
        val_accuracy = class_accuracy(real_q[val], labels[val], model) if n_val else None
        meta = dict(dataset=dataset, hash=key, image_shape=list(real.shape[1:]), val_accuracy=val_accuracy,
                    num_images=real.shape[0], **settings)
        save_classifier(model, path, meta)
    return ClassifierExtractor(model, name, image_shape=tuple(meta["image_shape"]), meta=meta)


def real_features(real: torch.Tensor, extractor, *, dataset: str = "custom",
                  cache_dir: str | os.PathLike | None = None) -> Features:
    """Features of the real images, cached per dataset, extractor and image content.

    File: ``<cache_dir>/real_features-<dataset>-<extractor>-<hash>.pt`` holding float32 features
    and logits (written atomically; N x D x 4 bytes, e.g. 80 MB for 10k Inception features).

    Args:
        real: float (N, C, H, W) in [-1, 1].
        extractor: an InceptionExtractor or ClassifierExtractor.
        dataset: name used in the file name.
        cache_dir: default :func:`default_cache_dir`; ``False`` disables caching.
    """
    if cache_dir is False:
        return extractor(real)
    key = content_hash(real)
    path = Path(cache_dir or default_cache_dir()) / f"real_features-{_slug(dataset)}-{_slug(extractor.name)}-{key}.pt"
    if path.is_file():
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
            if d.get("extractor") == extractor.name and d["features"].shape[0] == real.shape[0]:
                return Features(d["features"].double(), d["logits"].double())
        except Exception:  # noqa: BLE001 - a broken cache file is rebuilt
            warnings.warn(f"ignoring unreadable feature cache {path}", stacklevel=2)
    out = extractor(real)
    atomic_save({"extractor": extractor.name, "features": out.features.float(), "logits": out.logits.float()}, path)
    return out


# ----------------------------------------------------------------------------- statistics

class _Precomputed(nn.Module):
    """Identity 'feature extractor' handing features we extracted ourselves to torchmetrics."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _check_features(features: torch.Tensor, name: str) -> torch.Tensor:
    features = torch.as_tensor(features)
    if features.ndim != 2 or not features.is_floating_point():
        raise ValueError(f"{name} must be a float tensor (N, D); got {tuple(features.shape)} {features.dtype}")
    return features.detach().double().cpu()


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID; Heusel et al. 2017, eq. 6).

    d^2 = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), with unbiased (N-1) covariances,
    computed in float64 by torchmetrics' ``FrechetInceptionDistance``.

    Args:
        features_a, features_b: float (N_a, D) and (N_b, D), N >= 2 each.

    Returns:
        the distance (>= 0 up to rounding; 0 for identical sets).

    Raises:
        ValueError: wrong shapes, different D, or fewer than 2 rows.
    """
    a, b = _check_features(features_a, "features_a"), _check_features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} and {b.shape[1]}")
    if min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(f"FID needs at least 2 samples per set; got {a.shape[0]} and {b.shape[0]}")
    metric = FrechetInceptionDistance(feature=_Precomputed(a.shape[1]))
    metric.update(a, real=True)
    metric.update(b, real=False)
    return float(metric.compute())


def kernel_inception_distance(features_a: torch.Tensor, features_b: torch.Tensor, *, subset_size: int | None = None,
                              subsets: int = 100, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD^2 with the kernel
    k(x, y) = (x.y / D + 1)^3, averaged over random subsets (torchmetrics ``KernelInceptionDistance``).

    Args:
        features_a, features_b: float (N_a, D) and (N_b, D).
        subset_size: rows per subset, 2 <= subset_size <= min(N_a, N_b); default min(1000, N_a, N_b).
        subsets: number of random subsets.
        seed: seed of the subset draws (the global RNG is left untouched).

    Returns:
        (mean, std) over subsets; about 0 for two samples of one distribution (it can be slightly
        negative: the estimator is unbiased).

    Raises:
        ValueError: different D, or a subset size larger than a set (or < 2).
    """
    a, b = _check_features(features_a, "features_a"), _check_features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} and {b.shape[1]}")
    n = min(a.shape[0], b.shape[0])
    subset_size = min(1000, n) if subset_size is None else subset_size
    if not 2 <= subset_size <= n:
        raise ValueError(f"KID subset_size must be in [2, min(N_real, N_generated) = {n}]; got {subset_size} "
                         "(generate more samples or lower kid_subset_size)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=_Precomputed(a.shape[1]), subsets=subsets, subset_size=subset_size)
    metric.update(a, real=True)
    metric.update(b, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def inception_score(logits: torch.Tensor, *, splits: int | None = None, seed: int = 0) -> tuple[float, float | None]:
    """Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), per split, by torchmetrics.

    1 when every prediction is the same (e.g. uniform); at most the number of classes K.

    Args:
        logits: float (N, K) class logits of the generated images.
        splits: number of splits, 1 <= splits <= N; default min(10, max(1, N // 50)).
        seed: seed of the shuffle before splitting.

    Returns:
        (mean, std) over splits; std is None with a single split.

    Raises:
        ValueError: bad shape or splits.
    """
    logits = _check_features(logits, "logits")
    n = logits.shape[0]
    splits = min(10, max(1, n // 50)) if splits is None else splits
    if not isinstance(splits, int) or not 1 <= splits <= n:
        raise ValueError(f"IS splits must be an int in [1, N = {n}]; got {splits!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        metric = InceptionScore(feature=_Precomputed(logits.shape[1]), splits=splits)
    metric.update(logits)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # std of a single split
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), (float(std) if splits > 1 else None)


def diversity(images: torch.Tensor, device: str | torch.device = "cpu", chunk: int = 256) -> float:
    """Mean pairwise L2 distance between images, normalised per pixel value.

    diversity = 2 / (N (N-1)) * sum_{i<j} ||x_i - x_j||_2 / sqrt(D),

    with x_i the image flattened to D = C*H*W values in [-1, 1]. It is the root-mean-square
    per-value difference averaged over pairs: 0 for identical images, at most 2; about 0.8 for
    independent uniform noise and typically 0.3-0.7 for natural datasets. It measures spread in
    pixel space, not semantic variety: shifting a digit by one pixel counts as diverse.

    Args:
        images: float (N, C, H, W) in [-1, 1], N >= 2.
        device: where to compute ("auto" allowed); exact (no Gram-matrix shortcut).
        chunk: rows per block of the distance matrix.

    Raises:
        ValueError: bad images or N < 2.
    """
    x = check_images(images).flatten(1).double().to(resolve_device(device))
    n, d = x.shape
    if n < 2:
        raise ValueError(f"diversity needs at least 2 images; got {n}")
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, n - 1, chunk):
        rows = x[start:start + chunk]
        dist = torch.cdist(rows, x[start:], compute_mode="donot_use_mm_for_euclid_dist")
        total += dist.triu(diagonal=1).sum()
    return float(total / (n * (n - 1) / 2) / math.sqrt(d))


@torch.no_grad()
def class_accuracy(images: torch.Tensor, labels: torch.Tensor, classifier: nn.Module, batch_size: int = 256,
                   check_range: bool = True) -> float:
    """Share of images the classifier assigns to their intended label (argmax of logits).

    Args:
        images: float (N, C, H, W) in [-1, 1], e.g. class-conditional samples.
        labels: int (N,) the classes they were generated for.
        classifier: a module mapping images to logits (N, K) (run on its own device, in eval
            mode; a time-conditional Classifier is given t = 0).
        batch_size: images per forward pass.
        check_range: require images in [-1, 1]; False for noisy x_t (e.g. how long a schedule keeps data recognisable).

    Returns:
        accuracy in [0, 1].

    Raises:
        ValueError: bad images, or labels of the wrong shape.
    """
    images = check_images(images, check_range=check_range)
    labels = torch.as_tensor(labels).long().cpu()
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},); got {tuple(labels.shape)}")
    was_training = classifier.training
    classifier.eval()
    device = next(classifier.parameters()).device
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].to(device)
        if getattr(classifier, "time_conditional", False):
            logits = classifier(x, torch.zeros(x.shape[0], dtype=torch.long, device=device))
        else:
            logits = classifier(x)
        correct += (logits.argmax(1).cpu() == labels[start:start + batch_size]).sum().item()
    classifier.train(was_training)
    return correct / images.shape[0]


# ----------------------------------------------------------------------------- entry point

@dataclass
class EvaluationResult:
    """Scores of one set of generated images. None = not computed.

    Attributes:
        extractor: "inception-v3" or "domain-classifier:<dataset>:<hash>" (None if no
            feature metric was computed). Scores from different extractors are not comparable.
        dataset: name of the real data.
        num_generated, num_real: sample counts.
        fid: Fréchet distance (lower is better).
        kid_mean, kid_std, kid_subset_size: KID over random subsets (lower is better).
        is_mean, is_std, is_splits: Inception Score (higher is better; at most the number of classes).
        diversity: mean pairwise per-value L2 distance (see :func:`diversity`).
        class_accuracy: share of samples classified as their intended label.
        feature_dim: D of the extractor's features.
        notes: caveats (small samples, extractor accuracy, ...).
    """

    extractor: str | None
    dataset: str
    num_generated: int
    num_real: int
    fid: float | None = None
    kid_mean: float | None = None
    kid_std: float | None = None
    kid_subset_size: int | None = None
    is_mean: float | None = None
    is_std: float | None = None
    is_splits: int | None = None
    diversity: float | None = None
    class_accuracy: float | None = None
    feature_dim: int | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain dict of every field (JSON-serialisable)."""
        return asdict(self)

    def to_row(self, **extra) -> dict:
        """Flat dict for ``pandas.DataFrame([...])``: ``extra`` columns first (e.g. model="ddpm",
        guidance_scale=3.0), notes joined by "; "."""
        row = dict(extra)
        row.update({k: v for k, v in self.to_dict().items() if k != "notes"})
        row["notes"] = "; ".join(self.notes)
        return row


def _resolve_extractor(extractor, real, real_labels, classifier, dataset, cache_dir, device, domain_steps):
    if not isinstance(extractor, str):
        return extractor
    if extractor not in ("auto", "inception", "domain"):
        raise ValueError(f"extractor must be 'auto', 'inception', 'domain' or an extractor object; got {extractor!r}")
    if extractor == "inception" or (extractor == "auto" and inception_available()):
        return InceptionExtractor(device=device)
    if real_labels is not None:
        if real is None:
            raise ValueError("a domain extractor is trained on the real images: pass real= with real_labels=")
        return domain_extractor(real, real_labels, dataset=dataset, cache_dir=cache_dir, device=device,
                                steps=domain_steps)
    if isinstance(classifier, Classifier):
        state = {k: v.cpu() for k, v in classifier.state_dict().items()}
        key = hashlib.sha256(b"".join(v.numpy().tobytes() for v in state.values())).hexdigest()[:12]
        return ClassifierExtractor(classifier, f"domain-classifier:{dataset}:{key}")
    raise ValueError(f"no Inception weights at {inception_weights_path()} and nothing to build a domain extractor "
                     "from: pass real_labels (to train one on the real images), a trained Classifier as "
                     "classifier=, or an extractor object")


def evaluate_samples(generated: torch.Tensor, real: torch.Tensor | ImageDataset | None = None, *,
                     labels: torch.Tensor | None = None, real_labels: torch.Tensor | None = None,
                     classifier: nn.Module | None = None, metrics: tuple[str, ...] | None = None,
                     extractor="auto", dataset: str | None = None,
                     cache_dir: str | os.PathLike | None = None, device: str | torch.device = "auto",
                     kid_subset_size: int | None = None, kid_subsets: int = 100, is_splits: int | None = None,
                     domain_steps: int | None = None, seed: int = 0) -> EvaluationResult:
    """Score generated images against real ones: the one entry point for every model.

    Args:
        generated: float (N, C, H, W) in [-1, 1], the samples.
        real: float (M, C, H, W) in [-1, 1], or an ImageDataset (its labels become
            ``real_labels`` and its source name ``dataset``). Needed for fid / kid and for a
            domain extractor.
        labels: int (N,) intended classes of the samples, for "accuracy".
        real_labels: int (M,) labels of the real images, to train the domain extractor (and
            judge, when ``classifier`` is None).
        classifier: judge for "accuracy"; also the extractor of last resort (no Inception
            weights, no real_labels).
        metrics: subset of ("fid", "kid", "is", "diversity", "accuracy"); None = every metric
            the inputs allow. A requested metric whose inputs are missing raises.
        extractor: "auto" (Inception when its weights are on disk, else domain), "inception",
            "domain", or an extractor object (InceptionExtractor / ClassifierExtractor).
        dataset: name of the real data for cache files and the extractor name (default: the
            ImageDataset's source name, else "custom").
        cache_dir: folder for the domain classifier and real features; default
            :func:`default_cache_dir`; ``False`` disables the real-feature cache.
        device: "auto" or a torch device, for feature extraction and training.
        kid_subset_size, kid_subsets: see :func:`kernel_inception_distance`.
        is_splits: see :func:`inception_score`.
        domain_steps: training steps of a domain classifier that is not cached yet (default:
            see :func:`domain_extractor`).
        seed: seed of KID subsets and IS splits (the domain classifier always trains with seed 0,
            so every evaluation of a dataset shares one extractor).

    Returns:
        EvaluationResult, naming the extractor and the sample counts.

    Raises:
        ValueError: bad images (dtype, range, shape), real and generated of different
            (C, H, W), too few samples for a requested metric, a requested metric without its
            inputs, or an unknown metric / extractor name.
        FileNotFoundError: extractor="inception" without the weights file.
    """
    if isinstance(real, ImageDataset):
        real_labels = real.labels if real_labels is None else real_labels
        dataset = dataset or real.info.name
        real = from_uint8(real.pixels)
    dataset = dataset or "custom"
    generated = check_images(generated, "generated")
    if real is not None:
        real = check_images(real, "real")
        if real.shape[1:] != generated.shape[1:]:
            raise ValueError(f"real and generated images differ in (C, H, W): {tuple(real.shape[1:])} vs "
                             f"{tuple(generated.shape[1:])}; resize one of them first")
    can_judge = labels is not None and (classifier is not None or (real is not None and real_labels is not None))
    if metrics is None:
        metrics = tuple(m for m in METRICS if (m in ("fid", "kid") and real is not None) or m == "diversity"
                        or (m == "is" and real is not None) or (m == "accuracy" and can_judge))
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; accepted: {METRICS}")
    if real is None and {"fid", "kid"} & set(metrics):
        raise ValueError("fid and kid need real images: pass real=")
    if "accuracy" in metrics and not can_judge:
        raise ValueError("accuracy needs labels= for the samples and a judge: classifier=, or real= with real_labels=")

    n, m = generated.shape[0], (real.shape[0] if real is not None else 0)
    result = EvaluationResult(extractor=None, dataset=dataset, num_generated=n, num_real=m)
    if {"fid", "kid", "is"} & set(metrics):
        if "fid" in metrics and min(n, m) < 2:
            raise ValueError(f"FID needs at least 2 generated and 2 real images; got {n} and {m}")
        ext = _resolve_extractor(extractor, real, real_labels, classifier, dataset, cache_dir, device, domain_steps)
        result.extractor = ext.name
        if getattr(ext, "meta", {}).get("val_accuracy") is not None:
            result.notes.append(f"domain classifier val accuracy {ext.meta['val_accuracy']:.3f}")
        fake = ext(generated)
        result.feature_dim = fake.features.shape[1]
        if real is not None and {"fid", "kid"} & set(metrics):
            ref = real_features(real, ext, dataset=dataset, cache_dir=cache_dir)
            if "fid" in metrics:
                if min(n, m) <= result.feature_dim:
                    msg = (f"FID from {min(n, m)} samples with {result.feature_dim}-d features: the covariance is "
                           "rank-deficient and FID is biased upward; compare FIDs only at equal sample counts")
                    warnings.warn(msg, stacklevel=2)
                    result.notes.append(msg)
                result.fid = frechet_distance(ref.features, fake.features)
            if "kid" in metrics:
                result.kid_subset_size = min(1000, n, m) if kid_subset_size is None else kid_subset_size
                result.kid_mean, result.kid_std = kernel_inception_distance(
                    ref.features, fake.features, subset_size=result.kid_subset_size, subsets=kid_subsets, seed=seed)
        if "is" in metrics:
            result.is_splits = min(10, max(1, n // 50)) if is_splits is None else is_splits
            result.is_mean, result.is_std = inception_score(fake.logits, splits=result.is_splits, seed=seed)
    if "diversity" in metrics:
        result.diversity = diversity(generated, device=device)
    if "accuracy" in metrics:
        judge = classifier
        if judge is None:
            judge = domain_extractor(real, real_labels, dataset=dataset, cache_dir=cache_dir, device=device,
                                     steps=domain_steps).classifier
        result.class_accuracy = class_accuracy(generated, labels, judge)
    return result
