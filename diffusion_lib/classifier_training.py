"""Training the small CNN classifier (clean, or noise-conditioned for classifier guidance), and its file.

The network is :class:`diffusion_lib.models.classifier.Classifier` (``models`` holds networks only);
here live the loop that fits it and the artifact it is saved as:

- :func:`train_classifier`: cross-entropy on random minibatches (AdamW, cosine decay). With a noise
  schedule each image is first noised by :func:`diffusion_lib.diffusion.q_sample` (Ho et al. 2020,
  eq. 4), so the classifier learns p(y | x_t, t) (Dhariwal & Nichol 2021, sec. 4).
- :func:`save_classifier` / :func:`load_classifier`: one "classifier" artifact of
  :mod:`diffusion_lib.checkpoint` (payload: ``config``, ``state_dict``, ``meta``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .artifacts import load_artifact, save_artifact
from .device import resolve_device
from .diffusion import q_sample
from .models.classifier import Classifier

CLASSIFIER_KIND = "classifier"
CLASSIFIER_VERSION = 1


@dataclass
class TrainingHistory:
    """Per-step record of :func:`train_classifier`: cross-entropy loss (nats) and batch accuracy."""

    losses: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)


def train_classifier(model: Classifier, images: torch.Tensor, labels: torch.Tensor, *, steps: int = 500,
                     batch_size: int = 128, lr: float = 2e-3, weight_decay: float = 1e-4,
                     generator: torch.Generator | None = None, seed: int | None = None,
                     device: str | torch.device = "auto", noise_schedule=None, progress: bool = False) -> TrainingHistory:
    """Train ``model`` with cross-entropy on random minibatches (AdamW, cosine learning-rate decay).

    With ``noise_schedule`` the classifier learns p(y | x_t, t) for classifier guidance
    (Dhariwal & Nichol 2021, sec. 4): each image is noised to a uniformly drawn t in [0, T-1] with
    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, eps ~ N(0, I) (:func:`~diffusion_lib.diffusion.q_sample`,
    Ho et al. 2020, eq. 4). Labels and timesteps are validated here, once, not in the network's forward.

    Args:
        model: the classifier, trained in place and left in eval mode on ``device``.
        images: float tensor (N, C, H, W) in [-1, 1], any device.
        labels: int64 tensor (N,) in [0, num_classes-1].
        steps: optimisation steps (>= 1).
        batch_size: minibatch size (>= 1; capped at N).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay.
        generator: CPU ``torch.Generator`` for batches, timesteps and noise; or
        seed: seed of a fresh generator (used when ``generator`` is None; default 0).
        device: "auto" (cuda, then mps, then cpu) or a torch device.
        noise_schedule: None for a clean classifier, or a ``NoiseSchedule`` whose T equals the
            classifier's ``num_train_timesteps`` (when set); the model must then be time-conditional.
        progress: show a tqdm progress bar over the steps.

    Returns:
        TrainingHistory with one loss and one batch accuracy per step.

    Raises:
        ValueError: mismatched or malformed images/labels, bad steps/batch_size, a noise schedule
            given to a classifier that is not time-conditional (or the reverse), or one of another T.
    """
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor (N, C, H, W); got {tuple(images.shape)} {images.dtype}")
    labels = torch.as_tensor(labels)
    if labels.shape != (images.shape[0],) or labels.is_floating_point():
        raise ValueError(f"labels must be int64 of shape ({images.shape[0]},); got {tuple(labels.shape)} {labels.dtype}")
    if labels.min() < 0 or labels.max() >= model.num_classes:
        raise ValueError(f"labels must lie in [0, {model.num_classes - 1}]; got [{int(labels.min())}, {int(labels.max())}]")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int; got {steps!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    if (noise_schedule is not None) != model.time_conditional:
        raise ValueError("a noise_schedule needs a time-conditional classifier and vice versa; got "
                         f"noise_schedule={'set' if noise_schedule is not None else None}, "
                         f"time_conditional={model.time_conditional}")
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
    device = resolve_device(device)
    model.to(device).train()
    images, labels = images.to(device, torch.float32), labels.to(device, torch.long)
    if noise_schedule is not None:
        T = noise_schedule.num_train_timesteps
        if model.num_train_timesteps is not None and T != model.num_train_timesteps:
            raise ValueError(f"noise schedule has T={T}; the classifier expects T={model.num_train_timesteps}")
        noise_schedule = noise_schedule.to(device)

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    history = TrainingHistory()
    batch_size = min(batch_size, images.shape[0])
    for _ in tqdm(range(steps), desc="training classifier", disable=not progress, leave=False):
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=generator).to(device)
        x, y, t = images[idx], labels[idx], None
        if noise_schedule is not None:
            t = torch.randint(0, T, (batch_size,), generator=generator).to(device)
            eps = torch.randn(x.shape, generator=generator).to(device)
            x = q_sample(noise_schedule, x, t, eps)
        logits = model(x, t)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        history.losses.append(loss.item())
        history.accuracies.append((logits.argmax(1) == y).float().mean().item())
    model.eval()
    return history


def save_classifier(model: Classifier, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write the classifier (config + weights + ``meta``) as one "classifier" artifact, atomically.

    Args:
        model: the classifier.
        path: destination file (parent folders are created).
        meta: optional JSON-like dict stored alongside (dataset name, accuracy, ...).

    Returns:
        the path written.
    """
    payload = {"config": dict(model.config), "meta": dict(meta or {}),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    return save_artifact(path, CLASSIFIER_KIND, payload, CLASSIFIER_VERSION)


def load_classifier(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Classifier, dict]:
    """Load a file written by :func:`save_classifier`, validating it.

    Args:
        path: the file.
        device: where to put the model ("auto" allowed).

    Returns:
        (model in eval mode on ``device``, meta dict).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is unreadable, not a "classifier" artifact of a supported version
            (see :func:`~diffusion_lib.artifacts.load_artifact`), or its weights do not match its config.
            Each message names the file.
    """
    payload = load_artifact(path, CLASSIFIER_KIND, CLASSIFIER_VERSION, required=("config", "state_dict"))
    config = dict(payload["config"])
    config["channel_mults"] = tuple(config["channel_mults"])
    try:
        model = Classifier(**config)
        model.load_state_dict(payload["state_dict"])
    except (TypeError, RuntimeError) as err:
        raise ValueError(f"{path}: weights do not match the stored config: {err}") from err
    return model.to(resolve_device(device)).eval(), dict(payload.get("meta", {}))
