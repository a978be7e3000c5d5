"""Guidance experiments: sweep the guidance strength, score the samples, compare methods.

The guidance rules live in :mod:`diffusion_lib.guidance` (classifier-free guidance, Ho & Salimans
2022, and classifier guidance, Dhariwal & Nichol 2021) and are applied by :mod:`diffusion_lib.sampling`.
Here one call samples the same labels from the same starting noise at every scale and measures what
guidance trades:

- ``class_accuracy``: share of samples a judge classifier (trained on real, clean images) assigns to
  the class they were generated for (:func:`diffusion_lib.metrics.class_accuracy`);
- ``diversity``: mean pairwise distance of all samples (:func:`diffusion_lib.metrics.diversity`);
- ``within_class_diversity``: the same inside each class, averaged over classes. Guidance lowers it
  first: samples of one class become alike.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import pandas as pd
import torch
from torch import nn

from ..metrics import class_accuracy, diversity
from ..sampling import sample

METHODS = ("classifier-free", "classifier")


@dataclass
class SweepResult:
    """``table``: one row per scale (columns method, scale, class_accuracy, diversity, within_class_diversity,
    seconds); ``samples``: scale -> images (N, C, H, W) in [-1, 1] on the CPU; ``labels``: int64 (N,), the same
    for every scale."""

    table: pd.DataFrame
    samples: dict[float, torch.Tensor]
    labels: torch.Tensor


def within_class_diversity(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes of :func:`~diffusion_lib.metrics.diversity` of that class's images.

    Args:
        images: float (N, C, H, W) in [-1, 1].
        labels: int (N,); classes with fewer than 2 images are skipped.

    Returns:
        The mean diversity, in [0, 2].

    Raises:
        ValueError: no class has 2 images.
    """
    labels = torch.as_tensor(labels).cpu()
    scores = [diversity(images[labels == c]) for c in labels.unique().tolist() if int((labels == c).sum()) >= 2]
    if not scores:
        raise ValueError("within-class diversity needs at least one class with 2 or more images")
    return sum(scores) / len(scores)


@torch.no_grad()
def guidance_sweep(model: nn.Module, schedule: nn.Module, judge: nn.Module, scales: Sequence[float], *,
                   image_shape: Sequence[int], classes: Sequence[int], samples_per_class: int = 10,
                   method: str = "classifier-free", classifier: nn.Module | None = None,
                   guidance_scale: float = 0.0, sampler: str = "ddim", num_inference_steps: int = 50,
                   prediction_type: str = "epsilon", batch_size: int = 500, seed: int = 0) -> SweepResult:
    """Sample every class at each guidance scale and score the samples.

    With ``method="classifier-free"`` the scale is the classifier-free w (eps = eps_uncond + w (eps_cond -
    eps_uncond); 0 unconditional, 1 conditional, > 1 guided). With ``method="classifier"`` it is the
    classifier-guidance scale s (eps^ = eps - s sqrt(1 - alpha_bar_t) grad log p(y | x_t); Dhariwal & Nichol
    2021, eq. 14), applied on top of the model's prediction at ``guidance_scale`` (default 0: the
    unconditional branch of a ConditionalUNet).

    Args:
        model: a ConditionalUNet (labels are passed to the sampler), in eval mode.
        schedule: its NoiseSchedule.
        judge: classifier trained on clean real images, ``judge(x) -> logits``.
        scales: guidance scales to try (>= 0).
        image_shape: (C, H, W) of the samples.
        classes: the class labels to sample.
        samples_per_class: images per class (>= 2 for within-class diversity).
        method: one of :data:`METHODS`.
        classifier: the noise-conditioned classifier ``classifier(x_t, t)`` for ``method="classifier"``.
        guidance_scale: classifier-free w used under classifier guidance.
        sampler, num_inference_steps, prediction_type: passed to :func:`diffusion_lib.sampling.sample`.
        batch_size: images generated at once.
        seed: the same seed is used at every scale, so each scale starts from the same noise.

    Returns:
        :class:`SweepResult`.

    Raises:
        ValueError: unknown method, classifier guidance without a classifier, empty ``classes`` or
            ``scales``, or fewer than 2 samples per class.
    """
    if method not in METHODS:
        raise ValueError(f"unknown guidance method {method!r}; accepted: {list(METHODS)}")
    if method == "classifier" and classifier is None:
        raise ValueError("method='classifier' needs the noise-conditioned classifier= (see models/classifier.py)")
    if not scales or not classes:
        raise ValueError(f"scales and classes must be non-empty; got scales={list(scales)}, classes={list(classes)}")
    if samples_per_class < 2:
        raise ValueError(f"samples_per_class must be >= 2; got {samples_per_class}")
    device = next(model.parameters()).device
    labels = torch.as_tensor(list(classes), dtype=torch.long).repeat(samples_per_class)
    rows, samples = [], {}
    for scale in scales:
        if method == "classifier-free":
            options = {"guidance_scale": float(scale)}
        else:
            options = {"guidance_scale": guidance_scale, "classifier": classifier, "classifier_scale": float(scale)}
        generator = torch.Generator(device).manual_seed(seed)
        start, images = time.perf_counter(), []
        for first in range(0, len(labels), batch_size):
            y = labels[first:first + batch_size].to(device)
            out = sample(model, schedule, sampler, shape=(len(y), *image_shape), y=y, generator=generator,
                         num_inference_steps=num_inference_steps, prediction_type=prediction_type, **options)
            images.append(out.images.cpu())
        images = torch.cat(images)
        samples[float(scale)] = images
        rows.append({"method": method, "scale": float(scale), "class_accuracy": class_accuracy(images, labels, judge),
                     "diversity": diversity(images), "within_class_diversity": within_class_diversity(images, labels),
                     "seconds": time.perf_counter() - start})
    return SweepResult(pd.DataFrame(rows), samples, labels)
