"""Sampling time of DDIM-50 against DDPM-1000 for the same model (and a few other step counts).

Usage: python benchmarks/sampling_speed.py [--checkpoint PATH] [--num-samples 100] [--device auto]
Without a checkpoint the digits config's (untrained) model is timed: speed does not depend on training.
"""

from __future__ import annotations

import argparse
import time

import torch

from diffusion_lib.checkpoint import load_model
from diffusion_lib.config import load_config
from diffusion_lib.device import resolve_device
from diffusion_lib.models import is_conditional
from diffusion_lib.sampling import cycle_labels, sample
from diffusion_lib.schedules import NoiseSchedule
from diffusion_lib.training import build_network


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a trained checkpoint (default: the digits config's model, untrained)")
    parser.add_argument("--config", default="configs/digits_cfg.yaml", help="config used without --checkpoint")
    parser.add_argument("--num-samples", type=int, default=100, help="images per run")
    parser.add_argument("--guidance-scale", type=float, default=3.0, help="classifier-free guidance (2 passes per step)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.checkpoint:
        loaded = load_model(args.checkpoint, device=device)
        model, schedule, data = loaded.model, loaded.schedule, loaded.data
        channels, size, classes = data["channels"], data["image_size"], data["num_classes"]
    else:
        config = load_config(args.config)
        channels, size, classes = 1, config.data.image_size, 10
        model = build_network(config, channels, size, classes).to(device).eval()
        schedule = NoiseSchedule(config.diffusion.beta_schedule, config.diffusion.num_train_timesteps).to(device)
    labels = cycle_labels(args.num_samples, classes) if is_conditional(model) else None
    guidance = args.guidance_scale if labels is not None else 1.0
    shape = (args.num_samples, channels, size, size)
    print(f"device {device}, {args.num_samples} samples of {channels}x{size}x{size}, guidance_scale {guidance}")
    print(f"{'sampler':10s} {'steps':>6s} {'seconds':>9s} {'ms/image':>9s}")
    results = {}
    for sampler, steps in [("ddim", 10), ("ddim", 50), ("ddim", 250), ("ddpm", 1000)]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        sample(model, schedule, sampler, shape=shape, y=labels, guidance_scale=guidance, num_inference_steps=steps,
               generator=torch.Generator().manual_seed(0))
        if device.type == "cuda":
            torch.cuda.synchronize()
        results[(sampler, steps)] = seconds = time.perf_counter() - start
        print(f"{sampler:10s} {steps:6d} {seconds:9.2f} {1000 * seconds / args.num_samples:9.2f}")
    print(f"DDIM-50 is {results[('ddpm', 1000)] / results[('ddim', 50)]:.1f}x faster than DDPM-1000")


if __name__ == "__main__":
    main()
