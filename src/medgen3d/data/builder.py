"""Writing a generated dataset: one seed per case, resumable, with its provenance in ``dataset.json``.

The embedded datasets (``brain-mni``, ``thorax-phantom``) differ only in how one case is made from its seed;
everything else (seeds, splits, file names, skipping finished cases, refusing to mix two different datasets in
one folder) lives here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from medgen3d.data.dataset import DATASET_JSON, SPLITS, Case, DatasetSpec
from medgen3d.data.io import DataError, read_json, save_nifti, write_json
from medgen3d.synthesis.cases import CaseRunner

__all__ = ["GeneratedCase", "SplitSizes", "case_seeds", "build_dataset"]

_BUILD_MARKER = ".medgen3d-build.json"


class GeneratedCase(NamedTuple):
    """One generated pair: ``image`` and ``label`` are ``(H, W, D)`` arrays sharing the ``(4, 4)`` ``affine``."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray


class _Job(NamedTuple):
    """One case to make: its id and its own seed."""

    case_id: str
    seed: int


class SplitSizes(NamedTuple):
    """Number of cases in the training, validation and test splits."""

    training: int
    validation: int
    test: int


def case_seeds(seed: int, count: int) -> list[int]:
    """``count`` independent per-case seeds derived from one dataset seed (NumPy ``SeedSequence.spawn``).

    Case ``i`` gets the same seed whatever ``count`` is, so a larger dataset extends a smaller one.
    """
    children = np.random.SeedSequence(seed).spawn(count)
    return [int(child.generate_state(1, dtype=np.uint32)[0]) for child in children]


def build_dataset(
    out_dir: str | os.PathLike,
    name: str,
    modality: str,
    labels: dict[int, str],
    make_case: Callable[[int], GeneratedCase],
    sizes: SplitSizes,
    seed: int,
    params: dict[str, Any],
    progress: Callable[[int, int, str], None] | None = None,
    overwrite: bool = False,
) -> DatasetSpec:
    """Generate every case of a dataset into ``out_dir`` and write its ``dataset.json`` last.

    Case ``i`` (training first, then validation, then test) is named ``case-{i:03d}`` and made by
    ``make_case(seed_i)``. Files already present are kept and not regenerated, so an interrupted build resumes;
    ``dataset.json`` records ``params`` and the seeds, and a folder built with other parameters is refused
    unless ``overwrite`` is set, which regenerates every case.

    Args:
        out_dir: the dataset folder (created if needed).
        name, modality, labels: the ``dataset.json`` header (see :mod:`medgen3d.data.dataset`).
        make_case: builds one case from its seed.
        sizes: cases per split.
        seed: the dataset seed every case seed derives from.
        params: generator parameters that determine the content (preset, spacing, ...), recorded for provenance.
        progress: optional ``callback(done, total, case_id)``.
        overwrite: regenerate every case, also into a folder built with other parameters.

    Returns:
        The written dataset, bound to ``out_dir``.
    """
    out = Path(out_dir)
    # through JSON once, so that tuples compare equal to the lists read back from disk
    provenance = json.loads(json.dumps({"generator": name, "seed": int(seed), "params": params}))
    # dataset.json is written last; the marker records the settings of a build still under way
    marker = out / _BUILD_MARKER
    recorded = out / DATASET_JSON if (out / DATASET_JSON).exists() else marker
    if recorded.exists():
        content = read_json(recorded)
        previous = content.get("medgen3d", {}) if recorded.name == DATASET_JSON else content
        previous = {k: previous.get(k) for k in provenance}
        same = previous == provenance
        if not same and not overwrite:
            raise DataError(
                f"{recorded}: this folder holds a dataset built with other settings ({previous}); "
                "choose another output folder or pass --overwrite"
            )
    write_json(marker, provenance)
    seeds = case_seeds(seed, sum(sizes))
    split_of = [split for split, n in zip(SPLITS, sizes) for _ in range(n)]
    jobs = [_Job(f"case-{i:03d}", case_seed) for i, case_seed in enumerate(seeds)]
    runner = CaseRunner(out, "images", progress=progress, redo=overwrite)

    def write(batch: list[_Job]) -> None:
        for job in batch:
            generated = make_case(job.seed)
            named = Case.named(job.case_id)
            # label first: a case counts as done only once its image exists, and the image is written last
            save_nifti(out / named.label, generated.label, generated.affine)
            save_nifti(out / named.image, generated.image, generated.affine)

    def dataset() -> DatasetSpec:
        cases = {split: [Case.named(job.case_id) for job, s in zip(jobs, split_of) if s == split] for split in SPLITS}
        return DatasetSpec(
            name=name,
            modality=modality,
            labels=dict(labels),
            training=cases["training"],
            validation=cases["validation"],
            test=cases["test"],
            extra={"medgen3d": {**provenance, "case_seeds": {job.case_id: job.seed for job in jobs}}},
        )

    runner.run(jobs, write)
    spec = runner.finish([job.case_id for job in jobs], dataset)
    marker.unlink()
    return spec
