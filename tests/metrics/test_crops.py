from __future__ import annotations

import numpy as np
import torch

from medgen3d.metrics.crops import centre_crop, common_crop


def test_centre_crop_takes_the_middle_block_of_arrays_and_tensors():
    volume = np.arange(6 * 5 * 4).reshape(6, 5, 4)
    np.testing.assert_array_equal(centre_crop(volume, (2, 3, 4)), volume[2:4, 1:4, :])
    assert torch.equal(centre_crop(torch.from_numpy(volume), (2, 3, 4)), torch.from_numpy(volume[2:4, 1:4, :]))


def test_common_crop_cuts_every_volume_to_the_shape_all_hold():
    a, b = torch.rand(8, 6, 10), torch.rand(6, 7, 9)
    ca, cb = common_crop([a, b])
    assert ca.shape == cb.shape == (6, 6, 9)
    assert torch.equal(ca, a[1:7, :, 0:9]) and torch.equal(cb, b[:, 0:6, :])
