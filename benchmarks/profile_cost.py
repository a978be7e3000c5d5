"""Training compute of the full-profile configs: FLOPs counted, time estimated from an assumed GPU throughput.

For each config the network is built as the Trainer builds it (``training.build_network``) and one training
step on a batch of two images at the config's resolution is counted with ``torch.utils.flop_counter``
(forward + backward: matmuls, convolutions, attention). Total = FLOP per image x batch x steps. The time
columns divide that by a *sustained* throughput the GPU is assumed to reach; they are estimates, not
measurements: run the notebook (or benchmarks/train_throughput.py --device cuda --config ...) to measure.

Usage: python benchmarks/profile_cost.py [CONFIG ...] [--tflops 50 100]
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from diffusion_lib.config import load_config
from diffusion_lib.objectives import build_objective
from diffusion_lib.training import build_network

FULL_PROFILE = ["configs/vae_flowers.yaml", "configs/nb05_uncond_full.yaml", "configs/nb05_cfg_full.yaml",
                "configs/nb06_cfg_full.yaml"]
CLASSES = {"stanford_cars": 196, "flowers102": 102, "celeba": 0, "digits": 10}
CHANNELS = {"digits": 1}


def train_flops_per_image(path: str) -> tuple[int, float, int]:
    """(parameters, FLOP of one training step per image, total steps) of a config."""
    config = load_config(path)
    source, size = config.data.source, config.data.image_size
    channels, classes = CHANNELS.get(source, 3), CLASSES.get(source, 0)
    model = build_network(config, channels, size, classes)
    objective = build_objective(config, torch.device("cpu"))
    x0 = torch.rand(2, channels, size, size) * 2 - 1
    y = torch.arange(2) % classes if classes and config.model.conditional else None
    with FlopCounterMode(display=False) as counter:
        loss, _ = objective.loss(model, x0, y, torch.Generator().manual_seed(0))
        loss.backward()
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() / 2, config.training.max_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*", default=FULL_PROFILE, help="configs with max_steps (default: full profile)")
    parser.add_argument("--tflops", type=float, nargs="+", default=[50.0, 100.0],
                        help="assumed sustained TFLOP/s of the GPU for the time columns")
    args = parser.parse_args()
    print(f"{'config':34s} {'params':>11s} {'GFLOP/img':>10s} {'batch':>6s} {'steps':>7s} {'PFLOP':>7s} "
          + " ".join(f"{'h @' + format(t, 'g') + 'TF/s':>11s}" for t in args.tflops))
    for path in args.configs:
        params, flops, steps = train_flops_per_image(path)
        batch = load_config(path).training.batch_size
        total = flops * batch * steps
        print(f"{path:34s} {params:11,d} {flops / 1e9:10.2f} {batch:6d} {steps:7d} {total / 1e15:7.1f} "
              + " ".join(f"{total / (t * 1e12) / 3600:11.2f}" for t in args.tflops))


if __name__ == "__main__":
    main()
