"""Training throughput of our UNet against diffusers' UNet2DModel with the same block widths, side by side.

Both networks get the same block widths, ResBlocks per level, attention levels, heads, GroupNorm groups,
resolution, batch, loss (our ``training_loss``) and thread count; steps alternate between them so every
row sees the same machine load. The networks are not identical: diffusers' up blocks have one ResBlock
more per level (``layers_per_block + 1``, each taking a skip), so theirs does more work per image. To
compare code rather than size, the FLOPs of one training step (forward + backward) are counted with
``torch.utils.flop_counter`` and the table gives achieved GFLOP/s next to images/s. (The counter has no formula
for the CPU flash-attention kernel diffusers' attention runs on; this script adds one, the same as for the
GPU kernels, so both networks' attention is counted.)

A second table, on the CPU, profiles a few steps of each plain row: the share of the step spent in convolution
kernels, their GFLOP/s, and the ceiling, the GFLOP/s a step would reach if every other operation took no time.
Both networks call the same oneDNN convolutions, so the ceiling shows how much a GFLOP/s ratio can be won
outside them. A 512x512 matrix product gives the machine's fp32 GEMM rate for scale.

Rows (each network plain and with both speed settings, so what is the code and what is a setting shows):
    ours              the Trainer as this config sets it: ``training.channels_last``, fused AdamW
                      (``training.build_optimizer``)
    ours, NCHW+loop   our network with NCHW tensors and the default for-loop AdamW
    diffusers         UNet2DModel as diffusers' train_unconditional.py runs it: NCHW, default AdamW
    diffusers, CL+fused   UNet2DModel with channels_last and fused AdamW

Usage: python benchmarks/train_throughput.py [--config configs/digits_cfg_16px.yaml] [--steps 30] [--device auto]
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import UNet2DModel
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

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


def _cpu_flash_attention(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_attention_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                                  **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


CPU_ATTENTION_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention,
                       torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
                           _cpu_flash_attention_backward}
CONVOLUTIONS = ("convolution", "convolution_backward")


def count_flops(model: torch.nn.Module, schedule, x0: torch.Tensor) -> tuple[float, float]:
    """FLOPs of one forward + backward pass of the batch: (all of them, those in convolutions)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        training_loss(model, schedule, x0, check_inputs=False).loss.backward()
    model.zero_grad(set_to_none=True)
    per_op = {op.__name__: n for op, n in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops(), sum(per_op.get(name, 0) for name in CONVOLUTIONS)


def convolution_share(row: "Contender", schedule, x0: torch.Tensor, steps: int) -> float:
    """Profile ``steps`` CPU training steps of ``row`` and return the share of their time spent in convolutions.

    Convolution time is the self time of every profiler event named after a convolution (the oneDNN forward
    and backward kernels and their thin wrappers). The profiler slows many small operations more than a few
    large ones, so the share comes out a little low and the ceiling built on it a little high."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            row.step(schedule, x0)
    events = prof.key_averages()
    conv = sum(e.self_cpu_time_total for e in events if "convolution" in e.key.lower())
    return conv / sum(e.self_cpu_time_total for e in events)


def gemm_gflops(n: int = 512, repeats: int = 20) -> float:
    """The machine's fp32 matrix-product rate (an n x n by n x n product), for scale."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/digits_cfg_16px.yaml",
                        help="experiment config whose model is measured (default: the 16 px main job of docs/benchmarks.md)")
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
    counted = {"ours": count_flops(ours, schedule, x0), "diffusers": count_flops(theirs, schedule, x0)}
    flops = {name: total / batch for name, (total, _) in counted.items()}
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
    if device.type == "cpu":
        print_ceiling([r for r in rows if r.name in ("ours", "diffusers")], counted, schedule, x0, base_gflops,
                      args.steps)


def print_ceiling(rows, counted, schedule, x0, base_gflops: float, timed_steps: int, steps: int = 5) -> None:
    """The second table: each row's convolution share and GFLOP/s ceiling (see the module docstring), and the
    time per step everything but the convolutions may take for our network to reach 1.5x diffusers' GFLOP/s.

    The profiled share of convolution time is applied to the interleaved (unprofiled) step time, so every
    figure comes from the same measurement as the first table."""
    print(f"\nconvolution share from {steps} profiled steps per row, applied to the timed steps above; "
          f"fp32 GEMM (512x512) on this machine: {gemm_gflops():.0f} GFLOP/s")
    print(f"{'row':20s} {'conv FLOP share':>15s} {'conv time share':>15s} {'conv GFLOP/s':>12s} "
          f"{'other ms/step':>13s} {'ceiling GFLOP/s':>15s} {'ceiling vs diffusers':>21s}")
    for row in rows:
        total, conv = counted[row.name]
        share = convolution_share(row, schedule, x0, steps)
        step_s = row.seconds / timed_steps
        conv_s, other_s = share * step_s, (1 - share) * step_s
        ceiling = total / conv_s / 1e9  # if everything but the convolutions took no time
        print(f"{row.name:20s} {conv / total:15.0%} {share:15.0%} {conv / conv_s / 1e9:12.1f} "
              f"{1000 * other_s:13.1f} {ceiling:15.1f} {ceiling / base_gflops:20.2f}x")
        if row.name == "ours":
            budget_s = total / (1.5 * base_gflops * 1e9) - conv_s
            print(f"{'':20s} 1.5x diffusers' GFLOP/s leaves {1000 * budget_s:.1f} ms per step for everything "
                  f"but the convolutions ({1000 * other_s:.1f} ms now)")


if __name__ == "__main__":
    main()
