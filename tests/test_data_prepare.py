"""Cleaning, mode conversion, cropping, resizing, splitting and caching on a messy folder."""

import os
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from diffusion_lib.data import clean_folder, crop_box, load_dataset, resize_pixels, split_dataset, to_channels
from diffusion_lib.data import prepare


def _noise(h, w, c=3, seed=0):
    shape = (h, w) if c == 1 else (h, w, c)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """A class-folder layout with every problem the cleaner must handle.

    Returns (root, expected drops {relative path: reason}, expected kept {relative path: class}).
    """
    root = tmp_path_factory.mktemp("messy")
    (root / "cats").mkdir()
    (root / "dogs" / "nested" / "deeper").mkdir(parents=True)
    kept, drops = {}, {}

    def keep(rel, img, cls, **save):
        img.save(root / rel, **save)
        kept[rel] = cls

    keep("cats/rgb_odd.png", Image.fromarray(_noise(23, 37, seed=1)), "cats")
    keep("cats/gray.png", Image.fromarray(_noise(20, 20, 1, seed=2)), "cats")
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, 8:, 3] = 255  # left half transparent
    keep("cats/rgba.png", Image.fromarray(rgba, "RGBA"), "cats")
    pal = Image.fromarray(np.repeat(np.arange(2, dtype=np.uint8), 8)[None].repeat(16, 0), "P")
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    keep("cats/palette.png", pal, "cats", transparency=1)
    keep("dogs/cmyk.tif", Image.new("CMYK", (18, 12), (0, 255, 255, 0)), "dogs")
    keep("dogs/nested/deeper/i16.png", Image.fromarray(np.full((12, 12), 65535, np.uint16)), "dogs")
    keep("dogs/nested/portrait.jpg", Image.fromarray(_noise(40, 10, seed=3)), "dogs")
    # problems
    Image.fromarray(_noise(23, 37, seed=1)).save(root / "dogs/copy_of_rgb_odd.bmp")  # same pixels, other format
    drops["dogs/copy_of_rgb_odd.bmp"] = "duplicate"
    Image.fromarray(_noise(4, 30, seed=4)).save(root / "cats/tiny.png")
    drops["cats/tiny.png"] = "too_small"
    good = (root / "cats/rgb_odd.png").read_bytes()
    (root / "cats/truncated.png").write_bytes(good[: len(good) // 2])
    drops["cats/truncated.png"] = "unreadable"
    (root / "dogs/garbage.jpg").write_bytes(os.urandom(300))
    drops["dogs/garbage.jpg"] = "unreadable"
    (root / "dogs/empty.png").write_bytes(b"")
    drops["dogs/empty.png"] = "unreadable"
    (root / "dogs/notes.txt").write_text("not an image")
    drops["dogs/notes.txt"] = "not_an_image"
    Image.fromarray(_noise(20, 20, seed=5)).save(root / "stray.png")
    drops["stray.png"] = "outside_class_folder"
    (root / ".DS_Store").write_bytes(b"\0\0")  # hidden: ignored, not reported
    return root, drops, kept


def _rel(root, paths):
    return [os.path.relpath(p, root).replace(os.sep, "/") for p in paths]


def test_clean_folder_drops_exactly_what_it_should_and_says_why(messy):
    root, drops, kept = messy
    kept_table, report = clean_folder(root, min_size=8, progress=False)
    assert list(report.columns) == ["path", "reason", "detail"]
    assert dict(zip(_rel(root, report["path"]), report["reason"])) == drops
    assert dict(zip(_rel(root, kept_table["path"]), kept_table["class_name"])) == kept
    detail = report.set_index(report["path"].map(lambda p: os.path.relpath(p, root)))["detail"]
    assert "rgb_odd.png" in detail["dogs/copy_of_rgb_odd.bmp"]
    assert "30x4" in detail["cats/tiny.png"]
    modes = dict(zip(_rel(root, kept_table["path"]), kept_table["mode"]))
    assert modes["cats/palette.png"] == "P" and modes["dogs/cmyk.tif"] == "CMYK" and modes["cats/rgba.png"] == "RGBA"


def test_image_folder_prepares_shape_range_labels_and_report(messy):
    root, drops, kept = messy
    ds = load_dataset("image_folder", root=root, image_size=16, progress=False)
    assert ds.pixels.shape == (len(kept), 16, 16, 3) and ds.pixels.dtype == torch.uint8
    assert ds.class_names == ["cats", "dogs"]
    expected = [0 if c == "cats" else 1 for _, c in sorted(kept.items())]
    assert ds.labels.tolist() == expected
    x, y = ds.get_batch(torch.arange(len(ds)))
    assert x.shape == (len(kept), 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert sorted(ds.report["reason"]) == sorted(drops.values())
    gray = load_dataset("image_folder", root=root, image_size=8, channels=1, progress=False)
    assert gray.pixels.shape == (len(kept), 8, 8, 1)
    with pytest.warns(UserWarning, match="dogs"):  # no dog image is big enough: the class goes
        bigger = load_dataset("image_folder", root=root, image_size=8, min_size=21, progress=False)
    # only the 37x23 image has both sides >= 21; the 6 others join the 30x4 one as too small
    assert len(bigger) == 1 and (bigger.report["reason"] == "too_small").sum() == 7


def test_mode_conversions():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, 2:, 3] = 255
    out = np.asarray(to_channels(Image.fromarray(rgba, "RGBA"), 3))
    assert (out[:, :2] == 255).all()  # transparent -> white background, not the hidden red
    assert (out[:, 2:] == [200, 0, 0]).all()
    black = np.asarray(to_channels(Image.fromarray(rgba, "RGBA"), 3, background=(0, 0, 0)))
    assert (black[:, :2] == 0).all()
    assert np.asarray(to_channels(Image.new("CMYK", (2, 2), (0, 255, 255, 0)), 3)).tolist()[0][0] == [255, 0, 0]
    assert (np.asarray(to_channels(Image.fromarray(np.full((3, 3), 65535, np.uint16)), 1)) == 255).all()
    gray = Image.fromarray(np.arange(9, dtype=np.uint8).reshape(3, 3) * 20)
    rgb = np.asarray(to_channels(gray, 3))
    assert (rgb == np.asarray(gray)[..., None]).all()
    assert np.asarray(to_channels(Image.fromarray(np.array([[True, False]])), 1)).tolist() == [[255, 0]]
    with pytest.raises(ValueError, match="channels"):
        to_channels(gray, 2)


def test_crop_box_and_resize():
    assert crop_box(30, 20, "center") == (5, 0, 25, 20)
    assert crop_box(20, 30, "center") == (0, 5, 20, 25)
    assert crop_box(178, 218, "celeba") == (25, 57, 153, 185)  # 128x128 around (89, 121)
    with pytest.raises(ValueError, match="crop"):
        crop_box(10, 10, "random")
    const = torch.full((2, 20, 20, 3), 77, dtype=torch.uint8)
    assert (resize_pixels(const, 7) == 77).all()
    stripes = torch.zeros((1, 32, 32, 1), dtype=torch.uint8)
    stripes[:, :, ::2] = 255  # finest possible detail: antialiasing must average it to mid-gray
    small = resize_pixels(stripes, 8)
    assert small.shape == (1, 8, 8, 1)
    assert (small[:, :, 1:-1].float() - 127.5).abs().max() <= 1  # interior: the exact average
    assert (small.float() - 127.5).abs().max() <= 12  # edge columns: one-sided filter support
    with pytest.raises(ValueError, match="image_size"):
        resize_pixels(const, 0)


def test_split_is_seeded_disjoint_complete_and_stratified():
    ds = load_dataset("digits")
    train, val = split_dataset(ds, val_fraction=0.2, seed=3)
    assert len(train) + len(val) == len(ds)
    counts = torch.bincount(ds.labels, minlength=10)
    assert torch.bincount(val.labels, minlength=10).tolist() == [int(round(c * 0.2)) for c in counts.tolist()]
    train2, val2 = split_dataset(ds, val_fraction=0.2, seed=3)
    assert torch.equal(val.pixels, val2.pixels)
    _, val3 = split_dataset(ds, val_fraction=0.2, seed=4)
    assert not torch.equal(val.pixels, val3.pixels)
    # disjoint and complete: every image appears exactly once
    rows = lambda d: sorted(map(bytes, d.pixels.flatten(1).numpy()))  # noqa: E731
    assert sorted(rows(train) + rows(val)) == rows(ds)
    for bad in (1.0, -0.1, "0.1"):
        with pytest.raises(ValueError, match="val_fraction"):
            split_dataset(ds, bad)
    faces = load_dataset("lfw_faces", faces_only=True)
    tr, va = split_dataset(faces, 0.1, seed=0)
    assert (len(tr), len(va)) == (90, 10) and va.labels is None


def test_cache_is_reused_and_invalidated(messy, tmp_path, monkeypatch):
    root, _, kept = messy
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(3):
        Image.fromarray(_noise(12, 12, seed=10 + i)).save(src / f"{i}.png")
    cache = tmp_path / "cache"
    first = load_dataset("image_folder", root=src, image_size=8, cache_dir=cache, progress=False)
    files = sorted(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt"

    calls = []
    original = prepare.process_files
    monkeypatch.setattr("diffusion_lib.data.sources.process_files",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    again = load_dataset("image_folder", root=src, image_size=8, cache_dir=cache, progress=True)  # not hashed
    assert calls == [] and torch.equal(again.pixels, first.pixels)  # loaded, not rebuilt
    assert list(again.report.columns) == ["path", "reason", "detail"]

    load_dataset("image_folder", root=src, image_size=6, cache_dir=cache, progress=False)  # setting changed
    assert calls == [1] and len(list(cache.iterdir())) == 2
    Image.fromarray(_noise(12, 12, seed=20)).save(src / "3.png")  # source changed
    grown = load_dataset("image_folder", root=src, image_size=8, cache_dir=cache, progress=False)
    assert calls == [1, 1] and len(grown) == 4 and len(list(cache.iterdir())) == 3

    newest = max(cache.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    newest.write_bytes(b"corrupt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rebuilt = load_dataset("image_folder", root=src, image_size=8, cache_dir=cache, progress=False)
    assert any("unreadable data cache" in str(w.message) for w in caught)
    assert calls == [1, 1, 1] and len(rebuilt) == 4
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave no temp files
    digits = load_dataset("digits", image_size=12, cache_dir=cache)
    assert torch.equal(load_dataset("digits", image_size=12, cache_dir=cache).labels, digits.labels)


def test_report_is_a_dataframe_per_reason(messy):
    root, drops, _ = messy
    _, report = clean_folder(root, progress=False)
    counts = report["reason"].value_counts().to_dict()
    assert counts == pd.Series(list(drops.values())).value_counts().to_dict()


def test_demo_folder_cleaning_finds_exactly_the_planted_problems(tmp_path):
    from diffusion_lib.data import write_demo_folder
    from diffusion_lib.data.analysis import plot_before_after

    root = tmp_path / "demo"
    planted = write_demo_folder(root, n_faces=5, n_digits=3)
    kept, report = clean_folder(root, min_size=16, progress=False)
    problems = {"duplicate", "unreadable", "not_an_image", "outside_class_folder", "too_small"}
    expected = planted[planted["planted"].isin(problems)]
    assert dict(zip(report["path"], report["reason"])) == dict(zip(expected["path"], expected["planted"]))
    modes = dict(zip(kept["path"].map(lambda p: p.rsplit("/", 1)[-1]), kept["mode"]))
    assert (modes["coffee_cmyk.jpg"], modes["chelsea_rgba.png"], modes["astronaut_palette.gif"]) == ("CMYK", "RGBA", "P")
    assert modes["moon_mirrored_16bit.png"].startswith("I")
    with pytest.warns(UserWarning, match="digits"):  # every digit is too small: the class disappears
        ds = load_dataset("image_folder", root=root, image_size=16, min_size=16, progress=False)
    assert ds.class_names == ["faces", "photos"] and len(ds) == len(kept)
    assert ds.files == list(kept["path"]) and ds.subset(torch.tensor([2])).files == [ds.files[2]]
    assert len(plot_before_after(ds, n=3).axes) == 6
    with pytest.raises(ValueError, match="not empty"):
        write_demo_folder(root)
    write_demo_folder(root, n_faces=1, n_digits=0, overwrite=True)  # an earlier demo folder may be replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        write_demo_folder(tmp_path / "mine", overwrite=True)  # never deletes a folder it did not write
    assert (tmp_path / "mine" / "precious.txt").exists()


def test_cache_is_a_data_cache_artifact_and_other_kinds_are_rebuilt(tmp_path):
    from diffusion_lib.artifacts import load_artifact, save_artifact

    ds = load_dataset("digits", image_size=8)
    path = tmp_path / "digits.pt"
    prepare.save_cache(path, ds)
    payload = load_artifact(path, "data_cache", required=("pixels", "labels", "info"))
    assert torch.equal(payload["pixels"], ds.pixels) and torch.equal(payload["labels"], ds.labels)
    again = prepare.load_cache(path)
    assert torch.equal(again.pixels, ds.pixels) and again.class_names == ds.class_names and again.info == ds.info
    save_artifact(path, "checkpoint", {"pixels": ds.pixels})  # a valid artifact, but not a data cache
    with pytest.warns(UserWarning, match="unreadable data cache .*'checkpoint' file"):
        assert prepare.load_cache(path) is None
    assert prepare.load_cache(tmp_path / "missing.pt") is None
