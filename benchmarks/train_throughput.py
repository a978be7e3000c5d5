"""Training throughput of our UNet against diffusers' UNet2DModel of about the same size, side by side.

Both networks get the same resolution, batch, loss (our ``training_loss``), optimizer (AdamW)
and thread count; steps alternate between them so both see the same machine load.

Usage: python benchmarks/train_throughput.py [--config configs/digits_cfg.yaml] [--steps 30] [--device auto]
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import UNet2DModel

from diffusion_lib import NoiseSchedule, training_loss
from diffusion_lib.config import load_config
from diffusion_lib.device import resolve_device
from diffusion_lib.models import UNet


class DiffusersAdapter(torch.nn.Module):
    """diffusers' UNet2DModel behind our model contract ``model(x_t, t, y=None)``."""

    def __init__(self, net: UNet2DModel):
        super().__init__()
        self.net = net

    def forward(self, x, t, y=None):
        return self.net(x, t).sample


def build_pair(config, channels: int, size: int):
    m = config.model
    ours = UNet(in_channels=channels, base_channels=m.base_channels, channel_mults=m.channel_mults,
                num_res_blocks=m.num_res_blocks, attention_levels=m.attention_levels, num_heads=m.num_heads,
                norm_groups=m.norm_groups)
    widths = tuple(m.base_channels * k for k in m.channel_mults)
    down = tuple("AttnDownBlock2D" if i in m.attention_levels else "DownBlock2D" for i in range(len(widths)))
    up = tuple("AttnUpBlock2D" if i in m.attention_levels else "UpBlock2D" for i in reversed(range(len(widths))))
    theirs = UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=widths,
                         layers_per_block=m.num_res_blocks, down_block_types=down, up_block_types=up,
                         norm_num_groups=m.norm_groups, attention_head_dim=widths[0] // m.num_heads)
    return ours, DiffusersAdapter(theirs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/digits_cfg.yaml", help="experiment config whose model is measured")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per model")
    parser.add_argument("--batch-size", type=int, help="default: the config's")
    parser.add_argument("--image-size", type=int, help="default: the config's")
    parser.add_argument("--channels", type=int, default=1, help="image channels (default 1)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = parser.parse_args()
    config = load_config(args.config)
    device = resolve_device(args.device)
    size = args.image_size or config.data.image_size
    batch = args.batch_size or config.training.batch_size
    schedule = NoiseSchedule("linear", 1000).to(device)
    torch.manual_seed(0)
    models = dict(zip(["diffusion_lib UNet", "diffusers UNet2DModel"], build_pair(config, args.channels, size)))
    optimizers = {name: torch.optim.AdamW(model.to(device).parameters(), lr=1e-4) for name, model in models.items()}
    x0 = torch.rand(batch, args.channels, size, size, device=device) * 2 - 1
    seconds = dict.fromkeys(models, 0.0)

    def step(name):
        loss = training_loss(models[name], schedule, x0).loss
        optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[name].step()

    for name in models:  # warm-up
        for _ in range(3):
            step(name)
    for _ in range(args.steps):
        for name in models:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step(name)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds[name] += time.perf_counter() - start
    print(f"device {device}, threads {torch.get_num_threads()}, batch {batch}, {args.channels}x{size}x{size}, "
          f"{args.steps} steps each (interleaved)")
    print(f"{'model':24s} {'params':>10s} {'ms/step':>9s} {'images/s':>9s}")
    for name, model in models.items():
        params = sum(p.numel() for p in model.parameters())
        print(f"{name:24s} {params:10,d} {1000 * seconds[name] / args.steps:9.1f} {batch * args.steps / seconds[name]:9.1f}")
    ours, theirs = seconds.values()
    print(f"throughput ratio (ours / diffusers): {theirs / ours:.2f}x")


if __name__ == "__main__":
    main()
