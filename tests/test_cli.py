from __future__ import annotations

import json

import numpy as np
import pytest

from medgen3d.cli import main
from medgen3d.data.dataset import read_dataset
from medgen3d.data.io import load_nifti, save_nifti


def test_validate_prints_a_summary(tiny_dataset, capsys):
    assert main(["data", "validate", str(tiny_dataset.root)]) == 0
    out = capsys.readouterr()
    assert "dataset 'tiny' (MR)" in out.out and "training 3, validation 1, test 1" in out.out
    assert "validate [5/5]" in out.err  # progress goes to stderr


def test_bad_dataset_is_a_one_line_error_naming_the_file(tiny_dataset, capsys):
    (tiny_dataset.root / "dataset.json").write_text(json.dumps({"name": "x"}))
    assert main(["data", "validate", str(tiny_dataset.root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medgen3d: error: ") and "dataset.json: missing required key(s)" in err
    assert "Traceback" not in err


def test_import_then_restore_round_trip(tmp_path, capsys):
    affine = np.array([[-2.0, 0, 0, 10], [0, -2.0, 0, 5], [0, 0, 3.0, 0], [0, 0, 0, 1]])
    label = np.zeros((7, 6, 5), np.uint8)
    label[2:5, 1:4, 1:4] = 4
    for case in ("a", "b"):
        save_nifti(tmp_path / "src" / "imagesTr" / f"{case}.nii.gz", label * 10.0, affine)
        save_nifti(tmp_path / "src" / "labelsTr" / f"{case}.nii.gz", label, affine)
    args = [
        "data",
        "import",
        str(tmp_path / "src"),
        str(tmp_path / "ds"),
        "--modality",
        "MR",
        "--spacing",
        "1",
        "--label_map",
        '{"4": 1}',
        "--labels",
        '{"0": "background", "1": "organ"}',
        "--split",
        "[1, 1, 0]",
    ]
    assert main(args) == 0
    spec = read_dataset(tmp_path / "ds")
    assert spec.labels == {0: "background", 1: "organ"} and len(spec.training) == len(spec.validation) == 1
    case = spec.training[0]
    assert (
        main(
            [
                "data",
                "restore",
                str(spec.root),
                str(spec.path(case.label)),
                "--case",
                case.case_id,
                "--out",
                str(tmp_path / "back.nii.gz"),
            ]
        )
        == 0
    )
    back = load_nifti(tmp_path / "back.nii.gz")
    np.testing.assert_array_equal(back.array, (label == 4).astype(np.uint8))
    np.testing.assert_allclose(back.affine, affine)


def _brain_mni(out, preset):
    return [
        "data",
        "brain-mni",
        "--out",
        str(out),
        "--preset",
        preset,
        "--num_training",
        "1",
        "--num_validation",
        "0",
        "--num_test",
        "1",
    ]


def test_brain_mni_and_preview_commands(tmp_path, capsys):
    pytest.importorskip("nilearn")
    out = tmp_path / "brain"
    assert main(_brain_mni(out, "tiny")) == 0
    assert main(["preview", str(out), "--max_cases", "1"]) == 0
    assert (out / "previews" / "case-000.png").is_file()
    assert main(_brain_mni(out, "small")) == 2
    assert "built with other settings" in capsys.readouterr().err


def test_brain_mni_scanner_b_builds_the_second_scanner_dataset(tmp_path, capsys):
    pytest.importorskip("nilearn")
    out = tmp_path / "brain-b"
    assert main([*_brain_mni(out, "tiny"), "--scanner", "b"]) == 0
    spec = read_dataset(out)
    assert spec.name == "brain-mni-scanner-b" and spec.extra["medgen3d"]["params"]["scanner"] == "b"
    assert f"brain-mni-scanner-b (tiny): 2 subjects in {spec.root}" in capsys.readouterr().out
    assert main([*_brain_mni(tmp_path / "brain-c", "tiny"), "--scanner", "c"]) == 2
    assert "scanner must be one of ['a', 'b'], got 'c'" in capsys.readouterr().err


def test_subset_command_writes_the_first_cases(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "sub"
    assert main(["data", "subset", str(tiny_dataset.root), "--out", str(out), "--training", "2"]) == 0
    spec = read_dataset(out)
    assert spec.training == tiny_dataset.training[:2] and spec.test == tiny_dataset.test
    assert capsys.readouterr().out.strip() == f"tiny subset (training 2, validation 1, test 1) in {spec.root}"
    args = ["data", "subset", str(tiny_dataset.root), "--out", str(tmp_path / "sub2"), "--training", "4"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("medgen3d: error: ") and "asked for 4 training cases but the training split has only 3" in err
    assert err.count("\n") == 1
