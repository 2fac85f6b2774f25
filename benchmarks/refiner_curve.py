"""The refiner's effect against its training, on the images the workflow refines today.

The quality benchmark trains sdm_refiner for 150 iterations per view; there the refined images' feature Fréchet
distance is a few percent below the unrefined ones'. This benchmark continues that run's three views to larger
budgets (``--budgets``, iterations per view, each resumed from the one before; the first is the quality benchmark's
own checkpoints, not retrained) and after each budget refines, at each noise level ``t_r`` of ``--noise_steps``:

- ``generated pairs``: the quality benchmark's synthetic pairs as its image generator wrote them (generated masks
  and their images, ``eval/synthetic/unrefined``), refined by sdm_refiner's own ``inference.json`` as the workflow
  refines them (the same seeds, precision and intensity scale) and scored as the quality report scores them:
  feature Fréchet distance to the real held-out images, alignment Dice, and contrast-to-noise of the dataset's
  structure pairs; at the quality benchmark's budget and ``t_r`` this reproduces its refined row;
- ``real masks``: the quality benchmark's generator's images of the real held-out masks, refined as
  ``image_stage.py pipeline`` refines them (case ``i`` draws its noise from seed ``i``) and scored as that script
  scores every row (difference to the real image of the same mask as well).

Each beside the same images unrefined, so the change is the refiner's alone. The results say from which budget
the refiner helps, and what a larger ``t_r`` buys.

    .venv/bin/python benchmarks/quality_benchmark.py run --dataset brain-mni     # first: the stages and their pairs
    .venv/bin/python benchmarks/refiner_curve.py run --dataset brain-mni # --budgets 150,450,1350 --noise_steps 10,20,30
    .venv/bin/python benchmarks/refiner_curve.py report --dataset brain-mni

``run`` keeps its views and each budget's scores in ``benchmarks/runs/refiner_curve/<dataset>/`` and skips what is
finished; ``report`` writes ``benchmarks/results/refiner_curve_<dataset>.{json,md,png}`` (the tables; each measure
against iterations per view, the unrefined value and the real one as lines) and ``_montage.png`` (one generated
pair: its mask, unrefined, and refined at each budget and ``t_r``). On the 2-core CPU an iteration of one view costs
about 0.33 s and refining an 80×96×80 volume along three views about 17 s.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import fire
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from image_stage import (  # noqa: E402  (the sibling benchmarks' judge, generator, paths and helpers)
    DATASETS,
    QUALITY,
    VIEWS,
    Judge,
    _contrast_to_noise,
    _read,
    _write,
    draw_planes,
    generated_images,
    quality_generator,
)
from image_variants import _refine  # noqa: E402
from mask_stage import _checkpoint_iteration  # noqa: E402
from quality_benchmark import BUNDLES, RESULTS, _machine  # noqa: E402

RUNS = QUALITY.parent / "refiner_curve"
SOURCES = ("generated pairs", "real masks")
TARGET = -0.10  # the mark: refined feature FD at least 10% below unrefined


def _unrefined(dataset: str) -> Path:
    """The quality benchmark's synthetic pairs before refinement."""
    return QUALITY / dataset / "eval" / "synthetic" / "unrefined"


def _check(dataset: str) -> dict[str, Any]:
    if dataset not in DATASETS:
        raise SystemExit(f"--dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
    needed = [_unrefined(dataset) / "dataset.json"]
    needed += [QUALITY / dataset / "models" / bundle / "model.pt" for bundle in ("image_vid2vid", "sdm_refiner")]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise SystemExit(f"run `quality_benchmark.py run --dataset {dataset}` first; missing {missing}")
    return DATASETS[dataset]


def _ints(values: int | str | tuple[int, ...]) -> list[int]:
    """``--budgets 150`` arrives as an int, ``150,450`` as a tuple (or a string from Python)."""
    if isinstance(values, int):
        return [values]
    items = values.split(",") if isinstance(values, str) else values
    return sorted(int(v) for v in items)


def _stage(dataset: str, judge: Judge):
    from medgen3d.pipeline.stages import StageBundle

    run = RUNS / dataset
    return StageBundle(
        BUNDLES / "sdm_refiner",
        run / "models",
        run / "eval",
        overlays=DATASETS[dataset]["overlays"],
        overrides={"dataset_dir": str(judge.data)},
    )


def _sources(dataset: str, judge: Judge) -> dict[str, tuple[list[torch.Tensor], list[np.ndarray]]]:
    """Per source: the images to refine ``(H, W, D)`` on the networks' scale, and their masks."""
    from medgen3d.data.dataset import read_dataset
    from medgen3d.data.intensity import reference_scale
    from medgen3d.metrics.report import load_pairs

    # read back with the real data's reference scale, as the quality report reads them: as written
    unrefined = read_dataset(_unrefined(dataset))
    pairs = load_pairs(unrefined, ("training", "validation", "test"), reference_scale(read_dataset(judge.data)))
    generator, size = quality_generator(dataset, judge, RUNS / dataset / "eval" / "image_vid2vid")
    rendered = generated_images(generator, size, judge)
    return {SOURCES[0]: (pairs.images, pairs.labels), SOURCES[1]: (rendered, judge.real.labels)}


def _refined_pairs(dataset: str, stage, models: Path, judge: Judge, budget: int, level: int) -> list[torch.Tensor]:
    """The quality benchmark's unrefined synthetic pairs refined by the stage's ``inference.json`` (the workflow's
    refinement: its seeds, precision and scale), read back with the real data's reference scale; ``(H, W, D)``."""
    from medgen3d.data.dataset import read_dataset
    from medgen3d.data.intensity import reference_scale
    from medgen3d.metrics.report import load_pairs

    out = RUNS / dataset / "eval" / f"refined-{budget:06d}-t{level}"
    # finished cases are kept, so an interrupted refinement resumes
    stage.run(
        ["inference.json"],
        ckpt_dir=str(models),
        pairs_dir=str(_unrefined(dataset)),
        refined_dir=str(out),
        noise_steps=level,
    )
    pairs = load_pairs(read_dataset(out), ("training", "validation", "test"), reference_scale(read_dataset(judge.data)))
    return pairs.images


def _measure(
    judge: Judge, source: str, images: list[torch.Tensor], labels: list[np.ndarray], contrasts: list[tuple[str, str]]
) -> dict[str, Any]:
    """The measures of one source's images: alignment Dice, feature FD to the real held-out images and
    contrast-to-noise for both; the difference to the real image only where the masks are the real ones."""
    from medgen3d.metrics.alignment import alignment_dice
    from medgen3d.metrics.fidelity import view_frechet_distances
    from medgen3d.metrics.segmentation import mean_present

    if source == SOURCES[1]:
        return judge.score(images, contrasts)
    names = {name: value for value, name in judge.labels.items()}
    dice = alignment_dice(judge.segment, images, labels, judge.num_classes)
    return {
        "alignment_dice": float(mean_present(mean_present(dice, axis=0))),
        "feature_fd": view_frechet_distances(judge.extract, images, judge.real.images, VIEWS)["mean"],
        "contrast_to_noise": {
            f"{a} vs {b}": _contrast_to_noise(images, labels, names[a], names[b]) for a, b in contrasts
        },
    }


def run(
    dataset: str = "brain-mni",
    budgets: int | str | tuple[int, ...] = "150,450,1350",
    noise_steps: int | str | tuple[int, ...] = "10,20,30",
    threads: int = 2,
) -> None:
    """Continue the quality benchmark's refiner to each budget (iterations per view); refine and score after each."""
    torch.set_num_threads(threads)
    contrasts = _check(dataset)["contrasts"]
    steps, levels = _ints(budgets), _ints(noise_steps)
    judge = Judge(dataset)
    base = RUNS / dataset
    sources = _sources(dataset, judge)
    if _read(base / "unrefined.json") is None:
        scores = {name: _measure(judge, name, *sources[name], contrasts) for name in SOURCES}
        real = {"real masks": judge.score(judge.real.images, contrasts, real_row=True)}
        _write(base / "unrefined.json", {"scores": scores, "real": real})
    quality_models = QUALITY / dataset / "models" / "sdm_refiner"
    quality_iterations = _checkpoint_iteration(quality_models / VIEWS[0] / "checkpoint.pt")
    if steps[0] < quality_iterations:
        raise SystemExit(f"--budgets: each at least the quality benchmark's {quality_iterations} iterations per view")
    stage = _stage(dataset, judge)
    seconds_before = 0.0
    for budget in steps:
        record = base / f"result-{budget:06d}.json"
        done = _read(record)
        if done is not None and all(str(t) in done["scores"] for t in levels):
            seconds_before = done["training_seconds"]
            continue
        trained = _checkpoint_iteration(base / "models" / VIEWS[0] / "checkpoint.pt")
        if trained > budget and not (base / f"models-{budget:06d}").is_dir():
            raise SystemExit(f"{base / 'models'}: trained to {trained} iterations, beyond {budget}; remove it")
        machine = _machine()
        snapshot = base / f"models-{budget:06d}"  # this budget's views, kept: the training goes on in models/
        if budget == quality_iterations:
            # the first point is the quality benchmark's refiner itself: its checkpoints and its recorded seconds
            shutil.copytree(quality_models, snapshot, dirs_exist_ok=True)
            timing = json.loads((QUALITY / dataset / "timings.json").read_text())["refiner"]
            seconds, machine = timing["seconds"], timing["machine"] + " (the quality benchmark's run)"
        else:
            if _checkpoint_iteration(base / "models" / VIEWS[0] / "checkpoint.pt") == 0:
                shutil.copytree(quality_models, base / "models", dirs_exist_ok=True)
                seconds_before = json.loads((QUALITY / dataset / "timings.json").read_text())["refiner"]["seconds"]
            start = time.perf_counter()
            for view in VIEWS:
                stage.run(["train.json"], view=view, max_iterations=budget, val_interval=budget)
            seconds = seconds_before + time.perf_counter() - start
            shutil.copytree(base / "models", snapshot, dirs_exist_ok=True)
        entry = done or {"iterations": budget, "training_seconds": round(seconds, 1), "machine": machine, "scores": {}}
        for level in levels:
            if str(level) in entry["scores"]:
                continue
            entry["scores"][str(level)] = {}
            for name in SOURCES:
                images, labels = sources[name]
                start = time.perf_counter()
                if name == SOURCES[0]:
                    refined = _refined_pairs(dataset, stage, snapshot, judge, budget, level)
                else:
                    refined = _refine(stage, snapshot, images, judge, level, labels=labels)
                scores = _measure(judge, name, refined, labels, contrasts)
                scores["seconds_per_volume"] = round((time.perf_counter() - start) / len(images), 2)
                entry["scores"][str(level)][name] = scores
                folder = base / "first-case" / name.replace(" ", "-")
                folder.mkdir(parents=True, exist_ok=True)
                torch.save(refined[0].clone(), folder / f"{budget:06d}-t{level}.pt")  # for the montage
            _write(record, entry)
            print(f"{budget} iterations per view, t_r {level}: {entry['scores'][str(level)]}", file=sys.stderr)
        seconds_before = entry["training_seconds"]


def report(dataset: str = "brain-mni") -> None:
    """Write ``benchmarks/results/refiner_curve_<dataset>.{json,md,png}`` and ``_montage.png`` from the runs."""
    contrasts = _check(dataset)["contrasts"]
    base = RUNS / dataset
    unrefined = _read(base / "unrefined.json")
    points = [_read(p) for p in sorted(base.glob("result-*.json"))]
    if unrefined is None or not points:
        raise SystemExit(f"nothing to report in {base}: run `refiner_curve.py run --dataset {dataset}` first")
    results = {
        "dataset": dataset,
        "contrasts": [f"{a} vs {b}" for a, b in contrasts],
        "unrefined": unrefined["scores"],
        "real": unrefined["real"],
        "points": points,
    }
    stem = RESULTS / f"refiner_curve_{dataset}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(results))
    _plot(results, stem.with_suffix(".png"))
    _montage(dataset, results, RESULTS / f"{stem.name}_montage.png")
    print(markdown(results))


def _change(value: float, before: float) -> str:
    return f"{100 * (value - before) / before:+.0f}%"


def markdown(results: dict[str, Any]) -> str:
    pairs, before = results["contrasts"], results["unrefined"]
    real = results["real"]["real masks"]
    lines = [
        f"Refiner against its training on {results['dataset']} small: the quality benchmark's refiner continued "
        "to each budget (iterations per view; training s for the three views, cumulative, the first point the "
        "quality benchmark's own run). Generated pairs: the quality benchmark's synthetic pairs as its image "
        "generator wrote them. Real masks: its generator's images of the 10 real held-out masks. FD: feature "
        "Fréchet distance to the real held-out images; change: against the same images unrefined.",
        "",
        "| refiner | iterations per view | training s | t_r | generated pairs: FD | change | alignment Dice | "
        + " | ".join(f"CNR {p}" for p in pairs)
        + " | real masks: FD | change | alignment Dice | difference to real | "
        + " | ".join(f"CNR {p}" for p in pairs)
        + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(pairs) + "---|---|---|---|" + "---|" * len(pairs),
    ]

    def cells(scores: dict[str, Any], source: str) -> list[str]:
        base = before[source]
        change = "–" if scores is base else _change(scores["feature_fd"], base["feature_fd"])
        out = [f"{scores['feature_fd']:.4f}", change, f"{scores['alignment_dice']:.3f}"]
        if source == SOURCES[1]:
            out.append(f"{scores['mean_abs_difference']:.3f}")
        return out + [_cnr(scores["contrast_to_noise"][p]) for p in pairs]

    lines.append(
        "| unrefined | – | – | – | "
        + " | ".join(cells(before[SOURCES[0]], SOURCES[0]) + cells(before[SOURCES[1]], SOURCES[1]))
        + " |"
    )
    for point in results["points"]:
        for level, scores in point["scores"].items():
            lines.append(
                f"| refined | {point['iterations']} | {point['training_seconds']} | {level} | "
                + " | ".join(cells(scores[SOURCES[0]], SOURCES[0]) + cells(scores[SOURCES[1]], SOURCES[1]))
                + " |"
            )
    lines.append(
        "| real held-out images | – | – | – | – | – | – | "
        + " | ".join("–" for _ in pairs)
        + f" | {real['feature_fd']:.4f} | – | {real['alignment_dice']:.3f} | 0 | "
        + " | ".join(_cnr(real["contrast_to_noise"][p]) for p in pairs)
        + " |"
    )
    machines = sorted({p["machine"] for p in results["points"]})
    lines += [
        "",
        "The real images' FD is to the real training images (two real samples). Training machine: "
        + "; ".join(machines)
        + ".",
    ]
    return "\n".join(lines) + "\n"


def _cnr(value: float | None) -> str:
    return "∞" if value is None else f"{value:.2f}"


def _plot(results: dict[str, Any], path: Path) -> None:
    """FD change and the first contrast-to-noise against iterations per view, one line per ``t_r``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, before = results["points"], results["unrefined"]
    levels = sorted({level for p in points for level in p["scores"]}, key=int)
    pair = results["contrasts"][0]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for level in levels:
        shown = [p for p in points if level in p["scores"]]
        x = [p["iterations"] for p in shown]
        for ax, source in zip(axes[:2], SOURCES):
            base = before[source]["feature_fd"]
            y = [100 * (p["scores"][level][source]["feature_fd"] - base) / base for p in shown]
            ax.plot(x, y, marker="o", label=f"t_r {level}")
        cnr = [p["scores"][level][SOURCES[1]]["contrast_to_noise"][pair] for p in shown]
        axes[2].plot(x, cnr, marker="o", label=f"t_r {level}")
    for ax, source in zip(axes[:2], SOURCES):
        ax.axhline(0, color="grey", lw=1, label="unrefined")
        ax.axhline(100 * TARGET, color="red", ls="--", lw=1, label="10% below unrefined")
        ax.set_title(f"{source}: feature FD change", fontsize=9)
        ax.set_ylabel("% against unrefined")
    axes[2].axhline(results["real"]["real masks"]["contrast_to_noise"][pair], color="black", ls="--", label="real")
    axes[2].axhline(before[SOURCES[1]]["contrast_to_noise"][pair], color="grey", lw=1, label="unrefined")
    axes[2].set_title(f"real masks: CNR {pair}", fontsize=9)
    budgets = sorted({p["iterations"] for p in points})
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.minorticks_off()
        ax.set_xlabel("refiner iterations per view")
        ax.legend(fontsize=7)
    fig.suptitle(f"{results['dataset']}: the refiner's effect against its training", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _montage(dataset: str, results: dict[str, Any], path: Path) -> None:
    """The first generated pair, mid-axial and mid-coronal: its mask, unrefined, and each budget and ``t_r``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medgen3d.data.dataset import read_dataset
    from medgen3d.data.intensity import reference_scale
    from medgen3d.metrics.report import load_pairs

    real = read_dataset(QUALITY / dataset / f"{dataset}-small")
    unrefined = load_pairs(
        read_dataset(QUALITY / dataset / "eval" / "synthetic" / "unrefined"),
        ("training", "validation", "test"),
        reference_scale(real),
    )
    label, image = unrefined.labels[0], unrefined.images[0].numpy()
    panels = [("mask", label), ("unrefined", image)]
    folder = RUNS / dataset / "first-case" / SOURCES[0].replace(" ", "-")
    for point in results["points"]:
        for level in point["scores"]:
            file = folder / f"{point['iterations']:06d}-t{level}.pt"
            if file.exists():
                panels.append((f"{point['iterations']}/view, t_r {level}", torch.load(file, weights_only=True).numpy()))
    fig = draw_planes(panels, len(real.labels), VIEWS[:2])
    fig.suptitle(f"{dataset}: one generated pair refined at each budget (grey scale [-1, 1])", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    fire.Fire({"run": run, "report": report})
