"""Training 2D networks on the slices of 3D volumes, by view.

- :class:`RandSliceAlongViewd` cuts one random slice along a fixed view, for a network that knows one view only
  (each view's semantic diffusion model of the refiner).
- :class:`RandViewAsDepthd` draws a view and makes its slice axis the last one, for a network that learns the
  slices of several views (the 2D segmenter); a later crop of depth 1 takes the slice.

Volumes are channel-first ``(C, H, W, D)``; the views and their axes are :data:`medgen3d.views.VIEWS`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

from medgen3d.views import VIEWS, check_view, check_views

__all__ = ["RandSliceAlongViewd", "RandViewAsDepthd"]


class RandSliceAlongViewd(Randomizable, MapTransform):
    """One random 2D slice of a fixed view from volumes ``(C, H, W, D)``: ``(C, a, b)``, the same slice for every
    key.

    The index drawn last is kept in ``self.index``, so that a slice can be found again.

    Args:
        keys: volumes to slice.
        view: ``"axial"`` (slices along ``D``), ``"coronal"`` (along ``W``) or ``"sagittal"`` (along ``H``).
    """

    def __init__(self, keys: KeysCollection, view: str) -> None:
        MapTransform.__init__(self, keys)
        self.axis = 1 + check_view(view)  # + 1: the channel axis comes first
        self.index = 0

    def randomize(self, size: int) -> None:
        self.index = int(self.R.randint(0, size))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        first = next(iter(self.key_iterator(d)))
        self.randomize(d[first].shape[self.axis])
        for key in self.key_iterator(d):
            d[key] = torch.as_tensor(d[key]).select(self.axis, self.index)
        return d


class RandViewAsDepthd(Randomizable, MapTransform):
    """Move a random view's slice axis of ``(C, H, W, D)`` volumes to the last position (the same view for every
    key), so that a crop of shape ``(h, w, 1)`` after it takes a slice of that view.

    With ``views=["axial"]`` it changes nothing: a 2D network then sees axial slices only, as at inference with
    ``SliceInferer(spatial_dim=2)``. With all three views the network learns slices of every view, which is what
    the quality report's three-view features need.

    Args:
        keys: volumes to permute.
        views: views to draw from, uniformly, without repeats: ``"axial"`` (slices along ``D``), ``"coronal"``
            (along ``W``), ``"sagittal"`` (along ``H``).
    """

    def __init__(self, keys: KeysCollection, views: Sequence[str] = ("axial",)) -> None:
        MapTransform.__init__(self, keys)
        self.axes = [VIEWS[view] for view in check_views(views)]
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
