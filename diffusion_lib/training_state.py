"""The training state: weights, EMA, optimizer, learning-rate schedule, gradient scaler, step and every random
stream, saved together and restored exactly (with the checks that a resume continues the same run).

Everything that decides what happens next is here or in the batch sampler (:mod:`diffusion_lib.batches`,
whose data order is saved alongside), so a resumed run continues exactly where the interrupted one stopped.
The checkpoint's payload is listed in :mod:`diffusion_lib.checkpoint`.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from . import distributed
from .batches import BatchSampler
from .checkpoint import load_checkpoint
from .config import LR_SCHEDULES, ExperimentConfig


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


class TrainingState:
    """The model and everything that moves with it, one checkpoint's worth.

    Args:
        config: the experiment (``training``: optimiser, EMA, learning-rate schedule, AMP, seed).
        model: the network, on ``device`` (its weights are drawn before this is built).
        device: the model's device.
        dist: the process group; each process has its own noise and dropout stream.
        batches: the batch sampler whose data order is saved with the state.
        data_info: what the checkpoint records of the training data (and what a resume must match).
        max_steps: the step the run ends at (the cosine learning-rate schedule reaches 0 there).

    Attributes:
        model, ema, optimizer, lr_scheduler, grad_scaler: as named (fp16 AMP only enables the scaler).
        generator: this process's noise, timestep and label-dropout stream.
        step: optimiser steps taken.
    """

    def __init__(self, config: ExperimentConfig, model: nn.Module, device: torch.device, dist: distributed.Context,
                 batches: BatchSampler, data_info: dict, max_steps: int, amp_dtype: torch.dtype | None):
        t = config.training
        self.config, self.model, self.device, self.dist = config, model, device, dist
        self.batches, self.data_info = batches, data_info
        self.ema = EMA(model, t.ema_decay)
        self.optimizer = build_optimizer(model, t, device)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: learning_rate_factor(step, t.warmup_steps, max_steps, t.lr_schedule))
        self.grad_scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        self.generator = torch.Generator(device).manual_seed(self.stream_seed(0))  # noise, t, label dropout
        if dist.is_distributed:  # dropout masks differ per process too (the weights were drawn alike before)
            torch.manual_seed(self.stream_seed(0))
        self.step = 0

    def stream_seed(self, step: int) -> int:
        """The seed of this process's noise stream: ``training.seed`` for one process (as always); under DDP
        one stream per rank, and a fresh one per (rank, step) when a run resumes with another process count."""
        return self.config.training.seed + 1_000_003 * self.dist.rank + 7_919 * step

    def state_dict(self) -> dict:
        """Everything needed to continue exactly (the checkpoint payload, :mod:`diffusion_lib.checkpoint`).

        The data order and cursor are global (the same on every process). Under DDP every process must call
        this (it gathers each rank's noise and dropout generators into ``rng["per_rank"]``, in rank order).
        """
        rng = {"torch": torch.get_rng_state(), "generator": self.generator.get_state(),
               **self.batches.state_dict(), "world_size": self.dist.world_size}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        if self.dist.is_distributed:
            own = {"torch": rng["torch"], "generator": rng["generator"]}
            if self.device.type == "cuda":
                own["cuda"] = torch.cuda.get_rng_state(self.device)
            rng["per_rank"] = distributed.gather(own, self.dist)
        return {
            "config": self.config.to_dict(), "model_config": self.model.config, "data": self.data_info,
            "model": self.model.state_dict(), "ema": self.ema.model.state_dict(),
            "ema_num_updates": self.ema.num_updates, "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(), "grad_scaler": self.grad_scaler.state_dict(),
            "step": self.step, "rng": rng,
        }

    def load(self, path) -> None:
        """Restore the full training state from a checkpoint of the same model, data and objective.

        Every process loads the same file. Same number of processes as the run that saved it: every random
        stream continues exactly. Another number: weights, EMA, optimizer, step, data order and cursor
        continue exactly; each process's noise and dropout streams start afresh from (seed, rank, step).

        Raises:
            ValueError: corrupt/foreign file, a checkpoint of a different model configuration, or one trained
                with other ``diffusion`` settings or data (resuming would change the objective or the data).
        """
        state = load_checkpoint(path, map_location="cpu")
        if state["model_config"] != self.model.config:
            raise ValueError(f"checkpoint {path} holds a different model ({state['model_config']}) than this config "
                             f"builds ({self.model.config}); use another --output folder or the matching config")
        diffusion = self.config.to_dict()["diffusion"]
        changed = [f"diffusion.{k}" for k, v in diffusion.items() if state["config"]["diffusion"].get(k) != v]
        changed += [f"data.{k}" for k, v in self.data_info.items() if state["data"].get(k) != v]
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
        self.batches.load_state_dict(rng)  # global: the same for any number of processes
        if rng.get("world_size", 1) != self.dist.world_size:  # fresh per-rank streams (see the docstring)
            torch.manual_seed(self.stream_seed(self.step))
            self.generator.manual_seed(self.stream_seed(self.step))
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
