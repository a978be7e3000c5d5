"""Figures and files of viz.py: forward strips, schedule and structure plots, GIFs, image tables, sweeps."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from diffusion_lib import NoiseSchedule, schedules, viz
from diffusion_lib.diffusion import q_sample


@pytest.fixture
def two_schedules():
    return {"linear": NoiseSchedule("linear", 100), "cosine": NoiseSchedule("cosine", 100)}


def _lines(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def test_plot_schedules_shows_every_registered_schedule_including_a_new_one():
    name = "test_viz_constant"
    schedules.register_schedule(name)(lambda T: np.full(T, 0.01))
    try:
        fig = viz.plot_schedules(num_train_timesteps=50)
        ax_beta, ax_abar, ax_snr = fig.axes
        for ax in fig.axes:
            assert set(_lines(ax)) >= set(schedules.available_schedules())
        abar = _lines(ax_abar)[name].get_ydata()
        np.testing.assert_allclose(abar, 0.99 ** np.arange(1, 51), rtol=1e-5)
        snr = _lines(ax_snr)[name].get_ydata()
        np.testing.assert_allclose(snr, np.log(abar / (1 - abar)), rtol=1e-4)
        assert ax_beta.get_yscale() == "log"
    finally:
        schedules._SCHEDULES.pop(name)


def test_forward_strip_uses_the_same_noise_for_every_schedule(two_schedules):
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    fig = viz.forward_strip(two_schedules, x0, [0, 50, 99], noise=noise)
    assert len(fig.axes) == 2 * 3
    assert [ax.get_title() for ax in fig.axes[:3]] == ["t = 0", "t = 50", "t = 99"]
    # the cell (cosine, t = 50) shows exactly q_sample with the given noise, clipped and quantised
    shown = fig.axes[4].get_images()[0].get_array()
    x_t = q_sample(two_schedules["cosine"], x0, torch.full((2,), 50), noise)
    assert np.array_equal(np.asarray(shown), viz.grid_image(x_t.clamp(-1, 1), nrow=2))
    with pytest.raises(ValueError, match="timesteps must lie in"):
        viz.forward_strip(two_schedules, x0, [100])


def test_image_rows_and_value_ranges():
    rows = {"a": torch.zeros(3, 1, 8, 8), "noise": torch.full((3, 1, 8, 8), 1.5)}
    fig = viz.image_rows(rows, ["x", "y", "z"], value_ranges={"noise": (-3, 3)})
    assert len(fig.axes) == 6
    cell = np.asarray(fig.axes[3].get_images()[0].get_array())
    assert cell[4, 4] == 191  # 1.5 on [-3, 3] is 3/4 of the way to white: round(0.75 * 255)
    assert np.asarray(fig.axes[0].get_images()[0].get_array())[4, 4] == 128  # 0 on [-1, 1] is mid-grey
    with pytest.raises(ValueError, match="same number of images"):
        viz.image_rows({"a": torch.zeros(2, 1, 8, 8), "b": torch.zeros(3, 1, 8, 8)})
    with pytest.raises(ValueError, match="column_titles"):
        viz.image_rows(rows, ["only one"])
    with pytest.raises(ValueError, match="value_range"):
        viz.image_rows(rows, value_ranges={"a": (1, -1)})
    stacked = viz.image_rows({"r": torch.zeros(2, 4, 1, 8, 8)}, cell_nrow=1)  # (K, N, ...) cells, stacked
    assert np.asarray(stacked.axes[0].get_images()[0].get_array()).shape[:2] == (4 * 9 + 1, 9 + 1)


def test_save_gif_frames_size_and_atomicity(tmp_path):
    frames = torch.linspace(-1, 1, 4).view(4, 1, 1, 1, 1).expand(4, 3, 1, 8, 8)
    path = viz.save_gif(frames, tmp_path / "anim.gif", nrow=3, duration_ms=50, hold_last_ms=500, scale=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anim.gif"]  # no temporary file left behind
    with Image.open(path) as gif:
        assert gif.n_frames == 4
        assert gif.size == (3 * (3 * 9 + 1), 3 * (9 + 1))
        gif.seek(3)
        assert gif.info["duration"] == 500
        assert np.asarray(gif.convert("L"))[5, 5] == 255  # last frame is white (+1)
    with pytest.raises(ValueError, match="frames must be"):
        viz.save_gif(torch.zeros(3, 1, 8, 8), tmp_path / "bad.gif")


def test_plot_structure_and_guidance_sweep():
    table = pd.DataFrame({"schedule": ["a", "a", "b", "b"], "t": [0, 9, 0, 9], "log_snr": [5.0, -5.0, 4.0, -6.0],
                          "correlation": [1.0, 0.1, 1.0, 0.2], "accuracy": [1.0, 0.1, 0.9, 0.2]})
    table.attrs["chance"] = 0.1
    fig = viz.plot_structure(table, measures=("correlation", "accuracy"))
    assert set(_lines(fig.axes[1])) == {"a", "b", "chance"}
    assert viz.plot_structure(table, measures=("correlation",), x="log_snr").axes[0].xaxis_inverted()
    with pytest.raises(ValueError, match="not in the table"):
        viz.plot_structure(table, measures=("ks",))

    sweep = pd.DataFrame({"method": ["cfg"] * 3 + ["clf"] * 2, "scale": [0, 1, 3, 0, 5],
                          "class_accuracy": [0.1, 0.5, 0.9, 0.1, 0.6], "diversity": [0.8, 0.7, 0.5, 0.8, 0.75]})
    fig = viz.plot_guidance_sweep(sweep, metrics=("class_accuracy", "diversity"))
    assert len(fig.axes) == 3  # two metrics against the scale, and the trade-off
    np.testing.assert_allclose(_lines(fig.axes[2])["cfg"].get_xdata(), [0.8, 0.7, 0.5])
    with pytest.raises(ValueError, match="not in the table"):
        viz.plot_guidance_sweep(sweep, metrics=("fid",))


def test_class_grid_and_image_figure(tmp_path):
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    images = torch.stack([torch.full((1, 8, 8), float(i) / 6) for i in range(6)])
    fig = viz.class_grid({"w = 0": images, "w = 3": -images}, labels, ["zero", "one"], per_class=2)
    assert len(fig.axes) == 4 and [ax.get_title() for ax in fig.axes[:2]] == ["w = 0", "w = 3"]
    assert fig.axes[2].get_ylabel() == "one"
    with pytest.raises(ValueError, match="per_class"):
        viz.class_grid({"w": images}, labels, per_class=4)
    with pytest.raises(ValueError, match="labels"):
        viz.class_grid({"w": images[:5]}, labels)
    ordered, per_row = viz.by_class(images, labels)
    fig = viz.image_figure(ordered, nrow=per_row, row_labels=["zero", "one"], title="by class")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["zero", "one"]
    path = viz.save_figure(fig, tmp_path / "grid.png")
    with Image.open(path) as png:
        assert png.format == "PNG"
    with pytest.raises(ValueError, match="row_labels"):
        viz.image_figure(ordered, nrow=per_row, row_labels=["only one"])


def test_plot_sweep_panels_log_ticks_and_tradeoff():
    table = pd.DataFrame({"sampler": ["ddim"] * 3 + ["ddpm"] * 3, "steps": [5, 10, 25] * 2,
                          "fid": [9.0, 5.0, 4.0, 20.0, 12.0, 6.0], "sec_per_image": [0.1, 0.2, 0.5, 0.1, 0.2, 0.5]})
    fig = viz.plot_sweep(table, "steps", ["fid"], "sampler", xlabel="sampling steps", log_x=True,
                         tradeoff=("sec_per_image", "fid"), tradeoff_log_x=True)
    assert len(fig.axes) == 2 and fig.axes[1].get_xscale() == "log"
    panel, tradeoff = fig.axes
    assert panel.get_xscale() == "log" and panel.get_title() == "fid vs sampling steps"
    assert [t.get_text() for t in panel.get_xticklabels()] == ["5", "10", "25"]
    np.testing.assert_allclose(_lines(panel)["ddpm"].get_ydata(), [20.0, 12.0, 6.0])
    np.testing.assert_allclose(_lines(tradeoff)["ddim"].get_xdata(), [0.1, 0.2, 0.5])
    assert sorted(t.get_text() for t in tradeoff.texts)[:3] == ["10", "10", "25"]  # points labelled by steps
    single = viz.plot_sweep(table[table["sampler"] == "ddim"], "steps", ["fid", "sec_per_image"])
    assert len(single.axes) == 2 and single.axes[0].get_legend() is None
    assert single.axes[0].get_xscale() == "linear"
    with pytest.raises(ValueError, match="not in the table"):
        viz.plot_sweep(table, "steps", ["kid_mean"])
    with pytest.raises(ValueError, match="metrics is empty"):
        viz.plot_sweep(table, "steps", [])


def test_plot_training_log_and_labelled_rows(tmp_path):
    log = pd.DataFrame({"step": [10, 20, 30], "loss": [3.0, 2.0, 1.5], "recon": [2.5, 1.5, 1.0], "kl": [0.5, 0.5, 0.5]})
    log.to_csv(tmp_path / "log.csv", index=False)
    fig = viz.plot_training_log(tmp_path / "log.csv", ["loss", "recon", "kl"], title="loss = recon + kl")
    assert [ax.get_title() for ax in fig.axes] == ["loss", "recon", "kl"]
    np.testing.assert_allclose(fig.axes[1].get_lines()[0].get_ydata(), [2.5, 1.5, 1.0])
    with pytest.raises(ValueError, match="not in the log"):
        viz.plot_training_log(log, ["fid"])
    rows = {"ddim 10": torch.zeros(4, 1, 8, 8), "ddpm 10": torch.ones(4, 1, 8, 8)}
    fig = viz.labelled_rows(rows, title="same x_T")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["ddim 10", "ddpm 10"]
    assert fig.axes[0].get_title() == "same x_T"
    long_title = "same x_T, diffusers schedulers driving our UNet (name, steps)"
    assert viz.labelled_rows(rows, title=long_title).get_figwidth() >= 0.085 * len(long_title)
    with pytest.raises(ValueError, match="same number"):
        viz.labelled_rows({"a": torch.zeros(4, 1, 8, 8), "b": torch.zeros(3, 1, 8, 8)})
