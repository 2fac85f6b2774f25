from __future__ import annotations

import numpy as np
import pytest

from medgen3d.cli import main
from medgen3d.data.dataset import DatasetSpec, write_dataset
from medgen3d.data.io import DataError, load_nifti, read_json
from medgen3d.data.nnunet import export_nnunet, nnunet_folder_name
from tests.conftest import TINY_AFFINE, write_tiny_dataset


def test_export_writes_the_nnunet_v2_raw_layout_with_identical_volumes(tmp_path):
    spec = write_tiny_dataset(tmp_path / "real", splits=(3, 1, 1))
    folder = export_nnunet([spec.root], tmp_path / "raw", 7, "Brain")
    assert folder.name == "Dataset007_Brain"
    meta = read_json(folder / "dataset.json")
    assert meta["labels"] == {"background": 0, "slab_1": 1, "slab_2": 2, "slab_3": 3}
    assert meta["channel_names"] == {"0": "MR"} and meta["file_ending"] == ".nii.gz"
    assert meta["numTraining"] == 4  # training + validation; nnU-Net makes its own folds
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"case-{i}_0000.nii.gz" for i in range(4)]
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == ["case-4_0000.nii.gz"]
    original = load_nifti(spec.path(spec.training[1].label))
    exported = load_nifti(folder / "labelsTr" / "case-1.nii.gz")
    np.testing.assert_array_equal(exported.array, original.array)
    np.testing.assert_allclose(exported.affine, TINY_AFFINE)


def test_several_datasets_export_into_one_with_prefixed_ids(tmp_path):
    real = write_tiny_dataset(tmp_path / "real", splits=(2, 0, 0))
    synthetic = write_tiny_dataset(tmp_path / "synthetic", splits=(3, 0, 0))
    folder = export_nnunet([real.root, synthetic.root], tmp_path / "raw", 8, "Mixed")
    names = sorted(p.name for p in (folder / "labelsTr").iterdir())
    assert names == ["real_case-0.nii.gz", "real_case-1.nii.gz"] + [f"synthetic_case-{i}.nii.gz" for i in range(3)]
    assert read_json(folder / "dataset.json")["numTraining"] == 5


def test_existing_exports_are_kept_unless_overwrite_and_bad_input_is_named(tmp_path):
    spec = write_tiny_dataset(tmp_path / "real")
    folder = export_nnunet([spec.root], tmp_path / "raw", 9, "A")
    marker = folder / "mine.txt"
    marker.write_text("keep")
    with pytest.raises(DataError, match="already exists"):
        export_nnunet([spec.root], tmp_path / "raw", 9, "A")
    assert marker.exists()
    export_nnunet([spec.root], tmp_path / "raw", 9, "A", overwrite=True)
    assert not marker.exists() and (folder / "dataset.json").exists()
    other = write_tiny_dataset(tmp_path / "other")
    relabelled = DatasetSpec(other.name, other.modality, {0: "background", 1: "x", 2: "y", 3: "z"}, other.training)
    write_dataset(other.root, relabelled)
    with pytest.raises(DataError, match="labels"):
        export_nnunet([spec.root, other.root], tmp_path / "raw", 10, "B")
    assert not (tmp_path / "raw" / "Dataset010_B").exists()
    assert [p.name for p in (tmp_path / "raw").iterdir()] == ["Dataset009_A"]  # no staging folder left behind
    with pytest.raises(ValueError, match="id"):
        nnunet_folder_name(1000, "A")


def test_cli_exports(tmp_path, capsys):
    spec = write_tiny_dataset(tmp_path / "real")
    assert main(["data", "export-nnunet", str(spec.root), "--out", str(tmp_path / "raw"), "--dataset_id", "3"]) == 0
    assert (tmp_path / "raw" / "Dataset003_tiny" / "dataset.json").exists()
    assert "nnUNetv2_plan_and_preprocess -d 3" in capsys.readouterr().out
