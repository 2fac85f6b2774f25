"""The quality report of a synthetic dataset against real data (MedGen3D Sec. 4.2, extended).

Every measure is set beside what real data gives, so a number can be read without a paper to compare with:

- fidelity: Fréchet distance of segmenter features, per view (real held-out against synthetic; and, as the floor,
  real held-out against real training);
- diversity: mean pairwise MS-SSIM among synthetic cases and among real held-out cases (lower is more diverse);
- alignment: Dice between each generated mask and the real-trained segmenter's prediction on its image (reference:
  the same segmenter on real held-out cases), averaged over the cases where the structure is in the mask or the
  prediction;
- anatomy: per-structure presence rate (the fraction of masks containing the structure), volume fractions
  (Wasserstein distance to the real training masks), connected components, slice-to-slice continuity, and the
  correlation of the mean area-per-slice profile along the slice axis with the real one; the slice-change rate
  (the fraction of foreground voxels whose label changes between neighbouring slices), synthetic and real;
- convergence of the mask model, when it is given: the seed agreement gap per structure on windows of the real
  held-out masks (:mod:`medgen3d.metrics.convergence`; 0 for a converged model, positive for one that draws the
  same average continuation whatever the seed);
- memorisation: SSIM and mask Dice of each synthetic case to its nearest real training case (reference: real
  held-out cases to theirs); a synthetic case closer to the training set than any real held-out case is flagged;
- the refiner's effect: the image measures for the unrefined images too, when given;
- the per-label lookup (:mod:`medgen3d.metrics.lookup`), as the baseline of the image measures: the real held-out
  masks with every voxel set to its label's mean real training intensity. An image stage that does not beat it on
  alignment has not learnt label -> intensity;
- the same lookup of the synthetic masks: what alignment the generated masks allow when every structure has its
  real mean intensity. Its gap to the lookup of the real masks is the mask stage's (a segmenter trained on real
  anatomy reads unreal anatomy worse), its gap to the synthetic rows the image stage's.

Real images are scaled to [-1, 1] each by its own scale, as the networks were trained on them; synthetic images are
read with the scale they were written with (the real data's reference scale), unclipped, so that they are measured
as written.

Written as ``report.json`` (NaN, a measure with nothing to measure, as ``null``), and drawn by
:mod:`medgen3d.metrics.render` as ``report.md`` (``n/a``) and PNG plots.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from medgen3d.data.dataset import DatasetSpec, read_dataset
from medgen3d.data.intensity import IntensityScale, reference_scale, volume_scale
from medgen3d.data.io import DataError, atomic_path, json_safe, write_json
from medgen3d.metrics import anatomy
from medgen3d.metrics.alignment import alignment_dice
from medgen3d.metrics.crops import common_crop
from medgen3d.metrics.diversity import pairwise_ms_ssim
from medgen3d.metrics.fidelity import frechet_distances, view_features
from medgen3d.metrics.lookup import label_means, lookup_images
from medgen3d.metrics.lpips import view_lpips_diversity
from medgen3d.metrics.memorisation import nearest_references
from medgen3d.metrics.render import markdown_report, write_plots
from medgen3d.metrics.segmentation import mean_present
from medgen3d.progress import progress_printer

__all__ = ["Pairs", "load_pairs", "lookup_pairs", "quality_report"]

# Slices the z-profiles are resampled to: enough to show a structure's extent in volumes of a few hundred slices.
Z_PROFILE_DEPTH = 64


class Pairs(NamedTuple):
    """Cases of one dataset: ``(H, W, D)`` float images on the networks' scale ([-1, 1]; read unclipped, a
    synthetic image may reach beyond it) and ``(H, W, D)`` int64 masks, with their ids."""

    images: list[torch.Tensor]
    labels: list[np.ndarray]
    ids: list[str]


def load_pairs(spec: DatasetSpec, splits: Sequence[str], scale: IntensityScale | None = None) -> Pairs:
    """Every case of ``splits`` with an image, mapped to the networks' [-1, 1].

    Args:
        spec: the dataset.
        splits: its splits to read, in this order.
        scale: the scale every image was written with, for a synthetic set (the real data's
            :func:`~medgen3d.data.intensity.reference_scale`): images are mapped with it linearly and unclipped, so
            they are read as written, values beyond the range included. ``None``, for real data: each image by its
            own :func:`~medgen3d.data.intensity.volume_scale` (the CT window, or its own MR percentiles), clipped,
            as the networks were trained. Re-scaling a synthetic MR image by its own percentiles would stretch it
            to the full range whatever its contrast.

    Returns:
        The cases in split order, images ``(H, W, D)`` float32.
    """
    images, labels, ids = [], [], []
    for split in splits:
        for case in spec.split(split):
            if case.image is None:
                continue
            image, label = spec.load_case(case)
            voxels = torch.from_numpy(image.array).float()
            if scale is None:
                images.append(volume_scale(image.array, spec.modality).to_network(voxels))
            else:
                images.append(scale.to_network(voxels, clip=False))
            labels.append(label.array.astype(np.int64))
            ids.append(case.case_id)
    return Pairs(images, labels, ids)


def _mean_rows(rows: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """Mean of each column of ``rows`` ``(N, len(names))`` over the rows where it is not NaN, and the mean of those
    over the columns that have one; NaN where none has."""
    means = mean_present(rows, axis=0) if len(rows) else np.full(len(names), np.nan)
    return {name: float(v) for name, v in zip(names, means)} | {"mean": mean_present(means)}


class _Setting(NamedTuple):
    """How every set of pairs is measured: the real data memorisation compares with, the networks and the options
    (see :func:`quality_report`). One setting measures the synthetic sets and the real reference alike.

    ``features`` keeps each set's slice features by the identity of its image list: the real held-out cases are
    the fidelity reference of every synthetic set and of the lookup and a set of their own, and extracting features
    is most of the report's time, so each set's are extracted once."""

    training: Pairs
    segment: Callable[[torch.Tensor], np.ndarray]
    extract: Callable[[torch.Tensor], torch.Tensor]
    structures: list[str]
    views: Sequence[str]
    max_pairs: int
    seed: int
    min_foreground: float
    features: dict[int, tuple[list[torch.Tensor], dict[str, torch.Tensor]]]

    def view_features(self, pairs: Pairs) -> dict[str, torch.Tensor]:
        """``pairs``' slice features per view (:func:`~medgen3d.metrics.fidelity.view_features`), extracted once."""
        key = id(pairs.images)
        if key not in self.features:  # the list is kept beside its features, so its id is not reused meanwhile
            extracted = view_features(self.extract, pairs.images, self.views, self.min_foreground)
            self.features[key] = (pairs.images, extracted)
        return self.features[key][1]


def _image_measures(
    pairs: Pairs, fidelity_reference: Pairs, setting: _Setting, memorisation: bool = True
) -> dict[str, Any]:
    """Fidelity, diversity, alignment and (unless told not to) memorisation of one set of pairs.

    Args:
        pairs: the set measured: a synthetic set, the per-label lookup of the real held-out masks (the baseline)
            or of the synthetic masks, or the real held-out cases for the reference row.
        fidelity_reference: what the Fréchet distance compares ``pairs`` with: the real held-out cases for a
            synthetic set or the lookup, the real training cases for the reference (the distance two real samples
            have).
        setting: everything else, shared by all the sets.
        memorisation: whether to find each case's nearest training case; the lookup skips it (its images are a
            function of the held-out masks, so their nearness to training cases says nothing of memorising).

    Returns:
        ``{"fidelity_frechet": {view: d, "mean": d}, "diversity_ms_ssim": {"mean", "std"}, "alignment_dice":
        {structure: dice, "mean": dice}, "memorisation": [one entry per case of pairs]}``, without
        ``"memorisation"`` when it is skipped.
    """
    s = setting
    k = len(s.structures) + 1
    measures: dict[str, Any] = {
        "fidelity_frechet": frechet_distances(s.view_features(pairs), s.view_features(fidelity_reference)),
        "diversity_ms_ssim": _ms_ssim_spread(pairs.images, s.max_pairs, s.seed),
        "alignment_dice": _mean_rows(alignment_dice(s.segment, pairs.images, pairs.labels, k), s.structures),
    }
    if not memorisation:
        return measures
    nearest = nearest_references(pairs.images, pairs.labels, s.training.images, s.training.labels, k)
    return measures | {
        "memorisation": [
            {
                "case": case,
                "nearest_training_case": s.training.ids[n.index],
                "image_ssim": n.image_ssim,
                "label_dice": n.label_dice,
            }
            for case, n in zip(pairs.ids, nearest)
        ],
    }


def lookup_pairs(training: Pairs, masks: Pairs, num_classes: int) -> tuple[Pairs, torch.Tensor]:
    """The per-label lookup baseline: ``masks`` rendered with the label means of the ``training`` images.

    Args:
        training: the real training cases, on the networks' scale (as :func:`load_pairs` reads real data).
        masks: the cases whose masks are rendered (the real held-out ones); their images are not used.
        num_classes: ``K``, labels including the background.

    Returns:
        The pairs (``masks``' masks and ids, each image ``(H, W, D)`` its mask looked up in the means) and the
        ``(K,)`` means.
    """
    means = label_means(training.images, training.labels, num_classes)
    return Pairs(lookup_images(masks.labels, means), masks.labels, masks.ids), means


def _ms_ssim_spread(images: Sequence[torch.Tensor], max_pairs: int, seed: int) -> dict[str, float]:
    """Mean and std of the pairwise MS-SSIM among ``images`` (centre-cropped to a common shape)."""
    scores = pairwise_ms_ssim(common_crop(images), max_pairs=max_pairs, seed=seed)
    return {"mean": float(scores.mean()), "std": float(scores.std())}


def quality_report(
    real_dir: str | os.PathLike,
    synthetic_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    segment: Callable[[torch.Tensor], np.ndarray],
    extract: Callable[[torch.Tensor], torch.Tensor],
    unrefined_dir: str | os.PathLike | None = None,
    held_out_splits: Sequence[str] = ("test",),
    views: Sequence[str] = ("axial", "coronal", "sagittal"),
    max_pairs: int = 45,
    seed: int = 0,
    min_foreground: float = 0.05,
    lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    seed_agreement: Callable[[list[np.ndarray]], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Measure the synthetic dataset (and its unrefined images) against the real one; write the report.

    Args:
        real_dir: the real dataset: its training cases are what memorisation and anatomy compare with and what
            the lookup's label means come from, its ``held_out_splits`` what fidelity, diversity and alignment
            compare with.
        synthetic_dir: the refined synthetic pairs, written in the real data's reference scale
            (:func:`~medgen3d.data.intensity.reference_scale`, as the generating workflow writes them).
        out_dir: where ``report.json``, ``report.md`` and the PNGs go.
        segment: a real-trained segmenter, ``(H, W, D)`` image in [-1, 1] -> label map (see ``Segmenter``).
        extract: the feature network, ``(N, 1, a, b)`` slices -> ``(N, F)`` (see ``FeatureExtractor``).
        unrefined_dir: the same cases before refinement, to measure the refiner's effect.
        held_out_splits: the real cases never trained on.
        views: views of the Fréchet distance.
        max_pairs: MS-SSIM pairs per set at most.
        seed: which pairs, when there are more.
        min_foreground: slices with less foreground are left out of the Fréchet distance.
        lpips: a perceptual distance between slice batches (``TorchScriptLPIPS``, from local weights); when given,
            the mean LPIPS between cases per view is reported too, as the paper's diversity measure.
        seed_agreement: the mask model's seed agreement gap, real ``(H, W, D)`` masks -> ``(K - 1,)``
            (:class:`~medgen3d.metrics.convergence.SeedAgreement`); when given, it is measured on the held-out masks
            and reported per structure as ``anatomy["seed_agreement_gap"]``.

    Returns:
        The report's content (as in ``report.json``): ``"sets"`` the synthetic sets' measures, ``"reference"`` the
        real held-out cases', ``"lookup"`` the per-label lookup's (no memorisation; ``"label_means"`` its intensity
        per label on the networks' scale), ``"lookup_synthetic"`` the same lookup of the refined set's masks (no
        memorisation), ``"anatomy"`` the synthetic masks'.
    """
    real, synthetic = read_dataset(real_dir), read_dataset(synthetic_dir)
    if synthetic.labels != real.labels:
        raise DataError(
            f"{synthetic.path('dataset.json')}: labels {synthetic.labels} differ from the real {real.labels}"
        )
    structures = [real.labels[k] for k in sorted(real.labels) if k != 0]
    training, held_out = load_pairs(real, ("training",)), load_pairs(real, held_out_splits)
    if len(held_out.images) < 2 or len(training.images) < 2:
        raise DataError(
            f"{real.path('dataset.json')}: needs at least 2 training and 2 held-out {held_out_splits} pairs"
        )
    # Synthetic images were written with the real data's reference scale: read back with it, they are measured as
    # generated rather than re-stretched by their own percentiles.
    scale = reference_scale(real)
    sets = {"refined": load_pairs(synthetic, ("training", "validation", "test"), scale)}
    if unrefined_dir is not None:
        sets["unrefined"] = load_pairs(read_dataset(unrefined_dir), ("training", "validation", "test"), scale)
    if len(sets["refined"].images) < 2:
        raise DataError(f"{synthetic.path('dataset.json')}: needs at least 2 synthetic pairs to measure")
    setting = _Setting(training, segment, extract, structures, views, max_pairs, seed, min_foreground, {})
    report: dict[str, Any] = {
        "real": str(real.root),
        "synthetic": str(synthetic.root),
        "counts": {"training": len(training.ids), "held_out": len(held_out.ids), "synthetic": len(sets["refined"].ids)},
        "features": getattr(extract, "description", type(extract).__name__),
        "sets": {},
    }
    progress = progress_printer("quality report")
    steps = len(sets) + 3
    for done, (name, pairs) in enumerate(sets.items()):
        progress(done, steps, f"measuring the {name} synthetic pairs")
        report["sets"][name] = _image_measures(pairs, held_out, setting)
    progress(steps - 3, steps, "measuring the per-label lookup of the real held-out masks (the baseline)")
    lookup, means = lookup_pairs(training, held_out, len(structures) + 1)
    # Beside "reference", not in "sets": readers take every entry of "sets" for a synthetic set.
    report["lookup"] = _image_measures(lookup, held_out, setting, memorisation=False)
    report["lookup"]["label_means"] = {real.labels[k]: float(m) for k, m in zip(sorted(real.labels), means)}
    progress(steps - 2, steps, "measuring the per-label lookup of the synthetic masks (what they allow)")
    masks_lookup = lookup_pairs(training, sets["refined"], len(structures) + 1)[0]
    report["lookup_synthetic"] = _image_measures(masks_lookup, held_out, setting, memorisation=False)
    progress(steps - 1, steps, "measuring real held-out against real training (the reference)")
    report["reference"] = _image_measures(held_out, training, setting)
    if lpips is not None:
        rows = [(report["sets"][name], pairs) for name, pairs in sets.items()]
        lookups = [(report["lookup"], lookup), (report["lookup_synthetic"], masks_lookup)]
        for row, pairs in [*rows, *lookups, (report["reference"], held_out)]:
            row["diversity_lpips"] = view_lpips_diversity(lpips, pairs.images, views, max_pairs, seed=seed)
    report["anatomy"] = _anatomy(sets["refined"].labels, training.labels, structures)
    if seed_agreement is not None:
        progress(steps, steps, "sampling windows of the real held-out masks twice (seed agreement gap)")
        gaps = seed_agreement(held_out.labels)
        report["anatomy"]["seed_agreement_gap"] = {name: float(v) for name, v in zip(structures, gaps)}
    progress(steps, steps, f"writing {out_dir}")
    out = Path(out_dir)
    write_json(out / "report.json", json_safe(report))
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(markdown_report(report))
    write_plots(out, report, structures)
    return report


def _anatomy(synthetic: list[np.ndarray], real: list[np.ndarray], structures: list[str]) -> dict[str, Any]:
    """Per-structure anatomy of the synthetic masks beside the real ones (``{measure: {structure: value}}``, or
    ``{measure: {"synthetic" | "real": {structure: value}}}``), plus the per-volume fractions ``(N, K-1)`` and
    the mean z-profiles (``Z_PROFILE_DEPTH`` values per structure) for the plots.

    ``continuity`` averages over the volumes containing the structure and ``z_profile_correlation`` is NaN where
    a set never contains it: ``presence_rate_*`` is what shows a structure that is missing.
    """
    k = len(structures) + 1
    s, r = anatomy.summarise(synthetic, k), anatomy.summarise(real, k)
    per = lambda values: {name: float(v) for name, v in zip(structures, values)}  # noqa: E731
    z_synthetic = anatomy.mean_z_profile(synthetic, k, Z_PROFILE_DEPTH)
    z_real = anatomy.mean_z_profile(real, k, Z_PROFILE_DEPTH)
    return {
        "fraction_distance": per(anatomy.fraction_distance(s.fractions, r.fractions)[1:]),
        "fractions": {"synthetic": per(s.fractions[:, 1:].mean(0)), "real": per(r.fractions[:, 1:].mean(0))},
        "components": {"synthetic": per(s.components.mean(0)), "real": per(r.components.mean(0))},
        "continuity": {
            "synthetic": per(mean_present(s.continuity, axis=0)),
            "real": per(mean_present(r.continuity, axis=0)),
        },
        "slice_change_rate": {
            "synthetic": mean_present(np.array([anatomy.slice_change_rate(v) for v in synthetic])),
            "real": mean_present(np.array([anatomy.slice_change_rate(v) for v in real])),
        },
        "presence_rate_real": per(r.presence.mean(0)),
        "presence_rate_synthetic": per(s.presence.mean(0)),
        "z_profile_correlation": per(anatomy.profile_correlation(z_synthetic, z_real)),
        "synthetic_fractions": s.fractions[:, 1:].tolist(),
        "real_fractions": r.fractions[:, 1:].tolist(),
        "mean_z_profiles": {
            "synthetic": {name: row.tolist() for name, row in zip(structures, z_synthetic)},
            "real": {name: row.tolist() for name, row in zip(structures, z_real)},
        },
    }
