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
def test_the_gpu_quality_smoke_run_trains_reports_draws_the_curve_and_times_on_a_cpu(tmp_path):
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
    for key in ("alignment_dice", "feature_fd"):
        assert all(_finite(quality[key][row]) for row in ("reference", "lookup", "refined", "unrefined")), key
    assert quality["settings"]["mask"]["max_iterations"] == 8

    curve = json.loads((out / "gpu_mask_curve.json").read_text())
    assert [p["iterations"] for p in curve["points"]] == [2, 4, 8]
    for point in curve["points"]:
        assert point["volumes"] == 8 and 0.0 <= point["slice_change_rate"]["synthetic"] <= 1.0
        assert set(point["structures"]) == set(quality["structures"])

    speed = json.loads((out / "gpu_benchmark.json").read_text())
    assert speed["anatomies"]["brain"]["training"]["mask_mcdpm"]["iterations_per_second"] > 0
