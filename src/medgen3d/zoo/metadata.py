"""The metadata of an exported bundle: what its ``configs/metadata.json`` says once trained weights are inside.

The repository's metadata describes each bundle for the default data; an exported bundle's describes the network
trained on the data in its training record (:mod:`medgen3d.zoo.record`): label names and the channel counts they
give, the modality, the slice size, the medgen3d version it needs, and the record itself under
:data:`EXPORT_MARKER` (which also marks a folder as an export).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medgen3d.data.io import DataError
from medgen3d.zoo.record import RECORD_NAME

__all__ = ["EXPORT_MARKER", "SLICE_NETWORKS", "exported_metadata", "positive_int"]

EXPORT_MARKER = "medgen3d_training_data"
# generators work slice by slice, so a record's in-plane image_size is their input and output size
SLICE_NETWORKS = ("mask_mcdpm", "image_vid2vid", "sdm_refiner")


def exported_metadata(
    metadata: Mapping[str, Any],
    record: Mapping[str, Any],
    name: str,
    sizes: Mapping[str, int],
    package_version: str,
    record_path: str | os.PathLike = RECORD_NAME,
) -> dict[str, Any]:
    """``metadata`` (a bundle's ``configs/metadata.json``) describing the network trained on ``record``'s data.

    Args:
        metadata: the bundle's metadata as in the repository.
        record: the stage's training record (see :mod:`medgen3d.zoo.record`).
        name: the bundle (a key of :data:`medgen3d.zoo.export.BUNDLE_STAGES`).
        sizes: ``subsequence_length`` (mask_mcdpm) or ``history`` (image_vid2vid), as the network was built.
        package_version: the installed medgen3d version, pinned in ``required_packages_version``.
        record_path: the record's file, named in errors.

    Returns:
        A new metadata dict: medgen3d pinned, ``label_classes`` and ``network_data_format`` from the labels,
        modality and fixed slice sizes from the record, ``version`` in the ``changelog``, and the record itself under
        :data:`EXPORT_MARKER`.
    """
    names = _label_names(record, record_path)
    meta = json.loads(json.dumps(metadata))  # a deep copy that is plain JSON
    meta["required_packages_version"] = {**meta.get("required_packages_version", {}), "medgen3d": package_version}
    meta["label_classes"] = f"{record.get('name', 'training data')}: " + ", ".join(
        f"{value} {label}" for value, label in enumerate(names)
    )
    image, pred = _channels(name, names, sizes)
    formats = meta.setdefault("network_data_format", {})
    formats.setdefault("inputs", {}).setdefault("image", {}).update(image)
    formats.setdefault("outputs", {}).setdefault("pred", {}).update(pred)
    if name in ("sdm_refiner", "segmentation_eval"):  # their input starts with an image of the data's modality
        formats["inputs"]["image"]["modality"] = _modality(record, record_path)
    image_size = _image_size(record, record_path)
    if name in SLICE_NETWORKS and image_size:
        for tensor in (formats["inputs"]["image"], formats["outputs"]["pred"]):
            tensor["spatial_shape"] = image_size
    meta["image_classes"], meta["pred_classes"] = _class_texts(name, names, sizes)
    changelog = meta.setdefault("changelog", {})
    if meta.get("version") not in changelog:
        changelog[meta.get("version")] = "exported with trained weights"
    meta[EXPORT_MARKER] = dict(record)
    return meta


def positive_int(value: Any, key: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DataError(f"{path}: '{key}' must be a positive integer, got {value!r}")
    return value


def _label_names(record: Mapping[str, Any], path: str | os.PathLike) -> list[str]:
    labels = record.get("labels")
    try:
        by_value = {int(value): str(label) for value, label in labels.items()}
    except (AttributeError, TypeError, ValueError):
        by_value = {}
    if len(by_value) < 2 or sorted(by_value) != list(range(len(by_value))):
        raise DataError(f"{path}: 'labels' must number the classes 0..K-1 (0 = background), got {labels!r}")
    return [by_value[value] for value in range(len(by_value))]


def _image_size(record: Mapping[str, Any], path: str | os.PathLike) -> list[int] | None:
    size = record.get("image_size")
    if size is None:
        return None  # the network takes any size
    if not isinstance(size, list) or not size or not all(isinstance(s, int) and s > 0 for s in size):
        raise DataError(f"{path}: 'image_size' must be null or a list of positive integers, got {size!r}")
    return list(size)


def _modality(record: Mapping[str, Any], path: str | os.PathLike) -> str:
    modality = record.get("modality")
    if not isinstance(modality, str) or not modality:
        raise DataError(f"{path}: no 'modality' (CT or MR) in the training record")
    return modality


def _channels(name: str, labels: list[str], sizes: Mapping[str, int]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``num_channels`` and ``channel_def`` of the network's ``image`` input and ``pred`` output."""
    k = len(labels)
    if name == "mask_mcdpm":  # m slices of K one-hot channels, then m slice indicators -> m slices of K
        m = sizes["subsequence_length"]
        slices = {str(s * k + c): f"slice {s + 1}, {label}" for s in range(m) for c, label in enumerate(labels)}
        indicators = {str(m * k + s): f"indicator of slice {s + 1}" for s in range(m)}
        return _tensor({**slices, **indicators}), _tensor(slices)
    if name == "image_vid2vid":  # one-hot masks of slices t-L..t, then the L previous image slices -> slice t
        history = sizes["history"]
        masks = {
            str(j * k + c): f"slice {_offset(history - j)}, {label}"
            for j in range(history + 1)
            for c, label in enumerate(labels)
        }
        previous = {str((history + 1) * k + j): f"previous image slice {_offset(history - j)}" for j in range(history)}
        return _tensor({**masks, **previous}), _tensor({"0": "image slice t"})
    if name == "sdm_refiner":  # noisy image slice, then its one-hot mask -> the predicted noise
        mask = {str(1 + c): f"mask: {label}" for c, label in enumerate(labels)}
        return _tensor({"0": "noisy image slice", **mask}), _tensor({"0": "predicted noise"})
    if name == "segmentation_eval":
        return _tensor({"0": "image"}), _tensor({str(c): label for c, label in enumerate(labels)})
    raise ValueError(f"name must be one of the stage bundles {[*SLICE_NETWORKS, 'segmentation_eval']}, got {name!r}")


def _offset(steps: int) -> str:
    return f"t-{steps}" if steps else "t"


def _tensor(channel_def: dict[str, str]) -> dict[str, Any]:
    return {"num_channels": len(channel_def), "channel_def": channel_def}


def _class_texts(name: str, labels: list[str], sizes: Mapping[str, int]) -> tuple[str, str]:
    """``image_classes`` and ``pred_classes`` with this network's numbers, replacing the defaults' ones."""
    k = len(labels)
    if name == "mask_mcdpm":
        m = sizes["subsequence_length"]
        return (
            f"{m * (k + 1)} channels: {m} slices of {k} one-hot channels in [-1, 1] (clean where given, noisy where "
            f"generated), then {m} slice indicators",
            f"{m * k} channels: the diffusion prediction for every slice ({m} slices of {k} channels)",
        )
    if name == "image_vid2vid":
        history = sizes["history"]
        return (
            f"{(history + 1) * k + history} channels: {k} one-hot mask channels of each slice t-{history}..t in "
            f"[-1, 1], then the {history} previous image slices in [-1, 1]",
            "1 channel: the generated image slice in [-1, 1]",
        )
    if name == "sdm_refiner":
        return f"{1 + k} channels: the noisy image slice in [-1, 1], then {k} one-hot mask channels", (
            "1 channel: the predicted noise"
        )
    return "single channel image in [-1, 1] (CT window or MR percentiles)", f"{k} channels: " + ", ".join(labels)
