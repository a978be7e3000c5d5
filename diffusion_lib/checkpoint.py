"""One artifact format for every file the library writes, and model checkpoints built on it.

Every artifact (model checkpoint, classifier, data cache, feature cache, diffusers-folder metadata) is
one file holding::

    format           "diffusion_lib"           (foreign files are rejected)
    kind             what it is: "checkpoint", "classifier", "data_cache", "features", "diffusers_metadata"
    version          the layout version of that kind (an int; a newer one than this library reads is refused)
    library_version  diffusion_lib.__version__ of the writer
    payload          a dict, the kind's content

written atomically (temporary file + ``os.replace``) with ``torch.save``, or as JSON when the path ends in
``.json``; read back with ``torch.load(weights_only=True)`` (no pickled code runs) and validated.

A model checkpoint's payload (kind "checkpoint")::

    config          ExperimentConfig.to_dict()
    model_config    the network's constructor arguments (model.config)
    data            source name, channels, image_size, num_classes, class_names
    model, ema      state dicts (the EMA weights are the ones to sample from)
    optimizer, lr_scheduler, grad_scaler, step, rng   (everything --resume needs)
"""

from __future__ import annotations

import json
import numbers
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .atomic import atomic_save, atomic_write_text

FORMAT = "diffusion_lib"
CHECKPOINT_KIND = "checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("config", "model_config", "data", "model", "ema", "step")


def save_artifact(path: str | Path, kind: str, payload: dict, version: int = 1) -> Path:
    """Write ``payload`` as an artifact of ``kind`` at ``version``, atomically.

    Args:
        path: destination; ``.json`` writes JSON (payload must be JSON-serialisable), anything else ``torch.save``.
        kind: the artifact kind (a short name, e.g. "checkpoint").
        payload: the content, a dict (tensors allowed unless JSON).
        version: layout version of this kind, an int >= 1.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: ``payload`` not a dict, or ``version`` not an int >= 1.
    """
    from . import __version__

    if not isinstance(payload, dict):
        raise ValueError(f"artifact payload must be a dict; got {type(payload).__name__}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"artifact version must be an int >= 1; got {version!r}")
    record = {"format": FORMAT, "kind": kind, "version": version, "library_version": __version__, "payload": payload}
    path = Path(path)
    if path.suffix == ".json":
        return atomic_write_text(path, json.dumps(record, indent=2, default=str))
    return atomic_save(record, path)


def load_artifact(path: str | Path, kind: str, version: int = 1, *, required: Sequence[str] = (),
                  map_location: str | torch.device = "cpu") -> dict:
    """Read and validate an artifact written by :func:`save_artifact`; return its payload.

    Args:
        path: the file.
        kind: the kind expected; a file of another kind is refused.
        version: the newest layout version this reader understands; newer files are refused.
        required: payload keys that must be present.
        map_location: where tensors are loaded.

    Returns:
        The payload dict (with ``"_version"`` set to the file's version, for readers of several versions).

    Raises:
        FileNotFoundError: no such file (or ``path`` is a folder).
        ValueError: unreadable, truncated or foreign file; another kind; a version that is not an int or is
            newer than ``version``; a missing required key. Each message names the file.
    """
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"{kind} {path} is a folder, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"{kind} {path} does not exist")
    try:
        if path.suffix == ".json":
            record = json.loads(path.read_text(encoding="utf-8"))
        else:
            record = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "GLOBAL" not in str(error):  # torch names a refused class or function as "GLOBAL module.name"
            raise ValueError(f"{path} is corrupt or not a torch file (unreadable pickle stream)") from error
        raise ValueError(f"{path} contains code or objects other than tensors and plain data, and was refused "
                         "(only diffusion_lib artifacts are loaded)") from error
    except Exception as error:  # torch and json raise several types for truncated or corrupt files
        reason = " ".join(str(error).split())  # one line
        raise ValueError(f"{path} is corrupt or not a torch file ({type(error).__name__}: {reason})") from error
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{path} is not a diffusion_lib {kind} file (no format={FORMAT!r} marker); "
                         "was it written by another library or an older version?")
    if record.get("kind") != kind:
        raise ValueError(f"{path} is a {record.get('kind')!r} file; expected a {kind!r} file")
    found = record.get("version")
    if isinstance(found, bool) or not isinstance(found, numbers.Integral):
        raise ValueError(f"{path} has version {found!r}; expected an int")
    if found > version:
        raise ValueError(f"{path} has {kind} version {found}; this library reads <= {version}: upgrade diffusion_lib")
    payload = record.get("payload")
    if not isinstance(payload, dict):
        raise ValueError(f"{path} has no payload dict")
    missing = [key for key in required if key not in payload]
    if missing:
        raise ValueError(f"{kind} {path} is missing {missing}")
    return {**payload, "_version": int(found)}


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write a model checkpoint (artifact kind "checkpoint") atomically.

    Raises:
        ValueError: if ``state`` lacks a required key.
    """
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise ValueError(f"checkpoint state is missing {missing}")
    save_artifact(path, CHECKPOINT_KIND, state, CHECKPOINT_VERSION)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read and validate a model checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the file.
        map_location: where tensors are loaded.

    Returns:
        The checkpoint dict (config, model_config, data, model, ema, step, and the resume state).

    Raises:
        FileNotFoundError: no such file.
        ValueError: as :func:`load_artifact`.
    """
    state = load_artifact(path, CHECKPOINT_KIND, CHECKPOINT_VERSION, required=REQUIRED_KEYS, map_location=map_location)
    state.pop("_version")
    return state


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, ready to sample: ``model`` (eval mode), ``schedule``, ``config``
    (ExperimentConfig), ``data`` info dict (channels, image_size, num_classes, class_names, source), ``step``."""

    model: nn.Module
    schedule: nn.Module | None
    config: object
    data: dict
    step: int


def load_model(path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True) -> LoadedModel:
    """Rebuild the network (EMA weights by default) and its noise schedule from a checkpoint.

    Raises:
        ValueError / FileNotFoundError: as :func:`load_checkpoint`, or weights that do not fit the stored model config.
    """
    from .config import ExperimentConfig, from_dict
    from .models import build_model
    from .schedules import NoiseSchedule

    state = load_checkpoint(path)
    config = from_dict(ExperimentConfig, state["config"])
    model = build_model(config.model.kind, state["model_config"])
    try:
        model.load_state_dict(state["ema" if use_ema else "model"])
    except RuntimeError as error:
        raise ValueError(f"checkpoint {path}: weights do not fit the stored model config ({error})") from error
    schedule = None
    if config.model.kind == "unet":
        schedule = NoiseSchedule(config.diffusion.beta_schedule, config.diffusion.num_train_timesteps,
                                 **config.diffusion.schedule_kwargs).to(device)
    return LoadedModel(model.to(device).eval(), schedule, config, state["data"], state["step"])
