"""images.py: the one pair of helpers at the uint8 <-> [-1, 1] edge, and its variants for foreign ranges/layouts."""

import numpy as np
import pytest
import torch

from diffusion_lib.images import from_uint8, to_uint8


def test_round_trip_and_endpoints():
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16, 1).repeat(2, 1, 1, 3)
    images = from_uint8(pixels)
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.float32
    assert images.min() == -1 and images.max() == 1
    assert np.array_equal(to_uint8(images), pixels.numpy())  # exact inverse
    clipped = to_uint8(torch.tensor([-3.0, -1.0, 0.0, 1.0, 7.0]).view(1, 1, 1, 5))
    assert clipped.ravel().tolist() == [0, 0, 128, 255, 255]


def test_foreign_ranges_and_layouts():
    unit = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))  # a pipeline's [0, 1] NCHW output
    torch.testing.assert_close(from_uint8(unit, value_range=(0, 1), channels_last=False), unit * 2 - 1, rtol=0, atol=0)
    nhwc = unit.permute(0, 2, 3, 1).numpy()  # the same as a numpy NHWC array
    torch.testing.assert_close(from_uint8(nhwc, value_range=(0, 1)), unit * 2 - 1, rtol=0, atol=0)
    assert np.array_equal(to_uint8(nhwc, value_range=(0, 1), channels_last=True), np.round(nhwc * 255).astype(np.uint8))
    wide = np.linspace(0, 255, 48).reshape(1, 4, 4, 3)
    assert np.array_equal(to_uint8(wide, value_range=(0, 255), channels_last=True), np.round(wide).astype(np.uint8))


def test_bad_inputs_name_what_is_accepted():
    with pytest.raises(ValueError, match="4-D"):
        to_uint8(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="float"):
        to_uint8(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        from_uint8(torch.zeros(1, 4, 4, 3))  # floats need a value_range
    with pytest.raises(ValueError, match="uint8"):
        from_uint8(torch.zeros(1, 4, 4, 3, dtype=torch.int64), value_range=(0, 1))
    with pytest.raises(ValueError, match="value_range"):
        to_uint8(torch.zeros(1, 3, 4, 4), value_range=(1, 1))
