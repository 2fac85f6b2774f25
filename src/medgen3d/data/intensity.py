"""Intensity scaling between saved volumes and networks (which see [-1, 1]).

CT is windowed in Hounsfield units (default [-1000, 1000]); MR, in arbitrary units, is scaled by its own
percentiles. Generated MR images are mapped back with the mean percentiles of the real training images, so they
land on the real data's scale.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import NamedTuple

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from medgen3d.data.dataset import DatasetSpec

__all__ = ["IntensityScale", "volume_scale", "reference_scale", "ScaleIntensityd"]

CT_WINDOW = (-1000.0, 1000.0)
MR_PERCENTILES = (0.5, 99.5)


class IntensityScale(NamedTuple):
    """The intensities that map to -1 and 1."""

    low: float
    high: float

    def to_network(self, x: torch.Tensor, clip: bool = True) -> torch.Tensor:
        """Saved units -> [-1, 1]: ``low`` -> -1, ``high`` -> 1; values beyond them are clipped unless ``clip`` is
        false (then the map is linear everywhere, and :meth:`from_network` inverts it exactly)."""
        y = (x - self.low) / (self.high - self.low) * 2.0 - 1.0
        return y.clamp(-1.0, 1.0) if clip else y

    def from_network(self, y: torch.Tensor) -> torch.Tensor:
        """[-1, 1] -> saved units, linearly (values outside [-1, 1] map beyond ``low`` and ``high``)."""
        return (y + 1.0) / 2.0 * (self.high - self.low) + self.low


def volume_scale(image: np.ndarray | torch.Tensor, modality: str) -> IntensityScale:
    """The scale of one volume: the CT window, or the volume's MR percentiles."""
    if modality == "CT":
        return IntensityScale(*CT_WINDOW)
    values = torch.as_tensor(image).float().flatten()
    low, high = torch.quantile(values[:: max(1, values.numel() // 1_000_000)], torch.tensor(MR_PERCENTILES) / 100)
    return IntensityScale(float(low), float(max(high, low + 1e-6)))


def reference_scale(spec: DatasetSpec, max_cases: int = 20) -> IntensityScale:
    """The scale generated images are written back with: the CT window, or the mean MR percentiles of up to
    ``max_cases`` training images."""
    if spec.modality == "CT":
        return IntensityScale(*CT_WINDOW)
    scales = [volume_scale(spec.load_case(c)[0].array, "MR") for c in spec.training[:max_cases] if c.image]
    if not scales:
        raise ValueError(f"{spec.path('dataset.json')}: no training images to take the MR intensity scale from")
    return IntensityScale(float(np.mean([s.low for s in scales])), float(np.mean([s.high for s in scales])))


class ScaleIntensityd(MapTransform):
    """Map images to [-1, 1] by modality (:func:`volume_scale`)."""

    def __init__(self, keys: KeysCollection, modality: str) -> None:
        super().__init__(keys)
        self.modality = modality

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = volume_scale(d[key], self.modality).to_network(torch.as_tensor(d[key]).float())
        return d
