"""Experiment tracking: TensorBoard events read back, wandb offline runs, run comparison, resumable sweeps,
layer tables and reverse-process videos."""

import json
import sys

import pytest
import torch
from PIL import Image

from diffusion_lib.cli import main
from diffusion_lib.config import load_config
from diffusion_lib.data import load_dataset
from diffusion_lib.experiments import runs as runs_module
from diffusion_lib.experiments.runs import compare_runs, config_differences, evaluation_path, load_run, plot_runs
from diffusion_lib.experiments.sweep import parse_grid, run_name, run_sweep
from diffusion_lib.training import Trainer

TINY = ["model.base_channels=8", "model.channel_mults=[1]", "model.num_res_blocks=1", "model.attention_levels=[]",
        "model.num_heads=2", "model.norm_groups=4", "diffusion.num_train_timesteps=20", "training.batch_size=8",
        "training.max_steps=4", "training.log_every=2", "training.checkpoint_every=2", "training.warmup_steps=1",
        "training.device=cpu", "sampling.num_inference_steps=3", "sampling.samples_per_class=1", "data.image_size=8"]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", image_size=8)


def tiny_config(*extra):
    return load_config("configs/digits_cfg.yaml", TINY + list(extra))


def train(path, digits, *extra):
    Trainer(tiny_config(*extra), path, dataset=digits, progress=False).train()
    return path


def test_tensorboard_events_hold_scalars_images_and_hparams(tmp_path, digits):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    train(tmp_path, digits, "training.sample_every=2")
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for name in ("loss", "lr", "images_per_sec", "grad_norm", "ema_decay"):
        assert [e.step for e in events.Scalars(f"train/{name}")] == [2, 4], name
    assert "train/step" not in tags["scalars"]
    assert [e.step for e in events.Images("samples")] == [2, 4]
    assert all(e.width > 0 and e.height > 0 for e in events.Images("samples"))
    # the CSV and the events agree
    log = load_run(tmp_path).log
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(log["loss"].tolist(), rel=1e-4)
    # hparams: the resolved config and the final metrics, in this run's own event file
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["training.learning_rate"].number_value == pytest.approx(tiny_config().training.learning_rate)
    assert start.hparams["diffusion.beta_schedule"].string_value == "linear"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} >= {"final/final_loss", "final/best_loss"}
    assert events.Scalars("final/final_loss")[0].value == pytest.approx(log["loss"].iloc[-1], rel=1e-4)
    summary = json.loads((tmp_path / "run.json").read_text())["payload"]
    assert summary["finished"] and summary["step"] == 4 and summary["wall_seconds"] > 0


def test_csv_only_writes_no_event_file(tmp_path, digits):
    train(tmp_path, digits, "training.loggers=[csv]")
    assert not list(tmp_path.glob("events.out.tfevents.*")) and (tmp_path / "log.csv").is_file()


def test_unknown_logger_is_refused():
    with pytest.raises(ValueError, match="training.loggers must be a list of distinct names from"):
        tiny_config("training.loggers=[csv, mlflow]")


def test_wandb_offline_run_writes_its_run_folder(tmp_path, digits, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline by default, no network needed
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(tmp_path, digits, "training.loggers=[csv, wandb]", "training.wandb_group=g1")
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), list((tmp_path / "wandb").iterdir())
    run_id = (tmp_path / "wandb" / "run_id").read_text().strip()
    assert runs[0].name.endswith(run_id)


def test_missing_wandb_names_the_extra(tmp_path, digits, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ImportError, match=r"diffusion_lib\[tracking\]"):
        train(tmp_path, digits, "training.loggers=[csv, wandb]")


def test_comparison_names_exactly_the_differing_keys(tmp_path, digits):
    a = train(tmp_path / "a", digits, "training.sample_every=4")
    b = train(tmp_path / "b", digits, "training.learning_rate=3e-4", "diffusion.p_uncond=0.2", "training.sample_every=4")
    assert config_differences([load_run(a), load_run(b)]) == ["diffusion.p_uncond", "training.learning_rate"]
    (a / "checkpoints" / "last.eval.ddim-3steps-g2-seed0-n10.json").write_text(json.dumps({"fid": 12.5, "diversity": 0.3}))
    (a / "checkpoints" / "last.eval.ddpm-20steps-g2-seed0-n10.json").write_text(json.dumps({"fid": 11.0}))
    table = compare_runs([a, b])
    assert list(table.columns[:3]) == ["run", "diffusion.p_uncond", "training.learning_rate"]
    assert table["run"].tolist() == ["a", "a", "b"]  # one row per run and evaluation setting
    assert table["evaluation"].tolist()[:2] == ["ddim-3steps-g2-seed0-n10", "ddpm-20steps-g2-seed0-n10"]
    assert table["fid"].tolist()[:2] == [12.5, 11.0]
    assert (table["steps"] == 4).all() and (table["wall_seconds"] > 0).all() and (table["images_per_sec"] > 0).all()
    assert (table["best_loss"] <= table["final_loss"]).all()
    fig = plot_runs([a, b])
    assert len(fig.axes) == 3 and len(fig.axes[0].lines) == 2  # loss axis + two grids
    assert main(["runs", str(a), str(b), "--figure", str(tmp_path / "cmp.png")]) == 0
    assert (tmp_path / "cmp.png").is_file()


def test_evaluation_file_name_per_setting(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    ddim = dict(sampler="ddim", num_inference_steps=50, guidance_scale=3.0, eta=0.0, seed=1, num_generated=1000)
    assert evaluation_path(ckpt, ddim).name == "last.eval.ddim-50steps-g3-seed1-n1000.json"
    assert evaluation_path(ckpt, {**ddim, "guidance_scale": None, "eta": 0.5}).name == \
        "last.eval.ddim-50steps-eta0.5-seed1-n1000.json"
    assert evaluation_path(ckpt, dict(seed=0, num_generated=40)).name == "last.eval.prior-seed0-n40.json"


def test_grid_parsing_and_names():
    grid = parse_grid(["training.learning_rate=1e-3,3e-4", "model.channel_mults=[1,2],[1]"])
    assert grid == {"training.learning_rate": [1e-3, 3e-4], "model.channel_mults": [[1, 2], [1]]}
    assert run_name({"training.learning_rate": 3e-4, "diffusion.p_uncond": 0.1}) == "learning_rate=0.0003_p_uncond=0.1"
    with pytest.raises(ValueError, match="must look like"):
        parse_grid(["training.learning_rate"])


def test_interrupted_sweep_trains_only_the_remaining_runs(tmp_path, digits, monkeypatch):
    config = tmp_path / "tiny.yaml"
    config.write_text("name: tiny\n")
    grid = ["training.learning_rate=1e-3,3e-4", "diffusion.p_uncond=0.1,0.2"]
    trained = []
    original = Trainer.train

    def train_twice_then_stop(self, *args, **kwargs):
        if len(trained) == 2:
            raise KeyboardInterrupt("sweep interrupted")
        trained.append(self.output_dir.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train", train_twice_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(config, grid, tmp_path / "sweep", overrides=TINY, progress=False, dataset=digits, log=lambda _: None)
    assert len(trained) == 2
    monkeypatch.setattr(Trainer, "train", lambda self, *a, **k: (trained.append(self.output_dir.name),
                                                                 original(self, *a, **k))[1])
    table = run_sweep(config, grid, tmp_path / "sweep", overrides=TINY, progress=False, dataset=digits,
                      log=lambda _: None)
    assert len(trained) == 4 and len(set(trained)) == 4  # the first two were skipped
    assert sorted(table.columns[1:3]) == ["diffusion.p_uncond", "training.learning_rate"] and len(table) == 4
    assert json.loads((tmp_path / "sweep" / "sweep.json").read_text())["runs"] == [
        "learning_rate=0.001_p_uncond=0.1", "learning_rate=0.001_p_uncond=0.2",
        "learning_rate=0.0003_p_uncond=0.1", "learning_rate=0.0003_p_uncond=0.2"]
    groups = {load_run(p).config["training.wandb_group"] for p in (tmp_path / "sweep").iterdir() if p.is_dir()}
    assert groups == {"sweep"}  # one wandb group for the whole sweep


def test_a_sweep_skips_a_run_that_max_epochs_finished(tmp_path, digits):
    config = tmp_path / "tiny.yaml"
    config.write_text("name: tiny\n")
    small = digits.subset(torch.arange(24))  # batch 8: 3 steps an epoch, so max_epochs=1 ends before max_steps=4
    lines = []
    for _ in range(2):
        run_sweep(config, ["training.learning_rate=1e-3"], tmp_path / "sweep", overrides=[*TINY, "training.max_epochs=1"],
                  progress=False, dataset=small, log=lines.append)
    assert lines == ["[1/1] learning_rate=0.001: training", "[1/1] learning_rate=0.001: finished, skipped"]
    summary = load_run(tmp_path / "sweep" / "learning_rate=0.001").summary
    assert summary["finished"] is True and summary["step"] == summary["max_steps"] == 3


def test_summary_command_prints_layer_tables(capsys):
    pytest.importorskip("torchinfo")
    assert main(["summary", "--config", "configs/digits_cfg.yaml", "--set", "data.image_size=8", "--classifier",
                 "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert "conditional UNet" in out and "noise-conditioned classifier" in out
    assert "Output Shape" in out and "Param #" in out and "Mult-Adds" in out and "[1, 1, 8, 8]" in out


def test_layer_table_of_each_network():
    from diffusion_lib.models import VAE, Classifier, ConditionalUNet, UNet
    from diffusion_lib.summary import layer_table

    small = dict(in_channels=1, base_channels=8, channel_mults=(1,), num_res_blocks=1, attention_levels=(),
                 norm_groups=4)
    for model in (UNet(**small), ConditionalUNet(num_classes=3, **small), VAE(1, image_size=8, latent_dim=4,
                  base_channels=8, channel_mults=(1,)), Classifier(1, 3, base_channels=8, channel_mults=(1,))):
        stats = layer_table(model, image_size=8, depth=1)
        assert stats.total_params == sum(p.numel() for p in model.parameters()) and stats.total_mult_adds > 0


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_sample_trajectory_video(tmp_path, digits, suffix):
    run = train(tmp_path / "run", digits)
    video = tmp_path / f"reverse{suffix}"
    assert main(["sample", "--checkpoint", str(run / "checkpoints" / "last.ckpt"), "--num-samples", "6",
                 "--out", str(tmp_path / "grid.png"), "--num-inference-steps", "4", "--trajectory", str(video),
                 "--trajectory-samples", "4", "--no-progress", "--device", "cpu"]) == 0
    assert video.stat().st_size > 0
    if suffix == ".gif":
        with Image.open(video) as gif:
            assert gif.n_frames == 4  # one frame per sampler step
    else:
        assert video.read_bytes()[4:8] == b"ftyp"  # an MP4 container


def test_trajectory_video_rejects_other_suffixes(tmp_path):
    from diffusion_lib.animation import save_trajectory_video
    from diffusion_lib.sampling import Trajectory

    traj = Trajectory([0], [5], torch.zeros(1, 2, 1, 4, 4), torch.zeros(1, 2, 1, 4, 4))
    with pytest.raises(ValueError, match=".gif or .mp4"):
        save_trajectory_video(traj, tmp_path / "x.avi")


def test_tensorboard_is_published_on_loopback_only_and_proxied_in_lab():
    import yaml

    compose = yaml.safe_load(open("docker-compose.yml"))
    tensorboard = compose["services"]["tensorboard"]
    assert tensorboard["profiles"] == ["tensorboard"]  # only when asked for
    assert tensorboard["ports"] == ["127.0.0.1:${TENSORBOARD_PORT:-6006}:6006"]
    assert all(v.endswith(":ro") for v in tensorboard["volumes"])
    config = open("docker/jupyter_common_config.py").read()  # loaded by the standalone and the hub server
    assert 'c.ServerProxy.servers = {\n    "tensorboard"' in config
