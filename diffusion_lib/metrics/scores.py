"""The scores themselves: FID, KID and IS on extracted features, diversity and class accuracy on images.

FID, KID and IS are computed by torchmetrics (``FrechetInceptionDistance``, ``KernelInceptionDistance``,
``InceptionScore``) on features a feature extractor (:mod:`diffusion_lib.metrics.extractors`) gave once,
so real-image features can be cached. torchmetrics is imported on first use, so ``diversity`` and
``class_accuracy`` work without the ``metrics`` extra.

Images here are library images: float (N, C, H, W) in [-1, 1], checked by :func:`check_images`.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from ..device import resolve_device

_RANGE_TOLERANCE = 1e-3


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


# ----------------------------------------------------------------------------- statistics of features

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
    from torchmetrics.image.fid import FrechetInceptionDistance

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
    from torchmetrics.image.kid import KernelInceptionDistance

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
    from torchmetrics.image.inception import InceptionScore

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


# ----------------------------------------------------------------------------- scores of images

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


def paired_distance(images: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean distance between each image and its partner in ``reference``, normalised per pixel value.

    distance = 1 / N * sum_i ||x_i - r_i||_2 / sqrt(D), D = C*H*W: the root-mean-square per-value
    difference, averaged over the pairs (the units of :func:`diversity`: 0 for identical images, at
    most 2). Used to ask how far a cheap sampler lands from a reference run started from the same noise.

    Args:
        images: float (N, C, H, W) in [-1, 1].
        reference: float (N, C, H, W) in [-1, 1], image i paired with ``images[i]``.

    Raises:
        ValueError: bad images, or shapes that differ.
    """
    x, r = check_images(images), check_images(reference, "reference")
    if x.shape != r.shape:
        raise ValueError(f"images and reference must have one shape; got {tuple(x.shape)} and {tuple(r.shape)}")
    per_image = (x - r).flatten(1).double().norm(dim=1) / math.sqrt(x[0].numel())
    return float(per_image.mean())


@torch.no_grad()
def class_accuracy(images: torch.Tensor, labels: torch.Tensor, classifier: nn.Module, batch_size: int = 256,
                   check_range: bool = True) -> float:
    """Share of images the classifier assigns to their intended label (argmax of logits).

    Inputs are validated here, once (the classifier's ``forward`` does not read them on the host).

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
