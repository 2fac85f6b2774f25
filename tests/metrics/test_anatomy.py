from __future__ import annotations

import numpy as np
import pytest

from medgen3d.metrics.anatomy import (
    connected_components,
    fraction_distance,
    label_fractions,
    presence,
    slice_continuity,
    summarise,
    z_profile,
    z_profile_correlation,
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
    assert summary.presence.tolist() == [[False], [True]]


def _case(depth: int, width: int) -> np.ndarray:
    """``(8, 8, depth)``: label 1 a wedge whose rows grow with the relative slice position ``t`` (1 row at the
    bottom, 7 at the top, ``width`` columns); label 2 a 4 x 3 block in the first third of the slices only.

    The shape is defined on ``t`` in [0, 1] and sampled at slice centres, so two depths give the same anatomy."""
    volume = np.zeros((8, 8, depth), np.int64)
    for z in range(depth):
        t = (z + 0.5) / depth
        volume[: 1 + round(6 * t), :width, z] = 1
        if t < 1 / 3:
            volume[:4, 5:, z] = 2
    return volume


def _set(depth: int = 40) -> list[np.ndarray]:
    return [_case(depth, width) for width in (2, 3, 4)]


def test_presence_marks_each_foreground_label_with_a_voxel():
    volume = np.zeros((4, 4, 3), np.int64)
    volume[0, 0, 0], volume[1, 1, 2] = 1, 3
    assert presence(volume, 4).tolist() == [True, False, True]


def test_presence_rate_is_one_for_a_complete_set_and_zero_for_a_structure_never_generated():
    real = _set()
    assert summarise(real, 3).presence.mean(0).tolist() == [1.0, 1.0]
    synthetic = [np.where(v == 2, 0, v) for v in real]  # label 2 removed from every synthetic volume
    assert summarise(synthetic, 3).presence.mean(0).tolist() == [1.0, 0.0]
    synthetic[1] = real[1]  # present in one of three
    assert summarise(synthetic, 3).presence.mean(0) == pytest.approx([1.0, 1 / 3])
    # the correlation of a structure missing everywhere is undefined, not a number that looks fine
    correlation = z_profile_correlation([np.where(v == 2, 0, v) for v in real], real, 3)
    assert correlation[0] == pytest.approx(1.0, abs=1e-9) and np.isnan(correlation[1])


def test_z_profile_is_the_area_fraction_per_slice_interpolated_between_slice_centres():
    volume = np.zeros((4, 4, 2), np.int64)
    volume[:1, :, 0] = 1  # 4 of 16 voxels
    volume[:2, :, 1] = 1  # 8 of 16
    assert z_profile(volume, 2, depth=2).tolist() == [[0.25, 0.5]]
    # slice centres at 0.25 and 0.75; targets at 0.125 and 0.875 lie outside and take the end values
    assert z_profile(volume, 2, depth=4) == pytest.approx(np.array([[0.25, 0.3125, 0.4375, 0.5]]))
    assert z_profile(volume, 3, depth=2)[1].tolist() == [0.0, 0.0]  # label 2 absent
    with pytest.raises(ValueError, match="depth"):
        z_profile(volume, 2, depth=0)


def test_z_profile_correlation_is_one_for_identical_sets_negative_when_flipped_and_ignores_depth():
    real = _set()
    assert z_profile_correlation(real, real, 3) == pytest.approx([1.0, 1.0], abs=1e-9)
    flipped = z_profile_correlation([v[..., ::-1] for v in real], real, 3, depth=40)  # 40: no resampling
    assert flipped[0] == pytest.approx(-1.0, abs=1e-6)  # a linear wedge reversed
    # label 2 moves from the first third to the last: disjoint indicators of 13 and 13 of 40 slices,
    # r = -p / (1 - p) with p = 13 / 40
    assert flipped[1] == pytest.approx(-13 / 27)
    # the same anatomy sampled with half the slices: not exactly 1, as label 2's edge falls at 7/20 slices
    # against 13/40 and the resampled step is blurred
    shallow = z_profile_correlation(_set(depth=20), real, 3)
    assert shallow == pytest.approx([0.99, 0.97], abs=0.02)
