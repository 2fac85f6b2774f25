"""Segmentation scores for the downstream experiment: Dice per structure, and the paper-style result tables.

A result is one (strategy, network, seed, test set) run with its mean Dice per structure over the test cases.
A structure absent from both the prediction and the ground truth of a case has no Dice (NaN); every mean here is
over the cases, structures or seeds where a score exists, and NaN only where none does (``n/a`` in tables).
Results are written as JSON and CSV, as Markdown tables shaped like MedGen3D's Tables 2-4 (one per strategy
family, E2 and E3; rows: strategy and network with their optimiser steps; columns: test set and structure;
cells: mean ± std over seeds; a caption with the number of test cases and seeds) and as a bar chart.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from monai.metrics import DiceMetric
from numpy.typing import ArrayLike

from medgen3d.data.io import atomic_path, json_safe, write_json

__all__ = [
    "dice_per_structure",
    "mean_present",
    "SegmentationResult",
    "summarise",
    "caption",
    "markdown_table",
    "write_results",
]


def dice_per_structure(prediction: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice of each foreground label ``1..K-1`` between two label maps of the same shape.

    A structure absent from both maps scores NaN: there is nothing to measure, and scoring it 1 would let a mean
    over structures or cases hide a structure that is missing everywhere. A structure absent from the truth but
    predicted scores 0. Uses MONAI's ``DiceMetric`` on label maps; its ``ignore_empty=True`` would give NaN to
    both cases (it only looks at the truth), so ``ignore_empty=False`` is used (1 and 0) and the 1s of
    structures absent from both are set to NaN.

    Args:
        prediction: ``(H, W, D)`` labels ``0..K-1``.
        truth: ``(H, W, D)`` labels ``0..K-1``.
        num_classes: ``K``, background included.

    Returns:
        ``(K - 1,)`` float64 in [0, 1], NaN for structures absent from both maps.
    """
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from the ground truth's {truth.shape}")
    metric = DiceMetric(include_background=False, reduction="none", num_classes=num_classes, ignore_empty=False)
    prediction, truth = np.asarray(prediction, dtype=np.int64), np.asarray(truth, dtype=np.int64)
    as_batch = lambda x: torch.as_tensor(x)[None, None]  # noqa: E731
    dice = metric(as_batch(prediction), as_batch(truth))[0].double().numpy()
    present = lambda x: np.bincount(x.ravel(), minlength=num_classes)[1:num_classes] > 0  # noqa: E731
    dice[~(present(prediction) | present(truth))] = np.nan
    return dice


def mean_present(values: ArrayLike, axis: int | None = None) -> np.ndarray | float:
    """Mean over the entries that are not NaN (the structures or cases where a score exists).

    NaN where every entry is NaN, without NumPy's "mean of empty slice" warning: that is an expected outcome
    (a structure absent from every case), not a fault. ``None`` entries (JSON ``null``) count as NaN.

    Args:
        values: any array of scores.
        axis: the axis to average over; ``None`` for all.

    Returns:
        The means (a float when ``axis`` is ``None``).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(np.asarray(values, dtype=np.float64), axis=axis)
    return float(means) if axis is None else means


@dataclass(frozen=True)
class SegmentationResult:
    """Mean Dice per structure of one trained model on one test set (NaN for a structure no test case scores)."""

    strategy: str
    network: str
    seed: int
    test_set: str
    dice: Mapping[str, float]
    cases: int = 0  # test cases scored
    steps: str = ""  # optimiser steps of the model, "pre-training + fine-tuning" for a fine-tuned one

    @property
    def mean(self) -> float:
        """Mean Dice over the structures that have a score; NaN if none has."""
        return mean_present(list(self.dice.values()))


def summarise(results: Sequence[SegmentationResult]) -> dict[tuple[str, str, str], dict[str, tuple[float, float]]]:
    """Mean and standard deviation over seeds: ``{(strategy, network, test_set): {structure: (mean, std)}}``,
    with ``"mean"`` (the mean over structures) as one more structure.

    Both are over the seeds whose score is not NaN; ``(nan, nan)`` where no seed has one.
    """
    groups: dict[tuple[str, str, str], list[SegmentationResult]] = defaultdict(list)
    for result in results:
        groups[(result.strategy, result.network, result.test_set)].append(result)
    summary = {}
    for key, runs in groups.items():
        structures = list(runs[0].dice)
        values = {s: [r.dice[s] for r in runs] for s in structures}
        values["mean"] = [r.mean for r in runs]
        summary[key] = {s: _mean_std(v) for s, v in values.items()}
    return summary


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation of the non-NaN ``values``."""
    mean = mean_present(values)
    return mean, float(np.sqrt(mean_present((np.asarray(values, dtype=np.float64) - mean) ** 2)))


def _cell(mean: float, std: float) -> str:
    return "n/a" if np.isnan(mean) else f"{mean:.3f} ± {std:.3f}"


def _family(strategy: str) -> str:
    """The table a strategy belongs to: ``E2-3`` -> ``E2`` (MedGen3D's Tables 2-3), ``E3-1`` -> ``E3`` (Table 4)."""
    return strategy.split("-")[0]


def caption(results: Sequence[SegmentationResult]) -> str:
    """What the tables average over: the test cases of each test set and the seeds."""
    test_sets = list(dict.fromkeys(r.test_set for r in results))
    cases = ", ".join(f"{t} {max(r.cases for r in results if r.test_set == t)}" for t in test_sets)
    seeds = sorted({r.seed for r in results})
    return (
        f"Dice per structure on held-out cases (test cases: {cases}), mean ± std over {len(seeds)} seed(s) "
        f"({', '.join(map(str, seeds))}). A structure absent from both the prediction and the reference of a case "
        "is left out of that case's mean (n/a where no case has it). Steps: optimiser steps, pre-training + "
        "fine-tuning for a fine-tuned strategy."
    )


def markdown_table(results: Sequence[SegmentationResult]) -> str:
    """:func:`caption`, then one table per strategy family (E2, E3), laid out like MedGen3D Tables 2-4.

    Rows: strategy, network and steps; columns: each test set's structures and mean; cells: ``mean ± std`` over
    seeds; ``n/a`` where no seed has a score, ``–`` where a run is missing."""
    summary = summarise(results)
    test_sets = list(dict.fromkeys(r.test_set for r in results))
    structures = {t: [*next(r for r in results if r.test_set == t).dice, "mean"] for t in test_sets}
    steps = {(r.strategy, r.network): r.steps for r in results}
    header = ["strategy", "network", "steps"] + [f"{t}: {s}" for t in test_sets for s in structures[t]]
    lines = [caption(results)]
    rows = list(dict.fromkeys((r.strategy, r.network) for r in results))
    for family in dict.fromkeys(_family(s) for s, _ in rows):
        lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for strategy, network in (row for row in rows if _family(row[0]) == family):
            cells = [strategy, network, steps[(strategy, network)] or "–"]
            for t in test_sets:
                scores = summary.get((strategy, network, t))
                cells += [_cell(*scores[s]) if scores else "–" for s in structures[t]]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _bar_chart(path: Path, results: Sequence[SegmentationResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(results)
    test_sets = list(dict.fromkeys(r.test_set for r in results))
    rows = list(dict.fromkeys((r.strategy, r.network) for r in results))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(rows) * len(test_sets)), 4.5))
    width = 0.8 / len(test_sets)
    for i, test_set in enumerate(test_sets):
        means = [summary.get((s, n, test_set), {"mean": (np.nan, 0.0)})["mean"] for s, n in rows]
        ax.bar(
            np.arange(len(rows)) + i * width,
            [m for m, _ in means],
            width,
            yerr=[0.0 if np.isnan(e) else e for _, e in means],
            capsize=3,
            label=test_set,
        )
    ax.set_xticks(np.arange(len(rows)) + width * (len(test_sets) - 1) / 2)
    ax.set_xticklabels([f"{s}\n{n}" for s, n in rows], fontsize=8)
    ax.set_ylabel("mean Dice over structures (± std over seeds)")
    ax.set_ylim(0, 1)
    ax.legend(title="test set")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def write_results(results: Sequence[SegmentationResult], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``results.json``, ``results.csv`` (one row per run and structure), ``results.md`` and
    ``results.png`` into ``out_dir``; returns the paths by kind. NaN is ``null`` in the JSON and ``nan`` in the
    CSV."""
    if not results:
        raise ValueError("no results to write")
    out = Path(out_dir)
    paths = {kind: out / f"results.{kind}" for kind in ("json", "csv", "md", "png")}
    write_json(paths["json"], json_safe([asdict(r) | {"dice": dict(r.dice), "mean": r.mean} for r in results]))
    with atomic_path(paths["csv"]) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["strategy", "network", "steps", "seed", "test_set", "cases", "structure", "dice"])
        for r in results:
            for structure, value in [*r.dice.items(), ("mean", r.mean)]:
                row = [r.strategy, r.network, r.steps, r.seed, r.test_set, r.cases, structure, f"{value:.6f}"]
                writer.writerow(row)
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text(markdown_table(results))
    _bar_chart(paths["png"], results)
    return paths
