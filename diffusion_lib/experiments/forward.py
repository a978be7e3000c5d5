"""How long does a noise schedule keep the data "structured"? Measured, not eyeballed.

For each schedule and a grid of timesteps t, draw x_t ~ q(x_t | x_0) (Ho et al. 2020, eq. 4) for
a batch of real images and measure:

- ``correlation``: Pearson correlation between x_0 and x_t over all pixel values (1 at t = 0,
  about sqrt(alpha_bar_t) * std(x_0) / std(x_t) in general, 0 for pure noise);
- ``accuracy``: accuracy of a classifier trained on *clean* images when shown x_t (falls to
  chance, 1 / K, once the class is no longer recognisable);
- distance of x_t's distribution from N(0, I): the ``mean`` and ``std`` of all values (0 and 1
  for noise), the Kolmogorov-Smirnov statistic ``ks`` of the pooled values against N(0, 1), and
  the sliced 2-Wasserstein distance ``sliced_w2`` of the images (as vectors in R^D) from N(0, I).

:func:`structure_table` returns one row per (schedule, t); :func:`structure_horizon` turns it
into "structure lasts until t = ..." per schedule; :func:`schedule_summary` tabulates each schedule's key
numbers. The schedules to compare come from :func:`diffusion_lib.schedules.all_schedules` (one table of
every registered schedule, built there once). These are the measurements notebook 02 plots.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import nn

from ..device import randn
from ..diffusion import q_sample
from ..metrics.scores import class_accuracy
from ..schedules import NoiseSchedule

MEASURES = ("correlation", "accuracy", "mean", "std", "ks", "sliced_w2")


def timestep_grid(num_train_timesteps: int, num: int = 20) -> list[int]:
    """``num`` timesteps spread evenly over [0, T-1], both ends included (fewer if T is small).

    Raises:
        ValueError: ``num`` < 2.
    """
    if num < 2:
        raise ValueError(f"num must be >= 2; got {num}")
    return sorted({int(round(v)) for v in np.linspace(0, num_train_timesteps - 1, num)})


def correlation(x0: torch.Tensor, x_t: torch.Tensor) -> float:
    """Pearson correlation between all values of ``x0`` and ``x_t`` (same shape), in [-1, 1]."""
    pair = torch.stack([x0.flatten().double(), x_t.flatten().double()])
    return float(torch.corrcoef(pair)[0, 1])


def ks_to_normal(x: torch.Tensor, max_values: int = 20_000, generator: torch.Generator | None = None) -> float:
    """Kolmogorov-Smirnov statistic of the pooled values of ``x`` against N(0, 1), in [0, 1].

    The largest gap between the empirical CDF and the normal CDF; 0 for a perfect match. With n
    values, pure noise gives about 0.9 / sqrt(n) (n = ``max_values``: about 0.006).

    Args:
        x: any float tensor; its values are pooled.
        max_values: a random subset of at most this many values is tested.
        generator: random source of the subset.
    """
    values = x.detach().flatten().double().cpu()
    if values.numel() > max_values:
        values = values[torch.randperm(values.numel(), generator=_cpu(generator))[:max_values]]
    return float(stats.kstest(values.numpy(), "norm").statistic)


def sliced_w2_to_normal(x: torch.Tensor, num_projections: int = 64, generator: torch.Generator | None = None) -> float:
    """Sliced 2-Wasserstein distance between the images in ``x`` and N(0, I) (Rabin et al. 2011).

    Each image is a vector in R^D. For ``num_projections`` random unit directions u, the projections
    u . x_i are sorted and compared with the quantiles of N(0, 1) (the law of u . eps, eps ~ N(0, I)):
    SW2^2 = mean over u of mean over i of (sorted_i - Phi^-1((i + 1/2) / N))^2. It sees correlations
    between pixels that per-value tests (mean, std, KS) miss. Finite N leaves a small floor for pure noise.

    Args:
        x: float (N, ...) with N >= 2.
        num_projections: number of random directions.
        generator: random source of the directions.

    Returns:
        SW2 >= 0, in the units of the values.

    Raises:
        ValueError: fewer than 2 images.
    """
    flat = x.detach().flatten(1).double().cpu()
    n, d = flat.shape
    if n < 2:
        raise ValueError(f"sliced_w2_to_normal needs at least 2 images; got {n}")
    directions = torch.randn(d, num_projections, generator=_cpu(generator), dtype=torch.float64)
    directions /= directions.norm(dim=0, keepdim=True)
    projected = (flat @ directions).sort(dim=0).values
    quantiles = torch.special.ndtri((torch.arange(n, dtype=torch.float64) + 0.5) / n)
    return float(((projected - quantiles[:, None]) ** 2).mean().sqrt())


@torch.no_grad()
def structure_table(schedules: Mapping[str, NoiseSchedule], x0: torch.Tensor, labels: torch.Tensor | None = None,
                    classifier: nn.Module | None = None, timesteps: Sequence[int] | None = None,
                    seed: int = 0) -> pd.DataFrame:
    """Measure the structure left in x_t for every schedule and timestep.

    Every schedule sees the same noise at a given t (same seed), so differences between rows come
    from the schedules alone.

    Args:
        schedules: name -> NoiseSchedule, all with the same T (e.g. :func:`diffusion_lib.schedules.all_schedules`).
        x0: real images, float (N, C, H, W) in [-1, 1], N >= 2.
        labels: int64 (N,) classes of ``x0``; needed with ``classifier``.
        classifier: a classifier trained on clean images, ``classifier(x) -> logits (N, K)``, in eval mode;
            None skips the accuracy column (NaN).
        timesteps: timesteps in [0, T-1]; default :func:`timestep_grid` (T, 20).
        seed: seed of the noise, the KS subsets and the sliced-W2 directions.

    Returns:
        DataFrame with one row per (schedule, t) and columns ``schedule, t, alpha_bar, log_snr`` and
        :data:`MEASURES`; ``attrs["chance"]`` is 1 / K when a classifier is given.

    Raises:
        ValueError: no schedules, schedules of different T, timesteps out of range, bad images, or a
            classifier without labels.
    """
    if not schedules:
        raise ValueError("schedules is empty; pass e.g. diffusion_lib.schedules.all_schedules(T)")
    lengths = {s.num_train_timesteps for s in schedules.values()}
    if len(lengths) != 1:
        raise ValueError(f"all schedules must share T; got {sorted(lengths)}")
    T = lengths.pop()
    if x0.ndim != 4 or not x0.is_floating_point() or len(x0) < 2:
        raise ValueError(f"x0 must be float (N, C, H, W) with N >= 2; got {x0.dtype} {tuple(x0.shape)}")
    if classifier is not None and (labels is None or len(labels) != len(x0)):
        raise ValueError("accuracy needs labels (N,) for the images, one per image in x0")
    timesteps = timestep_grid(T) if timesteps is None else [int(t) for t in timesteps]
    if any(not 0 <= t < T for t in timesteps):
        raise ValueError(f"timesteps must lie in [0, {T - 1}]; got {timesteps}")
    rows = []
    for name, schedule in schedules.items():
        schedule = schedule.to(x0.device)
        log_snr = schedule.log_snr()
        for t in timesteps:
            noise = randn(x0.shape, torch.Generator().manual_seed(seed * 100_003 + t), x0.device)
            generator = torch.Generator().manual_seed(seed)  # the same KS subset and W2 directions at every t
            x_t = q_sample(schedule, x0, torch.full((len(x0),), t, dtype=torch.long, device=x0.device), noise)
            rows.append({
                "schedule": name, "t": t, "alpha_bar": float(schedule.alphas_cumprod[t]), "log_snr": float(log_snr[t]),
                "correlation": correlation(x0, x_t),
                "accuracy": class_accuracy(x_t, labels, classifier, check_range=False) if classifier is not None else float("nan"),
                "mean": float(x_t.mean()), "std": float(x_t.std()),
                "ks": ks_to_normal(x_t, generator=generator), "sliced_w2": sliced_w2_to_normal(x_t, generator=generator),
            })
    table = pd.DataFrame(rows)
    if classifier is not None:
        table.attrs["chance"] = 1.0 / int(getattr(classifier, "num_classes", int(labels.max()) + 1))
    return table


def structure_horizon(table: pd.DataFrame, correlation_below: float = 0.1, accuracy_margin: float = 0.05,
                      ks_below: float = 0.02, chance: float | None = None) -> pd.DataFrame:
    """Per schedule, the first measured t at which the structure is gone by each measure.

    - ``correlation``: first t with correlation(x_0, x_t) < ``correlation_below``;
    - ``accuracy``: first t with accuracy <= chance + ``accuracy_margin`` (skipped without accuracies);
    - ``ks``: first t with KS statistic < ``ks_below`` (the pooled values look like N(0, 1)).

    Args:
        table: output of :func:`structure_table`.
        correlation_below, accuracy_margin, ks_below: thresholds.
        chance: chance accuracy; default ``table.attrs["chance"]``.

    Returns:
        DataFrame indexed by schedule with columns ``correlation, accuracy, ks`` holding t (int), or
        <NA> when the threshold is never crossed on the grid (the schedule never destroys the structure).
    """
    chance = table.attrs.get("chance") if chance is None else chance
    tests = {"correlation": lambda r: r["correlation"] < correlation_below,
             "ks": lambda r: r["ks"] < ks_below}
    if chance is not None and table["accuracy"].notna().any():
        tests["accuracy"] = lambda r: r["accuracy"] <= chance + accuracy_margin
    out = {}
    for name, rows in table.sort_values("t").groupby("schedule", sort=False):
        out[name] = {key: next((int(r["t"]) for _, r in rows.iterrows() if test(r)), pd.NA) for key, test in tests.items()}
    result = pd.DataFrame.from_dict(out, orient="index").astype("Int64")
    result.index.name = "schedule"
    return result[[c for c in ("correlation", "accuracy", "ks") if c in result.columns]]


def exact_correlation(alphas_cumprod, data_std: float) -> np.ndarray:
    """The correlation between x_0 and x_t = sqrt(a) x_0 + sqrt(1 - a) eps at every t, computed exactly.

    With independent noise the population Pearson correlation over all values is
    sqrt(a) s / sqrt(a s^2 + 1 - a), where a = alpha_bar_t and s the standard deviation of the values of
    x_0: what :func:`correlation` measures on a sample, without its sampling noise.

    Args:
        alphas_cumprod: alpha_bar_0..alpha_bar_{T-1}, 1-D array-like of numbers in [0, 1].
        data_std: s > 0 (e.g. :func:`data_std` of the digits).

    Returns:
        float64 array of the same length, values in [0, 1].

    Raises:
        ValueError: a value of alphas_cumprod outside [0, 1] or not finite, or data_std <= 0.
    """
    a = np.asarray(alphas_cumprod, dtype=np.float64)
    if a.ndim != 1 or not np.isfinite(a).all() or (a < 0).any() or (a > 1).any():
        raise ValueError(f"alphas_cumprod must be a 1-D array of finite values in [0, 1]; got shape {a.shape}, "
                         f"min {np.nanmin(a) if a.size else 'n/a'}, max {np.nanmax(a) if a.size else 'n/a'}")
    if not np.isfinite(data_std) or data_std <= 0:
        raise ValueError(f"data_std must be a finite number > 0; got {data_std!r}")
    signal = np.sqrt(a) * data_std
    return signal / np.sqrt(a * data_std ** 2 + (1.0 - a))


def exact_structure_horizon(alphas_cumprod, data_std: float, correlation_below: float = 0.1) -> int:
    """The first t (0-based, every t, no grid) at which :func:`exact_correlation` drops below
    ``correlation_below``; T = len(alphas_cumprod) when it never does. Raises ValueError as it does."""
    below = np.nonzero(exact_correlation(alphas_cumprod, data_std) < correlation_below)[0]
    return int(below[0]) if len(below) else len(np.asarray(alphas_cumprod))


def library_schedules() -> list[str]:
    """Names of the schedules the library itself registers (:mod:`diffusion_lib.schedules`), without
    those registered elsewhere (the homework's, a notebook's)."""
    from .. import schedules

    return sorted(name for name, fn in schedules._SCHEDULES.items()
                  if getattr(fn, "__module__", None) == schedules.__name__)


@lru_cache(maxsize=None)
def data_std(name: str = "digits") -> float:
    """Standard deviation of all values of a bundled data set scaled to [-1, 1] (population, float64).
    Computed once per process (the bundled data does not change)."""
    from ..data import load_dataset

    pixels = load_dataset(name).pixels.double() / 127.5 - 1.0
    return float(pixels.std(unbiased=False))


def schedule_summary(schedules: Mapping[str, NoiseSchedule]) -> pd.DataFrame:
    """A table of each schedule's key numbers.

    Columns: ``beta_min, beta_max``; ``alpha_bar`` at 25 %, 50 %, 75 % and 100 % of T; ``t_snr_1``, the first t
    whose SNR = alpha_bar / (1 - alpha_bar) drops below 1 (half signal, half noise variance); ``final_log_snr``
    (very negative = x_T is pure noise; Lin et al. 2024 argue it should be -inf).

    Returns:
        DataFrame indexed by schedule name.
    """
    rows = {}
    for name, s in schedules.items():
        T, abar = s.num_train_timesteps, s.alphas_cumprod.double().cpu()
        below = torch.nonzero(s.log_snr().cpu() < 0)
        rows[name] = {"beta_min": float(s.betas.min()), "beta_max": float(s.betas.max()),
                      **{f"alpha_bar@{p}%": float(abar[min(T - 1, round(p / 100 * T) - 1)]) for p in (25, 50, 75, 100)},
                      "t_snr_1": int(below[0]) if len(below) else pd.NA,
                      "final_log_snr": float(s.log_snr()[-1])}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "schedule"
    return table


def _cpu(generator: torch.Generator | None) -> torch.Generator | None:
    """A CPU generator: ``generator`` itself when it lives on the CPU, else a new one seeded from it."""
    if generator is None or generator.device.type == "cpu":
        return generator
    return torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator, device=generator.device)))
