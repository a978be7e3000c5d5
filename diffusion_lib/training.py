"""The Trainer: a short loop over small parts, each with one job and its own module.

One loop trains both the diffusion UNet (the loss of :func:`diffusion_lib.diffusion.training_loss`)
and the VAE baseline (its ELBO): the kind's objective (:mod:`diffusion_lib.objectives`, named by
``models.KINDS``) gives the loss and the samples. The parts:

    training_state  weights, EMA, optimizer, learning-rate schedule, gradient scaler, step, random streams;
                    saved in the checkpoint and restored exactly (with the checks that a resume is the same run)
    batches         the seeded data order (a permutation per epoch; each DDP process takes its share)
    divergence      the guard that stops a run at a NaN or infinite loss, gradient or weight
    run_log         log.csv, the trackers (TensorBoard, wandb) and run.json

What stops a run, and what it leaves on disk:

- the run's end, :attr:`Trainer.max_steps` (``training.max_steps``, or ``training.max_epochs`` epochs if that
  comes first; :func:`~diffusion_lib.config.total_steps`): the final checkpoint, and run.json says finished;
- Ctrl-C (SIGINT) or ``docker stop`` / ``kill`` (SIGTERM): the step in flight finishes, a checkpoint
  is saved, :class:`TrainingInterrupted` is raised; ``resume=True`` continues exactly;
- a NaN or infinite loss or gradient (a diverged run): :class:`TrainingDiverged` names the step; no
  checkpoint is written from then on, so the last finite one stays (:mod:`diffusion_lib.divergence`).

Under ``torchrun`` the same loop runs data-parallel (:mod:`diffusion_lib.distributed`, docs/distributed.md):
``training.batch_size`` is the global batch, each rank takes a disjoint share of it, only rank 0 writes.

Output folder::

    config.yaml           the resolved config
    log.csv               step, loss, lr, images_per_sec (+ recon, kl for the VAE)
    events.out.tfevents.* TensorBoard (training.loggers; also wandb/ with "wandb"): diffusion_lib.loggers
    run.json              steps, wall time, final and best loss, images/s (read by experiments.runs)
    checkpoints/last.ckpt the latest checkpoint (atomic)
    samples/step_*.png    periodic sample grids (EMA weights); samples/final.png at the end
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .atomic import atomic_write_text, clean_stale_temporaries, make_folder
from .batches import BatchSampler, check_labels
from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .config import ExperimentConfig, apply_overrides, config_yaml, from_dict, load_config, total_steps
from .data import load_dataset, split_dataset
from .device import resolve_device
from .divergence import DivergenceGuard, TrainingDiverged
from .models import build_network, is_conditional
from .objectives import build_objective
from .run_log import RunLog
from .sampling import cycle_labels
from .training_state import EMA, TrainingState, build_optimizer, learning_rate_factor
from .viz import by_class, save_grid

# Re-exported: the parts' names as the Trainer's users know them (tests, benchmarks, notebooks).
__all__ = ["Trainer", "TrainingInterrupted", "TrainingDiverged", "EMA", "load_or_train", "total_steps",
           "learning_rate_factor", "build_optimizer", "build_network", "check_labels"]


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT (Ctrl-C) or SIGTERM (``docker stop``) after saving a checkpoint.

    Attributes:
        signum: the signal received (``signal.SIGINT`` or ``signal.SIGTERM``).
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _deferred_signals(on_signal):
    """Within the block, SIGINT and SIGTERM call ``on_signal(signum)`` instead of stopping the process
    mid-step (main thread only: elsewhere Python cannot install handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, lambda signum, frame: on_signal(signum)) for signum in DEFERRED_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class Trainer:
    """Trains the model an :class:`ExperimentConfig` describes.

    Args:
        config: the experiment.
        output_dir: where logs, checkpoints and samples go (created).
        dataset: an ``ImageDataset``-like object with ``get_batch(indices)``, ``__len__``, ``channels``,
            ``image_size``, ``num_classes`` and ``class_names``; default: ``load_dataset`` from ``config.data``.
            With ``config.data.val_fraction`` > 0 a seeded split is held out as ``self.val_dataset``.
        resume: continue from ``output_dir/checkpoints/last.ckpt`` (which must exist).
        progress: show a tqdm progress bar.

    Nothing is written until :meth:`train`: the model is built and runs one forward pass on a real
    image here, so a config that cannot train (image size not divisible, bad heads) fails before
    any file exists.

    Attributes:
        max_steps: the step the run ends at (:func:`~diffusion_lib.config.total_steps`).
        state: the :class:`~diffusion_lib.training_state.TrainingState`; ``model``, ``ema``, ``optimizer``,
            ``lr_scheduler``, ``grad_scaler``, ``generator`` and ``step`` are its.
        batches: the :class:`~diffusion_lib.batches.BatchSampler`; guard: the
            :class:`~diffusion_lib.divergence.DivergenceGuard`.

    Raises:
        ValueError: bad config, data that does not fit the model (one forward pass is tried), labels
            outside [0, num_classes - 1] for a conditional model (checked once here, not at every forward
            pass), or a resume checkpoint from another experiment.
        FileNotFoundError: ``resume`` without a checkpoint.
    """

    def __init__(self, config: ExperimentConfig, output_dir: str | Path, dataset=None, resume: bool = False,
                 progress: bool = True):
        t = config.training
        self.config, self.output_dir, self.progress = config, Path(output_dir), progress
        self.dist, self.device = distributed.init_from_env(resolve_device(t.device))
        self.is_main_process = self.dist.is_main  # only rank 0 writes files, logs and trackers
        if dataset is None:
            dataset = load_dataset(config.data.source, image_size=config.data.image_size, **config.data.options)
        if len(dataset) < 1:
            raise ValueError("the training dataset is empty")
        self.val_dataset = None
        if config.data.val_fraction > 0:  # seeded hold-out; the Trainer never sees it
            dataset, self.val_dataset = split_dataset(dataset, config.data.val_fraction, seed=t.seed)
        self.dataset = dataset
        global_batch = min(t.batch_size, len(dataset))
        if global_batch % self.dist.world_size:
            raise ValueError(f"training.batch_size={global_batch} is the global batch and must be divisible by "
                             f"the {self.dist.world_size} processes (each takes an equal share); "
                             f"use a multiple of {self.dist.world_size}")

        torch.manual_seed(t.seed)
        memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
        self.model = build_network(config, dataset.channels, dataset.image_size, dataset.num_classes).to(
            self.device, memory_format=memory_format)
        self.conditional = is_conditional(self.model)
        if self.conditional:
            check_labels(dataset, dataset.num_classes)
        self.objective = build_objective(config, self.device)
        self.schedule = self.objective.schedule  # None for the VAE
        self.max_steps = total_steps(t, len(dataset))  # the only end of a run: max_steps, or max_epochs first
        self.amp_dtype = self._amp_dtype()
        self._check_forward()
        self.batches = BatchSampler(dataset, t.batch_size, t.seed + 1, self.dist, self.device, memory_format,
                                    labels=self.conditional)
        self.state = TrainingState(config, self.model, self.device, self.dist, self.batches, self._data_info(),
                                   self.max_steps, self.amp_dtype)
        s = self.state
        self.ema, self.optimizer, self.lr_scheduler = s.ema, s.optimizer, s.lr_scheduler
        self.grad_scaler, self.generator = s.grad_scaler, s.generator
        self.grad_norm = None  # global gradient norm before clipping, of the last step (a tensor)
        self.guard = DivergenceGuard(self.device, self.dist, self.checkpoint_path, t.learning_rate)
        if resume:
            self.load(self.checkpoint_path)
            self.guard.saved_step = self.step
        self.train_model = distributed.wrap(self.model, self.dist, self.device)  # the forward that syncs gradients
        if t.compile:  # same parameters; only the training step runs the compiled graph
            self.train_model = torch.compile(self.train_model)

    @property
    def step(self) -> int:
        """Optimiser steps taken (the training state's)."""
        return self.state.step

    @step.setter
    def step(self, value: int) -> None:
        self.state.step = value

    @property
    def checkpoint_path(self) -> Path:
        """``output_dir/checkpoints/last.ckpt``."""
        return self.output_dir / "checkpoints" / "last.ckpt"

    def _check_forward(self) -> None:
        """One loss evaluation on two real images (eval mode, no grad, a throwaway generator: no random
        state of the run is touched), so a model that does not fit the data fails before anything is written.

        Raises:
            ValueError: the model's own message (e.g. image size not divisible by its downsampling factor).
        """
        x0, y = self.dataset.get_batch(torch.arange(min(2, len(self.dataset))))
        y = y.to(self.device) if self.conditional else None
        self.model.eval()
        try:
            with torch.no_grad(), self._autocast():
                self.objective.loss(self.model, x0.to(self.device), y, torch.Generator(self.device).manual_seed(0))
        finally:
            self.model.train()

    # ----- the loop ------------------------------------------------------------------------------

    def train(self, max_steps: int | None = None) -> Path:
        """Train until ``max_steps`` (default :attr:`max_steps`, the run's end) and save the last checkpoint.

        A smaller ``max_steps`` stops this session early (run.json then says not finished: the run ends at
        :attr:`max_steps`). Ctrl-C (SIGINT) and SIGTERM (``docker stop``) are deferred to the end of the current
        step: the step finishes, a checkpoint is saved and :class:`TrainingInterrupted` (a KeyboardInterrupt)
        is raised, so ``resume=True`` continues exactly from there.

        Returns:
            The path of the last checkpoint.

        Raises:
            TrainingDiverged: a NaN or infinite loss, gradient or weight; the message names the step. The
                last checkpoint written before it (all finite) is kept.
            TrainingInterrupted: SIGINT or SIGTERM, after the checkpoint is saved.
            WriteError: the output folder cannot be written (``cannot write PATH: reason``).
        """
        t = self.config.training
        max_steps = self.max_steps if max_steps is None else max_steps
        if self.is_main_process:  # under DDP only rank 0 writes
            make_folder(self.output_dir)
            clean_stale_temporaries(self.checkpoint_path)  # left by a process killed while saving
            atomic_write_text(self.output_dir / "config.yaml", config_yaml(self.config))
        run_log = RunLog(self.config, self.output_dir, self.objective.log_fields, self.step, self.is_main_process)
        session_start = time.perf_counter()
        self.model.train()
        bar = tqdm(total=max_steps, initial=self.step, desc=self.config.name,
                   disable=not (self.progress and self.is_main_process), dynamic_ncols=True)
        self.guard.before_raise = bar.close
        window_seconds, window_images = 0.0, 0  # training time only: sampling and checkpoints excluded
        interrupted = []
        with _deferred_signals(interrupted.append), contextlib.ExitStack() as finish:
            finish.callback(lambda: run_log.finish(self.step, self.max_steps, len(self.dataset),
                                                   time.perf_counter() - session_start))
            stop = 0  # the signal that stops the run, on any process (DDP: all stop after the same step)
            while self.step < max_steps and not (stop := distributed.max_int(interrupted[0] if interrupted else 0,
                                                                            self.dist)):
                start = time.perf_counter()
                x0, y = self._next_batch()
                terms = self.train_step(x0, y)
                window_seconds += time.perf_counter() - start
                window_images += len(x0) * self.dist.world_size  # the global batch
                bar.update(1)
                if self.step % t.log_every == 0 or self.step == max_steps:
                    self._log_row(run_log, bar, terms, window_images / max(window_seconds, 1e-9))
                    window_seconds, window_images = 0.0, 0
                    self.guard.check()
                if t.sample_every and self.step % t.sample_every == 0:
                    self.guard.check()
                    run_log.image(self.step, self.save_samples(self.output_dir / "samples" / f"step_{self.step:07d}.png"))
                if self.step % t.checkpoint_every == 0 and self.step < max_steps:
                    self._save_if_finite()
            bar.close()
            self._save_if_finite()  # before run.json says "finished" (the ExitStack's callback)
        if stop:  # a signal here or (DDP) on another process
            raise TrainingInterrupted(f"training interrupted by {signal.Signals(stop).name} at step {self.step}; "
                                      f"checkpoint saved to {self.checkpoint_path} (continue with resume=True / "
                                      "--resume)", stop)
        return self.checkpoint_path

    def train_step(self, x0: torch.Tensor, y: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """One optimiser step on a batch; returns the loss terms as detached scalar tensors (no host sync)."""
        t = self.config.training
        with self._autocast():
            loss, terms = self.objective.loss(self.train_model, x0, y, self.generator)  # DDP: syncs gradients
        self.optimizer.zero_grad(set_to_none=True)
        self.grad_scaler.scale(loss).backward()
        bad = ~torch.isfinite(loss.detach())
        if t.grad_clip > 0:
            self.grad_scaler.unscale_(self.optimizer)
            self.grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            if not self.grad_scaler.is_enabled():  # fp16's scaler skips steps with inf gradients by design
                bad = bad | ~torch.isfinite(self.grad_norm)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        self.lr_scheduler.step()
        self.ema.update(self.model)
        self.step += 1
        self.guard.record(bad, self.step)  # on the device: no host sync (read at log rows and saves)
        return terms

    def _log_row(self, run_log: RunLog, bar, terms: dict[str, torch.Tensor], images_per_sec: float) -> None:
        """One row of the run log: the loss terms averaged over processes (the loop's only host sync)."""
        means = distributed.mean_(list(terms.values()), self.dist)  # over processes (DDP)
        values = {k: v.item() for k, v in zip(terms, means)}
        row = {"step": self.step, **values, "lr": self.lr_scheduler.get_last_lr()[0], "images_per_sec": images_per_sec}
        run_log.row(row, grad_norm=self._grad_norm_value(), ema_decay=self.ema.current_decay)
        bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{images_per_sec:.0f}")

    def _grad_norm_value(self) -> float:
        """The last step's global gradient norm (before clipping): from the clipping, else from the gradients."""
        if self.grad_norm is None or self.config.training.grad_clip <= 0:
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            if not grads:
                return float("nan")
            scale = self.grad_scaler.get_scale() if self.grad_scaler.is_enabled() else 1.0
            return float(torch.nn.utils.get_total_norm(grads)) / scale
        return float(self.grad_norm)

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This process's share of the next global batch (:meth:`BatchSampler.next`; labels: conditional only)."""
        return self.batches.next()

    def _amp_dtype(self) -> torch.dtype | None:
        if not (self.config.training.amp and self.device.type == "cuda"):
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype)

    # ----- samples -------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, num_samples: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Samples from the EMA weights with the config's sampling settings (VAE: from the prior).

        Conditional models cycle through the classes; default count: ``sampling.samples_per_class`` per
        class (10 rows for an unconditional model).

        Returns:
            (images float32 (N, C, H, W) in [-1, 1], int64 labels (N,) or None).
        """
        classes = max(self.dataset.num_classes, 1) if self.conditional else 10
        num_samples = num_samples or self.config.sampling.samples_per_class * classes
        generator = torch.Generator(self.device).manual_seed(seed)
        labels = cycle_labels(num_samples, self.dataset.num_classes).to(self.device) if self.conditional else None
        shape = (num_samples, self.dataset.channels, self.dataset.image_size, self.dataset.image_size)
        return self.objective.generate(self.ema.model, shape, labels, generator), labels

    def save_samples(self, path: Path) -> Path:
        """Write a grid of :meth:`generate`'s samples: one row per class for conditional models (DDP: rank 0 only;
        the others return ``path`` without sampling)."""
        if not self.is_main_process:
            return Path(path)
        images, labels = self.generate()
        if labels is not None:
            images, per_row = by_class(images, labels)
        else:
            per_row = int(math.sqrt(len(images)))
        return save_grid(images, path, nrow=per_row)

    # ----- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to continue exactly (:meth:`TrainingState.state_dict`; under DDP a collective)."""
        return self.state.state_dict()

    def _data_info(self) -> dict:
        """What the checkpoint records of the training data (and what a resume must match)."""
        d = self.dataset
        return {"source": self.config.data.source, "channels": d.channels, "image_size": d.image_size,
                "num_classes": d.num_classes, "class_names": list(d.class_names or []), "num_images": len(d)}

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint atomically, if every weight (model and EMA) is finite.

        Raises:
            TrainingDiverged: a NaN or infinite weight; nothing is written (the previous file stays).
            WriteError: the file system refused (``cannot write PATH: reason``).
        """
        self.guard.check_weights([*self.model.parameters(), *self.ema.model.parameters()], self.step)
        state = self.state_dict()  # DDP: a collective (every rank's generators), then rank 0 alone writes
        if self.is_main_process:
            save_checkpoint(state, path)
        return Path(path)

    def _save_if_finite(self) -> None:
        """Save the checkpoint unless training diverged (or, checked by :meth:`save`, a weight is not finite)."""
        self.guard.check()
        self.save(self.checkpoint_path)
        self.guard.saved_step = self.step

    def load(self, path: str | Path) -> None:
        """Restore the full training state from a checkpoint of the same model (:meth:`TrainingState.load`).

        Raises:
            ValueError: corrupt/foreign file, a checkpoint of a different model configuration, or other
                ``diffusion`` settings or data.
        """
        self.state.load(path)


# Config keys that do not change the weights at a given step: a checkpoint that differs only here is reused.
# (max_steps and max_epochs only say where to stop: a resumed run equals an uninterrupted one, so a shorter
# run is continued.)
REUSABLE_DIFFERENCES = ("name", "training.max_steps", "training.max_epochs", "training.device", "training.log_every",
                        "training.sample_every", "training.checkpoint_every", "training.loggers",
                        "training.wandb_project", "training.wandb_group", "sampling.")


def _weight_settings(config: ExperimentConfig) -> dict:
    """``{dotted key: value}`` of the settings that shape the weights (all but :data:`REUSABLE_DIFFERENCES`)."""
    flat = {f"{section}.{key}": value for section, values in config.to_dict().items() if isinstance(values, dict)
            for key, value in values.items()}
    return {k: v for k, v in flat.items() if not any(k == r or (r.endswith(".") and k.startswith(r))
                                                    for r in REUSABLE_DIFFERENCES)}


def load_or_train(config: ExperimentConfig | str | Path, output_dir: str | Path, overrides: Sequence[str] = (),
                  device: str | torch.device = "auto", progress: bool = True, dataset=None):
    """Load the model ``config`` describes from ``output_dir``, training it first if needed (for notebooks).

    What happens, by the state of ``output_dir/checkpoints/last.ckpt``:

    - it exists, was trained with the same settings and stopped at exactly ``training.max_steps`` (or at
      ``training.max_epochs`` epochs, if that comes first): loaded;
    - same settings, fewer steps (an interrupted run, or max_steps raised): training resumes and finishes
      (the result equals an uninterrupted run: the Trainer's resume is exact);
    - it does not exist, it went past ``max_steps``, or a setting that shapes the weights differs (data,
      model, diffusion, and training except max_steps/device/log_every/sample_every/checkpoint_every):
      trained from scratch; the old checkpoint, log and samples in ``output_dir`` are overwritten.

    The name and the ``sampling`` section never cause retraining; the returned ``config`` is the
    requested one, so ``loaded.config.sampling.sampler_kwargs()`` gives the requested sampler settings.

    Args:
        config: an ExperimentConfig, or the path of a YAML config (e.g. ``configs/digits_cfg.yaml``).
        output_dir: the run folder (config.yaml, log.csv, checkpoints/, samples/).
        overrides: dotted ``key=value`` strings applied on top of ``config`` (as ``--set``).
        device: where to train and load: "auto" (cuda, mps, cpu) or a device; it overrides
            ``training.device`` and never causes retraining.
        progress: show the training progress bar.
        dataset: the training data (default: ``load_dataset`` from ``config.data``), as for :class:`Trainer`.

    Returns:
        :class:`~diffusion_lib.checkpoint.LoadedModel` with the EMA weights in eval mode on ``device``.

    Raises:
        ValueError: a bad config or override; a corrupt or foreign checkpoint (it is not overwritten).
        FileNotFoundError: a config path that does not exist.
    """
    if isinstance(config, ExperimentConfig):
        config = from_dict(ExperimentConfig, apply_overrides(config.to_dict(), list(overrides)))
    else:
        config = load_config(config, list(overrides))
    device = resolve_device(device)
    config = dataclasses.replace(config, training=dataclasses.replace(config.training, device=str(device)))
    output_dir = Path(output_dir)
    path = output_dir / "checkpoints" / "last.ckpt"
    resume = False
    if path.exists():
        state = load_checkpoint(path)
        same = _weight_settings(from_dict(ExperimentConfig, state["config"])) == _weight_settings(config)
        end = total_steps(config.training, state["data"].get("num_images", 0) or 1)
        resume = same and state["step"] <= end
        if resume and state["step"] == end:
            loaded = load_model(path, device=device)
            loaded.config = config
            return loaded
    trainer = Trainer(config, output_dir, dataset=dataset, resume=resume, progress=progress)
    trainer.train()
    loaded = load_model(trainer.checkpoint_path, device=device)
    loaded.config = config
    return loaded
