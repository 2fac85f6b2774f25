"""The per-label lookup image: the simplest thing that turns a mask into an image, kept as a measuring reference.

Each label gets the mean intensity its voxels have in the real training images, and a mask becomes an image by
looking its labels up. It knows nothing of texture, partial volumes or slice-to-slice change, so an image generator
that a lookup beats on alignment or on its difference to the real image has not yet learnt label -> intensity.
It is a baseline for the quality report and the benchmarks, never a generator offered as the method.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["label_means", "lookup_image", "lookup_images"]


def label_means(
    images: Sequence[torch.Tensor], labels: Sequence[np.ndarray | torch.Tensor], num_classes: int
) -> torch.Tensor:
    """Each label's mean intensity over all voxels of ``images`` that carry it.

    Args:
        images: ``(H, W, D)`` float images (any scale; the networks' [-1, 1] in this project).
        labels: ``(H, W, D)`` integer masks, one per image, values in ``[0, num_classes)``.
        num_classes: ``K``.

    Returns:
        ``(K,)`` float32 means; a label that occurs in no mask gets the mean of all voxels.
    """
    if len(images) != len(labels) or not len(images):
        raise ValueError(f"need as many masks as images, and at least one; got {len(images)} and {len(labels)}")
    sums = torch.zeros(num_classes, dtype=torch.float64)
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for image, label in zip(images, labels):
        label = torch.as_tensor(np.asarray(label)).long().flatten()
        if label.numel() != image.numel():
            raise ValueError(f"mask of {label.numel()} voxels for an image of {image.numel()}")
        if label.min() < 0 or label.max() >= num_classes:
            low, high = int(label.min()), int(label.max())
            raise ValueError(f"mask values must lie in [0, {num_classes}), got [{low}, {high}]")
        sums += torch.bincount(label, weights=image.flatten().double(), minlength=num_classes)
        counts += torch.bincount(label, minlength=num_classes).double()
    overall = sums.sum() / counts.sum()
    return torch.where(counts > 0, sums / counts.clamp(min=1), overall).float()


def lookup_image(label: np.ndarray | torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """The image of one mask ``(H, W, D)``: every voxel the mean of its label (``means``, ``(K,)``)."""
    return means[torch.as_tensor(np.asarray(label)).long()]


def lookup_images(labels: Sequence[np.ndarray | torch.Tensor], means: torch.Tensor) -> list[torch.Tensor]:
    """:func:`lookup_image` of every mask."""
    return [lookup_image(label, means) for label in labels]
