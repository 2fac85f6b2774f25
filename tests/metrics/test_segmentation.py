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
    mean_present,
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
    dice = dice_per_structure(a, b, 4)
    assert dice[:2] == pytest.approx([0.5, 0.0]) and np.isnan(dice[2])  # label 3 absent from both
    with pytest.raises(ValueError, match="differs from the ground truth"):
        dice_per_structure(a, b[:5], 4)


def test_a_structure_absent_from_both_maps_has_no_dice_and_one_only_predicted_scores_zero():
    truth = np.zeros((6, 6, 4), np.int64)
    truth[:3] = 1
    prediction = truth.copy()
    prediction[5, 5, 3] = 2  # label 2 predicted on one voxel, absent from the truth
    dice = dice_per_structure(prediction, truth, 4)  # label 3 absent from both
    assert dice[0] == 1.0 and dice[1] == 0.0 and np.isnan(dice[2])
    assert dice_per_structure(truth, prediction, 4)[1] == 0.0  # absent from the prediction only
    # the mean over structures counts the two that have a score, not the absent one (as 1 or as NaN)
    assert mean_present(dice) == pytest.approx(0.5)
    both = dice_per_structure(truth, truth, 3)  # one perfect structure, one absent from both
    assert both[0] == 1.0 and np.isnan(both[1]) and mean_present(both) == 1.0


def test_mean_present_averages_over_scores_and_is_nan_only_where_there_is_none():
    rows = np.array([[1.0, np.nan, np.nan], [0.5, 0.2, np.nan]])
    assert mean_present(rows, axis=0)[:2] == pytest.approx([0.75, 0.2]) and np.isnan(mean_present(rows, axis=0)[2])
    assert mean_present([None, 0.4]) == pytest.approx(0.4)  # null read back from JSON
    assert np.isnan(mean_present([np.nan, np.nan]))


def test_a_structure_without_a_score_is_left_out_of_means_and_shown_as_n_a(tmp_path):
    nan = float("nan")
    runs = [
        SegmentationResult("E2-1", "unet3d", 0, "brain-mni", {"cortex": 0.8, "wm": nan}),
        SegmentationResult("E2-1", "unet3d", 1, "brain-mni", {"cortex": 0.6, "wm": 0.5}),
        SegmentationResult("E2-2", "unet3d", 0, "brain-mni", {"cortex": 0.7, "wm": nan}),
    ]
    assert runs[0].mean == pytest.approx(0.8)  # not (0.8 + 1) / 2, not NaN
    assert np.isnan(SegmentationResult("E2-1", "unet3d", 0, "x", {"wm": nan}).mean)
    summary = summarise(runs)
    assert summary[("E2-1", "unet3d", "brain-mni")]["wm"] == pytest.approx((0.5, 0.0))  # the seed with a score
    assert summary[("E2-1", "unet3d", "brain-mni")]["mean"] == pytest.approx((0.675, 0.125))  # seeds: 0.8 and 0.55
    assert all(np.isnan(v) for v in summary[("E2-2", "unet3d", "brain-mni")]["wm"])
    assert "| E2-2 | unet3d | – | 0.700 ± 0.000 | n/a | 0.700 ± 0.000 |" in markdown_table(runs)
    paths = write_results(runs, tmp_path)
    # valid JSON: NaN is null (json.loads would accept the non-standard NaN, parse_constant rejects it)
    rows = json.loads(paths["json"].read_text(), parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert rows[0]["dice"] == {"cortex": 0.8, "wm": None} and rows[0]["mean"] == pytest.approx(0.8)


def _results():
    runs = []
    for seed, (real, synth) in enumerate([(0.80, 0.70), (0.90, 0.74)]):
        dice = {"cortex": real, "wm": real - 0.1}
        runs.append(SegmentationResult("E2-1", "unet3d", seed, "brain-mni", dice, cases=10, steps="300"))
        dice = {"cortex": synth, "wm": synth}
        runs.append(SegmentationResult("E2-4", "unet3d", seed, "brain-mni", dice, cases=10, steps="150 + 150"))
        runs.append(SegmentationResult("E3-2", "unet3d", seed, "brain-mni", dice, cases=10, steps="300 + 100"))
    return runs


def test_summary_is_mean_and_std_over_seeds():
    summary = summarise(_results())
    assert summary[("E2-1", "unet3d", "brain-mni")]["cortex"] == pytest.approx((0.85, 0.05))
    assert summary[("E2-1", "unet3d", "brain-mni")]["mean"] == pytest.approx((0.80, 0.05))
    assert summary[("E2-4", "unet3d", "brain-mni")]["wm"] == pytest.approx((0.72, 0.02))


def test_table_and_files(tmp_path):
    table = markdown_table(_results())
    assert table.startswith(
        "Dice per structure on held-out cases (test cases: brain-mni 10), mean ± std over 2 seed(s)"
    )
    # one table per family (E2: Tables 2-3, E3: Table 4), each row with its optimiser steps
    assert table.count("| strategy | network | steps | brain-mni: cortex | brain-mni: wm | brain-mni: mean |") == 2
    assert "| E2-1 | unet3d | 300 | 0.850 ± 0.050 | 0.750 ± 0.050 | 0.800 ± 0.050 |" in table
    assert "| E2-4 | unet3d | 150 + 150 | 0.720 ± 0.020 |" in table
    assert table.index("| E2-4 |") < table.rindex("| strategy |") < table.index("| E3-2 | unet3d | 300 + 100 |")
    paths = write_results(_results(), tmp_path)
    assert json.loads(paths["json"].read_text())[0]["mean"] == pytest.approx(0.75)
    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == 6 * 3 and rows[0]["structure"] == "cortex"
    assert (rows[0]["steps"], rows[0]["cases"], rows[3]["steps"]) == ("300", "10", "150 + 150")
    assert paths["md"].read_text() == table
    assert mpimg.imread(paths["png"]).shape[0] > 100
    with pytest.raises(ValueError, match="no results"):
        write_results([], tmp_path)
