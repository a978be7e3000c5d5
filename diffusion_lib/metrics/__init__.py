"""Scoring generated images: FID, KID, Inception Score, diversity and class accuracy, one entry point.

Three modules, read in this order:

- :mod:`.scores`: the scores (FID, KID, IS by torchmetrics on features; diversity, paired distance and
  class accuracy on images) and the image check they share;
- :mod:`.extractors`: the feature networks (Inception-v3 from local weights, or a domain classifier
  trained on the real images) and the caches of domain classifiers and real-image features;
- :mod:`.evaluate`: :func:`evaluate_samples`, the one entry point, its :class:`EvaluationResult` and
  :func:`format_report`, the table the CLI prints.

Every name is re-exported here and loaded on first use (``from diffusion_lib.metrics import
evaluate_samples`` or ``metrics.diversity``), so importing this package costs nothing until a score is asked for.
"""

from __future__ import annotations

from .._lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "scores": ("check_images", "frechet_distance", "kernel_inception_distance", "inception_score", "diversity",
               "paired_distance", "class_accuracy"),
    "extractors": ("INCEPTION_WEIGHTS_FILE", "INCEPTION_WEIGHTS_URL", "INCEPTION_NAME", "default_cache_dir",
                   "content_hash", "Features", "inception_weights_path", "inception_available", "InceptionExtractor",
                   "ClassifierExtractor", "domain_extractor", "real_features"),
    "evaluate": ("METRICS", "EvaluationResult", "evaluate_samples", "format_report"),
})
