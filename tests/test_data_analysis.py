"""The per-image analysis table, its summaries and the plots, on images with known statistics."""

import os

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from diffusion_lib.data import gallery_images, load_dataset
from diffusion_lib.data.analysis import (analyse_dataset, analyse_folder, analyse_images, image_stats,
                                         plot_channel_histograms, plot_class_balance, plot_samples_per_class,
                                         plot_sizes, summarize)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("known")
    (root / "red").mkdir()
    (root / "gray").mkdir()
    red = np.zeros((10, 20, 3), np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(root / "red/a.png")
    Image.fromarray(red).save(root / "red/a_again.png")  # exact duplicate
    Image.fromarray(np.full((30, 15), 100, np.uint8)).save(root / "gray/flat.png")
    board = ((np.arange(16)[:, None] + np.arange(16)[None]) % 2 * 255).astype(np.uint8)
    Image.fromarray(board).save(root / "gray/board.png")
    (root / "gray/broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    return root


def test_table_values_are_right(folder):
    t = analyse_folder(folder, progress=False)
    t.index = [os.path.relpath(p, folder).replace(os.sep, "/") for p in t["path"]]
    assert sorted(t.index) == ["gray/board.png", "gray/broken.jpg", "gray/flat.png", "red/a.png", "red/a_again.png"]
    assert t.loc["gray/broken.jpg", "readable"] == False and "Error" in t.loc["gray/broken.jpg", "error"]  # noqa: E712
    a = t.loc["red/a.png"]
    assert (a["width"], a["height"], a["aspect_ratio"], a["mode"], a["channels"]) == (20, 10, 2.0, "RGB", 3)
    assert (a["mean_r"], a["mean_g"], a["mean_b"], a["std_r"]) == (255, 0, 0, 0)
    assert a["brightness"] == pytest.approx(0.299 * 255)
    assert a["file_size"] == os.path.getsize(folder / "red/a.png") and a["class_name"] == "red"
    assert t.loc["red/a_again.png", "hash"] == a["hash"] != t.loc["gray/flat.png", "hash"]
    flat, board = t.loc["gray/flat.png"], t.loc["gray/board.png"]
    assert (flat["mode"], flat["channels"], flat["brightness"], flat["sharpness"]) == ("L", 1, 100, 0)
    assert flat["aspect_ratio"] == pytest.approx(0.5)
    assert board["mean_g"] == pytest.approx(127.5) and board["std_g"] == pytest.approx(127.5)
    assert board["sharpness"] > 1e5  # a checkerboard is as sharp as it gets


def test_summaries_overall_and_per_class(folder):
    t = analyse_folder(folder, progress=False)
    s = summarize(t)
    assert s.loc["all", "images"] == 5 and s.loc["all", "unreadable"] == 1 and s.loc["all", "duplicates"] == 1
    assert s.loc["all", "width_max"] == 20 and s.loc["all", "height_min"] == 10
    assert s.loc["all", "total_mb"] == pytest.approx(t["file_size"].sum() / 1e6)
    per = summarize(t, by="class_name")
    assert per.loc["red", "images"] == 2 and per.loc["gray", "images"] == 3
    assert per.loc["red", "mean_r"] == 255 and per.loc["gray", "unreadable"] == 1
    with pytest.raises(ValueError, match="column"):
        summarize(t, by="nope")


def test_sampling_is_seeded():
    ds = load_dataset("digits")
    a = analyse_dataset(ds, sample=50, seed=1, progress=False)
    b = analyse_dataset(ds, sample=50, seed=1, progress=False)
    assert len(a) == 50 and a["index"].tolist() == b["index"].tolist()
    assert a["index"].tolist() != analyse_dataset(ds, sample=50, seed=2, progress=False)["index"].tolist()
    with pytest.raises(ValueError, match="sample"):
        analyse_dataset(ds, sample=0)


def test_dataset_table_matches_per_image_stats():
    ds = load_dataset("gallery", image_size=32)
    t = analyse_dataset(ds, progress=False)
    assert len(t) == len(ds) and (t["mode"] == "RGB").all()
    ref = image_stats(Image.fromarray(ds.pixels[3].numpy()))
    for key in ("mean_r", "std_b", "brightness", "sharpness"):
        assert t.loc[3, key] == pytest.approx(ref[key])
    assert t.loc[3, "hash"] == ref["hash"]
    ds = load_dataset("digits")
    doubled = ds.subset(torch.cat([torch.arange(len(ds)), torch.tensor([0, 5, 5])]))
    digits = analyse_dataset(doubled, progress=False)
    counts = torch.bincount(doubled.labels).tolist()
    assert digits["class_name"].value_counts().sort_index().tolist() == counts
    unique_rows = len(torch.unique(doubled.pixels.flatten(1), dim=0))
    assert summarize(digits)["duplicates"].iloc[0] == len(doubled) - unique_rows >= 3


def test_gallery_varies_in_size_and_mode():
    t = analyse_images(gallery_images())
    assert len(t) >= 15 and set(t["mode"]) == {"RGB", "L"}
    assert (t["aspect_ratio"] > 1.2).any() and (t["aspect_ratio"] < 0.9).any() and (t["aspect_ratio"] == 1).any()
    assert t["width"].max() >= 1000 and t["file_size"].isna().all()


def test_plots_return_figures(folder):
    t = analyse_folder(folder, progress=False)
    digits = load_dataset("digits")
    figs = [plot_sizes(t), plot_channel_histograms(digits), plot_channel_histograms(gallery_images(), sample=4),
            plot_class_balance(digits), plot_class_balance(t), plot_samples_per_class(digits, per_class=4),
            plot_samples_per_class(load_dataset("lfw_faces", faces_only=True))]
    assert all(isinstance(f, Figure) for f in figs)
    assert len(figs[0].axes) == 2
    assert [p.get_height() for p in figs[3].axes[0].patches] == torch.bincount(digits.labels).tolist()
    with pytest.raises(ValueError, match="unlabeled"):
        plot_class_balance(load_dataset("lfw_faces", faces_only=True))
