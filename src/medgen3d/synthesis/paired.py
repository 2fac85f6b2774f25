"""The paired dataset an image stage writes: ``images/<case>`` beside ``labels/<case>``, splits kept."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from medgen3d.data.dataset import SPLITS, Case, DatasetSpec, write_dataset

__all__ = ["copy_label", "write_paired_dataset"]


def copy_label(source: DatasetSpec, case: Case, out_dir: str | os.PathLike) -> Path:
    """Copy a case's mask to ``out_dir/labels/<case>.nii.gz`` (nothing to do when that is the same file)."""
    target = Path(out_dir) / "labels" / f"{case.case_id}.nii.gz"
    if source.path(case.label).resolve() != target.resolve():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source.path(case.label), target)
    return target


def write_paired_dataset(
    out_dir: str | os.PathLike, source: DatasetSpec, name: str, provenance: dict[str, Any]
) -> DatasetSpec:
    """``dataset.json`` pairing every case of ``source`` (same splits) with ``images/`` and ``labels/`` files in
    ``out_dir``; ``provenance`` is added to the source's ``medgen3d`` block."""
    cases = {
        split: [Case(f"images/{c.case_id}.nii.gz", f"labels/{c.case_id}.nii.gz") for c in source.split(split)]
        for split in SPLITS
    }
    spec = DatasetSpec(
        name=name,
        modality=source.modality,
        labels=dict(source.labels),
        training=cases["training"],
        validation=cases["validation"],
        test=cases["test"],
        extra={"medgen3d": {**source.extra.get("medgen3d", {}), **provenance}},
    )
    return write_dataset(out_dir, spec)
