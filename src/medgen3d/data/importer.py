"""Import of user data: a folder of NIfTI image/label pairs becomes a MedGen3D dataset.

Each pair is checked, its labels remapped onto ``0..K-1``, and both volumes resampled onto a RAS grid at the
target spacing and size (images linearly, labels by nearest neighbour). The source geometry of every case is
recorded in ``dataset.json`` (``medgen3d.source_geometry``), so that outputs made on the dataset grid can be
written back in the user's geometry (:func:`medgen3d.data.geometry.restore_geometry`).

Pairs are found by two glob patterns, one for images and one for labels, relative to the source folder. The text
each ``*`` matches is the case key, and an image pairs with the label of the same key (``?`` matches without
counting). SegTHOR as distributed, ``Patient_01/Patient_01.nii.gz`` with ``Patient_01/GT.nii.gz``, is imported
with ``--image_glob '*/Patient_??.nii.gz' --label_glob '*/GT.nii.gz'``. Without patterns, the Decathlon / nnU-Net
layout ``imagesTr/`` + ``labelsTr/`` is recognised.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from medgen3d.data.dataset import MODALITIES, Case, DatasetSpec, check_pair, write_dataset
from medgen3d.data.geometry import SourceGeometry, grid_corners, resample, target_grid
from medgen3d.data.io import DataError, Volume, load_nifti, save_nifti
from medgen3d.data.spatial import Grid
from medgen3d.synthesis.cases import CaseRunner

__all__ = [
    "SourcePair",
    "ImportSettings",
    "find_pairs",
    "parse_label_map",
    "import_case",
    "import_dataset",
    "infer_labels",
]

# Fill values outside the source field of view: air for CT, zero signal for MR.
PAD_VALUE = {"CT": -1024.0, "MR": 0.0}
_DEFAULT_LAYOUTS = (("imagesTr/*_0000.nii.gz", "labelsTr/*.nii.gz"), ("imagesTr/*.nii.gz", "labelsTr/*.nii.gz"))


class SourcePair(NamedTuple):
    """One image/label pair in the user's folder."""

    case_id: str
    image: Path
    label: Path


@dataclass(frozen=True)
class ImportSettings:
    """How to turn user pairs into dataset cases.

    Attributes:
        modality: ``"CT"`` or ``"MR"``.
        spacing: target voxel size in mm along R, A, S.
        size: target ``(H, W, D)``; ``None`` keeps each case's whole field of view (sizes may then differ).
        label_map: source label value -> dataset label value; values not listed are kept.
        labels: dataset label value -> name, values ``0..K-1``.
        center: ``"foreground"`` centres the target grid on the labelled structures' bounding box,
            ``"image"`` on the image's field of view.
    """

    modality: str
    spacing: tuple[float, float, float]
    size: tuple[int, int, int] | None
    label_map: Mapping[int, int]
    labels: Mapping[int, str]
    center: str = "foreground"

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.center not in ("foreground", "image"):
            raise ValueError(f"center must be 'foreground' or 'image', got {self.center!r}")
        if sorted(self.labels) != list(range(len(self.labels))):
            raise ValueError(f"labels must have the values 0..K-1, got {sorted(self.labels)}")


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A regex for a glob pattern in which each ``*`` is a capture group (within one path component)."""
    parts = [re.escape(p) for p in pattern.split("*")]
    regex = "([^/]*)".join(parts).replace(r"\?", "[^/]")
    return re.compile(f"^{regex}$")


def _match_keys(root: Path, pattern: str) -> dict[str, Path]:
    regex = _glob_regex(pattern)
    keys: dict[str, Path] = {}
    for path in sorted(root.glob(pattern)):
        match = regex.match(path.relative_to(root).as_posix())
        if match is None or not path.is_file():
            continue
        key = "_".join(match.groups()) or path.name
        if key in keys:
            raise DataError(f"{root}: pattern {pattern!r} gives the case key {key!r} to {keys[key]} and {path}")
        keys[key] = path
    return keys


def find_pairs(
    root: str | os.PathLike, image_glob: str | None = None, label_glob: str | None = None
) -> list[SourcePair]:
    """Pair image and label files under ``root`` by the text their patterns' ``*`` match (see module docstring).

    Raises:
        DataError: naming the folder when nothing matches, or naming a file that has no partner.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: source folder not found")
    if (image_glob is None) != (label_glob is None):
        raise ValueError("give both image_glob and label_glob, or neither")
    layouts = [(image_glob, label_glob)] if image_glob else list(_DEFAULT_LAYOUTS)
    for image_pattern, label_pattern in layouts:
        images, labels = _match_keys(root, image_pattern), _match_keys(root, label_pattern)
        if images and labels:
            break
    else:
        tried = ", ".join(f"{i!r} + {lb!r}" for i, lb in layouts)
        raise DataError(f"{root}: no image/label files match {tried}; pass --image_glob and --label_glob")
    for key, path in images.items():
        if key not in labels:
            raise DataError(f"{path}: no label file for case {key!r} (label pattern {label_pattern!r})")
    for key, path in labels.items():
        if key not in images:
            raise DataError(f"{path}: no image file for case {key!r} (image pattern {image_pattern!r})")
    return [SourcePair(_safe_id(key), images[key], labels[key]) for key in sorted(images)]


def _safe_id(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("._") or "case"


def read_json_argument(value: str | Mapping, name: str) -> Mapping:
    """A mapping given on the command line: as a mapping already, a JSON string, or the path of a JSON file."""
    import json

    if isinstance(value, Mapping):
        return value
    path = Path(value)
    try:
        return json.loads(path.read_text() if path.is_file() else value)
    except json.JSONDecodeError as err:
        raise ValueError(f"{name} is neither a JSON file nor a JSON object: {value!r} ({err})") from None


def parse_label_map(spec: str | Mapping | None) -> dict[int, int]:
    """A label map from a mapping, a JSON string or a JSON file path (``{"4": 0}`` drops source label 4)."""
    if spec is None:
        return {}
    spec = read_json_argument(spec, "label_map")
    if not isinstance(spec, Mapping):
        raise ValueError(f"label_map must map source values to dataset values, got {spec!r}")
    try:
        return {int(k): int(v) for k, v in spec.items()}
    except (TypeError, ValueError):
        raise ValueError(f"label_map keys and values must be integers, got {dict(spec)!r}") from None


def _remap(label: np.ndarray, label_map: Mapping[int, int]) -> np.ndarray:
    if not np.issubdtype(label.dtype, np.integer):
        label = np.rint(label)
    label = label.astype(np.int64)
    out = label.copy()
    for source_value, value in label_map.items():
        out[label == source_value] = value
    return out


def _center(image: Volume, label: np.ndarray, how: str) -> np.ndarray:
    grid = Grid(tuple(image.array.shape), image.affine)
    if how == "foreground" and label.any():
        idx = np.argwhere(label > 0)
        lo, hi = idx.min(0), idx.max(0)
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        world = corners @ grid.affine[:3, :3].T + grid.affine[:3, 3]
        return (world.min(0) + world.max(0)) / 2
    corners = grid_corners(grid)
    return (corners.min(0) + corners.max(0)) / 2


def import_case(pair: SourcePair, settings: ImportSettings) -> tuple[Volume, Volume, SourceGeometry]:
    """Load, check, remap and resample one pair.

    Returns:
        ``(image, label, source)``: image float32 and label uint8 ``(H, W, D)`` on the target RAS grid, and the
        recorded source geometry.
    """
    image = load_nifti(pair.image, dtype=np.float32)
    raw_label = load_nifti(pair.label)
    label = Volume(_remap(raw_label.array, settings.label_map), raw_label.affine)
    check_pair(pair.image, image, pair.label, label, dict(settings.labels))
    source = Grid(tuple(image.array.shape), image.affine)
    grid = target_grid(source, settings.spacing, settings.size, _center(image, label.array, settings.center))
    fill = PAD_VALUE[settings.modality]
    image_out = resample(image.array, source, grid, mode="bilinear", fill=fill)
    label_out = resample(label.array.astype(np.uint8), source, grid, mode="nearest", fill=0)
    geometry = SourceGeometry(str(pair.image), source.shape, source.affine)
    return Volume(image_out, grid.affine), Volume(label_out, grid.affine), geometry


def import_dataset(
    source_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    name: str,
    settings: ImportSettings,
    pairs: list[SourcePair] | None = None,
    split: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
) -> DatasetSpec:
    """Import every pair found under ``source_dir`` into the dataset folder ``out_dir``.

    Args:
        source_dir: the user's folder.
        out_dir: the new dataset folder; ``dataset.json`` is written last.
        name: dataset name.
        settings: see :class:`ImportSettings`.
        pairs: the pairs to import; default :func:`find_pairs` with the default layouts.
        split: fractions (or counts, when they are integers adding up to the number of cases) of training,
            validation and test cases; cases are shuffled with ``seed`` first.
        seed: shuffling seed.
        progress: optional ``callback(done, total, case_id)``.
    """
    pairs = find_pairs(source_dir) if pairs is None else pairs
    counts = _split_counts(len(pairs), split)
    order = np.random.default_rng(seed).permutation(len(pairs))
    out = Path(out_dir)
    jobs = [pairs[index] for index in order]
    geometry: dict[str, dict] = {}
    # every case again, as a fresh import: a folder's earlier cases may come from other source files or settings
    runner = CaseRunner(out, "images", progress=progress, redo=True)

    def write(batch: list[SourcePair]) -> None:
        for pair in batch:
            image, label, source = import_case(pair, settings)
            named = Case.named(pair.case_id)
            save_nifti(out / named.label, label.array, label.affine)
            save_nifti(out / named.image, image.array, image.affine)
            geometry[pair.case_id] = source.to_json()

    runner.run(jobs, write)
    cases = [Case.named(pair.case_id) for pair in jobs]
    n_train, n_val = counts[0], counts[1]
    spec = DatasetSpec(
        name=name,
        modality=settings.modality,
        labels=dict(settings.labels),
        training=cases[:n_train],
        validation=cases[n_train : n_train + n_val],
        test=cases[n_train + n_val :],
        extra={
            "medgen3d": {
                "generator": "import",
                "source": str(Path(source_dir).resolve()),
                "params": {
                    "spacing": list(settings.spacing),
                    "size": list(settings.size) if settings.size else None,
                    "label_map": {str(k): v for k, v in settings.label_map.items()},
                    "center": settings.center,
                },
                "source_geometry": geometry,
            }
        },
    )
    return write_dataset(out, spec)


def _split_counts(n: int, split: tuple[float, float, float]) -> tuple[int, int, int]:
    """Cases per split from fractions adding up to 1, or from counts adding up to ``n``."""
    if len(split) != 3 or min(split) < 0:
        raise ValueError(f"split must be three non-negative numbers (training, validation, test), got {split}")
    if all(float(s).is_integer() for s in split) and sum(split) == n:
        return int(split[0]), int(split[1]), int(split[2])
    if abs(sum(split) - 1.0) > 1e-6:
        raise ValueError(f"split must be fractions adding up to 1 or counts adding up to {n} cases, got {split}")
    val, test = (int(round(f * n)) for f in split[1:])
    return n - val - test, val, test


def infer_labels(pairs: list[SourcePair], label_map: Mapping[int, int]) -> dict[int, str]:
    """Label names for data imported without them: ``background``, ``label_1``, ... for the values found.

    Raises:
        DataError: when the values found (after ``label_map``) are not ``0..K-1``.
    """
    values: set[int] = set()
    for pair in pairs:
        values |= set(np.unique(_remap(load_nifti(pair.label).array, label_map)).tolist())
    values.add(0)
    if sorted(values) != list(range(len(values))):
        raise DataError(
            f"label values {sorted(values)} found under {pairs[0].label.parent} are not 0..K-1: "
            "pass --label_map to remap them (and --labels to name them)"
        )
    return {v: ("background" if v == 0 else f"label_{v}") for v in sorted(values)}
