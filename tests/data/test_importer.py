from __future__ import annotations

import numpy as np
import pytest

from medgen3d.data.dataset import read_dataset
from medgen3d.data.geometry import SourceGeometry, restore_geometry
from medgen3d.data.importer import (
    ImportSettings,
    find_pairs,
    import_dataset,
    infer_labels,
    parse_label_map,
)
from medgen3d.data.io import DataError, save_nifti
from medgen3d.data.validate import validate_dataset

# An LPS, anisotropic, oddly sized source: voxel axes run to Right, Posterior, Superior.
SOURCE_SHAPE = (23, 17, 9)
SOURCE_AFFINE = np.array([[-0.8, 0, 0, 30.0], [0, -0.8, 0, 20.0], [0, 0, 2.5, -10.0], [0, 0, 0, 1]])
LABELS = {0: "background", 1: "liver", 2: "tumour"}


def _source_pair(root, name="p1", seed=0):
    rng = np.random.default_rng(seed)
    label = np.zeros(SOURCE_SHAPE, np.int16)
    label[3:15, 4:12, 2:7] = 5
    label[6:9, 5:8, 3:5] = 7
    label[rng.random(SOURCE_SHAPE) < 0.02] = 5  # scattered voxels: any misplacement shows
    image = (rng.normal(size=SOURCE_SHAPE) * 10 + label * 20).astype(np.float32)
    save_nifti(root / name / f"{name}_img.nii.gz", image, SOURCE_AFFINE)
    save_nifti(root / name / "seg.nii.gz", label, SOURCE_AFFINE)
    return image, label


def _settings(size=(48, 20, 20), spacing=(0.4, 0.8, 1.25), center="image"):
    return ImportSettings("CT", spacing, size, {5: 1, 7: 2}, LABELS, center)


def _import(tmp_path, settings, n=1):
    sources = [_source_pair(tmp_path / "src", f"p{i}", seed=i) for i in range(n)]
    pairs = find_pairs(tmp_path / "src", "*/p?_img.nii.gz", "*/seg.nii.gz")
    spec = import_dataset(tmp_path / "src", tmp_path / "out", "user", settings, pairs, split=(n, 0, 0))
    return spec, sources


def test_lps_anisotropic_input_imports_to_ras_at_target_spacing_and_labels_map_back_exactly(tmp_path):
    spec, [(image, label)] = _import(tmp_path, _settings())
    validate_dataset(spec.root)
    imported_image, imported_label = spec.load_case(spec.training[0])
    affine = imported_label.affine
    assert imported_label.array.shape == (48, 20, 20)
    np.testing.assert_allclose(affine[:3, :3], np.diag([0.4, 0.8, 1.25]))  # RAS: positive diagonal
    assert set(np.unique(imported_label.array)) == {0, 1, 2}
    geometry = SourceGeometry.from_json(spec.extra["medgen3d"]["source_geometry"]["p0"])
    assert geometry.shape == SOURCE_SHAPE
    np.testing.assert_allclose(geometry.affine, SOURCE_AFFINE)
    restored = restore_geometry(imported_label.array, affine, geometry)
    expected = np.select([label == 5, label == 7], [1, 2], 0)
    np.testing.assert_array_equal(restored, expected)
    restored_image = restore_geometry(imported_image.array, affine, geometry, mode="bilinear")
    # linear sampling at voxel centres reproduces them, up to float32 coordinate rounding (values span ~150)
    np.testing.assert_allclose(restored_image, image, atol=1e-2)


def test_world_positions_are_kept(tmp_path):
    spec, [(_, label)] = _import(tmp_path, _settings(size=None, spacing=(0.8, 0.8, 2.5)))
    _, imported = spec.load_case(spec.training[0])

    def world_centroid(array, affine):
        return affine[:3, :3] @ np.argwhere(array == 2).mean(0) + affine[:3, 3]

    expected = world_centroid(np.where(label == 7, 2, 0), SOURCE_AFFINE)
    np.testing.assert_allclose(world_centroid(imported.array, imported.affine), expected, atol=1e-4)
    assert imported.array.shape == SOURCE_SHAPE  # same spacing, whole field of view


def test_cropping_keeps_the_foreground_and_pads_ct_with_air(tmp_path):
    spec, _ = _import(tmp_path, _settings(size=(40, 40, 4), center="foreground"))
    image, label = spec.load_case(spec.training[0])
    assert label.array.shape == (40, 40, 4)
    assert image.array.min() == pytest.approx(-1024.0)  # padding outside the source field of view
    assert (label.array == 2).sum() > 0


def test_label_outside_the_declared_set_names_the_file(tmp_path):
    _source_pair(tmp_path / "src")
    pairs = find_pairs(tmp_path / "src", "*/p?_img.nii.gz", "*/seg.nii.gz")
    settings = ImportSettings("CT", (1.0, 1.0, 1.0), None, {5: 1}, LABELS)  # 7 is not mapped
    with pytest.raises(DataError, match=r"seg\.nii\.gz: label values \[7\] are not in the declared labels"):
        import_dataset(tmp_path / "src", tmp_path / "out", "user", settings, pairs)
    assert not (tmp_path / "out" / "dataset.json").exists()


def test_image_label_shape_mismatch_names_the_file(tmp_path):
    _source_pair(tmp_path / "src")
    save_nifti(tmp_path / "src" / "p1" / "seg.nii.gz", np.zeros((23, 17, 8), np.uint8), SOURCE_AFFINE)
    pairs = find_pairs(tmp_path / "src", "*/p?_img.nii.gz", "*/seg.nii.gz")
    with pytest.raises(DataError, match=r"seg\.nii\.gz: shape \(23, 17, 8\) differs from its image"):
        import_dataset(tmp_path / "src", tmp_path / "out", "user", _settings(), pairs)


def test_segthor_and_decathlon_layouts_pair_by_case(tmp_path):
    for case in ("Patient_01", "Patient_02"):
        for name in (f"{case}.nii.gz", "GT.nii.gz"):
            save_nifti(tmp_path / "segthor" / case / name, np.zeros((2, 2, 2), np.uint8), np.eye(4))
    pairs = find_pairs(tmp_path / "segthor", "*/Patient_??.nii.gz", "*/GT.nii.gz")
    assert [(p.case_id, p.image.name, p.label.parent.name) for p in pairs] == [
        ("Patient_01", "Patient_01.nii.gz", "Patient_01"),
        ("Patient_02", "Patient_02.nii.gz", "Patient_02"),
    ]
    for case in ("heart_001", "heart_002"):
        save_nifti(tmp_path / "msd" / "imagesTr" / f"{case}_0000.nii.gz", np.zeros((2, 2, 2)), np.eye(4))
        save_nifti(tmp_path / "msd" / "labelsTr" / f"{case}.nii.gz", np.zeros((2, 2, 2), np.uint8), np.eye(4))
    assert [p.case_id for p in find_pairs(tmp_path / "msd")] == ["heart_001", "heart_002"]


def test_file_without_partner_and_empty_folder_are_named(tmp_path):
    save_nifti(tmp_path / "a" / "imagesTr" / "x.nii.gz", np.zeros((2, 2, 2)), np.eye(4))
    save_nifti(tmp_path / "a" / "imagesTr" / "y.nii.gz", np.zeros((2, 2, 2)), np.eye(4))
    save_nifti(tmp_path / "a" / "labelsTr" / "x.nii.gz", np.zeros((2, 2, 2), np.uint8), np.eye(4))
    with pytest.raises(DataError, match=r"imagesTr/y\.nii\.gz: no label file for case 'y'"):
        find_pairs(tmp_path / "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image/label files match"):
        find_pairs(tmp_path / "empty")


def test_label_map_parsing_and_inferred_names(tmp_path):
    assert parse_label_map('{"4": 0, "5": 1}') == {4: 0, 5: 1}
    (tmp_path / "map.json").write_text('{"7": 2}')
    assert parse_label_map(str(tmp_path / "map.json")) == {7: 2}
    with pytest.raises(ValueError, match="integers"):
        parse_label_map({"a": 1})
    _source_pair(tmp_path / "src")
    pairs = find_pairs(tmp_path / "src", "*/p?_img.nii.gz", "*/seg.nii.gz")
    assert infer_labels(pairs, {5: 1, 7: 2}) == {0: "background", 1: "label_1", 2: "label_2"}
    with pytest.raises(DataError, match=r"label values \[0, 5, 7\] .* are not 0..K-1"):
        infer_labels(pairs, {})


def test_split_by_fractions_and_counts(tmp_path):
    for i in range(5):
        _source_pair(tmp_path / "src", f"p{i}", seed=i)
    pairs = find_pairs(tmp_path / "src", "*/p?_img.nii.gz", "*/seg.nii.gz")
    spec = import_dataset(tmp_path / "src", tmp_path / "a", "u", _settings(size=(8, 8, 8)), pairs, split=(3, 1, 1))
    assert [len(spec.training), len(spec.validation), len(spec.test)] == [3, 1, 1]
    spec = import_dataset(tmp_path / "src", tmp_path / "b", "u", _settings(size=(8, 8, 8)), pairs, split=(0.6, 0.4, 0))
    assert [len(spec.training), len(spec.validation), len(spec.test)] == [3, 2, 0]
    assert read_dataset(tmp_path / "b").extra["medgen3d"]["params"]["label_map"] == {"5": 1, "7": 2}
    with pytest.raises(ValueError, match="fractions adding up to 1 or counts adding up to 5"):
        import_dataset(tmp_path / "src", tmp_path / "c", "u", _settings(), pairs, split=(3, 3, 3))
