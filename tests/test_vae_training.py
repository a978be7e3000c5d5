"""The VAE baseline through the Trainer: `train --config configs/vae_digits.yaml`, loss terms in log.csv,
prior-sample grids, the shared checkpoint format and exact resume."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_lib.checkpoint import load_model
from diffusion_lib.cli import main
from diffusion_lib.config import load_config
from diffusion_lib.data import load_dataset
from diffusion_lib.models import VAE
from diffusion_lib.viz import grid_image
from diffusion_lib.training import Trainer

CONFIG = "configs/vae_digits.yaml"
TINY = ["model.base_channels=8", "model.latent_dim=8", "training.batch_size=32", "training.warmup_steps=2",
        "training.log_every=2", "training.checkpoint_every=4", "training.device=cpu", "sampling.samples_per_class=4"]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", image_size=16)


def tiny_config(*extra):
    return load_config(CONFIG, TINY + list(extra))


def read_log(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_the_config_builds_a_vae_for_the_digits():
    config = load_config(CONFIG)
    assert config.model.kind == "vae" and config.data.source == "digits" and config.training.vae_beta == 1.0
    trainer = Trainer(config, "unused", dataset=load_dataset("digits", image_size=config.data.image_size),
                      progress=False)
    assert isinstance(trainer.model, VAE) and trainer.schedule is None
    assert trainer.model.config["latent_dim"] == config.model.latent_dim and trainer.model.in_channels == 1


def test_cli_trains_the_vae_logs_its_terms_and_grids_prior_samples(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--config", CONFIG, "--output", str(out), "--no-progress"]
    for item in ["model.base_channels=8", "model.latent_dim=8", "training.batch_size=32", "training.warmup_steps=2",
                 "training.device=cpu", "training.max_steps=80", "training.log_every=10",
                 "training.learning_rate=0.003", "training.vae_beta=0.5"]:
        args += ["--set", item]
    assert main(args) == 0
    rows = read_log(out / "log.csv")
    assert list(rows[0]) == ["step", "loss", "recon", "kl", "lr", "images_per_sec"]
    assert [int(r["step"]) for r in rows] == list(range(10, 81, 10))
    for r in rows:
        loss, recon, kl = float(r["loss"]), float(r["recon"]), float(r["kl"])
        assert recon >= 0 and kl >= 0
        assert loss == pytest.approx(recon + 0.5 * kl, rel=1e-4)  # the beta-weighted ELBO, logged term by term
    first, last = float(rows[0]["loss"]), sum(float(r["loss"]) for r in rows[-3:]) / 3
    assert last < 0.7 * first, [r["loss"] for r in rows]

    # the final grid holds decodes of prior draws of the EMA model: 10 x 10 images of 16 px with 1 px padding
    loaded = load_model(out / "checkpoints" / "last.ckpt")
    assert loaded.schedule is None and isinstance(loaded.model, VAE) and loaded.step == 80
    assert loaded.config.model.kind == "vae" and loaded.data["source"] == "digits"
    grid = np.asarray(Image.open(out / "samples" / "final.png"))
    assert grid.shape == (10 * 17 + 1, 10 * 17 + 1)
    expected = grid_image(loaded.model.sample(100, generator=torch.Generator().manual_seed(0)), nrow=10)[..., 0]
    assert np.abs(grid.astype(int) - expected.astype(int)).max() <= 1


def test_resumed_vae_run_equals_an_uninterrupted_one(tmp_path, digits):
    straight = Trainer(tiny_config("training.max_steps=8"), tmp_path / "a", dataset=digits, progress=False)
    straight.train()
    first = Trainer(tiny_config("training.max_steps=8"), tmp_path / "b", dataset=digits, progress=False)
    first.train(max_steps=5)
    torch.manual_seed(12345)  # a new process starts with other global RNG state
    resumed = Trainer(tiny_config("training.max_steps=8"), tmp_path / "b", dataset=digits, resume=True, progress=False)
    assert resumed.step == 5
    resumed.train()
    # the reparameterisation noise, the data order and the optimiser state are all restored
    assert torch.equal(params(resumed.model), params(straight.model))
    assert torch.equal(params(resumed.ema.model), params(straight.ema.model))
    terms = {name: {r["step"]: (r["loss"], r["recon"], r["kl"]) for r in read_log(tmp_path / name / "log.csv")}
             for name in "ab"}
    assert list(terms["a"]) == ["2", "4", "6", "8"] and list(terms["b"]) == ["2", "4", "5", "6", "8"]  # 5: the stop
    assert all(terms["b"][step] == row for step, row in terms["a"].items())


def test_resume_refuses_another_vae_shape(tmp_path, digits):
    Trainer(tiny_config("training.max_steps=1"), tmp_path, dataset=digits, progress=False).train()
    with pytest.raises(ValueError, match="different model"):
        Trainer(tiny_config("model.latent_dim=4"), tmp_path, dataset=digits, resume=True, progress=False)
