"""diffusers' folder format: our models saved as a ``DDPMPipeline`` folder, and loaded back.

:func:`save_pretrained` writes a trained model (written into a temporary folder, then renamed into
place by :func:`diffusion_lib.atomic.atomic_write_folder`)::

    folder/
      model_index.json                      {"_class_name": "DDPMPipeline",
                                             "unet": ["diffusion_lib.interop", "DiffusersUNet"], ...}
      unet/config.json                      our UNet's constructor arguments + sample_size
      unet/diffusion_pytorch_model.safetensors
      scheduler/scheduler_config.json       DDPMScheduler with trained_betas = our betas
      diffusion_lib.json                    artifact kind "diffusers_metadata" (diffusion_lib.artifacts):
                                            schedule name, prediction type, data info, step, experiment config

Our network is not a diffusers ``UNet2DModel``; :class:`DiffusersUNet` wraps it in a ``ModelMixin`` +
``ConfigMixin`` so that diffusers' own loaders read the folder:
``DiffusersUNet.from_pretrained(folder, subfolder="unet")`` or ``DDPMPipeline.from_pretrained(folder)``.
The folder names the class by its public home ``diffusion_lib.interop`` (not this file), which diffusers
imports by itself. :func:`load_pretrained` reads a folder back into a ready-to-sample
:class:`~diffusion_lib.checkpoint.LoadedModel`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMPipeline
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn

from ..artifacts import load_artifact, save_artifact
from ..atomic import atomic_write_folder
from ..checkpoint import LoadedModel
from ..device import resolve_device
from ..diffusion import check_prediction_type
from ..models.unet import build_unet
from ..schedules import NoiseSchedule
from .schedulers import scheduler_from_schedule

METADATA_FILE = "diffusion_lib.json"
METADATA_KIND = "diffusers_metadata"
METADATA_VERSION = 1


class DiffusersUNet(ModelMixin, ConfigMixin):
    """Our :class:`~diffusion_lib.models.UNet` / ``ConditionalUNet`` as a diffusers model.

    ``save_pretrained`` writes ``config.json`` (these constructor arguments) and
    ``diffusion_pytorch_model.safetensors`` (weights under ``net.``); ``from_pretrained`` rebuilds
    it from a local folder. ``forward`` follows ``UNet2DModel``'s signature, so diffusers'
    ``DDPMPipeline`` can run it (a conditional model without labels is queried with its null
    label, i.e. unconditionally).

    Args:
        in_channels ... norm_groups: as for :class:`~diffusion_lib.models.UNet`.
        num_classes: K for a ConditionalUNet, None for an unconditional UNet.
        sample_size: image side H = W the model was trained on (read by ``DDPMPipeline``).

    Attributes:
        net: the wrapped network (what our samplers take).
    """

    @register_to_config
    def __init__(self, in_channels: int = 3, out_channels: int | None = None, base_channels: int = 64,
                 channel_mults: tuple[int, ...] = (1, 2, 2), num_res_blocks: int = 2,
                 attention_levels: tuple[int, ...] = (1,), num_heads: int = 4, dropout: float = 0.0,
                 norm_groups: int = 8, num_classes: int | None = None, sample_size: int | None = None):
        super().__init__()
        self.net = build_unet(dict(in_channels=in_channels, out_channels=out_channels, base_channels=base_channels,
                                   channel_mults=tuple(channel_mults), num_res_blocks=num_res_blocks,
                                   attention_levels=tuple(attention_levels), num_heads=num_heads, dropout=dropout,
                                   norm_groups=norm_groups, num_classes=num_classes))

    @classmethod
    def from_unet(cls, unet: nn.Module, sample_size: int | None = None) -> "DiffusersUNet":
        """Wrap a copy of ``unet``'s weights (``unet.config`` gives the architecture), on the CPU in eval mode.

        Raises:
            ValueError: ``unet`` is not a diffusion_lib UNet (no ``config`` dict).
        """
        if not isinstance(getattr(unet, "config", None), dict) or "base_channels" not in unet.config:
            raise ValueError(f"expected a diffusion_lib UNet/ConditionalUNet with a .config dict; got {type(unet).__name__}")
        try:
            wrapper = cls(**unet.config, sample_size=sample_size)
        except TypeError as error:
            raise ValueError(f"{type(unet).__name__} is not a diffusion_lib UNet/ConditionalUNet ({error})") from error
        wrapper.net.load_state_dict(unet.state_dict())
        return wrapper.eval()

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int, class_labels: torch.Tensor | None = None,
                return_dict: bool = True) -> UNet2DOutput | tuple[torch.Tensor]:
        """Run the wrapped network with ``UNet2DModel``'s signature.

        Args:
            sample: x_t, float (B, C, H, W). timestep: int64 (B,) or a scalar in [0, T-1].
            class_labels: int64 (B,) labels of a conditional model, or None (null label).
            return_dict: wrap the output in ``UNet2DOutput(sample=...)`` (else a 1-tuple).

        Returns:
            the prediction, (B, C, H, W), in ``UNet2DOutput`` or a tuple.
        """
        out = self.net(sample, timestep, class_labels)
        return UNet2DOutput(sample=out) if return_dict else (out,)


# Saved folders name the class by its public home (model_index.json: ["diffusion_lib.interop", "DiffusersUNet"]),
# so they do not depend on which file of the package holds it; diffusers imports that name to load them.
DiffusersUNet.__module__ = "diffusion_lib.interop"


def save_pretrained(model: LoadedModel | nn.Module, schedule: NoiseSchedule | None = None,
                    folder: str | os.PathLike | None = None, *, image_size: int | None = None,
                    prediction_type: str | None = None, overwrite: bool = True) -> Path:
    """Save a model in diffusers' ``DDPMPipeline`` folder layout (see the module docstring), atomically.

    Args:
        model: a :class:`~diffusion_lib.checkpoint.LoadedModel` (``load_model(path)``: its schedule,
            config, data info and step are kept) or a bare UNet/ConditionalUNet.
        schedule: the noise schedule; default ``model.schedule`` of a LoadedModel.
        folder: destination folder (created; its parent too).
        image_size: H = W of the images, stored as ``sample_size``; default ``data["image_size"]``.
        prediction_type: default the LoadedModel's config, else "epsilon".
        overwrite: replace an existing folder written by this function (a folder holding other
            files is never replaced).

    Returns:
        the folder.

    Raises:
        ValueError: missing schedule / image size, a VAE or foreign module, a bad prediction type.
        FileExistsError: ``folder`` exists and ``overwrite`` is False or it is not a saved pipeline.

    The metadata file is written with :func:`diffusion_lib.artifacts.save_artifact` (kind
    "diffusers_metadata", JSON); the whole folder with :func:`diffusion_lib.atomic.atomic_write_folder`.
    """
    loaded = model if isinstance(model, LoadedModel) else None
    net = loaded.model if loaded else model
    schedule = schedule if schedule is not None else (loaded.schedule if loaded else None)
    if folder is None or schedule is None:
        raise ValueError("save_pretrained needs a folder and the noise schedule (give schedule=, or a LoadedModel)")
    config = loaded.config if loaded else None
    data = dict(loaded.data) if loaded else {}
    image_size = image_size or data.get("image_size")
    if not image_size:
        raise ValueError("image_size (the side H = W of the training images) is needed: diffusers' DDPMPipeline "
                         "reads it as unet.config.sample_size")
    prediction_type = prediction_type or (config.diffusion.prediction_type if config is not None else "epsilon")
    check_prediction_type(prediction_type)
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        if not overwrite or not (folder / "model_index.json").is_file():
            raise FileExistsError(f"{folder} exists and is not empty" + ("" if overwrite else " (overwrite=False)") +
                                  "; only a folder written by save_pretrained is replaced")

    pipeline = DDPMPipeline(unet=DiffusersUNet.from_unet(net, int(image_size)),
                            scheduler=scheduler_from_schedule("ddpm", schedule, prediction_type))
    metadata = {
        "schedule": {"name": schedule.name, "num_train_timesteps": schedule.num_train_timesteps,
                     "kwargs": dict(schedule.schedule_kwargs)},
        "prediction_type": prediction_type,
        "data": {"image_size": int(image_size), "channels": net.config["in_channels"],
                 "num_classes": net.config.get("num_classes") or 0, **data},
        "step": loaded.step if loaded else None,
        "config": config.to_dict() if config is not None else None,
    }

    def write(tmp: Path) -> None:
        pipeline.save_pretrained(tmp, safe_serialization=True)
        save_artifact(tmp / METADATA_FILE, METADATA_KIND, metadata, METADATA_VERSION)

    return atomic_write_folder(folder, write)


def load_pretrained(folder: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model saved by :func:`save_pretrained` (pipeline folder, or its ``unet/`` model folder).

    The schedule is rebuilt from ``diffusion_lib.json`` (artifact kind "diffusers_metadata", read with
    :func:`diffusion_lib.artifacts.load_artifact`: name, T, arguments) when present, else
    from the scheduler config's ``trained_betas``; either way it is checked against the
    scheduler's betas.

    Args:
        folder: the pipeline folder (with ``unet/`` and ``scheduler/``) or a model folder with ``config.json``.
        device: "auto" or a torch device.

    Returns:
        :class:`~diffusion_lib.checkpoint.LoadedModel`: ``model`` (our network, eval mode), ``schedule``,
        ``config`` (the ExperimentConfig, or None when the folder has none), ``data`` (image_size, channels,
        num_classes, ... and ``prediction_type``), ``step`` (None if unknown).

    Raises:
        FileNotFoundError: no such folder, or no config.json in it.
        ValueError: the folder holds another diffusers model; its ``diffusion_lib.json`` is not a
            "diffusers_metadata" artifact of this library version or older (e.g. corrupt, or written before
            the one artifact format); or its schedule cannot be rebuilt or disagrees with the scheduler's betas.
    """
    from ..config import ExperimentConfig, from_dict

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    root, unet_dir = (folder, folder / "unet") if (folder / "unet" / "config.json").is_file() else (folder.parent, folder)
    if not (unet_dir / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has neither unet/config.json nor config.json: not a diffusers model folder")
    class_name = json.loads((unet_dir / "config.json").read_text()).get("_class_name")
    if class_name != DiffusersUNet.__name__:
        raise ValueError(f"{unet_dir} holds a diffusers {class_name}, not a diffusion_lib model; "
                         "open it with load_pretrained_pipeline")
    wrapper = DiffusersUNet.from_pretrained(unet_dir, low_cpu_mem_usage=False)
    meta_path = root / METADATA_FILE
    meta = load_artifact(meta_path, METADATA_KIND, METADATA_VERSION) if meta_path.is_file() else {}
    scheduler_path = root / "scheduler" / "scheduler_config.json"
    scheduler_config = json.loads(scheduler_path.read_text()) if scheduler_path.is_file() else {}

    if meta.get("schedule", {}).get("name") not in (None, "custom"):
        s = meta["schedule"]
        schedule = NoiseSchedule(s["name"], s["num_train_timesteps"], **s.get("kwargs", {}))
    elif scheduler_config.get("trained_betas"):
        schedule = NoiseSchedule(None, betas=np.asarray(scheduler_config["trained_betas"], dtype=np.float64))
    else:
        raise ValueError(f"{folder}: cannot rebuild the noise schedule (no {METADATA_FILE} schedule name and no "
                         "trained_betas in scheduler/scheduler_config.json)")
    if scheduler_config.get("trained_betas") is not None:
        stored = torch.tensor(scheduler_config["trained_betas"], dtype=torch.float64)
        if stored.shape != schedule.betas.shape or not torch.allclose(stored, schedule.betas.double(), rtol=1e-5):
            raise ValueError(f"{folder}: the schedule in {METADATA_FILE} disagrees with the scheduler's trained_betas")
    config = from_dict(ExperimentConfig, meta["config"]) if meta.get("config") else None
    data = dict(meta.get("data") or {"image_size": wrapper.config.sample_size, "channels": wrapper.config.in_channels,
                                     "num_classes": wrapper.config.num_classes or 0})
    data["prediction_type"] = meta.get("prediction_type") or scheduler_config.get("prediction_type", "epsilon")
    device = resolve_device(device)
    return LoadedModel(wrapper.net.to(device).eval(), schedule.to(device), config, data, meta.get("step"))
