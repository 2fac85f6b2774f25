"""Image volumes from mask volumes with the sequence generator, slice by slice (MedGen3D Sec. 3.2).

Cases are generated one at a time, slice by slice, so a case's image is the same whichever cases share its batch or
rank. The generator is deterministic, so the same masks and weights give the same images. Outputs are written as a
paired dataset: ``images/<case>.nii.gz`` beside a copy of each mask in ``labels/``, in the mask's geometry and in
the real data's intensity scale (HU for CT).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medgen3d.data.dataset import Case, DatasetSpec
from medgen3d.data.intensity import IntensityScale
from medgen3d.data.io import save_nifti
from medgen3d.diffusion.conditions import one_hot_slices
from medgen3d.networks.sequence_generator import SequenceGenerator
from medgen3d.synthesis.cases import CaseRunner, Progress, Shard
from medgen3d.synthesis.paired import copy_label, paired_dataset
from medgen3d.transforms.subsequence import resize_label_slices

__all__ = ["generate_image_volumes", "generate_images_for_labels", "synthesise_images"]


@torch.no_grad()
def generate_image_volumes(
    generator: SequenceGenerator,
    label_volumes: Sequence[torch.Tensor],
    num_classes: int,
    known: Sequence[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Generate an image for each label volume.

    Args:
        generator: the trained sequence generator (eval mode).
        label_volumes: per case, ``(D, H, W)`` integer labels at the generator's in-plane size.
        num_classes: ``K``.
        known: per case, ``(P, H, W)`` images in [-1, 1] of its first ``P`` slices (``P`` may differ between
            cases), kept as they are; the generator continues after them, as after real slices. Measures how the
            error grows with the slices since the last real one; default none, the whole volume generated.

    Returns:
        Per case, ``(D, H, W)`` images in [-1, 1].
    """
    if len(label_volumes) > 1:
        # one case at a time, so that a case's image never depends on which cases share its batch (or its rank):
        # the CPU kernels differ in the last bits between batch sizes, and instance norm of the nearly constant
        # features of a briefly trained generator magnifies that, slice after slice through the recurrence
        return [
            generate_image_volumes(generator, [volume], num_classes, None if known is None else [known[i]])[0]
            for i, volume in enumerate(label_volumes)
        ]
    device = next(generator.parameters()).device
    history = generator.history
    masks = [one_hot_slices(v.long()[None].to(device), num_classes)[0] for v in label_volumes]  # (D, K, H, W)
    images = [torch.zeros(v.shape[0], 1, *v.shape[1:], device=device) for v in label_volumes]
    starts = [0] * len(label_volumes)
    for i, prefix in enumerate(known or []):
        images[i][: prefix.shape[0], 0] = prefix.to(device)
        starts[i] = prefix.shape[0]
    for t in range(max(v.shape[0] for v in label_volumes)):
        cases = [i for i, v in enumerate(label_volumes) if starts[i] <= t < v.shape[0]]
        if not cases:
            continue
        window, previous, valid = [], [], []
        for i in cases:
            # slots before the volume's first slice are zero and marked invalid
            lo = t - history
            pad = max(0, -lo)
            mask = masks[i][max(lo, 0) : t + 1]
            prev = images[i][max(lo, 0) : t]
            window.append(torch.cat([torch.zeros(pad, *mask.shape[1:], device=device), mask]))
            previous.append(torch.cat([torch.zeros(pad, *prev.shape[1:], device=device), prev]))
            valid.append(torch.tensor([0.0] * pad + [1.0] * (history - pad), device=device))
        out = generator(torch.stack(window), torch.stack(previous), torch.stack(valid))
        for row, i in enumerate(cases):
            images[i][t] = out.image[row]
    return [image[:, 0] for image in images]


def _resize_images(volume: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(D, h, w)`` -> ``(D, H, W)`` bilinear."""
    if tuple(volume.shape[1:]) == tuple(size):
        return volume
    return F.interpolate(volume[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def generate_images_for_labels(
    generator: SequenceGenerator,
    label_volumes: Sequence[torch.Tensor],
    num_classes: int,
    image_size: Sequence[int] | None = None,
) -> list[torch.Tensor]:
    """Generate an image for each label volume at the generator's in-plane size and give it back at the volume's own.

    Args:
        generator: the trained sequence generator (eval mode).
        label_volumes: per case, ``(D, H, W)`` integer labels at their own in-plane size.
        num_classes: ``K``.
        image_size: the generator's in-plane size; default the first volume's own.

    Returns:
        Per case, ``(D, H, W)`` images in [-1, 1] on the CPU, at the case's ``(H, W)``.
    """
    size = tuple(image_size) if image_size else tuple(label_volumes[0].shape[1:])
    inputs = [resize_label_slices(volume, size, num_classes) for volume in label_volumes]
    generated = generate_image_volumes(generator, inputs, num_classes)
    return [_resize_images(image.cpu(), tuple(volume.shape[1:])) for image, volume in zip(generated, label_volumes)]


def synthesise_images(
    generator: SequenceGenerator,
    masks: DatasetSpec,
    out_dir: str | os.PathLike,
    scale: IntensityScale,
    image_size: Sequence[int] | None = None,
    batch_size: int = 4,
    progress: Progress | None = None,
    shard: Shard = Shard(),
) -> DatasetSpec | None:
    """Generate the image of every mask in ``masks`` into the paired dataset ``out_dir``; finished cases are kept.

    Args:
        generator: the trained sequence generator (eval mode, on its device).
        masks: a dataset whose labels drive the generation (its images, if any, are ignored).
        out_dir: the paired dataset folder (may be the mask folder itself).
        scale: maps generated [-1, 1] intensities to saved units (HU for CT).
        image_size: the generator's in-plane size; default the masks' own.
        batch_size: cases generated together.
        progress: optional ``callback(done, total, case_id)``.
        shard: this process's share of the cases.

    Returns:
        The paired dataset once every case exists (see :meth:`~medgen3d.synthesis.cases.CaseRunner.finish`), else
        ``None``.
    """
    runner = CaseRunner(out_dir, "images", shard, progress)

    def write(batch: list[Case]) -> None:
        volumes = [masks.load_case(case)[1] for case in batch]
        labels = [torch.from_numpy(volume.array).permute(2, 0, 1) for volume in volumes]
        generated = generate_images_for_labels(generator, labels, masks.num_classes, image_size)
        for case, volume, image in zip(batch, volumes, generated):
            image = scale.from_network(image)
            copy_label(masks, case, out_dir)
            save_nifti(runner.target(case.case_id), image.permute(1, 2, 0).numpy().astype(np.float32), volume.affine)

    runner.run(masks.cases(), write, batch_size)
    name = f"{masks.name.removesuffix('-masks')}-pairs"
    provenance = {"images": "image_vid2vid", "intensity_scale": list(scale)}
    return runner.finish([case.case_id for case in masks.cases()], lambda: paired_dataset(masks, name, provenance))
