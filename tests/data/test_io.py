from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from medgen3d.data.io import DataError, atomic_path, json_safe, load_nifti, read_json, save_nifti, write_json
from tests.conftest import TINY_AFFINE


def test_save_load_round_trip_keeps_values_dtype_and_affine(tmp_path):
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    save_nifti(tmp_path / "v.nii.gz", array, TINY_AFFINE)
    volume = load_nifti(tmp_path / "v.nii.gz")
    assert volume.array.dtype == np.int16
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.affine, TINY_AFFINE)
    header = nib.load(tmp_path / "v.nii.gz").header
    assert int(header["sform_code"]) == 1 and int(header["qform_code"]) == 1


def test_atomic_path_keeps_old_file_and_leaves_no_temporary_on_error(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"version": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"version": 2, "trunc')
            raise RuntimeError("interrupted")
    assert read_json(target) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_json_safe_writes_non_finite_floats_as_null_so_strict_readers_accept_the_file(tmp_path):
    content = {"dice": {"a": np.float64("nan"), "b": 0.5}, "rows": [(float("inf"), 1), [np.float32(2.0)]]}
    write_json(tmp_path / "r.json", json_safe(content))
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    # parse_constant is called only for NaN / Infinity: a strict reader
    strict = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert strict == {"dice": {"a": None, "b": 0.5}, "rows": [[None, 1], [2.0]]}


def test_atomic_path_temporary_keeps_the_nifti_suffix(tmp_path):
    with atomic_path(tmp_path / "a.nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
    assert (tmp_path / "a.nii.gz").read_bytes() == b"x"


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"nope\.nii\.gz: file not found"):
        load_nifti(tmp_path / "nope.nii.gz")


def test_non_nifti_name_is_rejected(tmp_path):
    (tmp_path / "scan.png").write_bytes(b"\x89PNG")
    with pytest.raises(DataError, match=r"scan\.png: not a NIfTI file"):
        load_nifti(tmp_path / "scan.png")


def test_corrupt_nifti_is_named(tmp_path):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(gzip.compress(b"this is not a nifti header"))
    with pytest.raises(DataError, match=r"broken\.nii\.gz: cannot be read as NIfTI"):
        load_nifti(path)


def test_nan_and_inf_are_rejected_with_count(tmp_path):
    array = np.zeros((4, 4, 4), dtype=np.float32)
    array[0, 0, 0], array[1, 1, 1] = np.nan, np.inf
    save_nifti(tmp_path / "bad.nii.gz", array, np.eye(4))
    with pytest.raises(DataError, match=r"bad\.nii\.gz: 2 voxels are NaN or infinite"):
        load_nifti(tmp_path / "bad.nii.gz")


def test_4d_volume_is_rejected_but_singleton_fourth_axis_is_dropped(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2), np.float32), np.eye(4)), tmp_path / "4d.nii.gz")
    with pytest.raises(DataError, match="expected a 3D volume"):
        load_nifti(tmp_path / "4d.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((3, 3, 3, 1), np.float32), np.eye(4)), tmp_path / "3d1.nii.gz")
    assert load_nifti(tmp_path / "3d1.nii.gz").array.shape == (3, 3, 3)


def test_invalid_json_is_named(tmp_path):
    (tmp_path / "dataset.json").write_text("{'single': quotes}")
    with pytest.raises(DataError, match=r"dataset\.json: not valid JSON"):
        read_json(tmp_path / "dataset.json")
