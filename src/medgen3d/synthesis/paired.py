"""The paired dataset an image stage writes: ``images/<case>`` beside ``labels/<case>``, splits kept."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from medgen3d.data.dataset import SPLITS, Case, DatasetSpec

__all__ = ["copy_label", "paired_dataset"]


def copy_label(source: DatasetSpec, case: Case, out_dir: str | os.PathLike) -> Path:
    """Copy a case's mask to ``out_dir/labels/<case>.nii.gz`` (nothing to do when that is the same file)."""
    target = Path(out_dir) / Case.named(case.case_id).label
    if source.path(case.label).resolve() != target.resolve():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source.path(case.label), target)
    return target


def paired_dataset(source: DatasetSpec, name: str, provenance: dict[str, Any]) -> DatasetSpec:
    """The ``dataset.json`` content pairing every case of ``source`` (same splits) with its ``images/`` and
    ``labels/`` files; ``provenance`` is added to the source's ``medgen3d`` block."""
    cases = {split: [Case.named(c.case_id) for c in source.split(split)] for split in SPLITS}
    return DatasetSpec(
        name=name,
        modality=source.modality,
        labels=dict(source.labels),
        training=cases["training"],
        validation=cases["validation"],
        test=cases["test"],
        extra={"medgen3d": {**source.extra.get("medgen3d", {}), **provenance}},
    )
