from __future__ import annotations

import csv
import json

import matplotlib.image as mpimg
import numpy as np
import pytest

from medgen3d.metrics.segmentation import (
    SegmentationResult,
    dice_per_structure,
    markdown_table,
    summarise,
    write_results,
)
from tests.conftest import slab_label


def test_dice_of_a_mask_with_itself_is_one_and_known_overlaps_give_known_values():
    label = slab_label()
    assert dice_per_structure(label, label, 4).tolist() == [1.0, 1.0, 1.0]
    a, b = np.zeros((10, 10, 10), np.int64), np.zeros((10, 10, 10), np.int64)
    a[0:4], b[2:6] = 1, 1  # 400 voxels each, 200 shared: Dice 2*200/800
    a[8:, :, :5], b[8:, :, 5:] = 2, 2  # disjoint
    assert dice_per_structure(a, b, 4) == pytest.approx([0.5, 0.0, 1.0])  # label 3 absent from both
    with pytest.raises(ValueError, match="differs from the ground truth"):
        dice_per_structure(a, b[:5], 4)


def _results():
    runs = []
    for seed, (real, synth) in enumerate([(0.80, 0.70), (0.90, 0.74)]):
        runs.append(SegmentationResult("E2-1", "unet3d", seed, "brain-mni", {"cortex": real, "wm": real - 0.1}))
        runs.append(SegmentationResult("E2-2", "unet3d", seed, "brain-mni", {"cortex": synth, "wm": synth}))
    return runs


def test_summary_is_mean_and_std_over_seeds():
    summary = summarise(_results())
    assert summary[("E2-1", "unet3d", "brain-mni")]["cortex"] == pytest.approx((0.85, 0.05))
    assert summary[("E2-1", "unet3d", "brain-mni")]["mean"] == pytest.approx((0.80, 0.05))
    assert summary[("E2-2", "unet3d", "brain-mni")]["wm"] == pytest.approx((0.72, 0.02))


def test_table_and_files(tmp_path):
    table = markdown_table(_results())
    assert "| strategy | network | brain-mni: cortex | brain-mni: wm | brain-mni: mean |" in table
    assert "| E2-1 | unet3d | 0.850 ± 0.050 | 0.750 ± 0.050 | 0.800 ± 0.050 |" in table
    paths = write_results(_results(), tmp_path)
    assert json.loads(paths["json"].read_text())[0]["mean"] == pytest.approx(0.75)
    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == 4 * 3 and rows[0]["structure"] == "cortex"
    assert paths["md"].read_text() == table
    assert mpimg.imread(paths["png"]).shape[0] > 100
    with pytest.raises(ValueError, match="no results"):
        write_results([], tmp_path)
