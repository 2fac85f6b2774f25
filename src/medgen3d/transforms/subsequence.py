"""Slice subsequences of a volume for MC-DPM training, and label-preserving in-plane resizing.

Volumes are channel-first ``(C, H, W, D)`` with the slice sequence along ``D``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

__all__ = ["Subsequenced", "RandSubsequenced", "ResizeLabelSlicesd", "resize_label_slices"]


class Subsequenced(MapTransform):
    """Crop slices ``[start, start + length)`` along the last axis and record the relative position ``start / D``.

    Args:
        keys: volumes to crop, each ``(C, H, W, D)``.
        length: ``m``, slices kept.
        start: first slice kept.
        position_key: where ``start / D`` is written (a float32 scalar tensor).
    """

    def __init__(self, keys: KeysCollection, length: int, start: int = 0, position_key: str = "position") -> None:
        super().__init__(keys)
        if length < 1:
            raise ValueError(f"length must be positive, got {length}")
        self.length, self.start, self.position_key = length, start, position_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        depth = None
        for key in self.key_iterator(d):
            volume = d[key]
            depth = volume.shape[-1]
            if depth < self.length:
                source = getattr(volume, "meta", {}).get("filename_or_obj", key)
                raise ValueError(f"{source}: {depth} slices, fewer than the subsequence length {self.length}")
            if not 0 <= self.start <= depth - self.length:
                raise ValueError(f"start must be in [0, {depth - self.length}], got {self.start}")
            d[key] = volume[..., self.start : self.start + self.length]
        if depth is not None:
            d[self.position_key] = torch.tensor(self.start / depth, dtype=torch.float32)
        return d


class RandSubsequenced(Randomizable, MapTransform):
    """:class:`Subsequenced` at a uniformly random start in ``[0, D - m]`` (MedGen3D Sec. 3.1, "Train").

    Every key gets the same start; the start drawn last is kept in ``self.start`` so a crop can be replayed.
    """

    def __init__(self, keys: KeysCollection, length: int, position_key: str = "position") -> None:
        MapTransform.__init__(self, keys)
        self.crop = Subsequenced(keys, length, 0, position_key)
        self.start = 0

    def randomize(self, depth: int) -> None:
        self.start = int(self.R.randint(0, max(depth - self.crop.length, 0) + 1))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        first = next(iter(self.key_iterator(dict(data))))
        self.randomize(data[first].shape[-1])
        self.crop.start = self.start
        return self.crop(data)


def resize_label_slices(labels: torch.Tensor, size: Sequence[int], num_classes: int) -> torch.Tensor:
    """Resize integer label slices in-plane without inventing labels.

    Each label's indicator is resized bilinearly and the arg-max taken, which keeps boundaries smooth and can only
    produce values already in ``0..K-1``; an unchanged size returns the input.

    Args:
        labels: ``(N, H, W)`` integer slices.
        size: target ``(H', W')``.
        num_classes: ``K``.

    Returns:
        ``(N, H', W')`` int64.
    """
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels.long()
    one_hot = F.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2).float()
    resized = F.interpolate(one_hot, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return resized.argmax(dim=1)


class ResizeLabelSlicesd(MapTransform):
    """:func:`resize_label_slices` on label volumes ``(1, H, W, D)``: every slice to ``size``, depth unchanged.

    ``size=None`` leaves volumes as they are (train at the data's own in-plane size).
    """

    def __init__(self, keys: KeysCollection, size: Sequence[int] | None, num_classes: int) -> None:
        super().__init__(keys)
        self.size, self.num_classes = (tuple(size) if size else None), num_classes

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        if self.size is None:
            return d
        for key in self.key_iterator(d):
            volume = torch.as_tensor(d[key])
            slices = volume[0].permute(2, 0, 1)  # (D, H, W)
            d[key] = resize_label_slices(slices, self.size, self.num_classes).permute(1, 2, 0)[None]
        return d
