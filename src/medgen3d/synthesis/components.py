"""The run steps of the generating bundles, as named components.

A bundle's ``run`` list calls one of these (``"$@synthesis.run()"``), and every argument is an id of its own in the
config, so one can be overridden from the command line by name (``--synthesis#batch_size 8``) and nothing depends
on argument order. Each component checks its counts when it is built and claims its output folder before it
writes (:func:`claim_folder`), so a bad value or another run's folder ends the run before any work, with one line
naming the setting or the folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from medgen3d.data.dataset import DatasetSpec
from medgen3d.data.intensity import IntensityScale
from medgen3d.data.io import DataError, SettingError, read_json, write_json
from medgen3d.diffusion.refiner import SemanticRefiner
from medgen3d.diffusion.sampler import SubsequenceSampler
from medgen3d.precision import autocast_networks, check_precision
from medgen3d.synthesis.cases import Progress, Shard, wait_for_ranks
from medgen3d.synthesis.images import synthesise_images
from medgen3d.synthesis.masks import complete_mask_file, synthesise_masks
from medgen3d.synthesis.refinement import refine_dataset

__all__ = [
    "check_size",
    "claim_folder",
    "run_record_name",
    "MaskSynthesis",
    "MaskCompletion",
    "ImageSynthesis",
    "Refinement",
]


def _at_least(minimum: int, **values: int | None) -> None:
    for name, value in values.items():
        if value is not None and int(value) < minimum:
            raise SettingError(f"{name}: must be at least {minimum}, got {value}")


def check_size(network: torch.nn.Module, image_size: Sequence[int] | None) -> None:
    """Refuse a slice size the network cannot take (a side that is not a multiple of its ``size_multiple``), naming
    the size and the multiple, before any sampling rather than as a shape mismatch deep inside the network."""
    multiple = getattr(network, "size_multiple", None)
    if image_size and multiple and any(int(s) % multiple for s in image_size):
        raise SettingError(
            f"image_size: {list(image_size)} does not fit the network: both sides must be multiples of {multiple}"
        )


def run_record_name(stage: str) -> str:
    """The file in an output folder that records the settings of the ``stage`` run writing into it."""
    return f".medgen3d-{stage}.json"


def claim_folder(out: str | os.PathLike, stage: str, settings: Mapping[str, Any], outputs: str) -> None:
    """Make ``out`` this run's folder for ``stage``, or refuse it.

    The stage's settings are recorded in ``out/.medgen3d-<stage>.json``. A folder whose record holds other settings,
    or whose ``outputs`` sub-folder already has files but no record, belongs to another run: resuming into it would
    mix two runs' cases, so it raises :class:`DataError` naming the folder. A folder with the same record is this
    run, interrupted: it resumes.
    """
    out = Path(out)
    marker = out / run_record_name(stage)
    settings = dict(settings)
    if marker.is_file():
        recorded = read_json(marker)
        differs = sorted(k for k in set(settings) | set(recorded) if recorded.get(k) != settings.get(k))
        if differs:
            raise DataError(
                f"{out}: holds another {stage} run ({', '.join(differs)} differ); choose another output folder or "
                "delete it"
            )
        return
    if (out / outputs).is_dir() and any((out / outputs).iterdir()):
        raise DataError(
            f"{out}: its {outputs}/ holds files of another run (no {marker.name} record); choose an empty folder"
        )
    write_json(marker, settings)


def _where(spec: DatasetSpec, out: str | os.PathLike | None = None) -> str:
    """The dataset's folder as a run records it: relative to the output folder ``out`` when inside it (a copied or
    moved run folder stays the same run), else absolute."""
    if spec.root is None:
        return spec.name
    root = Path(spec.root).resolve()
    if out is not None and root.is_relative_to(Path(out).resolve()):
        return root.relative_to(Path(out).resolve()).as_posix() or "."
    if out is not None and Path(out).resolve().parent == root.parent and root.parent != root:
        return os.path.relpath(root, Path(out).resolve())
    return str(root)


@dataclass
class _DatasetRun:
    """What every generating run step shares: its shard of the cases, its progress line and the precision its
    networks run in (keyword-only, after each step's own arguments).

    ``precision`` is one of :data:`~medgen3d.precision.PRECISIONS`: ``"auto"`` runs the networks under bfloat16
    autocast on CUDA and on a CPU with bfloat16 instructions, else in float32; their outputs come back as float32
    either way (see
    :func:`~medgen3d.precision.autocast_networks`). It is not part of a run's recorded settings, as the batch size is
    not: a run interrupted on one device resumes on another."""

    rank: int = field(default=0, kw_only=True)
    world_size: int = field(default=1, kw_only=True)
    progress: Progress | None = field(default=None, kw_only=True, repr=False)
    precision: str = field(default="auto", kw_only=True)

    def __post_init__(self) -> None:
        Shard(self.rank, self.world_size).checked()
        check_precision(self.precision)

    def _claim(self, out: str | os.PathLike, stage: str, settings: Mapping[str, Any], outputs: str) -> Shard:
        """:func:`claim_folder` on rank 0 first, then on the others, which find its record: together they would race
        (a rank seeing the record half-written would take the folder for another run's). Returns this process's
        shard, in its ranks' process group when ``torchrun`` started it."""
        shard = Shard(self.rank, self.world_size)
        shard.connect()
        if shard.rank == 0:
            claim_folder(out, stage, settings, outputs)
        wait_for_ranks()
        if shard.rank != 0:
            claim_folder(out, stage, settings, outputs)
        return shard


@dataclass
class MaskSynthesis(_DatasetRun):
    """Generate ``num_cases`` mask volumes into ``out_dir``: the arguments of
    :func:`~medgen3d.synthesis.masks.synthesise_masks`, by name."""

    network: torch.nn.Module
    sampler: SubsequenceSampler
    reference: DatasetSpec
    out_dir: str | os.PathLike
    num_cases: int = 10
    image_size: Sequence[int] | None = None
    num_condition: int = 2
    depth: int | None = None
    start: int | None = None
    batch_size: int = 4
    seed: int = 0
    new_per_window: int | None = None

    def __post_init__(self) -> None:
        _at_least(1, num_cases=self.num_cases, batch_size=self.batch_size)
        _at_least(0, num_condition=self.num_condition, start=self.start)
        _at_least(1, depth=self.depth)
        super().__post_init__()
        m = getattr(self.network, "subsequence_length", None)
        if m is not None and self.depth is not None and self.depth < m:
            raise SettingError(f"depth: {self.depth} is shallower than one subsequence ({m} slices)")
        if m is not None and self.num_condition >= m:
            raise SettingError(f"num_condition: must be below the subsequence length {m}, got {self.num_condition}")
        _check_new_per_window(self.new_per_window, self.num_condition, m)
        check_size(self.network, self.image_size)

    def settings(self) -> dict[str, Any]:
        """What makes two runs the same run (recorded in the output folder)."""
        keys = ("num_cases", "depth", "start", "seed", "num_condition")
        kept = {} if self.new_per_window is None else {"new_per_window": self.new_per_window}  # earlier records lack it
        return {"reference": _where(self.reference), **{k: asdict(self)[k] for k in keys}, **kept}

    def run(self) -> DatasetSpec | None:
        shard = self._claim(self.out_dir, "mask_mcdpm", self.settings(), "labels")
        with autocast_networks(self.precision, self.network):
            return synthesise_masks(
                self.network,
                self.sampler,
                self.reference,
                self.out_dir,
                self.num_cases,
                self.image_size,
                self.num_condition,
                self.depth,
                self.start,
                self.batch_size,
                self.seed,
                shard,
                self.progress,
                self.new_per_window,
            )


@dataclass
class MaskCompletion:
    """Grow a partial mask file to its full depth (:func:`~medgen3d.synthesis.masks.complete_mask_file`)."""

    network: torch.nn.Module
    sampler: SubsequenceSampler
    partial_file: str | os.PathLike
    known_slices: Sequence[int]
    output_file: str | os.PathLike
    labels: Mapping
    image_size: Sequence[int] | None = None
    num_condition: int = 2
    seed: int = 0
    precision: str = "auto"
    new_per_window: int | None = None

    def __post_init__(self) -> None:
        check_precision(self.precision)
        _check_new_per_window(
            self.new_per_window, self.num_condition, getattr(self.network, "subsequence_length", None)
        )
        if not self.partial_file:
            raise SettingError("partial_file: give the partial mask to complete (--partial_file FILE)")
        if len(self.known_slices) != 2 or not 0 <= self.known_slices[0] < self.known_slices[1]:
            raise SettingError(f"known_slices: must be [first, end) with 0 <= first < end, got {self.known_slices}")
        check_size(self.network, self.image_size)

    def run(self) -> Path:
        with autocast_networks(self.precision, self.network):
            return complete_mask_file(
                self.network,
                self.sampler,
                self.partial_file,
                self.known_slices,
                self.output_file,
                dict(self.labels),
                self.image_size,
                self.num_condition,
                self.seed,
                self.new_per_window,
            )


def _check_new_per_window(new_per_window: int | None, num_condition: int, length: int | None) -> None:
    """A window keeps at least one of its new slices and at most all ``m - n`` of them."""
    if new_per_window is None:
        return
    most = None if length is None else length - num_condition
    if new_per_window < 1 or (most is not None and new_per_window > most):
        bound = f"1..{most}" if most is not None else "at least 1"
        raise SettingError(f"new_per_window: must be {bound} (null: every new slice of a window), got {new_per_window}")


@dataclass
class ImageSynthesis(_DatasetRun):
    """Give every mask of ``masks`` its image (:func:`~medgen3d.synthesis.images.synthesise_images`)."""

    network: torch.nn.Module
    masks: DatasetSpec
    out_dir: str | os.PathLike
    intensity_scale: IntensityScale
    image_size: Sequence[int] | None = None
    batch_size: int = 4

    def __post_init__(self) -> None:
        _at_least(1, batch_size=self.batch_size)
        super().__post_init__()
        check_size(self.network, self.image_size)

    def run(self) -> DatasetSpec | None:
        settings = {"masks": _where(self.masks, self.out_dir)}
        shard = self._claim(self.out_dir, "image_vid2vid", settings, "images")
        with autocast_networks(self.precision, self.network):
            return synthesise_images(
                self.network,
                self.masks,
                self.out_dir,
                self.intensity_scale,
                self.image_size,
                self.batch_size,
                self.progress,
                shard,
            )


@dataclass
class Refinement(_DatasetRun):
    """Refine every pair of ``pairs`` (:func:`~medgen3d.synthesis.refinement.refine_dataset`)."""

    networks: Mapping[str, torch.nn.Module]
    refiner: SemanticRefiner
    pairs: DatasetSpec
    out_dir: str | os.PathLike
    views: Sequence[str] = ("axial", "coronal", "sagittal")
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        _at_least(1, batch_size=self.batch_size)
        super().__post_init__()

    def run(self) -> DatasetSpec | None:
        if Path(self.out_dir).resolve() == Path(_where(self.pairs)).resolve():
            raise SettingError(f"refined_dir: {self.out_dir} is the input pairs' folder; refine into another one")
        settings = {
            "pairs": _where(self.pairs, self.out_dir),
            "views": list(self.views),
            "seed": self.seed,
            "noise_steps": self.refiner.noise_steps,
            "denoising_steps": self.refiner.denoising_steps,
            "denoising_eta": self.refiner.eta,
        }
        shard = self._claim(self.out_dir, "sdm_refiner", settings, "images")
        with autocast_networks(self.precision, *self.networks.values()):
            return refine_dataset(
                self.networks,
                self.refiner,
                self.pairs,
                self.out_dir,
                self.views,
                self.batch_size,
                self.seed,
                self.progress,
                shard,
            )
