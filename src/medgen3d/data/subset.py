"""A smaller dataset made of the first cases of each split of another one, for low-data experiments.

Training a model on 5 of 40 subjects and judging it on the validation and test splits of the same dataset
asks how far synthetic pairs stretch a small training set; keeping the held-out splits whole (the default) means
no subject it is tested on is one it was trained on, and the numbers stay comparable with the full-data run::

    subset_dataset("data/brain-mni", "data/brain-mni-5", training=5)

The subset is a plain dataset folder: byte-equal copies of the chosen image and label files under the same
relative paths, and a ``dataset.json`` with the source's name, modality and labels whose ``medgen3d`` block says
which dataset it came from and how many cases of each split it kept.
"""

from __future__ import annotations

import numbers
import os
import shutil
from pathlib import Path
from typing import Any

from medgen3d.data.dataset import DATASET_JSON, SPLITS, Case, DatasetSpec, read_dataset, write_dataset
from medgen3d.data.io import DataError, atomic_path, read_json

__all__ = ["subset_dataset"]

# MSD case counts describe the source's splits, not the subset's: dropped rather than left wrong.
_COUNT_KEYS = ("numTraining", "numValidation", "numTest")


def _subset_sizes(spec: DatasetSpec, requested: dict[str, int | None]) -> dict[str, int]:
    """Cases to keep per split: ``None`` keeps the whole split; more than the split holds is refused."""
    sizes: dict[str, int] = {}
    for split, count in requested.items():
        available = len(spec.split(split))
        if count is None:
            sizes[split] = available
            continue
        if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 0:
            raise ValueError(f"{split} must be a case count of 0 or more (or None for the whole split), got {count!r}")
        if count > available:
            raise DataError(
                f"{spec.path(DATASET_JSON)}: asked for {count} {split} cases but the {split} split has only "
                f"{available}"
            )
        sizes[split] = int(count)
    if not any(sizes.values()):
        raise ValueError(f"a subset needs at least one case, got sizes {sizes}")
    return sizes


def _provenance(spec: DatasetSpec, kept: list[Case], sizes: dict[str, int]) -> dict[str, Any]:
    """The subset's ``medgen3d`` block: the source's, with per-case records cut to the kept cases, plus the
    subset's own origin (which later reruns compare against)."""
    ids = {case.case_id for case in spec.cases()}
    kept_ids = {case.case_id for case in kept}
    inherited: dict[str, Any] = {}
    for key, value in spec.extra.get("medgen3d", {}).items():
        # per-case records (case seeds, source geometry for `data restore`) stay valid for the cases kept
        if isinstance(value, dict) and value and set(value) <= ids:
            value = {case_id: record for case_id, record in value.items() if case_id in kept_ids}
        inherited[key] = value
    return {**inherited, "subset_of": str(spec.root), "sizes": sizes}


def _check_destination(out: Path, provenance: dict[str, Any]) -> None:
    """Refuse a folder that already holds a dataset other than this very subset."""
    where = out / DATASET_JSON
    if not where.exists():
        return
    content = read_json(where)
    recorded = content.get("medgen3d", {}) if isinstance(content, dict) else {}
    if not isinstance(recorded, dict) or "subset_of" not in recorded:
        name = content.get("name") if isinstance(content, dict) else None
        raise DataError(f"{where}: this folder holds another dataset ({name!r}, not a subset); choose another folder")
    previous = {key: recorded.get(key) for key in ("subset_of", "sizes")}
    if previous != {key: provenance[key] for key in ("subset_of", "sizes")}:
        raise DataError(
            f"{where}: this folder holds another dataset, the subset of {previous['subset_of']} with sizes "
            f"{previous['sizes']}; choose another folder"
        )


def _copy(source: Path, destination: Path) -> None:
    if not source.is_file():
        raise DataError(f"{source}: file not found")
    # a file of the same size is a copy from an earlier run (copies land atomically, never half-written)
    if destination.exists() and destination.stat().st_size == source.stat().st_size:
        return
    with atomic_path(destination) as tmp:
        shutil.copyfile(source, tmp)


def subset_dataset(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    training: int | None,
    validation: int | None = None,
    test: int | None = None,
) -> DatasetSpec:
    """Copy the first cases of each split of ``source`` into a new dataset in ``out_dir``.

    For low-data experiments: e.g. ``training=5`` trains on 5 of 40 subjects while validation and test stay the
    untouched held-out splits of the same dataset, so no subject a model is tested on is one it was trained on.
    "First" is the order of ``dataset.json``, so a smaller subset is a prefix of a larger one.

    Resumable: files already copied are kept and ``dataset.json`` is written last, so rerunning the same command
    finishes an interrupted copy (or changes nothing). A folder whose ``dataset.json`` describes another dataset
    or another subset is refused.

    Args:
        source: the dataset folder to take cases from.
        out_dir: the new dataset folder (created if needed); must not be ``source``.
        training, validation, test: cases to keep from the start of each split; ``None`` keeps the whole split,
            ``0`` none of it.

    Returns:
        The written subset, bound to ``out_dir``.

    Raises:
        DataError: a split has fewer cases than asked for (naming the source ``dataset.json``), or ``out_dir``
            already holds another dataset.
        ValueError: a negative count, no case at all, or ``out_dir`` is ``source``.
    """
    spec = read_dataset(source)
    out = Path(out_dir)
    if out.resolve() == Path(source).resolve():
        # the subset's dataset.json would replace the source's
        raise ValueError(f"out_dir must differ from the source dataset folder {Path(source).resolve()}")
    sizes = _subset_sizes(spec, {"training": training, "validation": validation, "test": test})
    chosen = {split: spec.split(split)[: sizes[split]] for split in SPLITS}
    kept = [case for split in SPLITS for case in chosen[split]]
    provenance = _provenance(spec, kept, sizes)
    _check_destination(out, provenance)
    for case in kept:
        for relative in (case.image, case.label):
            if relative is None:  # label-only dataset
                continue
            destination = out / relative
            if not destination.resolve().is_relative_to(out.resolve()):
                # a '..' path would copy outside the subset, where its dataset.json could not point at it
                raise DataError(f"{spec.path(DATASET_JSON)}: case path {relative!r} leaves the dataset folder")
            _copy(spec.path(relative), destination)
    extra = {key: value for key, value in spec.extra.items() if key not in _COUNT_KEYS}
    subset = DatasetSpec(
        name=spec.name,
        modality=spec.modality,
        labels=dict(spec.labels),
        training=chosen["training"],
        validation=chosen["validation"],
        test=chosen["test"],
        extra={**extra, "medgen3d": provenance},
    )
    return write_dataset(out, subset)
