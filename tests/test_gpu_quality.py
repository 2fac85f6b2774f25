"""benchmarks/gpu_quality.py runs end to end on a CPU at tiny sizes and writes every results file it promises."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@pytest.mark.slow
def test_the_gpu_quality_smoke_run_trains_reports_draws_the_curve_runs_the_arms_and_times_on_a_cpu(tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable,
        "benchmarks/gpu_quality.py",
        "--device",
        "cpu",
        "--tiny",
        "--budget_s",
        "900",
        "--out",
        str(out),
        "--work",
        str(tmp_path / "work"),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = {"gpu_quality.json", "gpu_quality.md", "gpu_quality.png", "gpu_mask_curve.json", "gpu_mask_curve.png"}
    assert expected | {"gpu_benchmark.json", "gpu_benchmark.md"} == {p.name for p in out.iterdir()}

    quality = json.loads((out / "gpu_quality.json").read_text())
    assert quality["cases"] == 3 and quality["device"]["device"] == "cpu"
    # every stage (each refiner view) trained to its planned end: the budget was ample
    views = {f"refiner/{view}" for view in ("axial", "coronal", "sagittal")}
    assert set(quality["training"]) == {"mask", "image", "segmenter"} | views
    for name, record in quality["training"].items():
        assert record["iterations"] == record["planned_iterations"] > 0, (name, record)
        # the data wait and the step are timed apart, after a warm-up of five iterations
        if record["iterations"] > 5:
            assert record["data_seconds_per_iteration"] >= 0 and record["step_seconds_per_iteration"] > 0, name
    for key in ("alignment_dice", "feature_fd"):
        assert all(_finite(quality[key][row]) for row in ("reference", "lookup", "refined", "unrefined")), key
    assert quality["settings"]["mask"]["max_iterations"] == 8

    # the headline arms on the run's own pairs: the segmenter on 2 real subjects, generators on all 4
    arms = quality["arms"]
    assert (arms["real_training_subjects"], arms["generator_training_subjects"], arms["steps"]) == (2, 4, 4)
    assert set(arms["summary"]) == {"E2-1", "E2-3", "E2-5"}
    for arm, scores in arms["summary"].items():
        assert list(scores) == ["brain-mni"] and 0.0 <= scores["brain-mni"]["mean"] <= 1.0, arm
        assert set(scores["brain-mni"]["structures"]) == set(quality["structures"]), arm
    assert "| E2-5 |" in (out / "gpu_quality.md").read_text()

    curve = json.loads((out / "gpu_mask_curve.json").read_text())
    assert [p["iterations"] for p in curve["points"]] == [2, 4, 8]
    for point in curve["points"]:
        assert point["volumes"] == 8 and 0.0 <= point["slice_change_rate"]["synthetic"] <= 1.0
        assert set(point["structures"]) == set(quality["structures"])

    speed = json.loads((out / "gpu_benchmark.json").read_text())
    assert speed["anatomies"]["brain"]["training"]["mask_mcdpm"]["iterations_per_second"] > 0


def test_the_segmenter_validates_before_its_deadline_can_cut_it_and_the_others_preview_once():
    """A trainer stopped by its deadline keeps what it learned: the segmenter saves its best model at each
    validation, so it must validate at its own interval, not once at the planned end."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_quality import GPU, stage_overrides

    overrides = stage_overrides(tiny=False, device="cuda")
    assert "val_interval" not in overrides["segmentation_eval"]
    for stage in ("mask_mcdpm", "image_vid2vid", "sdm_refiner"):
        assert overrides[stage]["val_interval"] == GPU[stage]["max_iterations"]
        assert overrides[stage]["save_interval"] == GPU[stage]["max_iterations"] // 4


def test_the_training_table_gives_items_per_second_and_marks_a_trainer_its_deadline_stopped(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_quality import main

    record = {
        "mask": {"seconds": 10.0, "iterations": 50, "planned_iterations": 7000,
                 "data_seconds_per_iteration": 0.05, "step_seconds_per_iteration": 0.15},
        "refiner/axial": {"seconds": 4.0, "iterations": 750, "planned_iterations": 750},
    }
    path = tmp_path / "gpu_quality_training.json"
    path.write_text(json.dumps({"training": record}))
    main(table_from=str(path))
    rows = [line.split(" | ") for line in path.with_suffix(".md").read_text().splitlines()[2:]]
    assert rows[0][1:] == ["50 (7000), stopped by its deadline", "32", "10", "160", "0.050", "0.150 |"]
    assert rows[1][1:] == ["750 (750)", "32", "4", "6000", "–", "– |"]
