"""benchmarks/image_stage's drift references: the error at the drift slices of images made without real slices, the
excess drift built on it, and the feature FD of the real images mirrored and shifted."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_drift_windows_start_at_the_fractions_and_stop_at_the_volume_end() -> None:
    from image_stage import DRIFT_SLICES, DRIFT_STARTS, drift_windows

    assert DRIFT_STARTS == (0.3, 0.5, 0.7) and DRIFT_SLICES == 12
    assert drift_windows(80) == [(24, 36), (40, 52), (56, 68)]
    assert drift_windows(30) == [(9, 21), (15, 27), (21, 30)]  # the last window has 9 slices


def test_errors_at_drift_slices_average_each_windows_slice_inside_the_foreground() -> None:
    from image_stage import errors_at_drift_slices

    depth = 40
    label = np.zeros((4, 4, depth), dtype=np.int64)
    label[1:3, 1:3] = 1
    real = torch.rand(4, 4, depth) * 2 - 1
    offset = 0.01 * torch.arange(depth, dtype=torch.float32)  # wrong by 0.01 z inside, by 1 outside
    image = torch.where(torch.from_numpy(label > 0), real + offset, real + 1.0)

    errors = errors_at_drift_slices([image], [label], [real])
    # windows start at slices 12, 20 and 28: slice k of the windows is slices 12 + k, 20 + k, 28 + k
    assert errors == pytest.approx([0.01 * (20 + k) for k in range(12)])
    assert errors_at_drift_slices([real], [label], [real]) == pytest.approx([0.0] * 12)


def test_excess_drift_is_one_when_the_continuation_errs_as_the_whole_volume() -> None:
    from image_stage import DRIFT_AT, whole_volume_scores

    label = np.ones((2, 2, 40), dtype=np.int64)
    real = torch.zeros(2, 2, 40)
    image = torch.full((2, 2, 40), 0.2)
    judge = SimpleNamespace(real=SimpleNamespace(labels=[label], images=[real]))
    settled = [0.1] + [0.2] * 11  # the first slice helped by real slices, then the whole volume's error
    scores = whole_volume_scores(settled, [image], judge)
    assert scores["whole_volume_error"] == pytest.approx([0.2] * 12)
    assert scores["excess_drift_ratio"] == pytest.approx(1.0)
    assert settled[DRIFT_AT - 1] / settled[0] == pytest.approx(2.0)  # what drift_ratio would call drifting
    assert whole_volume_scores([0.1] + [0.3] * 11, [image], judge)["excess_drift_ratio"] == pytest.approx(1.5)


def _left_right_features(slices: torch.Tensor) -> torch.Tensor:
    """``(N, 1, a, b)`` -> ``(N, 2)``: each slice's mean and its first half's mean less its second half's along a."""
    half = slices.shape[2] // 2
    sides = slices[:, :, :half].mean((1, 2, 3)) - slices[:, :, half:].mean((1, 2, 3))
    return torch.stack([slices.mean((1, 2, 3)), sides], 1)


def test_other_real_fd_mirrors_the_first_axis() -> None:
    from image_stage import OTHER_REAL, other_real_fd

    generator = torch.Generator().manual_seed(0)
    base = torch.rand(4, 6, 5, generator=generator) * 0.5
    symmetric = torch.cat([base, base.flip(0)])  # (8, 6, 5): mirrored along the first axis it is itself
    lopsided = torch.cat([base + 0.4, base.flip(0) - 0.4])

    def judge(images: list[torch.Tensor]) -> SimpleNamespace:
        return SimpleNamespace(extract=_left_right_features, real=SimpleNamespace(images=images))

    assert set(OTHER_REAL) == {"mirrored left to right", "shifted one voxel"}
    assert other_real_fd(judge([symmetric, symmetric + 0.1]))["mirrored left to right"] == pytest.approx(0.0, abs=1e-6)
    fd = other_real_fd(judge([lopsided, lopsided + 0.1]))
    assert fd["mirrored left to right"] > 0.1  # the halves swap: the feature's sign flips in two of three views
    assert 0 < fd["shifted one voxel"] < fd["mirrored left to right"]
