from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import MultiScaleSSIMMetric

from medgen3d.metrics.diversity import STANDARD_WEIGHTS, diversity, ms_ssim_settings, pairwise_ms_ssim


def noise_volumes(count: int, shape: tuple[int, int, int] = (16, 16, 16), seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(shape, generator=generator) * 2 - 1 for _ in range(count)]


@pytest.mark.parametrize(
    "shape, expected",
    [((32, 32, 32), (3, 4)), ((80, 96, 80), (5, 5)), ((16, 16, 8), (3, 2)), ((16, 16, 3), (3, 1))],
)
def test_settings_use_the_most_scales_that_fit_and_monai_accepts_them(shape, expected):
    settings = ms_ssim_settings(shape)
    assert (settings.kernel_size, len(settings.weights)) == expected
    assert sum(settings.weights) == pytest.approx(1.0)
    ratios = np.divide(settings.weights, STANDARD_WEIGHTS[: len(settings.weights)])
    assert ratios == pytest.approx(np.full(len(ratios), ratios[0]))  # the standard weights, rescaled
    metric = MultiScaleSSIMMetric(3, data_range=2.0, kernel_size=settings.kernel_size, weights=settings.weights)
    volume = torch.rand(1, 1, *shape)
    assert float(metric(volume, volume)) == pytest.approx(1.0, abs=1e-5)


def test_settings_reject_a_volume_thinner_than_the_smallest_kernel():
    with pytest.raises(ValueError, match=r"\(16, 16, 2\) is too small"):
        ms_ssim_settings((16, 16, 2))


def test_identical_volumes_score_one_and_independent_noise_much_lower():
    volume = noise_volumes(1)[0]
    assert pairwise_ms_ssim([volume, volume.clone()]) == pytest.approx([1.0], abs=1e-5)
    assert pairwise_ms_ssim([volume] * 4) == pytest.approx(np.ones(6), abs=1e-5)
    noise = pairwise_ms_ssim(noise_volumes(4))
    assert noise.shape == (6,) and noise.max() < 0.3


def test_the_same_seed_draws_the_same_subset_of_pairs():
    volumes = noise_volumes(5)
    everything = pairwise_ms_ssim(volumes)
    subset = pairwise_ms_ssim(volumes, max_pairs=4, seed=3)
    assert subset.shape == (4,)
    assert np.array_equal(subset, pairwise_ms_ssim(volumes, max_pairs=4, seed=3))
    assert all(np.isclose(everything, value).any() for value in subset)
    assert np.array_equal(pairwise_ms_ssim(volumes, max_pairs=100), everything)


def test_pairwise_ms_ssim_rejects_mixed_shapes_and_single_volumes():
    with pytest.raises(ValueError, match="share one shape"):
        pairwise_ms_ssim(noise_volumes(1) + noise_volumes(1, shape=(16, 16, 12)))
    with pytest.raises(ValueError, match="at least two"):
        pairwise_ms_ssim(noise_volumes(1))


def test_diversity_summarises_each_set():
    result = diversity([noise_volumes(1)[0]] * 3, noise_volumes(3))
    assert result.synthetic.mean == pytest.approx(1.0, abs=1e-5) and result.synthetic.std == pytest.approx(0, abs=1e-5)
    assert result.real.mean < 0.3
