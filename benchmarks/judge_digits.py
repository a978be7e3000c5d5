"""Judge generated digits with an independent classifier: scikit-learn's SVC trained on the real 8x8 digits.

Usage:
    python benchmarks/judge_digits.py SAMPLES.npz [--min-accuracy 0.9]
    python benchmarks/judge_digits.py --checkpoint runs/digits_cfg/checkpoints/last.ckpt \
        [--num-samples 500 --sampler ddim --num-inference-steps 50 --guidance-scale 3]

The NPZ is what ``python -m diffusion_lib sample --out X.npz`` writes: ``images`` uint8 (N, H, W, 1),
white ink on black, and the requested ``labels``. Images larger than 8x8 are average-pooled back to
8x8; all are mapped to the digits' 0..16 range, then classified. The script first reports the judge's own
accuracy on held-out real digits (for samples larger than 8x8, after the same 8 -> H -> 8 round trip), so
a low score on samples cannot be blamed on the judge. Exit status 1 if accuracy < --min-accuracy.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC

from diffusion_lib.data import load_dataset
from diffusion_lib.metrics.scores import frechet_distance


def to_judge_features(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 1) white-on-black -> (N, 64) floats in the digits' 0..16 range (8x8 area pooling)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = F.adaptive_avg_pool2d(x, 8) if x.shape[-1] != 8 else x
    return (x[:, 0] / 255.0 * 16.0).reshape(len(x), -1).numpy()


def real_digits_at(image_size: int) -> np.ndarray:
    """The real digits as a model of that resolution sees them: uint8 (1797, image_size, image_size, 1), the
    8x8 originals resized by the data source (8 keeps them as they are)."""
    return load_dataset("digits", image_size=image_size).pixels.numpy()


def real_digit_features(num_samples: int, image_size: int = 16):
    """The judge, the reference set of the Fréchet distance and its floor, for samples of ``image_size`` px.

    Args:
        num_samples: held-out real digits in the floor (<= 540 exist).
        image_size: the side of the model's images; the real digits take the same 8 -> ``image_size`` -> 8
            round trip as its samples (none at 8), so the distance compares like with like.

    Returns:
        the judge (SVC on the real 8x8 training split), the training split's features (N, 64) (the
        reference) and the floor: the distance of ``num_samples`` held-out real digits to that reference.
    """
    digits = load_digits()
    index = np.arange(len(digits.target))
    train_idx, test_idx = train_test_split(index, test_size=0.3, random_state=0, stratify=digits.target)
    judge = SVC(gamma=0.001, C=10.0).fit(digits.data[train_idx], digits.target[train_idx])
    real = real_digits_at(image_size)
    reference = to_judge_features(real[train_idx])
    held_out = to_judge_features(real[test_idx[:num_samples]])
    floor = frechet_distance(torch.from_numpy(reference), torch.from_numpy(held_out))
    return judge, reference, floor


def score_samples(judge, reference: np.ndarray, images: np.ndarray, labels: np.ndarray) -> dict:
    """Class accuracy (overall and per class) and pixel-space Fréchet distance of uint8 (N, H, W, 1) samples."""
    features = to_judge_features(images)
    predicted = judge.predict(features)
    return dict(accuracy=float((predicted == labels).mean()),
                per_class={int(c): float((predicted[labels == c] == c).mean()) for c in np.unique(labels)},
                fd=frechet_distance(torch.from_numpy(reference), torch.from_numpy(features)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("npz", nargs="?", help="samples written by `python -m diffusion_lib sample --out X.npz`")
    parser.add_argument("--checkpoint", help="sample from this checkpoint first (instead of an NPZ)")
    parser.add_argument("--num-samples", type=int, default=500, help="samples to draw with --checkpoint")
    parser.add_argument("--sampler", default="ddim", help="sampler for --checkpoint")
    parser.add_argument("--num-inference-steps", type=int, default=50, help="steps for --checkpoint")
    parser.add_argument("--guidance-scale", type=float, default=3.0, help="guidance for --checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="seed for --checkpoint")
    parser.add_argument("--min-accuracy", type=float, default=0.9, help="exit 1 below this accuracy")
    args = parser.parse_args()
    if not args.npz and not args.checkpoint:
        parser.error("give an NPZ of samples or --checkpoint")

    path = args.npz
    if args.checkpoint:
        path = str(Path(tempfile.mkdtemp()) / "samples.npz")
        subprocess.run([sys.executable, "-m", "diffusion_lib", "sample", "--checkpoint", args.checkpoint,
                        "--num-samples", str(args.num_samples), "--sampler", args.sampler,
                        "--num-inference-steps", str(args.num_inference_steps), "--guidance-scale",
                        str(args.guidance_scale), "--seed", str(args.seed), "--out", path, "--no-progress"], check=True)
    data = np.load(path)
    images, labels = data["images"], data["labels"]
    if images.ndim != 4 or images.shape[-1] != 1 or images.dtype != np.uint8:
        raise SystemExit(f"expected uint8 (N, H, W, 1) digit images; got {images.dtype} {images.shape}")

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(digits.data, digits.target, test_size=0.3, random_state=0,
                                                        stratify=digits.target)
    judge = SVC(gamma=0.001, C=10.0).fit(x_train, y_train)
    size = images.shape[1]
    test_idx = train_test_split(np.arange(len(digits.target)), test_size=0.3, random_state=0, stratify=digits.target)[1]
    roundtrip = judge.score(to_judge_features(real_digits_at(size)[test_idx]), digits.target[test_idx])
    print(f"judge (SVC on real 8x8 digits): held-out accuracy {judge.score(x_test, y_test):.3f}"
          + (f", after the 8->{size}->8 round trip {roundtrip:.3f}" if size != 8 else ""))

    predicted = judge.predict(to_judge_features(images))
    accuracy = float((predicted == labels).mean())
    per_class = {int(c): float((predicted[labels == c] == c).mean()) for c in np.unique(labels)}
    print(f"samples: {len(labels)} from {path}")
    print("per-class accuracy: " + "  ".join(f"{c}:{a:.2f}" for c, a in per_class.items()))
    print(f"class accuracy of generated digits: {accuracy:.3f} (target >= {args.min_accuracy})")
    return 0 if accuracy >= args.min_accuracy else 1


if __name__ == "__main__":
    sys.exit(main())
