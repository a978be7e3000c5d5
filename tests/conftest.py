"""Shared fixtures: small models and schedules that make the core tests fast on 2 CPU cores."""

import os
from pathlib import Path

import pytest
import torch

from diffusion_lib import ConditionalUNet, NoiseSchedule, UNet


class BrightnessClassifier(torch.nn.Module):
    """A fixed 3-class judge, p(y | x) from the mean pixel value: 0 = dark, 1 = neutral, 2 = bright; ignores t.

    Its log-probability has a known gradient, so guidance and accuracy tests need no training.
    """

    num_classes = 3

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(8.0))

    def forward(self, x, t=None):
        mean = x.float().mean(dim=(1, 2, 3))
        return torch.stack([-self.gain * mean, torch.zeros_like(mean), self.gain * mean], dim=1)


@pytest.fixture
def schedule() -> NoiseSchedule:
    return NoiseSchedule("linear", num_train_timesteps=100)


def tiny_unet_kwargs(channels: int = 1) -> dict:
    return dict(in_channels=channels, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                attention_levels=(1,), num_heads=2, norm_groups=4)


@pytest.fixture
def tiny_unet() -> UNet:
    torch.manual_seed(0)
    return UNet(**tiny_unet_kwargs()).eval()


@pytest.fixture
def tiny_cond_unet() -> ConditionalUNet:
    torch.manual_seed(0)
    model = ConditionalUNet(num_classes=3, **tiny_unet_kwargs()).eval()
    # conv_out starts at zero (the zero predictor); perturb so outputs depend on inputs and labels
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


class ToyDenoiser(torch.nn.Module):
    """A smooth, input- and t-dependent stand-in for a trained network, for comparing samplers."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.7))

    def forward(self, x, t, y=None):
        return torch.tanh(self.scale * x) + 1e-3 * t.float().view(-1, 1, 1, 1)


@pytest.fixture
def tiny_unet_model() -> torch.nn.Module:
    return ToyDenoiser()


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """Execute a notebook in the smoke profile once per session; later calls reuse the result.

    Returns a function ``run(path) -> (NotebookResult, output_dir)`` where ``output_dir`` is the
    notebook's ``OUTPUT_DIR``. The hub is marked offline so pipeline sections take their offline path.
    """
    from diffusion_lib.course.notebooks import run_notebook

    root = tmp_path_factory.mktemp("notebooks")
    results = {}

    def run(path: Path):
        if path.name not in results:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            results[path.name] = run_notebook(path, root, profile="smoke")
        return results[path.name], root / Path(path).stem

    return run


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory):
    """A running Docker engine (tests/docker_engine.py): started for the session if none runs."""
    from docker_engine import started_engine

    with started_engine(tmp_path_factory.mktemp("docker")) as engine:
        yield engine


@pytest.fixture(scope="session")
def course_images(docker_engine, tmp_path_factory):
    """The instructor and student images, built once per session with `docker compose build`."""
    from docker_engine import build_course_images

    return build_course_images(docker_engine, tmp_path_factory.mktemp("images"))
