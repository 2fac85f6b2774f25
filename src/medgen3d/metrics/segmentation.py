"""Segmentation scores for the downstream experiment: Dice per structure, and the paper-style result tables.

A result is one (strategy, network, seed, test set) run with its mean Dice per structure over the test cases.
Results are written as JSON and CSV, as a Markdown table shaped like MedGen3D's Tables 2-4 (rows: strategy and
network; columns: test set and structure; cells: mean ± std over seeds) and as a bar chart.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from monai.metrics import DiceMetric

from medgen3d.data.io import atomic_path, write_json

__all__ = ["dice_per_structure", "SegmentationResult", "summarise", "markdown_table", "write_results"]


def dice_per_structure(prediction: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice of each foreground label ``1..K-1`` between two label maps of the same shape.

    A structure absent from both maps scores 1 (nothing to find, nothing found). Uses MONAI's ``DiceMetric`` on
    label maps.

    Returns:
        ``(K - 1,)`` float64.
    """
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from the ground truth's {truth.shape}")
    metric = DiceMetric(include_background=False, reduction="none", num_classes=num_classes, ignore_empty=False)
    as_batch = lambda x: torch.as_tensor(np.asarray(x, dtype=np.int64))[None, None]  # noqa: E731
    return metric(as_batch(prediction), as_batch(truth))[0].double().numpy()


@dataclass(frozen=True)
class SegmentationResult:
    """Mean Dice per structure of one trained model on one test set."""

    strategy: str
    network: str
    seed: int
    test_set: str
    dice: Mapping[str, float]

    @property
    def mean(self) -> float:
        """Mean Dice over the structures."""
        return float(np.mean(list(self.dice.values())))


def summarise(results: Sequence[SegmentationResult]) -> dict[tuple[str, str, str], dict[str, tuple[float, float]]]:
    """Mean and standard deviation over seeds: ``{(strategy, network, test_set): {structure: (mean, std)}}``,
    with ``"mean"`` (the mean over structures) as one more structure."""
    groups: dict[tuple[str, str, str], list[SegmentationResult]] = defaultdict(list)
    for result in results:
        groups[(result.strategy, result.network, result.test_set)].append(result)
    summary = {}
    for key, runs in groups.items():
        structures = list(runs[0].dice)
        values = {s: [r.dice[s] for r in runs] for s in structures}
        values["mean"] = [r.mean for r in runs]
        summary[key] = {s: (float(np.mean(v)), float(np.std(v))) for s, v in values.items()}
    return summary


def markdown_table(results: Sequence[SegmentationResult]) -> str:
    """Rows: strategy and network; columns: each test set's structures and mean; cells: ``mean ± std`` over
    seeds (the layout of MedGen3D Tables 2-4)."""
    summary = summarise(results)
    test_sets = list(dict.fromkeys(r.test_set for r in results))
    rows = list(dict.fromkeys((r.strategy, r.network) for r in results))
    structures = {t: [*next(r for r in results if r.test_set == t).dice, "mean"] for t in test_sets}
    header = ["strategy", "network"] + [f"{t}: {s}" for t in test_sets for s in structures[t]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for strategy, network in rows:
        cells = [strategy, network]
        for t in test_sets:
            scores = summary.get((strategy, network, t))
            cells += [f"{scores[s][0]:.3f} ± {scores[s][1]:.3f}" if scores else "–" for s in structures[t]]
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
            yerr=[e for _, e in means],
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
    ``results.png`` into ``out_dir``; returns the paths by kind."""
    if not results:
        raise ValueError("no results to write")
    out = Path(out_dir)
    paths = {kind: out / f"results.{kind}" for kind in ("json", "csv", "md", "png")}
    write_json(paths["json"], [asdict(r) | {"dice": dict(r.dice), "mean": r.mean} for r in results])
    with atomic_path(paths["csv"]) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["strategy", "network", "seed", "test_set", "structure", "dice"])
        for r in results:
            for structure, value in [*r.dice.items(), ("mean", r.mean)]:
                writer.writerow([r.strategy, r.network, r.seed, r.test_set, structure, f"{value:.6f}"])
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text(markdown_table(results))
    _bar_chart(paths["png"], results)
    return paths
