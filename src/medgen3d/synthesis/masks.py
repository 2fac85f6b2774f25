"""Whole synthetic mask datasets from a trained MC-DPM, and completion of partial masks.

Output is a label-only dataset folder (``labels/synth-XXXX.nii.gz`` + ``dataset.json``) in the reference
dataset's geometry: its in-plane size, spacing and orientation, and depths drawn from its training cases unless a
depth is given. Each case draws its depth, start and noise from its own seed, so cases can be generated in any
order, in batches, or sharded over ranks (case ``i`` on rank ``i % world_size``); a case already on disk is
skipped, which makes an interrupted run resumable.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
import torch

from medgen3d.data.builder import case_seeds
from medgen3d.data.dataset import Case, DatasetSpec
from medgen3d.data.io import DataError, SettingError, load_nifti, save_nifti
from medgen3d.diffusion.autoregressive import expansion_plan, generate_volumes, generation_plan
from medgen3d.diffusion.sampler import SubsequenceSampler
from medgen3d.networks.mcdpm_unet import MultiConditionDiffusionUNet
from medgen3d.synthesis.cases import CaseRunner, Progress, Shard
from medgen3d.transforms.subsequence import resize_label_slices

__all__ = [
    "CasePlan",
    "ReferenceGeometry",
    "reference_geometry",
    "plan_cases",
    "synthesise_masks",
    "complete_mask",
    "complete_mask_file",
]


class ReferenceGeometry(NamedTuple):
    """What synthetic masks copy from the real dataset: in-plane ``(H, W)``, training depths and an affine."""

    slice_shape: tuple[int, int]
    depths: list[int]
    affine: np.ndarray


class CasePlan(NamedTuple):
    """One synthetic case: its id, depth ``D``, first-window start and seed."""

    case_id: str
    depth: int
    start: int
    seed: int


def reference_geometry(reference: DatasetSpec) -> ReferenceGeometry:
    """Read in-plane size, depths and affine from the reference's training labels (all must share ``H, W``)."""
    cases = reference.training or reference.cases()
    # headers only: the shapes and one affine are all that is needed
    headers = [nib.load(reference.path(case.label)) for case in cases]
    shapes = [tuple(h.shape[:3]) for h in headers]
    affine = np.asarray(headers[0].affine, dtype=np.float64)
    in_plane = {s[:2] for s in shapes}
    if len(in_plane) != 1:
        raise DataError(
            f"{reference.root}: training labels differ in-plane ({sorted(in_plane)}); import them at one size"
        )
    return ReferenceGeometry(in_plane.pop(), [s[2] for s in shapes], affine)


def plan_cases(
    num_cases: int,
    depths: Sequence[int],
    length: int,
    seed: int,
    depth: int | None = None,
    start: int | None = None,
) -> list[CasePlan]:
    """Depth and start of every case, each from the case's own seed.

    Args:
        num_cases: cases to plan.
        depths: depths to draw from (the real training depths) when ``depth`` is not given.
        length: ``m``.
        seed: the run seed.
        depth: a fixed target depth ``D``.
        start: a fixed first-window start (default: uniform in ``[0, D - m]``).
    """
    plans = []
    for i, case_seed in enumerate(case_seeds(seed, num_cases)):
        rng = np.random.default_rng(case_seed)
        d = int(depth if depth is not None else rng.choice(np.asarray(depths)))
        if d < length:
            raise SettingError(f"depth: target depth {d} is shallower than one subsequence ({length} slices)")
        s = int(start if start is not None else rng.integers(0, d - length + 1))
        if not 0 <= s <= d - length:
            raise SettingError(f"start must be in [0, {d - length}] for depth {d}, got {s}")
        plans.append(CasePlan(f"synth-{i:04d}", d, s, case_seed))
    return plans


def _to_volume(labels: torch.Tensor, slice_shape: tuple[int, int], num_classes: int) -> np.ndarray:
    """``(D, h, w)`` network-size labels -> ``(H, W, D)`` uint8 at the dataset's in-plane size."""
    resized = resize_label_slices(labels.cpu(), slice_shape, num_classes)
    return resized.permute(1, 2, 0).numpy().astype(np.uint8)


def synthesise_masks(
    network: MultiConditionDiffusionUNet,
    sampler: SubsequenceSampler,
    reference: DatasetSpec,
    out_dir: str | os.PathLike,
    num_cases: int,
    image_size: Sequence[int] | None = None,
    num_condition: int = 2,
    depth: int | None = None,
    start: int | None = None,
    batch_size: int = 4,
    seed: int = 0,
    shard: Shard = Shard(),
    progress: Progress | None = None,
    new_per_window: int | None = None,
) -> DatasetSpec | None:
    """Generate ``num_cases`` mask volumes into ``out_dir`` (MedGen3D Sec. 3.1, "Inference").

    Args:
        network: the trained MC-DPM (in eval mode, on its device).
        sampler: DDPM or DDIM sampler.
        reference: the real dataset (labels, geometry, depths).
        out_dir: the synthetic dataset folder.
        num_cases: cases in the whole run (over all ranks).
        image_size: the network's in-plane ``(h, w)``; default the reference's.
        num_condition: ``n``, known slices per expansion window.
        depth: fixed ``D``; default drawn per case from the training depths.
        start: fixed first-window start; default random per case.
        batch_size: cases sampled together.
        seed: the run seed.
        shard: this process's share of the cases.
        progress: optional ``callback(done, total, case_id)``.
        new_per_window: new slices each expansion window keeps (see
            :mod:`~medgen3d.diffusion.autoregressive`); ``None``: all of them.

    Returns:
        The written dataset once every case exists (see :meth:`~medgen3d.synthesis.cases.CaseRunner.finish`), else
        ``None``.
    """
    if network.num_classes != reference.num_classes:
        raise DataError(
            f"{reference.root}: the dataset has {reference.num_classes} labels but the network was built for "
            f"{network.num_classes}"
        )
    geometry = reference_geometry(reference)
    size = tuple(image_size) if image_size else geometry.slice_shape
    m = network.subsequence_length
    plans = plan_cases(num_cases, geometry.depths, m, seed, depth, start)
    runner = CaseRunner(out_dir, "labels", shard, progress)

    def write(batch: list[CasePlan]) -> None:
        volumes = generate_volumes(
            network,
            sampler,
            [generation_plan(p.depth, p.start, m, num_condition, new_per_window) for p in batch],
            [p.depth for p in batch],
            network.num_classes,
            size,
            generator=[torch.Generator().manual_seed(p.seed) for p in batch],
        )
        for p, volume in zip(batch, volumes):
            labels = _to_volume(volume, geometry.slice_shape, network.num_classes)
            save_nifti(runner.target(p.case_id), labels, geometry.affine)

    def dataset() -> DatasetSpec:
        return DatasetSpec(
            name=f"{reference.name}-synthetic-masks",
            modality=reference.modality,
            labels=dict(reference.labels),
            training=[Case.named(p.case_id, image=False) for p in plans],
            extra={
                "medgen3d": {
                    "generator": "mask_mcdpm",
                    "seed": seed,
                    "reference": str(reference.root),
                    "cases": {p.case_id: {"depth": p.depth, "start": p.start, "seed": p.seed} for p in plans},
                }
            },
        )

    runner.run(plans, write, batch_size)
    return runner.finish([p.case_id for p in plans], dataset)


def complete_mask(
    network: MultiConditionDiffusionUNet,
    sampler: SubsequenceSampler,
    partial: np.ndarray,
    known: tuple[int, int],
    num_classes: int,
    image_size: Sequence[int] | None = None,
    num_condition: int = 2,
    seed: int = 0,
    new_per_window: int | None = None,
) -> np.ndarray:
    """Grow a partial mask volume to its full depth from its known consecutive slices.

    Args:
        network: the trained MC-DPM.
        sampler: DDPM or DDIM sampler.
        partial: ``(H, W, D)`` integer labels; only slices ``known[0]:known[1]`` are read.
        known: the known slice range along the last axis.
        num_classes: ``K``.
        image_size: the network's in-plane size; default the volume's.
        num_condition: ``n``.
        seed: random seed.
        new_per_window: new slices each window keeps; ``None``: all of them.

    Returns:
        ``(H, W, D)`` uint8 labels; the known slices are returned unchanged.
    """
    lo, hi = known
    height, width, depth = partial.shape
    size = tuple(image_size) if image_size else (height, width)
    slices = torch.from_numpy(np.ascontiguousarray(partial[..., lo:hi])).long().permute(2, 0, 1)
    if slices.min() < 0 or slices.max() >= num_classes:
        raise ValueError(f"known slices hold labels outside 0..{num_classes - 1}")
    known_volume = torch.full((depth, *size), -1, dtype=torch.long)
    known_volume[lo:hi] = resize_label_slices(slices, size, num_classes)
    plan = expansion_plan(depth, known, network.subsequence_length, num_condition, new_per_window)
    [volume] = generate_volumes(
        network,
        sampler,
        [plan],
        [depth],
        num_classes,
        size,
        known=[known_volume],
        generator=torch.Generator().manual_seed(seed),
    )
    result = _to_volume(volume, (height, width), num_classes)
    result[..., lo:hi] = partial[..., lo:hi]  # exactly as given, whatever the resizing did
    return result


def complete_mask_file(
    network: MultiConditionDiffusionUNet,
    sampler: SubsequenceSampler,
    partial_file: str | os.PathLike,
    known: Sequence[int],
    output_file: str | os.PathLike,
    labels: dict,
    image_size: Sequence[int] | None = None,
    num_condition: int = 2,
    seed: int = 0,
    new_per_window: int | None = None,
) -> Path:
    """:func:`complete_mask` on a NIfTI file; the result keeps the input's geometry.

    Args:
        partial_file: ``(H, W, D)`` label NIfTI; slices ``known[0]:known[1]`` along the last axis are read.
        known: the known slice range.
        output_file: the completed NIfTI (written atomically).
        labels: the configured label set (value -> name); the known slices may use only these values.
        Other arguments as :func:`complete_mask`.
    """
    volume = load_nifti(partial_file)
    lo, hi = int(known[0]), int(known[1])
    values = set(np.unique(volume.array[..., lo:hi]).astype(np.int64).tolist())
    unknown = sorted(values - {int(k) for k in labels})
    if unknown:
        raise DataError(f"{partial_file}: known slices hold label values {unknown} outside the configured labels")
    array = volume.array.astype(np.int64)
    completed = complete_mask(
        network, sampler, array, (lo, hi), len(labels), image_size, num_condition, seed, new_per_window
    )
    save_nifti(output_file, completed, volume.affine)
    return Path(output_file)
