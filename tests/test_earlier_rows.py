"""benchmarks/quality_benchmark.with_earlier_rows: a report on a fresh checkout keeps the committed rows it has no
run of, marked, in the settings' order, and keeps none when the committed file measured something else."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _committed(path: Path, iterations: int) -> Path:
    rows = {"a": {"dice": 0.1}, "b": {"dice": 0.2}}
    path.write_text(json.dumps({"iterations": iterations, "rows": rows}))
    return path


def test_rows_without_a_run_here_are_kept_marked_and_ordered(tmp_path):
    from quality_benchmark import with_earlier_rows

    committed = _committed(tmp_path / "results.json", 400)
    here = {"c": {"dice": 0.3}, "b": {"dice": 0.25}}
    merged = with_earlier_rows(committed, ("a", "b", "c"), here, {"iterations": 400})
    assert list(merged) == ["a", "b", "c"]
    assert merged["a"] == {"dice": 0.1, "earlier_run": True}
    assert merged["b"] == {"dice": 0.25}  # this machine's run wins over the committed row
    assert merged["c"] == {"dice": 0.3}


def test_nothing_is_kept_from_a_file_that_measured_otherwise_or_does_not_exist(tmp_path):
    from quality_benchmark import with_earlier_rows

    committed = _committed(tmp_path / "results.json", 200)
    here = {"c": {"dice": 0.3}}
    assert with_earlier_rows(committed, ("a", "b", "c"), here, {"iterations": 400}) == here
    assert with_earlier_rows(tmp_path / "absent.json", ("a", "b", "c"), here) == here
    # names outside the benchmark's settings (a setting since removed) are dropped, not carried forward
    assert with_earlier_rows(committed, ("b", "c"), here) == {"b": {"dice": 0.2, "earlier_run": True}, "c": here["c"]}
