from __future__ import annotations

import numpy as np
import pytest
import torch

from medgen3d.metrics.lookup import label_means, lookup_image, lookup_images
from tests.conftest import slab_label


def test_an_image_whose_labels_have_constant_intensities_is_reproduced_exactly():
    labels = [slab_label((8, 6, 5)), slab_label((8, 6, 7))]
    values = torch.tensor([-1.0, -0.25, 0.5, 0.875])
    images = [values[torch.from_numpy(label).long()] for label in labels]
    means = label_means(images, labels, 4)
    assert torch.equal(means, values)
    for image, rebuilt in zip(images, lookup_images(labels, means)):
        assert torch.equal(rebuilt, image)


def test_means_pool_voxels_over_cases_and_an_absent_label_gets_the_overall_mean():
    label = np.array([[[0, 1], [1, 1]]])  # label 2 never occurs
    image = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    other = torch.tensor([[[4.0, 5.0], [5.0, 5.0]]])
    means = label_means([image, other], [label, label], 3)
    # label 0: 0 and 4; label 1: 1, 2, 3 and 5, 5, 5; label 2: every voxel's mean
    assert means.tolist() == pytest.approx([2.0, 3.5, 25.0 / 8])
    assert lookup_image(label, means).shape == label.shape


def test_masks_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="as many masks as images"):
        label_means([torch.zeros(2, 2, 2)], [], 2)
    with pytest.raises(ValueError, match=r"mask values must lie in \[0, 2\)"):
        label_means([torch.zeros(2, 2, 2)], [np.full((2, 2, 2), 2)], 2)
    with pytest.raises(ValueError, match="mask of 4 voxels for an image of 8"):
        label_means([torch.zeros(2, 2, 2)], [np.zeros((2, 2, 1), int)], 2)
