"""The low-data experiment: does synthetic data help a segmenter that has only a handful of annotated scans?

brain-mni small; a 3D UNet trained on the first N real training subjects (validated on the 10 validation subjects
and tested on the 10 test subjects, both untouched, and on the 10 test subjects of ``brain-mni-scanner-b``: other
subjects through another scanner), 3 seeds; every arm trains the same number of optimiser steps
(``pipeline.experiment.StepBudget``). Settings (``--setting``):

- ``same-n-5`` (the headline), ``same-n-10``, ``same-n-2``: the generators (mask, image, refiner; the small
  preset's defaults) are trained on exactly the segmenter's N real training subjects, as a team with N annotated
  scans would train them. Each stage's training record lists the subjects it saw.
- ``generators-40``: the quality benchmark's generators, trained on all 40 real training subjects, with a segmenter
  on 5: the generators saw more anatomy than the segmenter.

Arms, each mixed with the same N real subjects unless it says otherwise:

- ``E2-1`` real only; ``E2-0`` real only, strongly augmented (the baseline synthetic data has to beat);
- ``E2-3`` real + ``--cases`` synthetic pairs of the full pipeline; ``E2-5`` E2-3 fine-tuned on real;
- ``images-only``: the image stages' images of the N real training masks (new appearance, real anatomy);
- ``masks-only``: E2-3's generated masks with the per-label lookup image (real contrast, generated anatomy).

``E2-0`` and ``E2-1`` do not depend on the generators: they run once per N and every setting with that N reports
them. Everything runs under ``benchmarks/runs/low_data/`` and resumes (finished runs and cases are kept);
``report`` writes ``benchmarks/results/low_data_experiment.{json,md,png}`` from every finished setting: per setting
and arm the mean Dice ± std over seeds on each test set, the CPU time of each phase, the ablation and the gain
against the number of real subjects.

    .venv/bin/python benchmarks/low_data_experiment.py run --setting same-n-5
    .venv/bin/python benchmarks/low_data_experiment.py run --setting same-n-10
    .venv/bin/python benchmarks/low_data_experiment.py run --setting generators-40
    .venv/bin/python benchmarks/low_data_experiment.py report

One setting should cost about 75 minutes on the 2-core CPU (an estimate from the quality benchmark's training, 45
minutes, and the previous experiment's segmenter runs, about 1.2 minutes each; not yet measured).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import fire
import numpy as np
import torch
from ablation_sets import images_only_set, masks_only_set
from quality_benchmark import BUNDLES, RESULTS, RUNS, OtherLoad, _machine

RUN = Path(__file__).resolve().parent / "runs" / "low_data"
QUALITY = RUNS / "brain-mni"
SOURCE = QUALITY / "brain-mni-small"  # the quality benchmark's copy of brain-mni small (40 training subjects)
TARGET = "brain-mni-scanner-b"
# setting -> (real subjects of the segmenter, subjects the generators trained on)
SETTINGS = {"same-n-2": (2, 2), "same-n-5": (5, 5), "same-n-10": (10, 10), "generators-40": (5, 40)}
REAL_ARMS = ("E2-0", "E2-1")  # independent of the generators
SYNTHETIC_ARMS = ("E2-3", "E2-5")  # the full pipeline's pairs
ABLATION_ARMS = ("images-only", "masks-only")  # trained as E2-3 with that arm's set
ARMS = (*REAL_ARMS, *SYNTHETIC_ARMS, *ABLATION_ARMS)
GENERATORS = ["mask", "image", "refiner"]
# the segmenter's training at CPU size: 64^3 patches, 2 per volume, validation every 100 steps
SEGMENTER = {"roi_size": [64, 64, 64], "samples_per_volume": 2, "val_interval": 100, "learning_rate": 0.001}


def _timed(times_file: Path, name: str, step) -> Any:
    """Run ``step``; the first run of it that finishes records its seconds with the machine's load seen as it
    started and on average while it ran (a rerun that finds the work done, in seconds, keeps that record)."""
    times = json.loads(times_file.read_text()) if times_file.is_file() else {}
    machine, start = _machine(), time.monotonic()
    during = OtherLoad()
    result = step()
    if name in times:
        return result
    seconds = round(time.monotonic() - start, 1)
    times[name] = {"seconds": seconds, "machine": f"at the start {machine}; while it ran {during.describe()}"}
    times_file.parent.mkdir(parents=True, exist_ok=True)
    times_file.write_text(json.dumps(times, indent=2) + "\n")
    return result


def _workflow(root: Path, overlays: list[str]):
    from medgen3d.pipeline.stages import StageBundle

    return StageBundle(BUNDLES / "medgen3d", root / "models", root / "eval", overlays=overlays)


def _generators(
    real_dir: Path, root: Path, overlays: list[str] | None, stage_overrides: dict[str, Any] | None
) -> tuple[Any, dict[str, Any]]:
    """The workflow bundle whose stages keep their models in ``root/models`` (brain preset unless ``overlays``), and
    the values every one of its configs takes here."""
    common = {"bundle_root": str(root), "stages_dir": str(BUNDLES), "dataset_dir": str(real_dir)}
    if stage_overrides:
        common["stage_overrides"] = stage_overrides
    return _workflow(root, ["brain.json"] if overlays is None else overlays), common


def train_generators(
    real_dir: Path, root: Path, overlays: list[str] | None = None, stage_overrides: dict[str, Any] | None = None
):
    """Train the mask, image and refiner stages on the training split of ``real_dir`` into ``root/models``
    (finished stages are kept); returns the workflow's ``PipelineStages``."""
    workflow, common = _generators(real_dir, root, overlays, stage_overrides)
    workflow.run(["train.json"], **common, train_stages=GENERATORS)
    return pipeline_stages(real_dir, root, overlays, stage_overrides)


def pipeline_stages(
    real_dir: Path, root: Path, overlays: list[str] | None = None, stage_overrides: dict[str, Any] | None = None
):
    """The workflow's ``PipelineStages`` for the generators in ``root/models`` and the real data ``real_dir``."""
    workflow, common = _generators(real_dir, root, overlays, stage_overrides)
    return workflow.workflow(["train.json"], **common).parser.get_parsed_content("stages")


def generate_pairs(
    real_dir: Path,
    root: Path,
    out: Path,
    cases: int,
    overlays: list[str] | None = None,
    stage_overrides: dict[str, Any] | None = None,
) -> Path:
    """``cases`` pairs of the full pipeline from the generators in ``root/models`` into ``out``."""
    workflow, common = _generators(real_dir, root, overlays, stage_overrides)
    workflow.run(["generate.json"], **common, synthetic_dir=str(out), num_cases=cases, preview_cases=2)
    return out


def _experiment(
    out: Path,
    real: Path,
    synthetic: Path,
    target: Path | None,
    strategies: list[str],
    seeds: list[int],
    steps: int,
    segmenter: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The segmentation runs of ``strategies`` (3D UNet, :data:`SEGMENTER` unless ``segmenter`` says otherwise) in
    ``out``, each scored on the held-out split of ``real`` and of ``target`` (unless None); their result rows."""
    workflow = _workflow(out, [])
    test_sets = {"brain-mni": str(real)} | ({TARGET: str(target)} if target is not None else {})
    workflow.run(
        ["experiment.json"],
        bundle_root=str(out),
        stages_dir=str(BUNDLES),
        dataset_dir=str(real),
        synthetic_dir=str(synthetic),
        experiment_dir=str(out / "experiment"),
        strategies=strategies,
        networks=["unet3d"],
        seeds=seeds,
        steps=steps,
        fine_tune_fraction=0.5,
        test_sets=test_sets,
        experiment_overrides=SEGMENTER if segmenter is None else segmenter,
    )
    return json.loads((out / "experiment" / "results.json").read_text())


def _data(subjects: int) -> tuple[Path, Path]:
    """The real subset with ``subjects`` training subjects (validation and test whole) and the transfer test set."""
    import quality_benchmark

    from medgen3d.data.brain_mni import build_brain_mni
    from medgen3d.data.builder import SplitSizes
    from medgen3d.data.subset import subset_dataset

    quality_benchmark._build("brain-mni", SOURCE)
    real = subset_dataset(SOURCE, RUN / f"brain-mni-{subjects}", training=subjects).root
    target = build_brain_mni(RUN / TARGET, "small", SplitSizes(5, 5, 10), seed=1, scanner="b").root
    return real, target


def run(
    setting: str = "same-n-5",
    cases: int = 20,
    seeds: tuple[int, ...] = (0, 1, 2),
    steps: int = 200,
    threads: int = 2,
    arms: tuple[str, ...] = ARMS,
) -> None:
    """Train the generators of ``setting`` (unless they exist), build every arm's synthetic set and train and score
    the segmenters of ``arms``; each phase is timed into ``runs/low_data/<setting>/timings.json``."""
    import quality_benchmark

    if setting not in SETTINGS:
        raise SystemExit(f"--setting must be one of {list(SETTINGS)}, got {setting!r}")
    arms = (arms,) if isinstance(arms, str) else tuple(arms)
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise SystemExit(f"--arms: unknown arms {unknown}; choose from {list(ARMS)}")
    torch.set_num_threads(threads)
    subjects, _ = SETTINGS[setting]
    root = RUN / setting
    times = root / "timings.json"
    real, target = _data(subjects)
    if setting == "generators-40":
        generators = QUALITY
        _timed(times, "generators", lambda: quality_benchmark.run("brain-mni", train_only=",".join(GENERATORS)))
        dataset = SOURCE
    else:
        generators, dataset = root, real
        _timed(times, "generators", lambda: train_generators(real, root))
    stages = pipeline_stages(dataset, generators)
    seeds = list(seeds)

    def experiment(folder: Path, synthetic: Path, strategies: tuple[str, ...]) -> list[dict[str, Any]]:
        return _experiment(folder, real, synthetic, target, list(strategies), seeds, steps)

    if set(arms) & set(REAL_ARMS):  # shared by every setting with this many real subjects
        rows = _timed(times, "real arms", lambda: experiment(RUN / f"real-{subjects}", real, REAL_ARMS))
        _write_rows(root / "arms" / "real.json", rows)
    if set(arms) & {*SYNTHETIC_ARMS, "masks-only"}:
        both = _timed(times, "synthetic pairs", lambda: generate_pairs(dataset, generators, root / "synthetic", cases))
    if set(arms) & set(SYNTHETIC_ARMS):
        rows = _timed(times, "E2-3, E2-5", lambda: experiment(root / "both", both, SYNTHETIC_ARMS))
        _write_rows(root / "arms" / "both.json", rows)
    builders = {
        "images-only": lambda: images_only_set(stages, real, root / "images-only" / "pairs").root,
        "masks-only": lambda: masks_only_set(both, real, root / "masks-only" / "pairs").root,
    }
    for arm in ABLATION_ARMS:
        if arm in arms:
            pairs = _timed(times, f"{arm} set", builders[arm])
            rows = _timed(times, arm, lambda: experiment(root / arm, pairs, ("E2-3",)))
            _write_rows(root / "arms" / f"{arm}.json", [row | {"strategy": arm} for row in rows])
    report()


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2) + "\n")


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """arm -> test set -> ``{"mean", "std", "seeds", "structures": {name: mean}}`` of the per-seed mean Dice."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    keys = sorted({(r["strategy"], r["test_set"]) for r in rows})
    for arm, test_set in keys:
        runs = [r for r in rows if r["strategy"] == arm and r["test_set"] == test_set]
        means = np.array([r["mean"] for r in runs], dtype=float)
        names = list(runs[0]["dice"])
        summary.setdefault(arm, {})[test_set] = {
            "mean": float(np.nanmean(means)),
            "std": float(np.nanstd(means)),
            "seeds": sorted(int(r["seed"]) for r in runs),
            "structures": {n: float(np.nanmean([np.nan if r["dice"][n] is None else r["dice"][n] for r in runs]))
                           for n in names},
        }
    return summary


def report() -> dict[str, Any] | None:
    """Write ``results/low_data_experiment.{json,md,png}`` from every setting with finished arms."""
    settings = {}
    for setting, (subjects, generator_subjects) in SETTINGS.items():
        files = sorted((RUN / setting / "arms").glob("*.json"))
        if not files:
            continue
        rows = [row for f in files for row in json.loads(f.read_text())]
        times = RUN / setting / "timings.json"
        settings[setting] = {
            "real_training_subjects": subjects,
            "generator_training_subjects": generator_subjects,
            "timings": json.loads(times.read_text()) if times.is_file() else {},
            "runs": rows,
        }
    if not settings:
        print("no finished setting yet: run one first (see the module docstring)")
        return None
    results = {
        "segmenter": {"network": "unet3d", **SEGMENTER},
        "test_sets": ["brain-mni", TARGET],
        "settings": settings,
        "summary": {name: summarise(s["runs"]) for name, s in settings.items()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "low_data_experiment.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "low_data_experiment.md").write_text(markdown(results))
    plot(results, RESULTS / "low_data_experiment.png")
    print((RESULTS / "low_data_experiment.md").read_text())
    return None  # the results are in the files just printed (fire would print a returned dict in full)


def _cell(entry: dict[str, Any] | None) -> str:
    return "–" if entry is None else f"{entry['mean']:.3f} ± {entry['std']:.3f}"


def markdown(results: dict[str, Any]) -> str:
    """One table per setting (arm by test set, mean Dice ± std over seeds) under what was trained on what."""
    lines = [
        f"Low-data experiment, brain-mni small: {results['segmenter']['network']} segmenter (settings "
        f"{ {k: v for k, v in results['segmenter'].items() if k != 'network'} }), the same optimiser steps for every "
        "arm, mean Dice over the structures of each held-out case, mean ± std over seeds. Test sets: brain-mni's 10 "
        f"test subjects and {TARGET}'s 10 (other subjects through another scanner, never trained on).",
        "",
    ]
    descriptions = {
        "E2-0": "real only, strongly augmented",
        "E2-1": "real only",
        "E2-3": "real + synthetic pairs (full pipeline)",
        "E2-5": "E2-3 fine-tuned on real",
        "images-only": "real + generated images of the real masks",
        "masks-only": "real + generated masks with the lookup image",
    }
    for name, setting in results["settings"].items():
        summary = results["summary"][name]
        minutes = "; ".join(_phase_time(k, v) for k, v in setting["timings"].items())
        lines += [
            f"### {name}: segmenter on {setting['real_training_subjects']} real subjects, generators trained on "
            f"{setting['generator_training_subjects']}",
            "",
            f"CPU time: {minutes or 'not recorded'}.",
            "",
            f"| arm | what | brain-mni | {TARGET} |",
            "|---|---|---|---|",
        ]
        for arm in ARMS:
            if arm in summary:
                tests = summary[arm]
                lines.append(
                    f"| {arm} | {descriptions[arm]} | {_cell(tests.get('brain-mni'))} | {_cell(tests.get(TARGET))} |"
                )
        lines.append("")
    return "\n".join(lines)


def _phase_time(name: str, timing: dict[str, Any]) -> str:
    """One phase's CPU time for the results page; a phase that found its work done elsewhere (the quality
    benchmark's generators, another setting's real arms) took under a second and says so."""
    if timing["seconds"] < 1.0:
        return f"{name} reused (done by an earlier run)"
    return f"{name} {timing['seconds'] / 60:.1f} min ({timing['machine']})"


def plot(results: dict[str, Any], path: Path) -> None:
    """Left: brain-mni Dice of the headline arms against the real subjects (same-N settings). Right: each setting's
    arms on brain-mni."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, settings = results["summary"], results["settings"]
    same_n = sorted((s["real_training_subjects"], name) for name, s in settings.items() if name.startswith("same-n"))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for arm in ("E2-1", "E2-0", "E2-3", "E2-5"):
        points = [(n, summary[name][arm]["brain-mni"]) for n, name in same_n if arm in summary[name]]
        if points:
            x = [n for n, _ in points]
            means, stds = [p["mean"] for _, p in points], [p["std"] for _, p in points]
            left.errorbar(x, means, stds, marker="o", capsize=3, label=arm)
    left.set_xticks([n for n, _ in same_n])  # whole subjects only
    left.set_xlabel("real training subjects (generators trained on the same)")
    left.set_ylabel("mean Dice, brain-mni test")
    left.legend(fontsize=8)
    left.set_title("gain against real data", fontsize=10)
    names = list(settings)
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        arms = [a for a in ARMS if a in summary[name]]
        x = [ARMS.index(a) + i * width for a in arms]
        right.bar(x, [summary[name][a]["brain-mni"]["mean"] for a in arms], width,
                  yerr=[summary[name][a]["brain-mni"]["std"] for a in arms], label=name, capsize=2)
    right.set_xticks([i + 0.4 - width / 2 for i in range(len(ARMS))], ARMS, fontsize=8)
    right.set_ylabel("mean Dice, brain-mni test")
    right.set_ylim(bottom=0)
    right.legend(fontsize=8)
    right.set_title("arms per setting", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    fire.Fire({"run": run, "report": report})
