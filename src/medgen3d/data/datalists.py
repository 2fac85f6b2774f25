"""Datalists for MONAI datasets, checked against what a bundle was configured for."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib

from medgen3d.data.dataset import DatasetSpec, read_dataset
from medgen3d.data.io import DataError

__all__ = ["check_labels_match", "check_modality_match", "label_datalist", "combined_datalist"]


def check_labels_match(spec: DatasetSpec, labels: Mapping) -> None:
    """Raise :class:`DataError` unless the dataset declares exactly the configured ``labels`` (value -> name)."""
    configured = {int(k): str(v) for k, v in labels.items()}
    if spec.labels != configured:
        raise DataError(
            f"{spec.path('dataset.json')}: the dataset's labels {spec.labels} differ from the configured labels "
            f"{configured}; set the bundle's 'labels' to match (a model trained on one label set cannot use another)"
        )


def check_modality_match(dataset_dir: str | os.PathLike, modality: str) -> None:
    """Raise :class:`DataError` when the dataset in ``dataset_dir`` declares another modality than the configured
    one (which decides the intensity scaling). A missing folder passes: MONAI Label trains from its own data lists
    and has no dataset folder."""
    if Path(dataset_dir).is_dir() and read_dataset(dataset_dir).modality != modality:
        raise DataError(
            f"{Path(dataset_dir) / 'dataset.json'}: modality {read_dataset(dataset_dir).modality!r} differs from the "
            f"configured {modality!r}; set the bundle's 'modality' to match"
        )


def label_datalist(
    spec: DatasetSpec,
    labels: Mapping,
    min_depth: int = 1,
    splits: tuple[str, ...] = ("training",),
    with_images: bool = False,
) -> list[dict[str, str]]:
    """``[{"label": absolute path}, ...]`` for the cases of ``splits``, after checking labels and depths.

    Args:
        spec: the dataset.
        labels: the configured label set (value -> name).
        min_depth: fewest slices a volume may have (the subsequence length).
        splits: which splits to list.
        with_images: also list ``"image"`` (every case must have one).
    """
    check_labels_match(spec, labels)
    items = []
    for split in splits:
        for case in spec.split(split):
            path = spec.path(case.label)
            shape = _shape(path)
            if len(shape) < 3 or shape[2] < min_depth:
                raise DataError(f"{path}: {shape[2] if len(shape) > 2 else 1} slices, fewer than {min_depth} needed")
            item = {"label": str(path)}
            if with_images:
                if case.image is None:
                    raise DataError(f"{spec.path('dataset.json')}: case {case.case_id} has no image")
                item["image"] = str(spec.path(case.image))
                image_shape = _shape(spec.path(case.image))
                if image_shape[:3] != shape[:3]:
                    raise DataError(
                        f"{path}: shape {shape[:3]} differs from its image {item['image']} {image_shape[:3]}"
                    )
            items.append(item)
    if not items:
        raise DataError(f"{spec.path('dataset.json')}: no cases in {list(splits)}")
    return items


def _shape(path) -> tuple[int, ...]:
    """A NIfTI file's shape from its header; a missing or unreadable file raises :class:`DataError` naming it."""
    try:
        return tuple(nib.load(path).shape)
    except Exception as err:  # nibabel raises several types
        raise DataError(f"{path}: cannot be read as NIfTI ({err})") from err


def combined_datalist(
    folders: Sequence[str | os.PathLike], labels: Mapping, splits: tuple[str, ...] = ("training",)
) -> list[dict[str, str]]:
    """The image/label pairs of ``splits`` of several dataset folders (real, synthetic or both), each checked
    against the configured ``labels``."""
    from medgen3d.data.dataset import read_dataset

    if not folders:
        raise ValueError("no training datasets given")
    return [item for folder in folders for item in label_datalist(read_dataset(folder), labels, 1, splits, True)]
