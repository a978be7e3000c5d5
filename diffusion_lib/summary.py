"""See the network: torchinfo's layer table (output shape, parameters, mult-adds per block).

    python -m diffusion_lib summary --config configs/digits_cfg.yaml --depth 2
    >>> print(layer_table(model, image_size=16))           # any of UNet, ConditionalUNet, VAE, Classifier
    >>> print(network_summary("configs/digits_cfg.yaml"))  # the network a config trains

The example input is built from the model's own constructor arguments (``model.config``): images
(B, C, H, W), timesteps int64 (B,) for the UNet and a noise-conditioned classifier, labels int64 (B,)
for the conditional UNet. torchinfo is imported on first use (``pip install torchinfo``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .config import ExperimentConfig, apply_overrides, from_dict, load_config
from .data import load_dataset
from .models import VAE, Classifier, build_network, is_conditional

COLUMNS = ("output_size", "num_params", "mult_adds")


def example_inputs(model: nn.Module, image_size: int | None = None, batch_size: int = 1) -> list[torch.Tensor]:
    """The positional inputs of one forward pass of ``model`` (on its device).

    Args:
        model: a UNet, ConditionalUNet, VAE or Classifier of this library.
        image_size: H = W of the images; the VAE knows its own (``model.config["image_size"]``).
        batch_size: B >= 1.

    Returns:
        [x float32 (B, C, H, W)] plus t int64 (B,) (UNet, time-conditional classifier) plus y int64 (B,)
        (conditional UNet: labels 0..K-1 cycled).

    Raises:
        ValueError: no image size for a network that needs one, or batch_size < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    config = getattr(model, "config", {})
    size = config.get("image_size", image_size) if isinstance(model, VAE) else image_size
    if size is None or size < 1:
        raise ValueError(f"image_size must be a positive int for {type(model).__name__}; got {size!r}")
    device = next(model.parameters()).device
    x = torch.zeros(batch_size, config.get("in_channels", 3), size, size, device=device)
    if isinstance(model, VAE):
        return [x]
    t = torch.zeros(batch_size, dtype=torch.long, device=device)
    if isinstance(model, Classifier):
        return [x, t] if model.time_conditional else [x]
    if is_conditional(model):
        return [x, t, torch.arange(batch_size, device=device) % model.num_classes]
    return [x, t]


def layer_table(model: nn.Module, image_size: int | None = None, batch_size: int = 1, depth: int = 3,
                columns: Sequence[str] = COLUMNS):
    """torchinfo's summary of ``model`` on :func:`example_inputs`: one row per block down to ``depth``.

    Args:
        model: a UNet, ConditionalUNet, VAE or Classifier (left in its train/eval mode; no gradients).
        image_size: H = W (not needed for the VAE).
        batch_size: B of the example input (mult-adds scale with it).
        depth: how many levels of sub-modules get a row (1: the top blocks only).
        columns: torchinfo column names.

    Returns:
        ``torchinfo.ModelStatistics``: ``print()`` it for the table; ``.total_params``, ``.total_mult_adds``.

    Raises:
        ValueError: see :func:`example_inputs`; depth < 1.
        ImportError: torchinfo is not installed (the message says how to install it).
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1; got {depth}")
    try:
        import torchinfo
    except ImportError as error:
        raise ImportError("the layer table needs torchinfo: pip install 'diffusion_lib[tracking]' "
                          "(or pip install torchinfo)") from error
    inputs = example_inputs(model, image_size, batch_size)
    with torch.no_grad():
        return torchinfo.summary(model, input_data=inputs, col_names=tuple(columns), depth=depth, verbose=0,
                                 device=inputs[0].device, row_settings=("var_names",))


def network_summary(config, overrides: Sequence[str] = (), depth: int = 3, batch_size: int = 1,
                    classifier: bool = False, dataset=None) -> list:
    """Layer tables of the network a config trains (and, with ``classifier``, of the guidance classifier).

    Args:
        config: an ExperimentConfig or a YAML path.
        overrides: dotted ``key=value`` strings (``model.conditional=false``, ``model.kind=vae``, ...).
        depth, batch_size: as for :func:`layer_table`.
        classifier: also the noise-conditioned classifier for classifier guidance (needs labels).
        dataset: the data (channels, image size, classes); default ``load_dataset`` from ``config.data``.

    Returns:
        A list of ``(title, torchinfo.ModelStatistics)``.

    Raises:
        ValueError: a bad config, or ``classifier`` on unlabeled data.
    """
    if isinstance(config, (str, Path)):
        config = load_config(config, list(overrides))
    elif overrides:
        config = from_dict(ExperimentConfig, apply_overrides(config.to_dict(), list(overrides)))
    if dataset is None:
        dataset = load_dataset(config.data.source, image_size=config.data.image_size, **config.data.options)
    torch.manual_seed(config.training.seed)
    model = build_network(config, dataset.channels, dataset.image_size, dataset.num_classes).eval()
    kind = "VAE" if config.model.kind == "vae" else ("conditional UNet" if is_conditional(model) else "UNet")
    tables = [(f"{config.name}: {kind}", layer_table(model, dataset.image_size, batch_size, depth))]
    if classifier:
        if dataset.num_classes < 2:
            raise ValueError(f"a classifier needs labelled data with >= 2 classes; {config.data.source!r} has "
                             f"{dataset.num_classes}")
        judge = Classifier(dataset.channels, dataset.num_classes, time_conditional=True,
                           num_train_timesteps=config.diffusion.num_train_timesteps).eval()
        tables.append(("noise-conditioned classifier (classifier guidance)",
                       layer_table(judge, dataset.image_size, batch_size, depth)))
    return tables
