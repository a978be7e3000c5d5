"""torchvision sources: fast, helpful failure offline; safe downloads; manual layouts load.

The network is cut inside the tests (socket functions patched), so they behave the same on
a machine with internet: nothing is ever downloaded.
"""

import socket
import struct
import time
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_lib.data import DatasetUnavailableError, available_sources, load_dataset
from diffusion_lib.data import torchvision_sources as tvs

DOWNLOADABLE = {"mnist": {}, "fashion_mnist": {}, "cifar10": {}, "flowers102": {"image_size": 16},
                "celeba": {"image_size": 16}}


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_all_torchvision_sources_are_registered():
    assert set(DOWNLOADABLE) | {"stanford_cars"} <= set(available_sources())


@pytest.mark.parametrize("name", sorted(DOWNLOADABLE))
def test_offline_download_fails_fast_with_instructions(name, tmp_path, offline, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "gdown", type(__import__("sys"))("gdown"))  # pretend installed
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailableError) as err:
        load_dataset(name, root=tmp_path, **DOWNLOADABLE[name])
    assert time.perf_counter() - start < 10
    msg = str(err.value)
    assert msg.startswith(f"{name}: not found") and "unreachable" in msg
    assert str(tmp_path.resolve()) in msg and "layout" in msg.lower()
    assert tvs.FOLDERS[name] in msg  # names the folder the files must go in
    assert list(tmp_path.iterdir()) == []  # nothing half-made left behind


def test_download_false_and_stanford_cars_fail_immediately(tmp_path):
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailableError, match="download=False"):
        load_dataset("mnist", root=tmp_path, download=False)
    with pytest.raises(DatasetUnavailableError) as err:
        load_dataset("stanford_cars", root=tmp_path, image_size=16)
    assert time.perf_counter() - start < 5
    msg = str(err.value)
    assert "cannot download" in msg and "devkit" in msg and "kaggle" in msg.lower() and "7545" in msg


def test_celeba_without_gdown_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "gdown", None)  # import gdown -> ImportError
    with pytest.raises(DatasetUnavailableError, match="pip install gdown"):
        load_dataset("celeba", root=tmp_path, image_size=16)


def test_probe_never_hangs(monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: time.sleep(30))
    start = time.perf_counter()
    failure = tvs.probe("https://example.invalid/", timeout=0.5)
    assert time.perf_counter() - start < 2 and "no answer" in failure


def test_failed_real_download_leaves_nothing(tmp_path, offline, monkeypatch):
    """The host looks reachable, then torchvision's own download fails midway."""
    monkeypatch.setattr(tvs, "probe", lambda url, timeout=0: None)
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailableError, match="download failed"):
        load_dataset("mnist", root=tmp_path)
    assert time.perf_counter() - start < 20
    assert list(tmp_path.iterdir()) == []


def test_partial_download_is_removed_and_complete_one_moved_into_place(tmp_path, monkeypatch):
    monkeypatch.setattr(tvs, "probe", lambda url, timeout=0: None)

    def broken(root, download):
        if not download:
            raise RuntimeError("Dataset not found.")
        (root / "MNIST" / "raw").mkdir(parents=True)
        (root / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"half")
        raise RuntimeError("connection reset")

    with pytest.raises(DatasetUnavailableError, match="connection reset"):
        tvs._acquire("mnist", tmp_path, True, broken)
    assert list(tmp_path.iterdir()) == []

    (tmp_path / "MNIST").mkdir()  # an older incomplete copy is set aside, not merged
    made = []

    def works(root, download):
        if download:
            (root / "MNIST" / "raw").mkdir(parents=True)
            (root / "MNIST" / "raw" / "done").write_text("ok")
        elif not (root / "MNIST" / "raw" / "done").exists():
            raise RuntimeError("Dataset not found.")
        made.append((root, download))
        return "dataset"

    assert tvs._acquire("mnist", tmp_path, True, works) == "dataset"
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0] == "MNIST" and names[1].startswith("MNIST.incomplete-") and len(names) == 2
    assert (tmp_path / "MNIST" / "raw" / "done").read_text() == "ok"


def _write_idx(path, array):
    magic = 0x0803 if array.ndim == 3 else 0x0801
    with open(path, "wb") as f:
        f.write(struct.pack(">" + "I" * (array.ndim + 1), magic, *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def test_mnist_from_files_on_disk(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.random.default_rng(0).integers(0, 256, (12, 28, 28))
    labels = np.arange(12) % 10
    for split in ("train", "t10k"):
        _write_idx(raw / f"{split}-images-idx3-ubyte", images)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
    ds = load_dataset("mnist", root=tmp_path, download=False)
    assert ds.pixels.shape == (12, 28, 28, 1) and np.array_equal(ds.pixels[..., 0].numpy(), images)
    assert ds.labels.tolist() == labels.tolist() and ds.class_names[0].startswith("0")
    small = load_dataset("mnist", root=tmp_path, download=False, image_size=14, limit=5, split="test")
    assert small.pixels.shape == (5, 14, 14, 1) and ds.info.citation


def test_celeba_manual_kaggle_layout(tmp_path):
    images = tmp_path / "celeba" / "img_align_celeba" / "img_align_celeba"
    images.mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(1, 7)]
    for i, name in enumerate(names):
        arr = np.zeros((218, 178, 3), np.uint8)
        arr[57:185, 25:153] = 40 * i  # the face box; outside stays black
        Image.fromarray(arr).save(images / name, quality=95)
    (tmp_path / "celeba" / "list_eval_partition.csv").write_text(
        "image_id,partition\n" + "".join(f"{n},{p}\n" for n, p in zip(names, [0, 0, 0, 0, 1, 2])))
    (tmp_path / "celeba" / "list_attr_celeba.csv").write_text(
        "image_id,Smiling,Male\n" + "".join(f"{n},{s},-1\n" for n, s in zip(names, [1, -1, 1, -1, 1, 1])))
    ds = load_dataset("celeba", root=tmp_path, image_size=16, attribute="Smiling", progress=False)
    assert ds.pixels.shape == (4, 16, 16, 3)
    assert ds.labels.tolist() == [1, 0, 1, 0] and ds.class_names == ["not Smiling", "Smiling"]
    # the face crop keeps only the uniform box: no black border after cropping
    assert [int(v) for v in ds.pixels.float().mean((1, 2, 3))] == pytest.approx([0, 40, 80, 120], abs=2)
    every = load_dataset("celeba", root=tmp_path, image_size=8, split="all", progress=False)
    assert len(every) == 6 and every.labels is None  # no partition filter
    with pytest.raises(ValueError, match="attribute"):
        load_dataset("celeba", root=tmp_path, image_size=8, attribute="Wizard", progress=False)


def test_stanford_cars_manual_layout(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    base = tmp_path / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    (base / "cars_train").mkdir()
    annotations = np.zeros(3, dtype=[("fname", "O"), ("class", "O")])
    for i in range(3):
        annotations[i] = (f"{i + 1:05d}.jpg", i % 2 + 1)  # classes are 1-based in the .mat files
        Image.fromarray(np.full((40, 60, 3), 50 * i, np.uint8)).save(base / "cars_train" / f"{i + 1:05d}.jpg")
    scipy_io.savemat(base / "devkit" / "cars_train_annos.mat", {"annotations": annotations})
    names = np.array(["AM General Hummer SUV 2000", "Acura RL Sedan 2012"], dtype=object)
    scipy_io.savemat(base / "devkit" / "cars_meta.mat", {"class_names": names})
    ds = load_dataset("stanford_cars", root=tmp_path, image_size=16, progress=False)
    assert ds.pixels.shape == (3, 16, 16, 3) and ds.labels.tolist() == [0, 1, 0]
    assert ds.class_names == list(names) and "Krause" in ds.info.citation


def test_celeba_official_layout_through_torchvision(tmp_path, monkeypatch):
    from torchvision.datasets import CelebA

    monkeypatch.setattr(CelebA, "_check_integrity", lambda self: True)  # our fake files have no official MD5
    base = tmp_path / "celeba"
    (base / "img_align_celeba").mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(1, 5)]
    for i, name in enumerate(names):
        Image.fromarray(np.full((218, 178, 3), 60 * i, np.uint8)).save(base / "img_align_celeba" / name)
    rows = lambda values: "".join(f"{n} {v}\n" for n, v in zip(names, values))  # noqa: E731
    (base / "list_eval_partition.txt").write_text(rows([0, 1, 0, 0]))
    (base / "identity_CelebA.txt").write_text(rows([7, 7, 8, 9]))
    (base / "list_bbox_celeba.txt").write_text("4\nimage_id x_1 y_1 width height\n" + rows(["1 2 3 4"] * 4))
    (base / "list_landmarks_align_celeba.txt").write_text("4\nlefteye_x lefteye_y\n" + rows(["1 2"] * 4))
    (base / "list_attr_celeba.txt").write_text("4\nEyeglasses Smiling \n" + rows(["-1 1", "1 1", "1 -1", "-1 -1"]))
    ds = load_dataset("celeba", root=tmp_path, image_size=8, attribute="Eyeglasses", progress=False)
    assert len(ds) == 3 and ds.labels.tolist() == [0, 1, 0]  # train split: images 1, 3, 4
    assert ds.pixels.float().mean((1, 2, 3)).round().tolist() == [0, 120, 180]


def test_flowers102_layout_through_torchvision(tmp_path, monkeypatch):
    scipy_io = pytest.importorskip("scipy.io")
    from torchvision.datasets import Flowers102

    monkeypatch.setattr(Flowers102, "_check_integrity", lambda self: True)  # no official MD5 for fakes
    base = tmp_path / "flowers-102"
    (base / "jpg").mkdir(parents=True)
    for i in range(1, 7):  # varied sizes, landscape and portrait
        size = (50 + 10 * i, 80) if i % 2 else (80, 45 + 10 * i)
        Image.fromarray(np.full(size[::-1] + (3,), 30 * i, np.uint8)).save(base / "jpg" / f"image_{i:05d}.jpg")
    scipy_io.savemat(base / "imagelabels.mat", {"labels": np.array([1, 1, 2, 3, 102, 2])})
    scipy_io.savemat(base / "setid.mat", {"trnid": np.array([1, 3]), "valid": np.array([2, 5]), "tstid": np.array([4, 6])})
    train = load_dataset("flowers102", root=tmp_path, image_size=16, progress=False)
    assert train.pixels.shape == (2, 16, 16, 3) and train.labels.tolist() == [0, 1]
    assert train.num_classes == 102 and train.class_names[0] == "pink primrose"
    every = load_dataset("flowers102", root=tmp_path, image_size=16, split="all", limit=4, progress=False)
    assert len(every) == 4
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("flowers102", root=tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_dataset("flowers102", root=tmp_path, image_size=16, split="everything")
