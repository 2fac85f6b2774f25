"""Export to an nnU-Net (v2) raw dataset, the format most segmentation users train with.

``<out_root>/Dataset<ID>_<Name>/`` gets ``imagesTr/<case>_0000.nii.gz`` and ``labelsTr/<case>.nii.gz`` for the
training and validation cases (nnU-Net draws its own folds), ``imagesTs/`` (and, as a convenience nnU-Net ignores,
``labelsTs/``) for the test cases, and a ``dataset.json`` with ``channel_names``, ``labels`` (name -> value),
``numTraining`` and ``file_ending``. Several datasets with the same label set (real and synthetic, say) export into
one; their case ids are then prefixed with the dataset's folder name so they cannot collide.

The folder is assembled under a temporary name and renamed when complete, so an interrupted export leaves no
half-written dataset behind; an existing export is replaced only when asked.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from medgen3d.data.datalists import check_labels_match
from medgen3d.data.dataset import DatasetSpec, read_dataset
from medgen3d.data.io import DataError, load_nifti, save_nifti, write_json

__all__ = ["nnunet_folder_name", "export_nnunet"]


def nnunet_folder_name(dataset_id: int, name: str) -> str:
    """``Dataset<ID>_<Name>`` with a three-digit id in 1..999 and a name of letters, digits, ``-`` and ``_``."""
    if not 1 <= int(dataset_id) <= 999:
        raise ValueError(f"an nnU-Net dataset id is in 1..999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ValueError(f"an nnU-Net dataset name may hold only letters, digits, '-' and '_', got {name!r}")
    return f"Dataset{int(dataset_id):03d}_{name}"


def _copy_nifti(source: Path, target: Path) -> None:
    if source.name.endswith(".nii.gz"):
        shutil.copyfile(source, target)
    else:  # nnU-Net needs one file ending for the whole dataset
        volume = load_nifti(source)
        save_nifti(target, volume.array, volume.affine)


def export_nnunet(
    datasets: Sequence[str | os.PathLike],
    out_root: str | os.PathLike,
    dataset_id: int,
    name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Export one or more paired datasets as one nnU-Net raw dataset.

    Args:
        datasets: dataset folders (``dataset.json`` + NIfTI); all must declare the same labels, and every case must
            have an image.
        out_root: nnU-Net's ``nnUNet_raw`` folder.
        dataset_id: the nnU-Net dataset id (1..999).
        name: the dataset name (default: the first dataset's ``name``, with other characters replaced by ``-``).
        overwrite: replace an existing ``Dataset<ID>_<Name>`` folder.

    Returns:
        The exported folder.
    """
    if not datasets:
        raise ValueError("give at least one dataset to export")
    specs = [read_dataset(d) for d in datasets]
    first = specs[0]
    for spec in specs[1:]:
        check_labels_match(spec, {str(k): v for k, v in first.labels.items()})
    target = Path(out_root) / nnunet_folder_name(dataset_id, name or re.sub(r"[^A-Za-z0-9_-]", "-", first.name))
    if target.exists() and not overwrite:
        raise DataError(f"{target}: already exists; choose another dataset id or pass overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}.", dir=target.parent))
    try:
        num_training = _write_cases(specs, staging, prefix=len(specs) > 1)
        write_json(
            staging / "dataset.json",
            {
                "name": target.name.split("_", 1)[1],
                "description": "exported by medgen3d from " + ", ".join(str(s.root) for s in specs),
                "channel_names": {"0": "CT" if first.modality == "CT" else first.modality},
                "labels": {str(v): int(k) for k, v in sorted(first.labels.items())},
                "numTraining": num_training,
                "file_ending": ".nii.gz",
            },
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def _write_cases(specs: Sequence[DatasetSpec], folder: Path, prefix: bool) -> int:
    """Copy every case into ``folder``; returns the number of training cases."""
    seen: dict[str, Path] = {}
    num_training = 0
    for spec in specs:
        for split in ("training", "validation", "test"):
            images, labels = ("imagesTs", "labelsTs") if split == "test" else ("imagesTr", "labelsTr")
            for case in spec.split(split):
                if case.image is None:
                    raise DataError(f"{spec.path(case.label)}: case has no image; nnU-Net needs image/label pairs")
                case_id = f"{spec.root.name}_{case.case_id}" if prefix else case.case_id
                if case_id in seen:
                    raise DataError(f"{spec.path(case.label)}: case id {case_id!r} also comes from {seen[case_id]}")
                seen[case_id] = spec.path(case.label)
                for sub in (images, labels):
                    (folder / sub).mkdir(exist_ok=True)
                _copy_nifti(spec.path(case.image), folder / images / f"{case_id}_0000.nii.gz")
                _copy_nifti(spec.path(case.label), folder / labels / f"{case_id}.nii.gz")
                num_training += split != "test"
    return num_training
