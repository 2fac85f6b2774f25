"""MC-DPM benchmark on the brain-mni small preset (CPU): training per prediction type, sampler speed and mask quality.

Stages (each writes its part of ``benchmarks/results/mask_mcdpm.json``; rerunning a stage overwrites it):

    train    train the bundle's small preset for a fixed wall-clock budget with x0 ("sample") and noise
             ("epsilon") prediction, into benchmarks/runs/mask_mcdpm/<prediction_type>/
    sample   for each trained model and sampler (DDIM-20, DDIM-50, DDPM-1000): network evaluations and seconds
             per volume, and quality against the real training masks (label-fraction distance, connected
             components, slice-to-slice continuity)
    report   the Markdown table in benchmarks/results/mask_mcdpm.md

    .venv/bin/python benchmarks/mask_mcdpm_benchmark.py train --minutes 10
    .venv/bin/python benchmarks/mask_mcdpm_benchmark.py sample --volumes 4 --ddpm_volumes 2
    .venv/bin/python benchmarks/mask_mcdpm_benchmark.py report
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from pathlib import Path

import fire
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "mask_mcdpm"
RUNS = ROOT / "benchmarks" / "runs" / "mask_mcdpm"
RESULTS = ROOT / "benchmarks" / "results"
DATASET = ROOT / "demo_output" / "brain-mni-small"
PREDICTION_TYPES = ("sample", "epsilon")


def _results() -> dict:
    path = RESULTS / "mask_mcdpm.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _save(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mask_mcdpm.json").write_text(json.dumps(results, indent=2) + "\n")


def _ensure_dataset() -> None:
    if not (DATASET / "dataset.json").exists():
        from medgen3d.data.brain_mni import build_brain_mni

        build_brain_mni(DATASET, preset="small")


def _workflow(configs: list[str], bundle_root: Path, **overrides):
    """A bundle workflow over ``configs`` (each stands alone) and the brain preset, initialised."""
    from medgen3d.pipeline.stages import StageBundle

    # the brain's CPU preset (64 x 80 slices) is what these results were measured at
    stage = StageBundle(BUNDLE, Path(bundle_root) / "models", Path(bundle_root) / "eval", overlays=["brain.json"])
    workflow = stage.workflow(configs, bundle_root=str(bundle_root), dataset_dir=str(DATASET), **overrides)
    workflow.initialize()
    return workflow


def train(minutes: float = 10.0, prediction_types: tuple[str, ...] = PREDICTION_TYPES) -> None:
    """Train each prediction type for ``minutes`` of wall-clock time."""
    from ignite.engine import Events
    from ignite.handlers import TimeLimit

    torch.set_num_threads(2)
    _ensure_dataset()
    results = _results()
    for kind in prediction_types:
        run = RUNS / kind
        workflow = _workflow(["train.json"], run, prediction_type=kind, max_iterations=10**6, val_interval=500)
        trainer = workflow.parser.get_parsed_content("train#trainer")
        losses: list[float] = []
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
        trainer.add_event_handler(Events.ITERATION_COMPLETED, TimeLimit(limit_sec=int(minutes * 60)))
        start = time.perf_counter()
        workflow.run()
        seconds = time.perf_counter() - start
        # TimeLimit stops mid-epoch: save the final weights explicitly
        for handler in workflow.parser.get_parsed_content("train#handlers"):
            if hasattr(handler, "save") and hasattr(handler, "model_path"):
                handler.save(trainer)
        smoothed = [float(np.mean(losses[max(0, i - 50) : i + 1])) for i in range(len(losses))]
        results.setdefault("train", {})[kind] = {
            "seconds": round(seconds, 1),
            "iterations": len(losses),
            "seconds_per_iteration": round(seconds / max(len(losses), 1), 3),
            "loss_first": round(smoothed[0], 4) if smoothed else None,
            "loss_last_50": round(smoothed[-1], 4) if smoothed else None,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        _save(results)
        print(f"{kind}: {results['train'][kind]}", file=sys.stderr)


def _real_summary(num_classes: int):
    from medgen3d.data.dataset import read_dataset
    from medgen3d.metrics.anatomy import summarise

    spec = read_dataset(DATASET)
    volumes = [spec.load_case(c)[1].array for c in spec.training]
    return summarise(volumes, num_classes)


def _quality(synthetic: list[np.ndarray], real, num_classes: int) -> dict:
    from medgen3d.metrics.anatomy import fraction_distance, summarise

    synth = summarise(synthetic, num_classes)
    return {
        "fraction_distance": fraction_distance(synth.fractions, real.fractions).round(4).tolist(),
        "fraction_distance_mean": round(float(fraction_distance(synth.fractions, real.fractions)[1:].mean()), 4),
        "fractions_mean": synth.fractions.mean(0).round(4).tolist(),
        "components_mean": synth.components.mean(0).round(1).tolist(),
        "continuity_mean": np.nanmean(synth.continuity, axis=0).round(3).tolist(),
    }


def sample(volumes: int = 4, ddpm_volumes: int = 2, prediction_types: tuple[str, ...] = PREDICTION_TYPES) -> None:
    """Time the samplers and measure mask quality for every trained model."""
    from medgen3d.data.io import load_nifti

    torch.set_num_threads(2)
    results = _results()
    num_classes = 5
    real = _real_summary(num_classes)
    results["real"] = {
        "fractions_mean": real.fractions.mean(0).round(4).tolist(),
        "components_mean": real.components.mean(0).round(1).tolist(),
        "continuity_mean": np.nanmean(real.continuity, axis=0).round(3).tolist(),
    }
    samplers = {
        "ddim-20": (["inference.json"], 20, volumes),
        "ddim-50": (["inference.json"], 50, volumes),
        "ddpm-1000": (["inference.json", "inference_ddpm.json"], None, ddpm_volumes),
    }
    for kind in prediction_types:
        run = RUNS / kind
        for name, (configs, steps, count) in samplers.items():
            if count <= 0:
                continue
            out = run / "eval" / name
            shutil.rmtree(out, ignore_errors=True)  # generation skips finished cases: time a fresh run
            overrides = dict(prediction_type=kind, num_cases=count, batch_size=count, synthetic_dir=str(out))
            if steps is not None:
                overrides["num_inference_steps"] = steps
            workflow = _workflow(configs, run, **overrides)
            sampler = workflow.parser.get_parsed_content("sampler")
            start = time.perf_counter()
            workflow.run()
            seconds = time.perf_counter() - start
            synthetic = [load_nifti(p).array for p in sorted((out / "labels").glob("*.nii.gz"))]
            entry = {
                "volumes": len(synthetic),
                "seconds_per_volume": round(seconds / max(len(synthetic), 1), 2),
                "network_evaluations_per_volume": sampler.network_evaluations // max(len(synthetic), 1),
                **_quality(synthetic, real, num_classes),
            }
            results.setdefault("sample", {}).setdefault(kind, {})[name] = entry
            _save(results)
            print(f"{kind} {name}: {entry}", file=sys.stderr)


def report() -> None:
    """Write benchmarks/results/mask_mcdpm.md from the JSON results."""
    results = _results()
    lines = ["# mask_mcdpm benchmark (brain-mni small, CPU, 2 cores)", ""]
    for kind, entry in results.get("train", {}).items():
        lines.append(
            f"- training, {kind} prediction: {entry['iterations']} iterations in {entry['seconds']} s "
            f"({entry['seconds_per_iteration']} s/iteration, batch 8), smoothed loss {entry['loss_first']} -> "
            f"{entry['loss_last_50']}, peak RSS {entry['peak_rss_mb']} MB"
        )
    real = results.get("real")
    lines += [
        "",
        "| model | sampler | volumes | NFE / volume | s / volume | fraction distance (mean over "
        "structures) | components per structure | slice continuity (Dice) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    if real:
        lines.append(
            f"| real training masks | - | 40 | - | - | 0 | {real['components_mean']} | {real['continuity_mean']} |"
        )
    for kind, samplers in results.get("sample", {}).items():
        for name, e in samplers.items():
            lines.append(
                f"| {kind} | {name} | {e['volumes']} | {e['network_evaluations_per_volume']} | "
                f"{e['seconds_per_volume']} | {e['fraction_distance_mean']} | {e['components_mean']} | "
                f"{e['continuity_mean']} |"
            )
    (RESULTS / "mask_mcdpm.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    fire.Fire({"train": train, "sample": sample, "report": report})
