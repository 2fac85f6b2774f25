"""MONAI dictionary transforms of MedGen3D (random ones delegate to a deterministic twin where one is useful)."""

from medgen3d.transforms.subsequence import RandSubsequenced, ResizeLabelSlicesd, Subsequenced, resize_label_slices
from medgen3d.transforms.views import RandSliceAlongViewd, RandViewAsDepthd

__all__ = [
    "RandSliceAlongViewd",
    "RandSubsequenced",
    "RandViewAsDepthd",
    "ResizeLabelSlicesd",
    "Subsequenced",
    "resize_label_slices",
]
