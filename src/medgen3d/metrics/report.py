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
  correlation of the mean area-per-slice profile along the slice axis with the real one;
- memorisation: SSIM and mask Dice of each synthetic case to its nearest real training case (reference: real
  held-out cases to theirs); a synthetic case closer to the training set than any real held-out case is flagged;
- the refiner's effect: the image measures for the unrefined images too, when given.

Written as ``report.json`` (NaN, a measure with nothing to measure, as ``null``), ``report.md`` (``n/a``) and PNG
plots.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from medgen3d.data.dataset import DatasetSpec, read_dataset
from medgen3d.data.intensity import volume_scale
from medgen3d.data.io import DataError, atomic_path, json_safe, write_json
from medgen3d.metrics import anatomy
from medgen3d.metrics.alignment import alignment_dice
from medgen3d.metrics.crops import common_crop
from medgen3d.metrics.diversity import pairwise_ms_ssim
from medgen3d.metrics.fidelity import frechet_distance, view_frechet_distances, view_slices
from medgen3d.metrics.lpips import view_lpips_diversity
from medgen3d.metrics.memorisation import nearest_references
from medgen3d.metrics.segmentation import mean_present
from medgen3d.progress import progress_printer

__all__ = ["Pairs", "load_pairs", "quality_report", "memorised_cases"]

# Slices the z-profiles are resampled to: enough to show a structure's extent in volumes of a few hundred slices.
Z_PROFILE_DEPTH = 64


class Pairs(NamedTuple):
    """Cases of one dataset: ``(H, W, D)`` images in [-1, 1] and int64 masks, with their ids."""

    images: list[torch.Tensor]
    labels: list[np.ndarray]
    ids: list[str]


def load_pairs(spec: DatasetSpec, splits: Sequence[str]) -> Pairs:
    """Every case of ``splits`` with an image, scaled to [-1, 1] by the dataset's modality."""
    images, labels, ids = [], [], []
    for split in splits:
        for case in spec.split(split):
            if case.image is None:
                continue
            image, label = spec.load_case(case)
            images.append(volume_scale(image.array, spec.modality).to_network(torch.from_numpy(image.array).float()))
            labels.append(label.array.astype(np.int64))
            ids.append(case.case_id)
    return Pairs(images, labels, ids)


def _mean_rows(rows: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """Mean of each column of ``rows`` ``(N, len(names))`` over the rows where it is not NaN, and the mean of those
    over the columns that have one; NaN where none has."""
    means = mean_present(rows, axis=0) if len(rows) else np.full(len(names), np.nan)
    return {name: float(v) for name, v in zip(names, means)} | {"mean": mean_present(means)}


def _image_measures(
    pairs: Pairs,
    held_out: Pairs,
    training: Pairs,
    segment: Callable[[torch.Tensor], np.ndarray],
    extract: Callable[[torch.Tensor], torch.Tensor],
    structures: list[str],
    views: Sequence[str],
    max_pairs: int,
    seed: int,
    min_foreground: float,
) -> dict[str, Any]:
    """Fidelity, diversity, alignment and memorisation of one set of pairs."""
    k = len(structures) + 1
    nearest = nearest_references(pairs.images, pairs.labels, training.images, training.labels, k)
    return {
        "fidelity_frechet": view_frechet_distances(extract, pairs.images, held_out.images, views, min_foreground),
        "diversity_ms_ssim": _ms_ssim_spread(pairs.images, max_pairs, seed),
        "alignment_dice": _mean_rows(alignment_dice(segment, pairs.images, pairs.labels, k), structures),
        "memorisation": [
            {
                "case": case,
                "nearest_training_case": training.ids[n.index],
                "image_ssim": n.image_ssim,
                "label_dice": n.label_dice,
            }
            for case, n in zip(pairs.ids, nearest)
        ],
    }


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
) -> dict[str, Any]:
    """Measure the synthetic dataset (and its unrefined images) against the real one; write the report.

    Args:
        real_dir: the real dataset: its training cases are what memorisation and anatomy compare with, its
            ``held_out_splits`` what fidelity, diversity and alignment compare with.
        synthetic_dir: the refined synthetic pairs.
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

    Returns:
        The report's content (as in ``report.json``).
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
    sets = {"refined": load_pairs(synthetic, ("training", "validation", "test"))}
    if unrefined_dir is not None:
        sets["unrefined"] = load_pairs(read_dataset(unrefined_dir), ("training", "validation", "test"))
    if len(sets["refined"].images) < 2:
        raise DataError(f"{synthetic.path('dataset.json')}: needs at least 2 synthetic pairs to measure")
    shared = (held_out, training, segment, extract, structures, views, max_pairs, seed, min_foreground)
    report: dict[str, Any] = {
        "real": str(real.root),
        "synthetic": str(synthetic.root),
        "counts": {"training": len(training.ids), "held_out": len(held_out.ids), "synthetic": len(sets["refined"].ids)},
        "features": getattr(extract, "description", type(extract).__name__),
        "sets": {},
    }
    progress = progress_printer("quality report")
    steps = len(sets) + 1
    for done, (name, pairs) in enumerate(sets.items()):
        progress(done, steps, f"measuring the {name} synthetic pairs")
        report["sets"][name] = _image_measures(pairs, *shared)
    progress(steps - 1, steps, "measuring real held-out against real training (the reference)")
    report["reference"] = _real_reference(*shared)
    if lpips is not None:
        for name, pairs in [*sets.items(), ("reference", held_out)]:
            row = report["reference"] if name == "reference" else report["sets"][name]
            row["diversity_lpips"] = view_lpips_diversity(lpips, pairs.images, views, max_pairs, seed=seed)
    report["anatomy"] = _anatomy(sets["refined"].labels, training.labels, structures)
    progress(steps, steps, f"writing {out_dir}")
    out = Path(out_dir)
    write_json(out / "report.json", json_safe(report))
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(markdown_report(report))
    _plots(out, report, structures)
    return report


def _real_reference(held_out, training, segment, extract, structures, views, max_pairs, seed, min_foreground):
    """The same measures where real data answers them: real held-out against real training."""
    k = len(structures) + 1
    fidelity = {
        view: frechet_distance(
            torch.cat([extract(view_slices(v, view, min_foreground)) for v in held_out.images]),
            torch.cat([extract(view_slices(v, view, min_foreground)) for v in training.images]),
        )
        for view in views
    }
    fidelity["mean"] = float(np.mean(list(fidelity.values())))
    nearest = nearest_references(held_out.images, held_out.labels, training.images, training.labels, k)
    return {
        "fidelity_frechet": fidelity,
        "diversity_ms_ssim": _ms_ssim_spread(held_out.images, max_pairs, seed),
        "alignment_dice": _mean_rows(alignment_dice(segment, held_out.images, held_out.labels, k), structures),
        "memorisation": [
            {
                "case": case,
                "nearest_training_case": training.ids[n.index],
                "image_ssim": n.image_ssim,
                "label_dice": n.label_dice,
            }
            for case, n in zip(held_out.ids, nearest)
        ],
    }


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


def memorised_cases(report: dict[str, Any], name: str) -> list[str]:
    """Synthetic cases closer (by image SSIM) to a training case than any real held-out case is to its own."""
    ceiling = max(m["image_ssim"] for m in report["reference"]["memorisation"])
    return [m["case"] for m in report["sets"][name]["memorisation"] if m["image_ssim"] > ceiling]


def markdown_report(report: dict[str, Any]) -> str:
    """The report as Markdown tables, one section per measure."""
    names = list(report["sets"])
    columns = ["real held-out (reference)", *names]
    rows = {"real held-out (reference)": report["reference"], **report["sets"]}
    lines = [
        "# Quality report",
        "",
        f"Synthetic `{report['synthetic']}` against real `{report['real']}`: {report['counts']['synthetic']} "
        f"synthetic cases, {report['counts']['held_out']} real held-out, {report['counts']['training']} real "
        "training.",
        "",
        "## Fidelity: Fréchet distance of features (lower is closer to real held-out data)",
        "",
        f"Features: {report.get('features', 'not recorded')}.",
        "",
        "The reference row is real training data against real held-out data: the distance two real samples have.",
        "",
    ]
    views = list(report["reference"]["fidelity_frechet"])
    lines += _table(["set", *views], [[c, *[_f(rows[c]["fidelity_frechet"][v]) for v in views]] for c in columns])
    lines += ["", "## Diversity: mean pairwise MS-SSIM within the set (lower is more diverse)", ""]
    lines += _table(
        ["set", "MS-SSIM mean", "std"],
        [[c, _f(rows[c]["diversity_ms_ssim"]["mean"]), _f(rows[c]["diversity_ms_ssim"]["std"])] for c in columns],
    )
    structures = list(report["reference"]["alignment_dice"])
    if "diversity_lpips" in report["reference"]:
        lines += ["", "## Diversity: mean LPIPS between slices of different cases (higher is more diverse)", ""]
        lpips_views = list(report["reference"]["diversity_lpips"])
        lines += _table(
            ["set", *lpips_views], [[c, *[_f(rows[c]["diversity_lpips"][v]) for v in lpips_views]] for c in columns]
        )
    lines += ["", "## Alignment: Dice of each mask with the real-trained segmenter's prediction on its image", ""]
    lines += _table(
        ["set", *structures], [[c, *[_f(rows[c]["alignment_dice"][s]) for s in structures]] for c in columns]
    )
    a = report["anatomy"]
    lines += ["", "## Anatomy of the synthetic masks against the real training masks", ""]
    lines += _table(
        [
            "structure",
            "fraction real",
            "fraction synthetic",
            "Wasserstein distance",
            "components real",
            "components synthetic",
            "continuity real",
            "continuity synthetic",
            "present in (real)",
            "present in (synthetic)",
            "z-profile r",
        ],
        [
            [
                s,
                _f(a["fractions"]["real"][s]),
                _f(a["fractions"]["synthetic"][s]),
                _f(a["fraction_distance"][s]),
                _f(a["components"]["real"][s], 1),
                _f(a["components"]["synthetic"][s], 1),
                _f(a["continuity"]["real"][s]),
                _f(a["continuity"]["synthetic"][s]),
                _count(a["presence_rate_real"][s], len(a["real_fractions"])),
                _count(a["presence_rate_synthetic"][s], len(a["synthetic_fractions"])),
                _f(a["z_profile_correlation"][s]),
            ]
            for s in a["fraction_distance"]
        ],
    )
    lines += ["", "## Memorisation: similarity to the nearest real training case", ""]
    memo = [
        [
            c,
            _f(np.mean([m["image_ssim"] for m in rows[c]["memorisation"]])),
            _f(max(m["image_ssim"] for m in rows[c]["memorisation"])),
            _f(mean_present([m["label_dice"] for m in rows[c]["memorisation"]])),
        ]
        for c in columns
    ]
    lines += _table(["set", "nearest SSIM mean", "nearest SSIM max", "nearest mask Dice mean"], memo)
    for name in names:
        flagged = memorised_cases(report, name)
        lines += [
            "",
            f"{name}: {len(flagged)} case(s) closer to a training case than any real held-out case"
            + (f": {', '.join(flagged)}" if flagged else ""),
        ]
    return "\n".join(lines) + "\n"


def _f(value: float | None, digits: int = 3) -> str:
    """``value`` to ``digits`` decimals; ``n/a`` for NaN (or ``None``, NaN read back from the JSON)."""
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _count(rate: float, total: int) -> str:
    """A presence rate over ``total`` volumes as ``present/total``."""
    return f"{round(rate * total)}/{total}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _plots(out: Path, report: dict[str, Any], structures: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {"real held-out (reference)": report["reference"], **report["sets"]}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    views = [v for v in report["reference"]["fidelity_frechet"] if v != "mean"]
    width = 0.8 / len(rows)
    for i, (name, row) in enumerate(rows.items()):
        axes[0].bar(np.arange(len(views)) + i * width, [row["fidelity_frechet"][v] for v in views], width, label=name)
    axes[0].set_xticks(np.arange(len(views)) + width * (len(rows) - 1) / 2, views)
    axes[0].set_title("Fréchet distance to real held-out (lower is better)")
    axes[0].legend(fontsize=8)
    fractions = report["anatomy"]
    positions = np.arange(len(structures))
    axes[1].boxplot(np.asarray(fractions["real_fractions"]), positions=positions - 0.2, widths=0.3)
    box = axes[1].boxplot(
        np.asarray(fractions["synthetic_fractions"]), positions=positions + 0.2, widths=0.3, patch_artist=True
    )
    for patch in box["boxes"]:
        patch.set_facecolor("tab:orange")
    axes[1].set_xticks(positions, structures, rotation=20, fontsize=8)
    axes[1].set_title("volume fraction per structure: real (white), synthetic (orange)")
    for name, row in rows.items():
        axes[2].hist([m["image_ssim"] for m in row["memorisation"]], bins=10, range=(0, 1), alpha=0.5, label=name)
    axes[2].set_title("SSIM to the nearest real training case")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out / "report.png") as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    _z_profile_plot(out / "z_profiles.png", report["anatomy"], structures)


def _z_profile_plot(path: Path, anatomy_report: dict[str, Any], structures: list[str]) -> None:
    """Mean area per slice along the slice axis, real against synthetic, one subplot per structure."""
    import matplotlib.pyplot as plt

    if not structures:
        return
    columns = min(4, len(structures))
    rows = -(-len(structures) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.5 * columns, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), structures):
        for set_name, colour in (("real", "tab:blue"), ("synthetic", "tab:orange")):
            values = anatomy_report["mean_z_profiles"][set_name][name]
            ax.plot((np.arange(len(values)) + 0.5) / len(values), values, color=colour, label=set_name)
        ax.set_title(f"{name}: r = {_f(anatomy_report['z_profile_correlation'][name], 2)}", fontsize=9)
        ax.set_xlabel("relative slice position", fontsize=8)
    for ax in axes.ravel()[len(structures) :]:
        ax.set_visible(False)
    axes[0, 0].set_ylabel("mean area fraction", fontsize=8)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
