"""The source registry, the bundled sources, image folders and .npy arrays."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_lib.data import ImageDataset, SourceInfo, available_sources, load_dataset, register_source


def test_registry_lists_sources_and_rejects_unknown_names():
    names = available_sources()
    for expected in ("digits", "lfw_faces", "gallery", "image_folder", "npy"):
        assert expected in names
    with pytest.raises(ValueError, match="available: .*digits"):
        load_dataset("no_such_source")


@pytest.mark.parametrize("bad", [0, -3, 2.5, "16", True])
def test_bad_image_size_is_rejected(bad):
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("digits", image_size=bad)


def test_digits_native_values_labels_and_info():
    from sklearn.datasets import load_digits

    raw = load_digits()
    ds = load_dataset("digits")
    assert isinstance(ds, ImageDataset)
    assert ds.pixels.shape == (1797, 8, 8, 1) and ds.pixels.dtype == torch.uint8
    assert (ds.image_size, ds.channels, ds.num_classes) == (8, 1, 10)
    # 0 -> 0 and 16 -> 255, linear: white ink on black background
    expected = np.round(raw.images * 255 / 16).astype(np.uint8)
    assert np.array_equal(ds.pixels[..., 0].numpy(), expected)
    assert ds.pixels.max() == 255 and ds.pixels.min() == 0
    corners = ds.pixels[:, [0, 0, -1, -1], [0, -1, 0, -1]].float().mean()
    assert corners < 10 < 128 < ds.pixels.float().quantile(0.9)  # dark background, bright strokes
    assert (ds.pixels == 0).float().mean() > 0.4
    assert torch.equal(ds.labels, torch.from_numpy(raw.target).long())
    assert ds.class_names == [str(d) for d in range(10)]
    assert ds.info.name == "digits" and "CC BY" in ds.info.license and ds.info.citation
    assert ds.info.class_names == tuple(ds.class_names)


def test_digits_resized_batch_and_item():
    ds = load_dataset("digits", image_size=16)
    assert ds.pixels.shape == (1797, 16, 16, 1)
    native = load_dataset("digits")
    # bilinear upsampling keeps the average brightness (within rounding and edge effects)
    assert abs(ds.pixels.float().mean() - native.pixels.float().mean()) < 3
    x, y = ds.get_batch(torch.tensor([0, 5, 1796]))
    assert x.shape == (3, 1, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.min() == -1
    assert torch.equal(y, ds.labels[[0, 5, 1796]])
    image, label = ds[5]
    assert image.shape == (1, 16, 16) and label.dtype == torch.int64 and label.ndim == 0
    assert torch.equal(image, x[1])


def test_lfw_faces_labels_and_faces_only():
    ds = load_dataset("lfw_faces")
    assert ds.pixels.shape == (200, 25, 25, 1)
    assert ds.class_names == ["face", "non-face"]
    assert torch.bincount(ds.labels).tolist() == [100, 100]
    assert ds.labels[:100].eq(0).all()
    faces = load_dataset("lfw_faces", image_size=32, faces_only=True)
    assert faces.pixels.shape == (100, 32, 32, 1) and faces.labels is None and faces.num_classes == 0
    assert faces[0][1].item() == -1
    _, labels = faces.get_batch(torch.arange(4))
    assert labels is None


def test_gallery_needs_a_size_and_is_rgb():
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("gallery")
    ds = load_dataset("gallery", image_size=24)
    assert ds.pixels.shape[1:] == (24, 24, 3) and len(ds) >= 15
    assert ds.labels is None and ds.info.license


def test_register_source_decorator_roundtrip():
    @register_source("test_checkerboard")
    def checkerboard(image_size=None, n=4):
        size = image_size or 4
        board = (torch.arange(size)[:, None] + torch.arange(size)[None]) % 2 * 255
        pixels = board.to(torch.uint8)[None, :, :, None].repeat(n, 1, 1, 1)
        return ImageDataset(pixels, torch.arange(n) % 2, ["a", "b"], SourceInfo(name="test_checkerboard"))

    assert "test_checkerboard" in available_sources()
    ds = load_dataset("test_checkerboard", image_size=6, n=3)
    assert len(ds) == 3 and ds.image_size == 6 and ds.class_names == ["a", "b"]
    with pytest.raises(ValueError, match="source name"):
        register_source("")


def _save(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)


def test_image_folder_class_subfolders_and_flat(tmp_path):
    rng = np.random.default_rng(0)
    for cls, n in (("cats", 3), ("dogs", 2)):
        for i in range(n):
            _save(tmp_path / "labelled" / cls / f"{i}.png", rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    ds = load_dataset("image_folder", root=tmp_path / "labelled", image_size=16)
    assert ds.pixels.shape == (5, 16, 16, 3)
    assert ds.class_names == ["cats", "dogs"] and ds.labels.tolist() == [0, 0, 0, 1, 1]
    for i in range(2):
        _save(tmp_path / "flat" / f"{i}.png", rng.integers(0, 256, (12, 12), dtype=np.uint8))
    flat = load_dataset("image_folder", root=tmp_path / "flat")
    assert flat.pixels.shape == (2, 12, 12, 1) and flat.labels is None  # grayscale kept as 1 channel
    with pytest.raises(ValueError, match="different sizes|not square"):
        load_dataset("image_folder", root=tmp_path / "labelled")
    with pytest.raises(ValueError, match="root"):
        load_dataset("image_folder", root=tmp_path / "missing", image_size=8)


def test_npy_layouts_ranges_and_labels(tmp_path):
    x = np.random.default_rng(1).random((6, 3, 10, 10)).astype(np.float32)  # NCHW in [0, 1]
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.array([7, 3, 3, 7, 9, 3]))
    ds = load_dataset("npy", path=tmp_path / "x.npy", labels_path=tmp_path / "y.npy")
    assert ds.pixels.shape == (6, 10, 10, 3)
    assert np.array_equal(ds.pixels.numpy(), np.round(x.transpose(0, 2, 3, 1) * 255).astype(np.uint8))
    assert ds.class_names == ["3", "7", "9"] and ds.labels.tolist() == [1, 0, 0, 1, 2, 0]
    np.save(tmp_path / "wide.npy", np.zeros((2, 8, 12), dtype=np.uint8))
    with pytest.raises(ValueError, match="not square"):
        load_dataset("npy", path=tmp_path / "wide.npy")
    assert load_dataset("npy", path=tmp_path / "wide.npy", image_size=4).pixels.shape == (2, 4, 4, 1)
    np.save(tmp_path / "short.npy", np.arange(3))
    with pytest.raises(ValueError, match="labels"):
        load_dataset("npy", path=tmp_path / "x.npy", labels_path=tmp_path / "short.npy")
    signed = np.linspace(-1, 1, 2 * 4 * 4).reshape(2, 4, 4)  # floats with negatives: [-1, 1] -> [0, 255]
    np.save(tmp_path / "signed.npy", signed)
    assert load_dataset("npy", path=tmp_path / "signed.npy").pixels[..., 0].numpy().tolist() == \
        np.round((signed + 1) * 127.5).astype(np.uint8).tolist()
    np.save(tmp_path / "ints.npy", np.arange(2 * 4 * 4, dtype=np.int64).reshape(2, 4, 4) * 8)  # [0, 255] as is
    assert load_dataset("npy", path=tmp_path / "ints.npy").pixels.ravel().tolist() == list(range(0, 256, 8))
    np.save(tmp_path / "mask.npy", np.eye(4, dtype=bool)[None])  # bool -> {0, 255}
    assert load_dataset("npy", path=tmp_path / "mask.npy").pixels[0, :, :, 0].numpy().tolist() == (np.eye(4) * 255).tolist()
    np.save(tmp_path / "big.npy", np.full((2, 4, 4), 300.0))
    with pytest.raises(ValueError, match="values"):
        load_dataset("npy", path=tmp_path / "big.npy")
    with pytest.raises(ValueError, match="path"):
        load_dataset("npy")


def test_image_dataset_validates_its_inputs():
    ok = torch.zeros((2, 4, 4, 1), dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(ok.float())
    with pytest.raises(ValueError, match="square"):
        ImageDataset(torch.zeros((2, 4, 5, 1), dtype=torch.uint8))
    with pytest.raises(ValueError, match="channels"):
        ImageDataset(torch.zeros((2, 4, 4, 2), dtype=torch.uint8))
    with pytest.raises(ValueError, match="out of range"):
        ImageDataset(ok, torch.tensor([0, 2]), ["a", "b"])
    with pytest.raises(ValueError, match="labels"):
        ImageDataset(ok, torch.tensor([0]))
    sub = ImageDataset(ok, torch.tensor([1, 0]), ["a", "b"]).subset(torch.tensor([1]))
    assert len(sub) == 1 and sub.labels.tolist() == [0] and sub.class_names == ["a", "b"]


def test_unknown_source_options_are_rejected_by_name():
    with pytest.raises(ValueError, match=r"data source 'cifar10' does not take \['spilt'\]; accepted options: .*'split'"):
        load_dataset("cifar10", image_size=32, spilt="all")
    with pytest.raises(ValueError, match=r"does not take \['root'\]"):
        load_dataset("digits", image_size=16, root="datasets")
