from __future__ import annotations

import json

import numpy as np
import pytest

from medgen3d.data.dataset import read_dataset
from medgen3d.data.io import DataError
from tests.conftest import TINY_AFFINE, TINY_LABELS, slab_label


def _rewrite(spec, **changes):
    path = spec.path("dataset.json")
    content = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            content.pop(key)
        else:
            content[key] = value
    path.write_text(json.dumps(content))
    return spec.root


def test_round_trip_of_dataset_json(tiny_dataset):
    spec = read_dataset(tiny_dataset.root)
    assert spec.name == "tiny" and spec.modality == "MR"
    assert spec.labels == TINY_LABELS and spec.num_classes == 4
    assert [len(spec.split(s)) for s in ("training", "validation", "test")] == [3, 1, 1]
    assert spec.training[1].case_id == "case-1"
    image, label = spec.load_case(spec.training[1])
    np.testing.assert_array_equal(label.array, slab_label(shift=1))
    np.testing.assert_allclose(image.affine, TINY_AFFINE)
    assert label.array.dtype == np.int64 and image.array.dtype == np.float32


def test_msd_descriptive_keys_are_kept(tiny_dataset):
    root = _rewrite(tiny_dataset, description="user data", numTraining=3)
    spec = read_dataset(root)
    assert spec.extra["description"] == "user data"
    assert spec.to_json()["numTraining"] == 3


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"labels": None}, r"missing required key\(s\) \['labels'\]"),
        ({"trainig": []}, r"unknown key 'trainig' \(did you mean 'training'\?\)"),
        ({"modality": "PET"}, r"'modality' must be one of \['CT', 'MR'\], got 'PET'"),
        ({"labels": {"0": "bg", "2": "heart"}}, r"label values must be 0..1 with 0 the background, got \[0, 2\]"),
        ({"labels": {"zero": "bg"}}, r"label key 'zero' is not an integer"),
        (
            {"training": [{"image": "a.nii.gz"}], "validation": [], "test": []},
            r"'training'\[0\] must have the keys 'image' and 'label' \(or 'label' alone\), got \['image'\]",
        ),
        ({"training": [{"image": "/abs/a.nii.gz", "label": "b.nii.gz"}]}, "must be relative"),
        ({"training": [], "validation": [], "test": []}, "no cases"),
        ({"test": "labels/"}, r"'test' must be a list"),
    ],
)
def test_malformed_dataset_json_is_rejected_with_the_file_named(tiny_dataset, changes, message):
    root = _rewrite(tiny_dataset, **changes)
    with pytest.raises(DataError, match=message) as err:
        read_dataset(root)
    assert str(root / "dataset.json") in str(err.value)


def test_missing_folder_and_missing_json(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        read_dataset(tmp_path / "absent")
    with pytest.raises(DataError, match=r"dataset\.json: file not found"):
        read_dataset(tmp_path)


def test_label_only_dataset_round_trip(tmp_path):
    from medgen3d.data.dataset import Case, DatasetSpec, write_dataset
    from medgen3d.data.io import save_nifti
    from medgen3d.data.validate import validate_dataset

    save_nifti(tmp_path / "labels" / "m0.nii.gz", slab_label(), TINY_AFFINE)
    write_dataset(tmp_path, DatasetSpec("masks", "MR", dict(TINY_LABELS), training=[Case(None, "labels/m0.nii.gz")]))
    assert json.loads((tmp_path / "dataset.json").read_text())["training"] == [{"label": "labels/m0.nii.gz"}]
    spec = read_dataset(tmp_path)
    image, label = spec.load_case(spec.training[0])
    assert image is None and np.array_equal(label.array, slab_label())
    assert "label-only" in validate_dataset(tmp_path).describe()
