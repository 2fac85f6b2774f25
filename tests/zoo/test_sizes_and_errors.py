"""Sizes from the data, and the one-line ending of a bundle run that meets bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from medgen3d.data.io import DataError, SettingError
from medgen3d.zoo.errors import find_data_error
from medgen3d.zoo.sizes import fit_size, slice_size


def test_the_default_size_is_the_datas_and_a_rounded_one_is_reported(tiny_dataset, capsys):
    assert slice_size(tiny_dataset, None, 4) == (16, 16)  # the tiny data's own in-plane size
    assert capsys.readouterr().err == ""
    assert slice_size(tiny_dataset, [30, 18], 8, "mask_mcdpm") == (32, 16)
    assert "[mask_mcdpm] image size [30, 18] rounded to [32, 16]: the network needs multiples of 8" in (
        capsys.readouterr().err
    )
    assert fit_size([3, 100], 16) == (16, 96)  # never below one multiple
    with pytest.raises(SettingError, match=r"image_size: every side must be positive, got \[0, 16\]"):
        fit_size([0, 16], 4)
    with pytest.raises(SettingError, match=r"image_size: must be two numbers"):
        slice_size(tiny_dataset, [16, 16, 16], 4)


def test_a_data_error_is_found_through_the_wrapping_of_monais_config_runner():
    inner = DataError("/data/x.nii.gz: file not found")
    try:
        try:
            raise inner
        except DataError as err:
            raise RuntimeError("Failed to evaluate ConfigExpression") from err
    except RuntimeError as outer:
        assert find_data_error(outer) is inner
    assert find_data_error(RuntimeError("other")) is None


@pytest.mark.parametrize("debug", [False, True])
def test_an_uncaught_data_error_ends_with_one_line(debug):
    code = (
        "import medgen3d.zoo.errors\n"
        "from medgen3d.data.io import DataError\n"
        "try:\n    raise DataError('/data/case.nii.gz: not a NIfTI file')\n"
        "except DataError as err:\n    raise RuntimeError('config expression failed') from err\n"
    )
    env = {"MEDGEN3D_DEBUG": "1"} if debug else {}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=120
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1
    assert lines[-1] == "medgen3d: error: /data/case.nii.gz: not a NIfTI file"
    assert ("Traceback" in result.stderr) == debug  # the traceback only when asked for


def test_default_labels_come_from_the_data_else_from_the_training_record(tiny_dataset, tmp_path):
    from medgen3d.data.dataset import DatasetSpec
    from medgen3d.zoo.record import default_labels, write_training_record

    expected = {"0": "background", "1": "slab_1", "2": "slab_2", "3": "slab_3"}
    assert default_labels(tiny_dataset.root, tmp_path / "models") == expected
    other = DatasetSpec("other", "CT", {0: "background", 1: "liver"})
    write_training_record(other, tmp_path / "models")
    assert default_labels(tiny_dataset.root, tmp_path / "models") == expected  # the data wins
    assert default_labels(tmp_path / "none", tmp_path / "models") == {"0": "background", "1": "liver"}
    with pytest.raises(DataError, match=r"none: dataset folder not found, and no training record .* --dataset_dir"):
        default_labels(tmp_path / "none", tmp_path / "empty")
