"""Memorisation: how close each synthetic case is to its nearest real training case.

A generator that memorises its training set produces images whose nearest real case is almost identical (3D SSIM
near 1) with a label map that overlaps it almost perfectly (Dice near 1). Images are ``(H, W, D)`` tensors in
[-1, 1]; labels are integer ``(H, W, D)`` arrays with values ``0..K-1``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from medgen3d.metrics.crops import centre_crop, centre_start
from medgen3d.metrics.segmentation import dice_per_structure, mean_present
from medgen3d.metrics.ssim import LocalMoments, gaussian_window, local_moments, ssim_against

__all__ = ["Nearest", "nearest_references"]

_WINDOW_SIZES = (11, 7, 5, 3)
_REFERENCES_PER_BATCH = 8


class Nearest(NamedTuple):
    """The reference case most similar to one query: its ``index``, the images' 3D SSIM and the labels' mean
    Dice over the foreground structures present in either label map (NaN if both are all background)."""

    index: int
    image_ssim: float
    label_dice: float


def _overlap(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    return tuple(min(x, y) for x, y in zip(a, b))


def _window(shape: Sequence[int]) -> int:
    # MONAI's SSIM convolves without padding, so the window must fit the smallest side.
    for size in _WINDOW_SIZES:
        if size <= min(shape):
            return size
    raise ValueError(f"shape {tuple(shape)} is too small for SSIM: every side must be at least {_WINDOW_SIZES[-1]}")


def nearest_references(
    images: Sequence[torch.Tensor],
    labels: Sequence[np.ndarray],
    ref_images: Sequence[torch.Tensor],
    ref_labels: Sequence[np.ndarray],
    num_classes: int,
    data_range: float = 2.0,
) -> list[Nearest]:
    """For each query case, the reference case with the most similar image (3D SSIM) and its label Dice.

    A query and a reference of different shapes are compared on their common central block (the overlap of the
    two shapes): real cases may differ in depth from the generated ones, and all are centred on the anatomy.

    Args:
        images: query images ``(H, W, D)`` in [-1, 1], e.g. the synthetic cases.
        labels: the queries' label maps ``(H, W, D)``.
        ref_images: reference images ``(H', W', D')`` in [-1, 1], e.g. the real training cases.
        ref_labels: the references' label maps.
        num_classes: ``K``, the number of labels including background.
        data_range: width of the intensity range.

    Returns:
        One :class:`Nearest` per query, in query order.
    """
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels")
    if len(ref_images) != len(ref_labels):
        raise ValueError(f"got {len(ref_images)} ref_images but {len(ref_labels)} ref_labels")
    if not ref_images:
        raise ValueError("ref_images is empty")
    if num_classes < 2:
        raise ValueError(f"num_classes must count the background and at least one structure, got {num_classes}")

    # SSIM's luminance term assumes non-negative intensities, so [-1, 1] is moved to [0, 2] (same data range).
    references = [torch.as_tensor(r, dtype=torch.float32) + 1.0 for r in ref_images]
    moments: dict[tuple[int, int], LocalMoments] = {}  # (reference, window size) -> its moments, computed once

    def reference_moments(j: int, window: torch.Tensor) -> LocalMoments:
        if (j, window.numel()) not in moments:
            moments[j, window.numel()] = local_moments(references[j], window)
        return moments[j, window.numel()]

    results = []
    with torch.no_grad():
        for image, label in zip(images, labels):
            image = torch.as_tensor(image, dtype=torch.float32) + 1.0
            # References sharing an overlap shape with the query are scored in one batch.
            groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
            for j, reference in enumerate(references):
                groups[_overlap(image.shape, reference.shape)].append(j)
            ssim = np.empty(len(references))
            query: dict[int, LocalMoments] = {}
            for shape, members in groups.items():
                window = gaussian_window(_window(shape))
                if window.numel() not in query:
                    query[window.numel()] = local_moments(image, window)
                for start in range(0, len(members), _REFERENCES_PER_BATCH):
                    batch = members[start : start + _REFERENCES_PER_BATCH]
                    ssim[batch] = ssim_against(
                        query[window.numel()],
                        [reference_moments(j, window) for j in batch],
                        centre_start(image.shape, shape),
                        [centre_start(references[j].shape, shape) for j in batch],
                        shape,
                        window,
                        data_range,
                    ).numpy()
            best = int(np.argmax(ssim))
            shape = _overlap(np.shape(label), np.shape(ref_labels[best]))
            dice = dice_per_structure(
                centre_crop(np.asarray(label), shape), centre_crop(np.asarray(ref_labels[best]), shape), num_classes
            )
            results.append(Nearest(best, float(ssim[best]), mean_present(dice)))
    return results
