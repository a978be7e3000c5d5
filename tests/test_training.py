"""Trainer: loss falls on real digits, checkpoints round-trip, resume equals an uninterrupted run, bad checkpoints fail clearly."""

import csv

import pytest
import torch

from diffusion_lib.checkpoint import load_checkpoint, load_model, save_checkpoint
from diffusion_lib.config import load_config
from diffusion_lib.data import load_dataset
from diffusion_lib.training import Trainer

TINY = ["model.base_channels=8", "model.channel_mults=[1, 2]", "model.num_res_blocks=1", "model.attention_levels=[]",
        "model.num_heads=2", "model.norm_groups=4", "diffusion.num_train_timesteps=100", "training.batch_size=16",
        "training.log_every=2", "training.checkpoint_every=4", "training.warmup_steps=2", "training.device=cpu",
        "sampling.num_inference_steps=5", "sampling.samples_per_class=2", "model.dropout=0.1", "data.image_size=8"]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", image_size=8)


def tiny_config(*extra):
    return load_config("configs/digits_cfg.yaml", TINY + list(extra))


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_resumed_run_equals_uninterrupted_run(tmp_path, digits):
    straight = Trainer(tiny_config("training.max_steps=8"), tmp_path / "a", dataset=digits, progress=False)
    straight.train()
    first = Trainer(tiny_config("training.max_steps=8"), tmp_path / "b", dataset=digits, progress=False)
    first.train(max_steps=5)  # "interrupted" after 5 steps (checkpoint written at the end)
    torch.manual_seed(12345)  # a resumed process starts with other global RNG state
    resumed = Trainer(tiny_config("training.max_steps=8"), tmp_path / "b", dataset=digits, resume=True, progress=False)
    assert resumed.step == 5
    resumed.train()
    assert resumed.step == straight.step == 8
    assert torch.equal(params(resumed.model), params(straight.model))  # dropout + noise + data order all restored
    assert torch.equal(params(resumed.ema.model), params(straight.ema.model))
    steps = [int(r["step"]) for r in csv.DictReader((tmp_path / "b" / "log.csv").open())]
    assert steps == sorted(set(steps)) and steps[-1] == 8


def test_checkpoint_round_trip_rebuilds_the_ema_model(tmp_path, digits):
    trainer = Trainer(tiny_config("training.max_steps=2"), tmp_path, dataset=digits, progress=False)
    path = trainer.train()
    loaded = load_model(path)
    assert loaded.step == 2 and loaded.data["num_classes"] == 10 and loaded.data["class_names"][3] == "3"
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3, 50]), torch.tensor([1, 10])
    torch.testing.assert_close(loaded.model(x, t, y), trainer.ema.model(x, t, y))
    torch.testing.assert_close(loaded.schedule.alphas_cumprod, trainer.schedule.alphas_cumprod)


def test_loss_falls_on_real_digits(tmp_path, digits):
    trainer = Trainer(tiny_config("training.max_steps=120", "training.learning_rate=0.002", "training.log_every=10",
                                  "model.base_channels=16", "model.dropout=0.0"),
                      tmp_path, dataset=digits, progress=False)
    trainer.train()
    losses = [float(r["loss"]) for r in csv.DictReader((tmp_path / "log.csv").open())]
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:2]) / 2, losses


def test_corrupt_foreign_and_missing_checkpoints(tmp_path):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="corrupt or not a torch file"):
        load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(ValueError, match="not a diffusion_lib checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_truncated_checkpoint_is_rejected_and_atomic_write_keeps_the_old_one(tmp_path, digits):
    trainer = Trainer(tiny_config("training.max_steps=1"), tmp_path, dataset=digits, progress=False)
    path = trainer.train()
    data = path.read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(truncated)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({**trainer.state_dict(), "extra": Unpicklable()}, path)
    assert path.read_bytes() == data  # the old checkpoint is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary left behind


def test_resume_with_another_model_is_refused(tmp_path, digits):
    Trainer(tiny_config("training.max_steps=1"), tmp_path, dataset=digits, progress=False).train()
    with pytest.raises(ValueError, match="different model"):
        Trainer(tiny_config("model.base_channels=16"), tmp_path, dataset=digits, resume=True, progress=False)


def test_conditional_model_on_unlabeled_data_is_refused(tmp_path, digits):
    unlabeled = type(digits)(digits.pixels)
    with pytest.raises(ValueError, match="has no labels"):
        Trainer(tiny_config(), tmp_path, dataset=unlabeled, progress=False)


def test_ema_update_follows_the_warmed_up_decay():
    from diffusion_lib.training import EMA

    model = torch.nn.Linear(2, 1)
    ema = EMA(model, decay=0.999)
    start = params(ema.model).clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    decay = min(0.999, 2 / 11)  # (1 + n) / (10 + n) with n = 1
    torch.testing.assert_close(params(ema.model), decay * start + (1 - decay) * params(model))
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_ctrl_c_finishes_the_step_saves_and_resume_is_exact(tmp_path, digits):
    import os
    import signal

    straight = Trainer(tiny_config("training.max_steps=6"), tmp_path / "a", dataset=digits, progress=False)
    straight.train()
    interrupted = Trainer(tiny_config("training.max_steps=6"), tmp_path / "b", dataset=digits, progress=False)
    calls = []

    def press_ctrl_c_during_step_3(module, inputs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)

    interrupted.model.register_forward_pre_hook(press_ctrl_c_during_step_3)
    with pytest.raises(KeyboardInterrupt, match="checkpoint saved"):
        interrupted.train()
    assert interrupted.step == 3  # the step in flight completed; nothing half-applied
    resumed = Trainer(tiny_config("training.max_steps=6"), tmp_path / "b", dataset=digits, resume=True, progress=False)
    assert resumed.step == 3
    resumed.train()
    assert torch.equal(params(resumed.model), params(straight.model))


def test_resume_with_another_objective_or_data_is_refused(tmp_path, digits):
    Trainer(tiny_config("training.max_steps=1"), tmp_path, dataset=digits, progress=False).train()
    with pytest.raises(ValueError, match=r"diffusion.beta_schedule"):
        Trainer(tiny_config("diffusion.beta_schedule=cosine"), tmp_path, dataset=digits, resume=True, progress=False)
    with pytest.raises(ValueError, match=r"data.num_images"):
        Trainer(tiny_config(), tmp_path, dataset=digits.subset(torch.arange(500)), resume=True, progress=False)


def test_val_fraction_holds_out_a_seeded_split(tmp_path, digits):
    trainer = Trainer(tiny_config("data.val_fraction=0.2"), tmp_path, dataset=digits, progress=False)
    assert len(trainer.val_dataset) + len(trainer.dataset) == len(digits)
    assert abs(len(trainer.val_dataset) - 0.2 * len(digits)) <= 10


def test_atomic_writes_have_the_usual_permissions(tmp_path):
    import os

    from diffusion_lib.atomic import atomic_write_text

    path = atomic_write_text(tmp_path / "a.txt", "hello")
    umask = os.umask(0)
    os.umask(umask)
    assert path.read_text() == "hello" and (path.stat().st_mode & 0o777) == (0o666 & ~umask)


class _Labelled:
    """A dataset-like object (not an ImageDataset, which validates its own labels) with given labels."""

    def __init__(self, base, labels):
        self.base, self.labels = base, torch.as_tensor(labels)
        self.channels, self.image_size, self.num_classes = base.channels, base.image_size, base.num_classes
        self.class_names = base.class_names

    def __len__(self):
        return len(self.labels)

    def get_batch(self, indices):
        return self.base.get_batch(indices)[0], self.labels[indices]


def test_labels_are_checked_once_at_the_trainer_entry(tmp_path, digits):
    labels = digits.labels[:40].clone()
    labels[7] = 10  # the null label of a 10-class model is never a data label
    with pytest.raises(ValueError, match=r"dataset label 10 is outside \[0, 9\]"):
        Trainer(tiny_config("training.max_steps=1"), tmp_path, dataset=_Labelled(digits, labels), progress=False)
    labels[7] = -1
    with pytest.raises(ValueError, match=r"dataset label -1 is outside \[0, 9\]"):
        Trainer(tiny_config("training.max_steps=1"), tmp_path, dataset=_Labelled(digits, labels), progress=False)
    with pytest.raises(ValueError, match="must be integers"):
        Trainer(tiny_config("training.max_steps=1"), tmp_path, dataset=_Labelled(digits, labels.float()),
                progress=False)
    labels[7] = 3  # unconditional models never read the labels
    Trainer(tiny_config("training.max_steps=1", "model.conditional=false"), tmp_path,
            dataset=_Labelled(digits, labels * 0 + 99), progress=False)


def test_each_model_kind_has_one_objective_interface(tmp_path, digits):
    from diffusion_lib.objectives import DiffusionObjective, VAEObjective, build_objective

    unet = Trainer(tiny_config("training.max_steps=1"), tmp_path / "u", dataset=digits, progress=False)
    vae = Trainer(tiny_config("training.max_steps=1", "model.kind=vae", "model.conditional=false"), tmp_path / "v",
                  dataset=digits, progress=False)
    assert isinstance(unet.objective, DiffusionObjective) and unet.schedule is unet.objective.schedule
    assert isinstance(vae.objective, VAEObjective) and vae.schedule is None
    for trainer, fields in ((unet, ("loss",)), (vae, ("loss", "recon", "kl"))):
        x0, y = trainer._next_batch()
        loss, terms = trainer.objective.loss(trainer.model, x0, y, trainer.generator)
        assert tuple(terms) == fields == trainer.objective.log_fields and loss.requires_grad
        images, labels = trainer.generate(num_samples=3)
        assert images.shape == (3, 1, 8, 8)
    config = tiny_config()
    config.model.kind = "gan"  # bypasses validation on purpose
    with pytest.raises(ValueError, match="model.kind 'gan' has no objective; accepted: \\['unet', 'vae'\\]"):
        build_objective(config, torch.device("cpu"))


def test_generate_reads_the_sampling_config(tmp_path, digits):
    trainer = Trainer(tiny_config("training.max_steps=1", "sampling.sampler=ddpm", "sampling.num_inference_steps=4"),
                      tmp_path, dataset=digits, progress=False)
    first, labels = trainer.generate(num_samples=4, seed=3)
    again, _ = trainer.generate(num_samples=4, seed=3)
    assert torch.equal(first, again) and labels.tolist() == [0, 1, 2, 3]
    from diffusion_lib.sampling import sample

    expected = sample(trainer.ema.model, trainer.schedule, shape=(4, 1, 8, 8), y=labels,
                      generator=torch.Generator().manual_seed(3), **trainer.config.sampling.sampler_kwargs())
    assert torch.equal(first, expected.images)


def test_load_or_train_trains_once_then_loads(tmp_path, digits):
    from diffusion_lib.training import load_or_train

    overrides = TINY + ["training.max_steps=3", "training.lr_schedule=constant"]  # a cosine depends on max_steps
    first = load_or_train("configs/digits_cfg.yaml", tmp_path, overrides, device="cpu", progress=False, dataset=digits)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert first.step == 3 and not first.model.training and ckpt.exists()
    stamp = ckpt.stat().st_mtime_ns
    # same weights settings; sampling, logging and the name differ: loaded, not retrained
    again = load_or_train("configs/digits_cfg.yaml", tmp_path,
                          overrides + ["sampling.num_inference_steps=7", "training.log_every=1", "name=other"],
                          device="cpu", progress=False, dataset=digits)
    assert ckpt.stat().st_mtime_ns == stamp and again.config.sampling.num_inference_steps == 7
    torch.testing.assert_close(params(again.model), params(first.model))
    # more steps: resumed, and equal to an uninterrupted 5-step run
    constant = "training.lr_schedule=constant"
    longer = load_or_train(tiny_config("training.max_steps=5", constant), tmp_path, device="cpu", progress=False,
                           dataset=digits)
    straight = Trainer(tiny_config("training.max_steps=5", constant), tmp_path / "straight", dataset=digits,
                       progress=False)
    straight.train()
    assert longer.step == 5 and torch.equal(params(longer.model), params(straight.ema.model))
    # another objective: retrained from scratch
    other = load_or_train(tiny_config("training.max_steps=2", "diffusion.prediction_type=v_prediction"), tmp_path,
                          device="cpu", progress=False, dataset=digits)
    assert other.step == 2 and other.config.diffusion.prediction_type == "v_prediction"
    assert load_model(ckpt).config.diffusion.prediction_type == "v_prediction"


def _nan_loss_at(monkeypatch, bad_step: int):
    """Make the training loss NaN at step ``bad_step`` (the forward check in Trainer.__init__ runs without grad
    and is not counted)."""
    from diffusion_lib.objectives import DiffusionObjective

    real, calls = DiffusionObjective.loss, []

    def loss(self, model, x0, y, generator):
        value, terms = real(self, model, x0, y, generator)
        if torch.is_grad_enabled():
            calls.append(1)
            if len(calls) == bad_step:
                value = value * float("nan")
                terms = {"loss": value.detach()}
        return value, terms

    monkeypatch.setattr(DiffusionObjective, "loss", loss)


def _finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for key in ("model", "ema") for v in state[key].values()
               if v.is_floating_point())


def test_a_nan_loss_stops_training_naming_the_step_and_keeps_the_last_finite_checkpoint(tmp_path, monkeypatch, capsys):
    from diffusion_lib.cli import main

    _nan_loss_at(monkeypatch, bad_step=6)
    args = ["train", "--config", "configs/digits_cfg.yaml", "--output", str(tmp_path), "--no-progress"]
    for item in TINY + ["training.max_steps=12", "training.log_every=2", "training.checkpoint_every=4"]:
        args += ["--set", item]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: training diverged: ")
    assert "NaN or infinite at step 6" in err and "(step 4) is kept" in err
    state = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert state["step"] == 4 and _finite(state)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]
    assert not (tmp_path / "samples").exists()  # no sample grid of NaN weights either


def test_a_nan_between_log_rows_is_caught_before_the_next_save(tmp_path, digits, monkeypatch):
    from diffusion_lib.training import TrainingDiverged

    _nan_loss_at(monkeypatch, bad_step=3)
    trainer = Trainer(tiny_config("training.max_steps=8", "training.log_every=100"), tmp_path, dataset=digits,
                      progress=False)
    with pytest.raises(TrainingDiverged, match=r"at step 3 .*no checkpoint was written"):
        trainer.train()
    assert trainer.step == 4 and not trainer.checkpoint_path.exists()  # checked at the step-4 checkpoint


def test_a_huge_learning_rate_diverges_without_writing_nan_weights(tmp_path, digits):
    from diffusion_lib.training import TrainingDiverged

    trainer = Trainer(tiny_config("training.max_steps=8", "training.learning_rate=1e30", "training.warmup_steps=0",
                                  "training.grad_clip=0"), tmp_path, dataset=digits, progress=False)
    with pytest.raises(TrainingDiverged, match=r"training diverged: .*step \d"):
        trainer.train()
    assert not trainer.checkpoint_path.exists() or _finite(load_checkpoint(trainer.checkpoint_path))
    with pytest.raises(ValueError, match="training.learning_rate must be a finite number; got inf"):
        tiny_config("training.learning_rate=.inf")


def test_max_epochs_ends_the_run_first_and_resumes_exactly(tmp_path, digits):
    from diffusion_lib.training import total_steps

    small = digits.subset(torch.arange(100))  # 100 images, batch 16: 6 steps an epoch
    config = tiny_config("training.max_steps=1000", "training.max_epochs=2")
    assert total_steps(config.training, len(small)) == 12
    assert total_steps(tiny_config("training.max_steps=5", "training.max_epochs=2").training, len(small)) == 5
    straight = Trainer(config, tmp_path / "a", dataset=small, progress=False)
    assert straight.max_steps == 12
    straight.train()
    assert straight.step == 12
    first = Trainer(config, tmp_path / "b", dataset=small, progress=False)
    first.train(max_steps=7)
    resumed = Trainer(config, tmp_path / "b", dataset=small, resume=True, progress=False)
    resumed.train()
    assert resumed.step == 12 and torch.equal(params(resumed.model), params(straight.model))


def test_a_run_ended_by_max_epochs_is_finished_for_run_json_and_the_sweep(tmp_path, digits):
    from diffusion_lib.experiments.sweep import is_finished
    from diffusion_lib.run_log import read_run_summary

    small = digits.subset(torch.arange(100))  # 100 images, batch 16: 6 steps an epoch, so 2 epochs end at step 12
    config = tiny_config("training.max_steps=1000", "training.max_epochs=2")
    first = Trainer(config, tmp_path / "run", dataset=small, progress=False)
    first.train(max_steps=7)  # a session stopped short of the end: not finished
    summary = read_run_summary(tmp_path / "run")
    assert summary["step"] == 7 and summary["max_steps"] == 12 and summary["finished"] is False
    assert not is_finished(tmp_path / "run", config.training)
    Trainer(config, tmp_path / "run", dataset=small, resume=True, progress=False).train()
    summary = read_run_summary(tmp_path / "run")
    assert summary["step"] == 12 and summary["max_steps"] == 12 and summary["finished"] is True
    assert summary["num_images"] == 100
    assert is_finished(tmp_path / "run", config.training)  # a sweep skips it instead of reopening it
    assert not is_finished(tmp_path / "run", tiny_config("training.max_steps=1000", "training.max_epochs=3").training)


def test_a_model_that_cannot_run_fails_before_anything_is_written(tmp_path):
    small = load_dataset("digits", image_size=10)
    with pytest.raises(ValueError, match=r"image size \(10, 10\) is not divisible"):
        Trainer(tiny_config("model.channel_mults=[1, 2, 2]", "data.image_size=10"), tmp_path / "run", dataset=small,
                progress=False)
    assert not (tmp_path / "run").exists()


def test_training_removes_temporaries_of_a_killed_save(tmp_path, digits):
    import subprocess

    folder = tmp_path / "checkpoints"
    folder.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    from diffusion_lib.atomic import _host_tag

    host = _host_tag().rsplit("-", 1)[0]
    stale = folder / f".last.ckpt.{host}-{dead.pid}.abc123.tmp.ckpt"
    stale.write_bytes(b"half a checkpoint")
    other_host = folder / f".last.ckpt.otherhost-{dead.pid}.abc123.tmp.ckpt"
    other_host.write_bytes(b"maybe in flight elsewhere")
    Trainer(tiny_config("training.max_steps=1"), tmp_path, dataset=digits, progress=False).train()
    assert sorted(p.name for p in folder.iterdir()) == sorted(["last.ckpt", other_host.name])


def test_save_refuses_nan_weights_and_keeps_the_old_checkpoint(tmp_path, digits):
    from diffusion_lib.training import TrainingDiverged

    trainer = Trainer(tiny_config("training.max_steps=1"), tmp_path, dataset=digits, progress=False)
    path = trainer.train()
    old = path.read_bytes()
    with torch.no_grad():
        next(trainer.ema.model.parameters()).fill_(float("inf"))
    with pytest.raises(TrainingDiverged, match=r"a weight became NaN or infinite by step 1 .*\(step 1\) is kept"):
        trainer.save(path)
    assert path.read_bytes() == old


def test_cosine_learning_rate_matches_diffusers_after_the_warm_up_and_reaches_zero(tmp_path, digits):
    from diffusers.optimization import get_cosine_schedule_with_warmup

    from diffusion_lib.training import learning_rate_factor

    warmup, total = 10, 100
    theirs = get_cosine_schedule_with_warmup(torch.optim.SGD([torch.zeros(1)], lr=1.0), warmup, total).lr_lambdas[0]
    for step in range(warmup, total):  # warm-up differs on purpose: ours never gives a zero learning rate
        assert learning_rate_factor(step, warmup, total, "cosine") == pytest.approx(theirs(step), abs=1e-12)
    assert [learning_rate_factor(s, 3, 20, "constant") for s in (0, 2, 3, 19)] == [0.25, 0.75, 1.0, 1.0]
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        learning_rate_factor(0, 1, 2, "step")

    trainer = Trainer(tiny_config("training.max_steps=12", "training.lr_schedule=cosine", "training.log_every=1",
                                  "training.learning_rate=0.01"), tmp_path, dataset=digits, progress=False)
    trainer.train()
    lrs = [float(r["lr"]) for r in csv.DictReader((tmp_path / "log.csv").open())]
    assert lrs[1] == pytest.approx(0.01) and lrs[-1] < 1e-12  # after 2 warm-up steps: the peak; after 12: zero
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))


def train_both_ways(tmp_path, digits, key: str, steps: int) -> dict:
    """Two tiny runs without dropout, ``key`` true and false: {"true"/"false": finished Trainer with .losses}."""
    runs = {}
    for flag in ("true", "false"):
        trainer = Trainer(tiny_config(f"training.max_steps={steps}", f"{key}={flag}", "training.log_every=1",
                                      "model.dropout=0.0"),  # masks: drawn in memory order, or by inductor's RNG
                          tmp_path / flag, dataset=digits, progress=False)
        trainer.train()
        trainer.losses = [float(r["loss"]) for r in csv.DictReader((tmp_path / flag / "log.csv").open())]
        runs[flag] = trainer
    return runs


def test_channels_last_changes_the_layout_not_the_values(tmp_path, digits):
    runs = train_both_ways(tmp_path, digits, "training.channels_last", steps=6)
    assert runs["true"].model.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert runs["false"].model.conv_in.weight.is_contiguous()
    assert runs["true"].losses == pytest.approx(runs["false"].losses, rel=1e-4)
    torch.testing.assert_close(params(runs["true"].model), params(runs["false"].model), rtol=1e-4, atol=1e-5)


def test_compile_runs_the_same_training_and_saves_the_same_checkpoint(tmp_path, digits):
    """torch.compile (inductor; about a minute to compile on 2 CPU cores) changes the speed, not the run."""
    runs = train_both_ways(tmp_path, digits, "training.compile", steps=4)
    assert isinstance(runs["true"].train_model, torch._dynamo.eval_frame.OptimizedModule)
    assert runs["true"].train_model._orig_mod is runs["true"].model  # one set of parameters
    assert runs["true"].losses == pytest.approx(runs["false"].losses, rel=1e-4)
    saved = {flag: load_checkpoint(tmp_path / flag / "checkpoints" / "last.ckpt") for flag in runs}
    assert saved["true"]["model"].keys() == saved["false"]["model"].keys()  # no "_orig_mod." prefixes
    for key, value in saved["false"]["model"].items():
        torch.testing.assert_close(saved["true"]["model"][key], value, rtol=1e-4, atol=1e-5)
