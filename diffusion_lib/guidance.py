"""The guidance rules: classifier-free guidance and classifier guidance, and the check of their inputs.

Classifier-free guidance (Ho & Salimans 2022) mixes one network's conditional and unconditional
outputs. The scale ``w`` follows diffusers::

    out = out_uncond + w * (out_cond - out_uncond)

so w = 0 is unconditional, w = 1 conditional and w > 1 guided. Ho & Salimans (2022, eq. 6) write
the same rule as (1 + w') out_cond - w' out_uncond: their w' = our w - 1.

Classifier guidance (Dhariwal & Nichol 2021, eq. 14) shifts the predicted noise against the
gradient of a noise-conditioned classifier: eps^ = eps - s sqrt(1 - alpha_bar_t) grad log p(y | x_t).

The samplers in :mod:`diffusion_lib.sampling` apply these rules step by step; the experiments that
sweep the scales live in :mod:`diffusion_lib.experiments.guidance`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .models import is_conditional


def classifier_free_guidance(out_uncond: torch.Tensor, out_cond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """The classifier-free mix out_uncond + w (out_cond - out_uncond)  (Ho & Salimans 2022, eq. 6, with w = w' + 1).

    Guiding eps or v is the same thing: both are affine in the network output for a fixed x_t.

    Args:
        out_uncond: (B, C, H, W) network output with the null label.
        out_cond: (B, C, H, W) network output with the class labels.
        guidance_scale: w >= 0 in diffusers' convention (0 unconditional, 1 conditional, > 1 guided).

    Returns:
        (B, C, H, W) guided output, in the inputs' dtype.
    """
    ### BEGIN SOLUTION [3.2b]
    return out_uncond + guidance_scale * (out_cond - out_uncond)
    ### END SOLUTION


def guided_prediction(model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None,
                      guidance_scale: float = 1.0) -> torch.Tensor:
    """Network output with classifier-free guidance (:func:`classifier_free_guidance`), as float32.

    With labels and w not in {0, 1}, the conditional and unconditional passes run as one batch of 2B.
    w = 0 makes one unconditional pass, w = 1 one conditional pass; without labels the model is called
    as ``model(x_t, t)``.

    Args:
        model: ``model(x_t, t, y)``; labels need a class-conditional model
            (:func:`~diffusion_lib.models.is_conditional`, e.g. ConditionalUNet).
        x_t: (B, C, H, W) float. t: int64 (B,) in [0, T-1]. y: int64 (B,) labels, or None.
        guidance_scale: w >= 0 (diffusers' convention; Ho & Salimans' w' = w - 1).

    Returns:
        (B, C, H, W) guided output, float32.

    Raises:
        ValueError: labels given to a model that is not class-conditional.
    """
    if y is None:
        return model(x_t, t).float()
    if not is_conditional(model):
        raise ValueError("labels/guidance need a class-conditional model (ConditionalUNet); this model is unconditional")
    if guidance_scale == 1.0:
        return model(x_t, t, y).float()
    ### BEGIN SOLUTION [3.2b]
    null = torch.full_like(y, model.null_label)
    if guidance_scale == 0.0:
        return model(x_t, t, null).float()
    out_uncond, out_cond = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([null, y])).chunk(2)
    return classifier_free_guidance(out_uncond, out_cond, guidance_scale).float()
    ### END SOLUTION


def classifier_log_prob_grad(classifier: nn.Module, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient of log p_phi(y | x_t, t) with respect to x_t (Dhariwal & Nichol 2021, sec. 4.1 and eq. 14).

    Runs with autograd enabled even inside ``torch.no_grad()`` (the samplers are no-grad).

    Args:
        classifier: ``classifier(x_t, t) -> logits (B, num_classes)``, trained on noisy images.
        x_t: (B, C, H, W). t: int64 (B,). y: int64 (B,) target classes in [0, num_classes - 1].

    Returns:
        (B, C, H, W) gradient, float32.
    """
    with torch.enable_grad():
        x = x_t.detach().float().requires_grad_(True)
        log_probs = torch.log_softmax(classifier(x, t), dim=-1)
        selected = log_probs[torch.arange(len(y), device=y.device), y].sum()
        return torch.autograd.grad(selected, x)[0]


def classifier_guided_eps(eps: torch.Tensor, gradient: torch.Tensor | float, alpha_bar: torch.Tensor | float,
                          classifier_scale: float) -> torch.Tensor:
    """eps^ = eps - s sqrt(1 - alpha_bar_t) grad log p(y | x_t)  (Dhariwal & Nichol 2021, eq. 14).

    Args:
        eps: (B, C, H, W) predicted noise.
        gradient: (B, C, H, W) from :func:`classifier_log_prob_grad` (any value when the scale is 0).
        alpha_bar: alpha_bar_t, a float or a tensor broadcastable to ``eps``.
        classifier_scale: s; 0 returns ``eps`` itself, untouched.

    Returns:
        (B, C, H, W) guided eps.
    """
    if classifier_scale == 0:
        return eps
    alpha_bar = torch.as_tensor(alpha_bar, dtype=eps.dtype, device=eps.device)
    return eps - classifier_scale * (1 - alpha_bar).sqrt() * gradient


def check_guidance_inputs(model: nn.Module, y, batch: int, guidance_scale: float, device: torch.device | str,
                          classifier: nn.Module | None = None,
                          classifier_scale: float | None = None) -> torch.Tensor | None:
    """Validate labels and guidance settings once, at a sampler's public entry; return int64 labels on ``device``.

    Labels condition a ConditionalUNet (and its classifier-free guidance). With classifier guidance
    they may also go to an unconditional UNet: then only the classifier sees them. This is the one
    place where label values are read on the host (``y.min()``, ``y.max()``); networks do not check them.

    Args:
        model: the network.
        y: labels (anything ``torch.as_tensor`` takes) of shape (batch,), or None.
        batch: number of samples N.
        guidance_scale: classifier-free guidance w (>= 0).
        device: where the labels should live.
        classifier: the classifier of classifier guidance, or None.
        classifier_scale: its scale s. None means "classifier guidance is on when a classifier is given";
            a number switches it on for ``classifier`` given and s != 0.

    Returns:
        int64 (N,) labels on ``device``, or None.

    Raises:
        ValueError: w < 0, NaN or inf; w not in {0, 1} without labels or with an unconditional model; s != 0 without a
            classifier; classifier guidance without labels; labels for an unconditional model without
            classifier guidance; labels of the wrong shape or outside [0, num_classes - 1].
    """
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0; got {guidance_scale}")
    if classifier_scale is not None and classifier_scale != 0 and classifier is None:
        raise ValueError(f"classifier_scale={classifier_scale} needs the noise-conditioned classifier= "
                         "(classifier guidance); pass one or use classifier_scale=0")
    if classifier_scale is not None and classifier_scale == 0:
        classifier = None
    conditional = is_conditional(model)
    if guidance_scale not in (0.0, 1.0) and (y is None or not conditional):
        raise ValueError(f"guidance_scale={guidance_scale} needs labels y and a class-conditional model "
                         "(classifier-free guidance toward a class)")
    if classifier is not None and y is None:
        raise ValueError("classifier guidance needs target labels y")
    if y is None:
        return None
    if not conditional and classifier is None:
        raise ValueError("labels/guidance given, but the model is unconditional (no null label); use a ConditionalUNet "
                         "or classifier guidance")
    num_classes = model.num_classes if conditional else getattr(classifier, "num_classes", None)
    y = torch.as_tensor(y, dtype=torch.long, device=device)
    if y.shape != (batch,):
        raise ValueError(f"labels y must have shape ({batch},); got {tuple(y.shape)}")
    if num_classes is not None and y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes - 1}]; got values in [{int(y.min())}, {int(y.max())}]")
    return y
