from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("nilearn", reason="brain-mni is built from the MNI template shipped with nilearn")

from medgen3d.data.brain_mni import BRAIN_LABELS, BRAIN_PRESETS, build_brain_mni, make_brain_case  # noqa: E402
from medgen3d.data.builder import SplitSizes  # noqa: E402
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
