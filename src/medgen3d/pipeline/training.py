"""Training every stage of the pipeline on one real dataset, in order, each resumable.

Each stage trains through its own bundle's ``train.json`` (its checkpoint handler resumes from the last
checkpoint, and a finished stage returns at once), so rerunning an interrupted ``train`` continues where it stopped.
The refiner trains one network per view; the segmenter is the real-data segmentation network that the quality report
takes its features and alignment predictions from.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from medgen3d.data.dataset import read_dataset
from medgen3d.pipeline.stages import PipelineStages

__all__ = ["STAGE_NAMES", "train_stages"]

STAGE_NAMES = ("mask", "image", "refiner", "segmenter")


def train_stages(
    stages: PipelineStages,
    dataset_dir: str | os.PathLike,
    views: Sequence[str] = ("axial", "coronal", "sagittal"),
    seed: int = 0,
    only: Sequence[str] = STAGE_NAMES,
) -> dict[str, float]:
    """Train the stages named in ``only`` (of :data:`STAGE_NAMES`), in pipeline order.

    Args:
        stages: the pipeline.
        dataset_dir: the real dataset; every stage is given its labels.
        views: the refiner's views, one network each.
        seed: the training seed of every stage.
        only: the stages to train.

    Returns:
        Seconds per trained stage (refiner views separately: ``"refiner/axial"``, ...).
    """
    unknown = sorted(set(only) - set(STAGE_NAMES))
    if unknown:
        raise ValueError(f"unknown stages {unknown}; choose from {list(STAGE_NAMES)}")
    real = read_dataset(dataset_dir)  # a broken dataset fails here, before any training
    labels = {str(k): v for k, v in real.labels.items()}
    shared = {"dataset_dir": str(real.root), "labels": labels, "modality": real.modality, "seed": seed}
    runs = [
        ("mask", stages.mask, {}),
        ("image", stages.image, {}),
        *[("refiner", stages.refiner, {"view": view}) for view in views],
        ("segmenter", stages.segmenter, {}),
    ]
    seconds = {}
    for name, stage, extra in runs:
        if name not in only:
            continue
        start = time.monotonic()
        stage.run(["train.json"], **shared, **extra)
        seconds[name + (f"/{extra['view']}" if "view" in extra else "")] = time.monotonic() - start
    return seconds
