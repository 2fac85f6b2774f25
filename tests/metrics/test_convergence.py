from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDIMScheduler

from medgen3d.diffusion.conditions import one_hot_slices
from medgen3d.diffusion.sampler import SubsequenceSampler
from medgen3d.metrics.anatomy import outline_pieces, outline_specks, slice_change_rate
from medgen3d.metrics.convergence import (
    SeedAgreement,
    pooled_dice,
    sample_window_pairs,
    seed_agreement_gap,
    step_change_rates,
    window_starts,
)
from tests.conftest import random_mcdpm


def test_slice_change_rate_is_0_for_identical_slices_and_hand_computed_otherwise():
    volume = np.zeros((4, 4, 3), dtype=np.int64)
    volume[:2, :2, :] = 1
    assert slice_change_rate(volume) == 0.0
    volume[0, 0, 1] = 2  # slices 0 -> 1 and 1 -> 2 each change one of their 4 foreground voxels
    volume[3, 3, 2] = 1  # slice 1 -> 2 gains a voxel: 5 foreground, 2 changed
    assert slice_change_rate(volume) == pytest.approx((1 + 2) / (4 + 5))
    assert np.isnan(slice_change_rate(np.zeros((4, 4, 3), dtype=np.int64)))


def test_outline_pieces_counts_the_foreground_islands_of_each_slice_whatever_their_labels():
    volume = np.zeros((6, 6, 4), dtype=np.int64)
    volume[1:5, 1:5, :3] = 1
    volume[2, 2, :3] = 2  # labels inside one piece do not split it
    assert outline_pieces(volume) == 1.0  # the empty last slice is not counted
    volume[0, 5, 1] = 3  # an island in slice 1
    volume[5, 0, 1] = 1  # and another: 3 pieces there
    volume[0, 0, 2] = 1  # a diagonal neighbour is not 4-connected: 2 pieces in slice 2
    assert outline_pieces(volume) == pytest.approx((1 + 3 + 2) / 3)
    assert np.isnan(outline_pieces(np.zeros((4, 4, 2), dtype=np.int64)))


def test_outline_specks_count_the_pieces_of_at_most_max_voxels_only():
    volume = np.zeros((8, 8, 3), dtype=np.int64)
    volume[1:6, 1:6, :3] = 1  # one piece of 25 voxels in every slice: no speck
    assert outline_specks(volume) == 0.0
    volume[7, 7, 0] = 4  # slice 0: a single-voxel speck
    volume[7, 0:4, 1] = 2  # slice 1: a piece of 4 voxels is a speck, one of 5 is not
    volume[0:5, 7, 2] = 1
    assert outline_specks(volume) == pytest.approx((1 + 1 + 0) / 3)
    assert outline_specks(volume, max_voxels=5) == pytest.approx((1 + 1 + 1) / 3)
    assert outline_specks(volume, max_voxels=0) == 0.0
    assert np.isnan(outline_specks(np.zeros((4, 4, 2), dtype=np.int64)))


def test_seed_gap_is_0_when_both_samples_equal_the_truth_and_positive_for_a_collapsed_model():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, (6, 4, 8, 8))
    assert np.allclose(seed_agreement_gap(truth, truth.copy(), truth, 3), 0.0)
    average = np.ones_like(truth)  # a collapsed model: the same continuation whatever the seed
    gap = seed_agreement_gap(average, average.copy(), truth, 3)
    dice_to_truth = pooled_dice(average, truth, 3)
    assert np.isnan(gap[1]) and gap[0] == pytest.approx(1.0 - dice_to_truth[0]) and gap[0] > 0.3
    assert pooled_dice(truth, truth, 3).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="differ in shape"):
        pooled_dice(truth, truth[:1], 3)


def test_step_change_rates_pool_each_step_over_the_windows():
    given = np.zeros((2, 2, 2), dtype=np.int64)
    given[:, 0, 0] = 1  # one foreground voxel in each window's given slice
    new = np.stack([given, given], axis=1).copy()  # (2, 2, 2, 2): two new slices, first a copy
    new[0, 1, 0, 0] = 2  # window 0's second new slice relabels its voxel
    new[1, 1, 1, 1] = 1  # window 1's grows a second voxel: step 1 changes 2 of the 3 foreground voxels
    assert np.allclose(step_change_rates(given, new), [0.0, 2 / 3])
    assert np.isnan(step_change_rates(np.zeros((1, 2, 2)), np.zeros((1, 1, 2, 2))))[0]
    with pytest.raises(ValueError, match="expected"):
        step_change_rates(given, new[0])


def test_window_starts_spread_over_the_depth():
    assert window_starts(20, 6, 3) == [2, 7, 12] and window_starts(80, 6, 1) == [37]  # centres of equal parts
    assert window_starts(6, 6, 4) == [0] and window_starts(5, 6, 2) == []


class _Truth(torch.nn.Module):
    """An MC-DPM predicting x_0 that returns the real window it is asked for (position = start / D)."""

    subsequence_length = 4

    def __init__(self, volume: torch.Tensor, num_classes: int) -> None:
        super().__init__()
        self.volume, self.num_classes = volume, num_classes
        self.weight = torch.nn.Parameter(torch.zeros(1))  # a parameter, for the device

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        m, (d, h, w) = self.subsequence_length, self.volume.shape
        starts = [int(round(p * d)) for p in position.tolist()]
        windows = torch.stack([self.volume[s : s + m] for s in starts])
        return one_hot_slices(windows, self.num_classes).reshape(len(starts), -1, h, w)


def _sampler() -> SubsequenceSampler:
    return SubsequenceSampler(DDIMScheduler(100, prediction_type="sample"), num_inference_steps=4)


def test_a_model_that_returns_the_truth_has_no_seed_gap():
    rng = np.random.default_rng(1)
    volume = torch.from_numpy(rng.integers(0, 3, (16, 8, 8)))
    samples = sample_window_pairs(_Truth(volume, 3), _sampler(), [volume], 3, 2, windows_per_volume=3)
    assert samples.first.shape == (3, 2, 8, 8) and np.array_equal(samples.first, samples.truth)
    assert np.array_equal(samples.second, samples.truth)
    assert np.array_equal(samples.truth[1], volume[6 + 2 : 6 + 4].numpy())  # window starts 2, 6, 10
    assert np.array_equal(samples.last_given, volume[[2 + 1, 6 + 1, 10 + 1]].numpy())
    # the truth's own steps through each window: given -> new 0 -> new 1
    steps = step_change_rates(samples.last_given, samples.first)
    assert np.allclose(steps, step_change_rates(samples.last_given, samples.truth))
    gaps = SeedAgreement(_Truth(volume, 3), _sampler(), (8, 8), 2, 3, windows_per_volume=3)(
        [volume.permute(1, 2, 0).numpy()]
    )
    assert np.allclose(gaps, 0.0)


def test_window_samples_are_seeded_per_window_and_keep_the_given_slices_out():
    network = random_mcdpm(3, 4)
    volumes = [torch.randint(0, 3, (12, 8, 8)), torch.randint(0, 3, (10, 8, 8))]
    first = sample_window_pairs(network, _sampler(), volumes, 3, 2, windows_per_volume=2, batch_size=3)
    again = sample_window_pairs(network, _sampler(), volumes, 3, 2, windows_per_volume=2, batch_size=1)
    assert first.first.shape == (4, 2, 8, 8)  # two windows per volume, the 2 new slices of each
    assert all(np.array_equal(a, b) for a, b in zip(first, again))  # the batch does not change a window's sample
    # window i draws with seeds seed + 2i and seed + 2i + 1: shifting the seed by one shifts the draws
    shifted = sample_window_pairs(network, _sampler(), volumes[:1], 3, 2, windows_per_volume=2, seed=1)
    assert np.array_equal(shifted.first[0], first.second[0]) and np.array_equal(shifted.truth, first.truth[:2])
