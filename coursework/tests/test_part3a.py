"""Homework 3.2a: ConditionalUNet, a class-conditional UNet written as a new class (a subclass of UNet).

Contract (house plan): ``model(x_t, t, y)`` with int64 labels y in [0, K]; label K = num_classes is the
null label ("no class") that classifier-free guidance needs; y=None means the null label for every sample.
"""

import pytest
import torch
from torch import nn

from diffusion_lib.models import ConditionalUNet, UNet, is_conditional

KW = dict(in_channels=1, base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(),
          num_heads=1, norm_groups=8)
K = 10


def _model(seed: int = 0) -> ConditionalUNet:
    torch.manual_seed(seed)
    model = ConditionalUNet(K, **KW).eval()
    # the output conv starts at zero (so every input gives 0): give it weights to see what the labels do
    nn.init.normal_(model.conv_out.weight, std=0.1)
    return model


def _inputs(batch: int = 4):
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 1, 8, 8, generator=g), torch.randint(0, 1000, (batch,), generator=g)


def test_is_a_new_class_that_subclasses_unet():
    assert issubclass(ConditionalUNet, UNet) and ConditionalUNet is not UNet, (
        "expected ConditionalUNet to be a new class that subclasses UNet (not a rewrite of UNet), got bases "
        f"{[b.__name__ for b in ConditionalUNet.__mro__[1:]]}")


def test_null_label_and_shapes():
    model = _model()
    got = (getattr(model, "num_classes", None), getattr(model, "null_label", None))
    assert got == (K, K), f"expected num_classes = null_label = {K} (label num_classes is the null label), got {got}"
    assert is_conditional(model), "expected is_conditional(model) to be True for a ConditionalUNet, got False"
    x, t = _inputs()
    with torch.no_grad():
        out = model(x, t, torch.tensor([0, 3, 9, K]))
    assert out.shape == x.shape and out.dtype == torch.float32, (
        f"expected an output of shape {tuple(x.shape)} and dtype float32, got {tuple(out.shape)} {out.dtype}")


def test_labels_change_the_output():
    model = _model()
    x, t = _inputs()
    with torch.no_grad():
        a = model(x, t, torch.zeros(4, dtype=torch.long))
        b = model(x, t, torch.full((4,), 7, dtype=torch.long))
    assert not torch.allclose(a, b, atol=1e-6), (
        "expected different outputs for labels 0 and 7, got max abs diff "
        f"{float((a - b).abs().max()):.3g} (the output does not depend on the labels y)")

def test_config_records_num_classes():
    model = _model()
    got = model.config.get("num_classes")
    assert got == K, (f"expected model.config['num_classes'] == {K} (checkpoints rebuild the model from "
                      f"model.config with build_unet), got {got!r}")

### BEGIN HIDDEN TESTS [null-label]
def test_none_means_the_null_label():
    model = _model()
    x, t = _inputs()
    with torch.no_grad():
        assert torch.allclose(model(x, t), model(x, t, torch.full((4,), K, dtype=torch.long)), atol=1e-6), (
            "y=None must give the same output as the null label num_classes")
        assert not torch.allclose(model(x, t), model(x, t, torch.zeros(4, dtype=torch.long)), atol=1e-6), (
            "the null label must differ from class 0")


def test_each_sample_sees_its_own_label():
    model = _model()
    x, t = _inputs()
    y = torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        batch = model(x, t, y)
        alone = torch.cat([model(x[i:i + 1], t[i:i + 1], y[i:i + 1]) for i in range(4)])
        swapped = model(x, t, torch.tensor([1, 2, 3, 5]))
    assert torch.allclose(batch, alone, atol=1e-5), "a sample's output must not depend on other samples' labels"
    assert torch.allclose(batch[:3], swapped[:3], atol=1e-5) and not torch.allclose(batch[3], swapped[3], atol=1e-6)
### END HIDDEN TESTS

### BEGIN HIDDEN TESTS [parameters]

def test_keeps_every_unet_parameter_and_learns_the_labels():
    torch.manual_seed(0)
    unet_keys = set(UNet(**KW).state_dict())
    model = _model()
    assert unet_keys <= set(model.state_dict()), "ConditionalUNet must extend UNet, keeping all its layers"
    x, t = _inputs()
    model.train()
    model(x, t, torch.tensor([0, 1, 2, K])).square().mean().backward()
    new = [p for name, p in model.named_parameters() if name not in unet_keys]
    assert new and all(p.grad is not None and p.grad.abs().sum() > 0 for p in new), (
        "the new (label) parameters must receive gradients")
### END HIDDEN TESTS

### BEGIN HIDDEN TESTS [rebuild]

def test_rebuilds_from_its_config_and_checks_labels():
    from diffusion_lib.models import build_unet

    model = _model()
    assert model.config.get("num_classes") == K, "model.config must record num_classes (checkpoints rebuild from it)"
    rebuilt = build_unet(model.config)
    assert isinstance(rebuilt, ConditionalUNet) and rebuilt.null_label == K
    x, t = _inputs()
    with pytest.raises(ValueError):
        model(x, t, torch.zeros(4))  # float labels
    with pytest.raises(ValueError):
        model(x, t, torch.zeros(3, dtype=torch.long))  # wrong batch
    with pytest.raises(ValueError):
        ConditionalUNet(0, **KW)
### END HIDDEN TESTS
