"""benchmarks/quality_benchmark's tables: the lookup of the synthetic masks gets its own column and change row, and
results recorded before it was measured are drawn as they were."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

STRUCTURE = {
    "presence_rate": 1.0,
    "presence_rate_real": 1.0,
    "fraction_real": 0.2,
    "fraction_synthetic": 0.1,
    "components_real": 10.0,
    "components_synthetic": 5.0,
    "continuity_real": 0.8,
    "continuity_synthetic": 0.9,
    "z_profile_correlation": 0.95,
}


def _results(alignment: dict[str, float]) -> dict[str, Any]:
    rows = {name: 0.1 * (i + 1) for i, name in enumerate(alignment)}
    return {
        "dataset": "tiny small",
        "cases": 2,
        "held_out_cases": 2,
        "machine": "test",
        "settings": {"mask": {"sampler": "DDIM-5"}, "refiner": {}},
        "training_seconds": {"mask": 60.0},
        "structures": {"cortex": STRUCTURE},
        "alignment_dice": alignment,
        "feature_fd": rows,
        "ms_ssim": rows,
        "memorised_cases": 0,
    }


def test_the_lookup_of_the_synthetic_masks_is_a_column_between_the_lookup_and_the_synthetic_sets():
    from quality_benchmark import markdown

    alignment = {"reference": 0.8, "lookup": 0.83, "lookup_synthetic": 0.655, "refined": 0.584, "unrefined": 0.59}
    lines = markdown(_results(alignment)).splitlines()
    header = next(line for line in lines if line.startswith("| measure |"))
    assert header == (
        "| measure | real held-out (reference) | per-label lookup (baseline) | lookup of the synthetic masks | "
        "synthetic, refined | synthetic, unrefined |"
    )
    assert "| alignment Dice (structures present) | 0.800 | 0.830 | 0.655 | 0.584 | 0.590 |" in lines
    # results recorded before the measure: the columns they had
    del alignment["lookup_synthetic"]
    older = markdown(_results(alignment))
    assert "lookup of the synthetic masks" not in older
    assert "| alignment Dice (structures present) | 0.800 | 0.830 | 0.584 | 0.590 |" in older.splitlines()


def test_the_change_file_compares_the_lookup_of_the_synthetic_masks_when_both_runs_have_it():
    from quality_benchmark import change

    before = _results({"reference": 0.8, "lookup": 0.83, "lookup_synthetic": 0.6, "refined": 0.5})
    after = _results({"reference": 0.8, "lookup": 0.83, "lookup_synthetic": 0.66, "refined": 0.44})
    text = change(before, after)
    assert "| alignment Dice, lookup of the synthetic masks | 0.600 | 0.660 | 1.10 | yes |" in text
    assert "| alignment Dice, refined | 0.500 | 0.440 | 0.88 | **no** |" in text  # more than 10% lower
    del before["alignment_dice"]["lookup_synthetic"]
    assert "lookup of the synthetic masks" not in change(before, after).split("| alignment Dice, refined")[1]


def test_curve_point_names_what_it_needs_before_it_builds_anything(tmp_path: Path, monkeypatch) -> None:
    import pytest
    import quality_benchmark

    monkeypatch.setattr(quality_benchmark, "RUNS", tmp_path / "quality")
    monkeypatch.setattr(quality_benchmark, "ROOT", tmp_path)
    with pytest.raises(SystemExit, match="ema-5600.pt"):
        quality_benchmark.curve_point("brain-mni", iterations=5600)
    assert not (tmp_path / "quality").exists()  # no run folder half made
    with pytest.raises(SystemExit, match="curve/.*/1600-iterations/models/model.pt"):  # the image curve's generator
        quality_benchmark.curve_point("brain-mni", iterations=5600, image_iterations=1600)
    with pytest.raises(SystemExit, match="--dataset"):
        quality_benchmark.curve_point("lungs", iterations=5600)


def _report(sets: dict[str, dict[str, float]]) -> dict[str, Any]:
    def entry(dice: dict[str, float]) -> dict[str, Any]:
        return {"alignment_dice": {**dice, "mean": sum(dice.values()) / len(dice)}}

    report = {k: entry(v) for k, v in sets.items() if k in ("reference", "lookup", "lookup_synthetic")}
    report["sets"] = {k: entry(v) for k, v in sets.items() if k in ("refined", "unrefined")}
    return report


def test_tables_rewrites_the_results_files_from_the_reports_with_alignment_by_structure(tmp_path, monkeypatch):
    import json

    import quality_benchmark

    sets = {
        "reference": {"cortex": 0.9, "csf": 0.6},
        "lookup": {"cortex": 1.0, "csf": 0.8},
        "lookup_synthetic": {"cortex": 0.8, "csf": 0.4},
        "refined": {"cortex": 0.7, "csf": 0.2},
        "unrefined": {"cortex": 0.75, "csf": 0.25},
    }
    monkeypatch.setattr(quality_benchmark, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(quality_benchmark, "RUNS", tmp_path / "runs")
    report = tmp_path / "runs" / "tiny_mask-10-iterations" / "eval" / "report" / "report.json"
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps(_report(sets)))
    (tmp_path / "results").mkdir()
    results = _results({k: sum(v.values()) / 2 for k, v in sets.items()})
    path = tmp_path / "results" / "quality_tiny_mask-10-iterations.json"
    path.write_text(json.dumps(results))
    untouched = tmp_path / "results" / "quality_tiny_before.json"  # a copy of older results: never rewritten
    untouched.write_text(json.dumps(results))
    quality_benchmark.tables("tiny")
    written = json.loads(path.read_text())
    assert written["alignment_dice_structures"]["unrefined"] == {"cortex": 0.75, "csf": 0.25}
    assert written["alignment_dice_real_looking"]["csf"] == 0.4 * 0.6 / 0.8
    assert written["training_seconds"] == results["training_seconds"]  # the recorded rest kept
    lines = path.with_suffix(".md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| structure | real held-out |"))
    assert header.split(" | ")[4] == "real-looking images of the synthetic masks (estimate)"
    assert "| csf | 0.600 | 0.800 | 0.400 | 0.300 | 0.200 | 0.250 |" in lines
    assert "| mean | 0.750 | 0.900 | 0.600 | 0.510 | 0.450 | 0.500 |" in lines
    assert json.loads(untouched.read_text()) == results
    assert "by structure" not in quality_benchmark.markdown(results)  # results recorded before: as they were
