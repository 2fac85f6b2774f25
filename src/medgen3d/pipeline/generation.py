"""A synthetic paired dataset from trained stages: masks (mask_mcdpm), images (image_vid2vid), refinement
(sdm_refiner), into one folder.

Layout of the output folder::

    dataset.json, images/, labels/     the refined pairs: the synthetic dataset to train with
    unrefined/                         the same masks with the image generator's images before refinement
                                       (its own dataset.json), so the refiner's effect can be measured
    previews/, previews/unrefined/     PNG montages of the first cases
    .medgen3d-generate.json            the run's settings, including a fingerprint of every checkpoint

Every stage skips the cases already on disk, so rerunning an interrupted generation finishes it without redoing
or losing cases. Under ``torchrun`` every stage shards its cases over the ranks (rank ``r`` of ``W`` takes cases
``r, r + W, …``, see :mod:`medgen3d.synthesis.cases`); rank 0 writes the previews. A folder that holds another run
(other data, seed, case count or checkpoints), or anything else, is refused unless ``overwrite`` is set, which
deletes only what a generation writes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch.distributed

from medgen3d.data.dataset import DATASET_JSON, DatasetSpec, read_dataset
from medgen3d.data.io import DataError, SettingError, read_json, write_json
from medgen3d.pipeline.stages import PipelineStages, StageBundle, require_files
from medgen3d.synthesis.cases import Shard, wait_for_ranks
from medgen3d.synthesis.components import run_record_name

__all__ = ["GenerationResult", "generate_dataset", "stage_checkpoints", "RUN_MARKER"]

RUN_MARKER = ".medgen3d-generate.json"
# what a generation writes into its folder: the only things `overwrite` deletes
# (the refinement writes straight into the folder, with the record of its run; the other stages into unrefined/)
_OUTPUTS = ("images", "labels", "unrefined", "previews", DATASET_JSON, RUN_MARKER, run_record_name("sdm_refiner"))


class GenerationResult(NamedTuple):
    """The refined dataset, the unrefined one, and seconds spent per stage in this call."""

    refined: DatasetSpec
    unrefined: DatasetSpec
    seconds: dict[str, float]


def stage_checkpoints(stages: PipelineStages, views: Sequence[str]) -> dict[str, Path]:
    """Every checkpoint generation loads (what -> path)."""
    paths = {
        "mask_mcdpm checkpoint": Path(stages.mask.ckpt_dir) / "model.pt",
        "image_vid2vid checkpoint": Path(stages.image.ckpt_dir) / "model.pt",
    }
    # the refiner's views are assembled into one model.pt at the end of each view's training
    paths["sdm_refiner checkpoint"] = Path(stages.refiner.ckpt_dir) / "model.pt"
    return paths


def _fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _claim(out: Path, settings: dict, overwrite: bool) -> None:
    """Make ``out`` this run's folder: new, or holding this very run (resume), or cleared when ``overwrite``."""
    marker = out / RUN_MARKER
    if overwrite:
        for name in _OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    elif marker.is_file():
        recorded = read_json(marker)
        differs = sorted(k for k in settings if recorded.get(k) != settings[k])
        if differs:
            raise DataError(
                f"{out}: holds a generation run with other settings ({', '.join(differs)} differ); choose another "
                "output folder, or set overwrite to replace it"
            )
    elif out.is_dir() and any(out.iterdir()):
        raise DataError(f"{out}: the folder is not empty and holds no generation run; choose an empty folder")
    write_json(marker, settings)


def generate_dataset(
    stages: PipelineStages,
    dataset_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    num_cases: int,
    seed: int = 0,
    views: Sequence[str] = ("axial", "coronal", "sagittal"),
    batch_size: int = 4,
    preview_cases: int = 4,
    overwrite: bool = False,
) -> GenerationResult:
    """Generate ``num_cases`` paired cases into ``out_dir`` through the three stages.

    Args:
        stages: the pipeline; its mask, image and refiner checkpoints must exist.
        dataset_dir: the real dataset the stages were trained on (labels, geometry, intensity scale).
        out_dir: the synthetic dataset folder (layout in the module docstring).
        num_cases: cases to generate.
        seed: the run seed; the same seed and checkpoints give the same dataset.
        views: the refiner's views.
        batch_size: cases generated together by the mask and image stages.
        preview_cases: cases with a PNG montage (refined and unrefined).
        overwrite: replace a previous run in ``out_dir``.
    """
    from medgen3d.preview import preview_dataset

    if num_cases < 1:
        raise ValueError(f"num_cases must be at least 1, got {num_cases}")
    real = read_dataset(dataset_dir)
    checkpoints = stage_checkpoints(stages, views)
    require_files(checkpoints)  # all of them now, not after an hour of mask sampling
    out = Path(out_dir)
    settings = {
        "dataset": str(real.root.resolve()),
        "num_cases": int(num_cases),
        "seed": int(seed),
        "views": list(views),
        "checkpoints": {what: _fingerprint(path) for what, path in checkpoints.items()},
    }
    shard = Shard.from_environment()
    shard.connect()
    if shard.world_size > 1 and not torch.distributed.is_initialized():
        raise SettingError(
            f"WORLD_SIZE is {shard.world_size} but no process group could be joined: each stage reads the dataset "
            "every rank finished in the stage before, so start generation with torchrun (--nproc_per_node, --nnodes)"
        )
    if shard.rank == 0:
        _claim(out, settings, overwrite)  # first: it may clear the folder that the other ranks then check
    wait_for_ranks()
    if shard.rank != 0:
        _claim(out, settings, overwrite=False)
    unrefined = out / "unrefined"
    shared = {
        "dataset_dir": str(real.root),
        "labels": {str(k): v for k, v in real.labels.items()},
        "seed": seed,
        "rank": shard.rank,
        "world_size": shard.world_size,
    }
    seconds = {}

    def timed(name: str, stage: StageBundle, **overrides) -> None:
        start = time.monotonic()
        stage.run(["inference.json"], **shared, **overrides)
        seconds[name] = time.monotonic() - start

    ranks = f" (rank {shard.rank} of {shard.world_size})" if shard.world_size > 1 else ""
    print(f"[medgen3d] generating {num_cases} paired cases into {out}{ranks}", file=sys.stderr, flush=True)
    # each stage waits for every rank before writing its dataset.json, which the next stage reads
    timed("masks", stages.mask, synthetic_dir=str(unrefined), num_cases=num_cases, batch_size=batch_size)
    timed("images", stages.image, masks_dir=str(unrefined), synthetic_dir=str(unrefined), batch_size=batch_size)
    timed("refinement", stages.refiner, pairs_dir=str(unrefined), refined_dir=str(out), views=list(views))
    if shard.rank == 0:
        start = time.monotonic()
        preview_dataset(out, out / "previews", preview_cases)
        preview_dataset(unrefined, out / "previews" / "unrefined", preview_cases)
        seconds["previews"] = time.monotonic() - start
    return GenerationResult(read_dataset(out), read_dataset(unrefined), seconds)
