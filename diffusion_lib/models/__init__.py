"""Networks: the denoising UNet (and its class-conditional variant), the VAE baseline, the classifier.

``models`` never imports ``diffusion`` or ``sampling``: a network knows nothing of noise schedules.
"""

from torch import nn

from .classifier import Classifier
from .unet import ConditionalUNet, UNet, build_unet
from .vae import VAE, VAELoss, VAEOutput


def is_conditional(model: nn.Module) -> bool:
    """True when ``model`` is class-conditional with a null label for classifier-free guidance.

    The contract (house plan): such a model has an int attribute ``null_label`` (= ``num_classes``, the
    "no label" index) and ``num_classes``. Everything that asks "does this model take labels?" calls this.
    Wrappers (DDP, torch.compile) are looked through via ``.module`` / ``._orig_mod``.
    """
    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)
    return isinstance(getattr(model, "null_label", None), int)


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


__all__ = ["is_conditional", "UNet", "ConditionalUNet", "build_unet", "build_model", "VAE", "VAEOutput", "VAELoss", "Classifier"]
