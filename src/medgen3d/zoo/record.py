"""The record of the data a stage was trained on, kept beside its weights.

Training writes ``<ckpt_dir>/training_data.json``: the dataset's name, modality, label set, the network's
in-plane size, the settings the network was built with (its ``network_settings``: channels, depths, ...) and the
ids of the training cases (so an experiment can check which subjects a generator saw).
Inference configs take their defaults from it where the data is not at hand (segmentation_eval's
``inference.json``, which MONAI Label loads with nothing but MONAI), and ``medgen3d bundle export`` fills an
exported bundle's metadata and the values of its ``inference.json`` from it, so a bundle that leaves the repository
says what it was trained on and builds the network its weights fit, whatever preset or override it was trained
with. The case ids stay beside the weights: an exported bundle carries the record without them
(:func:`shareable_record`), since a user's file names may name patients.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medgen3d.data.dataset import DatasetSpec
from medgen3d.data.io import DataError, read_json, write_json

__all__ = [
    "RECORD_NAME",
    "default_labels",
    "training_record",
    "write_training_record",
    "read_training_record",
    "shareable_record",
]

RECORD_NAME = "training_data.json"
PRIVATE_KEYS = ("training_cases",)  # kept beside the weights, left out of what is exported


def training_record(spec: DatasetSpec, image_size: Sequence[int] | None = None, **extra: Any) -> dict[str, Any]:
    """The record of ``spec``: ``{"name", "modality", "labels": {"0": "background", ...}, "image_size",
    "training_cases": [case id, ...], ...}``.

    Args:
        spec: the training dataset.
        image_size: the network's in-plane ``(h, w)``, or ``None`` for networks that take any size.
        extra: further JSON values (for example a refiner's ``views``).
    """
    return {
        "name": spec.name,
        "modality": spec.modality,
        "labels": {str(k): v for k, v in sorted(spec.labels.items())},
        "image_size": [int(s) for s in image_size] if image_size else None,
        "training_cases": [case.case_id for case in spec.training],
        **extra,
    }


def shareable_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` without the ids of the cases it was trained on: what an exported bundle carries."""
    return {key: value for key, value in record.items() if key not in PRIVATE_KEYS}


def write_training_record(
    spec: DatasetSpec, ckpt_dir: str | os.PathLike, image_size: Sequence[int] | None = None, **extra: Any
) -> Path:
    """Write :func:`training_record` to ``ckpt_dir/training_data.json`` (atomically) and return its path."""
    path = Path(ckpt_dir) / RECORD_NAME
    write_json(path, training_record(spec, image_size, **extra))
    return path


def read_training_record(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """The record in ``ckpt_dir``; a missing or malformed one raises :class:`DataError` naming the file."""
    path = Path(ckpt_dir) / RECORD_NAME
    if not path.is_file():
        raise DataError(f"{path}: training record not found; train the stage first (its train.json writes it)")
    record = read_json(path)
    if not isinstance(record, Mapping) or not isinstance(record.get("labels"), Mapping):
        raise DataError(f"{path}: not a training record (no 'labels' mapping)")
    return dict(record)


def default_labels(dataset_dir: str | os.PathLike, ckpt_dir: str | os.PathLike) -> dict[str, str]:
    """The label set (``{"0": "background", ...}``) a stage works with unless one is configured: the dataset's
    when ``dataset_dir`` holds one, else the training record's beside the weights, so an exported bundle builds its
    network without the data it was trained on (the model zoo's ``verify_net_in_out`` and ``ckpt_export`` pass no
    dataset). With neither, :class:`DataError` names both places."""
    from medgen3d.data.dataset import DATASET_JSON, read_dataset

    if (Path(dataset_dir) / DATASET_JSON).is_file():
        return {str(k): v for k, v in sorted(read_dataset(dataset_dir).labels.items())}
    if (Path(ckpt_dir) / RECORD_NAME).is_file():
        return {str(k): str(v) for k, v in read_training_record(ckpt_dir)["labels"].items()}
    raise DataError(
        f"{dataset_dir}: dataset folder not found, and no training record {Path(ckpt_dir) / RECORD_NAME} to take the "
        "labels from; give --dataset_dir"
    )
