"""The command line: train -> sample to PNG and NPZ, --help, and clear errors."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from diffusion_lib.cli import build_parser, main

from test_training import TINY


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    args = ["train", "--config", "configs/digits_cfg.yaml", "--output", str(out), "--no-progress",
            "--set", "training.max_steps=3"]
    for item in TINY:
        args += ["--set", item]
    assert main(args) == 0
    assert (out / "samples" / "final.png").exists() and (out / "config.yaml").exists()
    return out / "checkpoints" / "last.ckpt"


def test_sample_npz_has_uint8_images_and_cycling_labels(checkpoint, tmp_path):
    out = tmp_path / "s.npz"
    assert main(["sample", "--checkpoint", str(checkpoint), "--num-samples", "23", "--sampler", "ddim",
                 "--num-inference-steps", "3", "--guidance-scale", "3", "--seed", "1", "--out", str(out),
                 "--batch-size", "10", "--no-progress"]) == 0
    data = np.load(out)
    assert data["images"].dtype == np.uint8 and data["images"].shape == (23, 8, 8, 1)
    assert data["labels"].dtype == np.int64 and data["labels"].tolist() == [i % 10 for i in range(23)]


def test_sample_png_one_row_per_class_and_seeded(checkpoint, tmp_path):
    paths = [tmp_path / f"{name}.png" for name in "abc"]
    for path, seed in zip(paths, [0, 0, 1]):
        assert main(["sample", "--checkpoint", str(checkpoint), "--num-samples", "20", "--sampler", "ddpm",
                     "--num-inference-steps", "4", "--labels", "1", "2", "--seed", str(seed), "--out", str(path),
                     "--no-progress"]) == 0
    pixels = [np.asarray(Image.open(p)) for p in paths]
    assert pixels[0].shape == (2 * 9 + 1, 10 * 9 + 1)  # 2 rows (classes) x 10 images of 8 px + 1 px padding
    assert np.array_equal(pixels[0], pixels[1]) and not np.array_equal(pixels[0], pixels[2])


@pytest.mark.parametrize("extra, message", [
    (["--sampler", "ddim", "--labels", "12"], "labels must be in"),
    (["--out", "x.jpg"], "--out must end in .png"),
    (["--num-inference-steps", "1000"], "num_inference_steps must be an int in"),
])
def test_sample_bad_inputs_exit_2_with_a_message(checkpoint, tmp_path, capsys, extra, message):
    args = ["sample", "--checkpoint", str(checkpoint), "--num-samples", "2", "--out", str(tmp_path / "x.png"),
            "--no-progress"]
    assert main(args + extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_train_refuses_to_overwrite_without_resume(checkpoint, capsys):
    assert main(["train", "--config", "configs/digits_cfg.yaml", "--output", str(checkpoint.parent.parent)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_missing_checkpoint_and_bad_config(tmp_path, capsys):
    assert main(["sample", "--checkpoint", str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "a.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--config", "configs/digits_cfg.yaml", "--set", "training.max_step=1",
                 "--output", str(tmp_path / "o")]) == 2
    assert "training.max_step" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_every_command_documents_every_option():
    parser = build_parser()
    for action in parser._subparsers._group_actions[0].choices.values():
        for option in action._actions:
            if option.dest != "help":
                assert option.help, f"{action.prog} {option.option_strings} has no help text"


def test_module_help_runs():
    result = subprocess.run([sys.executable, "-m", "diffusion_lib", "sample", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--guidance-scale" in result.stdout
