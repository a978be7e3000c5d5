"""Structure measures of the forward process: correlation, clean-classifier accuracy, distance from N(0, I)."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from diffusion_lib import NoiseSchedule, schedules
from diffusion_lib.experiments.forward import (MEASURES, correlation, ks_to_normal, schedule_summary, sliced_w2_to_normal,
                                               structure_horizon, structure_table, timestep_grid)


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


class SignClassifier(nn.Module):
    """Class 1 if the image's mean is positive, else 0: perfect on the two-class data below."""

    num_classes = 2

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        mean = x.mean(dim=(1, 2, 3))
        return torch.stack([-self.gain * mean, self.gain * mean], dim=1)


@pytest.fixture
def two_class_data():
    labels = torch.arange(64) % 2
    x0 = torch.where(labels.view(-1, 1, 1, 1) == 1, 0.8, -0.8) * torch.ones(64, 1, 8, 8)
    return x0 + 0.1 * torch.randn(x0.shape, generator=_generator(1)), labels


def test_correlation_ks_and_sliced_w2_on_known_distributions():
    noise = torch.randn(400, 1, 8, 8, generator=_generator())
    other = torch.randn(400, 1, 8, 8, generator=_generator(1))
    assert correlation(noise, noise) == pytest.approx(1.0)
    assert correlation(noise, -2 * noise) == pytest.approx(-1.0)
    assert abs(correlation(noise, other)) < 0.03
    assert ks_to_normal(noise, generator=_generator()) < 0.02
    assert ks_to_normal(noise + 0.5, generator=_generator()) > 0.15  # a shift of half a standard deviation
    floor = sliced_w2_to_normal(noise, generator=_generator())
    assert floor < 0.1
    assert sliced_w2_to_normal(noise + 1.0, generator=_generator()) > 0.9  # projections shift by ~ |u . 1| on average
    # correlated pixels: every value N(0, 1), so the per-value tests pass, but the images are not N(0, I)
    same = torch.randn(400, 1, 1, 1, generator=_generator(2)).expand(400, 1, 8, 8)
    assert ks_to_normal(same, generator=_generator()) < 0.1
    assert sliced_w2_to_normal(same, generator=_generator()) > 5 * floor
    with pytest.raises(ValueError, match="at least 2 images"):
        sliced_w2_to_normal(noise[:1])


def test_structure_table_rows_and_limits(two_class_data):
    x0, labels = two_class_data
    scheds = {"linear": NoiseSchedule("linear", 200), "cosine": NoiseSchedule("cosine", 200)}
    table = structure_table(scheds, x0, labels, SignClassifier(), timesteps=[0, 100, 199], seed=3)
    assert list(table.columns) == ["schedule", "t", "alpha_bar", "log_snr", *MEASURES]
    assert len(table) == 6 and table.attrs["chance"] == 0.5
    start = table[table.t == 0]
    assert (start["correlation"] > 0.99).all() and (start["accuracy"] == 1.0).all()
    end = table[table.t == 199]
    assert (end["correlation"].abs() < 0.1).all() and (end["ks"] < 0.05).all()
    assert (end["std"] - 1).abs().max() < 0.05 and end["mean"].abs().max() < 0.05
    lin = table[table.schedule == "linear"].set_index("t")
    assert lin.loc[100, "alpha_bar"] == pytest.approx(float(scheds["linear"].alphas_cumprod[100]))
    # the same seed gives the same table; the noise is shared across schedules at a given t
    again = structure_table(scheds, x0, labels, SignClassifier(), timesteps=[0, 100, 199], seed=3)
    pd.testing.assert_frame_equal(table, again)
    assert table["accuracy"].notna().all()
    assert structure_table(scheds, x0, timesteps=[0])["accuracy"].isna().all()


def test_structure_table_rejects_bad_input(two_class_data):
    x0, labels = two_class_data
    with pytest.raises(ValueError, match="share T"):
        structure_table({"a": NoiseSchedule("linear", 100), "b": NoiseSchedule("linear", 50)}, x0)
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 99\]"):
        structure_table({"a": NoiseSchedule("linear", 100)}, x0, timesteps=[100])
    with pytest.raises(ValueError, match="labels"):
        structure_table({"a": NoiseSchedule("linear", 100)}, x0, classifier=SignClassifier())
    with pytest.raises(ValueError, match="empty"):
        structure_table({}, x0)


def test_structure_horizon_finds_the_first_crossing():
    table = pd.DataFrame({"schedule": ["a"] * 3 + ["b"] * 3, "t": [0, 50, 99] * 2,
                          "correlation": [1.0, 0.05, 0.0, 1.0, 0.5, 0.3],
                          "accuracy": [1.0, 0.6, 0.5, 1.0, 0.9, 0.52], "ks": [0.3, 0.1, 0.01, 0.3, 0.2, 0.1]})
    horizon = structure_horizon(table, chance=0.5)
    assert horizon.loc["a"].tolist() == [50, 99, 99]
    assert horizon.loc["b", "accuracy"] == 99 and pd.isna(horizon.loc["b", "correlation"]) and pd.isna(horizon.loc["b", "ks"])
    assert list(structure_horizon(table).columns) == ["correlation", "ks"]  # no chance known: no accuracy column


def test_all_schedules_and_summary():
    name = "test_forward_analysis_constant"
    schedules.register_schedule(name)(lambda T: np.full(T, 3.0 / T))
    try:
        scheds = schedules.all_schedules(100)
        assert list(scheds) == schedules.available_schedules() and name in scheds
        summary = schedule_summary(scheds)
        assert summary.loc[name, "alpha_bar@100%"] == pytest.approx(0.97 ** 100, rel=1e-5)
        # jsd: alpha_bar_t = (T - t) / T (index 0 = paper's t = 1), so the SNR falls below 1 at index T/2
        assert summary.loc["jsd", "t_snr_1"] == 50
        assert summary.loc["linear", "final_log_snr"] == pytest.approx(float(scheds["linear"].log_snr()[-1]))
    finally:
        schedules._SCHEDULES.pop(name)
    assert timestep_grid(1000, 5) == [0, 250, 500, 749, 999]
    assert timestep_grid(3, 10) == [0, 1, 2]
