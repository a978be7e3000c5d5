"""Sampler sweeps: many ways of drawing from one trained model, from the same starting noise, timed and scored.

A trained diffusion model does not fix how images are drawn from it. :func:`sampler_sweep` runs a list
of :class:`SamplerSetting` (sampler, num_inference_steps, DDIM eta, DDPM variance, guidance scale,
starting-noise seed) on one model and measures, per setting:

- ``seconds`` and ``sec_per_image``: wall time of the sampler (the device synchronised before and after);
- ``nfe``: network evaluations per image (sampler steps; Heun-type diffusers schedulers use 2 per step;
  the doubled batch of classifier-free guidance is not counted);
- ``class_accuracy``: share of samples a judge classifier assigns to their label
  (:func:`diffusion_lib.metrics.class_accuracy`);
- ``diversity``: mean pairwise distance of the samples (:func:`diffusion_lib.metrics.diversity`);
- ``fid``, ``kid_mean``, ``kid_std`` against real images when they are given
  (:func:`diffusion_lib.metrics.evaluate_samples`, which names its ``extractor``);
- ``reference_distance`` and ``reference_max_abs``: how far each sample lands from its partner in a
  reference run from the same noise (:func:`diffusion_lib.metrics.paired_distance`), e.g. a 1000-step
  DDPM or a many-step DDIM, or diffusers' DDIM against ours.

Every setting starts from the same x_T (drawn once from ``seed``) and asks for the same labels, so two
rows differ only by the sampler; a setting with its own ``seed`` draws its own x_T (to measure chance).
:func:`pipeline_sweep` does the same for a diffusers pipeline (schedulers x steps), and
:func:`seed_spread` summarises how much the scores move between seeds. Notebook 07 plots these tables.
"""

from __future__ import annotations

import itertools
import time
import warnings
from dataclasses import dataclass, fields
from typing import Sequence

import pandas as pd
import torch
from torch import nn

from ..device import randn, resolve_device
from ..metrics.evaluate import evaluate_samples
from ..metrics.scores import paired_distance
from ..models import is_conditional
from ..sampling import cycle_labels, sample
from ..schedules import NoiseSchedule

DIFFUSERS_PREFIX = "diffusers:"
COLUMNS = ("name", "sampler", "steps", "eta", "variance_type", "guidance_scale", "seed", "nfe", "seconds",
           "sec_per_image", "extractor", "fid", "kid_mean", "kid_std", "class_accuracy", "diversity",
           "reference_distance", "reference_max_abs", "notes")
SPREAD_COLUMNS = ("fid", "kid_mean", "class_accuracy", "diversity")


@dataclass(frozen=True)
class SamplerSetting:
    """One way to draw samples from a model.

    Attributes:
        sampler: "ddpm" (Ho et al. 2020, Alg. 2, respaced when steps < T), "ddim" (Song et al. 2021,
            eq. 12), "dpmsolver++" (Lu et al. 2022, Alg. 2), or ``"diffusers:<name>"`` for a diffusers scheduler on our model
            (:func:`diffusion_lib.interop.sample_with_diffusers_scheduler`; names as in ``interop.SCHEDULERS``).
        steps: num_inference_steps K in [1, T]; None: all T for DDPM, 20 for DPM-Solver++, 50 otherwise.
        eta: DDIM stochasticity in [0, 1] (DDIM only; None: 0).
        variance_type: DDPM's "fixed_small" or "fixed_large" (DDPM only; None: "fixed_small").
        guidance_scale: classifier-free w (0 unconditional, 1 conditional, > 1 guided); None: the sweep's.
        seed: seed of this setting's own starting noise; None: the sweep's shared x_T.
    """

    sampler: str = "ddim"
    steps: int | None = None
    eta: float | None = None
    variance_type: str | None = None
    guidance_scale: float | None = None
    seed: int | None = None

    @property
    def name(self) -> str:
        """A short row label, e.g. ``"ddim 10 eta=0.5 w=3"`` (only the fields that are set)."""
        parts = [self.sampler.removeprefix(DIFFUSERS_PREFIX), "" if self.steps is None else str(self.steps)]
        parts += [f"eta={self.eta:g}" if self.eta is not None else "", self.variance_type or "",
                  f"w={self.guidance_scale:g}" if self.guidance_scale is not None else "",
                  f"seed={self.seed}" if self.seed is not None else ""]
        return " ".join(p for p in parts if p)


def settings_grid(sampler: str, **axes) -> list[SamplerSetting]:
    """Every combination of the given values for one sampler, in the order given (last axis fastest).

    Example: ``settings_grid("ddim", steps=[10, 50], eta=[0.0, 1.0])`` gives four settings.

    Args:
        sampler: the sampler of every setting (see :class:`SamplerSetting`).
        **axes: field name -> a value or a sequence of values; fields: steps, eta, variance_type,
            guidance_scale, seed.

    Returns:
        list of :class:`SamplerSetting`.

    Raises:
        ValueError: an unknown field name.
    """
    known = {f.name for f in fields(SamplerSetting)} - {"sampler"}
    unknown = sorted(set(axes) - known)
    if unknown:
        raise ValueError(f"unknown setting fields {unknown}; accepted: {sorted(known)}")
    names = list(axes)
    values = [v if isinstance(v, (list, tuple, range)) else [v] for v in axes.values()]
    return [SamplerSetting(sampler, **dict(zip(names, combo))) for combo in itertools.product(*values)]


@dataclass
class SamplerSweep:
    """Result of :func:`sampler_sweep` / :func:`pipeline_sweep`.

    Attributes:
        table: one row per setting, columns :data:`COLUMNS` (None / NaN where not measured).
        samples: setting name -> images float32 (N, C, H, W) in [-1, 1] on the CPU, in table order.
        labels: int64 (N,) the labels every setting was asked for (the same for all), or None.
        reference: float32 (N, C, H, W) the reference images, or None.
    """

    table: pd.DataFrame
    samples: dict[str, torch.Tensor]
    labels: torch.Tensor | None = None
    reference: torch.Tensor | None = None

    def grid_rows(self, per_row: int | None = None) -> dict[str, torch.Tensor]:
        """The first ``per_row`` images of every setting (default: one per class, else 8), for a grid
        with one row per setting and, with cycling labels, one column per class."""
        if per_row is None:
            per_row = int(self.labels.max()) + 1 if self.labels is not None else 8
        return {name: images[:per_row] for name, images in self.samples.items()}


def _timed(run, device: torch.device):
    """Run ``run()`` and return (its result, wall seconds), the device synchronised around it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def _score(images, labels, *, real, real_labels, judge, metrics, reference, device, seed, evaluate_options) -> dict:
    """The score columns of one row: evaluate_samples' numbers plus the distance to the reference."""
    with warnings.catch_warnings():  # the small-sample FID caveat is kept in the row's notes
        warnings.filterwarnings("ignore", message="FID from", category=UserWarning)
        result = evaluate_samples(images, real, labels=labels, real_labels=real_labels, classifier=judge,
                                  metrics=metrics, device=device, seed=seed, **(evaluate_options or {}))
    row = {k: getattr(result, k) for k in ("extractor", "fid", "kid_mean", "kid_std", "class_accuracy", "diversity")}
    row["notes"] = "; ".join(result.notes)
    if reference is not None:
        row["reference_distance"] = paired_distance(images, reference)
        row["reference_max_abs"] = float((images - reference).abs().max())
    return row


def _default_metrics(real, labels, judge, real_labels, images_per_setting: int) -> tuple[str, ...]:
    metrics = ("fid", "kid") if real is not None else ()
    metrics += ("diversity",) if images_per_setting >= 2 else ()
    can_judge = labels is not None and (judge is not None or (real is not None and real_labels is not None))
    return metrics + (("accuracy",) if can_judge else ())


def _run_setting(model, schedule, setting: SamplerSetting, x_T, labels, guidance_scale, prediction_type,
                 clip_sample, seed):
    """Draw the samples of one setting; returns (images on the CPU, nfe)."""
    w = guidance_scale if setting.guidance_scale is None else setting.guidance_scale
    generator = torch.Generator().manual_seed(seed if setting.seed is None else setting.seed)
    common = dict(noise=x_T, y=labels, guidance_scale=w, prediction_type=prediction_type, clip_sample=clip_sample,
                  generator=generator)
    if setting.sampler.startswith(DIFFUSERS_PREFIX):
        from .. import interop  # diffusers is an optional dependency: imported only when asked for

        out = interop.sample_with_diffusers_scheduler(model, schedule, setting.sampler.removeprefix(DIFFUSERS_PREFIX),
                                                      num_inference_steps=setting.steps or 50, **common)
        return out.images.float().cpu(), out.num_model_evaluations
    if setting.sampler == "ddim":
        extra = dict(eta=0.0 if setting.eta is None else setting.eta, num_inference_steps=setting.steps or 50)
    elif setting.sampler == "ddpm":
        extra = dict(variance_type=setting.variance_type or "fixed_small", num_inference_steps=setting.steps)
    elif setting.sampler == "dpmsolver++":
        extra = dict(num_inference_steps=setting.steps or 20)
    else:
        raise ValueError(f"unknown sampler {setting.sampler!r}; accepted: 'ddpm', 'ddim', 'dpmsolver++', "
                         f"'{DIFFUSERS_PREFIX}<name>'")
    if setting.eta is not None and setting.sampler != "ddim":
        raise ValueError(f"eta applies to DDIM only; got it for {setting.sampler!r} ({setting.name})")
    if setting.variance_type is not None and setting.sampler != "ddpm":
        raise ValueError(f"variance_type applies to DDPM only; got it for {setting.sampler!r} ({setting.name})")
    out = sample(model, schedule, setting.sampler, **common, **extra)
    return out.images.float().cpu(), setting.steps or schedule.num_train_timesteps


def sampler_sweep(model: nn.Module, schedule: NoiseSchedule, settings: Sequence[SamplerSetting], *,
                  image_shape: Sequence[int] | None = None, num_samples: int | None = None,
                  noise: torch.Tensor | None = None, labels: torch.Tensor | None = None, seed: int = 0,
                  guidance_scale: float = 1.0, prediction_type: str = "epsilon", clip_sample: bool = True,
                  judge: nn.Module | None = None, real=None, real_labels: torch.Tensor | None = None,
                  metrics: Sequence[str] | None = None, reference: torch.Tensor | SamplerSetting | None = None,
                  evaluate_options: dict | None = None, warmup: bool = True) -> SamplerSweep:
    """Sample with every setting from the same x_T and labels; time and score each run.

    Args:
        model: ``model(x_t, t, y)`` in eval mode; its device is where sampling runs.
        schedule: the schedule it was trained with.
        settings: the settings to run (e.g. from :func:`settings_grid`); repeated names run once.
        image_shape: (C, H, W) of a sample; or give ``noise``.
        num_samples: N images per setting (default: ``len(noise)``); or give ``noise``.
        noise: the shared starting noise x_T (N, C, H, W); default drawn from ``seed`` (CPU generator).
        labels: int64 (N,) labels; default 0, 1, ..., K-1, 0, ... for a class-conditional model, else None.
        seed: seed of the shared noise and of every stochastic sampler's noise z.
        guidance_scale: classifier-free w of settings that leave it None.
        prediction_type, clip_sample: passed to every sampler.
        judge: classifier for ``class_accuracy`` (trained on clean real images), or None.
        real: real images float (M, C, H, W) in [-1, 1] or an ImageDataset, for FID / KID (and a domain
            judge with ``real_labels``); None skips them.
        real_labels: int64 (M,) labels of ``real`` (an ImageDataset brings its own).
        metrics: subset of ("fid", "kid", "is", "diversity", "accuracy"); default: fid and kid with ``real``,
            diversity, accuracy when a judge is available.
        reference: images (N, C, H, W) paired with the samples, or a setting run once from the same x_T
            (e.g. ``SamplerSetting("ddpm")``, the full chain); None skips the reference columns.
        evaluate_options: further arguments of :func:`~diffusion_lib.metrics.evaluate_samples`
            (extractor, dataset, cache_dir, domain_steps, ...).
        warmup: run a 1-step DDIM on 2 images first, untimed, so the first row does not pay start-up costs.

    Returns:
        :class:`SamplerSweep`: the table (one row per setting, :data:`COLUMNS`), the samples, labels, reference.

    Raises:
        ValueError: no settings; neither ``noise`` nor ``image_shape`` and ``num_samples``; an unknown
            sampler; eta for a non-DDIM or variance_type for a non-DDPM setting; a reference of another
            shape; bad settings the samplers or ``evaluate_samples`` refuse (named in their messages).
    """
    if not settings:
        raise ValueError("settings is empty; build some with settings_grid('ddim', steps=[10, 50])")
    device = next(model.parameters()).device
    if noise is None:
        if image_shape is None or num_samples is None:
            raise ValueError("give the starting noise, or image_shape=(C, H, W) and num_samples=N")
        noise = randn((num_samples, *image_shape), torch.Generator().manual_seed(seed), device)
    noise = noise.to(device)
    n = noise.shape[0]
    if labels is None and is_conditional(model):
        labels = cycle_labels(n, model.num_classes)
    labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long).to(device)
    if metrics is None:
        metrics = _default_metrics(real, labels, judge, real_labels if real_labels is not None
                                   else getattr(real, "labels", None), n)
    if warmup:
        sample(model, schedule, "ddim", noise=noise[:2], y=None if labels is None else labels[:2],
               guidance_scale=guidance_scale, num_inference_steps=1, prediction_type=prediction_type)

    def run(setting):
        x_T = noise if setting.seed is None else randn(noise.shape, torch.Generator().manual_seed(setting.seed), device)
        return _timed(lambda: _run_setting(model, schedule, setting, x_T, labels, guidance_scale, prediction_type,
                                           clip_sample, seed), device)

    if isinstance(reference, SamplerSetting):
        (reference, _), _ = run(reference)
    if reference is not None:
        reference = reference.detach().float().cpu()
        if reference.shape != noise.shape:
            raise ValueError(f"reference must have the samples' shape {tuple(noise.shape)}; got {tuple(reference.shape)}")
    rows, samples = [], {}
    for setting in settings:
        if setting.name in samples:
            continue
        (images, nfe), seconds = run(setting)
        row = dict(name=setting.name, sampler=setting.sampler, steps=setting.steps or nfe, eta=setting.eta,
                   variance_type=setting.variance_type,
                   guidance_scale=guidance_scale if setting.guidance_scale is None else setting.guidance_scale,
                   seed=seed if setting.seed is None else setting.seed, nfe=nfe, seconds=seconds,
                   sec_per_image=seconds / n)
        row.update(_score(images, None if labels is None else labels.cpu(), real=real, real_labels=real_labels,
                          judge=judge, metrics=tuple(metrics), reference=reference, device=device, seed=seed,
                          evaluate_options=evaluate_options))
        rows.append(row)
        samples[setting.name] = images
    table = pd.DataFrame(rows).reindex(columns=list(COLUMNS))
    return SamplerSweep(table, samples, None if labels is None else labels.cpu(), reference)


def pipeline_sweep(pipeline, schedulers: Sequence[str], steps: Sequence[int], *, batch_size: int = 8,
                   guidance_scales: Sequence[float | None] = (None,), prompt: str | None = None, real=None,
                   seed: int = 0, device: str | torch.device = "auto",
                   evaluate_options: dict | None = None) -> SamplerSweep:
    """Run a diffusers pipeline with every scheduler x steps (x guidance scale), timed and scored.

    Each run uses :func:`diffusion_lib.interop.pipeline_sample` with a fresh generator seeded ``seed``,
    so runs differ only by the scheduler and steps. Scores: diversity always; FID and KID when ``real``
    images of the same (C, H, W) as the pipeline's are given (else a note says why they are missing).

    Args:
        pipeline: a diffusers pipeline (e.g. ``interop.load_pretrained_pipeline(name)``).
        schedulers: scheduler names of ``interop.SCHEDULERS``.
        steps: num_inference_steps values.
        batch_size: images per run (>= 2 for diversity).
        guidance_scales: guidance scales of text-conditional pipelines; ``(None,)`` for unconditional ones.
        prompt: text prompt of text-to-image pipelines.
        real: real images float (M, C, H, W) in [-1, 1] or an ImageDataset of the pipeline's domain, or None.
        seed: seed of every run.
        device: where features are computed.
        evaluate_options: further arguments of :func:`~diffusion_lib.metrics.evaluate_samples`.

    Returns:
        :class:`SamplerSweep` with columns ``name, sampler (the scheduler), steps, guidance_scale, seed,
        seconds, sec_per_image`` and the scores; ``samples`` keyed by name ("<scheduler> <steps>[ w=<w>]").

    Raises:
        ValueError: batch_size < 2, or what ``pipeline_sample`` / ``evaluate_samples`` refuse.
    """
    from .. import interop  # diffusers is an optional dependency: imported only when asked for

    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (diversity compares images); got {batch_size}")
    device = resolve_device(device)
    rows, samples = [], {}
    for name, k, w in itertools.product(schedulers, steps, guidance_scales):
        images, seconds = _timed(lambda: interop.pipeline_sample(
            pipeline, scheduler=name, num_inference_steps=k, batch_size=batch_size, guidance_scale=w, prompt=prompt,
            generator=torch.Generator().manual_seed(seed)), device)
        real_shape = None if real is None else (tuple(real.shape[1:]) if torch.is_tensor(real)
                                                else (real.channels, real.image_size, real.image_size))
        fits = real_shape == tuple(images.shape[1:])
        label = f"{name} {k}" + (f" w={w:g}" if w is not None else "")
        row = dict(name=label, sampler=name, steps=k, guidance_scale=w, seed=seed, seconds=seconds,
                   sec_per_image=seconds / len(images))
        row.update(_score(images, None, real=real if fits else None, real_labels=None, judge=None,
                          metrics=("fid", "kid", "diversity") if fits else ("diversity",), reference=None,
                          device=device, seed=seed, evaluate_options=evaluate_options))
        if real is not None and not fits:
            row["notes"] = (f"real images {real_shape} differ from the samples {tuple(images.shape[1:])}: "
                            "no FID/KID")
        rows.append(row)
        samples[label] = images
    return SamplerSweep(pd.DataFrame(rows).reindex(columns=list(COLUMNS)), samples)


def seed_spread(table: pd.DataFrame, columns: Sequence[str] = SPREAD_COLUMNS) -> pd.DataFrame:
    """Mean and standard deviation of score columns over the rows of a sweep (e.g. one setting, several seeds).

    A difference between two settings means something only if it is larger than this spread.

    Args:
        table: a sweep table (e.g. ``sampler_sweep(..., settings_grid("ddim", steps=50, seed=[0, 1, 2])).table``).
        columns: the score columns; those absent or never measured are left out.

    Returns:
        DataFrame with rows "mean" and "std" and one column per score.
    """
    present = [c for c in columns if c in table.columns and table[c].notna().any()]
    return table[present].astype(float).agg(["mean", "std"])
