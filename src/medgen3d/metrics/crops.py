"""Centre crops that let volumes of different sizes be compared voxel for voxel.

Generated cases may differ in depth from real ones, and all are centred on the anatomy, so comparisons (SSIM,
MS-SSIM, LPIPS, mask Dice) use the central block that every volume holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch

__all__ = ["centre_start", "centre_crop", "common_crop"]

Volume = TypeVar("Volume", torch.Tensor, np.ndarray)


def centre_start(size: Sequence[int], shape: Sequence[int]) -> list[int]:
    """Where the central ``shape`` block starts in an array of ``size``."""
    return [(s - t) // 2 for s, t in zip(size, shape)]


def centre_crop(volume: Volume, shape: Sequence[int]) -> Volume:
    """The central ``shape`` block of ``volume`` (each side at most as long as the volume's)."""
    starts = centre_start(volume.shape, shape)
    return volume[tuple(slice(s, s + t) for s, t in zip(starts, shape))]


def common_crop(volumes: Sequence[Volume]) -> list[Volume]:
    """Every volume centre-cropped to the shape all of them hold."""
    shape = [min(v.shape[i] for v in volumes) for i in range(volumes[0].ndim)]
    return [centre_crop(v, shape) for v in volumes]
