"""The dataset folder format that every MedGen3D stage reads and writes.

A dataset is a folder holding NIfTI files and a ``dataset.json`` in the Medical Segmentation Decathlon style::

    {
        "name": "brain-mni",
        "modality": "MR",                       # "CT" or "MR"
        "labels": {"0": "background", "1": "cortex", ...},
        "training":   [{"image": "images/sub-000.nii.gz", "label": "labels/sub-000.nii.gz"}, ...],
                                                # {"label": ...} alone in a label-only dataset
        "validation": [...],
        "test":       [...],
        "medgen3d":   {...}                     # optional provenance: generator, seeds, source geometry
    }

Label values are the integers ``0..K-1`` with ``0`` the background, so a stage can one-hot a mask with the
class count read from here; importers remap other label sets onto this form.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medgen3d.data.io import DataError, Volume, load_nifti, read_json, write_json

__all__ = [
    "DATASET_JSON",
    "MODALITIES",
    "SPLITS",
    "Case",
    "DatasetSpec",
    "check_pair",
    "check_labels",
    "read_dataset",
    "write_dataset",
]

DATASET_JSON = "dataset.json"
MODALITIES = ("CT", "MR")
SPLITS = ("training", "validation", "test")
_REQUIRED_KEYS = ("name", "modality", "labels")
# Keys that MSD / nnU-Net files carry and that we keep without interpreting them.
_PASSTHROUGH_KEYS = (
    "description",
    "reference",
    "licence",
    "license",
    "release",
    "tensorImageSize",
    "numTraining",
    "numValidation",
    "numTest",
    "medgen3d",
)


@dataclass(frozen=True)
class Case:
    """One image/label pair, as paths relative to the dataset folder; ``image`` is ``None`` in a label-only
    dataset (generated masks waiting for their images)."""

    image: str | None
    label: str

    @classmethod
    def named(cls, case_id: str, image: bool = True) -> Case:
        """The case ``case_id`` as every dataset the project writes names it: ``images/<case_id>.nii.gz`` (or no
        image) and ``labels/<case_id>.nii.gz``."""
        return cls(f"images/{case_id}.nii.gz" if image else None, f"labels/{case_id}.nii.gz")

    @property
    def case_id(self) -> str:
        """The label file's name without its NIfTI extension (``labels/sub-003.nii.gz`` -> ``sub-003``)."""
        name = Path(self.label).name
        for ext in (".nii.gz", ".nii"):
            if name.endswith(ext):
                return name[: -len(ext)]
        return name


@dataclass
class DatasetSpec:
    """The content of a ``dataset.json``; paths in the splits are relative to ``root``.

    Attributes:
        name: dataset name.
        modality: ``"CT"`` (intensities in HU) or ``"MR"`` (arbitrary units).
        labels: label value -> structure name, values ``0..K-1`` with ``0`` the background.
        training, validation, test: the cases of each split.
        extra: other top-level keys (MSD descriptive keys and the ``medgen3d`` provenance block), kept as read.
        root: the dataset folder, set by :func:`read_dataset` (``None`` for a spec not yet written).
    """

    name: str
    modality: str
    labels: dict[int, str]
    training: list[Case] = field(default_factory=list)
    validation: list[Case] = field(default_factory=list)
    test: list[Case] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    root: Path | None = None

    @property
    def num_classes(self) -> int:
        """Number of label values including the background: the channel count of a one-hot mask."""
        return len(self.labels)

    def split(self, name: str) -> list[Case]:
        """The cases of split ``name`` (one of :data:`SPLITS`)."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return getattr(self, name)

    def cases(self) -> list[Case]:
        """Every case of every split, training first."""
        return [*self.training, *self.validation, *self.test]

    def path(self, relative: str) -> Path:
        """Absolute path of a file named relative to the dataset folder."""
        if self.root is None:
            raise ValueError("this DatasetSpec has no root folder yet; write or read it first")
        return self.root / relative

    def load_case(self, case: Case) -> tuple[Volume | None, Volume]:
        """Load one pair, checking it against this dataset (same shape, same affine, declared labels only).

        Returns:
            ``(image, label)``; the image is ``None`` for a label-only case, the label array is ``int64``.
        """
        label = load_nifti(self.path(case.label))
        if case.image is None:
            check_labels(self.path(case.label), label, self.labels)
            return None, Volume(label.array.astype(np.int64), label.affine)
        image = load_nifti(self.path(case.image), dtype=np.float32)
        check_pair(self.path(case.image), image, self.path(case.label), label, self.labels)
        return image, Volume(label.array.astype(np.int64), label.affine)

    def to_json(self) -> dict[str, Any]:
        """The ``dataset.json`` content."""
        content: dict[str, Any] = {
            "name": self.name,
            "modality": self.modality,
            "labels": {str(k): v for k, v in sorted(self.labels.items())},
        }
        for split in SPLITS:
            content[split] = [
                {"label": c.label} if c.image is None else {"image": c.image, "label": c.label}
                for c in self.split(split)
            ]
        content.update(self.extra)
        return content


def check_pair(
    image_path: Path, image: Volume, label_path: Path, label: Volume, labels: dict[int, str], atol: float = 1e-3
) -> None:
    """Raise :class:`DataError` unless image and label share shape and affine and the label uses declared values.

    ``atol`` is the tolerance on affine entries, in millimetres: NIfTI stores them as float32.
    """
    if image.array.shape != label.array.shape:
        raise DataError(
            f"{label_path}: shape {label.array.shape} differs from its image {image_path} {image.array.shape}"
        )
    if not np.allclose(image.affine, label.affine, atol=atol):
        raise DataError(
            # one line, so that it stays the one line a run ends with
            f"{label_path}: affine differs from its image {image_path}: {np.round(label.affine, 4).tolist()} vs "
            f"{np.round(image.affine, 4).tolist()}"
        )
    check_labels(label_path, label, labels)


def check_labels(label_path: Path, label: Volume, labels: dict[int, str]) -> None:
    """Raise :class:`DataError` unless the label volume holds integers that are declared label values."""
    if not np.issubdtype(label.array.dtype, np.integer):
        as_int = np.rint(label.array)
        if not np.array_equal(as_int, label.array):
            raise DataError(
                f"{label_path}: label values must be integers, found dtype {label.array.dtype} with fractions"
            )
    values = set(np.unique(label.array).astype(np.int64).tolist())
    unknown = sorted(values - set(labels))
    if unknown:
        raise DataError(f"{label_path}: label values {unknown} are not in the declared labels {sorted(labels)}")


def _parse_labels(raw: Any, where: Path) -> dict[int, str]:
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{where}: 'labels' must be a non-empty mapping {{value: name}}, got {raw!r}")
    labels: dict[int, str] = {}
    for key, name in raw.items():
        try:
            value = int(key)
        except (TypeError, ValueError):
            raise DataError(f"{where}: label key {key!r} is not an integer") from None
        labels[value] = str(name)
    expected = list(range(len(labels)))
    if sorted(labels) != expected:
        raise DataError(
            f"{where}: label values must be 0..{len(labels) - 1} with 0 the background, got {sorted(labels)} "
            "(remap them with `medgen3d data import --label_map ...`)"
        )
    return labels


def _parse_cases(raw: Any, split: str, where: Path) -> list[Case]:
    if not isinstance(raw, list):
        raise DataError(f"{where}: '{split}' must be a list of {{'image', 'label'}} entries, got {type(raw).__name__}")
    cases = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or set(entry) not in ({"image", "label"}, {"label"}):
            got = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise DataError(
                f"{where}: '{split}'[{i}] must have the keys 'image' and 'label' (or 'label' alone), got {got}"
            )
        if any(os.path.isabs(path) for path in entry.values()):
            raise DataError(f"{where}: '{split}'[{i}] paths must be relative to the dataset folder")
        image = entry.get("image")
        cases.append(Case(image=None if image is None else str(image), label=str(entry["label"])))
    return cases


def parse_dataset(content: Any, where: Path, root: Path | None = None) -> DatasetSpec:
    """Build a :class:`DatasetSpec` from parsed ``dataset.json`` content; ``where`` names the file in errors."""
    if not isinstance(content, dict):
        raise DataError(f"{where}: expected a JSON object at the top level")
    missing = [k for k in _REQUIRED_KEYS if k not in content]
    if missing:
        raise DataError(f"{where}: missing required key(s) {missing}")
    known = set(_REQUIRED_KEYS) | set(SPLITS) | set(_PASSTHROUGH_KEYS)
    for key in content:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DataError(f"{where}: unknown key {key!r}{hint}; allowed keys are {sorted(known)}")
    if not any(content.get(s) for s in SPLITS):
        raise DataError(f"{where}: no cases: at least one of {list(SPLITS)} must be a non-empty list")
    modality = content["modality"]
    if modality not in MODALITIES:
        raise DataError(f"{where}: 'modality' must be one of {list(MODALITIES)}, got {modality!r}")
    return DatasetSpec(
        name=str(content["name"]),
        modality=modality,
        labels=_parse_labels(content["labels"], where),
        training=_parse_cases(content.get("training", []), "training", where),
        validation=_parse_cases(content.get("validation", []), "validation", where),
        test=_parse_cases(content.get("test", []), "test", where),
        extra={k: content[k] for k in _PASSTHROUGH_KEYS if k in content},
        root=root,
    )


def read_dataset(root: str | os.PathLike) -> DatasetSpec:
    """Read ``root/dataset.json``; its structure is checked, the NIfTI files are not (see :func:`validate_dataset`)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    where = root / DATASET_JSON
    return parse_dataset(read_json(where), where, root=root.resolve())


def write_dataset(root: str | os.PathLike, spec: DatasetSpec) -> DatasetSpec:
    """Write ``spec`` as ``root/dataset.json`` (atomically) and return it bound to ``root``.

    The content is parsed back before writing, so a spec that :func:`read_dataset` would reject is never written.
    """
    root = Path(root)
    where = root / DATASET_JSON
    content = spec.to_json()
    parse_dataset(content, where)
    write_json(where, content)
    spec.root = root.resolve()
    return spec
