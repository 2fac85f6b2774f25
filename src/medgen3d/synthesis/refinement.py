"""Refinement of every image/mask pair of a dataset with the three-view semantic diffusion refiner.

Works on any paired dataset (the image generator's output, or real data). Each image is scaled linearly to [-1, 1]
(a generated image with the scale its generator wrote it with, which its ``dataset.json`` records; a real one by its
modality: the CT window, or its own MR percentiles), refined, and written back on the same scale, in the input's
geometry, beside a copy of its mask. Nothing is clipped: intensities beyond the scale (bone above the CT
window, the brightest MR voxels) keep their excess through refinement (see
:func:`~medgen3d.diffusion.refiner.refine_volume`). Each case draws its noise from its own seed; finished cases
are skipped.

The views' networks travel as one file, ``models/model.pt`` (the state dict of a
:class:`~medgen3d.networks.ViewDenoisers`, what the model zoo and ``ckpt_export`` expect): training writes
``models/<view>/model.pt``, :func:`assemble_view_weights` joins them, :func:`load_view_networks` splits them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from medgen3d.data.builder import case_seeds
from medgen3d.data.dataset import Case, DatasetSpec
from medgen3d.data.intensity import IntensityScale, volume_scale
from medgen3d.data.io import DataError, save_nifti
from medgen3d.diffusion.refiner import SegmentationDenoiser, SemanticRefiner, refine_volume
from medgen3d.engines.checkpoint import read_weights, save_atomically, weights_mismatch
from medgen3d.networks.views import ViewDenoisers
from medgen3d.synthesis.cases import CaseRunner, Progress, Shard
from medgen3d.synthesis.paired import copy_label, paired_dataset
from medgen3d.views import VIEWS, check_views

__all__ = ["assemble_view_weights", "load_view_networks", "refine_dataset"]

logger = logging.getLogger(__name__)

VIEW_WEIGHTS = "model.pt"  # the name of both the assembled file and each view's training output


class _Job(NamedTuple):
    """One pair to refine and the seed of its noise (from its place in the whole dataset, whichever rank runs it)."""

    case: Case
    seed: int

    @property
    def case_id(self) -> str:
        return self.case.case_id


def refine_dataset(
    networks: Mapping[str, SegmentationDenoiser],
    refiner: SemanticRefiner,
    pairs: DatasetSpec,
    out_dir: str | os.PathLike,
    views: Sequence[str] = ("axial", "coronal", "sagittal"),
    batch_size: int = 32,
    seed: int = 0,
    progress: Progress | None = None,
    shard: Shard = Shard(),
) -> DatasetSpec | None:
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
        shard: this process's share of the cases.

    Returns:
        The refined dataset once every case exists (see :meth:`~medgen3d.synthesis.cases.CaseRunner.finish`), else
        ``None``.
    """
    cases = pairs.cases()
    missing = [case.case_id for case in cases if case.image is None]
    if missing:
        raise DataError(f"{pairs.path('dataset.json')}: cases {missing[:5]} have no image to refine")
    runner = CaseRunner(out_dir, "images", shard, progress)

    def write(batch: list[_Job]) -> None:
        for job in batch:
            image, label = pairs.load_case(job.case)  # checks shape, affine and labels, naming the files
            refined = _refine(networks, refiner, image.array, label.array, pairs, views, batch_size, job.seed)
            copy_label(pairs, job.case, out_dir)
            save_nifti(runner.target(job.case_id), refined, image.affine)

    runner.run([_Job(case, s) for case, s in zip(cases, case_seeds(seed, len(cases)))], write)
    settings = {
        "views": list(views),
        "noise_steps": refiner.noise_steps,
        "denoising_steps": refiner.denoising_steps,
        "denoising_eta": refiner.eta,
        "guidance_scale": refiner.guidance_scale,
    }
    name = pairs.name if pairs.name.endswith("-refined") else f"{pairs.name}-refined"
    return runner.finish([case.case_id for case in cases], lambda: paired_dataset(pairs, name, {"refined": settings}))


def working_scale(pairs: DatasetSpec, image: np.ndarray) -> IntensityScale:
    """The scale an image of ``pairs`` is refined in: the one its generator wrote it with, where ``dataset.json``
    records it (``medgen3d.intensity_scale``), so the views see the image as generated; otherwise (real data) the
    image's own, as the views were trained. Re-scaling a generated MR image by its own percentiles would stretch its
    contrast before the views see it."""
    recorded = pairs.extra.get("medgen3d", {}).get("intensity_scale")
    return IntensityScale(*recorded) if recorded is not None else volume_scale(image, pairs.modality)


def _refine(networks, refiner, image, label, pairs, views, batch_size, seed) -> np.ndarray:
    if refiner.noise_steps == 0:
        return image  # nothing noised, nothing changed: the input exactly
    scale = working_scale(pairs, image)
    x = scale.to_network(torch.from_numpy(image), clip=False)  # refine_volume passes the out-of-range part through
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
    """One copy of ``network`` per view, with that view's trained weights, on ``device`` in eval mode.

    The weights come from ``ckpt_dir/model.pt``, the state dict of a :class:`~medgen3d.networks.ViewDenoisers`
    (every view's weights under ``"<view>."``, what the bundle ships and ``ckpt_export`` loads); when it is absent,
    from the per-view training outputs ``ckpt_dir/<view>/model.pt`` (models trained before the views were
    assembled into one file). A requested view that the weights lack, or weights that are unreadable or do not
    fit ``network``, raise :class:`DataError` naming the file; a per-view output newer than ``model.pt`` is
    logged, since ``model.pt`` (not the newer weights) is what is loaded.

    Args:
        network: the SPADE diffusion UNet of one view (copied per view), or a ``ViewDenoisers`` of them.
        ckpt_dir: the bundle's ``models`` folder.
        views: the views to load, each one of :data:`~medgen3d.views.VIEWS`.
        device: where the networks go.

    Returns:
        view -> its network.
    """
    views = check_views(views)
    if isinstance(network, ViewDenoisers):
        network = next(iter(network.values()))  # every view's network has the same architecture
    ckpt_dir = Path(ckpt_dir)
    assembled = ckpt_dir / VIEW_WEIGHTS
    if assembled.is_file():
        states = _split_views(read_weights(assembled), assembled)
        sources = dict.fromkeys(states, assembled)
        _warn_if_stale(assembled, ckpt_dir, views)
        holder = f"{assembled}: holds"
    else:
        sources = _per_view_files(ckpt_dir, views)
        states = {view: read_weights(path) for view, path in sources.items()}
        holder = f"{assembled}: not found; the per-view weights {ckpt_dir}/<view>/{VIEW_WEIGHTS} hold"
    missing = [view for view in views if view not in states]
    if missing:
        held = [view for view in VIEWS if view in states]
        raise DataError(f"{holder} views {held}; missing {missing}: {_remedy(ckpt_dir, missing)}")
    denoisers = ViewDenoisers(network, views)
    for view in views:
        try:
            denoisers[view].load_state_dict(states[view])
        except (RuntimeError, TypeError) as err:
            raise DataError(
                f"{sources[view]}: the {view} weights do not fit the configured network: "
                f"{weights_mismatch(denoisers[view], states[view])}"
            ) from err
    return {view: denoisers[view].to(device).eval() for view in views}


def assemble_view_weights(ckpt_dir: str | os.PathLike, views: Sequence[str]) -> Path:
    """Write ``ckpt_dir/model.pt``, every view's weights in one file, from the per-view training outputs.

    The file is the state dict of a :class:`~medgen3d.networks.ViewDenoisers`: the weights of
    ``ckpt_dir/<view>/model.pt`` under ``"<view>."`` for each of ``views`` whose file exists. Any other view keeps
    the weights an existing ``model.pt`` holds for it (a downloaded bundle with one view retrained), or is absent
    (:func:`load_view_networks` names it when asked for it). Written atomically.

    Args:
        ckpt_dir: the bundle's ``models`` folder, where training wrote ``<view>/model.pt``.
        views: the views to take from their training outputs.

    Returns:
        The path written, ``ckpt_dir/model.pt``.

    Raises:
        DataError: no view has weights, or a file read is unreadable (the message names it).
    """
    views = check_views(views)
    ckpt_dir = Path(ckpt_dir)
    target = ckpt_dir / VIEW_WEIGHTS
    sources = _per_view_files(ckpt_dir, views)
    states: dict[str, Mapping[str, Any]] = {}
    if target.is_file() and set(sources) != set(VIEWS):  # it may hold views that no training output replaces
        states.update(_split_views(read_weights(target), target))
    states.update({view: read_weights(path) for view, path in sources.items()})
    if not states:
        raise DataError(
            f"{ckpt_dir}: no view weights to assemble ({ckpt_dir}/<view>/{VIEW_WEIGHTS} for views {list(views)}): "
            f"train them (train.json --view {views[0]})"
        )
    order = [view for view in VIEWS if view in states]
    save_atomically({f"{view}.{key}": value for view in order for key, value in states[view].items()}, target)
    return target


def _per_view_files(ckpt_dir: Path, views: Sequence[str]) -> dict[str, Path]:
    """view -> its training output, for the views that have one."""
    paths = {view: ckpt_dir / view / VIEW_WEIGHTS for view in views}
    return {view: path for view, path in paths.items() if path.is_file()}


def _remedy(ckpt_dir: Path, missing: Sequence[str]) -> str:
    """What to do about views the weights lack: assemble the ones trained since, train the others."""
    trained = list(_per_view_files(ckpt_dir, missing))
    if trained:
        return f"assemble_view_weights adds {trained} from {ckpt_dir}/<view>/{VIEW_WEIGHTS}"
    return f"train them (train.json --view {missing[0]})"


def _split_views(state: Mapping[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    """A :class:`ViewDenoisers` state dict -> view -> that view's network state dict."""
    states: dict[str, dict[str, Any]] = {}
    for key, value in state.items():
        view, _, inner = key.partition(".")
        if view not in VIEWS or not inner:
            # most likely one view's network saved alone (a training output copied to model.pt)
            raise DataError(
                f"{path}: key {key!r} does not start with a view name {list(VIEWS)}: not the weights of every "
                f"view (write them with assemble_view_weights)"
            )
        states.setdefault(view, {})[inner] = value
    return states


def _warn_if_stale(assembled: Path, ckpt_dir: Path, views: Sequence[str]) -> None:
    newer = [
        str(path)
        for path in _per_view_files(ckpt_dir, views).values()
        if path.stat().st_mtime > assembled.stat().st_mtime
    ]
    if newer:
        logger.warning(f"{assembled} is older than {newer}: loading it; assemble_view_weights updates it")
