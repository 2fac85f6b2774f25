from __future__ import annotations

import numpy as np
import pytest

from medgen3d.data.io import DataError, save_nifti
from medgen3d.data.validate import validate_dataset
from tests.conftest import TINY_AFFINE, TINY_SHAPE, slab_label


def test_valid_dataset_summary_counts_every_voxel(tiny_dataset):
    summary = validate_dataset(tiny_dataset.root)
    assert summary.split_sizes == {"training": 3, "validation": 1, "test": 1}
    assert summary.shapes == {TINY_SHAPE}
    assert summary.spacings == {(1.0, 1.0, 2.0)}
    expected = np.bincount(np.concatenate([slab_label(shift=i).ravel() for i in range(5)]), minlength=4)
    assert summary.label_voxels == dict(enumerate(expected.tolist()))
    assert summary.intensity_range == (0.0, 300.0)
    assert "valid" in summary.describe()


def test_progress_is_reported_per_case(tiny_dataset):
    calls = []
    validate_dataset(tiny_dataset.root, progress=lambda done, total, item: calls.append((done, total)))
    assert calls == [(i, 5) for i in range(1, 6)]


def _label_path(spec, i=0):
    return spec.path(spec.training[i].label)


def test_shape_mismatch_names_the_label(tiny_dataset):
    save_nifti(_label_path(tiny_dataset), np.zeros((16, 16, 10), np.uint8), TINY_AFFINE)
    with pytest.raises(DataError, match=r"labels/case-0\.nii\.gz: shape \(16, 16, 10\) differs from its image"):
        validate_dataset(tiny_dataset.root)


def test_affine_mismatch_names_the_label(tiny_dataset):
    shifted = TINY_AFFINE.copy()
    shifted[0, 3] += 5.0
    save_nifti(_label_path(tiny_dataset), slab_label(), shifted)
    with pytest.raises(DataError, match=r"labels/case-0\.nii\.gz: affine differs from its image"):
        validate_dataset(tiny_dataset.root)


def test_undeclared_label_values_are_listed(tiny_dataset):
    label = slab_label()
    label[0, 0, 0], label[0, 0, 1] = 7, 9
    save_nifti(_label_path(tiny_dataset, 2), label, TINY_AFFINE)
    with pytest.raises(DataError, match=r"case-2\.nii\.gz: label values \[7, 9\] are not in the declared labels"):
        validate_dataset(tiny_dataset.root)


def test_fractional_label_values_are_rejected(tiny_dataset):
    save_nifti(_label_path(tiny_dataset), slab_label().astype(np.float32) * 0.5, TINY_AFFINE)
    with pytest.raises(DataError, match="label values must be integers"):
        validate_dataset(tiny_dataset.root)


def test_nan_image_is_named(tiny_dataset):
    image = np.zeros(TINY_SHAPE, np.float32)
    image[3, 3, 3] = np.nan
    save_nifti(tiny_dataset.path(tiny_dataset.test[0].image), image, TINY_AFFINE)
    with pytest.raises(DataError, match=r"images/case-4\.nii\.gz: 1 voxels are NaN"):
        validate_dataset(tiny_dataset.root)


def test_missing_file_is_named(tiny_dataset):
    tiny_dataset.path(tiny_dataset.validation[0].image).unlink()
    with pytest.raises(DataError, match=r"images/case-3\.nii\.gz: file not found"):
        validate_dataset(tiny_dataset.root)


def test_file_listed_in_two_splits_is_rejected(tiny_dataset):
    import json

    path = tiny_dataset.path("dataset.json")
    content = json.loads(path.read_text())
    content["test"].append(content["training"][0])
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match=r"case-0\.nii\.gz: listed twice \(in 'training' and 'test'\)"):
        validate_dataset(tiny_dataset.root)
