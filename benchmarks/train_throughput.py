"""Training throughput of our UNet against diffusers' UNet2DModel with the same block widths, side by side.

Both networks get the same block widths, ResBlocks per level, attention levels, heads, GroupNorm groups,
resolution, batch, loss (our ``training_loss``) and thread count; steps alternate between them so every
row sees the same machine load. The networks are not identical: diffusers' up blocks have one ResBlock
more per level (``layers_per_block + 1``, each taking a skip), so theirs does more work per image. To
compare code rather than size, the FLOPs of one training step (forward + backward) are counted with
``torch.utils.flop_counter`` and the table gives achieved GFLOP/s next to images/s.

Rows (each network plain and with both speed settings, so what is the code and what is a setting shows):
    ours              the Trainer as this config sets it: ``training.channels_last``, fused AdamW
                      (``training.build_optimizer``)
    ours, NCHW+loop   our network with NCHW tensors and the default for-loop AdamW
    diffusers         UNet2DModel as diffusers' train_unconditional.py runs it: NCHW, default AdamW
    diffusers, CL+fused   UNet2DModel with channels_last and fused AdamW

Usage: python benchmarks/train_throughput.py [--config configs/digits_cfg.yaml] [--steps 30] [--device auto]
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import UNet2DModel
from torch.utils.flop_counter import FlopCounterMode

from diffusion_lib import NoiseSchedule, training_loss
from diffusion_lib.config import load_config
from diffusion_lib.device import resolve_device
from diffusion_lib.models import UNet
from diffusion_lib.training import build_optimizer


class DiffusersAdapter(torch.nn.Module):
    """diffusers' UNet2DModel behind our model contract ``model(x_t, t, y=None)``."""

    def __init__(self, net: UNet2DModel):
        super().__init__()
        self.net = net

    def forward(self, x, t, y=None):
        return self.net(x, t).sample


def build_pair(config, channels: int, size: int) -> tuple[UNet, DiffusersAdapter]:
    """Our UNet and diffusers' UNet2DModel with the config's widths, ResBlocks per level, attention levels,
    heads and GroupNorm groups (diffusers puts attention in its mid block too, as ours does)."""
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


class Contender:
    """One row: a network, its optimizer and memory layout, and the seconds its timed steps took."""

    def __init__(self, name: str, model: torch.nn.Module, channels_last: bool, fused: bool, training, device):
        self.name = name
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=self.memory_format)
        self.optimizer = (build_optimizer(self.model, training, device) if fused else
                          torch.optim.AdamW(self.model.parameters(), lr=training.learning_rate))
        self.seconds = 0.0

    def step(self, schedule, x0: torch.Tensor) -> None:
        loss = training_loss(self.model, schedule, x0.contiguous(memory_format=self.memory_format),
                             check_inputs=False).loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()


def flops_per_image(model: torch.nn.Module, schedule, x0: torch.Tensor) -> float:
    """FLOPs of one forward + backward pass per image (matmuls, convolutions, attention)."""
    with FlopCounterMode(display=False) as counter:
        training_loss(model, schedule, x0, check_inputs=False).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(x0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/digits_cfg.yaml", help="experiment config whose model is measured")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per row")
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
    x0 = torch.rand(batch, args.channels, size, size, device=device) * 2 - 1

    torch.manual_seed(0)
    ours, theirs = build_pair(config, args.channels, size)
    flops = {"ours": flops_per_image(ours, schedule, x0), "diffusers": flops_per_image(theirs, schedule, x0)}
    plain_ours, plain_theirs = build_pair(config, args.channels, size)
    plain_ours.load_state_dict(ours.state_dict())
    plain_theirs.load_state_dict(theirs.state_dict())
    t = config.training
    rows = [Contender("ours", ours, t.channels_last, True, t, device),
            Contender("ours, NCHW+loop", plain_ours, False, False, t, device),
            Contender("diffusers", plain_theirs, False, False, t, device),
            Contender("diffusers, CL+fused", theirs, True, True, t, device)]

    def timed(row):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        row.step(schedule, x0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for row in rows:  # warm-up: allocator, oneDNN/cuDNN kernel choice
        for _ in range(3):
            timed(row)
    for _ in range(args.steps):
        for row in rows:
            row.seconds += timed(row)

    print(f"device {device}, threads {torch.get_num_threads()}, batch {batch}, {args.channels}x{size}x{size}, "
          f"{args.steps} steps per row (interleaved), config {args.config} (channels_last={t.channels_last})")
    print(f"{'row':20s} {'params':>10s} {'GFLOP/img':>10s} {'ms/step':>8s} {'images/s':>9s} {'GFLOP/s':>8s} "
          f"{'images/s vs diffusers':>22s} {'GFLOP/s vs diffusers':>21s}")
    base = next(r for r in rows if r.name == "diffusers")
    base_rate = batch * args.steps / base.seconds
    base_gflops = base_rate * flops["diffusers"] / 1e9
    for row in rows:
        rate = batch * args.steps / row.seconds
        gflop = flops[row.name.split(",")[0]] / 1e9
        params = sum(p.numel() for p in row.model.parameters())
        print(f"{row.name:20s} {params:10,d} {gflop:10.3f} {1000 * row.seconds / args.steps:8.1f} {rate:9.1f} "
              f"{rate * gflop:8.1f} {rate / base_rate:21.2f}x {rate * gflop / base_gflops:20.2f}x")


if __name__ == "__main__":
    main()
