"""The procedural ``thorax-phantom``: label set, RAS geometry, anatomical layout, HU ranges, seeding, building."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from medgen3d.data.builder import SplitSizes
from medgen3d.data.dataset import read_dataset
from medgen3d.data.io import load_nifti
from medgen3d.data.spatial import Grid
from medgen3d.data.thorax_phantom import THORAX_LABELS, THORAX_PRESETS, build_thorax_phantom, make_thorax_case
from medgen3d.data.validate import validate_dataset

SEEDS = (0, 1, 2, 3)
BODY, LEFT_LUNG, RIGHT_LUNG, HEART, TRACHEA, ESOPHAGUS, CORD = range(1, 8)


def centroid_mm(label: np.ndarray, affine: np.ndarray, value: int) -> np.ndarray:
    """World (RAS mm) centroid of the voxels labelled ``value``."""
    ijk = np.argwhere(label == value).mean(axis=0)
    return affine[:3, :3] @ ijk + affine[:3, 3]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def cases():
    return {seed: make_thorax_case(seed, "tiny") for seed in SEEDS}


def test_label_set_and_presets():
    assert THORAX_LABELS == {
        0: "background",
        1: "body",
        2: "left_lung",
        3: "right_lung",
        4: "heart",
        5: "trachea",
        6: "esophagus",
        7: "spinal_cord",
    }
    assert THORAX_PRESETS["paper"][0] == (320, 320, 96)
    assert THORAX_PRESETS["small"][0] == (128, 128, 48)
    assert THORAX_PRESETS["tiny"][0] == (32, 32, 16)
    # every preset covers the same field of view, so a preset changes resolution, not anatomy
    fovs = {name: np.multiply(shape, spacing) for name, (shape, spacing) in THORAX_PRESETS.items()}
    for fov in fovs.values():
        np.testing.assert_allclose(fov, fovs["paper"])


@pytest.mark.parametrize("seed", SEEDS)
def test_every_label_present_with_dtypes_and_ras_geometry(cases, seed):
    case = cases[seed]
    shape, spacing = THORAX_PRESETS["tiny"]
    assert case.image.shape == case.label.shape == shape
    assert case.image.dtype == np.int16 and case.label.dtype == np.uint8
    assert set(np.unique(case.label).tolist()) == set(THORAX_LABELS)
    # RAS+: diagonal, positive spacing, centred on the world origin
    np.testing.assert_allclose(case.affine, Grid.ras(shape, spacing, center=np.zeros(3)).affine)
    assert np.count_nonzero(case.affine[:3, :3] - np.diag(np.diag(case.affine[:3, :3]))) == 0
    np.testing.assert_allclose(np.diag(case.affine)[:3], spacing)


@pytest.mark.parametrize("seed", SEEDS)
def test_anatomical_layout(cases, seed):
    label, affine = cases[seed].label, cases[seed].affine
    c = {value: centroid_mm(label, affine, value) for value in range(1, 8)}
    midline = c[CORD][0]
    # x runs to the patient's left: the left lung lies at larger x
    assert c[LEFT_LUNG][0] > midline + 30 > midline - 30 > c[RIGHT_LUNG][0]
    # heart anterior (y) to the spine and left of the body's centre
    assert c[HEART][1] > c[CORD][1] + 50
    assert c[HEART][0] > c[BODY][0] + 5
    # trachea in the upper volume and anterior to the cord; oesophagus between the cord and the trachea
    assert c[TRACHEA][2] > c[BODY][2] + 20
    assert c[TRACHEA][1] > c[ESOPHAGUS][1] > c[CORD][1]
    # the trachea starts at the carina: nothing of it in the lowest quarter of the volume
    assert not (label[:, :, : label.shape[2] // 4] == TRACHEA).any()


@pytest.mark.parametrize("seed", SEEDS)
def test_nothing_but_background_outside_the_body(cases, seed):
    label = cases[seed].label
    # the body is one filled outline per slice: every organ voxel has body or organs all around it in-plane
    organ = label > BODY
    inside = label > 0
    for axis in (0, 1):
        for shift in (1, -1):
            assert inside[organ & ~np.roll(inside, shift, axis=axis)].size == 0
    # the volume border is air
    assert not label[[0, -1], :, :].any() and not label[:, [0, -1], :].any()


@pytest.mark.parametrize("seed", SEEDS)
def test_cord_is_surrounded_by_bone(cases, seed):
    image, label = cases[seed].image, cases[seed].label
    cord = label == CORD
    ring = np.zeros_like(cord)
    for axis in (0, 1):
        for shift in (1, -1):
            ring |= np.roll(cord, shift, axis=axis)
    ring &= ~cord
    assert ring.sum() > 0
    assert (image[ring] > 200).mean() > 0.8
    # bone appears in the image only: the ring is labelled body
    assert (label[ring] == BODY).mean() > 0.8


@pytest.mark.parametrize("seed", SEEDS)
def test_hounsfield_ranges(cases, seed):
    image, label = cases[seed].image.astype(np.float64), cases[seed].label
    for lung in (LEFT_LUNG, RIGHT_LUNG):
        assert image[label == lung].mean() < -500
    assert -200 < np.median(image[label == BODY]) < 200
    assert -200 < image[label == HEART].mean() < 200
    # air outside the body: about -1000 HU with a little noise, away from the blurred skin
    air = (label == 0) & ~binary_dilation(label > 0, iterations=2)
    assert air.sum() > 0.2 * label.size
    assert abs(image[air].mean() + 1000) < 10 and image[air].std() < 40
    assert np.median(image[label == 0]) < -950
    # bone reaches well above soft tissue, and nothing exceeds the CT range
    assert image.max() > 400 and image.min() >= -1024


def test_same_seed_identical_different_seed_different(cases):
    again = make_thorax_case(0, "tiny")
    np.testing.assert_array_equal(again.image, cases[0].image)
    np.testing.assert_array_equal(again.label, cases[0].label)
    np.testing.assert_array_equal(again.affine, cases[0].affine)
    a, b = cases[0].label, cases[1].label
    assert dice(a == LEFT_LUNG, b == LEFT_LUNG) < 0.99
    assert not np.array_equal(cases[0].image, cases[1].image)
    moved = [
        np.linalg.norm(centroid_mm(a, cases[0].affine, v) - centroid_mm(b, cases[1].affine, v))
        for v in (LEFT_LUNG, RIGHT_LUNG, HEART)
    ]
    assert max(moved) > 3.0


def test_anatomy_follows_the_seed_across_presets():
    # anatomy is drawn before the noise and from fixed-size draws: same seed, same organs at another resolution
    tiny, small = make_thorax_case(5, "tiny"), make_thorax_case(5, "small")
    for value in (BODY, LEFT_LUNG, RIGHT_LUNG, HEART):
        shift = centroid_mm(tiny.label, tiny.affine, value) - centroid_mm(small.label, small.affine, value)
        assert np.linalg.norm(shift) < 12.0, (value, shift)


def test_unknown_preset_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"preset.*paper.*small.*tiny"):
        make_thorax_case(0, "huge")
    with pytest.raises(ValueError, match="preset"):
        build_thorax_phantom(tmp_path / "out", preset="huge", sizes=SplitSizes(1, 0, 0))
    assert not (tmp_path / "out").exists()


def test_build_validates_round_trips_and_resumes(tmp_path):
    out = tmp_path / "thorax"
    calls = []
    sizes = SplitSizes(2, 1, 1)
    spec = build_thorax_phantom(out, preset="tiny", sizes=sizes, seed=7, progress=lambda *args: calls.append(args))
    assert [c[:2] for c in calls] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    summary = validate_dataset(out)
    assert summary.split_sizes == {"training": 2, "validation": 1, "test": 1}
    assert summary.spec.name == "thorax-phantom" and summary.spec.modality == "CT"
    assert summary.spec.labels == THORAX_LABELS
    assert summary.shapes == {(32, 32, 16)} and summary.spacings == {(12.0, 12.0, 18.0)}
    assert all(count > 0 for count in summary.label_voxels.values())
    assert len(spec.cases()) == 4

    # the files hold exactly what make_thorax_case gives for the recorded case seed
    provenance = read_dataset(out).extra["medgen3d"]
    assert provenance["params"]["preset"] == "tiny"
    case = spec.test[0]
    expected = make_thorax_case(provenance["case_seeds"][case.case_id], "tiny")
    image, label = load_nifti(out / case.image), load_nifti(out / case.label)
    assert image.array.dtype == np.int16 and label.array.dtype == np.uint8
    np.testing.assert_array_equal(image.array, expected.image)
    np.testing.assert_array_equal(label.array, expected.label)
    np.testing.assert_allclose(image.affine, expected.affine)

    # a second run with the same settings regenerates nothing
    files = sorted([*out.glob("images/*.nii.gz"), *out.glob("labels/*.nii.gz")])
    assert len(files) == 8
    before = {f: f.stat().st_mtime_ns for f in files}
    build_thorax_phantom(out, preset="tiny", sizes=sizes, seed=7)
    assert {f: f.stat().st_mtime_ns for f in files} == before
    validate_dataset(out)
