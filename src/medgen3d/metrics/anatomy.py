"""Anatomical plausibility of label volumes: structure sizes, fragmentation and slice-to-slice continuity.

Volumes are integer label arrays ``(H, W, D)`` with values ``0..K-1`` (slices along the last axis).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage, stats

__all__ = [
    "label_fractions",
    "connected_components",
    "slice_continuity",
    "AnatomySummary",
    "summarise",
    "fraction_distance",
]


def label_fractions(volume: np.ndarray, num_classes: int) -> np.ndarray:
    """Fraction of voxels of each label, ``(K,)``."""
    counts = np.bincount(np.asarray(volume, dtype=np.int64).ravel(), minlength=num_classes)[:num_classes]
    return counts / max(counts.sum(), 1)


def connected_components(volume: np.ndarray, num_classes: int) -> np.ndarray:
    """Number of 3D connected components (6-connectivity) of each foreground label, ``(K - 1,)``."""
    return np.array([ndimage.label(volume == k)[1] for k in range(1, num_classes)])


def slice_continuity(volume: np.ndarray, num_classes: int) -> np.ndarray:
    """Mean Dice between consecutive slices for each foreground label, ``(K - 1,)``.

    Pairs of slices where the label is absent from both are skipped; a label absent everywhere scores NaN.
    """
    scores = []
    for k in range(1, num_classes):
        mask = volume == k
        a, b = mask[..., :-1], mask[..., 1:]
        overlap = (a & b).sum(axis=(0, 1))
        size = a.sum(axis=(0, 1)) + b.sum(axis=(0, 1))
        present = size > 0
        scores.append(float((2 * overlap[present] / size[present]).mean()) if present.any() else float("nan"))
    return np.array(scores)


class AnatomySummary(NamedTuple):
    """Per-volume measures for a set of volumes: ``fractions`` ``(N, K)``, ``components`` ``(N, K-1)``,
    ``continuity`` ``(N, K-1)``."""

    fractions: np.ndarray
    components: np.ndarray
    continuity: np.ndarray


def summarise(volumes: Sequence[np.ndarray], num_classes: int) -> AnatomySummary:
    """:func:`label_fractions`, :func:`connected_components` and :func:`slice_continuity` of every volume."""
    return AnatomySummary(
        np.stack([label_fractions(v, num_classes) for v in volumes]),
        np.stack([connected_components(v, num_classes) for v in volumes]),
        np.stack([slice_continuity(v, num_classes) for v in volumes]),
    )


def fraction_distance(synthetic: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Per-label 1-D Wasserstein distance between the synthetic and real distributions of label fractions.

    Args:
        synthetic: ``(N, K)`` fractions of the synthetic volumes.
        real: ``(M, K)`` fractions of the real volumes.

    Returns:
        ``(K,)``, in units of volume fraction; 0 for identical sets.
    """
    return np.array([stats.wasserstein_distance(synthetic[:, k], real[:, k]) for k in range(real.shape[1])])
