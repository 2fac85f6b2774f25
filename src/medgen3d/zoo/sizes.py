"""Network sizes from the data: the in-plane size a slice network works at.

A stage's default is the training data's own in-plane size; a preset (or the command line) may set another. Either
is rounded to the nearest size the network can take (a multiple of its total down-sampling), and a rounded size is
reported once on standard error, so the size a model was trained at is never a surprise.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from medgen3d.data.dataset import DatasetSpec
from medgen3d.data.io import SettingError

__all__ = ["data_slice_shape", "fit_size", "slice_size"]


def data_slice_shape(spec: DatasetSpec) -> tuple[int, int]:
    """The in-plane ``(H, W)`` of the dataset's training labels (all must share it); read from headers only."""
    from medgen3d.synthesis.masks import reference_geometry

    return reference_geometry(spec).slice_shape


def fit_size(size: Sequence[int], multiple: int) -> tuple[int, ...]:
    """``size`` rounded to the nearest multiples of ``multiple`` (at least one multiple per axis)."""
    if multiple < 1:
        raise SettingError(f"multiple: must be a positive integer, got {multiple}")
    if any(int(s) < 1 for s in size):
        raise SettingError(f"image_size: every side must be positive, got {list(size)}")
    return tuple(max(multiple, int(round(int(s) / multiple)) * multiple) for s in size)


def slice_size(
    spec: DatasetSpec, image_size: Sequence[int] | None, multiple: int, stage: str = "medgen3d"
) -> tuple[int, int]:
    """The in-plane size a stage's network works at.

    Args:
        spec: the training (or reference) dataset.
        image_size: the configured ``(h, w)``, or ``None`` for the data's own in-plane size.
        multiple: the network's total down-sampling factor; every side must be a multiple of it.
        stage: named in the note printed when the size is rounded.
    """
    wanted = tuple(int(s) for s in image_size) if image_size else data_slice_shape(spec)
    if len(wanted) != 2:
        raise SettingError(f"image_size: must be two numbers (h, w), got {list(wanted)}")
    fitted = fit_size(wanted, multiple)
    if fitted != wanted:
        print(
            f"[{stage}] image size {list(wanted)} rounded to {list(fitted)}: the network needs multiples of {multiple}",
            file=sys.stderr,
            flush=True,
        )
    return fitted  # type: ignore[return-value]
