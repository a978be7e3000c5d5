"""Training speed of one config under each speed setting, side by side: fp32 against bf16 autocast with
channels_last, and eager against ``torch.compile``.

By default it trains notebook 05's full-profile class-conditional UNet (configs/nb05_cfg_full.yaml: 64 px,
widths 64-128-128-256, two ResBlocks per level, attention at 16x16, batch 128) on data that ships with
scikit-image (``lfw_faces``: 200 grayscale images in 2 classes, resized to 64 px), so it runs on a machine
with no network. The data does not change the speed: only the first and last convolutions see its one channel
(Stanford Cars has three).

Rows, each a Trainer with these settings and everything else from the config:
    fp32                       training.amp=false, training.channels_last=false
    bf16 + channels_last       training.amp=true (bf16 where the GPU supports it, else fp16), channels_last=true
    fp32, compiled             as fp32, with training.compile=true
    bf16 + channels_last, compiled

Each row first runs ``--warmup`` steps on its own, timed apart because they include the compile; then the rows
take turns for ``--steps`` steps, so every row sees the same machine load. On CUDA the GPU is synchronised
around every step, and the table gives each row's peak memory above what its Trainer held before the warm-up.
The Trainer ignores ``amp`` off CUDA, so on a CPU the "bf16" rows are channels_last only (the header says so).

Usage:
    python benchmarks/training_settings.py --device cuda           # the figures for docs/benchmarks.md
    python benchmarks/training_settings.py --device cpu --rows fp32 bf16+cl --set model.base_channels=16
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from diffusion_lib.config import load_config
from diffusion_lib.data import load_dataset
from diffusion_lib.device import resolve_device
from diffusion_lib.training import Trainer

ROWS = {  # name: (training.amp, training.channels_last, training.compile)
    "fp32": (False, False, False),
    "bf16+cl": (True, True, False),
    "fp32+compile": (False, False, True),
    "bf16+cl+compile": (True, True, True),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Row:
    """One setting: its Trainer, the seconds of its warm-up and timed steps, their losses and peak memory."""

    def __init__(self, name: str, config_path: str, overrides: list[str], dataset, output_dir: Path):
        amp, channels_last, compiled = ROWS[name]
        settings = [f"training.amp={amp}", f"training.channels_last={channels_last}",
                    f"training.compile={compiled}", "training.loggers=[csv]"]
        self.name = name
        self.trainer = Trainer(load_config(config_path, overrides + settings), output_dir / name,
                               dataset=dataset, progress=False)
        self.device = self.trainer.device
        self.warmup_seconds = self.seconds = 0.0
        self.losses: list[float] = []
        self.peak_mib = float("nan")

    def step(self) -> float:
        """One training step (batch included), synchronised; returns its seconds."""
        synchronize(self.device)
        start = time.perf_counter()
        terms = self.trainer.train_step(*self.trainer._next_batch())
        synchronize(self.device)
        seconds = time.perf_counter() - start
        self.losses.append(float(terms["loss"]))
        return seconds

    def warm_up(self, steps: int) -> None:
        if self.device.type == "cuda":
            held = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.warmup_seconds = sum(self.step() for _ in range(steps))
        if self.device.type == "cuda":
            self.peak_mib = (torch.cuda.max_memory_allocated(self.device) - held) / 2**20
        self.losses.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/nb05_cfg_full.yaml", help="experiment config to train")
    parser.add_argument("--source", default="lfw_faces", help="bundled data source (default lfw_faces)")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS), help="settings to compare")
    parser.add_argument("--warmup", type=int, default=3, help="untimed-apart steps per row (include the compile)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row, rows taking turns")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, repeatable (e.g. training.batch_size=64)")
    args = parser.parse_args()
    overrides = args.overrides + [f"training.device={resolve_device(args.device)}"]
    config = load_config(args.config, overrides)
    dataset = load_dataset(args.source, image_size=config.data.image_size)

    with tempfile.TemporaryDirectory() as tmp:
        rows = [Row(name, args.config, overrides, dataset, Path(tmp)) for name in args.rows]
        for row in rows:
            row.warm_up(args.warmup)
        for _ in range(args.steps):
            for row in rows:
                row.seconds += row.step()

    device = rows[0].device
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (amp is ignored: no bf16)"
    batch = min(config.training.batch_size, len(dataset))
    print(f"{where}, torch {torch.__version__}, config {args.config} on {args.source} "
          f"({dataset.channels}x{dataset.image_size}x{dataset.image_size}), batch {batch}, "
          f"{args.warmup} warm-up + {args.steps} timed steps per row (taking turns)")
    print(f"{'row':16s} {'warm-up s':>9s} {'ms/step':>8s} {'images/s':>9s} {'vs fp32':>8s} {'peak MiB':>9s} "
          f"{'mean loss':>9s}")
    base = next((r for r in rows if r.name == "fp32"), rows[0])
    for row in rows:
        rate = batch * args.steps / row.seconds
        peak = f"{row.peak_mib:9.0f}" if device.type == "cuda" else f"{'-':>9s}"
        print(f"{row.name:16s} {row.warmup_seconds:9.1f} {1000 * row.seconds / args.steps:8.1f} {rate:9.1f} "
              f"{base.seconds / row.seconds:7.2f}x {peak} {sum(row.losses) / len(row.losses):9.4f}")


if __name__ == "__main__":
    main()
