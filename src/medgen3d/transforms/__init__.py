"""MONAI dictionary transforms of MedGen3D (random ones delegate to a deterministic twin)."""

from medgen3d.transforms.subsequence import RandSubsequenced, ResizeLabelSlicesd, Subsequenced, resize_label_slices

__all__ = ["RandSubsequenced", "ResizeLabelSlicesd", "Subsequenced", "resize_label_slices"]
