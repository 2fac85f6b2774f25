"""Anatomical plausibility of label volumes: presence, sizes, fragmentation, slice-to-slice continuity and where
along the slice axis each structure lies.

Volumes are integer label arrays ``(H, W, D)`` with values ``0..K-1`` (slices along the last axis).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage, stats

__all__ = [
    "presence",
    "label_fractions",
    "connected_components",
    "slice_continuity",
    "slice_change_rate",
    "outline_pieces",
    "outline_specks",
    "AnatomySummary",
    "summarise",
    "fraction_distance",
    "z_profile",
    "mean_z_profile",
    "profile_correlation",
    "z_profile_correlation",
]


def presence(volume: np.ndarray, num_classes: int) -> np.ndarray:
    """Whether each foreground label ``1..K-1`` has at least one voxel, ``(K - 1,)`` bool."""
    counts = np.bincount(np.asarray(volume, dtype=np.int64).ravel(), minlength=num_classes)
    return counts[1:num_classes] > 0


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


def slice_change_rate(volume: np.ndarray) -> float:
    """The fraction of foreground voxels whose label changes from one slice to the next.

    Over every pair of neighbouring slices, the voxels that are foreground in either slice are counted, and those
    whose label differs between the two. Real brain masks change about 0.17 of them per step; a mask model that
    continues each window with its condition (columns along the slice axis) changes far fewer.

    Args:
        volume: ``(H, W, D)`` labels, 0 the background.

    Returns:
        In [0, 1]; 0 for a volume of identical slices, NaN for one with no foreground or a single slice.
    """
    volume = np.asarray(volume)
    a, b = volume[..., :-1], volume[..., 1:]
    foreground = (a > 0) | (b > 0)
    counted = foreground.sum()
    return float(((a != b) & foreground).sum() / counted) if counted else float("nan")


def outline_pieces(volume: np.ndarray) -> float:
    """The mean number of separate pieces of foreground in a slice, over the slices that have foreground.

    A body or brain is one piece in most slices (real brain masks: about 1.4, where the temporal lobes and the
    cerebellum part near the base); a mask model can raise its component counts and slice-change rate by breaking
    the outline into islands, which this measure shows. Pieces are 4-connected in the slice plane.

    Args:
        volume: ``(H, W, D)`` labels, 0 the background.

    Returns:
        At least 1; NaN for a volume with no foreground.
    """
    foreground = np.asarray(volume) > 0
    counts = [ndimage.label(foreground[..., z])[1] for z in range(foreground.shape[-1]) if foreground[..., z].any()]
    return float(np.mean(counts)) if counts else float("nan")


def outline_specks(volume: np.ndarray, max_voxels: int = 4) -> float:
    """The mean number of specks in a slice: pieces of foreground of at most ``max_voxels`` voxels, over the slices
    that have foreground.

    The part of :func:`outline_pieces` that is not anatomy: the real brain's extra pieces are lobes of a hundred
    voxels or more (a speck of 4 voxels at its 2 mm is 4 mm across), while a sampler can leave single voxels apart from
    the outline. Pieces are 4-connected in the slice plane, as there.

    Args:
        volume: ``(H, W, D)`` labels, 0 the background.
        max_voxels: the largest piece that counts as a speck.

    Returns:
        At least 0; NaN for a volume with no foreground.
    """
    foreground = np.asarray(volume) > 0
    counts = []
    for z in range(foreground.shape[-1]):
        pieces, n = ndimage.label(foreground[..., z])
        if n:
            sizes = np.bincount(pieces.ravel())[1:]
            counts.append(int((sizes <= max_voxels).sum()))
    return float(np.mean(counts)) if counts else float("nan")


class AnatomySummary(NamedTuple):
    """Per-volume measures for a set of volumes: ``fractions`` ``(N, K)``, ``components`` ``(N, K-1)``,
    ``continuity`` ``(N, K-1)`` and ``presence`` ``(N, K-1)`` bool.

    ``presence.mean(0)`` is the set's presence rate: the fraction of volumes in which each structure exists. A set
    that never generates a structure scores 0 there, whatever its other measures say about the volumes it does
    contain (the mean fraction of an absent structure is simply small).
    """

    fractions: np.ndarray
    components: np.ndarray
    continuity: np.ndarray
    presence: np.ndarray


def summarise(volumes: Sequence[np.ndarray], num_classes: int) -> AnatomySummary:
    """:func:`label_fractions`, :func:`connected_components`, :func:`slice_continuity` and :func:`presence` of
    every volume."""
    return AnatomySummary(
        np.stack([label_fractions(v, num_classes) for v in volumes]),
        np.stack([connected_components(v, num_classes) for v in volumes]),
        np.stack([slice_continuity(v, num_classes) for v in volumes]),
        np.stack([presence(v, num_classes) for v in volumes]),
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


def z_profile(volume: np.ndarray, num_classes: int, depth: int = 64) -> np.ndarray:
    """Area of each foreground label per slice, resampled to ``depth`` slices.

    The area of a slice is its voxel count of the label divided by the slice's ``H * W`` voxels, so volumes of
    different in-plane sizes compare. Slice ``i`` of ``D`` sits at its centre ``(i + 0.5) / D`` in [0, 1]: volumes
    covering the same extent with different slice counts then line up (a slice of a 2x downsampled volume sits
    where the two slices it averages sit); the profile is linearly interpolated at the ``depth`` target centres.

    Args:
        volume: ``(H, W, D)`` labels ``0..K-1``.
        num_classes: ``K``, background included.
        depth: number of resampled positions.

    Returns:
        ``(K - 1, depth)`` area fractions in [0, 1].
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    volume = np.asarray(volume)
    h, w, d = volume.shape
    source, target = (np.arange(d) + 0.5) / d, (np.arange(depth) + 0.5) / depth
    areas = [(volume == k).sum(axis=(0, 1)) / (h * w) for k in range(1, num_classes)]
    return np.stack([np.interp(target, source, a) for a in areas]) if areas else np.zeros((0, depth))


def mean_z_profile(volumes: Sequence[np.ndarray], num_classes: int, depth: int = 64) -> np.ndarray:
    """Mean :func:`z_profile` of a set of volumes, ``(K - 1, depth)``."""
    if not volumes:
        raise ValueError("no volumes to profile")
    return np.mean([z_profile(v, num_classes, depth) for v in volumes], axis=0)


def profile_correlation(synthetic: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of two ``(K - 1, depth)`` profiles, ``(K - 1,)``.

    NaN where either row is constant (a structure absent from every volume of a set, or of the same area in every
    slice): a correlation is undefined there, and a number would hide the missing structure.
    """
    if synthetic.shape != real.shape:
        raise ValueError(f"synthetic profile shape {synthetic.shape} differs from the real {real.shape}")
    return np.array(
        [
            np.corrcoef(s, r)[0, 1] if np.ptp(s) > 0 and np.ptp(r) > 0 else float("nan")
            for s, r in zip(synthetic, real)
        ]
    )


def z_profile_correlation(
    synthetic: Sequence[np.ndarray], real: Sequence[np.ndarray], num_classes: int, depth: int = 64
) -> np.ndarray:
    """Pearson correlation between the mean synthetic and mean real :func:`z_profile` of each structure.

    1 when each structure's area rises and falls along the slice axis as in the real volumes, negative when the
    order is reversed (e.g. a flipped slice axis).

    Args:
        synthetic: ``(H, W, D)`` label volumes; depths and in-plane sizes may differ.
        real: ``(H', W', D')`` label volumes.
        num_classes: ``K``, background included.
        depth: number of resampled positions.

    Returns:
        ``(K - 1,)``; NaN where either mean profile is constant (see :func:`profile_correlation`).
    """
    return profile_correlation(mean_z_profile(synthetic, num_classes, depth), mean_z_profile(real, num_classes, depth))
