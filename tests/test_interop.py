"""diffusers interop: its schedulers on our UNet, our models in its folder format, pretrained pipelines, notebook 07."""

import json
import time
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, EulerDiscreteScheduler, UNet2DModel

from diffusion_lib import NoiseSchedule
from diffusion_lib.checkpoint import LoadedModel
from diffusion_lib.config import load_config
from diffusion_lib.interop import (SCHEDULERS, DiffusersUNet, DiffusersUNetAdapter, PretrainedUnavailableError,
                                   alpha_bar_at, load_pretrained, load_pretrained_pipeline, pipeline_sample,
                                   sample_with_diffusers_scheduler, save_pretrained, scheduler_from_schedule)
from diffusion_lib.sampling import ddim_sample, ddpm_sample

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),  # numpy 2 deprecations
              pytest.mark.filterwarnings("ignore:__array_wrap__ must:DeprecationWarning")]      # inside diffusers

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "07_sampler_exploration.ipynb"


@pytest.fixture
def linear1000() -> NoiseSchedule:
    return NoiseSchedule("linear", 1000)


def _noise(n=4, seed=0):
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- schedulers on our model

@pytest.mark.parametrize("eta, guidance_scale", [(0.0, 1.0), (0.0, 3.0), (0.5, 3.0), (1.0, 3.0)])
def test_diffusers_ddim_equals_our_ddim(tiny_cond_unet, linear1000, eta, guidance_scale):
    y, noise = torch.tensor([0, 1, 2, 0]), _noise()
    ours = ddim_sample(tiny_cond_unet, linear1000, noise=noise, y=y, guidance_scale=guidance_scale, num_inference_steps=20,
                       eta=eta, generator=torch.Generator().manual_seed(1)).images
    theirs = sample_with_diffusers_scheduler(tiny_cond_unet, linear1000, "ddim", noise=noise, y=y,
                                             guidance_scale=guidance_scale, num_inference_steps=20,
                                             step_kwargs={"eta": eta}, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(theirs.images, ours, atol=1e-4, rtol=1e-4)
    assert theirs.num_model_evaluations == 20 and theirs.scheduler == "DDIMScheduler"
    assert not torch.equal(ours, noise.clamp(-1, 1))  # the loop did something


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_diffusers_ddpm_equals_our_ddpm(tiny_cond_unet, linear1000, variance_type):
    y, noise = torch.tensor([0, 1, 2, 0]), _noise()
    ours = ddpm_sample(tiny_cond_unet, linear1000, noise=noise, y=y, guidance_scale=3.0, num_inference_steps=25,
                       variance_type=variance_type, generator=torch.Generator().manual_seed(1)).images
    theirs = sample_with_diffusers_scheduler(tiny_cond_unet, linear1000, "ddpm", noise=noise, y=y, guidance_scale=3.0,
                                             num_inference_steps=25, variance_type=variance_type,
                                             generator=torch.Generator().manual_seed(1)).images
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


def test_same_seed_gives_the_same_start_as_our_samplers(tiny_cond_unet, schedule):
    y = torch.tensor([0, 1, 2])
    ours = ddim_sample(tiny_cond_unet, schedule, (3, 1, 8, 8), y=y, num_inference_steps=10,
                       generator=torch.Generator().manual_seed(7)).images
    theirs = sample_with_diffusers_scheduler(tiny_cond_unet, schedule, "ddim", (3, 1, 8, 8), y=y, num_inference_steps=10,
                                             generator=torch.Generator().manual_seed(7)).images
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


class PointMassOracle(torch.nn.Module):
    """The exact eps-predictor when all data is one image x0*: eps = (x_t - sqrt(abar_t) x0*) / sqrt(1 - abar_t).

    Every correct sampler must end at x0*. Fractional t (sigma-space schedulers) uses ``alpha_bar_at``.
    """

    def __init__(self, schedule, target):
        super().__init__()
        self.schedule, self.target = schedule, target
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t, y=None):
        abar = torch.stack([alpha_bar_at(self.schedule, ti).float() for ti in t]).view(-1, 1, 1, 1)
        return (x - abar.sqrt() * self.target) / (1 - abar).sqrt()


ENDS_AT_T0 = {"deis", "pndm"}  # these stop at the noise level of t = 0 instead of sigma = 0


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
@pytest.mark.parametrize("spacing", ["leading", "linspace"])
def test_every_scheduler_lands_on_a_point_mass(name, spacing):
    if name == "pndm" and spacing == "linspace":
        pytest.skip("diffusers' PNDM assumes evenly spaced integer steps (leading/trailing)")
    schedule = NoiseSchedule("linear", 1000)
    target = torch.linspace(-0.9, 0.9, 64).view(1, 1, 8, 8).repeat(2, 1, 1, 1)
    noise = _noise(2)
    out = sample_with_diffusers_scheduler(PointMassOracle(schedule, target), schedule, name, noise=noise,
                                          num_inference_steps=12, timestep_spacing=spacing,
                                          generator=torch.Generator().manual_seed(0))
    if spacing == "linspace" and name in ("euler", "heun", "lms", "kdpm2"):
        assert any(t != round(t) for t in out.timesteps)  # fractional timesteps exercise alpha_bar_at's interpolation
    expected = target
    if name in ENDS_AT_T0:  # the deterministic path of a point mass keeps eps: x_t = sqrt(abar) x0* + sqrt(1 - abar) noise
        abar0 = schedule.alphas_cumprod[0]
        expected = abar0.sqrt() * target + (1 - abar0).sqrt() * noise
    torch.testing.assert_close(out.images, expected.clamp(-1, 1), atol=2e-3, rtol=0)


def test_alpha_bar_at_matches_diffusers_sigmas(linear1000):
    euler = scheduler_from_schedule("euler", linear1000)
    euler.set_timesteps(7)
    for t, sigma in zip(euler.timesteps, euler.sigmas[:-1]):
        assert alpha_bar_at(linear1000, t).item() == pytest.approx(1 / (1 + sigma.item() ** 2), rel=1e-4)
    assert alpha_bar_at(linear1000, 10).item() == pytest.approx(linear1000.alphas_cumprod[10].item(), rel=1e-7)
    with pytest.raises(ValueError, match="outside"):
        alpha_bar_at(linear1000, 1000.0)


def test_v_prediction_output_is_converted_for_an_epsilon_scheduler(tiny_cond_unet, schedule):
    kwargs = dict(noise=_noise(3), y=torch.tensor([0, 1, 2]), guidance_scale=2.0, num_inference_steps=10,
                  prediction_type="v_prediction")
    native = sample_with_diffusers_scheduler(tiny_cond_unet, schedule, "ddim", **kwargs).images
    eps_scheduler = scheduler_from_schedule("ddim", schedule, "epsilon")
    converted = sample_with_diffusers_scheduler(tiny_cond_unet, schedule, eps_scheduler, **kwargs).images
    ours = ddim_sample(tiny_cond_unet, schedule, **kwargs).images
    torch.testing.assert_close(converted, native, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(native, ours, atol=1e-4, rtol=1e-4)


def test_adapter_clips_x0_and_rederives_eps(tiny_cond_unet, schedule):
    x = 5 * torch.randn(2, 1, 8, 8)  # far outside the data range: x_0 predictions need clipping
    y = torch.tensor([0, 1])
    adapter = DiffusersUNetAdapter(tiny_cond_unet, schedule, y=y, guidance_scale=5.0)
    eps = adapter(x, torch.tensor(10))
    abar = schedule.alphas_cumprod[10]
    x0 = (x - (1 - abar).sqrt() * eps) / abar.sqrt()
    assert x0.abs().max() <= 1 + 1e-5 and adapter.num_evaluations == 1
    raw = DiffusersUNetAdapter(tiny_cond_unet, schedule, y=y, guidance_scale=5.0, clip_sample=False)(x, torch.tensor(10))
    assert ((x - (1 - abar).sqrt() * raw) / abar.sqrt()).abs().max() > 1.5


def test_scheduler_from_schedule_uses_our_betas_and_checks_arguments():
    s = NoiseSchedule("cosine", 200)
    for name in ("ddpm", "DPMSolverMultistepScheduler", EulerDiscreteScheduler):
        scheduler = scheduler_from_schedule(name, s, "v_prediction")
        assert scheduler.config.num_train_timesteps == 200 and scheduler.config.prediction_type == "v_prediction"
        torch.testing.assert_close(scheduler.alphas_cumprod.double(), s.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="unknown scheduler 'dpm'"):
        scheduler_from_schedule("dpm", s)
    with pytest.raises(ValueError, match="does not take"):
        scheduler_from_schedule("ddim", s, eta=0.5)
    with pytest.raises(ValueError, match="prediction_type"):
        scheduler_from_schedule("ddim", s, "noise")


def test_bad_sampling_inputs_raise_clear_errors(tiny_unet, tiny_cond_unet, schedule):
    other = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    with pytest.raises(ValueError, match="other betas"):
        sample_with_diffusers_scheduler(tiny_unet, schedule, other, (1, 1, 8, 8), num_inference_steps=5)
    with pytest.raises(ValueError, match="num_train_timesteps=1000"):
        sample_with_diffusers_scheduler(tiny_unet, schedule, DDIMScheduler(), (1, 1, 8, 8))
    with pytest.raises(ValueError, match="num_inference_steps must be an int"):
        sample_with_diffusers_scheduler(tiny_unet, schedule, "ddim", (1, 1, 8, 8), num_inference_steps=101)
    with pytest.raises(ValueError, match="needs labels"):
        sample_with_diffusers_scheduler(tiny_cond_unet, schedule, "euler", (2, 1, 8, 8), guidance_scale=3.0)
    with pytest.raises(ValueError, match="unconditional"):
        sample_with_diffusers_scheduler(tiny_unet, schedule, "ddim", (2, 1, 8, 8), y=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\]"):
        sample_with_diffusers_scheduler(tiny_cond_unet, schedule, "ddim", (2, 1, 8, 8), y=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"step does not take \['s_churn'\]"):
        sample_with_diffusers_scheduler(tiny_unet, schedule, "ddim", (1, 1, 8, 8), step_kwargs={"s_churn": 1.0})


# ----------------------------------------------------------------------------- diffusers' folder format

def _loaded(model, schedule) -> LoadedModel:
    config = load_config(ROOT / "configs" / "digits_cfg.yaml",
                         ["diffusion.num_train_timesteps=100", "diffusion.beta_schedule=cosine", "data.image_size=8"])
    data = {"source": "digits", "channels": 1, "image_size": 8, "num_classes": 3, "class_names": ["a", "b", "c"]}
    return LoadedModel(model, schedule, config, data, step=123)


def test_save_and_load_round_trip_gives_the_same_samples(tiny_cond_unet, tmp_path):
    schedule = NoiseSchedule("cosine", 100)
    folder = save_pretrained(_loaded(tiny_cond_unet, schedule), folder=tmp_path / "shared")
    assert {p.name for p in folder.iterdir()} == {"model_index.json", "unet", "scheduler", "diffusion_lib.json"}
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((folder / "model_index.json").read_text())["unet"] == ["diffusion_lib.interop", "DiffusersUNet"]

    loaded = load_pretrained(folder)
    assert torch.equal(loaded.schedule.betas, schedule.betas) and loaded.schedule.name == "cosine"
    assert loaded.step == 123 and loaded.data["class_names"] == ["a", "b", "c"]
    assert loaded.config.diffusion.beta_schedule == "cosine" and loaded.data["prediction_type"] == "epsilon"
    kwargs = dict(noise=_noise(3), y=torch.tensor([0, 1, 2]), guidance_scale=2.0, num_inference_steps=10)
    before = ddim_sample(tiny_cond_unet, schedule, **kwargs).images
    assert torch.equal(ddim_sample(loaded.model, loaded.schedule, **kwargs).images, before)

    # diffusers' own loaders read the folder too
    wrapper = DiffusersUNet.from_pretrained(folder, subfolder="unet", low_cpu_mem_usage=False)
    x, t, y = _noise(3), torch.tensor([3, 50, 99]), torch.tensor([0, 1, 2])
    torch.testing.assert_close(wrapper(x, t, y).sample, tiny_cond_unet(x, t, y))
    pipe = DDPMPipeline.from_pretrained(folder, low_cpu_mem_usage=False)
    assert isinstance(pipe.unet, DiffusersUNet) and pipe.unet.config.sample_size == 8
    torch.testing.assert_close(pipe.scheduler.alphas_cumprod.double(), schedule.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)
    images = pipeline_sample(pipe, num_inference_steps=3, batch_size=2, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 1, 8, 8) and images.min() >= -1 and images.max() <= 1


def test_save_pretrained_replaces_atomically_and_refuses_foreign_folders(tiny_cond_unet, tiny_unet, tmp_path, monkeypatch):
    schedule = NoiseSchedule("linear", 100)
    folder = save_pretrained(tiny_unet, schedule, tmp_path / "m", image_size=8)
    assert load_pretrained(folder / "unet").config is None  # a bare model folder loads too (no experiment config)
    save_pretrained(tiny_cond_unet, schedule, folder, image_size=8)  # replaces its own earlier output
    assert load_pretrained(folder).model.num_classes == 3

    def crash(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(DDPMPipeline, "save_pretrained", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_pretrained(tiny_unet, schedule, folder, image_size=8)
    assert load_pretrained(folder).model.num_classes == 3  # the old folder is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folder left behind
    monkeypatch.undo()

    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        save_pretrained(tiny_unet, schedule, foreign, image_size=8)
    with pytest.raises(ValueError, match="image_size"):
        save_pretrained(tiny_unet, schedule, tmp_path / "x")
    with pytest.raises(ValueError, match="schedule"):
        save_pretrained(tiny_unet, None, tmp_path / "x", image_size=8)


def test_metadata_is_a_diffusers_metadata_artifact_and_a_foreign_one_is_refused(tiny_unet, tmp_path):
    from diffusion_lib.artifacts import load_artifact
    from diffusion_lib.interop import METADATA_FILE, METADATA_KIND

    folder = save_pretrained(tiny_unet, NoiseSchedule("linear", 100), tmp_path / "m", image_size=8)
    meta = load_artifact(folder / METADATA_FILE, METADATA_KIND, required=("schedule", "prediction_type", "data"))
    assert meta["schedule"]["name"] == "linear" and meta["data"]["image_size"] == 8 and meta["step"] is None
    (folder / METADATA_FILE).write_text(json.dumps({"format": "diffusion_lib.diffusers", "format_version": 1}))
    with pytest.raises(ValueError, match="not a diffusion_lib diffusers_metadata file"):
        load_pretrained(folder)


def test_importing_the_package_does_not_import_diffusers(monkeypatch):
    import importlib
    import sys

    import diffusion_lib
    import diffusion_lib.interop as interop

    assert DiffusersUNet.__module__ == "diffusion_lib.interop" and "save_pretrained" in dir(interop)
    assert not hasattr(interop, "no_such_name")
    monkeypatch.setattr(diffusion_lib, "interop", interop)  # restored after the fresh import below
    for name in [m for m in sys.modules if m.startswith("diffusion_lib.interop")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "diffusers", None)  # any import of diffusers now fails
    fresh = importlib.import_module("diffusion_lib.interop")  # so this import must not need it
    assert fresh is not interop
    with pytest.raises(ImportError):
        fresh.SCHEDULERS  # noqa: B018 - first use loads the submodule, which imports diffusers


def _tiny_ddpm_pipeline() -> DDPMPipeline:
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    return DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50))


def test_load_pretrained_refuses_a_foreign_diffusers_model(tmp_path):
    _tiny_ddpm_pipeline().save_pretrained(tmp_path / "p")
    with pytest.raises(ValueError, match="UNet2DModel, not a diffusion_lib model"):
        load_pretrained(tmp_path / "p")
    with pytest.raises(FileNotFoundError):
        load_pretrained(tmp_path / "missing")


# ----------------------------------------------------------------------------- pretrained pipelines

def test_local_pipeline_loads_by_path_and_runs(tmp_path):
    original = _tiny_ddpm_pipeline()
    original.save_pretrained(tmp_path / "tiny")
    pipe = load_pretrained_pipeline(str(tmp_path / "tiny"), device="cpu")
    assert isinstance(pipe, DDPMPipeline)
    expected = pipeline_sample(original, num_inference_steps=2, batch_size=2, generator=torch.Generator().manual_seed(0))
    images = pipeline_sample(pipe, num_inference_steps=2, batch_size=2, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 8, 8) and images.dtype == torch.float32
    torch.testing.assert_close(images, expected)
    swapped = pipeline_sample(pipe, num_inference_steps=2, batch_size=2, scheduler="ddim",
                              generator=torch.Generator().manual_seed(0))
    assert isinstance(pipe.scheduler, DDIMScheduler) and not torch.equal(swapped, images)
    with pytest.raises(ValueError, match="takes no guidance_scale"):
        pipeline_sample(pipe, num_inference_steps=2, batch_size=1, guidance_scale=3.0)


def test_offline_hub_name_fails_fast_with_what_it_would_load(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.warns(UserWarning, match="google/ddpm-cifar10-32"):
        assert load_pretrained_pipeline("google/ddpm-cifar10-32", device="cpu", cache_dir=str(tmp_path)) is None
    with pytest.raises(PretrainedUnavailableError, match="would have downloaded https://huggingface.co/google/ddpm-cifar10-32"):
        load_pretrained_pipeline("google/ddpm-cifar10-32", device="cpu", offline_ok=False, cache_dir=str(tmp_path))
    assert time.perf_counter() - start < 5


def test_unreachable_hub_is_detected_within_the_timeout(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused at once
    start = time.perf_counter()
    with pytest.raises(PretrainedUnavailableError, match="unreachable"):
        load_pretrained_pipeline("google/ddpm-cifar10-32", device="cpu", offline_ok=False, timeout=2.0,
                                 cache_dir=str(tmp_path))
    assert time.perf_counter() - start < 3
    with pytest.raises(FileNotFoundError):
        load_pretrained_pipeline("./no/such/folder")
    with pytest.raises(ValueError, match="repository id"):
        load_pretrained_pipeline("not a repo id!")


# ----------------------------------------------------------------------------- notebook 07

def test_notebook_is_stored_without_outputs_and_has_parameters():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    params = "".join(tagged[0]["source"])
    for knob in ("PROFILE", "DATASET", "DEVICE", "SEED", "OUTPUT_DIR", "CHECKPOINT", "PIPELINE"):
        assert knob in params
    assert "Learning objectives" in "".join(nb["cells"][0]["source"])
    assert "Questions" in "".join(nb["cells"][-1]["source"])
    assert nb["metadata"]["kernelspec"] == {"name": "python3", "display_name": "Python 3", "language": "python"}
