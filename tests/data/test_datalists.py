from __future__ import annotations

import numpy as np
import pytest

from medgen3d.data.datalists import label_datalist
from medgen3d.data.io import DataError, save_nifti
from tests.conftest import TINY_AFFINE, TINY_LABELS


def test_datalist_lists_training_labels_with_absolute_paths(tiny_dataset):
    items = label_datalist(tiny_dataset, {str(k): v for k, v in TINY_LABELS.items()}, min_depth=6)
    assert [item["label"] for item in items] == [str(tiny_dataset.path(c.label)) for c in tiny_dataset.training]


def test_label_set_mismatch_and_shallow_volumes_are_named(tiny_dataset):
    with pytest.raises(DataError, match="differ from the configured labels"):
        label_datalist(tiny_dataset, {"0": "background", "1": "heart"})
    save_nifti(tiny_dataset.path(tiny_dataset.training[1].label), np.zeros((16, 16, 4), np.uint8), TINY_AFFINE)
    with pytest.raises(DataError, match=r"case-1\.nii\.gz: 4 slices, fewer than 6 needed"):
        label_datalist(tiny_dataset, TINY_LABELS, min_depth=6)


def test_modality_must_match_the_dataset_unless_there_is_no_dataset_folder(tiny_dataset, tmp_path):
    from medgen3d.data.datalists import check_modality_match

    check_modality_match(tiny_dataset.root, "MR")
    check_modality_match(tmp_path / "no-such-folder", "CT")  # MONAI Label trains from its own data lists
    with pytest.raises(DataError, match="modality 'MR' differs from the configured 'CT'"):
        check_modality_match(tiny_dataset.root, "CT")
