"""The one entry point that scores generated images, and the report table of its result.

:func:`evaluate_samples` picks a feature extractor (:mod:`diffusion_lib.metrics.extractors`), extracts
features of the samples (and, cached, of the real images) and computes the scores of
:mod:`diffusion_lib.metrics.scores`: FID, KID, IS, diversity and class accuracy. Its
:class:`EvaluationResult` names the extractor (scores of different extractors are not comparable);
:func:`format_report` turns it into the table ``python -m diffusion_lib evaluate`` prints.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..data.dataset import ImageDataset
from ..images import from_uint8
from ..models.classifier import Classifier
from .extractors import (ClassifierExtractor, InceptionExtractor, domain_extractor, inception_available,
                         inception_weights_path, real_features)
from .scores import (check_images, class_accuracy, diversity, frechet_distance, inception_score,
                     kernel_inception_distance)

METRICS = ("fid", "kid", "is", "diversity", "accuracy")


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


def _resolve_extractor(extractor, real, real_labels, classifier, dataset, cache_dir, device, domain_steps,
                       progress=False):
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
                                steps=domain_steps, progress=progress)
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
                     domain_steps: int | None = None, seed: int = 0, progress: bool = False) -> EvaluationResult:
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
            :func:`~diffusion_lib.metrics.extractors.default_cache_dir`; ``False`` disables the real-feature cache.
        device: "auto" or a torch device, for feature extraction and training.
        progress: progress bars for domain-classifier training and feature extraction.
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
        ext = _resolve_extractor(extractor, real, real_labels, classifier, dataset, cache_dir, device, domain_steps,
                                 progress)
        if progress and hasattr(ext, "progress"):  # the library's extractors: a bar over feature batches
            ext.progress = True
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


def format_report(result: EvaluationResult, title: str | None = None) -> str:
    """The plain-text table of an evaluation, as ``python -m diffusion_lib evaluate`` prints it.

    Lines: ``title`` (if given); the extractor (with the warning that scores of different extractors
    are not comparable); one line per score (FID, KID, IS, diversity, class accuracy; "-" when not
    computed), KID with its std and subset size and IS with its std and splits; one ``note:`` line per note.

    Args:
        result: the output of :func:`evaluate_samples`.
        title: optional first line, e.g. which checkpoint and sampler produced the samples.

    Returns:
        The table, lines joined by newlines, no trailing newline.
    """
    r = result
    kid = None if r.kid_mean is None else f"{r.kid_mean:.5f} ± {r.kid_std:.5f} (subsets of {r.kid_subset_size})"
    inception = None if r.is_mean is None else f"{r.is_mean:.3f}" + (
        f" ± {r.is_std:.3f} ({r.is_splits} splits)" if r.is_std is not None else " (1 split)")
    rows = [("FID (lower is better)", None if r.fid is None else f"{r.fid:.4f}"),
            ("KID (lower is better)", kid), ("IS (higher is better)", inception),
            ("diversity", None if r.diversity is None else f"{r.diversity:.4f}"),
            ("class accuracy", None if r.class_accuracy is None else f"{r.class_accuracy:.3f}")]
    lines = [title] if title else []
    lines.append(f"extractor: {r.extractor} (scores of different extractors are not comparable)")
    width = max(len(name) for name, _ in rows)
    lines += [f"  {name:<{width}}  {'-' if value is None else value}" for name, value in rows]
    lines += [f"note: {note}" for note in r.notes]
    return "\n".join(lines)
