from __future__ import annotations

import pytest
import torch
from monai.metrics import SSIMMetric

from medgen3d.metrics.ssim import gaussian_window, local_mean, local_moments, ssim_against


def test_the_separable_local_mean_is_monai_s_full_gaussian_and_keeps_constants():
    volumes = torch.rand(2, 13, 12, 11, generator=torch.Generator().manual_seed(0))
    window = gaussian_window(7)
    assert window.sum().item() == pytest.approx(1.0) and torch.equal(window, window.flip(0))
    full = window[:, None, None] * window[None, :, None] * window[None, None, :]
    expected = torch.nn.functional.conv3d(volumes[:, None], full[None, None])[:, 0]
    torch.testing.assert_close(local_mean(volumes, window), expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(local_mean(torch.full((1, 9, 9, 9), 0.7), window), torch.tensor(0.7))


@pytest.mark.parametrize("size", [11, 5])
def test_ssim_of_cropped_blocks_equals_monai_ssim_of_the_same_blocks(size):
    generator = torch.Generator().manual_seed(size)
    query = torch.rand(24, 20, 18, generator=generator) * 2
    references = [torch.rand(26, 20, 16, generator=generator) * 2 for _ in range(3)]
    references.append(query[1:23, 2:18, 1:17] * 0.9 + 0.05)  # a near copy of the query's block
    shape, query_start, ref_start = (22, 16, 16), (1, 2, 1), [(2, 2, 0)] * 3 + [(0, 0, 0)]
    window = gaussian_window(size)
    got = ssim_against(
        local_moments(query, window), [local_moments(r, window) for r in references], query_start, ref_start, shape,
        window, 2.0,
    )
    block = query[1:23, 2:18, 1:17]
    crops = torch.stack(
        [r[s[0] : s[0] + 22, s[1] : s[1] + 16, s[2] : s[2] + 16] for r, s in zip(references, ref_start)]
    )
    expected = SSIMMetric(3, data_range=2.0, win_size=size)(block.expand_as(crops)[:, None], crops[:, None]).flatten()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert int(got.argmax()) == 3 and got[3] > 0.9


def test_a_volume_against_itself_scores_one():
    volume = torch.rand(15, 15, 15, generator=torch.Generator().manual_seed(3)) + 0.5
    window = gaussian_window(11)
    moments = local_moments(volume, window)
    score = ssim_against(moments, [moments], (0, 0, 0), [(0, 0, 0)], volume.shape, window, 2.0)
    assert score.item() == pytest.approx(1.0, abs=1e-5)
