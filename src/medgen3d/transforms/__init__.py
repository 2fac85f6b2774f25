"""MONAI dictionary transforms of MedGen3D (random ones delegate to a deterministic twin where one is useful)."""

from medgen3d.transforms.subsequence import (
    RandSubsequenced,
    RandViewSliced,
    ResizeLabelSlicesd,
    Subsequenced,
    resize_label_slices,
)
from medgen3d.transforms.views import RandSliceViewd

__all__ = [
    "RandSliceViewd",
    "RandSubsequenced",
    "RandViewSliced",
    "ResizeLabelSlicesd",
    "Subsequenced",
    "resize_label_slices",
]
