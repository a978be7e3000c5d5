"""Homework 3.2b: label dropout (p_uncond), classifier-free guidance and the guided sampler.

Unit checks of ``drop_labels``, ``classifier_free_guidance`` (diffusers' convention:
out = out_uncond + w (out_cond - out_uncond)) and ``guided_prediction``, then a measurement: a tiny
conditional model trained on the bundled 8x8 digits with your label dropout, sampled with your
guidance, judged by the project's judge (benchmarks/judge_digits.py: an SVC trained on the real digits).
Trains about 200 steps on one CPU core (tens of seconds); the model is trained once per test run.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from diffusion_lib.diffusion import drop_labels, training_loss
from diffusion_lib.guidance import classifier_free_guidance, guided_prediction
from diffusion_lib.schedules import NoiseSchedule

ROOT = Path(__file__).resolve().parents[2]
K = 10
NET = dict(in_channels=1, base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(),
           num_heads=1, norm_groups=8)
TRAIN_STEPS, BATCH, P_UNCOND, GUIDANCE = 200, 64, 0.2, 3.0
MIN_GUIDED_ACCURACY, MAX_UNCONDITIONAL_ACCURACY = 0.8, 0.35


class ToyConditional(nn.Module):
    """A stand-in conditional model: output = x * (y + 1), with a null label K."""

    num_classes, null_label = K, K

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, t, y=None):
        self.calls += 1
        return x * (y.float() + 1.0)[:, None, None, None]


def _max_err(got, expected) -> float:
    """Max abs difference (inf when the shapes differ)."""
    got = torch.as_tensor(got)
    return float((got.double() - expected.double()).abs().max()) if got.shape == expected.shape else float("inf")


def test_guidance_formula_follows_diffusers():
    g = torch.Generator().manual_seed(0)
    u, c = torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 4, 4, generator=g)
    for w, expected, what in ((0.0, u, "eps_u (the unconditional output)"), (1.0, c, "eps_c (the conditional output)"),
                              (3.0, u + 3.0 * (c - u), "eps_u + w*(eps_c-eps_u)")):
        err = _max_err(classifier_free_guidance(u, c, w), expected)
        assert err <= 1e-6, f"w = {w}: expected {what}, max abs err <= 1e-6, got {err:.3g}"


def test_label_dropout_rate():
    y = torch.arange(40_000) % K
    model = ToyConditional()
    dropped = drop_labels(y, model, 0.25, torch.Generator().manual_seed(0))
    is_null = dropped == K
    assert dropped.shape == y.shape and dropped.dtype == torch.long, (
        f"expected int64 labels of shape {tuple(y.shape)}, got {dropped.dtype} {tuple(dropped.shape)}")
    rate = float(is_null.float().mean())
    assert 0.23 < rate < 0.27, f"p_uncond = 0.25: expected about 0.25 of the labels dropped (0.23-0.27), got {rate:.3f}"
    changed = int((dropped[~is_null] != y[~is_null]).sum())
    assert changed == 0, f"expected labels that are not dropped to stay unchanged, got {changed} changed"
    kept = drop_labels(y, model, 0.0, None)
    assert torch.equal(kept, y), f"p_uncond = 0: expected every label kept, got {int((kept != y).sum())} changed"


def test_guided_prediction_mixes_cond_and_uncond():
    model = ToyConditional()
    x, t, y = torch.randn(3, 1, 2, 2), torch.zeros(3, dtype=torch.long), torch.tensor([0, 4, 9])
    out = guided_prediction(model, x, t, y, 2.5)
    cond, uncond = x * (y.float() + 1)[:, None, None, None], x * (K + 1.0)
    assert out.shape == x.shape, f"expected an output of shape {tuple(x.shape)}, got {tuple(out.shape)}"
    err = _max_err(out, uncond + 2.5 * (cond - uncond))
    assert err <= 1e-5, (
        "w = 2.5: expected out_uncond + w*(out_cond-out_uncond), the model called with the labels and with the null "
        f"label, max abs err <= 1e-5, got {err:.3g}")


def make_conditional_net() -> nn.Module:
    """The conditional network the measurement trains (your ConditionalUNet)."""
    from diffusion_lib.models import ConditionalUNet

    return ConditionalUNet(K, **NET)


def _judge():
    """The project's judge: benchmarks/judge_digits.py's SVC on the real 8x8 digits, and its features."""
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    spec = importlib.util.spec_from_file_location("judge_digits", ROOT / "benchmarks" / "judge_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    digits = load_digits()
    return SVC(gamma=0.001, C=10.0).fit(digits.data, digits.target), module.to_judge_features


@pytest.fixture(scope="session")
def trained():
    """A tiny conditional model trained on the digits with your label dropout (p_uncond = 0.2)."""
    from diffusion_lib.data import load_dataset

    torch.manual_seed(0)
    torch.set_num_threads(1)
    data = load_dataset("digits")
    x = data.pixels.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    y = torch.as_tensor(data.labels, dtype=torch.long)
    model = make_conditional_net()
    schedule = NoiseSchedule("cosine", 200)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(TRAIN_STEPS):
        idx = torch.randint(0, len(x), (BATCH,), generator=g)
        loss = training_loss(model, schedule, x[idx], y[idx], p_uncond=P_UNCOND, generator=g).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), schedule


def _accuracy(trained, guidance_scale: float) -> float:
    from diffusion_lib.sampling import ddim_sample

    model, schedule = trained
    labels = torch.arange(K).repeat(10)
    images = ddim_sample(model, schedule, (len(labels), 1, 8, 8), y=labels, guidance_scale=guidance_scale,
                         num_inference_steps=20, generator=torch.Generator().manual_seed(1)).images
    judge, features = _judge()
    uint8 = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    _report_samples(guidance_scale, labels.tolist(), uint8)
    return float((judge.predict(features(uint8)) == labels.numpy()).mean())


def _report_samples(guidance_scale: float, labels: list[int], uint8: np.ndarray) -> None:
    """Under the grader (COURSE_DATA_FD set), hand the samples to the host, which judges them with its own
    classifier and checks that they are not copies of training digits; a no-op for `course check`."""
    import json
    import os

    fd = os.environ.get("COURSE_DATA_FD")
    if fd:
        line = {"kind": "samples", "w": float(guidance_scale), "labels": labels,
                "images": uint8.reshape(len(uint8), -1).astype(int).tolist()}
        os.write(int(fd), (json.dumps(line) + "\n").encode("utf-8"))


def test_guided_samples_show_their_class(trained):
    accuracy = _accuracy(trained, GUIDANCE)
    assert accuracy >= MIN_GUIDED_ACCURACY, (
        f"class accuracy of guided samples (w = {GUIDANCE}) is {accuracy:.2f}; expected >= {MIN_GUIDED_ACCURACY}")

### BEGIN HIDDEN TESTS [unconditional]
class _ReferenceConditionalUNet(__import__("diffusion_lib.models", fromlist=["UNet"]).UNet):
    """The instructor's conditional UNet, so that this task's grade does not depend on task 3.2a."""

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = self.null_label = num_classes
        self.class_embedding = nn.Embedding(num_classes + 1, self.time_embedding[-1].out_features)

    def embed(self, t, y, batch):
        if y is None:
            y = torch.full((batch,), self.null_label, dtype=torch.long, device=t.device)
        return self.time_embedding(t) + self.class_embedding(y)


def make_conditional_net() -> nn.Module:  # noqa: F811 - the grader measures with the reference network
    return _ReferenceConditionalUNet(K, **NET)


def test_unconditional_branch_ignores_the_labels(trained):
    accuracy = _accuracy(trained, 0.0)
    assert accuracy <= MAX_UNCONDITIONAL_ACCURACY, (
        f"w = 0 must sample unconditionally (null label); its class accuracy {accuracy:.2f} is above chance")
### END HIDDEN TESTS

### BEGIN HIDDEN TESTS [edges]

def test_guidance_scales_and_dropout_edges():
    g = torch.Generator().manual_seed(3)
    u, c = torch.randn(5, 3, 2, 2, generator=g), torch.randn(5, 3, 2, 2, generator=g)
    for w in (0.5, 2.0, 7.5):
        err = _max_err(classifier_free_guidance(u, c, w), u + w * (c - u))
        assert err <= 1e-5, f"w = {w}: expected eps_u + w*(eps_c-eps_u) max abs err <= 1e-5, got {err:.3g}"
    y = torch.arange(100) % K
    assert (drop_labels(y, ToyConditional(), 1.0, torch.Generator().manual_seed(0)) == K).all(), (
        "p_uncond = 1 must drop every label")
    model = ToyConditional()
    x, t = torch.randn(4, 1, 2, 2), torch.zeros(4, dtype=torch.long)
    yy = torch.tensor([1, 2, 3, 4])
    assert torch.allclose(guided_prediction(model, x, t, yy, 0.0), x * (K + 1.0), atol=1e-6), (
        "w = 0 must give the null-label output")
    assert torch.allclose(guided_prediction(model, x, t, yy, 1.0), x * (yy.float() + 1)[:, None, None, None])
### END HIDDEN TESTS
