"""Shared fixtures: small models and schedules that make the core tests fast on 2 CPU cores."""

import json
import os
from pathlib import Path

import pytest
import torch

from diffusion_lib import ConditionalUNet, NoiseSchedule, UNet

ARTIFACTS = Path(__file__).resolve().parents[1] / "outputs" / "test-artifacts"


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


# The early preparations, in the order a whole run needs them (test files run in name order: test_docker_image,
# test_hub, test_student_release). Each is also a session fixture of the same name.
EARLY = ("course_images", "hub_image", "student_release")


@pytest.fixture(scope="session", autouse=True)
def early(request, tmp_path_factory):
    """The slow preparations (tests/background.py), started now when the collected tests need them.

    The engine started for them (tests/docker_engine.py) is stopped at the end of the session, after every
    other session fixture, as an engine started here always was.
    """
    from background import Early
    from docker_engine import Engine, build_course_images, build_hub_image
    from student_setup import set_up_student_release

    def engine():
        return Engine(tmp_path_factory.mktemp("docker")).start()

    def images():
        return build_course_images(preparations.result("docker_engine"), tmp_path_factory.mktemp("images"))

    def hub_image():
        return build_hub_image(preparations.result("docker_engine"), tmp_path_factory.mktemp("hub-image"))

    def student():
        return set_up_student_release(tmp_path_factory.mktemp("student") / "course-release")

    preparations = Early({"docker_engine": engine, "course_images": images, "hub_image": hub_image,
                          "student_release": student})
    wanted = set().union(*(item.fixturenames for item in request.session.items))
    tmp_path_factory.getbasetemp()  # made here first: pytest makes it lazily, and not thread-safely
    preparations.start(*(name for name in EARLY if name in wanted))
    try:
        yield preparations
    finally:
        started = preparations.started("docker_engine")
        if started is not None:
            started.stop()
        if preparations.seconds:  # each one's time and the wait for it: what running beside the tests hid
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            (ARTIFACTS / "early-preparations.json").write_text(json.dumps(
                {"seconds": preparations.seconds, "waited_seconds": preparations.waited}, indent=2) + "\n")


def _prepared(name: str, doc: str):
    """A session fixture `name` whose value is the early preparation `name` (waited for, or made then)."""
    def fixture(early):
        return early.result(name)
    fixture.__doc__ = doc
    return pytest.fixture(scope="session", name=name)(fixture)


docker_engine = _prepared("docker_engine", "A running Docker engine (tests/docker_engine.py): started if none runs.")
course_images = _prepared("course_images", "The instructor and student images, built with `docker compose build`.")
hub_image = _prepared("hub_image", "test_hub's hub image, built from deploy/hub/ (tests/docker_engine.py).")
student_release = _prepared("student_release", "A course release set up as its README says, without Docker "
                                               "(tests/student_setup.py).")
