"""The small CNN classifier: shapes, time conditioning, training on digits, save/load."""

import pytest
import torch
import torch.nn.functional as F

from diffusion_lib.data import load_dataset
from diffusion_lib.artifacts import save_artifact
from diffusion_lib.classifier_training import load_classifier, save_classifier, train_classifier
from diffusion_lib.models.classifier import Classifier
from diffusion_lib.schedules import NoiseSchedule


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits", image_size=16)
    images, labels = ds.get_batch(torch.arange(len(ds)))
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
    train, val = perm[:1500], perm[1500:]
    return images[train], labels[train], images[val], labels[val]


@pytest.mark.parametrize("channels,size", [(1, 8), (1, 16), (3, 32), (3, 20)])
def test_shapes_for_any_size(channels, size):
    model = Classifier(channels, 7, base_channels=8)
    x = torch.rand(5, channels, size, size) * 2 - 1
    assert model(x).shape == (5, 7)
    assert model.features(x).shape == (5, model.feature_dim) == (5, 16)


def test_bad_arguments_and_inputs_raise():
    with pytest.raises(ValueError, match="in_channels"):
        Classifier(2, 10)
    with pytest.raises(ValueError, match="num_classes"):
        Classifier(1, 1)
    model = Classifier(1, 10, base_channels=8)
    with pytest.raises(ValueError, match="at least 8x8"):
        model(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        model(torch.zeros(2, 3, 16, 16))


def test_time_conditioning():
    torch.manual_seed(0)
    model = Classifier(1, 10, base_channels=8, time_conditional=True, num_train_timesteps=100).eval()
    x = torch.randn(3, 1, 16, 16)
    with pytest.raises(ValueError, match="time-conditional"):
        model(x)
    # ranges are checked once at an entry (check_timesteps), not in forward: no host read per step
    with pytest.raises(ValueError, match=r"\[0, 99\]"):
        model.check_timesteps(torch.tensor([0, 5, 100]))
    with pytest.raises(ValueError, match=r"\[0, 99\]"):
        model.check_timesteps(-1)
    with pytest.raises(ValueError, match="int64"):
        model.check_timesteps(torch.tensor([0.5]))
    model.check_timesteps(torch.tensor([0, 99]))
    low, high = model(x, torch.zeros(3, dtype=torch.long)), model(x, torch.full((3,), 99))
    assert not torch.allclose(low, high), "the timestep must change the logits"
    # a clean classifier ignores t, so it can stand in as a guidance baseline
    clean = Classifier(1, 10, base_channels=8).eval()
    assert torch.equal(clean(x), clean(x, torch.tensor([1, 2, 3])))


def test_input_gradient_for_guidance():
    model = Classifier(1, 10, base_channels=8, time_conditional=True)
    x = torch.randn(4, 1, 16, 16, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    log_p = F.log_softmax(model(x, torch.tensor([1, 2, 3, 4])), dim=1)[torch.arange(4), y].sum()
    (grad,) = torch.autograd.grad(log_p, x)
    assert grad.shape == x.shape and grad.abs().sum() > 0


def test_clean_classifier_reaches_95_percent_on_digits(digits):
    x_train, y_train, x_val, y_val = digits
    model = Classifier(1, 10)
    # 150 steps of 64 images: about 10 s on one busy CPU core
    history = train_classifier(model, x_train, y_train, steps=150, batch_size=64, seed=0, device="cpu")
    with torch.no_grad():
        accuracy = (model(x_val).argmax(1) == y_val).float().mean().item()
    assert accuracy >= 0.95, f"val accuracy {accuracy:.3f}"
    assert len(history.losses) == 150 and history.losses[-1] < history.losses[0]


def test_training_is_reproducible(digits):
    x_train, y_train, _, _ = digits
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        model = Classifier(1, 10, base_channels=8)
        train_classifier(model, x_train, y_train, steps=5, batch_size=32, seed=3, device="cpu")
        models.append(model)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)


def test_noise_conditioned_classifier_is_better_on_clean_than_on_noisy(digits):
    x_train, y_train, x_val, y_val = digits
    schedule = NoiseSchedule("linear", num_train_timesteps=100)
    torch.manual_seed(0)
    model = Classifier(1, 10, base_channels=16, time_conditional=True, num_train_timesteps=100)
    train_classifier(model, x_train, y_train, steps=150, batch_size=64, seed=0, device="cpu",
                     noise_schedule=schedule)

    def accuracy_at(t):
        abar = schedule.alphas_cumprod[t]
        noise = torch.randn(x_val.shape, generator=torch.Generator().manual_seed(1))
        x_t = abar.sqrt() * x_val + (1 - abar).sqrt() * noise
        with torch.no_grad():
            logits = model(x_t, torch.full((len(x_val),), t))
        return (logits.argmax(1) == y_val).float().mean().item()

    clean, noisy = accuracy_at(0), accuracy_at(99)
    assert clean > 0.8, clean
    assert noisy < clean - 0.3, (clean, noisy)


def test_schedule_and_time_conditioning_must_agree(digits):
    x_train, y_train, _, _ = digits
    schedule = NoiseSchedule("linear", num_train_timesteps=100)
    with pytest.raises(ValueError, match="time-conditional"):
        train_classifier(Classifier(1, 10, base_channels=8), x_train, y_train, steps=1, noise_schedule=schedule)
    with pytest.raises(ValueError, match="time-conditional"):
        train_classifier(Classifier(1, 10, base_channels=8, time_conditional=True), x_train, y_train, steps=1)
    wrong_t = Classifier(1, 10, base_channels=8, time_conditional=True, num_train_timesteps=50)
    with pytest.raises(ValueError, match="T=100"):
        train_classifier(wrong_t, x_train, y_train, steps=1, noise_schedule=schedule, device="cpu")
    with pytest.raises(ValueError, match="labels must lie"):
        train_classifier(Classifier(1, 3, base_channels=8), x_train, y_train, steps=1)


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = Classifier(3, 4, base_channels=8, channel_mults=(1, 2), time_conditional=True,
                       num_train_timesteps=10).eval()
    path = save_classifier(model, tmp_path / "sub" / "clf.pt", meta={"dataset": "toy", "accuracy": 0.5})
    assert [p.name for p in path.parent.iterdir()] == ["clf.pt"], "no temporary files left behind"
    loaded, meta = load_classifier(path)
    assert meta == {"dataset": "toy", "accuracy": 0.5}
    assert loaded.config == model.config and not loaded.training
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([0, 9])
    assert torch.equal(loaded(x, t), model(x, t))


def test_load_rejects_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_classifier(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt is corrupt or not a torch file"):
        load_classifier(tmp_path / "junk.pt")
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt is not a diffusion_lib classifier file"):
        load_classifier(tmp_path / "other.pt")
    save_artifact(tmp_path / "features.pt", "features", {"config": {}, "state_dict": {}})
    with pytest.raises(ValueError, match="is a 'features' file; expected a 'classifier' file"):
        load_classifier(tmp_path / "features.pt")
    save_artifact(tmp_path / "newer.pt", "classifier", {"config": {}, "state_dict": {}}, version=2)
    with pytest.raises(ValueError, match="newer.pt has classifier version 2"):
        load_classifier(tmp_path / "newer.pt")
    path = save_classifier(Classifier(1, 10, base_channels=8), tmp_path / "ok.pt")
    record = torch.load(path, weights_only=True)
    assert (record["format"], record["kind"], record["version"]) == ("diffusion_lib", "classifier", 1)
    record["payload"]["config"]["base_channels"] = 16
    torch.save(record, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="mismatch.pt: weights do not match"):
        load_classifier(tmp_path / "mismatch.pt")
