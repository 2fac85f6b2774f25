"""PNG montages of image/label volumes: axial, coronal and sagittal slices, with and without the label overlay.

Slices are shown in radiological convention (the patient's right on the viewer's left, anterior and superior
up) with the voxel spacing as aspect ratio, so anisotropic volumes look right.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from medgen3d.data.dataset import SPLITS, read_dataset  # noqa: E402
from medgen3d.data.io import atomic_path  # noqa: E402
from medgen3d.views import VIEWS  # noqa: E402

__all__ = ["display_window", "label_colormap", "save_case_montage", "preview_dataset"]


def display_window(image: np.ndarray, modality: str) -> tuple[float, float]:
    """Grey-level range: a CT window of [-1000, 400] HU (lungs and soft tissue), MR 1st-99th percentiles."""
    if modality == "CT":
        return -1000.0, 400.0
    low, high = np.percentile(image, [1, 99])
    return float(low), float(max(high, low + 1e-6))


def label_colormap(num_classes: int) -> ListedColormap:
    """A qualitative colour map with label 0 transparent."""
    base = plt.get_cmap("tab10" if num_classes <= 11 else "tab20")
    colours = [(0.0, 0.0, 0.0, 0.0)] + [base((i - 1) % base.N) for i in range(1, num_classes)]
    return ListedColormap(colours)


def _slices(volume: np.ndarray, center: tuple[int, int, int]) -> dict[str, np.ndarray]:
    # transposed so that rows run along the second axis named and origin="lower" puts A / S at the top
    return {view: np.take(volume, center[axis], axis=axis).T for view, axis in VIEWS.items()}


def _aspects(spacing: np.ndarray) -> dict[str, float]:
    return {
        "axial": spacing[1] / spacing[0],
        "coronal": spacing[2] / spacing[0],
        "sagittal": spacing[2] / spacing[1],
    }


def _foreground_center(label: np.ndarray) -> tuple[int, int, int]:
    if not label.any():
        return tuple(s // 2 for s in label.shape)
    idx = np.argwhere(label > 0)
    return tuple(int(c) for c in (idx.min(0) + idx.max(0)) // 2)


def save_case_montage(
    path: str | os.PathLike,
    image: np.ndarray,
    label: np.ndarray,
    affine: np.ndarray,
    labels: Mapping[int, str],
    modality: str,
    title: str = "",
) -> None:
    """Write a 2x3 montage: image slices on top, with the label overlay below.

    Args:
        path: the PNG to write (atomically).
        image, label: ``(H, W, D)`` RAS volumes.
        affine: their ``(4, 4)`` affine (for the spacing).
        labels: value -> name, for the legend.
        modality: ``"CT"`` or ``"MR"`` (grey-level window).
        title: figure title.
    """
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    center = _foreground_center(label)
    images, overlays, aspects = _slices(image, center), _slices(label, center), _aspects(spacing)
    vmin, vmax = display_window(image, modality)
    cmap = label_colormap(len(labels))
    fig, axes = plt.subplots(2, 3, figsize=(12, 8.5))
    for col, view in enumerate(VIEWS):
        for row in range(2):
            ax = axes[row, col]
            ax.imshow(images[view], cmap="gray", vmin=vmin, vmax=vmax, origin="lower", aspect=aspects[view])
            if row == 1:
                ax.imshow(
                    overlays[view],
                    cmap=cmap,
                    vmin=0,
                    vmax=len(labels) - 1,
                    alpha=0.45,
                    origin="lower",
                    aspect=aspects[view],
                    interpolation="nearest",
                )
            ax.set_axis_off()
        axes[0, col].set_title(view)
    handles = [Patch(color=cmap(v), label=f"{v} {name}") for v, name in sorted(labels.items()) if v > 0]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def preview_dataset(
    dataset_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, max_cases: int = 4, split: str = "all"
) -> list[Path]:
    """Write a montage for each of the first ``max_cases`` cases of ``split`` (or of every split, ``"all"``).

    Returns:
        The PNG paths, ``<out_dir>/<case>.png``; ``out_dir`` defaults to ``<dataset_dir>/previews``.
    """
    spec = read_dataset(dataset_dir)
    if split != "all" and split not in SPLITS:
        raise ValueError(f"split must be 'all' or one of {SPLITS}, got {split!r}")
    cases = spec.cases() if split == "all" else spec.split(split)
    out = Path(out_dir) if out_dir is not None else spec.path("previews")
    written = []
    for case in cases[:max_cases]:
        image, label = spec.load_case(case)
        path = out / f"{case.case_id}.png"
        title = f"{spec.name} {case.case_id}  shape {label.array.shape}"
        # a label-only case is drawn over an empty (black) image
        pixels = image.array if image is not None else np.full(label.array.shape, -1000.0, np.float32)
        modality = spec.modality if image is not None else "CT"
        save_case_montage(path, pixels, label.array, label.affine, spec.labels, modality, title)
        written.append(path)
    return written
