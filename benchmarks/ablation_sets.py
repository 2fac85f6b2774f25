"""The synthetic sets of the low-data ablation: each isolates one stage of the pipeline.

- **images only** (:func:`images_only_set`): the image stages' images of the *real* training masks, refined as the
  workflow refines: new appearance on real anatomy. The masks are byte-for-byte the real ones.
- **masks only** (:func:`masks_only_set`): generated masks rendered with the per-label lookup of the real training
  images (:mod:`medgen3d.metrics.lookup`): real contrast on generated anatomy. The lookup is a measuring device
  that takes the image stage out of the question, never a generator offered as the method.

Mixed with the same real subjects at the same step budget, each arm says what its stage costs or brings against
the full pipeline (both stages) and real data alone.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from medgen3d.data.dataset import Case, DatasetSpec, read_dataset, write_dataset
from medgen3d.data.io import save_nifti
from medgen3d.data.subset import subset_dataset
from medgen3d.metrics.lookup import label_means, lookup_image
from medgen3d.pipeline.stages import PipelineStages
from medgen3d.synthesis.paired import copy_label, paired_dataset

__all__ = ["images_only_set", "masks_only_set", "training_means"]

VIEWS = ("axial", "coronal", "sagittal")


def images_only_set(
    stages: PipelineStages, real_dir: str | os.PathLike, out_dir: str | os.PathLike, seed: int = 0
) -> DatasetSpec:
    """The image stage and the refiner run on the training masks of ``real_dir``; the refined pairs land in
    ``out_dir`` (the image stage's own in ``out_dir/unrefined``), one per real training case, under its id.

    Resumable as the workflow's generation is: each stage keeps the cases already written.
    """
    out = Path(out_dir)
    real = read_dataset(real_dir)
    # the masks to render: the real training cases only (their images travel along and are ignored)
    masks = subset_dataset(real.root, out / "real-masks", training=None, validation=0, test=0)
    shared = {"dataset_dir": str(real.root), "labels": {str(k): v for k, v in real.labels.items()}, "seed": seed}
    unrefined = out / "unrefined"
    stages.image.run(["inference.json"], **shared, masks_dir=str(masks.root), synthetic_dir=str(unrefined))
    stages.refiner.run(["inference.json"], **shared, pairs_dir=str(unrefined), refined_dir=str(out), views=list(VIEWS))
    return read_dataset(out)


def training_means(real_dir: str | os.PathLike) -> torch.Tensor:
    """``(K,)`` mean intensity of each label over the training images of ``real_dir``, in their saved units."""
    real = read_dataset(real_dir)
    images, labels = [], []
    for case in real.training:
        image, label = real.load_case(case)
        images.append(torch.from_numpy(image.array))
        labels.append(label.array)
    return label_means(images, labels, real.num_classes)


def masks_only_set(
    masks_dir: str | os.PathLike, real_dir: str | os.PathLike, out_dir: str | os.PathLike
) -> DatasetSpec:
    """Every mask of the dataset ``masks_dir`` (generated) with its lookup image: each voxel the mean its label has
    in the training images of ``real_dir``. Writes ``out_dir/{images,labels}/`` and its ``dataset.json`` last."""
    masks = read_dataset(masks_dir)
    means = training_means(real_dir)
    out = Path(out_dir)
    for case in masks.cases():
        label = masks.load_case(case)[1]
        image = lookup_image(label.array, means).numpy()
        save_nifti(out / Case.named(case.case_id).image, image, label.affine)
        copy_label(masks, case, out)
    provenance = {"images": "per-label lookup of the real training images", "label_means": means.tolist()}
    spec = paired_dataset(masks, f"{masks.name}-lookup", provenance)
    write_dataset(out, spec)
    return read_dataset(out)
