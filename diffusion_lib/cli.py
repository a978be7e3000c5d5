"""Command line: ``python -m diffusion_lib {train, sample, ...}``. Run any command with ``--help``."""

# Building the parser imports nothing heavy (``--help`` stays fast): torch and the library are
# imported inside the command functions.
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _train(args: argparse.Namespace) -> int:
    from .atomic import check_writable
    from .config import load_config
    from .training import Trainer

    config = load_config(args.config, args.set)
    output = Path(args.output or Path("runs") / config.name)
    if not args.resume and (output / "checkpoints" / "last.ckpt").exists():
        raise ValueError(f"{output} already holds a checkpoint; pass --resume to continue it or choose another --output")
    check_writable(output, folder=True)  # before loading data and building the model
    trainer = Trainer(config, output, resume=args.resume, progress=not args.no_progress)
    say = print if trainer.is_main_process else (lambda *a: None)  # under torchrun only rank 0 speaks and writes
    say(f"training {config.name}: {sum(p.numel() for p in trainer.model.parameters()):,} parameters on "
        f"{trainer.device}" + (f" x {trainer.dist.world_size} processes" if trainer.dist.is_distributed else "")
        + f", {len(trainer.dataset)} images, "
        f"steps {trainer.step} -> {trainer.max_steps}")
    checkpoint = trainer.train()
    grid = trainer.save_samples(output / "samples" / "final.png")
    say(f"checkpoint: {checkpoint}\nsample grid: {grid}\nlog: {output / 'log.csv'}")
    return 0


def _sampling_config(config, args: argparse.Namespace):
    """The checkpoint config's :class:`~diffusion_lib.config.SamplingConfig` with the command's options on top.

    DDPM without ``--num-inference-steps`` runs all T steps (the config's K is the DDIM default).

    Raises:
        ValueError: ``--eta`` with a sampler other than DDIM, or an option the sampling config rejects
            (named as ``sampling.<key>``: an unknown sampler, steps < 1, a guidance scale that is negative,
            NaN or infinite, ...).
    """
    import dataclasses

    s = config.sampling
    sampler = args.sampler or s.sampler
    if args.eta is not None and sampler != "ddim":
        raise ValueError(f"--eta applies to the DDIM sampler only; got --sampler {sampler}")
    given = args.num_inference_steps
    steps = given if given is not None else (s.num_inference_steps if sampler != "ddpm" else None)
    s = s.override(guidance_scale=args.guidance_scale, eta=args.eta, variance_type=getattr(args, "variance_type", None),
                   clip_sample=False if getattr(args, "no_clip", False) else None)
    return dataclasses.replace(s, sampler=sampler, num_inference_steps=steps)


def _diffusion_samples(loaded, args: argparse.Namespace, labels, device) -> tuple:
    """Sample a diffusion checkpoint in batches with :func:`_sampling_config`'s settings.

    Args:
        labels: int64 (N,) class labels, or None for an unconditional model.

    Returns:
        (images float32 (N, C, H, W) in [-1, 1] on the CPU, the settings used: sampler,
        num_inference_steps, guidance_scale, eta).
    """
    import torch

    from .sampling import sample

    from tqdm.auto import tqdm

    d = loaded.data
    kwargs = _sampling_config(loaded.config, args).sampler_kwargs(conditional=labels is not None)
    generator = torch.Generator().manual_seed(args.seed)  # CPU noise: the same samples on every device
    n, batch = args.num_samples, args.batch_size
    steps = kwargs["num_inference_steps"] or loaded.schedule.num_train_timesteps
    images = []
    # one bar for the whole job: every network call (one per sampler step and batch) moves it
    bar = tqdm(total=steps * -(-n // batch), desc=f"sampling {n} images", unit="step", disable=args.no_progress)

    def count_network_call(module, inputs, output) -> None:
        bar.update(1)  # return None: a forward hook's non-None return value would replace the model's output

    hook = loaded.model.register_forward_hook(count_network_call)
    try:
        for start in range(0, n, batch):
            y = labels[start:start + batch].to(device) if labels is not None else None
            shape = (min(batch, n - start), d["channels"], d["image_size"], d["image_size"])
            images.append(sample(loaded.model, loaded.schedule, shape=shape, y=y,
                                 prediction_type=loaded.config.diffusion.prediction_type, generator=generator,
                                 **kwargs).images.cpu())
    finally:
        hook.remove()
        bar.close()
    settings = dict(sampler=kwargs["sampler"],
                    num_inference_steps=kwargs["num_inference_steps"] or loaded.schedule.num_train_timesteps,
                    guidance_scale=kwargs["guidance_scale"], eta=kwargs.get("eta"))
    return torch.cat(images), settings


def _sample(args: argparse.Namespace) -> int:
    import torch

    from .atomic import check_writable
    from .checkpoint import load_model
    from .device import resolve_device
    from .models import is_conditional
    from .sampling import cycle_labels
    from .viz import by_class, save_grid, save_npz

    out = Path(args.out)
    if out.suffix not in (".png", ".npz"):
        raise ValueError(f"--out must end in .png (grid) or .npz (arrays); got {out}")
    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1; got {args.num_samples}")
    if args.trajectory and (Path(args.trajectory).suffix.lower() not in (".gif", ".mp4") or args.trajectory_samples < 1):
        raise ValueError(f"--trajectory must end in .gif or .mp4 and --trajectory-samples be >= 1; got "
                         f"{args.trajectory}, {args.trajectory_samples}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1; got {args.batch_size}")
    device = resolve_device(args.device)
    loaded = load_model(args.checkpoint, device=device, use_ema=not args.no_ema)
    if loaded.schedule is None:
        raise ValueError(f"{args.checkpoint} holds a {loaded.config.model.kind} model; `sample` needs a diffusion UNet")
    num_classes = loaded.data["num_classes"] if is_conditional(loaded.model) else 0
    if args.labels is not None:
        if num_classes == 0:
            raise ValueError("--labels given, but the checkpoint holds an unconditional model")
        labels = torch.tensor(args.labels, dtype=torch.long).repeat(args.num_samples // len(args.labels) + 1)[:args.num_samples]
    else:
        labels = cycle_labels(args.num_samples, num_classes) if num_classes else None
    if labels is None and args.guidance_scale not in (None, 0.0, 1.0):
        raise ValueError(f"--guidance-scale {args.guidance_scale} needs a class-conditional model")
    _sampling_config(loaded.config, args)  # every option checked before sampling ...
    check_writable(out)  # ... and the output too: a bad --out must not cost minutes of sampling
    images, used = _diffusion_samples(loaded, args, labels, device)
    if out.suffix == ".npz":
        save_npz(images, out, labels)
    elif labels is not None:
        ordered, per_row = by_class(images, labels)
        save_grid(ordered, out, nrow=per_row)
    else:
        save_grid(images, out, nrow=max(1, int(len(images) ** 0.5)))
    print(f"wrote {len(images)} samples ({used['sampler']}, steps={used['num_inference_steps']}, "
          f"guidance_scale={used['guidance_scale']}) to {out}")
    if args.trajectory:
        path = _write_trajectory(loaded, args, labels, device)
        print(f"wrote the reverse process of {min(args.num_samples, args.trajectory_samples)} samples to {path}")
    return 0


def _write_trajectory(loaded, args: argparse.Namespace, labels, device) -> Path:
    """Sample the first ``--trajectory-samples`` images again (same seed) capturing every step; write the video."""
    import torch

    from .animation import save_trajectory_video
    from .sampling import sample

    d = loaded.data
    kwargs = _sampling_config(loaded.config, args).sampler_kwargs(conditional=labels is not None)
    n = min(args.num_samples, args.trajectory_samples)
    y = labels[:n].to(device) if labels is not None else None
    out = sample(loaded.model, loaded.schedule, shape=(n, d["channels"], d["image_size"], d["image_size"]), y=y,
                 prediction_type=loaded.config.diffusion.prediction_type,
                 generator=torch.Generator().manual_seed(args.seed), capture_steps="all",
                 progress=not args.no_progress, **kwargs)
    nrow = d["num_classes"] if y is not None and d["num_classes"] <= n else max(1, int(n ** 0.5))
    return save_trajectory_video(out.trajectory, args.trajectory, nrow=nrow, fps=args.fps)


def _evaluate(args: argparse.Namespace) -> int:
    """Sample from a checkpoint (diffusion or VAE), score against its real data, write JSON, print a table."""
    import json
    import time
    import warnings

    import torch

    from .atomic import atomic_write_text, check_writable
    from .checkpoint import load_model
    from .data import load_dataset
    from .device import resolve_device
    from .metrics import evaluate_samples, format_report
    from .models import is_conditional
    from .sampling import cycle_labels

    n, batch_size = args.num_samples, args.batch_size
    if n < 2:
        raise ValueError(f"--num-samples must be >= 2 (FID, KID and diversity compare images); got {n}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1; got {batch_size}")
    out = Path(args.out) if args.out else None  # default: one file per setting (experiments.runs.evaluation_path)
    if out is not None and out.suffix != ".json":
        raise ValueError(f"--out must end in .json; got {out}")
    if args.domain_steps is not None and args.domain_steps < 1:
        raise ValueError(f"--domain-steps must be >= 1; got {args.domain_steps}")
    device = resolve_device(args.device)
    loaded = load_model(args.checkpoint, device=device)
    config, d = loaded.config, loaded.data
    report = {"checkpoint": str(args.checkpoint), "model": config.model.kind, "step": loaded.step, "seed": args.seed}
    # before minutes of sampling and scoring (the default file goes beside the checkpoint)
    check_writable(out if out is not None else Path(args.checkpoint).with_suffix(".eval.json"))
    start = time.perf_counter()
    labels = None
    if loaded.schedule is None:  # VAE: decode prior draws z ~ N(0, I)
        given = [k for k in ("sampler", "num_inference_steps", "guidance_scale", "eta") if getattr(args, k) is not None]
        if given:
            raise ValueError(f"--{given[0].replace('_', '-')} applies to diffusion checkpoints; {args.checkpoint} "
                             f"holds a {config.model.kind} model (it samples from its prior)")
        generator = torch.Generator().manual_seed(args.seed)
        images = torch.cat([loaded.model.sample(min(batch_size, n - i), generator=generator).cpu()
                            for i in range(0, n, batch_size)])
    else:
        conditional = is_conditional(loaded.model)
        if not conditional and args.guidance_scale not in (None, 0.0, 1.0):
            raise ValueError(f"--guidance-scale {args.guidance_scale} needs a class-conditional model")
        _sampling_config(config, args)  # every option checked before sampling
        labels = cycle_labels(n, d["num_classes"]) if conditional else None
        images, used = _diffusion_samples(loaded, args, labels, device)
        report.update(used, guidance_scale=used["guidance_scale"] if conditional else None)
    report["sampling_seconds"] = round(time.perf_counter() - start, 3)
    real = load_dataset(d["source"], image_size=d["image_size"], **config.data.options)
    with warnings.catch_warnings():  # the small-sample FID warning is also a note, printed below
        warnings.filterwarnings("ignore", message="FID from", category=UserWarning)
        result = evaluate_samples(images, real, labels=labels, extractor=args.extractor, dataset=d["source"],
                                  cache_dir=args.cache_dir, device=device, domain_steps=args.domain_steps,
                                  seed=args.seed, progress=not args.no_progress)
    report.update(result.to_dict())
    if out is None:
        from .experiments.runs import evaluation_path

        out = evaluation_path(args.checkpoint, report)
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")

    sampling = (f"{report['sampler']}, {report['num_inference_steps']} steps, guidance {report['guidance_scale']}"
                if loaded.schedule is not None else "prior samples")
    print(format_report(result, f"{args.checkpoint} ({config.model.kind}, step {loaded.step}): {result.num_generated} "
                                f"samples ({sampling}) vs {result.num_real} real images of {result.dataset}"))
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command (also used to document them)."""
    parser = argparse.ArgumentParser(prog="python -m diffusion_lib", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model from a YAML config",
                                description="Train the model a YAML config describes; writes checkpoints, log.csv "
                                            "and sample grids to the output folder.")
    train.add_argument("--config", required=True, help="YAML experiment config, e.g. configs/digits_cfg.yaml")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value with a dotted key, e.g. --set training.max_steps=200 (repeatable)")
    train.add_argument("--output", help="output folder (default: runs/<config name>)")
    train.add_argument("--resume", action="store_true",
                       help="continue from OUTPUT/checkpoints/last.ckpt exactly where it stopped")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.set_defaults(func=_train)

    smp = commands.add_parser("sample", help="draw samples from a checkpoint into a PNG grid or an NPZ",
                              description="Sample from a trained diffusion checkpoint (EMA weights).")
    smp.add_argument("--checkpoint", required=True, help="a checkpoint written by `train` (…/checkpoints/last.ckpt)")
    smp.add_argument("--num-samples", type=int, default=100, help="how many images (default 100)")
    smp.add_argument("--sampler", metavar="NAME",  # checked by SamplingConfig against config.SAMPLER_NAMES
                     help="reverse process: ddpm, ddim, ... (any of diffusion_lib.config.SAMPLER_NAMES; "
                          "default: the config's)")
    smp.add_argument("--num-inference-steps", type=int,
                     help="sampler steps K (default: the config's for DDIM, all T for DDPM)")
    smp.add_argument("--guidance-scale", type=float,
                     help="classifier-free guidance w: 0 unconditional, 1 conditional, >1 guided (default: the config's)")
    smp.add_argument("--eta", type=float, help="DDIM stochasticity in [0, 1], 0 deterministic (default: the config's)")
    smp.add_argument("--variance-type", choices=["fixed_small", "fixed_large"], default="fixed_small",
                     help="DDPM sigma_t^2: posterior variance (fixed_small, default) or beta_t (fixed_large)")
    smp.add_argument("--labels", type=int, nargs="+",
                     help="class labels to sample, repeated to fill --num-samples (default: cycle through every class)")
    smp.add_argument("--seed", type=int, default=0, help="random seed; same seed, same samples (default 0)")
    smp.add_argument("--out", required=True, help="output file: .png (grid, one row per class) or .npz (images, labels)")
    smp.add_argument("--batch-size", type=int, default=256, help="images generated at once (default 256)")
    smp.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, ... (default auto)")
    smp.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    smp.add_argument("--no-clip", action="store_true", help="do not clip predicted x_0 to [-1, 1]")
    smp.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    smp.add_argument("--trajectory", metavar="FILE",
                     help="also write the denoising of a grid over the sampler's steps: FILE.gif or FILE.mp4 "
                          "(step and t written on each frame)")
    smp.add_argument("--trajectory-samples", type=int, default=16,
                     help="images in the trajectory's grid: the first N of the samples (default 16)")
    smp.add_argument("--fps", type=float, default=10.0, help="frames per second of the trajectory (default 10)")
    smp.set_defaults(func=_sample)

    ev = commands.add_parser(
        "evaluate", help="score samples of a checkpoint: FID, KID, IS, diversity, class accuracy -> JSON + table",
        description="Sample from a trained checkpoint (diffusion UNet or VAE), load the real images of the data "
                    "source it was trained on, and score the samples with diffusion_lib.metrics.evaluate_samples. "
                    "FID/KID/IS use the Inception network when its weights are on disk, else a domain classifier "
                    "trained on the real images (cached); the extractor is named in the output, and scores of "
                    "different extractors are not comparable. Nothing is downloaded at scoring time.")
    ev.add_argument("--checkpoint", required=True, help="a checkpoint written by `train` (…/checkpoints/last.ckpt)")
    ev.add_argument("--num-samples", type=int, default=1000,
                    help="images to generate and score (default 1000; FID needs thousands to be stable, and "
                         "scores are only comparable at equal counts)")
    ev.add_argument("--sampler", metavar="NAME",  # checked by SamplingConfig against config.SAMPLER_NAMES
                    help="reverse process of a diffusion checkpoint: ddpm, ddim, ... (any of "
                         "diffusion_lib.config.SAMPLER_NAMES; default: the config's sampling.sampler)")
    ev.add_argument("--num-inference-steps", type=int,
                    help="sampler steps K (default: the config's for DDIM, all T for DDPM)")
    ev.add_argument("--guidance-scale", type=float,
                    help="classifier-free guidance w of a conditional model: 0 unconditional, 1 conditional, "
                         ">1 guided (default: the config's)")
    ev.add_argument("--eta", type=float, help="DDIM stochasticity, 0 deterministic (default: the config's)")
    ev.add_argument("--seed", type=int, default=0,
                    help="seed of the samples, KID subsets and IS splits; same seed, same scores (default 0)")
    ev.add_argument("--out", help="JSON file for the settings and scores (default: beside the checkpoint, one file "
                                  "per setting: last.eval.<sampler>-<K>steps-g<w>-seed<s>-n<N>.json)")
    ev.add_argument("--extractor", choices=["auto", "inception", "domain"], default="auto",
                    help="feature network of FID/KID/IS: inception (weights must be on disk), domain (a classifier "
                         "trained on the real images), auto (inception if available, else domain; default)")
    ev.add_argument("--domain-steps", type=int,
                    help="training steps of a domain classifier that is not cached yet (default: 5 epochs, "
                         "200..5000 steps)")
    ev.add_argument("--cache-dir",
                    help="folder for domain classifiers and real-image features (default "
                         "$DIFFUSION_LIB_CACHE/metrics or ~/.cache/diffusion_lib/metrics)")
    ev.add_argument("--batch-size", type=int, default=256, help="images generated at once (default 256)")
    ev.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, ... (default auto)")
    ev.add_argument("--no-progress", action="store_true",
                    help="hide the progress bars (sampling, domain-classifier training, feature extraction)")
    ev.set_defaults(func=_evaluate)
    add_tracking_commands(commands)
    from .course.notebooks import add_notebooks_command
    add_notebooks_command(commands)
    from .course.cli import add_course_command; add_course_command(commands)  # coursework: release/check/handin/grade
    return parser


def _runs(args: argparse.Namespace) -> int:
    from .experiments.runs import compare_runs, format_comparison, plot_runs

    table = compare_runs(args.runs)
    print(format_comparison(table))
    if args.csv:
        table.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    if args.figure:
        from .viz import save_figure

        print(f"wrote {save_figure(plot_runs(args.runs, smooth=args.smooth), args.figure)}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from .experiments.runs import format_comparison
    from .experiments.sweep import run_sweep

    table = run_sweep(args.config, args.grid, args.output, overrides=args.set, progress=not args.no_progress)
    print(format_comparison(table))
    return 0


def _summary(args: argparse.Namespace) -> int:
    from .summary import network_summary

    for title, stats in network_summary(args.config, args.set, depth=args.depth, batch_size=args.batch_size,
                                        classifier=args.classifier):
        print(f"{title}\n{stats}\n")
    return 0


def add_tracking_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``runs`` (compare run folders), ``sweep`` (grid over config keys) and ``summary`` (layer table)."""
    runs = commands.add_parser("runs", help="compare run folders: config differences, losses, scores, speed",
                               description="Print one table of the runs (config keys that differ, steps, final and "
                                           "best loss, wall time, images/s, every `evaluate` result); optionally "
                                           "a figure (loss curves on one axis, sample grids side by side). A sweep "
                                           "folder stands for all its runs.")
    runs.add_argument("runs", nargs="+", metavar="DIR", help="run folders (holding config.yaml) or sweep folders")
    runs.add_argument("--figure", metavar="FILE.png", help="write the comparison figure")
    runs.add_argument("--csv", metavar="FILE.csv", help="write the table as CSV")
    runs.add_argument("--smooth", type=int, default=1, help="rolling mean over logged rows in the figure (default 1)")
    runs.set_defaults(func=_runs)

    sweep = commands.add_parser("sweep", help="train a grid over config keys, one folder per run, resumable",
                                description="Train every combination of --grid values, each in OUTPUT/<key=value_...>; "
                                            "rerun the same command to skip finished runs and resume interrupted "
                                            "ones. Ends with the comparison table (`runs OUTPUT`). With wandb in "
                                            "training.loggers the runs share one wandb group.")
    sweep.add_argument("--config", required=True, help="YAML experiment config, the base of every run")
    sweep.add_argument("--grid", nargs="+", required=True, metavar="KEY=V1,V2",
                       help="dotted config key and its values, e.g. training.learning_rate=1e-3,3e-4 "
                            "diffusion.p_uncond=0.1,0.2")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override for every run, e.g. --set training.max_steps=200 (repeatable)")
    sweep.add_argument("--output", required=True, help="the sweep folder")
    sweep.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    sweep.set_defaults(func=_sweep)

    summary = commands.add_parser("summary", help="layer table of a config's network (torchinfo)",
                                  description="Print torchinfo's table (per block: output shape, parameters, "
                                              "mult-adds) of the network a config trains: UNet, conditional UNet "
                                              "or VAE (--set model.conditional=false, --set model.kind=vae).")
    summary.add_argument("--config", required=True, help="YAML experiment config")
    summary.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    summary.add_argument("--depth", type=int, default=2, help="levels of sub-modules shown (default 2)")
    summary.add_argument("--batch-size", type=int, default=1, help="batch of the example input (default 1)")
    summary.add_argument("--classifier", action="store_true",
                         help="also the noise-conditioned classifier of classifier guidance")
    summary.set_defaults(func=_summary)


def _user_errors() -> tuple[type[BaseException], ...]:
    """The errors reported as one line with exit status 2: bad values, missing files, file-system
    errors (``cannot write PATH: reason``: a full disk, a file where a folder should be, no permission),
    and a missing dataset.

    ``DatasetUnavailableError`` is looked up only if its module is loaded (a command that raised
    it has loaded it), so parsing arguments never imports the data layer and torch.
    """
    sources = sys.modules.get(f"{__package__}.data.torchvision_sources")
    return (ValueError, OSError) + ((sources.DatasetUnavailableError,) if sources else ())


def main(argv: list[str] | None = None) -> int:
    """Entry point; bad input exits with status 2 and a one-line message instead of a traceback.

    Exit status: 0 done; 2 bad input or a file that cannot be read or written; 1 a diverged training run
    (NaN/inf; the last finite checkpoint is kept); 128 + signal number (130 Ctrl-C, 143 SIGTERM) when
    training was interrupted after saving its checkpoint.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:  # training saved a checkpoint first (TrainingInterrupted)
        print(f"interrupted: {error}" if str(error) else "interrupted", file=sys.stderr)
        return 128 + getattr(error, "signum", 2)
    except RuntimeError as error:
        training = sys.modules.get(f"{__package__}.training")
        if training is None or not isinstance(error, training.TrainingDiverged):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
