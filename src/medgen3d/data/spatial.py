"""Voxel grids in world space, random smooth deformations, and sampling a volume at world points.

Used by the embedded dataset generators to make subjects that differ by smooth non-linear and affine
deformations. World coordinates are RAS+ millimetres; every volume is ``(C, H, W, D)`` with an affine mapping
voxel ``(i, j, k)`` to world.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Grid", "world_points", "random_affine", "smooth_random_field", "sample_at"]


class Grid(NamedTuple):
    """A voxel grid: ``shape`` ``(H, W, D)`` and the ``(4, 4)`` voxel-to-world ``affine``."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @classmethod
    def ras(cls, shape: tuple[int, int, int], spacing: tuple[float, float, float], center: np.ndarray) -> "Grid":
        """An axis-aligned RAS grid of ``shape`` and ``spacing`` (mm) whose centre sits at world point ``center``."""
        spacing_arr = np.asarray(spacing, dtype=np.float64)
        affine = np.diag([*spacing_arr, 1.0])
        affine[:3, 3] = np.asarray(center, dtype=np.float64) - spacing_arr * (np.asarray(shape) - 1) / 2
        return cls(tuple(int(s) for s in shape), affine)

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size along each voxel axis in mm."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))


def world_points(grid: Grid) -> torch.Tensor:
    """World coordinates of every voxel centre of ``grid``, ``(H, W, D, 3)`` float64."""
    axes = [torch.arange(n, dtype=torch.float64) for n in grid.shape]
    ijk = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    affine = torch.as_tensor(grid.affine, dtype=torch.float64)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def random_affine(
    rng: np.random.Generator,
    center: np.ndarray,
    max_rotation_deg: float,
    scale_range: tuple[float, float],
    max_translation_mm: float,
) -> np.ndarray:
    """A random ``(4, 4)`` world-to-world affine: rotation, anisotropic scaling and translation about ``center``.

    Angles are uniform in ``±max_rotation_deg`` about each axis, scales uniform in ``scale_range`` per axis,
    the translation uniform in ``±max_translation_mm`` per axis.
    """
    angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, size=3))
    rotation = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = math.cos(angle), math.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rotation = r @ rotation
    linear = rotation @ np.diag(rng.uniform(*scale_range, size=3))
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    center = np.asarray(center, dtype=np.float64)
    matrix[:3, 3] = center - linear @ center + rng.uniform(-max_translation_mm, max_translation_mm, size=3)
    return matrix


def smooth_random_field(
    rng: np.random.Generator, shape: tuple[int, int, int], control_points: int, amplitude: float, channels: int = 1
) -> torch.Tensor:
    """A smooth random field ``(channels, H, W, D)``: Gaussian values on a coarse grid, upsampled trilinearly.

    Args:
        rng: the random source.
        shape: output ``(H, W, D)``.
        control_points: coarse grid points per axis (at least 2); fewer means smoother.
        amplitude: standard deviation of the coarse values.
        channels: independent fields to draw.
    """
    if control_points < 2:
        raise ValueError(f"control_points must be at least 2, got {control_points}")
    coarse = rng.normal(0.0, amplitude, size=(1, channels, control_points, control_points, control_points))
    field = F.interpolate(torch.from_numpy(coarse).float(), size=tuple(shape), mode="trilinear", align_corners=True)
    return field[0]


def sample_at(
    volume: torch.Tensor, affine: np.ndarray, points: torch.Tensor, mode: str = "bilinear", fill: float = 0.0
) -> torch.Tensor:
    """Sample ``volume`` ``(C, h, w, d)`` (voxel-to-world ``affine``) at world ``points`` ``(H, W, D, 3)``.

    Returns ``(C, H, W, D)``. ``mode`` is ``"bilinear"`` (trilinear in 3D) or ``"nearest"``; points outside the
    volume get ``fill``.
    """
    inverse = torch.as_tensor(np.linalg.inv(affine), dtype=torch.float64)
    ijk = points @ inverse[:3, :3].T + inverse[:3, 3]
    size = torch.tensor(volume.shape[1:], dtype=torch.float64)
    # grid_sample wants (x, y, z) = (last, middle, first) voxel axis, normalised so -1 and 1 are the end voxels
    normalised = (2 * ijk / (size - 1) - 1).flip(-1).float()
    shifted = volume.float() - fill
    sampled = F.grid_sample(shifted[None], normalised[None], mode=mode, padding_mode="zeros", align_corners=True)
    return sampled[0] + fill
