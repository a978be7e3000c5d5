"""`python -m diffusion_lib evaluate`: diffusion and VAE checkpoints scored offline, JSON + table, clear errors."""

import json
import subprocess
import sys

import pytest
import torch
from torch_fidelity import feature_extractor_inceptionv3 as tf_inception

from diffusion_lib import metrics
from diffusion_lib.checkpoint import load_model
from diffusion_lib.cli import main

from test_training import TINY as TINY_UNET

TINY_VAE = ["model.base_channels=8", "model.latent_dim=8", "training.batch_size=32", "training.device=cpu",
            "data.image_size=8", "model.channel_mults=[1]", "sampling.samples_per_class=2"]
EVAL = ["--num-samples", "40", "--domain-steps", "30", "--no-progress"]


def train(out, config, overrides):
    args = ["train", "--config", config, "--output", str(out), "--no-progress"]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 0
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {"unet": train(root / "unet", "configs/digits_cfg.yaml", TINY_UNET + ["training.max_steps=3"]),
            "vae": train(root / "vae", "configs/vae_digits.yaml", TINY_VAE + ["training.max_steps=20"])}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("metrics_cache")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path, cache_dir):
    """No Inception weights on disk, any download fails the test, caches go to a temporary folder."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    monkeypatch.setenv("DIFFUSION_LIB_CACHE", str(cache_dir))

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted at scoring time")

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", no_download)


def evaluate(checkpoint, out, *extra):
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--out", str(out), *EVAL, *extra]) == 0
    return json.loads(out.read_text())


def test_conditional_diffusion_checkpoint_is_scored_with_the_domain_extractor(checkpoints, tmp_path, capsys):
    report = evaluate(checkpoints["unet"], tmp_path / "ddim.json", "--sampler", "ddim", "--num-inference-steps", "3",
                      "--guidance-scale", "2", "--eta", "0.5", "--seed", "1")
    table = capsys.readouterr().out
    assert report["model"] == "unet" and report["step"] == 3 and report["dataset"] == "digits"
    assert (report["sampler"], report["num_inference_steps"], report["guidance_scale"], report["eta"]) == \
        ("ddim", 3, 2.0, 0.5)
    assert report["num_generated"] == 40 and report["num_real"] == 1797
    assert report["extractor"].startswith("domain-classifier:digits:")
    assert report["fid"] > 0 and report["kid_subset_size"] == 40 and report["is_mean"] >= 1.0
    assert 0 < report["diversity"] <= 2 and 0 <= report["class_accuracy"] <= 1  # labels cycle through the classes
    assert report["extractor"] in table and "FID" in table and "class accuracy" in table and "ddim.json" in table
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp.json")]  # written atomically

    # same seed, same samples and scores (the domain extractor now comes from the cache); DDPM differs
    again = evaluate(checkpoints["unet"], tmp_path / "again.json", "--sampler", "ddim", "--num-inference-steps", "3",
                     "--guidance-scale", "2", "--eta", "0.5", "--seed", "1")
    assert again["fid"] == report["fid"] and again["extractor"] == report["extractor"]
    ddpm = evaluate(checkpoints["unet"], tmp_path / "ddpm.json", "--sampler", "ddpm", "--num-inference-steps", "4")
    assert (ddpm["sampler"], ddpm["num_inference_steps"], ddpm["eta"]) == ("ddpm", 4, None)
    assert ddpm["fid"] != report["fid"]


def test_vae_checkpoint_scores_its_prior_samples(checkpoints, tmp_path, capsys):
    report = evaluate(checkpoints["vae"], tmp_path / "vae.json", "--seed", "3")
    assert report["model"] == "vae" and report["class_accuracy"] is None and "sampler" not in report
    assert report["extractor"].startswith("domain-classifier:digits:") and report["fid"] > 0
    assert "prior samples" in capsys.readouterr().out
    # the scored images are the VAE's prior samples for that seed: recompute the diversity independently
    vae = load_model(checkpoints["vae"]).model
    samples = vae.sample(40, generator=torch.Generator().manual_seed(3))
    assert report["diversity"] == pytest.approx(metrics.diversity(samples), rel=1e-9)


def test_default_output_path_is_beside_the_checkpoint(checkpoints):
    assert main(["evaluate", "--checkpoint", str(checkpoints["vae"]), *EVAL]) == 0
    path = checkpoints["vae"].with_name("last.eval.prior-seed0-n40.json")  # one file per setting
    assert json.loads(path.read_text())["num_generated"] == 40


@pytest.mark.parametrize("model, extra, message", [
    ("vae", ["--guidance-scale", "3"], "--guidance-scale applies to diffusion checkpoints"),
    ("unet", ["--sampler", "ddpm", "--eta", "1"], "--eta applies to the DDIM sampler"),
    ("unet", ["--num-samples", "1"], "--num-samples must be >= 2"),
    ("unet", ["--out", "scores.txt"], "--out must end in .json"),
    ("vae", ["--extractor", "inception"], "Inception weights not found"),
    ("unet", ["--num-inference-steps", "1000"], "num_inference_steps must be an int in"),
])
def test_bad_inputs_exit_2_with_a_message_and_write_nothing(checkpoints, tmp_path, capsys, model, extra, message):
    out = tmp_path / "x.json"
    args = ["evaluate", "--checkpoint", str(checkpoints[model]), *EVAL, "--out", str(out)]
    assert main(args + extra) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_checkpoint(tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "x.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_help_lists_every_option():
    result = subprocess.run([sys.executable, "-m", "diffusion_lib", "evaluate", "--help"], capture_output=True,
                            text=True)
    assert result.returncode == 0
    for option in ("--checkpoint", "--num-samples", "--sampler", "--num-inference-steps", "--guidance-scale", "--eta",
                   "--seed", "--out", "--extractor", "--device"):
        assert option in result.stdout
