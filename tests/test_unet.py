"""UNet shapes at several sizes, conditioning, and bad inputs."""

import pytest
import torch

from diffusion_lib import ConditionalUNet, UNet
from diffusion_lib.models import build_unet


@pytest.mark.parametrize("size, mults", [(8, (1, 2)), (16, (1, 2, 2)), (28, (1, 2, 2)), (32, (1, 2, 2, 2)),
                                         (64, (1, 2, 2, 2)), (128, (1, 1, 2, 2, 2))])
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape_equals_input_shape(size, mults, channels):
    model = UNet(in_channels=channels, base_channels=8, channel_mults=mults, num_res_blocks=1, attention_levels=(1,),
                 num_heads=2, norm_groups=4)
    x = torch.randn(2, channels, size, size)
    assert model(x, torch.tensor([0, 999])).shape == x.shape


@pytest.mark.parametrize("size", [8, 16, 28, 32])
def test_conditional_output_shape_with_and_without_labels(size):
    model = ConditionalUNet(10, in_channels=3, base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1,
                            attention_levels=(2,), num_heads=2, norm_groups=4)
    x = torch.randn(3, 3, size, size)
    t = torch.tensor([1, 2, 3])
    assert model(x, t, torch.tensor([0, 9, 10])).shape == x.shape
    assert model(x, t).shape == x.shape


def test_labels_change_the_output(tiny_cond_unet):
    x, t = torch.randn(1, 1, 8, 8), torch.tensor([5])
    outs = [tiny_cond_unet(x, t, torch.tensor([c])) for c in range(4)]
    assert all(not torch.allclose(outs[0], o) for o in outs[1:])
    torch.testing.assert_close(tiny_cond_unet(x, t), outs[3])  # y=None is the null label


def test_scalar_timestep_broadcasts(tiny_unet):
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(tiny_unet(x, 7), tiny_unet(x, torch.tensor([7, 7])))


def test_build_unet_round_trip(tiny_cond_unet):
    rebuilt = build_unet(tiny_cond_unet.config)
    rebuilt.load_state_dict(tiny_cond_unet.state_dict())
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1])
    torch.testing.assert_close(rebuilt.eval()(x, t, y), tiny_cond_unet(x, t, y))


def test_bad_inputs_raise_clear_errors(tiny_unet, tiny_cond_unet):
    with pytest.raises(ValueError, match=r"expected input \(B, 1, H, W\); got shape \(2, 3, 8, 8\)"):
        tiny_unet(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="not divisible by the UNet's downsampling factor 2"):
        tiny_unet(torch.randn(2, 1, 9, 9), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unconditional"):
        tiny_unet(torch.randn(2, 1, 8, 8), torch.tensor([0, 1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels y must be int64 of shape \(2,\)"):
        tiny_cond_unet(torch.randn(2, 1, 8, 8), torch.tensor([0, 1]), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="labels y must be int64"):
        tiny_cond_unet(torch.randn(2, 1, 8, 8), torch.tensor([0, 1]), torch.tensor([0.0, 1.0]))
    with pytest.raises(IndexError):  # label values are checked at the public entry, not in forward (no host sync)
        tiny_cond_unet(torch.randn(2, 1, 8, 8), torch.tensor([0, 1]), torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="norm_groups"):
        UNet(base_channels=10, norm_groups=4)
    with pytest.raises(ValueError, match="attention_levels"):
        UNet(channel_mults=(1, 2), attention_levels=(2,))


def test_conditional_forward_reads_nothing_back_to_the_host(tiny_cond_unet, monkeypatch):
    """No .item() / int() / bool() / tolist() on a tensor inside forward: each is a GPU sync per step."""
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 3])
    expected = tiny_cond_unet(x, t, y)

    def sync(*args, **kwargs):
        raise AssertionError("host sync inside forward")

    for name in ("item", "tolist", "__int__", "__index__", "__bool__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    output = tiny_cond_unet(x, t, y)
    monkeypatch.undo()
    torch.testing.assert_close(output, expected)
