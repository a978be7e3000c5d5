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

import importlib

_EXPORTS = {
    "scores": ("check_images", "frechet_distance", "kernel_inception_distance", "inception_score", "diversity",
               "paired_distance", "class_accuracy"),
    "extractors": ("INCEPTION_WEIGHTS_FILE", "INCEPTION_WEIGHTS_URL", "INCEPTION_NAME", "default_cache_dir",
                   "content_hash", "Features", "inception_weights_path", "inception_available", "InceptionExtractor",
                   "ClassifierExtractor", "domain_extractor", "real_features"),
    "evaluate": ("METRICS", "EvaluationResult", "evaluate_samples", "format_report"),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    """Load the submodule that defines ``name`` on first use (PEP 562)."""
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
