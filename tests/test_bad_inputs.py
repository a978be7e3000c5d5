"""Every bad input is one clear error: a table of wrong values, paths and files across `train`, `sample`,
`evaluate` and the public API.

Each CLI case must exit with status 2 and a one-line ``error: ...`` naming the bad value or path (argparse's
own errors: status 2 and its usage line); each API case must raise ValueError or FileNotFoundError naming
it. No case may leave a new file in the output folder. The checkpoints the cases point at are trained once
per module (one step of a tiny model) so the whole table runs in seconds.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from diffusion_lib import artifacts, checkpoint
from diffusion_lib import config as cfg
from diffusion_lib.cli import main
from diffusion_lib.config import load_config
from diffusion_lib.data import load_dataset
from diffusion_lib.training import Trainer

from test_training import TINY

ROOT = Path(__file__).resolve().parent.parent
CONFIG = str(ROOT / "configs" / "digits_cfg.yaml")


# ----------------------------------------------------------------------------- shared files, made once

class Evil:
    """Pickles to a call of os.system: a checkpoint holding it must be refused without running it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _record(payload, **fields):
    return {"format": "diffusion_lib", "kind": "checkpoint", "version": 1, "library_version": "0", "payload": payload,
            **fields}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Three tiny checkpoints (conditional UNet, unconditional UNet, VAE), bad checkpoints, bad configs, bad arrays."""
    root = tmp_path_factory.mktemp("bad_inputs")
    digits = load_dataset("digits", image_size=8)
    paths = {}
    for name, extra in {"ckpt": [], "uncond": ["model.conditional=false", "diffusion.p_uncond=0"],
                        "vae": ["model.kind=vae", "model.channel_mults=[1]", "model.latent_dim=4"]}.items():
        config = load_config(CONFIG, TINY + ["training.max_steps=1"] + extra)
        paths[name] = str(Trainer(config, root / name, dataset=digits, progress=False).train())
    paths["run"] = str(root / "ckpt")
    bad = root / "bad"
    bad.mkdir()
    good = torch.load(paths["ckpt"], weights_only=True)
    (bad / "corrupt.ckpt").write_bytes(b"not a checkpoint at all")
    (bad / "empty.ckpt").write_bytes(b"")
    (bad / "truncated.ckpt").write_bytes(Path(paths["ckpt"]).read_bytes()[:2000])
    (bad / "a_folder.ckpt").mkdir()
    torch.save({"state_dict": {"w": torch.zeros(1)}}, bad / "foreign.ckpt")
    torch.save({"payload": Evil(root / "PWNED")}, bad / "code.ckpt")
    torch.save({**good, "version": "1"}, bad / "version_str.ckpt")
    torch.save({**good, "version": 99}, bad / "version_new.ckpt")
    torch.save({**good, "kind": "classifier"}, bad / "kind.ckpt")
    torch.save(_record({k: v for k, v in good["payload"].items() if k != "ema"}), bad / "no_ema.ckpt")
    torch.save(_record([1, 2]), bad / "no_payload.ckpt")
    configs = {"number.yaml": b"5\n", "list.yaml": b"[1, 2]\n", "zero.yaml": b"0\n", "latin1.yaml": "name: caf\xe9\n".encode("latin-1"),
               "broken.yaml": b"training: {max_steps: [\n", "section.yaml": b"training: 5\n",
               "unknown.yaml": b"trainig:\n  max_steps: 3\n", "name.yaml": b"name: ../escape\n"}
    for name, data in configs.items():
        (bad / name).write_bytes(data)
    np.save(bad / "nan.npy", np.full((4, 8, 8), np.nan, dtype=np.float32))
    np.save(bad / "inf.npy", np.full((4, 8, 8), np.inf, dtype=np.float32))
    some_nan = np.zeros((4, 8, 8), dtype=np.float64)
    some_nan[2, 3, 3] = np.nan
    np.save(bad / "some_nan.npy", some_nan)
    np.save(bad / "strings.npy", np.full((4, 8, 8), "a"))
    np.save(bad / "shape.npy", np.zeros((4, 8, 8, 5), dtype=np.uint8))
    np.save(bad / "range.npy", np.full((4, 8, 8), 300.0))
    paths["bad"] = str(bad)
    paths["marker"] = root / "PWNED"
    return paths


# ----------------------------------------------------------------------------- the table

@dataclass
class Case:
    id: str
    args: list[str] | Callable  # argv with {placeholders}, or a callable(files, out) for the API
    message: str                # regex that the message must contain
    errors: tuple = (ValueError, FileNotFoundError)


TRAIN = ["train", "--config", CONFIG, "--output", "{out}/run", "--no-progress"] + \
    [a for item in TINY + ["training.max_steps=1"] for a in ("--set", item)]


def train(*extra: str) -> list[str]:
    return TRAIN + list(extra)


def setting(item: str) -> list[str]:
    return train("--set", item)


SAMPLE = ["sample", "--checkpoint", "{ckpt}", "--num-samples", "2", "--num-inference-steps", "2", "--out",
          "{out}/s.png", "--no-progress"]


def sample(*extra: str) -> list[str]:
    return SAMPLE + list(extra)


EVALUATE = ["evaluate", "--checkpoint", "{ckpt}", "--num-samples", "4", "--num-inference-steps", "2",
            "--domain-steps", "5", "--out", "{out}/e.json", "--no-progress"]


def evaluate(*extra: str) -> list[str]:
    return EVALUATE + list(extra)


BAD_SETTINGS = [  # --set KEY=VALUE -> the message
    ("training.max_steps=0", r"training.max_steps must be >= 1; got 0"),
    ("training.max_steps=-3", r"training.max_steps must be >= 1; got -3"),
    ("training.max_steps=ten", r"training.max_steps must be an integer; got 'ten'"),
    ("training.max_steps=1.5", r"training.max_steps must be an integer; got 1.5"),
    ("training.max_epochs=0", r"training.max_epochs must be >= 1"),
    ("training.max_epochs=-2", r"training.max_epochs must be >= 1 .*got -2"),
    ("training.max_epochs=two", r"training.max_epochs must be an integer; got 'two'"),
    ("training.batch_size=0", r"training.batch_size must be >= 1; got 0"),
    ("training.learning_rate=0", r"training.learning_rate must be > 0; got 0"),
    ("training.learning_rate=-1", r"training.learning_rate must be > 0; got -1"),
    ("training.learning_rate=.inf", r"training.learning_rate must be a finite number; got inf"),
    ("training.learning_rate=.nan", r"training.learning_rate must be a finite number; got nan"),
    ("training.learning_rate=fast", r"training.learning_rate must be a number; got 'fast'"),
    ("training.lr_schedule=linear", r"training.lr_schedule must be one of \['constant', 'cosine'\]; got 'linear'"),
    ("training.channels_last=maybe", r"training.channels_last must be"),
    ("training.compile=maybe", r"training.compile must be true or false; got .maybe."),
    ("training.weight_decay=.inf", r"training.weight_decay must be a finite number; got inf"),
    ("training.ema_decay=1.0", r"training.ema_decay must be in \[0, 1\); got 1.0"),
    ("training.ema_decay=-0.1", r"training.ema_decay must be in \[0, 1\); got -0.1"),
    ("training.grad_clip=-1", r"training.grad_clip must be >= 0; got -1"),
    ("training.grad_clip=.inf", r"training.grad_clip must be a finite number; got inf"),
    ("training.warmup_steps=-1", r"training.warmup_steps must be >= 0; got -1"),
    ("training.log_every=0", r"training.log_every must be >= 1; got 0"),
    ("training.checkpoint_every=0", r"training.checkpoint_every must be >= 1; got 0"),
    ("training.sample_every=-1", r"training.sample_every must be >= 0; got -1"),
    ("training.vae_beta=-1", r"training.vae_beta must be >= 0; got -1"),
    ("training.amp=maybe", r"training.amp must be true or false; got 'maybe'"),
    ("training.device=tpu", r"unknown device 'tpu'"),
    ("training.max_step=1", r"unknown config key\(s\) \['training.max_step'\]"),
    ("model.num_heads=0", r"model.num_heads must be >= 1; got 0"),
    ("model.num_heads=-1", r"model.num_heads must be >= 1; got -1"),
    ("model.num_heads=3", r"not divisible by num_heads=3"),
    ("model.norm_groups=0", r"model.norm_groups must be >= 1; got 0"),
    ("model.norm_groups=3", r"norm_groups=3 must divide"),
    ("model.base_channels=0", r"model.base_channels must be >= 1; got 0"),
    ("model.channel_mults=[]", r"model.channel_mults must be a non-empty list .*got \[\]"),
    ("model.channel_mults=[0]", r"model.channel_mults must be a non-empty list .*got \[0\]"),
    ("model.channel_mults=5", r"model.channel_mults must be a list; got 5"),
    ("model.attention_levels=[5]", r"model.attention_levels must be level indices .*got \[5\]"),
    ("model.num_res_blocks=0", r"model.num_res_blocks must be >= 1; got 0"),
    ("model.dropout=1.0", r"model.dropout must be in \[0, 1\); got 1.0"),
    ("model.dropout=-0.5", r"model.dropout must be in \[0, 1\); got -0.5"),
    ("model.kind=gan", r"model.kind must be one of \['unet', 'vae'\]; got 'gan'"),
    ("model.conditional=maybe", r"model.conditional must be true or false; got 'maybe'"),
    ("model.latent_dim=0", r"model.latent_dim must be >= 1; got 0"),
    ("data.image_size=2", r"data.image_size must be >= 4; got 2"),
    ("data.image_size=9", r"image size \(9, 9\) is not divisible by the UNet's downsampling factor 2"),
    ("data.val_fraction=1.0", r"data.val_fraction must be in \[0, 1\); got 1.0"),
    ("data.val_fraction=-0.1", r"data.val_fraction must be in \[0, 1\); got -0.1"),
    ("data.source=nope", r"unknown dataset source 'nope'"),
    ("data.options={bogus: 1}", r"does not take \['bogus'\]"),
    ("data.options=[1]", r"data.options must be a mapping; got \[1\]"),
    ("diffusion.num_train_timesteps=0", r"diffusion.num_train_timesteps must be >= 1; got 0"),
    ("diffusion.beta_schedule=wiggly", r"diffusion.beta_schedule 'wiggly' is unknown"),
    ("diffusion.prediction_type=noise", r"diffusion.prediction_type must be one of .*got 'noise'"),
    ("diffusion.p_uncond=1.5", r"diffusion.p_uncond must be in \[0, 1\]; got 1.5"),
    ("diffusion.p_uncond=.nan", r"diffusion.p_uncond must be a finite number; got nan"),
    ("diffusion.schedule_kwargs={foo: 1}", r"schedule_kwargs \['foo'\] are not arguments of the 'linear' schedule; "
                                           r"accepted: \['beta_start', 'beta_end'"),
    ("diffusion.schedule_kwargs={s: 0.1}", r"schedule_kwargs \['s'\] are not arguments of the 'linear' schedule"),
    ("diffusion.schedule_kwargs=[1]", r"diffusion.schedule_kwargs must be a mapping; got \[1\]"),
    ("sampling.sampler=euler", r"sampling.sampler must be one of .*got 'euler'"),
    ("sampling.num_inference_steps=0", r"sampling.num_inference_steps must be >= 1 .*got 0"),
    ("sampling.eta=2", r"sampling.eta must be in \[0, 1\]; got 2"),
    ("sampling.guidance_scale=-1", r"sampling.guidance_scale must be >= 0 and finite; got -1"),
    ("sampling.guidance_scale=.inf", r"sampling.guidance_scale must be a finite number; got inf"),
    ("sampling.timestep_spacing=middle", r"sampling.timestep_spacing must be one of .*got 'middle'"),
    ("sampling.variance_type=learned", r"sampling.variance_type must be one of .*got 'learned'"),
    ("sampling.samples_per_class=0", r"sampling.samples_per_class must be >= 1; got 0"),
    ("name=../o/x", r"name must be a plain folder name .*got '\.\./o/x'"),
    ("name=a/b", r"name must be a plain folder name .*got 'a/b'"),
    ("name=..", r"name must be a plain folder name .*got '\.\.'"),
    ("name=/etc", r"name must be a plain folder name .*got '/etc'"),
    ("name=", r"config key name must be a string; got None"),
    ("bogus=1", r"unknown config key\(s\) \['bogus'\]"),
    ("model=[1, 2]", r"config section model must be a mapping; got list"),
    ("training.max_steps", r"override 'training.max_steps' must look like section.key=value"),
    ("training.max_steps.x=1", r"override 'training.max_steps.x=1': 'max_steps' is not a section"),
]

CLI_CASES = [Case(f"train --set {item}", setting(item), message) for item, message in BAD_SETTINGS] + [
    # config files
    Case("train --config missing", train("--config", "{bad}/missing.yaml"), r"config file .*missing.yaml does not exist"),
    Case("train --config folder", train("--config", "{bad}"), r"config file .*bad is a folder"),
    Case("train --config latin-1", train("--config", "{bad}/latin1.yaml"), r"config file .*latin1.yaml is not UTF-8"),
    Case("train --config top-level number", train("--config", "{bad}/number.yaml"), r"number.yaml must hold a mapping.*int: 5"),
    Case("train --config top-level list", train("--config", "{bad}/list.yaml"), r"list.yaml must hold a mapping.*list"),
    Case("train --config top-level 0", train("--config", "{bad}/zero.yaml"), r"zero.yaml must hold a mapping.*int: 0"),
    Case("train --config broken YAML", train("--config", "{bad}/broken.yaml"), r"broken.yaml is not valid YAML"),
    Case("train --config section not a mapping", train("--config", "{bad}/section.yaml"),
         r"override 'training.batch_size=16': 'training' is not a section"),  # TINY's --set meets it first
    Case("train --config unknown section", train("--config", "{bad}/unknown.yaml"), r"unknown config key\(s\) \['trainig'\]"),
    Case("train --config name escapes runs/", train("--config", "{bad}/name.yaml"), r"name must be a plain folder name"),
    # output folders
    Case("train --output is a file", train("--output", "{out}/a_file"), r"cannot write .*a_file: it is a file"),
    Case("train --output under a file", train("--output", "{out}/a_file/run"), r"cannot write .*a_file/run: .*a_file is a file"),
    Case("train --output under /sys", train("--output", "/sys/diffusion_lib_run"), r"cannot write /sys/diffusion_lib_run: "),
    Case("train --output under /proc", train("--output", "/proc/diffusion_lib_run"), r"cannot write /proc/diffusion_lib_run: "),
    Case("train --resume without checkpoint", train("--resume"), r"checkpoint .*last.ckpt does not exist"),
    Case("train over a run without --resume", train("--output", "{run}"), r"already holds a checkpoint; pass --resume"),
    Case("train --resume another model", train("--output", "{run}", "--resume", "--set", "model.base_channels=16"),
         r"holds a different model"),
    Case("train --resume another objective", train("--output", "{run}", "--resume", "--set", "diffusion.p_uncond=0.5"),
         r"trained with other settings for \['diffusion.p_uncond'\]"),
    # argparse
    Case("train without --config", ["train", "--output", "{out}/run"], r"the following arguments are required: --config"),
    Case("unknown command", ["fly"], r"invalid choice: 'fly'"),
    Case("sample --num-samples abc", sample("--num-samples", "abc"), r"invalid int value: 'abc'"),
    Case("sample --guidance-scale abc", sample("--guidance-scale", "abc"), r"invalid float value: 'abc'"),
    Case("sample --variance-type learned", sample("--variance-type", "learned"), r"invalid choice: 'learned'"),
    Case("sample without --out", ["sample", "--checkpoint", "{ckpt}"], r"the following arguments are required: --out"),
    Case("evaluate --extractor foo", evaluate("--extractor", "foo"), r"invalid choice: 'foo'"),
    # sample: values
    Case("sample --num-samples 0", sample("--num-samples", "0"), r"--num-samples must be >= 1; got 0"),
    Case("sample --num-samples -3", sample("--num-samples", "-3"), r"--num-samples must be >= 1; got -3"),
    Case("sample --batch-size 0", sample("--batch-size", "0"), r"--batch-size must be >= 1; got 0"),
    Case("sample --batch-size -5", sample("--batch-size", "-5"), r"--batch-size must be >= 1; got -5"),
    Case("sample --guidance-scale nan", sample("--guidance-scale", "nan"), r"guidance_scale must be >= 0 and finite; got nan"),
    Case("sample --guidance-scale inf", sample("--guidance-scale", "inf"), r"guidance_scale must be >= 0 and finite; got inf"),
    Case("sample --guidance-scale -1", sample("--guidance-scale", "-1"), r"guidance_scale must be >= 0 and finite; got -1"),
    Case("sample unconditional --guidance-scale 2", sample("--checkpoint", "{uncond}", "--guidance-scale", "2"),
         r"--guidance-scale 2.0 needs a class-conditional model"),
    Case("sample unconditional --guidance-scale nan", sample("--checkpoint", "{uncond}", "--guidance-scale", "nan"),
         r"--guidance-scale nan needs a class-conditional model"),
    Case("sample --eta with ddpm", sample("--sampler", "ddpm", "--eta", "0.5"), r"--eta applies to the DDIM sampler only; got --sampler ddpm"),
    Case("sample --eta 1.5", sample("--eta", "1.5"), r"sampling.eta must be in \[0, 1\]; got 1.5"),
    Case("sample --eta -0.1", sample("--eta", "-0.1"), r"sampling.eta must be in \[0, 1\]; got -0.1"),
    Case("sample --eta nan", sample("--eta", "nan"), r"sampling.eta must be in \[0, 1\]; got nan"),
    Case("sample --num-inference-steps 0", sample("--num-inference-steps", "0"), r"num_inference_steps must be >= 1 .*got 0"),
    Case("sample --num-inference-steps -1", sample("--num-inference-steps", "-1"), r"num_inference_steps must be >= 1 .*got -1"),
    Case("sample ddpm --num-inference-steps 0", sample("--sampler", "ddpm", "--num-inference-steps", "0"),
         r"num_inference_steps must be >= 1 .*got 0"),
    Case("sample --num-inference-steps 1000", sample("--num-inference-steps", "1000"),
         r"num_inference_steps must be an int in \[1, num_train_timesteps=100\]; got 1000"),
    Case("sample --sampler euler", sample("--sampler", "euler"), r"sampling.sampler must be one of .*got 'euler'"),
    Case("sample --labels 12", sample("--labels", "12"), r"labels must be in \[0, 9\]; got values in \[12, 12\]"),
    Case("sample --labels -1", sample("--labels", "-1"), r"labels must be in \[0, 9\]; got values in \[-1, -1\]"),
    Case("sample unconditional --labels", sample("--checkpoint", "{uncond}", "--labels", "1"), r"--labels given, but .*unconditional"),
    Case("sample --device tpu", sample("--device", "tpu"), r"unknown device 'tpu'"),
    # sample: output paths
    Case("sample --out .jpg", sample("--out", "{out}/s.jpg"), r"--out must end in .png .*got .*s.jpg"),
    Case("sample --out without suffix", sample("--out", "{out}/s"), r"--out must end in .png .*got .*/s$"),
    Case("sample --out is a folder", sample("--out", "{out}/a_dir.png"), r"cannot write .*a_dir.png: it is a folder"),
    Case("sample --out under a file", sample("--out", "{out}/a_file/s.png"), r"cannot write .*a_file/s.png: .*a_file is a file"),
    Case("sample --out under /sys", sample("--out", "/sys/diffusion_lib.png"), r"cannot write /sys/diffusion_lib.png: "),
    Case("sample --out under /proc", sample("--out", "/proc/none/s.npz"), r"cannot write /proc/none/s.npz: "),
    # sample: checkpoints
    Case("sample --checkpoint missing", sample("--checkpoint", "{bad}/none.ckpt"), r"checkpoint .*none.ckpt does not exist"),
    Case("sample --checkpoint folder", sample("--checkpoint", "{bad}/a_folder.ckpt"), r"checkpoint .*a_folder.ckpt is a folder"),
    Case("sample --checkpoint run folder", sample("--checkpoint", "{run}"), r"checkpoint .*ckpt is a folder, not a file"),
    Case("sample --checkpoint corrupt", sample("--checkpoint", "{bad}/corrupt.ckpt"), r"corrupt.ckpt is corrupt or not a torch file"),
    Case("sample --checkpoint empty", sample("--checkpoint", "{bad}/empty.ckpt"), r"empty.ckpt is corrupt or not a torch file"),
    Case("sample --checkpoint truncated", sample("--checkpoint", "{bad}/truncated.ckpt"), r"truncated.ckpt is corrupt"),
    Case("sample --checkpoint foreign", sample("--checkpoint", "{bad}/foreign.ckpt"), r"foreign.ckpt is not a diffusion_lib checkpoint file"),
    Case("sample --checkpoint with code", sample("--checkpoint", "{bad}/code.ckpt"), r"code.ckpt contains code .*was refused"),
    Case("sample --checkpoint version string", sample("--checkpoint", "{bad}/version_str.ckpt"),
         r"version_str.ckpt has version '1'; expected an int"),
    Case("sample --checkpoint newer version", sample("--checkpoint", "{bad}/version_new.ckpt"), r"version 99; .*upgrade"),
    Case("sample --checkpoint another kind", sample("--checkpoint", "{bad}/kind.ckpt"), r"kind.ckpt is a 'classifier' file"),
    Case("sample --checkpoint without ema", sample("--checkpoint", "{bad}/no_ema.ckpt"), r"no_ema.ckpt is missing \['ema'\]"),
    Case("sample --checkpoint without payload", sample("--checkpoint", "{bad}/no_payload.ckpt"), r"no_payload.ckpt has no payload"),
    Case("sample --checkpoint a config", sample("--checkpoint", CONFIG), r"digits_cfg.yaml is corrupt or not a torch file"),
    Case("sample --checkpoint VAE", sample("--checkpoint", "{vae}"), r"holds a vae model; `sample` needs a diffusion UNet"),
    # evaluate
    Case("evaluate --num-samples 1", evaluate("--num-samples", "1"), r"--num-samples must be >= 2 .*got 1"),
    Case("evaluate --num-samples 0", evaluate("--num-samples", "0"), r"--num-samples must be >= 2 .*got 0"),
    Case("evaluate --batch-size 0", evaluate("--batch-size", "0"), r"--batch-size must be >= 1; got 0"),
    Case("evaluate --batch-size -5", evaluate("--batch-size", "-5"), r"--batch-size must be >= 1; got -5"),
    Case("evaluate --domain-steps 0", evaluate("--domain-steps", "0"), r"--domain-steps must be >= 1; got 0"),
    Case("evaluate --out .txt", evaluate("--out", "{out}/e.txt"), r"--out must end in .json; got .*e.txt"),
    Case("evaluate --eta with ddpm", evaluate("--sampler", "ddpm", "--eta", "0.3"), r"--eta applies to the DDIM sampler only"),
    Case("evaluate --guidance-scale nan", evaluate("--guidance-scale", "nan"), r"guidance_scale must be >= 0 and finite; got nan"),
    Case("evaluate --guidance-scale inf", evaluate("--guidance-scale", "inf"), r"guidance_scale must be >= 0 and finite; got inf"),
    Case("evaluate --num-inference-steps 0", evaluate("--num-inference-steps", "0"), r"num_inference_steps must be >= 1 .*got 0"),
    Case("evaluate --sampler euler", evaluate("--sampler", "euler"), r"sampling.sampler must be one of .*got 'euler'"),
    Case("evaluate --num-inference-steps 1000", evaluate("--num-inference-steps", "1000"), r"num_inference_steps must be an int in"),
    Case("evaluate unconditional --guidance-scale 3", evaluate("--checkpoint", "{uncond}", "--guidance-scale", "3"),
         r"--guidance-scale 3.0 needs a class-conditional model"),
    Case("evaluate VAE --num-inference-steps", evaluate("--checkpoint", "{vae}", "--num-inference-steps", "2"),
         r"--num-inference-steps applies to diffusion checkpoints; .* holds a vae model"),
    Case("evaluate --out is a folder", evaluate("--out", "{out}/a_dir.json"), r"cannot write .*a_dir.json: it is a folder"),
    Case("evaluate --out under a file", evaluate("--out", "{out}/a_file/e.json"), r"cannot write .*a_file/e.json"),
    Case("evaluate --out under /sys", evaluate("--out", "/sys/diffusion_lib.json"), r"cannot write /sys/diffusion_lib.json: "),
    Case("evaluate --checkpoint missing", evaluate("--checkpoint", "{bad}/none.ckpt"), r"none.ckpt does not exist"),
    Case("evaluate --checkpoint folder", evaluate("--checkpoint", "{bad}/a_folder.ckpt"), r"a_folder.ckpt is a folder"),
    Case("evaluate --checkpoint with code", evaluate("--checkpoint", "{bad}/code.ckpt"), r"code.ckpt contains code .*was refused"),
    Case("evaluate --checkpoint version string", evaluate("--checkpoint", "{bad}/version_str.ckpt"), r"has version '1'; expected an int"),
    Case("evaluate --device tpu", evaluate("--device", "tpu"), r"unknown device 'tpu'"),
]


# ----------------------------------------------------------------------------- the public API

def _tiny_unet(**kwargs):
    from diffusion_lib.models import UNet

    return UNet(**{**dict(in_channels=1, base_channels=8, channel_mults=(1,), attention_levels=(), num_heads=2,
                          norm_groups=4), **kwargs})


def _loss(x0, **kwargs):
    from diffusion_lib.diffusion import training_loss
    from diffusion_lib.schedules import NoiseSchedule

    return training_loss(_tiny_unet(), NoiseSchedule("linear", 10), x0, generator=torch.Generator().manual_seed(0),
                         **kwargs)


def _sample(conditional=False, **kwargs):
    from diffusion_lib.models import ConditionalUNet
    from diffusion_lib.sampling import sample
    from diffusion_lib.schedules import NoiseSchedule

    model = ConditionalUNet(3, **_tiny_unet().config) if conditional else _tiny_unet()
    return sample(model, NoiseSchedule("linear", 10), **{"shape": (1, 1, 4, 4), "num_inference_steps": 2, **kwargs})


def _trainer(out, *overrides, image_size=8):
    return Trainer(load_config(CONFIG, TINY + list(overrides)), out,
                   dataset=load_dataset("digits", image_size=image_size), progress=False)


NAN = float("nan")
API_CASES = [
    Case("load_config missing", lambda f, out: load_config(Path(f["bad"]) / "none.yaml"), r"none.yaml does not exist"),
    Case("load_config folder", lambda f, out: load_config(f["bad"]), r"is a folder, not a YAML file"),
    Case("load_config latin-1", lambda f, out: load_config(Path(f["bad"]) / "latin1.yaml"), r"latin1.yaml is not UTF-8"),
    Case("load_config top-level list", lambda f, out: load_config(Path(f["bad"]) / "list.yaml"), r"list.yaml must hold a mapping"),
    Case("load_config section not a mapping", lambda f, out: load_config(Path(f["bad"]) / "section.yaml"),
         r"config section training must be a mapping; got int"),
    Case("load_config broken YAML", lambda f, out: load_config(Path(f["bad"]) / "broken.yaml"), r"broken.yaml is not valid YAML"),
    Case("load_config name override", lambda f, out: load_config(None, ["name=../x"]), r"got '\.\./x'"),
    Case("ExperimentConfig name a/b", lambda f, out: cfg.ExperimentConfig(name="a/b"),
         r"got 'a/b'"),
    Case("SamplingConfig guidance nan", lambda f, out: cfg.SamplingConfig(guidance_scale=NAN),
         r"guidance_scale must be >= 0 and finite; got nan"),
    Case("SamplingConfig guidance inf",
         lambda f, out: cfg.SamplingConfig(guidance_scale=float("inf")),
         r"guidance_scale must be >= 0 and finite; got inf"),
    Case("SamplingConfig steps 0", lambda f, out: cfg.SamplingConfig(num_inference_steps=0),
         r"num_inference_steps must be >= 1 .*got 0"),
    Case("DiffusionConfig schedule_kwargs", lambda f, out: cfg.DiffusionConfig(
        beta_schedule="cosine", schedule_kwargs={"beta_end": 0.1}), r"\['beta_end'\] are not arguments of the 'cosine' "
                                                                  r"schedule; accepted: \['s', 'max_beta'\]"),
    Case("TrainingConfig max_epochs 0", lambda f, out: cfg.TrainingConfig(max_epochs=0),
         r"max_epochs must be >= 1 .*got 0"),
    Case("UNet num_heads 0", lambda f, out: _tiny_unet(num_heads=0), r"num_heads must be an int >= 1; got 0"),
    Case("UNet num_heads -1", lambda f, out: _tiny_unet(num_heads=-1), r"num_heads must be an int >= 1; got -1"),
    Case("UNet num_heads 1.5", lambda f, out: _tiny_unet(num_heads=1.5), r"num_heads must be an int >= 1; got 1.5"),
    Case("UNet norm_groups 0", lambda f, out: _tiny_unet(norm_groups=0), r"norm_groups must be an int >= 1; got 0"),
    Case("UNet attention level 3", lambda f, out: _tiny_unet(attention_levels=(3,)), r"attention_levels \(3,\) must be"),
    Case("UNet dropout 1.5", lambda f, out: _tiny_unet(dropout=1.5), r"dropout must be in \[0, 1\); got 1.5"),
    Case("training_loss NaN x0", lambda f, out: _loss(torch.full((2, 1, 4, 4), NAN)), r"x0 holds 32 NaN or infinite value"),
    Case("training_loss inf x0", lambda f, out: _loss(torch.zeros(2, 1, 4, 4).index_fill_(0, torch.tensor([1]), float("inf"))),
         r"x0 holds 16 NaN or infinite value"),
    Case("training_loss prediction_type", lambda f, out: _loss(torch.zeros(2, 1, 4, 4), prediction_type="noise"),
         r"unknown prediction_type 'noise'"),
    Case("training_loss p_uncond 2", lambda f, out: _loss(torch.zeros(2, 1, 4, 4), p_uncond=2.0), r"p_uncond must be in \[0, 1\]; got 2.0"),
    Case("sample sampler euler", lambda f, out: _sample(sampler="euler"), r"unknown sampler 'euler'"),
    Case("sample steps 0", lambda f, out: _sample(num_inference_steps=0), r"num_inference_steps must be an int in .*got 0"),
    Case("sample guidance -1", lambda f, out: _sample(guidance_scale=-1.0), r"guidance_scale must be a finite number >= 0; got -1.0"),
    Case("sample eta 2", lambda f, out: _sample(eta=2.0), r"eta must be in \[0, 1\] .*got 2.0"),
    Case("npy of NaN", lambda f, out: load_dataset("npy", path=Path(f["bad"]) / "nan.npy"), r"nan.npy.*256 NaN or infinite"),
    Case("npy of inf", lambda f, out: load_dataset("npy", path=Path(f["bad"]) / "inf.npy"), r"inf.npy.*256 NaN or infinite"),
    Case("npy with one NaN", lambda f, out: load_dataset("npy", path=Path(f["bad"]) / "some_nan.npy"), r"some_nan.npy.*1 NaN"),
    Case("npy of strings", lambda f, out: load_dataset("npy", path=Path(f["bad"]) / "strings.npy"), r"strings.npy.*must be numbers"),
    Case("npy of 5 channels", lambda f, out: load_dataset("npy", path=Path(f["bad"]) / "shape.npy"), r"shape.npy.*got \(4, 8, 8, 5\)"),
    Case("npy out of range", lambda f, out: load_dataset("npy", path=Path(f["bad"]) / "range.npy"), r"range.npy.*must lie in .*300.0\]"),
    Case("npy missing", lambda f, out: load_dataset("npy", path=Path(f["bad"]) / "none.npy"), r"cannot read images from .*none.npy"),
    Case("load_checkpoint folder", lambda f, out: checkpoint.load_checkpoint(f["run"]),
         r"is a folder, not a file"),
    Case("load_checkpoint code", lambda f, out: checkpoint.load_checkpoint(
        Path(f["bad"]) / "code.ckpt"), r"code.ckpt contains code .*was refused"),
    Case("save_artifact version string", lambda f, out: artifacts.save_artifact(
        out / "x.pt", "thing", {}, version="1"), r"version must be an int >= 1; got '1'"),
    Case("Trainer image size not divisible", lambda f, out: _trainer(out / "run", "data.image_size=9", image_size=9).train(),
         r"image size \(9, 9\) is not divisible"),
    Case("Trainer heads not dividing", lambda f, out: _trainer(out / "run", "model.num_heads=3"), r"num_heads=3"),
    Case("Trainer resume without checkpoint", lambda f, out: Trainer(load_config(CONFIG, TINY), out / "run", resume=True,
                                                                       dataset=load_dataset("digits", image_size=8)),
         r"last.ckpt does not exist"),
]

SAMPLER_OWNER_CASES = [  # the samplers check their inputs once at the entry (diffusion.check_finite, check_guidance_inputs)
    Case("sample NaN noise", lambda f, out: _sample(noise=torch.full((1, 1, 4, 4), NAN), shape=None), r"noise holds"),
    Case("sample guidance nan", lambda f, out: _sample(True, y=torch.tensor([1]), guidance_scale=NAN), r"guidance_scale"),
    Case("sample guidance inf", lambda f, out: _sample(True, y=torch.tensor([1]), guidance_scale=float("inf")),
         r"guidance_scale"),
]


# ----------------------------------------------------------------------------- the tests

def _fill(arg: str, **values: str) -> str:
    """``arg`` with each ``{name}`` replaced (not str.format: YAML values hold braces too)."""
    for name, value in values.items():
        arg = arg.replace("{" + name + "}", value)
    return arg


def _snapshot(folder: Path) -> set:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def out(tmp_path):
    """The output folder of a case, with a file and two folders that some cases point at."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "a_file").write_text("a file, not a folder")
    (folder / "a_dir.png").mkdir()
    (folder / "a_dir.json").mkdir()
    return folder


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(case, files, out, capsys):
    argv = [_fill(a, out=str(out), **{k: v for k, v in files.items() if isinstance(v, str)}) for a in case.args]
    before, run_before = _snapshot(out), _snapshot(Path(files["run"]))
    try:
        code = main(argv)
        usage = False
    except SystemExit as exit:  # argparse's own errors
        code, usage = exit.code, True
    err = capsys.readouterr().err
    assert code == 2, err
    assert re.search(case.message, err), err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") or "error: " in lines[-1], err
    if not usage:
        assert len(lines) == 1, err  # one line, no traceback
    assert _snapshot(out) == before and _snapshot(Path(files["run"])) == run_before
    assert not Path("/sys/diffusion_lib_run").exists() and not files["marker"].exists()


@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_api_bad_input_raises_a_clear_error_and_writes_nothing(case, files, out):
    before = _snapshot(out)
    with pytest.raises(case.errors, match=case.message):
        case.args(files, out)
    assert _snapshot(out) == before and not files["marker"].exists()


@pytest.mark.parametrize("case", SAMPLER_OWNER_CASES, ids=[c.id for c in SAMPLER_OWNER_CASES])
def test_sampler_rejects_non_finite_inputs(case, files, out):
    with pytest.raises(case.errors, match=case.message):
        case.args(files, out)


def test_the_table_is_large():
    assert len(CLI_CASES) + len(API_CASES) + len(SAMPLER_OWNER_CASES) >= 120
    assert len({c.id for c in CLI_CASES + API_CASES}) == len(CLI_CASES) + len(API_CASES)


def test_a_name_outside_runs_is_refused_without_output(files, tmp_path, monkeypatch, capsys):
    """Without --output the run folder is runs/<name>: `--set name=../o/x` must not write outside runs/."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", CONFIG, "--set", "name=../o/x", "--no-progress"]) == 2
    assert "name must be a plain folder name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [] and not (tmp_path.parent / "o").exists()


def test_a_full_disk_is_one_line_and_keeps_the_old_checkpoint(files, tmp_path, monkeypatch, capsys):
    """torch.save on a full disk: a real ENOSPC from /dev/full, reported as `cannot write PATH: reason`."""
    import shutil

    import diffusion_lib.atomic as atomic

    run = tmp_path / "run"
    shutil.copytree(files["run"], run)
    last = run / "checkpoints" / "last.ckpt"
    old = last.read_bytes()
    real_save = torch.save

    def save_to_full_disk(obj, handle, *args, **kwargs):
        with open("/dev/full", "wb") as full:
            real_save(obj, full, *args, **kwargs)

    monkeypatch.setattr(atomic.torch, "save", save_to_full_disk)
    argv = train("--output", str(run), "--resume", "--set", "training.max_steps=2")
    assert main([_fill(a, out=str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(rf"error: cannot write {re.escape(str(last))}: No space left on device\n", err), err
    assert last.read_bytes() == old
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # no temporary left


def _evil_archive(path: Path, kind: str, outside: Path) -> Path:
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        if kind == "symlink":
            link = tarfile.TarInfo("jpg")
            link.type, link.linkname = tarfile.SYMTYPE, str(outside.parent)
            tar.addfile(link)
            return path
        data = b"written outside the dataset folder"
        info = tarfile.TarInfo({"dotdot": "../" + outside.name, "absolute": str(outside)}[kind])
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("kind, error", [("dotdot", "OutsideDestinationError"), ("symlink", "AbsoluteLinkError")])
def test_a_path_traversing_archive_is_refused_by_the_download(kind, error, tmp_path, monkeypatch):
    """torchvision's extract_archive under the loaders' download: tarfile's data filter refuses the member."""
    import tarfile

    from torchvision.datasets.utils import extract_archive

    from diffusion_lib.data import torchvision_sources as tv

    root = tmp_path / "datasets"
    outside = root / "escaped.txt"
    archive = _evil_archive(tmp_path / "evil.tgz", kind, outside)

    def make(folder, download):
        if not download:
            raise RuntimeError("Dataset not found or corrupted.")
        extract_archive(str(archive), str(folder))
        raise AssertionError("the archive was extracted")

    monkeypatch.setattr(tv, "probe", lambda url, timeout=0: None)  # offline test: pretend the host answers
    with pytest.raises(tv.DatasetUnavailableError, match=rf"the download failed \({error}:"):
        tv._acquire("flowers102", root, True, make)
    assert not outside.exists() and sorted(p.name for p in root.iterdir()) == []  # temporary folder removed
    assert tarfile.TarFile.extraction_filter is None  # Python's default restored outside the download
    with tv.safe_tar_extraction(), pytest.raises(tarfile.FilterError):
        extract_archive(str(archive), str(tmp_path / "direct"))


def test_an_absolute_archive_member_lands_inside_the_folder(tmp_path):
    from torchvision.datasets.utils import extract_archive

    from diffusion_lib.data import torchvision_sources as tv

    outside = tmp_path / "outside" / "abs.txt"
    archive = _evil_archive(tmp_path / "evil.tgz", "absolute", outside)
    with tv.safe_tar_extraction():
        extract_archive(str(archive), str(tmp_path / "dest"))
    assert not outside.exists() and (tmp_path / "dest" / str(outside).lstrip("/")).is_file()  # "/" stripped
