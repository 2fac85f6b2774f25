"""benchmarks/image_stage's learning curve: its table carries every point and both reference rows, its plot draws the
real images' values as lines, and the command refuses multiples below 1 before it loads anything."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _scores(difference: float, cnr: float | None, drift: bool = True) -> dict[str, Any]:
    scores = {
        "mean_abs_difference": difference,
        "alignment_dice": 0.7,
        "feature_fd": 0.02,
        "contrast_to_noise": {"white_matter vs cortex": cnr, "cortex vs csf": cnr},
    }
    return scores | ({"drift_ratio": 1.25} if drift else {})


def _results() -> dict[str, Any]:
    points = [
        {"multiple": m, "iterations": 400 * m, "training_seconds": 300.0 * m, "machine": "test"}
        | _scores(0.08 / m, 3.0 - 0.2 * m)
        for m in (1, 2, 4)
    ]
    real, lookup = _scores(0.0, 2.44, drift=False), _scores(0.077, None, drift=False)
    return {"dataset": "brain-mni", "setting": "defaults", "iterations": 400, "points": points} | {
        "real": real,
        "lookup": lookup,
    }


def test_curve_table_rows() -> None:
    from image_stage import curve_markdown

    lines = curve_markdown(_results()).splitlines()
    rows = [line for line in lines if line.startswith("| ")][1:]  # the header first
    assert [row.split(" | ")[0] for row in rows] == ["| real image", "| per-label lookup", "| 400", "| 800", "| 1600"]
    assert rows[2].split(" | ")[2] == "0.080" and rows[4].split(" | ")[2] == "0.020"
    assert rows[0].split(" | ")[5] == "–"  # the real images have no drift: the generator's alone
    assert rows[1].rstrip(" |").endswith("∞ | ∞")  # the lookup has no spread inside a structure
    assert rows[4].rstrip(" |").endswith("2.20 | 2.20")


def test_curve_plot_draws_reference_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from image_stage import curve_plot

    figures = []
    monkeypatch.setattr(plt.Figure, "savefig", lambda fig, path, **_: figures.append(fig))
    monkeypatch.setattr(plt, "close", lambda fig: None)
    curve_plot(_results(), tmp_path / "curve.png")
    [figure] = figures
    axes = {ax.get_title(): ax for ax in figure.axes}
    cnr = axes["CNR white_matter vs cortex"]
    dashed = [line.get_ydata()[0] for line in cnr.get_lines() if line.get_linestyle() == "--"]
    assert dashed == [2.44]  # the real value only: the lookup's is infinite
    [generator] = [line for line in cnr.get_lines() if line.get_linestyle() == "-"]
    assert list(generator.get_xdata()) == [400, 800, 1600]
    assert list(generator.get_ydata()) == pytest.approx([2.8, 2.6, 2.2])
    assert len([ln for ln in axes["mean abs. difference to real"].get_lines() if ln.get_linestyle() == "--"]) == 2


def test_curve_refuses_multiples_below_one() -> None:
    from image_stage import curve

    with pytest.raises(SystemExit, match="--multiples"):
        curve("brain-mni", multiples=(0, 2))


def test_curve_plot_shows_excess_drift_and_the_mirrored_real_images_only_when_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from image_stage import curve_plot

    figures = []
    monkeypatch.setattr(plt.Figure, "savefig", lambda fig, path, **_: figures.append(fig))
    monkeypatch.setattr(plt, "close", lambda fig: None)
    curve_plot(_results(), tmp_path / "before.png")  # a curve scored before both measures
    results = _results()
    for point in results["points"]:
        point["excess_drift_ratio"] = 1.0
    results["real"]["feature_fd_of_other_real"] = {"mirrored left to right": 0.0099, "shifted one voxel": 0.0045}
    curve_plot(results, tmp_path / "after.png")
    before, after = ({ax.get_title(): ax for ax in figure.axes} for figure in figures)
    excess = "excess drift (over the whole volume's)"
    assert excess not in before and excess in after
    assert [ln.get_ydata()[0] for ln in after[excess].get_lines() if ln.get_linestyle() == ":"] == [1.0]
    dotted = [ln.get_ydata()[0] for ln in after["feature FD"].get_lines() if ln.get_linestyle() == ":"]
    assert dotted == [0.0099] and not [ln for ln in before["feature FD"].get_lines() if ln.get_linestyle() == ":"]
