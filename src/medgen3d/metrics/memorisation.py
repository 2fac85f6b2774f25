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
from monai.metrics import SSIMMetric

from medgen3d.metrics.segmentation import dice_per_structure

__all__ = ["Nearest", "nearest_references"]

_WINDOW_SIZES = (11, 7, 5, 3)
_REFERENCES_PER_BATCH = 8


class Nearest(NamedTuple):
    """The reference case most similar to one query: its ``index``, the images' 3D SSIM and the labels' mean
    Dice over the foreground structures."""

    index: int
    image_ssim: float
    label_dice: float


def _overlap(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    return tuple(min(x, y) for x, y in zip(a, b))


def _centre_crop(volume: torch.Tensor | np.ndarray, shape: Sequence[int]) -> torch.Tensor | np.ndarray:
    """The central ``shape`` block of ``volume`` (each side at most as long as the volume's)."""
    starts = [(size - target) // 2 for size, target in zip(volume.shape, shape)]
    return volume[tuple(slice(s, s + t) for s, t in zip(starts, shape))]


def _window(shape: Sequence[int]) -> int:
    # MONAI's SSIM convolves without padding, so the window must fit the smallest side.
    for size in _WINDOW_SIZES:
        if size <= min(shape):
            return size
    raise ValueError(f"shape {tuple(shape)} is too small for SSIM: every side must be at least {_WINDOW_SIZES[-1]}")


def _ssim(query: torch.Tensor, references: Sequence[torch.Tensor], data_range: float) -> list[float]:
    """3D SSIM of ``query`` with each reference; all ``(H, W, D)`` of one shape."""
    metric = SSIMMetric(spatial_dims=3, data_range=data_range, win_size=_window(query.shape))
    scores: list[float] = []
    with torch.no_grad():
        for start in range(0, len(references), _REFERENCES_PER_BATCH):
            # SSIM's luminance term assumes non-negative intensities, so [-1, 1] is moved to [0, 2].
            batch = torch.stack(list(references[start : start + _REFERENCES_PER_BATCH]))[:, None] + 1.0
            queries = (query[None, None] + 1.0).expand_as(batch)
            scores += metric(queries, batch).flatten().tolist()
    return scores


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

    references = [torch.as_tensor(r, dtype=torch.float32) for r in ref_images]
    results = []
    for image, label in zip(images, labels):
        image = torch.as_tensor(image, dtype=torch.float32)
        # References sharing an overlap shape with the query are scored in one batch.
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for j, reference in enumerate(references):
            groups[_overlap(image.shape, reference.shape)].append(j)
        ssim = np.empty(len(references))
        for shape, members in groups.items():
            crops = [_centre_crop(references[j], shape).to(image.device) for j in members]
            ssim[members] = _ssim(_centre_crop(image, shape), crops, data_range)
        best = int(np.argmax(ssim))
        shape = _overlap(np.shape(label), np.shape(ref_labels[best]))
        dice = dice_per_structure(
            _centre_crop(np.asarray(label), shape), _centre_crop(np.asarray(ref_labels[best]), shape), num_classes
        )
        results.append(Nearest(best, float(ssim[best]), float(dice.mean())))
    return results
