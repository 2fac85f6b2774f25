from __future__ import annotations

import numpy as np
import pytest
import torch

from medgen3d.metrics.memorisation import nearest_references


def references(count: int = 4, shape: tuple[int, int, int] = (16, 16, 16)) -> tuple[list, list]:
    """Random images, and labels with a structure whose position and size depend on the case."""
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(shape, generator=generator) * 2 - 1 for _ in range(count)]
    labels = []
    for i in range(count):
        label = np.zeros(shape, np.int64)
        label[i : i + 6, 2:10, 3:12] = 1
        label[10:14, i : i + 3, :] = 2
        labels.append(label)
    return images, labels


def test_an_exact_copy_is_matched_to_its_source_with_ssim_and_dice_one():
    images, labels = references()
    (nearest,) = nearest_references([images[2].clone()], [labels[2].copy()], images, labels, num_classes=3)
    assert nearest.index == 2
    assert nearest.image_ssim == pytest.approx(1.0, abs=1e-5)
    assert nearest.label_dice == pytest.approx(1.0)


def test_a_noisy_copy_is_still_matched_to_its_source():
    images, labels = references()
    noisy = (images[1] + 0.3 * torch.randn(images[1].shape, generator=torch.Generator().manual_seed(9))).clamp(-1, 1)
    shifted = np.roll(labels[1], 1, axis=1)
    (nearest,) = nearest_references([noisy], [shifted], images, labels, num_classes=3)
    assert nearest.index == 1
    assert 0.2 < nearest.image_ssim < 1.0
    assert 0.5 < nearest.label_dice < 1.0


def test_volumes_differing_in_depth_are_compared_on_their_central_overlap():
    images, labels = references(shape=(16, 16, 20))
    # The query is the central 12 slices of reference 3: on the overlap it is identical to it.
    queries = [images[3][..., 4:16], images[0][..., :12]]
    results = nearest_references(queries, [labels[3][..., 4:16]] * 2, images, labels, num_classes=3)
    assert results[0].index == 3 and results[0].image_ssim == pytest.approx(1.0, abs=1e-5)
    assert results[0].label_dice == pytest.approx(1.0)
    assert results[1].image_ssim < 0.5  # an off-centre crop of noise lines up with no reference


def test_mismatched_inputs_are_rejected():
    images, labels = references()
    with pytest.raises(ValueError, match="labels"):
        nearest_references(images, labels[:2], images, labels, num_classes=3)
    with pytest.raises(ValueError, match="num_classes"):
        nearest_references(images, labels, images, labels, num_classes=1)
