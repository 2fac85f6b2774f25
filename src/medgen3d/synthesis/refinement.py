"""Refinement of every image/mask pair of a dataset with the three-view semantic diffusion refiner.

Works on any paired dataset (the image generator's output, or real data). Each image is scaled to [-1, 1] by its
modality (CT window, or its own MR percentiles), refined, and written back on the same scale, in the input's
geometry, beside a copy of its mask. Each case draws its noise from its own seed; finished cases are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from medgen3d.data.builder import case_seeds
from medgen3d.data.dataset import SPLITS, DatasetSpec
from medgen3d.data.intensity import volume_scale
from medgen3d.data.io import DataError, save_nifti
from medgen3d.diffusion.refiner import SegmentationDenoiser, SemanticRefiner, refine_volume
from medgen3d.synthesis.paired import copy_label, write_paired_dataset

__all__ = ["refine_dataset", "load_view_networks"]


def refine_dataset(
    networks: Mapping[str, SegmentationDenoiser],
    refiner: SemanticRefiner,
    pairs: DatasetSpec,
    out_dir: str | os.PathLike,
    views: Sequence[str] = ("axial", "coronal", "sagittal"),
    batch_size: int = 32,
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
) -> DatasetSpec:
    """Refine every pair of ``pairs`` into the paired dataset ``out_dir``.

    Args:
        networks: view -> its trained SPADE diffusion UNet (eval mode).
        refiner: noising depth ``t_r`` and guidance.
        pairs: a dataset whose cases all have images.
        out_dir: where ``images/`` (refined), ``labels/`` (copied) and ``dataset.json`` go.
        views: views to average.
        batch_size: slices per network call.
        seed: the run seed; case ``i`` uses its own derived seed.
        progress: optional ``callback(done, total, case_id)``.
    """
    out = Path(out_dir)
    cases = [(split, case) for split in SPLITS for case in pairs.split(split)]
    missing = [case.case_id for _, case in cases if case.image is None]
    if missing:
        raise DataError(f"{pairs.path('dataset.json')}: cases {missing[:5]} have no image to refine")
    for done, ((split, case), case_seed) in enumerate(zip(cases, case_seeds(seed, len(cases))), start=1):
        target = out / "images" / f"{case.case_id}.nii.gz"
        if not target.exists():
            image, label = pairs.load_case(case)  # checks shape, affine and labels, naming the files
            refined = _refine(networks, refiner, image.array, label.array, pairs, views, batch_size, case_seed)
            copy_label(pairs, case, out)
            save_nifti(target, refined, image.affine)
        if progress is not None:
            progress(done, len(cases), case.case_id)
    settings = {"views": list(views), "noise_steps": refiner.noise_steps, "guidance_scale": refiner.guidance_scale}
    name = pairs.name if pairs.name.endswith("-refined") else f"{pairs.name}-refined"
    return write_paired_dataset(out, pairs, name, {"refined": settings})


def _refine(networks, refiner, image, label, pairs, views, batch_size, seed) -> np.ndarray:
    if refiner.noise_steps == 0:
        return image  # nothing noised, nothing changed: the input exactly
    scale = volume_scale(image, pairs.modality)
    x = scale.to_network(torch.from_numpy(image))
    refined = refine_volume(
        networks,
        refiner,
        x,
        torch.from_numpy(label),
        pairs.num_classes,
        views,
        batch_size,
        torch.Generator().manual_seed(seed),
    )
    return scale.from_network(refined.cpu()).numpy().astype(np.float32)


def load_view_networks(
    network: torch.nn.Module, ckpt_dir: str | os.PathLike, views: Sequence[str], device: torch.device | str
) -> dict[str, torch.nn.Module]:
    """One copy of ``network`` per view, with the weights of ``ckpt_dir/<view>/model.pt`` (eval mode).

    A missing or mismatched view checkpoint raises :class:`DataError` naming the file.
    """
    import copy

    from medgen3d.engines.checkpoint import load_weights

    return {
        view: load_weights(copy.deepcopy(network), Path(ckpt_dir) / view / "model.pt").to(device).eval()
        for view in views
    }
