from __future__ import annotations

import json

import matplotlib.image as mpimg
import numpy as np
import pytest

from medgen3d.data.io import json_safe, write_json
from medgen3d.metrics.anatomy import slice_change_rate
from medgen3d.metrics.render import markdown_report, memorised_cases, write_plots
from medgen3d.metrics.report import _anatomy, _mean_rows

STRUCTURES = ["wedge", "block", "nodule"]


def _case(width: int) -> np.ndarray:
    """``(8, 8, 12)``: a wedge (label 1) growing along the slices, a block (label 2) in the first 4 slices and
    a nodule (label 3) in slices 8-9."""
    volume = np.zeros((8, 8, 12), np.int64)
    for z in range(12):
        volume[: 1 + z // 2, :width, z] = 1
    volume[:4, 5:, :4] = 2
    volume[6:, 6:, 8:10] = 3
    return volume


def _sets() -> tuple[list[np.ndarray], list[np.ndarray]]:
    real = [_case(width) for width in (1, 2, 3, 4) * 2]
    synthetic = [np.where(v == 3, 0, v) for v in real]  # the nodule is never generated
    synthetic[0] = np.where(synthetic[0] == 2, 0, synthetic[0])  # and the block is missing from one case
    return synthetic, real


def test_anatomy_reports_presence_and_z_profile_correlation_per_structure():
    anatomy = _anatomy(*_sets(), STRUCTURES)
    assert anatomy["presence_rate_real"] == {"wedge": 1.0, "block": 1.0, "nodule": 1.0}
    assert anatomy["presence_rate_synthetic"] == {"wedge": 1.0, "block": 7 / 8, "nodule": 0.0}
    r = anatomy["z_profile_correlation"]
    # the block's mean profile is 7/8 of the real one: the same shape, r = 1
    assert r["wedge"] == pytest.approx(1.0, abs=1e-9) and r["block"] == pytest.approx(1.0, abs=1e-9)
    assert np.isnan(r["nodule"])
    assert np.isnan(anatomy["continuity"]["synthetic"]["nodule"])  # absent everywhere: no continuity either
    # slice pairs (7, 8), (8, 9), (9, 10) of the nodule: Dice 0, 1, 0
    assert anatomy["continuity"]["real"]["nodule"] == pytest.approx(1 / 3)
    assert len(anatomy["mean_z_profiles"]["real"]["wedge"]) == 64
    for key in ("fraction_distance", "fractions", "components", "synthetic_fractions", "real_fractions"):
        assert key in anatomy  # the existing keys are kept
    rate = anatomy["slice_change_rate"]
    synthetic, real = _sets()
    assert rate["real"] == pytest.approx(np.mean([slice_change_rate(v) for v in real]))
    assert rate["synthetic"] == pytest.approx(np.mean([slice_change_rate(v) for v in synthetic]))
    assert 0 < rate["synthetic"] < rate["real"]  # the nodule's and a block's changes are missing


def test_markdown_states_the_slice_change_rate_and_the_seed_gap_when_measured():
    report = _report()
    assert "Slice-change rate" in markdown_report(report) and "Seed agreement gap" not in markdown_report(report)
    report["anatomy"]["seed_agreement_gap"] = {"wedge": 0.25, "block": 0.0, "nodule": float("nan")}
    assert "0 when converged): wedge 0.250, block 0.000, nodule n/a." in markdown_report(report)


def test_alignment_means_skip_the_cases_and_structures_without_a_score():
    nan = float("nan")
    rows = np.array([[1.0, 0.5, nan], [1.0, nan, nan]])  # "nodule" absent from both maps in every case
    means = _mean_rows(rows, STRUCTURES)
    assert means["wedge"] == 1.0 and means["block"] == 0.5  # not (0.5 + 1) / 2
    assert np.isnan(means["nodule"]) and means["mean"] == pytest.approx(0.75)


def _report() -> dict:
    nan = float("nan")
    row = {
        "fidelity_frechet": {"axial": 2.0, "mean": 2.0},
        "diversity_ms_ssim": {"mean": 0.5, "std": 0.1},
        "alignment_dice": _mean_rows(np.array([[1.0, 0.5, nan]]), STRUCTURES),
        "memorisation": [{"case": "c0", "nearest_training_case": "t0", "image_ssim": 0.4, "label_dice": nan}],
    }
    return {
        "real": "real",
        "synthetic": "synthetic",
        "counts": {"training": 8, "held_out": 1, "synthetic": 8},
        "sets": {"refined": row},
        "reference": row,
        "anatomy": _anatomy(*_sets(), STRUCTURES),
    }


def test_markdown_shows_presence_counts_and_n_a_for_undefined_values(tmp_path):
    text = markdown_report(_report())
    assert "| present in (real) | present in (synthetic) | z-profile r |" in text
    lines = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert lines["| block"].endswith("| 8/8 | 7/8 | 1.000 |")
    assert lines["| nodule"].endswith("| 8/8 | 0/8 | n/a |")
    assert "| refined | 1.000 | 0.500 | n/a |" in text  # alignment: the nodule has no Dice
    # the JSON is valid (NaN as null) and markdown reads it back the same
    write_json(tmp_path / "report.json", json_safe(_report()))
    loaded = json.loads((tmp_path / "report.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert loaded["anatomy"]["z_profile_correlation"]["nodule"] is None
    assert markdown_report(loaded) == text


def test_plots_include_the_mean_z_profiles(tmp_path):
    write_plots(tmp_path, _report(), STRUCTURES)
    assert mpimg.imread(tmp_path / "report.png").shape[0] > 100
    assert mpimg.imread(tmp_path / "z_profiles.png").shape[1] > 300


def _report_with_lookup() -> dict:
    """:func:`_report` with LPIPS in every row, and the lookup row (which has no memorisation)."""
    report = _report()
    lpips = {"diversity_lpips": {"axial": 0.3, "mean": 0.3}}
    report["reference"] = report["reference"] | lpips
    report["sets"]["refined"] = report["sets"]["refined"] | lpips
    report["lookup"] = {
        "fidelity_frechet": {"axial": 3.0, "mean": 3.0},
        "diversity_ms_ssim": {"mean": 0.6, "std": 0.1},
        "alignment_dice": _mean_rows(np.array([[0.25, 0.5, 0.75]]), STRUCTURES),
        "label_means": {"background": -1.0, "wedge": 0.25, "block": 0.5, "nodule": 1.0},
        **lpips,
    }
    return report


def test_the_lookup_is_a_row_of_the_image_tables_but_not_of_memorisation(tmp_path):
    report = _report_with_lookup()
    text = markdown_report(report)
    row = "| per-label lookup (baseline) |"
    assert text.count(row) == 4  # fidelity, MS-SSIM, LPIPS and alignment
    assert f"{row} 0.250 | 0.500 | 0.750 |" in text
    assert "The per-label lookup (baseline) row is the real held-out masks" in text
    assert "background -1.000, wedge 0.250, block 0.500, nodule 1.000." in text
    memorisation = text.split("## Memorisation")[1]
    assert row not in memorisation and "| refined |" in memorisation
    assert memorised_cases(report, "refined") == []
    write_json(tmp_path / "report.json", json_safe(report))
    assert markdown_report(json.loads((tmp_path / "report.json").read_text())) == text
    write_plots(tmp_path, report, STRUCTURES)
    assert mpimg.imread(tmp_path / "report.png").shape[0] > 100


def test_a_report_without_the_lookup_renders_without_its_row():
    text = markdown_report(_report())
    assert "per-label lookup" not in text and "| real held-out (reference) |" in text


def test_the_real_looking_estimate_is_a_row_of_the_alignment_table_when_both_lookups_were_measured(tmp_path):
    report = _report_with_lookup()  # reference 1.0 / 0.5 / n/a, lookup 0.25 / 0.5 / 0.75
    report["lookup_synthetic"] = report["lookup"] | {
        "alignment_dice": _mean_rows(np.array([[0.2, 0.4, 0.6]]), STRUCTURES)
    }
    text = markdown_report(report)
    alignment = text.split("## Alignment")[1].split("## Anatomy")[0]
    # wedge 0.2 * 1.0 / 0.25, block 0.4 * 0.5 / 0.5; the nodule has no real score, so no estimate
    assert "| real-looking images of the synthetic masks (estimate) | 0.800 | 0.400 | n/a | 0.600 |" in alignment
    order = [line.split(" | ")[0] for line in alignment.splitlines() if line.startswith("| ")][1:]
    assert order == [
        "| real held-out (reference)",
        "| per-label lookup (baseline)",
        "| per-label lookup of the synthetic masks",
        "| real-looking images of the synthetic masks (estimate)",
        "| refined",
    ]
    assert text.count("real-looking images") == 2  # its row and the sentence saying how it is derived
    write_json(tmp_path / "report.json", json_safe(report))
    assert markdown_report(json.loads((tmp_path / "report.json").read_text())) == text
    assert "real-looking" not in markdown_report(_report_with_lookup())  # one lookup: nothing to derive it from
