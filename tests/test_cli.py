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


def test_sample_with_the_progress_bar_gives_the_same_images(checkpoint, tmp_path, monkeypatch, capsys):
    # the bar moves from a forward hook; tqdm's update returns True whenever it redraws (a slow step), and a hook's
    # non-None return would replace the network's output: make every update redraw, as on a slow machine
    from tqdm.auto import tqdm

    real_update = tqdm.update
    monkeypatch.setattr(tqdm, "update", lambda self, n=1: real_update(self, n) or True)
    common = ["sample", "--checkpoint", str(checkpoint), "--num-samples", "12", "--sampler", "ddim",
              "--num-inference-steps", "3", "--guidance-scale", "3", "--batch-size", "5"]
    assert main(common + ["--out", str(tmp_path / "bar.npz")]) == 0
    assert "sampling 12 images" in capsys.readouterr().err
    assert main(common + ["--out", str(tmp_path / "quiet.npz"), "--no-progress"]) == 0
    assert np.array_equal(np.load(tmp_path / "bar.npz")["images"], np.load(tmp_path / "quiet.npz")["images"])


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


HEAVY = ("torch", "torchvision", "matplotlib", "pandas")


def _imported_heavy(args: list[str]) -> list[str]:
    """Run ``python -X importtime ARGS``; return the heavy modules it imported (importtime lines on stderr)."""
    result = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    names = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert names, "no -X importtime output"
    return sorted({name for name in names if name.split(".")[0] in HEAVY})


def _help_commands() -> list[list[str]]:
    """Every command and sub-command of the parser, as argv prefixes."""
    commands = [[]]
    for name, parser in build_parser()._subparsers._group_actions[0].choices.items():
        commands.append([name])
        for action in parser._actions:
            if isinstance(action, type(build_parser()._subparsers._group_actions[0])):
                commands += [[name, sub] for sub in action.choices]
    return commands


def test_help_of_every_command_does_not_import_torch():
    commands = _help_commands()
    assert ["notebooks", "check"] in commands and ["evaluate"] in commands
    for command in commands:
        assert _imported_heavy(["-m", "diffusion_lib", *command, "--help"]) == [], command


def test_import_is_lazy_and_public_names_still_resolve():
    assert _imported_heavy(["-c", "import diffusion_lib; print(diffusion_lib.__version__)"]) == []
    code = ("import sys, diffusion_lib; assert 'torch' not in sys.modules; "
            "assert diffusion_lib.UNet(base_channels=8, channel_mults=(1,), attention_levels=()) is not None; "
            "assert 'torch' in sys.modules and 'UNet' in dir(diffusion_lib); "
            "from diffusion_lib import Trainer, SamplingConfig, load_or_train, viz")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_package_namespace_lists_every_public_name():
    import diffusion_lib

    for name in diffusion_lib.__all__:
        assert getattr(diffusion_lib, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        diffusion_lib.nope  # noqa: B018


def test_sample_ddpm_runs_all_steps_unless_told(checkpoint, tmp_path, capsys):
    out = tmp_path / "d.npz"
    assert main(["sample", "--checkpoint", str(checkpoint), "--num-samples", "2", "--sampler", "ddpm", "--out",
                 str(out), "--no-progress", "--variance-type", "fixed_large"]) == 0
    assert "ddpm, steps=100" in capsys.readouterr().out  # T = 100 in the tiny config
    assert main(["sample", "--checkpoint", str(checkpoint), "--num-samples", "2", "--eta", "1.5", "--out",
                 str(out), "--no-progress"]) == 2
    assert "sampling.eta must be in [0, 1]" in capsys.readouterr().err


def test_a_missing_dataset_is_a_one_line_error(monkeypatch, capsys):
    from diffusion_lib import cli
    from diffusion_lib.data import DatasetUnavailableError

    def train(args):
        raise DatasetUnavailableError("flowers102 is not in datasets/; download it with ...")

    monkeypatch.setattr(cli, "_train", train)
    assert main(["train", "--config", "configs/digits_cfg.yaml"]) == 2
    assert "error: flowers102 is not in datasets/" in capsys.readouterr().err


def test_sample_checks_its_output_before_sampling(checkpoint, tmp_path, monkeypatch, capsys):
    import diffusion_lib.sampling

    def must_not_sample(*args, **kwargs):
        raise AssertionError("sampled before checking --out")

    monkeypatch.setattr(diffusion_lib.sampling, "sample", must_not_sample)
    (tmp_path / "a_file").write_text("x")
    for out in ("/sys/samples.png", str(tmp_path / "a_file" / "s.npz"), str(tmp_path) + "/folder.png"):
        if out.endswith("folder.png"):
            (tmp_path / "folder.png").mkdir()
        assert main(["sample", "--checkpoint", str(checkpoint), "--num-samples", "2", "--out", out, "--no-progress"]) == 2
        assert capsys.readouterr().err.startswith(f"error: cannot write {out}: ")


def test_a_directory_given_as_checkpoint_is_reported_as_a_folder(checkpoint, tmp_path, capsys):
    assert main(["sample", "--checkpoint", str(checkpoint.parent), "--out", str(tmp_path / "a.png")]) == 2
    assert "is a folder, not a file" in capsys.readouterr().err
