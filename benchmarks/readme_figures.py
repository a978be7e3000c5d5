"""The README's pictures, made from library calls.

Usage:
    python benchmarks/readme_figures.py --checkpoint runs/digits_cfg/checkpoints/last.ckpt [--device auto] \
        [--samples runs/digits_cfg/samples.png]
    python benchmarks/readme_figures.py            # the forward-process strip only (needs no model)

Writes into docs/images/ (``--out`` to change):
- forward_process.png: the forward process q(x_t | x_0) on real digits at several t, one row per schedule
  (linear and cosine, the same noise in both rows; :func:`diffusion_lib.viz.forward_strip`);
- guidance_sweep.png (with ``--checkpoint`` of a class-conditional model): DDIM-50 samples at classifier-free
  guidance w = 0, 1, 1.5, 3, 5, all from the same starting noise and labels, one column per w, one row per
  class (:func:`diffusion_lib.experiments.sampler_sweep`, :func:`diffusion_lib.viz.class_grid`);
- benchmarks/digits_cfg_samples.png (with ``--samples``, ``--samples-out`` to change): the sample grid that
  README command 1 writes (``sample --out runs/digits_cfg/samples.png``: one row per class, one image pixel per
  pixel, 91 x 91 for the 8x8 main job), enlarged by a whole factor with nearest-neighbour resampling to at
  least ``--min-side`` pixels, so every pixel of the model's output stays one sharp square.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

from diffusion_lib import viz
from diffusion_lib.checkpoint import load_model
from diffusion_lib.data import load_dataset
from diffusion_lib.device import resolve_device
from diffusion_lib.experiments import sampler_sweep, settings_grid
from diffusion_lib.models import is_conditional
from diffusion_lib.schedules import NoiseSchedule

TIMESTEPS = [0, 50, 100, 200, 300, 500, 700, 999]  # columns of the forward-process strip (T = 1000)
SCALES = [0, 1, 1.5, 3, 5]  # classifier-free w: 0 unconditional, 1 conditional, > 1 guided
PER_CLASS = 3  # samples per class and scale


def forward_process(out: Path, seed: int) -> Path:
    """Two real digits (16x16) noised at each t of TIMESTEPS by the linear and the cosine schedule."""
    digits = load_dataset("digits", image_size=16)
    x0, _ = digits.get_batch(torch.arange(2))
    schedules = {name: NoiseSchedule(name, 1000) for name in ("linear", "cosine")}
    fig = viz.forward_strip(schedules, x0, TIMESTEPS, seed=seed, scale=0.7)
    fig.set_figheight(fig.get_figheight() + 0.4)  # room for the title
    fig.suptitle("Forward process x_t ~ q(x_t | x_0): the same digits and noise under two schedules", fontsize=11)
    return viz.save_figure(fig, out / "forward_process.png", dpi=150)


def guidance_sweep(checkpoint: str, out: Path, device: str, seed: int) -> Path:
    """DDIM-50 samples of a class-conditional model at every scale of SCALES, from one starting noise."""
    loaded = load_model(checkpoint, device=resolve_device(device))
    if not is_conditional(loaded.model):
        raise ValueError(f"{checkpoint} holds an unconditional model; guidance needs a class-conditional one")
    data, settings = loaded.data, settings_grid("ddim", steps=50, guidance_scale=SCALES)
    sweep = sampler_sweep(loaded.model, loaded.schedule, settings, seed=seed, metrics=(), warmup=False,
                          image_shape=(data["channels"], data["image_size"], data["image_size"]),
                          num_samples=PER_CLASS * data["num_classes"],  # labels 0, 1, ..., 9, 0, 1, ...
                          prediction_type=loaded.config.diffusion.prediction_type,
                          clip_sample=loaded.config.sampling.clip_sample)
    columns = {f"w = {setting.guidance_scale:g}": sweep.samples[setting.name] for setting in settings}
    fig = viz.class_grid(columns, sweep.labels, data.get("class_names"), per_class=PER_CLASS, scale=0.45)
    fig.suptitle(f"Classifier-free guidance, DDIM 50 steps, same noise (step {loaded.step})\n"
                 "w = 0 unconditional, 1 conditional, > 1 guided", fontsize=10)
    return viz.save_figure(fig, out / "guidance_sweep.png", dpi=150)


def enlarged_grid(grid: Path, out: Path, min_side: int) -> Path:
    """``grid`` (a PNG) enlarged k times with nearest-neighbour resampling, k the least whole factor (>= 1) that
    makes its shorter side at least ``min_side`` pixels."""
    picture = Image.open(grid)
    factor = max(1, -(-min_side // min(picture.size)))  # ceiling division
    picture.resize((picture.width * factor, picture.height * factor), Image.NEAREST).save(out, format="PNG")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a trained class-conditional checkpoint for guidance_sweep.png")
    parser.add_argument("--out", type=Path, default=Path("docs/images"), help="folder for the PNGs")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise")
    parser.add_argument("--samples", type=Path, help="README command 1's grid PNG, enlarged for the README")
    parser.add_argument("--samples-out", type=Path, default=Path("benchmarks/digits_cfg_samples.png"),
                        help="where the enlarged grid goes")
    parser.add_argument("--min-side", type=int, default=160, help="least side in pixels of the enlarged grid")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print("wrote", forward_process(args.out, args.seed))
    if args.checkpoint:
        print("wrote", guidance_sweep(args.checkpoint, args.out, args.device, args.seed))
    if args.samples:
        print("wrote", enlarged_grid(args.samples, args.samples_out, args.min_side))


if __name__ == "__main__":
    main()
