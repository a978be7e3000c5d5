"""Metrics: FID / KID / IS against independent computations, diversity, accuracy, and offline scoring."""

import json

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch
from torch_fidelity import feature_extractor_inceptionv3 as tf_inception

from diffusion_lib import metrics
from diffusion_lib.metrics import extractors
from diffusion_lib.data import load_dataset
from diffusion_lib.images import from_uint8


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits", image_size=16)
    return ds, from_uint8(ds.pixels), ds.labels


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("metrics_cache")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No Inception weights on disk, and any download attempt fails the test."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted at scoring time")

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", no_download)


def random_features(n, d, seed, shift=0.0):
    """n draws of one correlated Gaussian in d dims (the same for every seed), shifted by ``shift``."""
    mix = torch.randn(d, d, generator=torch.Generator().manual_seed(1234), dtype=torch.float64) / d ** 0.5
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) @ mix + shift


# ----------------------------------------------------------------------------- FID / KID / IS

def test_frechet_distance_matches_scipy_sqrtm():
    a, b = random_features(300, 16, seed=0), random_features(200, 16, seed=1, shift=0.3) * 1.5
    mu_a, mu_b = a.mean(0).numpy(), b.mean(0).numpy()
    cov_a, cov_b = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b).real
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * covmean)
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    a = random_features(400, 8, seed=0)
    assert abs(metrics.frechet_distance(a, a)) < 1e-6
    # a pure mean shift of delta in each of D dimensions gives exactly D * delta^2
    fids = [metrics.frechet_distance(a, a + delta) for delta in (0.1, 0.5, 1.0)]
    assert fids == pytest.approx([8 * 0.01, 8 * 0.25, 8 * 1.0], rel=1e-6)


def test_kid_of_two_samples_of_one_distribution_is_about_zero():
    a, b = random_features(500, 16, seed=0), random_features(500, 16, seed=1)
    same, _ = metrics.kernel_inception_distance(a, b, subset_size=200, subsets=20)
    shifted, _ = metrics.kernel_inception_distance(a, random_features(500, 16, seed=2, shift=1.0),
                                                   subset_size=200, subsets=20)
    assert abs(same) < 0.02 * shifted, (same, shifted)
    again, _ = metrics.kernel_inception_distance(a, b, subset_size=200, subsets=20)
    assert again == same, "seeded subsets give the same value"


def test_inception_score_of_uniform_and_of_confident_predictions():
    mean, std = metrics.inception_score(torch.zeros(100, 10), splits=2)
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0, abs=1e-9)
    # confident, balanced predictions over K classes give IS = K
    confident = 50.0 * torch.eye(10).repeat(20, 1)
    mean, _ = metrics.inception_score(confident, splits=1)
    assert mean == pytest.approx(10.0, rel=1e-4)


# ----------------------------------------------------------------------------- diversity, accuracy

def test_diversity_definition():
    image = torch.rand(1, 3, 8, 8) * 2 - 1
    assert metrics.diversity(image.repeat(5, 1, 1, 1)) == 0.0
    extremes = torch.cat([-torch.ones(1, 1, 8, 8), torch.ones(1, 1, 8, 8)])
    assert metrics.diversity(extremes) == pytest.approx(2.0)
    x = torch.rand(7, 1, 8, 8) * 2 - 1
    flat = x.flatten(1).double()
    pairs = [(flat[i] - flat[j]).norm() / 8.0 for i in range(7) for j in range(i + 1, 7)]
    assert metrics.diversity(x, chunk=3) == pytest.approx(float(sum(pairs) / len(pairs)), rel=1e-9)


class BrightnessJudge(torch.nn.Module):
    """Class 1 if the mean pixel is positive, else class 0."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([-m, m], dim=1)


def test_class_accuracy():
    x = torch.cat([torch.full((3, 1, 8, 8), 0.5), torch.full((1, 1, 8, 8), -0.5)])
    assert metrics.class_accuracy(x, torch.tensor([1, 1, 1, 0]), BrightnessJudge()) == 1.0
    assert metrics.class_accuracy(x, torch.tensor([0, 1, 1, 1]), BrightnessJudge()) == 0.5


# ----------------------------------------------------------------------------- the entry point

def test_offline_scoring_uses_the_domain_extractor_and_says_so(digits, cache_dir, offline, monkeypatch):
    _, real, labels = digits
    assert not metrics.inception_available()
    result = metrics.evaluate_samples(real, real, labels=labels, real_labels=labels, dataset="digits",
                                      cache_dir=cache_dir, device="cpu", domain_steps=60, kid_subsets=10)
    assert result.extractor.startswith("domain-classifier:digits:")
    assert result.num_generated == result.num_real == 1797 and result.feature_dim == 64
    assert abs(result.fid) < 1e-4 and abs(result.kid_mean) < 0.01
    assert result.class_accuracy > 0.8 and 1.0 < result.is_mean <= 10.0
    assert any("val accuracy" in note for note in result.notes)
    files = sorted(p.name for p in cache_dir.iterdir())
    assert any(f.startswith("domain_classifier-digits-") for f in files)
    assert any(f.startswith("real_features-digits-domain-classifier") for f in files)

    # the second call reuses the cached classifier and real features: no training
    monkeypatch.setattr(extractors, "train_classifier", lambda *a, **k: pytest.fail("retrained"))
    shifted = (real[:600] + 0.6).clamp(-1, 1)
    worse = metrics.evaluate_samples(shifted, real, labels=labels[:600], real_labels=labels, dataset="digits",
                                     cache_dir=cache_dir, device="cpu", domain_steps=60, kid_subsets=10)
    assert worse.extractor == result.extractor
    assert worse.fid > 100 * abs(result.fid) + 1.0 and worse.kid_mean > 10 * abs(result.kid_mean)


def test_an_image_dataset_can_be_the_reference(digits, cache_dir, offline):
    ds, real, labels = digits
    result = metrics.evaluate_samples(real[:300], ds, metrics=("fid", "diversity"), cache_dir=cache_dir,
                                      device="cpu", domain_steps=60)
    assert result.dataset == "digits" and result.extractor.startswith("domain-classifier:digits:")
    assert result.kid_mean is None and result.diversity > 0.3


def test_inception_is_used_when_its_weights_are_on_disk(tmp_path, monkeypatch):
    # make a weights file with the right layout (random values): nothing real is downloaded
    monkeypatch.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", lambda *a, **k: {})
    state = tf_inception.FeatureExtractorInceptionV3("fake", ["2048"]).state_dict()
    monkeypatch.undo()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / metrics.INCEPTION_WEIGHTS_FILE)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(tf_inception, "load_state_dict_from_url",
                        lambda *a, **k: pytest.fail("a download was attempted"))
    assert metrics.inception_available()

    g = torch.Generator().manual_seed(0)
    real, fake = torch.rand(6, 1, 16, 16, generator=g) * 2 - 1, torch.rand(5, 1, 16, 16, generator=g) * 2 - 1
    with pytest.warns(UserWarning, match="rank-deficient"):
        result = metrics.evaluate_samples(fake, real, metrics=("fid", "is"), cache_dir=tmp_path / "cache",
                                          device="cpu")
    assert result.extractor == "inception-v3" and result.feature_dim == 2048
    assert np.isfinite(result.fid) and result.is_mean >= 1.0 - 1e-6
    assert any("rank-deficient" in note for note in result.notes)


def test_bad_inputs_raise_clear_errors(digits, cache_dir, offline):
    _, real, labels = digits
    x = real[:20]
    with pytest.raises(ValueError, match="from_uint8"):
        metrics.evaluate_samples(torch.zeros(4, 1, 16, 16, dtype=torch.uint8), x)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        metrics.evaluate_samples(x + 1.0, x)
    with pytest.raises(ValueError, match="differ in"):
        metrics.evaluate_samples(x.repeat(1, 3, 1, 1), x)
    with pytest.raises(ValueError, match="differ in"):
        metrics.evaluate_samples(x[:, :, :8, :8], x)
    with pytest.raises(ValueError, match="at least 2"):
        metrics.evaluate_samples(x[:1], x, metrics=("fid",), real_labels=labels[:20])
    with pytest.raises(ValueError, match="unknown metrics"):
        metrics.evaluate_samples(x, x, metrics=("fid", "precision"))
    with pytest.raises(ValueError, match="accuracy needs labels"):
        metrics.evaluate_samples(x, x, metrics=("accuracy",))
    with pytest.raises(ValueError, match="real_labels"):
        metrics.evaluate_samples(x, x, metrics=("fid",))  # no weights, no labels, no classifier
    with pytest.raises(ValueError, match="subset_size"):
        metrics.evaluate_samples(x, real, metrics=("kid",), real_labels=labels, kid_subset_size=50,
                                 cache_dir=cache_dir, device="cpu", domain_steps=60)
    with pytest.raises(FileNotFoundError, match="Inception weights not found"):
        metrics.evaluate_samples(x, x, metrics=("fid",), extractor="inception")
    with pytest.raises(ValueError, match="at least 2 samples"):
        metrics.frechet_distance(torch.zeros(1, 4), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="splits"):
        metrics.inception_score(torch.zeros(4, 10), splits=5)


def test_result_serialises_and_tabulates():
    images = torch.rand(6, 1, 8, 8) * 2 - 1
    result = metrics.evaluate_samples(images, labels=torch.tensor([0, 1, 0, 1, 0, 1]), classifier=BrightnessJudge())
    assert result.extractor is None and result.fid is None and result.diversity > 0
    assert 0.0 <= result.class_accuracy <= 1.0
    json.dumps(result.to_dict())
    row = result.to_row(model="vae", guidance_scale=0.0)
    assert list(row)[:2] == ["model", "guidance_scale"]
    frame = pd.DataFrame([row, metrics.EvaluationResult("inception-v3", "x", 1, 1, fid=3.0).to_row(model="ddpm")])
    assert frame.shape[0] == 2 and "extractor" in frame.columns


def test_domain_extractor_is_independent_of_the_global_rng(digits, tmp_path, offline):
    _, real, labels = digits

    def build(global_seed: int, folder: str):
        torch.manual_seed(global_seed)  # whatever state earlier code left behind
        return metrics.domain_extractor(real[:300], labels[:300], dataset="d", cache_dir=tmp_path / folder,
                                        device="cpu", steps=3)

    a, b = build(0, "a"), build(1, "b")
    assert a.name == b.name
    for p, q in zip(a.classifier.parameters(), b.classifier.parameters()):
        assert torch.equal(p, q)


def test_check_range_false_accepts_noisy_images_either_side():
    for noisy in (torch.full((2, 1, 8, 8), 1.5), torch.full((2, 1, 8, 8), -1.5)):
        assert torch.equal(metrics.check_images(noisy, check_range=False), noisy)
        with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
            metrics.check_images(noisy)


def test_paired_distance():
    a = torch.rand(4, 1, 8, 8) * 2 - 1
    assert metrics.paired_distance(a, a) == 0.0
    assert metrics.paired_distance(-torch.ones(2, 1, 8, 8), torch.ones(2, 1, 8, 8)) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="one shape"):
        metrics.paired_distance(a, a[:2])


def test_format_report_lists_every_score_and_note():
    result = metrics.EvaluationResult("domain-classifier:digits:abc", "digits", 40, 1797, fid=12.34567, kid_mean=0.01,
                                      kid_std=0.002, kid_subset_size=40, is_mean=3.2, is_std=None, is_splits=1,
                                      diversity=0.5, notes=["small sample"])
    lines = metrics.format_report(result, "title line").splitlines()
    assert lines[0] == "title line" and "domain-classifier:digits:abc" in lines[1] and "not comparable" in lines[1]
    assert any("FID" in line and "12.3457" in line for line in lines)
    assert any("KID" in line and "0.01000 ± 0.00200 (subsets of 40)" in line for line in lines)
    assert any("IS" in line and "3.200 (1 split)" in line for line in lines)
    assert any(line.split()[:2] == ["class", "accuracy"] and line.endswith("-") for line in lines)
    assert lines[-1] == "note: small sample"
    assert "title" not in metrics.format_report(result)


def test_caches_are_artifacts_and_broken_ones_are_rebuilt(digits, tmp_path, offline):
    from diffusion_lib.artifacts import load_artifact

    _, real, labels = digits
    ext = metrics.domain_extractor(real[:200], labels[:200], dataset="d", cache_dir=tmp_path, device="cpu", steps=2)
    (clf_file,) = tmp_path.glob("domain_classifier-d-*.pt")
    assert load_artifact(clf_file, "classifier")["meta"]["hash"] in ext.name
    feats = metrics.real_features(real[:50], ext, dataset="d", cache_dir=tmp_path)
    (feat_file,) = tmp_path.glob("real_features-d-*.pt")
    stored = load_artifact(feat_file, "features", required=("extractor", "features", "logits"))
    assert stored["extractor"] == ext.name and torch.equal(stored["features"], feats.features.float())
    # files in the old formats (or broken ones) are rebuilt with a warning, never trusted
    torch.save({"format": "diffusion_lib.classifier", "version": 1}, clf_file)
    feat_file.write_bytes(b"junk")
    with pytest.warns(UserWarning, match="retraining the domain classifier"):
        again = metrics.domain_extractor(real[:200], labels[:200], dataset="d", cache_dir=tmp_path, device="cpu",
                                         steps=2)
    with pytest.warns(UserWarning, match="ignoring unreadable feature cache"):
        rebuilt = metrics.real_features(real[:50], again, dataset="d", cache_dir=tmp_path)
    assert again.name == ext.name and torch.equal(rebuilt.features, feats.features)
    assert load_artifact(clf_file, "classifier")["config"]["num_classes"] == 10


def test_package_loads_submodules_on_first_use():
    import subprocess
    import sys

    code = ("import sys, diffusion_lib.metrics as m; assert 'torchmetrics' not in sys.modules; "
            "assert 'diffusion_lib.metrics.evaluate' not in sys.modules; m.diversity; "
            "assert 'torchmetrics' not in sys.modules; from diffusion_lib.metrics import evaluate_samples; "
            "assert sorted(m.__all__) == sorted(set(m.__all__)) and 'format_report' in dir(m)")
    subprocess.run([sys.executable, "-c", code], check=True)
