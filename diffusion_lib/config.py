"""Typed experiment configuration: dataclasses loaded from YAML, validated, overridable with dotted keys.

A YAML file has one section per dataclass below (``data``, ``model``, ``diffusion``,
``training``, ``sampling``); every key is optional and falls back to the default shown here.
Unknown keys and bad values raise ``ValueError`` naming the key. From the command line::

    python -m diffusion_lib train --config configs/digits_cfg.yaml --set training.max_steps=200
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

# The names the config accepts, in one place. This module is a leaf (no torch, no other module of the
# library), so reading a YAML config is cheap. The modules that implement a choice import these tuples
# (diffusion.PREDICTION_TYPES is this one); where they keep a table keyed by name (sampling.SAMPLERS,
# models.KINDS, the schedule registry), tests/test_imports.py checks its keys against the tuple here.
SAMPLER_NAMES = ("ddpm", "ddim", "dpmsolver++")          # sampling.SAMPLERS: name -> sampler function
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")  # diffusion.PREDICTION_TYPES
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")   # sampling.TIMESTEP_SPACINGS
VARIANCE_TYPES = ("fixed_small", "fixed_large")           # sampling.VARIANCE_TYPES
MODEL_KINDS = ("unet", "vae")                             # models.KINDS: kind -> builder, objective, schedule
LOGGER_NAMES = ("csv", "tensorboard", "wandb")            # loggers.open_trackers
LR_SCHEDULES = ("constant", "cosine")                     # training.learning_rate_factor
# The built-in beta schedules (schedules.register_schedule) and the keyword arguments each accepts.
# A schedule registered at run time is looked up in the live registry (see :func:`schedule_arguments`).
BUILTIN_SCHEDULES: dict[str, tuple[str, ...]] = {
    "linear": ("beta_start", "beta_end", "max_beta"),
    "cosine": ("s", "max_beta"),
    "quadratic": ("beta_start", "beta_end"),
    "sigmoid": ("start", "end", "tau", "max_beta"),
    "sqrt": ("s", "max_beta"),
    "jsd": ("max_beta",),
}


def schedule_arguments(name: str) -> tuple[str, ...] | None:
    """The keyword arguments the beta schedule ``name`` accepts, without importing torch.

    A schedule registered with ``schedules.register_schedule`` (e.g. the homework's) exists only once
    ``diffusion_lib.schedules`` has been imported (registering imports it), so its live registry is read
    from ``sys.modules`` when it is loaded; otherwise the built-in table :data:`BUILTIN_SCHEDULES` answers.

    Returns:
        The accepted keyword names (``("*",)`` for a function taking ``**kwargs``), or None: no such schedule.
    """
    schedules = sys.modules.get("diffusion_lib.schedules")
    registry = getattr(schedules, "_SCHEDULES", None)
    if registry is None:
        return BUILTIN_SCHEDULES.get(name)
    if name not in registry:
        return None
    parameters = list(inspect.signature(registry[name]).parameters.values())[1:]
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return ("*",)
    return tuple(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def available_schedule_names() -> list[str]:
    """Every schedule name the config accepts now, sorted (the live registry once schedules is loaded)."""
    registry = getattr(sys.modules.get("diffusion_lib.schedules"), "_SCHEDULES", None)
    return sorted(BUILTIN_SCHEDULES if registry is None else registry)


def check_logger_names(names: Sequence[str]) -> None:
    """Raise ValueError unless ``names`` is a list of accepted tracker names (:data:`LOGGER_NAMES`) without repeats."""
    if not isinstance(names, (list, tuple)) or any(n not in LOGGER_NAMES for n in names) or len(set(names)) != len(names):
        raise ValueError(f"training.loggers must be a list of distinct names from {list(LOGGER_NAMES)}; got {names!r}")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass
class DataConfig:
    """Where the training images come from.

    Attributes:
        source: a registered data source (``diffusion_lib.data.available_sources()``), e.g. "digits".
        image_size: side length in pixels the images are resized to.
        val_fraction: fraction held out for validation, in [0, 1).
        options: extra keyword arguments for the source (``root``, ``path``, ``download``, ...).
    """

    source: str = "digits"
    image_size: int = 16
    val_fraction: float = 0.0
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        _require(self.image_size >= 4, f"data.image_size must be >= 4; got {self.image_size}")
        _require(0.0 <= self.val_fraction < 1.0, f"data.val_fraction must be in [0, 1); got {self.val_fraction}")


@dataclass
class ModelConfig:
    """Network hyper-parameters (see :class:`~diffusion_lib.models.UNet`).

    Attributes:
        kind: "unet" (diffusion) or "vae" (baseline).
        conditional: class-conditional (ConditionalUNet with a null label) or not.
        base_channels, channel_mults, num_res_blocks, attention_levels, num_heads, dropout, norm_groups: UNet.
        latent_dim: VAE latent size (kind "vae" only).
    """

    kind: str = "unet"
    conditional: bool = True
    base_channels: int = 64
    channel_mults: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 2
    attention_levels: list[int] = field(default_factory=lambda: [1])
    num_heads: int = 4
    dropout: float = 0.0
    norm_groups: int = 8
    latent_dim: int = 16

    def __post_init__(self):
        _require(self.kind in MODEL_KINDS, f"model.kind must be one of {list(MODEL_KINDS)}; got {self.kind!r}")
        _require(self.base_channels >= 1, f"model.base_channels must be >= 1; got {self.base_channels}")
        _require(len(self.channel_mults) >= 1 and all(m >= 1 for m in self.channel_mults),
                 f"model.channel_mults must be a non-empty list of ints >= 1; got {self.channel_mults}")
        _require(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1); got {self.dropout}")
        _require(self.latent_dim >= 1, f"model.latent_dim must be >= 1; got {self.latent_dim}")
        if self.kind == "unet":  # the VAE ignores the UNet-only keys
            for key in ("num_res_blocks", "num_heads", "norm_groups"):
                _require(getattr(self, key) >= 1, f"model.{key} must be >= 1; got {getattr(self, key)}")
            _require(all(0 <= level < len(self.channel_mults) for level in self.attention_levels),
                     f"model.attention_levels must be level indices in [0, {len(self.channel_mults) - 1}]; "
                     f"got {self.attention_levels}")


@dataclass
class DiffusionConfig:
    """The forward process and the training target.

    Attributes:
        num_train_timesteps: T.
        beta_schedule: a registered schedule name.
        schedule_kwargs: extra arguments for the schedule function.
        prediction_type: "epsilon", "v_prediction" or "sample".
        p_uncond: label-dropout probability for classifier-free guidance (conditional models).
    """

    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    schedule_kwargs: dict = field(default_factory=dict)
    prediction_type: str = "epsilon"
    p_uncond: float = 0.1

    def __post_init__(self):
        _require(self.num_train_timesteps >= 1, f"diffusion.num_train_timesteps must be >= 1; got {self.num_train_timesteps}")
        accepted = schedule_arguments(self.beta_schedule)
        _require(accepted is not None,
                 f"diffusion.beta_schedule {self.beta_schedule!r} is unknown; available: {available_schedule_names()}")
        _require(self.prediction_type in PREDICTION_TYPES,
                 f"diffusion.prediction_type must be one of {list(PREDICTION_TYPES)}; got {self.prediction_type!r}")
        _require(0.0 <= self.p_uncond <= 1.0, f"diffusion.p_uncond must be in [0, 1]; got {self.p_uncond}")
        unknown = [] if accepted == ("*",) else sorted(set(self.schedule_kwargs) - set(accepted))
        _require(not unknown, f"diffusion.schedule_kwargs {unknown} are not arguments of the {self.beta_schedule!r} "
                              f"schedule; accepted: {list(accepted)}")


@dataclass
class TrainingConfig:
    """The optimisation loop.

    Attributes:
        max_steps: optimiser steps in total (a resumed run continues up to this number).
        max_epochs: passes over the training images in total, or None; training stops at whichever of
            ``max_steps`` and ``max_epochs`` comes first. One epoch is ``len(dataset) // batch_size``
            steps (each epoch is a fresh permutation; the last incomplete batch is dropped).
        batch_size: images per step.
        learning_rate: AdamW peak learning rate, reached after ``warmup_steps`` of linear warm-up.
        lr_schedule: after the warm-up, "constant" (stay at the peak) or "cosine" (half-cosine decay to 0
            at the last step, Loshchilov & Hutter 2017; diffusers' ``get_cosine_schedule_with_warmup``). The
            cosine depends on the run's length: a run resumed with a larger ``max_steps`` continues on the
            longer curve from the step it reached.
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warm-up length.
        grad_clip: max global gradient norm (0 disables clipping).
        ema_decay: EMA decay of the weights; the effective decay warms up as min(decay, (1 + n) / (10 + n)).
        amp: mixed precision (bf16 or fp16) when training on CUDA; ignored on CPU and MPS.
        channels_last: keep the weights and batches in the channels-last memory layout (NHWC), which cuDNN's
            tensor-core convolutions prefer under mixed precision. Off by default: on the 2-core CPU it measured
            no faster (benchmarks/train_throughput.py). The results agree up to float rounding, except that
            dropout masks are drawn in memory order (other draws, same distribution).
        compile: run the training forward and backward through ``torch.compile`` (inductor). The first step
            pays the compile time (one to two minutes on the 2-core CPU); checkpoints, the EMA, the sample
            grids and the start-up check use the uncompiled network, which shares its parameters, so
            checkpoints are the same either way. Off by default: on the 2-core CPU the digits model then ran
            only 1.04x as fast, which repays the compile after some 4000 steps (docs/benchmarks.md). For GPUs,
            measure it with benchmarks/training_settings.py.
        log_every: steps between CSV log rows.
        sample_every: steps between sample grids written to ``samples/`` (0 disables).
        checkpoint_every: steps between checkpoints (the final step is always saved).
        seed: seeds the data order, the noise and the initial weights.
        device: "auto" (cuda, then mps, then cpu), or an explicit torch device string.
        vae_beta: weight of the KL term for kind "vae" (beta-VAE, Higgins et al. 2017).
        loggers: where the training curves go (:mod:`diffusion_lib.loggers`): "csv" (log.csv, always
            written), "tensorboard" (event files in the run folder), "wandb" (offline unless WANDB_MODE is set).
        wandb_project, wandb_group: the Weights & Biases project and group (a sweep sets the group).
    """

    max_steps: int = 2000
    max_epochs: int | None = None
    batch_size: int = 64
    learning_rate: float = 2e-4
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    amp: bool = True
    channels_last: bool = False
    compile: bool = False
    log_every: int = 50
    sample_every: int = 0
    checkpoint_every: int = 500
    seed: int = 0
    device: str = "auto"
    vae_beta: float = 1.0
    loggers: list[str] = field(default_factory=lambda: ["csv", "tensorboard"])
    wandb_project: str = "diffusion_lib"
    wandb_group: str | None = None

    def __post_init__(self):
        for key in ("max_steps", "batch_size", "log_every", "checkpoint_every"):
            _require(getattr(self, key) >= 1, f"training.{key} must be >= 1; got {getattr(self, key)}")
        _require(self.max_epochs is None or self.max_epochs >= 1,
                 f"training.max_epochs must be >= 1 (or null: max_steps alone); got {self.max_epochs}")
        _require(self.learning_rate > 0, f"training.learning_rate must be > 0; got {self.learning_rate}")
        _require(self.lr_schedule in LR_SCHEDULES,
                 f"training.lr_schedule must be one of {list(LR_SCHEDULES)}; got {self.lr_schedule!r}")
        _require(0.0 <= self.ema_decay < 1.0, f"training.ema_decay must be in [0, 1); got {self.ema_decay}")
        for key in ("grad_clip", "warmup_steps", "sample_every"):
            _require(getattr(self, key) >= 0, f"training.{key} must be >= 0; got {getattr(self, key)}")
        _require(self.vae_beta >= 0, f"training.vae_beta must be >= 0; got {self.vae_beta}")
        check_logger_names(self.loggers)


def total_steps(training: TrainingConfig, num_images: int) -> int:
    """The step at which a run ends, the only end of a run: ``max_steps``, or ``max_epochs`` epochs if that
    comes first.

    Args:
        training: a :class:`TrainingConfig`.
        num_images: training images; an epoch is ``num_images // batch_size`` steps (at least 1; the
            batch is at most the dataset), as the Trainer draws them.

    Returns:
        The number of optimiser steps, >= 1.
    """
    if training.max_epochs is None:
        return training.max_steps
    steps_per_epoch = max(1, num_images // min(training.batch_size, num_images))
    return min(training.max_steps, training.max_epochs * steps_per_epoch)


@dataclass
class SamplingConfig:
    """The sampler's arguments: sample grids during training, ``sample`` / ``evaluate`` on the
    command line, sweeps and notebooks all read them from here (:meth:`sampler_kwargs`).

    Attributes:
        sampler: "ddpm" (Ho et al. 2020, Alg. 2), "ddim" (Song et al. 2021, eq. 12) or "dpmsolver++"
            (DPM-Solver++(2M), Lu et al. 2022, Alg. 2).
        num_inference_steps: K steps of the sampler, 1 <= K <= T; None (DDPM only) runs all T steps.
        guidance_scale: classifier-free guidance w as in diffusers (0 unconditional, 1 conditional,
            > 1 guided); Ho & Salimans' w is ours - 1. Used for conditional models only.
        eta: DDIM stochasticity in [0, 1] (0 deterministic, 1 DDPM-like); DDIM only.
        timestep_spacing: "leading", "trailing" or "linspace" (see ``sampling.inference_timesteps``).
        variance_type: DDPM sigma_t^2, "fixed_small" (posterior variance) or "fixed_large" (beta_t); DDPM only.
        clip_sample: clip predicted x_0 to [-1, 1] (eps re-derived from the clipped x_0).
        samples_per_class: columns of the per-class grid (unconditional models: images / 10).
    """

    sampler: str = "ddim"
    num_inference_steps: int | None = 50
    guidance_scale: float = 3.0
    eta: float = 0.0
    timestep_spacing: str = "leading"
    variance_type: str = "fixed_small"
    clip_sample: bool = True
    samples_per_class: int = 10

    def __post_init__(self):
        _require(self.sampler in SAMPLER_NAMES, f"sampling.sampler must be one of {list(SAMPLER_NAMES)}; got {self.sampler!r}")
        _require(self.num_inference_steps is None or self.num_inference_steps >= 1,
                 f"sampling.num_inference_steps must be >= 1 (or null: all T steps); got {self.num_inference_steps}")
        _require(self.num_inference_steps is not None or self.sampler == "ddpm",
                 f"sampling.num_inference_steps must be set for the {self.sampler} sampler (null: DDPM only)")
        _require(math.isfinite(self.guidance_scale) and self.guidance_scale >= 0,
                 f"sampling.guidance_scale must be >= 0 and finite; got {self.guidance_scale}")
        _require(0.0 <= self.eta <= 1.0, f"sampling.eta must be in [0, 1]; got {self.eta}")
        _require(self.timestep_spacing in TIMESTEP_SPACINGS, f"sampling.timestep_spacing must be one of "
                 f"{list(TIMESTEP_SPACINGS)}; got {self.timestep_spacing!r}")
        _require(self.variance_type in VARIANCE_TYPES,
                 f"sampling.variance_type must be one of {list(VARIANCE_TYPES)}; got {self.variance_type!r}")
        _require(self.samples_per_class >= 1, f"sampling.samples_per_class must be >= 1; got {self.samples_per_class}")

    def override(self, **changes) -> "SamplingConfig":
        """A validated copy with ``changes`` applied; a change whose value is None keeps the current value
        (so optional command-line options can be passed straight through).

        Raises:
            ValueError: an unknown key, or a value ``__post_init__`` rejects (named as ``sampling.<key>``).
        """
        names = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(names))
        _require(not unknown, f"unknown sampling setting(s) {unknown}; accepted: {names}")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def sampler_kwargs(self, conditional: bool = True) -> dict:
        """Keyword arguments for ``sampling.sample(model, schedule, shape=..., y=..., generator=..., **kwargs)``.

        Args:
            conditional: the model takes labels; an unconditional model samples with guidance_scale 1.0.

        Returns:
            sampler, num_inference_steps, guidance_scale, timestep_spacing, clip_sample, and ``eta``
            (DDIM) or ``variance_type`` (DDPM); DPM-Solver++ takes neither. The model's ``prediction_type`` comes from the
            diffusion config, not from here.
        """
        kwargs = dict(sampler=self.sampler, num_inference_steps=self.num_inference_steps,
                      guidance_scale=self.guidance_scale if conditional else 1.0,
                      timestep_spacing=self.timestep_spacing, clip_sample=self.clip_sample)
        if self.sampler == "ddim":
            return {**kwargs, "eta": self.eta}
        if self.sampler == "ddpm":
            return {**kwargs, "variance_type": self.variance_type}
        return kwargs


@dataclass
class ExperimentConfig:
    """One experiment: a name and the five sections above.

    ``name`` is also the default run folder ``runs/<name>``: a single folder name (no ``/`` or ``\\``,
    not ``.`` or ``..``, no leading dot), so a config cannot send its output outside ``runs/``.
    """

    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self):
        name = self.name
        bad = (not isinstance(name, str) or not name or name.startswith(".")
               or any(c in "/\\" or not c.isprintable() for c in name))
        _require(not bad, f"name must be a plain folder name (it becomes runs/<name>): no '/', '\\', control "
                          f"characters or leading '.'; got {self.name!r}")

    def to_dict(self) -> dict:
        """Plain nested dict (YAML/JSON/checkpoint friendly)."""
        return dataclasses.asdict(self)


def from_dict(cls: type, data: dict | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, checking keys and types recursively.

    Raises:
        ValueError: an unknown key (named with its dotted path and the accepted keys), a value
            of the wrong type, or a value the dataclass rejects.
    """
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(f"config section {prefix.rstrip('.') or '<root>'} must be a mapping; got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"unknown config key(s) {[prefix + k for k in unknown]}; accepted in this section: {names}")
    values = {key: _coerce(hints[key], value, prefix + key) for key, value in data.items()}
    return cls(**values)


def _coerce(kind: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(kind):
        return from_dict(kind, value, key + ".")
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        return None if value is None else _coerce(options[0], value, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {key} must be a list; got {value!r}")
        (item,) = typing.get_args(kind)
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if kind is dict or origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config key {key} must be a mapping; got {value!r}")
        return dict(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config key {key} must be true or false; got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config key {key} must be an integer; got {value!r}")
        return value
    if kind is float:
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads 1e-3 as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config key {key} must be a number; got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"config key {key} must be a finite number; got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"config key {key} must be a string; got {value!r}")
        return value
    return value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``section.key=value`` overrides to a nested dict (values parsed as YAML: 200, 0.5, true, [1, 2]).

    Raises:
        ValueError: an override without "=" or whose path crosses a non-mapping.
    """
    data = dict(data)
    for override in overrides or []:
        if "=" not in override:
            raise ValueError(f"override {override!r} must look like section.key=value (e.g. training.max_steps=200)")
        path, raw = override.split("=", 1)
        keys = path.strip().split(".")
        node = data
        for key in keys[:-1]:
            child = node.get(key, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {override!r}: {key!r} is not a section")
            node[key] = dict(child)
            node = node[key]
        node[keys[-1]] = yaml.safe_load(raw)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load an :class:`ExperimentConfig` from YAML (or defaults when ``path`` is None), then apply overrides.

    Args:
        path: a YAML file.
        overrides: dotted ``key=value`` strings.

    Returns:
        The validated config.

    Raises:
        ValueError: a folder, a file that is not UTF-8 or not valid YAML, a top level that is not a
            mapping of sections, unknown keys, wrong types or bad values (the file or key is named).
        FileNotFoundError: ``path`` does not exist.
    """
    data: dict = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"config file {path} is a folder, not a YAML file")
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"config file {path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
        except OSError as error:
            raise ValueError(f"cannot read config file {path}: {error.strerror or error}") from error
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(f"config file {path} is not valid YAML: {' '.join(str(error).split())}") from error
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a mapping of sections (name, data, model, diffusion, "
                             f"training, sampling); its top level is a {type(data).__name__}: {data!r:.80}")
    return from_dict(ExperimentConfig, apply_overrides(data, overrides))


def config_yaml(config: ExperimentConfig) -> str:
    """``config`` as YAML text (what the run folder's config.yaml holds; :func:`load_config` reads it back)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
