"""Networks: the denoising UNet (and its class-conditional variant), the VAE baseline, the classifier.

``models`` never imports ``diffusion`` or ``sampling``: a network knows nothing of noise schedules.
:data:`KINDS` is the one table of the model kinds a config can train (``model.kind``): how each network
is built, which objective trains it (a class of :mod:`diffusion_lib.objectives`, named here) and whether it
runs on a noise schedule (built from ``config.diffusion`` by ``objectives.build_schedule``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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


def _unet_arguments(config, channels: int, image_size: int, num_classes: int) -> dict:
    """The (Conditional)UNet's constructor arguments from ``config.model`` and the data.

    Raises:
        ValueError: ``model.conditional`` on data without labels.
    """
    m = config.model
    if m.conditional and num_classes < 1:
        raise ValueError(f"model.conditional is true but data source {config.data.source!r} has no labels; "
                         "set model.conditional=false")
    return dict(in_channels=channels, base_channels=m.base_channels, channel_mults=m.channel_mults,
                num_res_blocks=m.num_res_blocks, attention_levels=m.attention_levels, num_heads=m.num_heads,
                dropout=m.dropout, norm_groups=m.norm_groups, num_classes=num_classes if m.conditional else None)


def _vae_arguments(config, channels: int, image_size: int, num_classes: int) -> dict:
    """The VAE's constructor arguments from ``config.model`` and the data (labels are ignored)."""
    m = config.model
    return dict(in_channels=channels, image_size=image_size, latent_dim=m.latent_dim,
                base_channels=m.base_channels, channel_mults=tuple(m.channel_mults))


@dataclass(frozen=True)
class ModelKind:
    """One model kind: everything the library decides by ``model.kind``.

    Attributes:
        build: constructor arguments (``model.config``, as stored in checkpoints) -> the network.
        arguments: ``(ExperimentConfig, channels, image_size, num_classes) -> constructor arguments``;
            raises ValueError when the config does not fit the data.
        objective: the name of the class in :mod:`diffusion_lib.objectives` that trains and samples it.
        uses_schedule: trained and sampled on the noise schedule of ``config.diffusion``.
    """

    build: Callable[[dict], nn.Module]
    arguments: Callable[..., dict]
    objective: str
    uses_schedule: bool


# config.MODEL_KINDS lists these keys (config reads YAML without torch); tests/test_imports.py checks they agree.
KINDS: dict[str, ModelKind] = {
    "unet": ModelKind(build_unet, _unet_arguments, "DiffusionObjective", uses_schedule=True),
    "vae": ModelKind(lambda arguments: VAE(**arguments), _vae_arguments, "VAEObjective", uses_schedule=False),
}


def model_kind(kind: str) -> ModelKind:
    """The :data:`KINDS` entry of ``kind``.

    Raises:
        ValueError: an unknown kind (names the accepted ones).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; accepted: {list(KINDS)}")
    return KINDS[kind]


def build_model(kind: str, config: dict) -> nn.Module:
    """Rebuild a network from its kind ("unet" or "vae") and constructor arguments (``model.config``).

    Raises:
        ValueError: unknown kind or bad arguments.
    """
    return model_kind(kind).build(config)


def build_network(config, channels: int, image_size: int, num_classes: int) -> nn.Module:
    """The network an :class:`~diffusion_lib.config.ExperimentConfig` asks for, fitted to the data's channels,
    image size (H = W) and number of classes (0: unlabeled).

    Raises:
        ValueError: a conditional model on unlabeled data, or bad hyper-parameters.
    """
    kind = model_kind(config.model.kind)
    return kind.build(kind.arguments(config, channels, image_size, num_classes))


__all__ = ["is_conditional", "UNet", "ConditionalUNet", "build_unet", "build_model", "build_network", "KINDS",
           "ModelKind", "model_kind", "VAE", "VAEOutput", "VAELoss", "Classifier"]
