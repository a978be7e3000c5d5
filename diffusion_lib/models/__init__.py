"""Networks: the denoising UNet (and its class-conditional variant), the VAE baseline, the classifier.

``models`` never imports ``diffusion`` or ``sampling``: a network knows nothing of noise schedules.
"""

from torch import nn

from .classifier import Classifier, load_classifier, save_classifier, train_classifier
from .unet import ConditionalUNet, UNet, build_unet
from .vae import VAE, VAELoss, VAEOutput


def build_model(kind: str, config: dict) -> nn.Module:
    """Rebuild a network from its kind ("unet" or "vae") and constructor arguments (``model.config``).

    Raises:
        ValueError: unknown kind or bad arguments.
    """
    if kind == "unet":
        return build_unet(config)
    if kind == "vae":
        return VAE(**config)
    raise ValueError(f"unknown model kind {kind!r}; accepted: ['unet', 'vae']")


__all__ = ["UNet", "ConditionalUNet", "build_unet", "build_model", "VAE", "VAEOutput", "VAELoss", "Classifier",
           "train_classifier", "save_classifier", "load_classifier"]
