"""The Trainer: batches, loss, AdamW, EMA, AMP, gradient clipping, logging, sample grids, checkpoints, resume.

One loop trains both the diffusion UNet (the loss of :func:`diffusion_lib.diffusion.training_loss`)
and the VAE baseline (its ELBO): the kind's objective (:mod:`diffusion_lib.objectives`) gives the loss
and the samples. Everything that decides what happens next (weights, EMA,
optimizer, learning-rate schedule, step, every random generator and the data order) is saved in
the checkpoint, so a resumed run continues exactly where the interrupted one stopped.

What stops a run, and what it leaves on disk:

- ``max_steps`` or ``max_epochs`` reached: the final checkpoint;
- Ctrl-C (SIGINT) or ``docker stop`` / ``kill`` (SIGTERM): the step in flight finishes, a checkpoint
  is saved, :class:`TrainingInterrupted` is raised; ``resume=True`` continues exactly;
- a NaN or infinite loss or gradient (a diverged run): :class:`TrainingDiverged` names the step; no
  checkpoint is written from then on, so the last finite one stays (checked without a per-step GPU
  sync: a flag accumulates on the device and is read at log rows and before every save, which also
  checks that every weight is finite).

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
import copy
import dataclasses
import csv
import io
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
from .atomic import WriteError, atomic_write_text, clean_stale_temporaries, make_folder
from .checkpoint import load_checkpoint, save_checkpoint
from .config import LR_SCHEDULES, ExperimentConfig, save_config
from .device import resolve_device
from .loggers import RunSummary, flatten_config, open_trackers, read_png
from .models import build_model, is_conditional
from .objectives import build_objective
from .sampling import cycle_labels
from .viz import by_class, save_grid


class EMA:
    """Exponential moving average of a model's weights (Polyak averaging; Ho et al. 2020 used decay 0.9999).

    The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so early averages are
    not dominated by the random initialisation. Buffers are copied, not averaged.

    Args:
        model: the model being trained; a frozen copy is kept in ``self.model``.
        decay: target decay in [0, 1).
    """

    def __init__(self, model: nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move every averaged parameter toward the model's: ema += (1 - decay_n) (param - ema)."""
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        ema_params = list(self.model.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1.0 - decay)
        for ema_buffer, buffer in zip(self.model.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)

    @property
    def current_decay(self) -> float:
        """The decay the last update used: min(decay, (1 + n) / (10 + n)) after n updates."""
        n = max(self.num_updates, 1)
        return min(self.decay, (1 + n) / (10 + n))


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT (Ctrl-C) or SIGTERM (``docker stop``) after saving a checkpoint.

    Attributes:
        signum: the signal received (``signal.SIGINT`` or ``signal.SIGTERM``).
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class TrainingDiverged(RuntimeError):
    """The loss or a gradient became NaN or infinite (or a weight did); the message names the step
    and the last finite checkpoint, which is kept."""


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


def total_steps(training, num_images: int) -> int:
    """The step at which a run ends: ``max_steps``, or ``max_epochs`` epochs if that comes first.

    Args:
        training: a :class:`~diffusion_lib.config.TrainingConfig`.
        num_images: training images; an epoch is ``num_images // batch_size`` steps (at least 1; the
            batch is at most the dataset), as the Trainer draws them.

    Returns:
        The number of optimiser steps, >= 1.
    """
    if training.max_epochs is None:
        return training.max_steps
    steps_per_epoch = max(1, num_images // min(training.batch_size, num_images))
    return min(training.max_steps, training.max_epochs * steps_per_epoch)


def learning_rate_factor(step: int, warmup_steps: int, max_steps: int, schedule: str = "constant") -> float:
    """The multiplier of ``training.learning_rate`` for optimiser step ``step`` (0-based).

    Linear warm-up (step + 1) / (warmup_steps + 1) to 1, then "constant" (1) or "cosine": half a cosine
    from 1 down to 0 at ``max_steps`` (Loshchilov & Hutter 2017, eq. 5 without restarts), as diffusers'
    ``get_cosine_schedule_with_warmup``. Returns a float in [0, 1] (0 only once ``step`` reaches ``max_steps``).

    Raises:
        ValueError: an unknown ``schedule`` (accepted: ``config.LR_SCHEDULES``).
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {list(LR_SCHEDULES)}; got {schedule!r}")
    if step < warmup_steps or schedule == "constant":
        return min(1.0, (step + 1) / (warmup_steps + 1))
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(model: nn.Module, training, device: torch.device) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter 2019) over the model's parameters at ``training.learning_rate`` and
    ``training.weight_decay``, with the fused kernel (one pass over all parameters) on CPU and CUDA."""
    return torch.optim.AdamW(model.parameters(), lr=training.learning_rate, weight_decay=training.weight_decay,
                             fused=device.type in ("cpu", "cuda"))


def build_network(config: ExperimentConfig, channels: int, image_size: int, num_classes: int) -> nn.Module:
    """The network the config asks for, fitted to the data's channels, size and classes.

    Raises:
        ValueError: a conditional model on unlabeled data, or bad hyper-parameters.
    """
    m = config.model
    if m.kind == "vae":
        return build_model("vae", dict(in_channels=channels, image_size=image_size, latent_dim=m.latent_dim,
                                       base_channels=m.base_channels, channel_mults=tuple(m.channel_mults)))
    if m.conditional and num_classes < 1:
        raise ValueError(f"model.conditional is true but data source {config.data.source!r} has no labels; "
                         "set model.conditional=false")
    unet = dict(in_channels=channels, base_channels=m.base_channels, channel_mults=m.channel_mults,
                num_res_blocks=m.num_res_blocks, attention_levels=m.attention_levels, num_heads=m.num_heads,
                dropout=m.dropout, norm_groups=m.norm_groups)
    return build_model("unet", {**unet, "num_classes": num_classes if m.conditional else None})


def check_labels(dataset, num_classes: int) -> None:
    """Check once, before training, that every label of ``dataset`` is an integer in [0, num_classes - 1].

    (The conditional UNet does not check labels at each forward pass: that would sync the GPU every step.)

    Args:
        dataset: has ``labels`` (int tensor (N,)) or ``get_batch(indices) -> (images, labels)``.
        num_classes: K of the conditional model (label K is its null label, never a data label).

    Raises:
        ValueError: no labels, non-integer labels, or a label outside [0, K - 1] (the message names it).
    """
    labels = getattr(dataset, "labels", None)
    if labels is None and not hasattr(dataset, "labels"):
        labels = dataset.get_batch(torch.arange(len(dataset)))[1]
    if labels is None:
        raise ValueError("a conditional model needs labelled data; the dataset has no labels "
                         "(set model.conditional=false)")
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"dataset labels must be integers in [0, {num_classes - 1}]; got dtype {labels.dtype}")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
        raise ValueError(f"dataset label {int(bad[0])} is outside [0, {num_classes - 1}] "
                         f"({len(bad)} bad label(s) for a model of {num_classes} classes)")


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

    Raises:
        ValueError: bad config, data that does not fit the model (one forward pass is tried), labels
            outside [0, num_classes - 1] for a conditional model (checked once here, not at every forward
            pass), or a resume checkpoint from another experiment.
        FileNotFoundError: ``resume`` without a checkpoint.
    """

    def __init__(self, config: ExperimentConfig, output_dir: str | Path, dataset=None, resume: bool = False,
                 progress: bool = True):
        self.config = config
        self.output_dir = Path(output_dir)
        self.progress = progress
        self.dist, self.device = distributed.init_from_env(resolve_device(config.training.device))
        self.is_main_process = self.dist.is_main  # only rank 0 writes files, logs and trackers
        if dataset is None:
            from .data import load_dataset

            dataset = load_dataset(config.data.source, image_size=config.data.image_size, **config.data.options)
        if len(dataset) < 1:
            raise ValueError("the training dataset is empty")
        self.val_dataset = None
        if config.data.val_fraction > 0:  # seeded hold-out; the Trainer never sees it
            from .data import split_dataset

            dataset, self.val_dataset = split_dataset(dataset, config.data.val_fraction, seed=config.training.seed)
        self.dataset = dataset
        global_batch = min(config.training.batch_size, len(dataset))
        if global_batch % self.dist.world_size:
            raise ValueError(f"training.batch_size={global_batch} is the global batch and must be divisible by "
                             f"the {self.dist.world_size} processes (each takes an equal share); "
                             f"use a multiple of {self.dist.world_size}")

        torch.manual_seed(config.training.seed)
        self.memory_format = torch.channels_last if config.training.channels_last else torch.contiguous_format
        self.model = build_network(config, dataset.channels, dataset.image_size, dataset.num_classes).to(
            self.device, memory_format=self.memory_format)
        self.conditional = is_conditional(self.model)
        if self.conditional:
            check_labels(dataset, dataset.num_classes)
        self.ema = EMA(self.model, config.training.ema_decay)
        self.objective = build_objective(config, self.device)
        self.schedule = self.objective.schedule  # None for the VAE
        t = config.training
        self.max_steps = total_steps(t, len(dataset))  # max_steps, or max_epochs first
        self.optimizer = build_optimizer(self.model, t, self.device)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: learning_rate_factor(step, t.warmup_steps, self.max_steps, t.lr_schedule))
        self.amp_dtype = self._amp_dtype()
        self.grad_scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self._check_forward()
        self.generator = torch.Generator(self.device).manual_seed(self._stream_seed(0))  # noise, t, label dropout
        if self.dist.is_distributed:  # dropout masks differ per process too (the weights were drawn alike above)
            torch.manual_seed(self._stream_seed(0))
        self.data_generator = torch.Generator().manual_seed(t.seed + 1)     # data order
        self.step = 0
        self.grad_norm = None  # global gradient norm before clipping, of the last step (a tensor)
        self._order = torch.empty(0, dtype=torch.long)
        self._cursor = 0
        self._first_bad_step = torch.zeros((), dtype=torch.long, device=self.device)  # 0: every step finite
        self._saved_step: int | None = None
        if resume:
            self.load(self.checkpoint_path)
            self._saved_step = self.step
        self.train_model = distributed.wrap(self.model, self.dist, self.device)  # the forward that syncs gradients
        if config.training.compile:  # same parameters; only the training step runs the compiled graph
            self.train_model = torch.compile(self.train_model)

    def _stream_seed(self, step: int) -> int:
        """The seed of this process's noise stream: ``training.seed`` for one process (as always); under DDP
        one stream per rank, and a fresh one per (rank, step) when a run resumes with another process count."""
        return self.config.training.seed + 1_000_003 * self.dist.rank + 7_919 * step

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

    @property
    def checkpoint_path(self) -> Path:
        """``output_dir/checkpoints/last.ckpt``."""
        return self.output_dir / "checkpoints" / "last.ckpt"

    # ----- the loop ------------------------------------------------------------------------------

    def train(self, max_steps: int | None = None) -> Path:
        """Train until ``max_steps`` (default :attr:`max_steps`: ``training.max_steps``, or ``training.max_epochs``
        epochs if that comes first) and save the final checkpoint.

        Ctrl-C (SIGINT) and SIGTERM (``docker stop``) are deferred to the end of the current step: the step
        finishes, a checkpoint is saved and :class:`TrainingInterrupted` (a KeyboardInterrupt) is raised, so
        ``resume=True`` continues exactly from there.

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
            save_config(self.config, self.output_dir / "config.yaml")
        log = self._open_log() if self.is_main_process else (lambda row: None)
        trackers = open_trackers(self.config, self.output_dir, self.step, enabled=self.is_main_process)
        summary, session_start = RunSummary(self.output_dir), time.perf_counter()
        self.model.train()
        bar = tqdm(total=max_steps, initial=self.step, desc=self.config.name,
                   disable=not (self.progress and self.is_main_process), dynamic_ncols=True)
        window_seconds, window_images = 0.0, 0  # training time only: sampling and checkpoints excluded
        interrupted = []
        with _deferred_signals(interrupted.append), contextlib.ExitStack() as finish:
            finish.callback(lambda: self._finish_tracking(trackers, summary, time.perf_counter() - session_start))
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
                    images_per_sec = window_images / max(window_seconds, 1e-9)
                    means = distributed.mean_(list(terms.values()), self.dist)  # over processes (DDP)
                    values = {k: v.item() for k, v in zip(terms, means)}  # the only host sync of the loop
                    row = {"step": self.step, **values, "lr": self.lr_scheduler.get_last_lr()[0],
                           "images_per_sec": images_per_sec}
                    log(row)
                    summary.add_row(row)
                    trackers.log_scalars(self.step, {**row, "grad_norm": self._grad_norm_value(),
                                                     "ema_decay": self.ema.current_decay})
                    bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{images_per_sec:.0f}")
                    window_seconds, window_images = 0.0, 0
                    self._raise_if_diverged(bar)
                if t.sample_every and self.step % t.sample_every == 0:
                    self._raise_if_diverged(bar)
                    grid = self.save_samples(self.output_dir / "samples" / f"step_{self.step:07d}.png")
                    if self.is_main_process:
                        trackers.log_image(self.step, "samples", read_png(grid))
                if self.step % t.checkpoint_every == 0 and self.step < max_steps:
                    self._save_if_finite(bar)
            bar.close()
            self._save_if_finite(bar)  # before run.json says "finished" (the ExitStack's callback)
        if stop:  # a signal here or (DDP) on another process
            signum = stop
            name = signal.Signals(signum).name
            raise TrainingInterrupted(f"training interrupted by {name} at step {self.step}; checkpoint saved to "
                                      f"{self.checkpoint_path} (continue with resume=True / --resume)", signum)
        return self.checkpoint_path

    def _raise_if_diverged(self, bar=None) -> None:
        """Raise :class:`TrainingDiverged` if a step since the start had a NaN or infinite loss or gradient
        (reads the device flag: one host sync)."""
        bad = int(distributed.first_bad_step(self._first_bad_step, self.dist))  # the earliest, over processes
        if bad:
            self._diverged(f"the loss or gradient was NaN or infinite at step {bad}", bar)

    def _save_if_finite(self, bar=None) -> None:
        """Save the checkpoint unless training diverged (or, checked by :meth:`save`, a weight is not finite)."""
        self._raise_if_diverged(bar)
        if bar is not None and not self._weights_finite():
            bar.close()
        self.save(self.checkpoint_path)
        self._saved_step = self.step

    def _weights_finite(self) -> bool:
        """Every weight of the model and its EMA is finite (one host sync)."""
        tensors = [t for t in (*self.model.parameters(), *self.ema.model.parameters()) if t.is_floating_point()]
        return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())

    def _diverged(self, what: str, bar=None) -> None:
        if bar is not None:
            bar.close()
        kept = (f"the last finite checkpoint {self.checkpoint_path} (step {self._saved_step}) is kept"
                if self._saved_step is not None else "no checkpoint was written")
        lr = self.config.training.learning_rate
        raise TrainingDiverged(f"training diverged: {what} (training.learning_rate={lr}); "
                               f"{kept}. Lower the learning rate, raise warmup_steps or set grad_clip")

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
        # remember the first non-finite step on the device (no host sync; read at log rows and saves)
        self._first_bad_step = torch.where(bad & (self._first_bad_step == 0), self.step, self._first_bad_step)
        return terms

    def _grad_norm_value(self) -> float:
        """The last step's global gradient norm (before clipping): from the clipping, else from the gradients."""
        if self.grad_norm is None or self.config.training.grad_clip <= 0:
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            if not grads:
                return float("nan")
            scale = self.grad_scaler.get_scale() if self.grad_scaler.is_enabled() else 1.0
            return float(torch.nn.utils.get_total_norm(grads)) / scale
        return float(self.grad_norm)

    def _finish_tracking(self, trackers, summary: RunSummary, session_seconds: float) -> None:
        """Write run.json and close the trackers, with the config as hparams and the final metrics (main process)."""
        if self.is_main_process:
            summary.save(self.step, self.config.training.max_steps, session_seconds)
        trackers.finish(flatten_config(self.config.to_dict()), summary.metrics())

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The next batch of a seeded random permutation, reshuffled every epoch (labels: conditional models only).

        ``training.batch_size`` is the global batch: every process draws the same permutation and cursor, and
        rank r of N takes positions r, r + N, r + 2N, ... of the global batch (a disjoint 1/N share).
        """
        batch_size = min(self.config.training.batch_size, len(self.dataset))
        if self._cursor + batch_size > len(self._order):
            self._order = torch.randperm(len(self.dataset), generator=self.data_generator)
            self._cursor = 0
        indices = self._order[self._cursor:self._cursor + batch_size][self.dist.rank::self.dist.world_size]
        self._cursor += batch_size
        x0, y = self.dataset.get_batch(indices)
        x0 = x0.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return x0, (y.to(self.device) if self.conditional else None)

    def _amp_dtype(self) -> torch.dtype | None:
        if not (self.config.training.amp and self.device.type == "cuda"):
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def _open_log(self):
        """A function appending a row to log.csv; rows past the current step (from a crashed run) are dropped."""
        path = self.output_dir / "log.csv"
        rows = []
        if path.exists():
            with path.open(newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= self.step]
        fields = ["step", *self.objective.log_fields, "lr", "images_per_sec"]
        kept = io.StringIO()
        writer = csv.DictWriter(kept, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(path, kept.getvalue())

        def log(row: dict) -> None:
            try:
                with path.open("a", newline="") as handle:
                    csv.DictWriter(handle, fieldnames=fields).writerow(
                        {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
            except OSError as error:
                raise WriteError(error.errno, error.strerror or str(error), str(path)) from error

        return log

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
        """Everything needed to continue exactly (see :mod:`diffusion_lib.checkpoint`).

        The data order and cursor are global (the same on every process). Under DDP every process must call
        this (it gathers each rank's noise and dropout generators into ``rng["per_rank"]``, in rank order).
        """
        rng = {"torch": torch.get_rng_state(), "generator": self.generator.get_state(),
               "data_generator": self.data_generator.get_state(), "order": self._order, "cursor": self._cursor,
               "world_size": self.dist.world_size}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        if self.dist.is_distributed:
            own = {"torch": rng["torch"], "generator": rng["generator"]}
            if self.device.type == "cuda":
                own["cuda"] = torch.cuda.get_rng_state(self.device)
            rng["per_rank"] = distributed.gather(own, self.dist)
        return {
            "config": self.config.to_dict(),
            "model_config": self.model.config,
            "data": self._data_info(),
            "model": self.model.state_dict(),
            "ema": self.ema.model.state_dict(),
            "ema_num_updates": self.ema.num_updates,
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "grad_scaler": self.grad_scaler.state_dict(),
            "step": self.step,
            "rng": rng,
        }

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
        if not self._weights_finite():
            self._diverged(f"a weight became NaN or infinite by step {self.step}")
        state = self.state_dict()  # DDP: a collective (every rank's generators), then rank 0 alone writes
        if self.is_main_process:
            save_checkpoint(state, path)
        return Path(path)

    def load(self, path: str | Path) -> None:
        """Restore the full training state from a checkpoint of the same model.

        Every process loads the same file. Same number of processes as the run that saved it: every random
        stream continues exactly. Another number: weights, EMA, optimizer, step, data order and cursor
        continue exactly; each process's noise and dropout streams start afresh from (seed, rank, step).

        Raises:
            ValueError: corrupt/foreign file, or a checkpoint of a different model configuration.
        """
        state = load_checkpoint(path, map_location="cpu")
        if state["model_config"] != self.model.config:
            raise ValueError(f"checkpoint {path} holds a different model ({state['model_config']}) than this config "
                             f"builds ({self.model.config}); use another --output folder or the matching config")
        diffusion = self.config.to_dict()["diffusion"]
        changed = [f"diffusion.{k}" for k, v in diffusion.items() if state["config"]["diffusion"].get(k) != v]
        changed += [f"data.{k}" for k, v in self._data_info().items() if state["data"].get(k) != v]
        if changed:
            raise ValueError(f"checkpoint {path} was trained with other settings for {changed}; resuming would change "
                             "the objective or the data mid-run: use the checkpoint's config or another --output folder")
        self.model.load_state_dict(state["model"])
        self.ema.model.load_state_dict(state["ema"])
        self.ema.num_updates = state.get("ema_num_updates", state["step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.grad_scaler.load_state_dict(state["grad_scaler"])
        self.step = state["step"]
        rng = state["rng"]
        self.data_generator.set_state(rng["data_generator"])
        self._order, self._cursor = rng["order"], rng["cursor"]  # global: the same for any number of processes
        if rng.get("world_size", 1) != self.dist.world_size:  # fresh per-rank streams (see the docstring)
            torch.manual_seed(self._stream_seed(self.step))
            self.generator.manual_seed(self._stream_seed(self.step))
        elif self.dist.is_distributed:
            own = rng["per_rank"][self.dist.rank]
            torch.set_rng_state(own["torch"])
            self.generator.set_state(own["generator"])
            if "cuda" in own and self.device.type == "cuda":
                torch.cuda.set_rng_state(own["cuda"], self.device)
        else:
            torch.set_rng_state(rng["torch"])
            self.generator.set_state(rng["generator"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])


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
    from .checkpoint import load_model
    from .config import apply_overrides, from_dict, load_config

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
