from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import SimpleInferer

from medgen3d.metrics.alignment import Segmenter, alignment_dice, real_looking_alignment
from tests.conftest import slab_image, slab_label


class _Threshold(torch.nn.Module):
    """A perfect segmenter of slab images (intensity = 100 x label): one-hot logits of round(x / 100)."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot((x[:, 0] / 100).round().long(), 4).permute(0, 4, 1, 2, 3).float()


def test_a_segmenter_that_recovers_the_mask_scores_one_and_a_wrong_mask_the_known_overlap():
    label = slab_label()
    image = torch.from_numpy(slab_image(label))
    segment = Segmenter(_Threshold(), SimpleInferer())
    assert np.array_equal(segment(image), label)
    assert alignment_dice(segment, [image], [label], 4) == pytest.approx(np.ones((1, 3)))
    # the mask shifted by one slice: each slab of 4 slices overlaps its prediction on 3 (or 4 at the end)
    shifted = slab_label(shift=1)
    scores = alignment_dice(segment, [image], [shifted], 4)[0]
    expected = [
        2 * np.logical_and(label == k, shifted == k).sum() / ((label == k).sum() + (shifted == k).sum())
        for k in (1, 2, 3)
    ]
    assert scores == pytest.approx(expected)
    assert scores[0] < 1


def test_a_structure_absent_from_the_mask_and_the_segmentation_is_nan_not_a_perfect_score():
    label = slab_label()
    image = torch.from_numpy(slab_image(label))
    segment = Segmenter(_Threshold(), SimpleInferer())
    scores = alignment_dice(segment, [image], [label], 5)[0]  # label 4 exists in neither
    assert scores[:3] == pytest.approx([1.0, 1.0, 1.0]) and np.isnan(scores[3])


def test_counts_must_match():
    with pytest.raises(ValueError, match="masks"):
        alignment_dice(lambda x: x, [torch.zeros(2, 2, 2)], [], 2)


def test_the_real_looking_estimate_carries_the_real_images_loss_to_the_lookup_of_the_synthetic_masks():
    reference = {"cortex": 0.9, "csf": 0.6, "cord": 0.0, "vessel": None}
    lookup = {"cortex": 1.0, "csf": 0.8, "cord": 0.0, "vessel": 0.5}
    synthetic = {"cortex": 0.8, "csf": 0.4, "cord": 0.2, "vessel": 0.3}
    estimate = real_looking_alignment(reference, lookup, {**synthetic, "mean": 0.42})
    assert estimate["cortex"] == pytest.approx(0.8 * 0.9 / 1.0)
    assert estimate["csf"] == pytest.approx(0.4 * 0.6 / 0.8)  # 0.3: the real images keep 3/4 of the lookup's CSF
    assert estimate["cord"] == pytest.approx(0.2)  # a lookup that scores 0 on real masks leaves no loss to carry
    assert estimate["vessel"] is None  # no real value: no estimate, and not in the mean
    assert estimate["mean"] == pytest.approx((0.72 + 0.3 + 0.2) / 3)  # its own mean, not the lookup's
    # images exactly as segmentable as the lookup on real masks: the estimate is the synthetic lookup itself
    same = real_looking_alignment(lookup, lookup, synthetic)
    assert same["cortex"] == pytest.approx(0.8) and same["csf"] == pytest.approx(0.4)
