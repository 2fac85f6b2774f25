"""The quality report as people read it: Markdown tables and PNG plots, drawn from the report's content alone.

The content is what :func:`medgen3d.metrics.report.quality_report` measures, or the same read back from
``report.json`` (where NaN became ``null``): the tables print ``n/a`` for either, so a report can be redrawn from
its JSON without measuring again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medgen3d.data.io import atomic_path
from medgen3d.metrics.alignment import real_looking_alignment
from medgen3d.metrics.segmentation import mean_present

__all__ = ["memorised_cases", "markdown_report", "write_plots"]

REFERENCE = "real held-out (reference)"
LOOKUP = "per-label lookup (baseline)"
LOOKUP_SYNTHETIC = "per-label lookup of the synthetic masks"
REAL_LOOKING = "real-looking images of the synthetic masks (estimate)"


def _image_rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The rows of the image-measure tables by their printed name: the real reference, the per-label lookups of the
    real and of the synthetic masks, then the synthetic sets. Reports written before a lookup was measured have
    none, and are drawn without it."""
    lookups = {name: report.get(key) for key, name in (("lookup", LOOKUP), ("lookup_synthetic", LOOKUP_SYNTHETIC))}
    return {REFERENCE: report["reference"], **{k: v for k, v in lookups.items() if v is not None}, **report["sets"]}


def memorised_cases(report: dict[str, Any], name: str) -> list[str]:
    """Synthetic cases closer (by image SSIM) to a training case than any real held-out case is to its own."""
    ceiling = max(m["image_ssim"] for m in report["reference"]["memorisation"])
    return [m["case"] for m in report["sets"][name]["memorisation"] if m["image_ssim"] > ceiling]


def markdown_report(report: dict[str, Any]) -> str:
    """The report as Markdown tables, one section per measure."""
    names = list(report["sets"])
    rows = _image_rows(report)
    columns = list(rows)
    lines = [
        "# Quality report",
        "",
        f"Synthetic `{report['synthetic']}` against real `{report['real']}`: {report['counts']['synthetic']} "
        f"synthetic cases, {report['counts']['held_out']} real held-out, {report['counts']['training']} real "
        "training.",
        "",
    ]
    if LOOKUP in rows:
        means = ", ".join(f"{name} {_f(m)}" for name, m in rows[LOOKUP].get("label_means", {}).items())
        lines += [
            f"The {LOOKUP} row is the real held-out masks with every voxel set to its label's mean real training "
            "intensity: a synthetic image stage that does not beat it on alignment has not learnt label → intensity."
            + (f" Its means on the networks' [-1, 1] scale: {means}." if means else ""),
            "",
        ]
    if LOOKUP_SYNTHETIC in rows:
        lines += [
            f"The {LOOKUP_SYNTHETIC} row renders the generated masks the same way, every structure at its real "
            f"mean intensity: what alignment they allow. What it loses against the {LOOKUP} row is the masks' (the "
            "real-trained segmenter misreads their anatomy); what the synthetic rows lose against it, the image "
            "stage's.",
            "",
        ]
    lines += [
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
        lpips_columns = [c for c in columns if "diversity_lpips" in rows[c]]
        lines += _table(
            ["set", *lpips_views],
            [[c, *[_f(rows[c]["diversity_lpips"][v]) for v in lpips_views]] for c in lpips_columns],
        )
    lines += ["", "## Alignment: Dice of each mask with the real-trained segmenter's prediction on its image", ""]
    alignment = {c: rows[c]["alignment_dice"] for c in columns}
    if LOOKUP in rows and LOOKUP_SYNTHETIC in rows:
        # derived, not measured: drawn from the three rows it comes from, so older reports show it too
        estimate = real_looking_alignment(alignment[REFERENCE], alignment[LOOKUP], alignment[LOOKUP_SYNTHETIC])
        lookups = {k: alignment[k] for k in (REFERENCE, LOOKUP, LOOKUP_SYNTHETIC)}
        alignment = lookups | {REAL_LOOKING: estimate} | alignment
        lines += [
            f"The {REAL_LOOKING} row is derived from three others: each structure's {LOOKUP_SYNTHETIC} Dice times "
            f"the {REFERENCE} Dice over the {LOOKUP} Dice, i.e. what images that lose what the real images lose "
            "against a lookup would score on the synthetic masks. Synthetic rows below it are short on the image "
            "stage's side; an alignment target above it asks for better masks or images cleaner than real ones.",
            "",
        ]
    lines += _table(
        ["set", *structures], [[c, *[_f(d.get(s)) for s in structures]] for c, d in alignment.items()]
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
    lines += _convergence_lines(a)
    lines += ["", "## Memorisation: similarity to the nearest real training case", ""]
    # The lookup has no memorisation: its images are a function of the held-out masks.
    memo = [
        [
            c,
            _f(np.mean([m["image_ssim"] for m in rows[c]["memorisation"]])),
            _f(max(m["image_ssim"] for m in rows[c]["memorisation"])),
            _f(mean_present([m["label_dice"] for m in rows[c]["memorisation"]])),
        ]
        for c in [REFERENCE, *names]
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
    """A Markdown table, one line per row (cells already formatted)."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _convergence_lines(anatomy_report: dict[str, Any]) -> list[str]:
    """The slice-change rate, synthetic against real, and the mask model's seed agreement gap when measured."""
    rate = anatomy_report.get("slice_change_rate")
    lines = []
    if rate is not None:
        lines += [
            "",
            f"Slice-change rate (foreground voxels whose label changes from one slice to the next): synthetic "
            f"{_f(rate['synthetic'])}, real {_f(rate['real'])}.",
        ]
    gaps = anatomy_report.get("seed_agreement_gap")
    if gaps is not None:
        lines += [
            "",
            "Seed agreement gap (two samples of a window agree with each other minus with the real continuation; "
            "0 when converged): " + ", ".join(f"{name} {_f(v)}" for name, v in gaps.items()) + ".",
        ]
    return lines


def write_plots(out: Path, report: dict[str, Any], structures: list[str]) -> None:
    """``report.png`` (Fréchet distance per view, volume fractions per structure, SSIM to the nearest training
    case) and ``z_profiles.png`` (:func:`_z_profile_plot`) in ``out``."""
    import matplotlib

    matplotlib.use("Agg")  # reports are written on machines without a display
    import matplotlib.pyplot as plt

    rows = _image_rows(report)
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
        if "memorisation" not in row:  # the lookup
            continue
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
