"""Sampler sweeps (notebook 07 as library calls) on a tiny untrained ConditionalUNet: rows, shared noise, scores."""

import pandas as pd
import pytest
import torch

from diffusion_lib import interop
from diffusion_lib.experiments import SamplerSetting, pipeline_sweep, sampler_sweep, seed_spread, settings_grid
from diffusion_lib.experiments.samplers import COLUMNS
from diffusion_lib.metrics import ClassifierExtractor
from diffusion_lib.models.classifier import Classifier
from diffusion_lib.sampling import ddim_sample, ddpm_sample

from conftest import BrightnessClassifier


@pytest.fixture
def noise():
    return torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(7))


def test_settings_grid_and_names():
    grid = settings_grid("ddim", steps=[2, 4], eta=[0.0, 1.0])
    assert [(s.steps, s.eta) for s in grid] == [(2, 0.0), (2, 1.0), (4, 0.0), (4, 1.0)]
    assert grid[1].name == "ddim 2 eta=1" and SamplerSetting("ddpm", 5, variance_type="fixed_large").name == \
        "ddpm 5 fixed_large"
    assert SamplerSetting("diffusers:euler", 10, guidance_scale=3.0, seed=2).name == "euler 10 w=3 seed=2"
    assert settings_grid("ddpm", steps=3) == [SamplerSetting("ddpm", 3)]
    with pytest.raises(ValueError, match="unknown setting fields"):
        settings_grid("ddim", stepz=[1])


def test_sweep_shares_noise_and_labels_and_scores_every_setting(tiny_cond_unet, schedule, noise):
    settings = [*settings_grid("ddim", steps=[2, 4], eta=0.0), SamplerSetting("ddpm", 3),
                SamplerSetting("ddim", 2, eta=0.0)]  # a repeated setting runs once
    sweep = sampler_sweep(tiny_cond_unet, schedule, settings, noise=noise, judge=BrightnessClassifier(),
                          reference=SamplerSetting("ddim", 4, eta=0.0), seed=3)
    table = sweep.table
    assert list(table.columns) == list(COLUMNS) and list(table["name"]) == ["ddim 2 eta=0", "ddim 4 eta=0", "ddpm 3"]
    assert sweep.labels.tolist() == [0, 1, 2, 0, 1, 2]  # cycling over the model's classes
    assert list(table["nfe"]) == [2, 4, 3] and (table["seconds"] > 0).all() and (table["seed"] == 3).all()
    assert table["class_accuracy"].between(0, 1).all() and table["diversity"].gt(0).all()
    assert table["fid"].isna().all() and table["extractor"].isna().all()  # no real images: no FID
    # every row starts from the same x_T: the deterministic rows equal plain sampler calls from that noise
    plain = ddim_sample(tiny_cond_unet, schedule, noise=noise, y=sweep.labels, num_inference_steps=2).images
    torch.testing.assert_close(sweep.samples["ddim 2 eta=0"], plain)
    ddpm = ddpm_sample(tiny_cond_unet, schedule, noise=noise, y=sweep.labels, num_inference_steps=3,
                       generator=torch.Generator().manual_seed(3)).images
    torch.testing.assert_close(sweep.samples["ddpm 3"], ddpm)
    # the reference is DDIM 4 from the same noise: that row is at distance 0, the others are not
    distance = table.set_index("name")["reference_distance"]
    assert distance["ddim 4 eta=0"] == 0.0 and distance["ddim 2 eta=0"] > 0 and distance["ddpm 3"] > 0
    assert table.set_index("name").loc["ddim 4 eta=0", "reference_max_abs"] == 0.0
    assert {k: v.shape for k, v in sweep.grid_rows().items()} == {k: (3, 1, 8, 8) for k in sweep.samples}


def test_seeds_guidance_and_spread(tiny_cond_unet, schedule):
    sweep = sampler_sweep(tiny_cond_unet, schedule, settings_grid("ddim", steps=2, seed=[0, 1, 2]),
                          image_shape=(1, 8, 8), num_samples=6, judge=BrightnessClassifier(), guidance_scale=3.0)
    assert (sweep.table["guidance_scale"] == 3.0).all() and list(sweep.table["seed"]) == [0, 1, 2]
    a, b = sweep.samples["ddim 2 seed=0"], sweep.samples["ddim 2 seed=1"]
    assert not torch.equal(a, b), "each seed draws its own x_T"
    spread = seed_spread(sweep.table)
    assert list(spread.index) == ["mean", "std"] and list(spread.columns) == ["class_accuracy", "diversity"]
    assert spread.loc["mean", "diversity"] == pytest.approx(sweep.table["diversity"].mean())
    guided = sampler_sweep(tiny_cond_unet, schedule, settings_grid("ddim", steps=2, guidance_scale=[0.0, 5.0]),
                           image_shape=(1, 8, 8), num_samples=6, seed=0)
    assert list(guided.table["guidance_scale"]) == [0.0, 5.0]
    assert not torch.equal(guided.samples["ddim 2 w=0"], guided.samples["ddim 2 w=5"])


def test_fid_and_kid_against_real_images(tiny_cond_unet, schedule, noise):
    torch.manual_seed(0)
    extractor = ClassifierExtractor(Classifier(1, 3, base_channels=8), "toy-extractor")
    real = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    sweep = sampler_sweep(tiny_cond_unet, schedule, [SamplerSetting("ddim", 2)], noise=noise, real=real,
                          evaluate_options=dict(extractor=extractor, cache_dir=False, kid_subsets=5))
    row = sweep.table.iloc[0]
    assert row["extractor"] == "toy-extractor" and row["fid"] > 0 and pd.notna(row["kid_mean"])
    assert pd.isna(row["class_accuracy"]), "no judge: no accuracy"


def test_diffusers_scheduler_rows_against_our_ddim(tiny_cond_unet, schedule, noise):
    sweep = sampler_sweep(tiny_cond_unet, schedule, [SamplerSetting("diffusers:ddim", 4)], noise=noise,
                          reference=SamplerSetting("ddim", 4), judge=BrightnessClassifier())
    row = sweep.table.iloc[0]
    assert row["sampler"] == "diffusers:ddim" and row["nfe"] == 4
    assert row["reference_max_abs"] < 1e-4  # diffusers' DDIMScheduler on our model is our DDIM


def test_bad_sweeps_raise(tiny_cond_unet, schedule, noise):
    with pytest.raises(ValueError, match="settings is empty"):
        sampler_sweep(tiny_cond_unet, schedule, [], noise=noise)
    with pytest.raises(ValueError, match="image_shape"):
        sampler_sweep(tiny_cond_unet, schedule, [SamplerSetting("ddim", 2)])
    with pytest.raises(ValueError, match="unknown sampler 'dpm'"):
        sampler_sweep(tiny_cond_unet, schedule, [SamplerSetting("dpm", 2)], noise=noise, warmup=False)
    with pytest.raises(ValueError, match="eta applies to DDIM only"):
        sampler_sweep(tiny_cond_unet, schedule, [SamplerSetting("ddpm", 2, eta=0.5)], noise=noise, warmup=False)
    with pytest.raises(ValueError, match="variance_type applies to DDPM only"):
        sampler_sweep(tiny_cond_unet, schedule, [SamplerSetting("ddim", 2, variance_type="fixed_large")], noise=noise,
                      warmup=False)
    with pytest.raises(ValueError, match="reference must have the samples' shape"):
        sampler_sweep(tiny_cond_unet, schedule, [SamplerSetting("ddim", 2)], noise=noise, reference=noise[:2],
                      warmup=False)


def test_pipeline_sweep_times_and_scores_each_scheduler(monkeypatch):
    calls = []

    def fake_pipeline_sample(pipe, *, scheduler, num_inference_steps, batch_size, guidance_scale, prompt, generator):
        calls.append((scheduler, num_inference_steps, guidance_scale))
        return torch.rand(batch_size, 1, 8, 8, generator=generator) * 2 - 1

    monkeypatch.setattr(interop, "pipeline_sample", fake_pipeline_sample)
    real = torch.rand(4, 3, 8, 8) * 2 - 1  # another channel count: diversity only, with a note
    sweep = pipeline_sweep(object(), ["ddim", "euler"], [2, 5], batch_size=4, real=real, device="cpu")
    assert calls == [("ddim", 2, None), ("ddim", 5, None), ("euler", 2, None), ("euler", 5, None)]
    assert list(sweep.table["name"]) == ["ddim 2", "ddim 5", "euler 2", "euler 5"]
    assert sweep.table["diversity"].gt(0).all() and sweep.table["fid"].isna().all()
    assert sweep.table["notes"].str.contains("no FID").all()
    # the same seed for every run: runs differ only by scheduler and steps
    assert torch.equal(sweep.samples["ddim 2"], sweep.samples["euler 5"])
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        pipeline_sweep(object(), ["ddim"], [2], batch_size=1)
