"""Target grids for imported data, and the way back to the user's original geometry.

An imported case is resampled from its source grid (any orientation, any spacing) onto a RAS grid at the target
spacing and size. The source grid is recorded, so that any volume later produced on the dataset grid (a
prediction, a refined image) can be resampled back onto the source grid. The target grid is placed on the
lattice through the source's voxel centres: when the target spacing divides the source spacing along every axis
(the same spacing, or finer by an integer factor) every source voxel centre is also a target voxel centre, and
labels mapped back with nearest-neighbour sampling are exactly the source labels.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from medgen3d.data.spatial import Grid, sample_at, world_points

__all__ = ["SourceGeometry", "grid_corners", "target_grid", "resample", "restore_geometry"]


class SourceGeometry(NamedTuple):
    """Where an imported case came from: its file, voxel ``shape`` ``(H, W, D)`` and ``(4, 4)`` ``affine``."""

    file: str
    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def grid(self) -> Grid:
        """The source voxel grid."""
        return Grid(self.shape, self.affine)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form (stored in ``dataset.json`` under ``medgen3d.source_geometry``)."""
        return {"file": self.file, "shape": list(self.shape), "affine": np.asarray(self.affine).tolist()}

    @classmethod
    def from_json(cls, content: dict[str, Any]) -> "SourceGeometry":
        """Inverse of :meth:`to_json`."""
        return cls(str(content["file"]), tuple(int(s) for s in content["shape"]), np.asarray(content["affine"], float))


def grid_corners(grid: Grid) -> np.ndarray:
    """World coordinates ``(8, 3)`` of the outer corners of the grid (voxel edges, not centres)."""
    hi = np.asarray(grid.shape, dtype=np.float64) - 0.5
    corners = np.array([[x, y, z] for x in (-0.5, hi[0]) for y in (-0.5, hi[1]) for z in (-0.5, hi[2])])
    return corners @ grid.affine[:3, :3].T + grid.affine[:3, 3]


def target_grid(
    source: Grid, spacing: tuple[float, float, float], size: tuple[int, int, int] | None, center: np.ndarray
) -> Grid:
    """A RAS grid of ``spacing`` (mm) and ``size`` centred near world point ``center``, on the source lattice.

    ``size=None`` covers the source field of view. The centre is moved by less than half a target voxel so that
    the grid passes through the source's first voxel centre.
    """
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    if np.any(spacing_arr <= 0):
        raise ValueError(f"spacing must be positive, got {spacing}")
    if size is None:
        extent = np.ptp(grid_corners(source), axis=0)
        size = tuple(int(np.ceil(e / s - 1e-6)) for e, s in zip(extent, spacing_arr))
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"size must be three positive integers, got {size}")
    start = np.asarray(center, dtype=np.float64) - spacing_arr * (np.asarray(size) - 1) / 2
    origin = source.affine[:3, 3]  # world position of source voxel (0, 0, 0)
    start = origin + np.round((start - origin) / spacing_arr) * spacing_arr
    affine = np.diag([*spacing_arr, 1.0])
    affine[:3, 3] = start
    return Grid(tuple(int(s) for s in size), affine)


def resample(array: np.ndarray, source: Grid, target: Grid, mode: str, fill: float = 0.0) -> np.ndarray:
    """Resample ``array`` ``(H, W, D)`` from ``source`` onto ``target``; ``mode`` is ``"nearest"`` or ``"bilinear"``.

    Nearest-neighbour results keep the input dtype (labels stay labels); linear results are float32.
    """
    if tuple(array.shape) != tuple(source.shape):
        raise ValueError(f"array shape {array.shape} does not match the source grid {source.shape}")
    if mode == "nearest":
        # float32 holds integers exactly up to 2**24, ample for label values
        values = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
        out = sample_at(values, source.affine, world_points(target), mode="nearest", fill=fill)[0]
        return out.round().numpy().astype(array.dtype)
    values = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    return sample_at(values, source.affine, world_points(target), mode=mode, fill=fill)[0].numpy()


def restore_geometry(
    array: np.ndarray, dataset_affine: np.ndarray, source: SourceGeometry, mode: str = "nearest", fill: float = 0.0
) -> np.ndarray:
    """Resample a volume on an imported case's dataset grid back onto the case's source grid.

    Args:
        array: ``(H, W, D)`` on the dataset grid.
        dataset_affine: that grid's ``(4, 4)`` affine.
        source: the case's recorded source geometry.
        mode: ``"nearest"`` for labels, ``"bilinear"`` for images.
        fill: value outside the dataset grid's field of view.

    Returns:
        ``(H', W', D')`` in the source file's voxel order, to be saved with ``source.affine``.
    """
    return resample(array, Grid(tuple(array.shape), dataset_affine), source.grid, mode=mode, fill=fill)
