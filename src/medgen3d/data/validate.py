"""Full validation of a dataset folder: the JSON structure and every NIfTI pair it lists."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medgen3d.data.dataset import SPLITS, DatasetSpec, read_dataset
from medgen3d.data.io import DataError

__all__ = ["DatasetSummary", "validate_dataset"]


@dataclass
class DatasetSummary:
    """What :func:`validate_dataset` found in a valid dataset.

    Attributes:
        spec: the parsed ``dataset.json``.
        split_sizes: number of cases per split.
        shapes: the distinct ``(H, W, D)`` shapes of the volumes.
        spacings: the distinct voxel sizes in mm (rounded to 1e-3).
        label_voxels: label value -> voxel count summed over all cases.
        intensity_range: minimum and maximum image intensity over all cases (``(inf, -inf)`` without images).
    """

    spec: DatasetSpec
    split_sizes: dict[str, int]
    shapes: set[tuple[int, int, int]] = field(default_factory=set)
    spacings: set[tuple[float, float, float]] = field(default_factory=set)
    label_voxels: dict[int, int] = field(default_factory=dict)
    intensity_range: tuple[float, float] = (float("inf"), float("-inf"))

    def describe(self) -> str:
        """A few human-readable lines."""
        spec = self.spec
        sizes = ", ".join(f"{k} {v}" for k, v in self.split_sizes.items())
        total = sum(self.label_voxels.values()) or 1
        fractions = ", ".join(
            f"{value} {spec.labels[value]} {100 * count / total:.1f}%"
            for value, count in sorted(self.label_voxels.items())
        )
        return "\n".join(
            [
                f"dataset '{spec.name}' ({spec.modality}) at {spec.root}: valid",
                f"  cases: {sizes}",
                f"  shapes: {sorted(self.shapes)}; spacings (mm): {sorted(self.spacings)}",
                (
                    f"  intensities: [{self.intensity_range[0]:.1f}, {self.intensity_range[1]:.1f}]"
                    if self.intensity_range[0] <= self.intensity_range[1]
                    else "  intensities: none (label-only dataset)"
                ),
                f"  labels: {fractions}",
            ]
        )


def validate_dataset(
    root: str | os.PathLike, progress: Callable[[int, int, str], None] | None = None
) -> DatasetSummary:
    """Check ``root/dataset.json`` and load every pair it lists.

    Checks: the JSON structure (see :mod:`medgen3d.data.dataset`), that no file is listed twice, that every file
    exists and reads as a finite 3D NIfTI volume, that each label matches its image in shape and affine, and
    that label values are declared.

    Args:
        root: the dataset folder.
        progress: optional ``callback(done, total, case_id)`` called after each case.

    Raises:
        DataError: on the first problem, naming the file.
    """
    spec = read_dataset(root)
    seen: dict[str, str] = {}
    for split in SPLITS:
        for case in spec.split(split):
            for path in (p for p in (case.image, case.label) if p is not None):
                key = os.path.normpath(path)
                if key in seen:
                    raise DataError(f"{spec.path(path)}: listed twice (in '{seen[key]}' and '{split}')")
                seen[key] = split
    summary = DatasetSummary(spec=spec, split_sizes={s: len(spec.split(s)) for s in SPLITS})
    label_voxels = dict.fromkeys(spec.labels, 0)
    low, high = float("inf"), float("-inf")
    cases = spec.cases()
    for i, case in enumerate(cases):
        image, label = spec.load_case(case)
        summary.shapes.add(tuple(int(s) for s in label.array.shape))
        spacing = np.sqrt((label.affine[:3, :3] ** 2).sum(axis=0))
        summary.spacings.add(tuple(round(float(s), 3) for s in spacing))
        values, counts = np.unique(label.array, return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist()):
            label_voxels[value] += count
        if image is not None:
            low, high = min(low, float(image.array.min())), max(high, float(image.array.max()))
        if progress is not None:
            progress(i + 1, len(cases), Path(case.label).name)
    summary.label_voxels = label_voxels
    summary.intensity_range = (low, high)
    return summary
