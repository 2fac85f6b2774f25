"""Training a 2D network on the slices of several views: a random view's axis becomes the slice axis."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

__all__ = ["RandSliceViewd"]


class RandSliceViewd(Randomizable, MapTransform):
    """Move a random view's slice axis of ``(C, H, W, D)`` volumes to the last position (the same view for every
    key), so that a crop of shape ``(h, w, 1)`` after it takes a slice of that view.

    With ``views=["axial"]`` it changes nothing: a 2D network then sees axial slices only, as at inference with
    ``SliceInferer(spatial_dim=2)``. With all three views the network learns slices of every view, which is what
    the quality report's three-view features need.

    Args:
        keys: volumes to permute.
        views: views to draw from, uniformly: ``"axial"`` (slices along ``D``), ``"coronal"`` (along ``W``),
            ``"sagittal"`` (along ``H``).
    """

    def __init__(self, keys: KeysCollection, views: Sequence[str] = ("axial",)) -> None:
        from medgen3d.diffusion.refiner import VIEWS

        MapTransform.__init__(self, keys)
        unknown = [v for v in views if v not in VIEWS]
        if not views or unknown:
            raise ValueError(f"views must be a non-empty subset of {list(VIEWS)}, got {list(views)}")
        self.axes = [VIEWS[v] for v in views]
        self.axis = self.axes[0]

    def randomize(self, data: object = None) -> None:
        self.axis = self.axes[int(self.R.randint(0, len(self.axes)))]

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        self.randomize()
        d = dict(data)
        for key in self.key_iterator(d):
            # a plain tensor: the affine no longer describes the permuted array, and training needs none
            d[key] = torch.as_tensor(d[key]).movedim(1 + self.axis, -1).contiguous()
        return d
