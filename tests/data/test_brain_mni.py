from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("nilearn", reason="brain-mni is built from the MNI template shipped with nilearn")

from scipy import ndimage  # noqa: E402

from medgen3d.data.brain_mni import (  # noqa: E402
    BRAIN_LABELS,
    BRAIN_PRESETS,
    SCANNERS,
    build_brain_mni,
    make_brain_case,
)
from medgen3d.data.builder import SplitSizes  # noqa: E402
from medgen3d.data.dataset import read_dataset  # noqa: E402
from medgen3d.data.validate import validate_dataset  # noqa: E402


@pytest.fixture(scope="module")
def tiny_brain(tmp_path_factory):
    return build_brain_mni(tmp_path_factory.mktemp("brain") / "brain-mni", preset="tiny", sizes=SplitSizes(3, 2, 2))


def test_every_label_is_present_in_every_subject(tiny_brain):
    for case in tiny_brain.cases():
        _, label = tiny_brain.load_case(case)
        assert set(np.unique(label.array).tolist()) == set(BRAIN_LABELS)


def test_dataset_validates_with_real_ras_affine_and_the_preset_geometry(tiny_brain):
    summary = validate_dataset(tiny_brain.root)
    shape, spacing = BRAIN_PRESETS["tiny"]
    assert summary.shapes == {shape} and summary.spacings == {spacing}
    image, _ = tiny_brain.load_case(tiny_brain.training[0])
    affine = image.affine
    assert np.allclose(affine[:3, :3], np.diag(spacing))
    # the grid is placed in MNI space around the brain, not at an arbitrary origin
    center = affine[:3, :3] @ (np.asarray(shape) - 1) / 2 + affine[:3, 3]
    np.testing.assert_allclose(center, [0.0, -17.0, 5.0])


def test_tissue_proportions_are_brain_like(tiny_brain):
    _, label = tiny_brain.load_case(tiny_brain.training[0])
    fractions = np.bincount(label.array.ravel(), minlength=5) / label.array[label.array > 0].size
    # within the brain: grey matter outweighs white matter, CSF and subcortical grey matter are small
    assert fractions[1] > fractions[3] > fractions[4] > fractions[2] > 0.005


def test_subjects_differ_and_splits_do_not_share_seeds(tiny_brain):
    seeds = tiny_brain.extra["medgen3d"]["case_seeds"]
    assert len(set(seeds.values())) == len(tiny_brain.cases())
    labels = [tiny_brain.load_case(c)[1].array for c in tiny_brain.cases()]
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            assert (labels[i] != labels[j]).mean() > 0.02


def test_same_seed_gives_the_same_subject_and_image_follows_the_label():
    a, b = make_brain_case(11, "tiny"), make_brain_case(11, "tiny")
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    # MR T1 contrast: white matter brighter than grey matter, CSF darkest of the brain tissues
    mean = {v: a.image[a.label == v].mean() for v in BRAIN_LABELS}
    assert mean[3] > mean[1] > mean[4] > mean[0]


def test_unknown_preset_is_rejected():
    with pytest.raises(ValueError, match="preset must be one of"):
        make_brain_case(0, "huge")


# Subjects compared across scanners: fixed seeds, so the measured ratios below are fixed numbers.
_SCANNER_SEEDS = (0, 3, 11)


@pytest.fixture(scope="module")
def both_scanners():
    return {seed: {scanner: make_brain_case(seed, "tiny", scanner) for scanner in "ab"} for seed in _SCANNER_SEEDS}


def _intensity_stats(case) -> dict[str, float]:
    """White matter over cortex mean intensity, background noise over white matter mean, white matter CV."""
    wm, cortex = case.image[case.label == 3], case.image[case.label == 1]
    # two voxels away from any tissue the deformed template T1 is zero: what is left there is noise alone
    far = ~ndimage.binary_dilation(case.label > 0, iterations=2)
    return {
        "wm_over_cortex": wm.mean() / cortex.mean(),
        "noise_over_wm": case.image[far].std() / wm.mean(),
        "wm_cv": wm.std() / wm.mean(),
    }


def test_scanner_a_is_the_original_brain_mni():
    # numbers measured on the subject before scanner profiles existed: scanner "a" must keep every dataset as it
    # was (a tolerance rather than a hash of the bytes, which float rounding could change from one CPU to another)
    case = make_brain_case(11, "tiny", scanner="a")
    assert np.bincount(case.label.ravel(), minlength=5).tolist() == [19121, 7625, 353, 4575, 1094]
    image = case.image.astype(np.float64)
    np.testing.assert_allclose([image.mean(), image.std()], [312.81166, 357.62600], rtol=1e-5)
    np.testing.assert_allclose([image[16, 16, 16], image[10, 20, 12]], [428.5602, 859.2783], rtol=1e-5)
    default = make_brain_case(11, "tiny")
    np.testing.assert_array_equal(default.image, case.image)
    np.testing.assert_array_equal(default.label, case.label)


def test_scanner_b_keeps_the_anatomy_and_changes_the_intensities(both_scanners):
    stats = {scanner: [] for scanner in "ab"}
    for seed, cases in both_scanners.items():
        a, b = cases["a"], cases["b"]
        np.testing.assert_array_equal(a.label, b.label)
        np.testing.assert_array_equal(a.affine, b.affine)
        # still a T1: white matter brighter than cortex brighter than CSF
        mean = {v: b.image[b.label == v].mean() for v in BRAIN_LABELS}
        assert mean[3] > mean[1] > mean[4] > mean[0]
        stats["a"].append(_intensity_stats(a))
        stats["b"].append(_intensity_stats(b))
    for key in ("wm_over_cortex", "noise_over_wm", "wm_cv"):
        low_b = min(s[key] for s in stats["b"])
        high_a = max(s[key] for s in stats["a"])
        # the two scanners' ranges do not even overlap: harder contrast, more noise, more inhomogeneity
        assert low_b > high_a, (key, stats)
    mean_ratio = {scanner: np.mean([s["wm_over_cortex"] for s in stats[scanner]]) for scanner in "ab"}
    assert mean_ratio["b"] > mean_ratio["a"] + 0.2


def test_scanner_b_dataset_is_named_and_records_its_scanner(tmp_path):
    spec = build_brain_mni(tmp_path / "b", preset="tiny", sizes=SplitSizes(1, 0, 1), seed=4, scanner="b")
    assert spec.name == "brain-mni-scanner-b" and spec.labels == BRAIN_LABELS
    provenance = read_dataset(tmp_path / "b").extra["medgen3d"]
    assert provenance["generator"] == "brain-mni-scanner-b" and provenance["params"]["scanner"] == "b"
    # the same seeds give the same subjects' label maps as brain-mni
    case = spec.training[0]
    seed = provenance["case_seeds"][case.case_id]
    _, label = spec.load_case(case)
    np.testing.assert_array_equal(label.array, make_brain_case(seed, "tiny", "a").label)


def test_scanner_a_dataset_keeps_its_name_and_params(tiny_brain):
    assert tiny_brain.name == "brain-mni"
    assert "scanner" not in tiny_brain.extra["medgen3d"]["params"]


def test_unknown_scanner_is_rejected_naming_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"scanner must be one of \['a', 'b'\], got 'c'"):
        make_brain_case(0, "tiny", scanner="c")
    with pytest.raises(ValueError, match="scanner must be one of"):
        build_brain_mni(tmp_path / "c", preset="tiny", scanner="c")
    assert not (tmp_path / "c").exists()
    assert sorted(SCANNERS) == ["a", "b"]
