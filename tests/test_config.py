"""YAML config loading, validation and dotted overrides."""

from pathlib import Path

import pytest

from diffusion_lib.config import ExperimentConfig, load_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    assert isinstance(load_config(path), ExperimentConfig)


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ntraining:\n  max_steps: 10\n")
    config = load_config(path, ["training.max_steps=200", "model.channel_mults=[1, 2]", "diffusion.beta_schedule=cosine",
                                "training.learning_rate=1e-3"])
    assert config.training.max_steps == 200 and config.model.channel_mults == [1, 2]
    assert config.diffusion.beta_schedule == "cosine" and config.training.learning_rate == pytest.approx(1e-3)
    assert config.training.batch_size == ExperimentConfig().training.batch_size


@pytest.mark.parametrize("text, message", [
    ("training:\n  max_step: 10\n", r"unknown config key\(s\) \['training.max_step'\]"),
    ("bogus: 1\n", r"unknown config key\(s\) \['bogus'\]"),
    ("training:\n  max_steps: ten\n", "training.max_steps must be an integer"),
    ("training:\n  max_steps: 0\n", "training.max_steps must be >= 1"),
    ("diffusion:\n  beta_schedule: wiggly\n", "diffusion.beta_schedule 'wiggly' is unknown"),
    ("diffusion:\n  prediction_type: noise\n", "diffusion.prediction_type must be one of"),
    ("sampling:\n  sampler: euler\n", "sampling.sampler must be one of"),
    ("model:\n  conditional: maybe\n", "model.conditional must be true or false"),
    ("model: [1, 2]\n", "config section model must be a mapping"),
    ("training: {max_steps: [\n", "not valid YAML"),
    ("training:\n  vae_beta: -1\n", "training.vae_beta must be >= 0"),
])
def test_bad_configs_name_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(path)


def test_bad_override_syntax():
    with pytest.raises(ValueError, match="section.key=value"):
        load_config(None, ["training.max_steps"])
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['training.nope'\]"):
        load_config(None, ["training.nope=1"])


@pytest.mark.parametrize("text, message", [
    ("sampling:\n  timestep_spacing: middle\n", "sampling.timestep_spacing must be one of"),
    ("sampling:\n  variance_type: learned\n", "sampling.variance_type must be one of"),
    ("sampling:\n  eta: 2\n", r"sampling.eta must be in \[0, 1\]"),
    ("sampling:\n  num_inference_steps: null\n", "must be set for the ddim sampler"),
])
def test_bad_sampling_settings_name_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(path)


def test_sampler_kwargs_follow_the_sampler_and_the_model():
    from diffusion_lib.config import SamplingConfig

    ddim = SamplingConfig(sampler="ddim", num_inference_steps=20, guidance_scale=2.5, eta=0.3)
    assert ddim.sampler_kwargs() == dict(sampler="ddim", num_inference_steps=20, guidance_scale=2.5,
                                         timestep_spacing="leading", clip_sample=True, eta=0.3)
    assert ddim.sampler_kwargs(conditional=False)["guidance_scale"] == 1.0  # no labels, no guidance
    ddpm = ddim.override(sampler="ddpm", variance_type="fixed_large", eta=None)
    assert ddpm.sampler_kwargs() == dict(sampler="ddpm", num_inference_steps=20, guidance_scale=2.5,
                                         timestep_spacing="leading", clip_sample=True, variance_type="fixed_large")
    assert ddpm.eta == 0.3  # None keeps the current value
    assert SamplingConfig(sampler="ddpm", num_inference_steps=None).sampler_kwargs()["num_inference_steps"] is None
    with pytest.raises(ValueError, match=r"unknown sampling setting\(s\) \['steps'\]"):
        ddim.override(steps=3)
    with pytest.raises(ValueError, match="sampling.guidance_scale must be >= 0"):
        ddim.override(guidance_scale=-1.0)


def test_sampler_kwargs_run_the_sampler(tiny_unet_model):
    import torch

    from diffusion_lib import NoiseSchedule, sample
    from diffusion_lib.config import SamplingConfig

    schedule = NoiseSchedule("linear", 20)
    for settings in (SamplingConfig(num_inference_steps=4, eta=0.5),
                     SamplingConfig(sampler="ddpm", num_inference_steps=None, timestep_spacing="trailing")):
        out = sample(tiny_unet_model, schedule, shape=(2, 1, 8, 8), generator=torch.Generator().manual_seed(0),
                     **settings.sampler_kwargs(conditional=False))
        assert out.images.shape == (2, 1, 8, 8)


PART3 = ["stanford_cars_uncond", "stanford_cars_cfg", "celeba_uncond", "flowers102_uncond"]


@pytest.mark.parametrize("name", PART3)
def test_part3_configs_validate_build_and_need_their_own_data(name, tmp_path):
    """Each real-data config loads, counts in epochs, builds a network that runs at 64 px, and without
    its files stops with the manual layout (never another dataset). Nothing is trained or downloaded."""
    import torch

    from diffusion_lib.data import DatasetUnavailableError, load_dataset
    from diffusion_lib.training import build_network, total_steps

    config = load_config(Path(__file__).parent.parent / "configs" / f"{name}.yaml")
    assert config.name == name and config.data.image_size == 64 and config.training.max_epochs >= 1
    assert total_steps(config.training, 8144) < config.training.max_steps  # epochs end the run, not the cap
    conditional = name.endswith("_cfg")
    assert config.model.conditional == conditional and (config.diffusion.p_uncond > 0) == conditional
    torch.manual_seed(0)
    model = build_network(config, channels=3, image_size=64, num_classes=196 if conditional else 0)
    y = torch.tensor([195]) if conditional else None
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64), torch.tensor([999]), y).shape == (1, 3, 64, 64)
    options = {**config.data.options, "root": tmp_path, "download": False}
    with pytest.raises(DatasetUnavailableError, match=r"(?s)not found or incomplete.*Expected layout|Known sources"):
        load_dataset(config.data.source, image_size=config.data.image_size, **options)
    assert list(tmp_path.iterdir()) == []


def test_missing_stanford_cars_stops_training_with_the_manual_layout(tmp_path, capsys):
    from diffusion_lib.cli import main

    config = Path(__file__).parent.parent / "configs" / "stanford_cars_cfg.yaml"
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--set", f"data.options.root={tmp_path / 'data'}",
                 "--output", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "error: stanford_cars: not found or incomplete" in err and "cars_train" in err and "Known mirrors" in err
    assert not out.exists() and not (tmp_path / "data").exists()


def test_max_epochs_is_validated_and_optional():
    assert load_config(None).training.max_epochs is None
    assert load_config(None, ["training.max_epochs=3"]).training.max_epochs == 3
    with pytest.raises(ValueError, match="training.max_epochs must be >= 1"):
        load_config(None, ["training.max_epochs=0"])
