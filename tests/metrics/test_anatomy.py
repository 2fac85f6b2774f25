from __future__ import annotations

import numpy as np
import pytest

from medgen3d.metrics.anatomy import (
    connected_components,
    fraction_distance,
    label_fractions,
    slice_continuity,
    summarise,
)


def test_fractions_components_and_continuity_on_known_volumes():
    volume = np.zeros((10, 10, 4), dtype=np.int64)
    volume[1:3, 1:3, :] = 1  # one tube of label 1 through every slice
    volume[6:8, 6:8, 0] = 2  # two separate blobs of label 2
    volume[6:8, 6:8, 3] = 2
    assert label_fractions(volume, 3) == pytest.approx([1 - 24 / 400, 16 / 400, 8 / 400])
    assert connected_components(volume, 3).tolist() == [1, 2]
    continuity = slice_continuity(volume, 3)
    assert continuity[0] == pytest.approx(1.0)  # identical consecutive slices
    assert continuity[1] == pytest.approx(0.0)  # label 2 never overlaps from one slice to the next
    assert np.isnan(slice_continuity(volume, 4)[2])  # label 3 is absent


def test_fraction_distance_is_zero_for_identical_sets_and_the_shift_for_shifted_ones():
    real = np.random.default_rng(0).dirichlet([5, 2, 1], size=20)
    assert fraction_distance(real, real) == pytest.approx([0, 0, 0])
    shifted = real + np.array([0.0, 0.05, -0.05])
    assert fraction_distance(shifted, real) == pytest.approx([0.0, 0.05, 0.05])


def test_summarise_stacks_per_volume_measures():
    volumes = [np.zeros((4, 4, 3), np.int64), np.ones((4, 4, 3), np.int64)]
    summary = summarise(volumes, 2)
    assert summary.fractions.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert summary.components.tolist() == [[0], [1]]
