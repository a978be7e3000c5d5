"""How few DPM-Solver++(2M) steps match DDIM-50 on the digits model: judge accuracy, Fréchet distance, time.

Usage:
    python benchmarks/dpm_solver_steps.py --checkpoint runs/digits_cfg/checkpoints/last.ckpt \
        [--num-samples 500 --guidance-scale 3 --steps 5 8 10 15 20 25 --spacing linspace --device auto]

Every sampler starts from the same noise x_T (seed ``--seed``) with the same labels (each class equally
often). Quality is measured as in benchmarks/judge_digits.py: images are area-pooled back to 8x8 and
mapped to the digits' 0..16 range; the judge is scikit-learn's SVC trained on real 8x8 digits; the
Fréchet distance (pixel space, 64 dimensions) is taken against the judge's training digits after the
model's own round trip (8 -> image size -> 8; none for the 8 px main job), next to the floor that as many
held-out real digits get. Prints the
table and the smallest DPM-Solver++ step count whose accuracy is at least 95 % of DDIM-50's and
whose distance is at most 105 % of DDIM-50's, with its sampling time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from judge_digits import real_digit_features, to_judge_features  # noqa: E402  (the judge, its 8x8 features)

from diffusion_lib.checkpoint import load_model  # noqa: E402
from diffusion_lib.device import randn, resolve_device  # noqa: E402
from diffusion_lib.images import to_uint8  # noqa: E402
from diffusion_lib.metrics.scores import frechet_distance  # noqa: E402
from diffusion_lib.sampling import cycle_labels, sample  # noqa: E402

TOLERANCE = 0.05


def run(loaded, sampler, steps, noise, labels, guidance, spacing, batch):
    """Sample ``len(noise)`` images; return (numpy uint8 (N, H, W, C) images, seconds)."""
    kwargs = dict(num_inference_steps=steps, guidance_scale=guidance, timestep_spacing=spacing,
                  prediction_type=loaded.config.diffusion.prediction_type)
    if sampler == "ddim":
        kwargs["eta"] = 0.0
    device = noise.device
    images = []
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(noise), batch):
        out = sample(loaded.model, loaded.schedule, sampler, noise=noise[i:i + batch], y=labels[i:i + batch], **kwargs)
        images.append(out.images)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return to_uint8(torch.cat(images).cpu()), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a trained digits checkpoint (class-conditional)")
    parser.add_argument("--num-samples", type=int, default=500, help="images per sampler setting (<= 540)")
    parser.add_argument("--guidance-scale", type=float, default=3.0, help="classifier-free guidance w")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 8, 10, 15, 20, 25], help="DPM-Solver++ steps")
    parser.add_argument("--ddim-steps", type=int, default=50, help="the DDIM baseline's steps")
    parser.add_argument("--ddim-spacing", default=None, help="DDIM's timestep spacing (default: the config's)")
    parser.add_argument("--spacing", default="linspace", help="DPM-Solver++'s timestep spacing")
    parser.add_argument("--batch-size", type=int, default=250, help="images per sampler call")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shared starting noise")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = parser.parse_args()

    device = resolve_device(args.device)
    loaded = load_model(args.checkpoint, device=device)
    n, d = args.num_samples, loaded.data
    judge, reference, floor = real_digit_features(n, d["image_size"])  # real digits at the model's size
    labels = cycle_labels(n, d["num_classes"]).to(device)
    noise = randn((n, d["channels"], d["image_size"], d["image_size"]), torch.Generator().manual_seed(args.seed), "cpu")
    noise = noise.to(device)
    ddim_spacing = args.ddim_spacing or loaded.config.sampling.timestep_spacing
    print(f"checkpoint {args.checkpoint} (step {loaded.step}), device {device}, torch threads "
          f"{torch.get_num_threads()}, n = {n}, guidance {args.guidance_scale}; Fréchet floor (held-out real) "
          f"{floor:.3f}")

    rows = []
    settings = [("ddim", args.ddim_steps, ddim_spacing)] + [("dpmsolver++", k, args.spacing) for k in args.steps]
    for sampler, steps, spacing in settings:
        images, seconds = run(loaded, sampler, steps, noise, labels, args.guidance_scale, spacing, args.batch_size)
        features = to_judge_features(images)
        accuracy = float((judge.predict(features) == labels.cpu().numpy()).mean())
        distance = frechet_distance(torch.from_numpy(reference), torch.from_numpy(features))
        rows.append(dict(sampler=sampler, steps=steps, spacing=spacing, accuracy=accuracy, fd=distance,
                         seconds=seconds))
        print(f"  {sampler}-{steps} done in {seconds:.1f} s", flush=True)

    base = rows[0]
    print(f"\n{'sampler':12s} {'steps':>5s} {'spacing':>9s} {'accuracy':>9s} {'Fréchet':>8s} {'/floor':>7s} "
          f"{'seconds':>8s} {'vs DDIM':>8s}")
    for r in rows:
        print(f"{r['sampler']:12s} {r['steps']:5d} {r['spacing']:>9s} {r['accuracy']:9.3f} {r['fd']:8.3f} "
              f"{r['fd'] / floor:7.2f} {r['seconds']:8.1f} {base['seconds'] / r['seconds']:7.1f}x")
    matching = [r for r in rows[1:] if r["accuracy"] >= (1 - TOLERANCE) * base["accuracy"]
                and r["fd"] <= (1 + TOLERANCE) * base["fd"]]
    if not matching:
        print(f"\nno DPM-Solver++ step count in {args.steps} is within {TOLERANCE:.0%} of "
              f"DDIM-{args.ddim_steps} on both accuracy and Fréchet distance")
        return 1
    best = min(matching, key=lambda r: r["steps"])
    print(f"\nsmallest DPM-Solver++ step count within {TOLERANCE:.0%} of DDIM-{args.ddim_steps} on both: "
          f"{best['steps']} steps ({best['accuracy']:.3f} vs {base['accuracy']:.3f} accuracy, Fréchet "
          f"{best['fd']:.3f} vs {base['fd']:.3f}), {best['seconds']:.1f} s vs {base['seconds']:.1f} s "
          f"({base['seconds'] / best['seconds']:.1f}x faster) for {n} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
