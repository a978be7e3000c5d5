"""The main job's figures: training time, and the judge's accuracy and Fréchet distance across guidance scales.

Usage:
    python benchmarks/main_job.py --run runs/digits_cfg                 # score a finished run
    python benchmarks/main_job.py --run runs/digits_cfg --train         # train it first (timed), then score
    python benchmarks/main_job.py --run runs/digits_cfg --baseline-config configs/digits_cfg_16px.yaml  # + ratio

Training time is the wall time of ``python -m diffusion_lib train`` (``--train``), and the run's own
``run.json`` (training loop only). With ``--baseline-config``, both configs' Trainers take turns for
``--timing-steps`` steps in this process, so the projected training times (steps x time per step) of the
two configs are compared under the same machine load: a ratio, not a figure from another day.

Scoring (as benchmarks/judge_digits.py and benchmarks/dpm_solver_steps.py): DDIM with the config's steps
from one shared starting noise and labels (each class equally often) at every ``--guidance`` scale;
class accuracy from the judge (scikit-learn's SVC on the real 8x8 digits), and the Fréchet distance in pixel
space (64 dimensions; samples larger than 8x8 are area-pooled back to 8x8) to the judge's training digits,
next to the floor that as many held-out real digits get. The real digits take the model's round trip
(8 -> ``data.image_size`` -> 8; none for an 8 px model), so samples and floor are compared like with like.
Exit status 1 if a target is missed: accuracy at guidance 3 below ``--min-accuracy``, or no scale within
``--max-fd-ratio`` x the floor (issue 24: 0.99 and 1.5).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dpm_solver_steps import run as run_sampler  # noqa: E402  (timed, batched sampling from given noise)
from judge_digits import real_digit_features, score_samples  # noqa: E402

from diffusion_lib.checkpoint import load_model  # noqa: E402
from diffusion_lib.config import load_config  # noqa: E402
from diffusion_lib.device import randn, resolve_device  # noqa: E402
from diffusion_lib.run_log import read_run_summary  # noqa: E402
from diffusion_lib.sampling import cycle_labels  # noqa: E402
from diffusion_lib.training import Trainer  # noqa: E402


def step_times(configs: dict[str, str], steps: int) -> dict[str, tuple[float, int]]:
    """Seconds per training step of each config's Trainer, taking turns step by step (after 3 untimed steps),
    and the number of steps its run takes (``training.max_steps``, or ``max_epochs`` first). Each Trainer
    trains on its own config's data (``data.source`` at ``data.image_size``)."""
    trainers = {name: Trainer(load_config(path, ["training.loggers=[csv]"]), Path("/tmp") / f"main_job_{name}",
                              progress=False) for name, path in configs.items()}  # each loads its config's data
    seconds = dict.fromkeys(trainers, 0.0)
    for i in range(steps + 3):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            trainer.train_step(*trainer._next_batch())
            if i >= 3:
                seconds[name] += time.perf_counter() - start
    return {name: (s / steps, trainers[name].max_steps) for name, s in seconds.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="the run folder (checkpoints/last.ckpt, config.yaml, run.json)")
    parser.add_argument("--config", default="configs/digits_cfg.yaml", help="config to train with --train")
    parser.add_argument("--train", action="store_true", help="train --config into --run first, timed")
    parser.add_argument("--baseline-config", help="also compare projected training time with this config")
    parser.add_argument("--timing-steps", type=int, default=20, help="interleaved steps per config for the ratio")
    parser.add_argument("--guidance", type=float, nargs="+", default=[0, 1, 1.5, 2, 3], help="guidance scales")
    parser.add_argument("--num-samples", type=int, default=500, help="images per scale (<= 540, the held-out digits)")
    parser.add_argument("--min-accuracy", type=float, default=0.99, help="target accuracy at guidance 3")
    parser.add_argument("--max-fd-ratio", type=float, default=1.5, help="target Fréchet distance / floor")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (sampling)")
    args = parser.parse_args()
    run = Path(args.run)

    if args.train:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "diffusion_lib", "train", "--config", args.config, "--output", str(run),
                        "--no-progress"], check=True)
        print(f"training command: {time.perf_counter() - start:.0f} s wall")
    summary = read_run_summary(run)  # run.json through the artifact loader
    if not summary:
        sys.exit(f"main_job: no readable run.json in {run}; train first (--train --config ...)")
    print(f"run {run}: step {summary['step']}, training loop {summary['wall_seconds']:.0f} s, "
          f"final loss {summary['final_loss']:.4f}, {summary['images_per_sec']:.0f} images/s, "
          f"torch threads {torch.get_num_threads()}")
    if args.baseline_config:
        timed = step_times({"this": str(run / "config.yaml"), "baseline": args.baseline_config}, args.timing_steps)
        projected = {name: per_step * max_steps for name, (per_step, max_steps) in timed.items()}
        print("step time, taking turns: " + "; ".join(
            f"{name} {1000 * per_step:.0f} ms x {max_steps} steps = {projected[name]:.0f} s"
            for name, (per_step, max_steps) in timed.items())
            + f" (baseline: {args.baseline_config}); ratio {projected['this'] / projected['baseline']:.2f}")

    device = resolve_device(args.device)
    loaded = load_model(run / "checkpoints" / "last.ckpt", device=device)
    n, d = args.num_samples, loaded.data
    judge, reference, floor = real_digit_features(n, d["image_size"])  # real digits at the model's size
    labels = cycle_labels(n, d["num_classes"]).to(device)
    noise = randn((n, d["channels"], d["image_size"], d["image_size"]), torch.Generator().manual_seed(0), "cpu")
    steps, spacing = loaded.config.sampling.num_inference_steps, loaded.config.sampling.timestep_spacing
    print(f"DDIM-{steps}, n = {n}, Fréchet floor (held-out real digits) {floor:.3f}\n")
    print(f"{'guidance':>8s} {'accuracy':>9s} {'Fréchet':>8s} {'/floor':>7s} {'seconds':>8s}")
    rows = {}
    for w in args.guidance:
        images, seconds = run_sampler(loaded, "ddim", steps, noise.to(device), labels, w, spacing, 250)
        rows[w] = score_samples(judge, reference, np.asarray(images), labels.cpu().numpy())
        print(f"{w:8g} {rows[w]['accuracy']:9.3f} {rows[w]['fd']:8.3f} {rows[w]['fd'] / floor:7.2f} {seconds:8.1f}",
              flush=True)
    best = min(rows, key=lambda w: rows[w]["fd"])
    accuracy3 = rows.get(3.0, {}).get("accuracy", float("nan"))
    if 3.0 in rows:
        print("\nper-class accuracy at guidance 3: "
              + "  ".join(f"{c}:{a:.2f}" for c, a in rows[3.0]["per_class"].items()))
    ok_accuracy = accuracy3 >= args.min_accuracy
    ok_fd = rows[best]["fd"] <= args.max_fd_ratio * floor
    print(f"accuracy at guidance 3: {accuracy3:.3f} (target >= {args.min_accuracy}) {'ok' if ok_accuracy else 'MISSED'}")
    print(f"lowest Fréchet distance: {rows[best]['fd']:.3f} = {rows[best]['fd'] / floor:.2f} x floor at guidance "
          f"{best:g} (target <= {args.max_fd_ratio} x) {'ok' if ok_fd else 'MISSED'}")
    return 0 if ok_accuracy and ok_fd else 1


if __name__ == "__main__":
    sys.exit(main())
