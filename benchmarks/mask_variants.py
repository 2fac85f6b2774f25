"""Which training choices make the MC-DPM learn anatomy fastest: variants of mask_mcdpm at an equal budget.

Every variant trains the bundle's small preset on brain-mni small for the same number of iterations (the cost of an
iteration is the same for all of them: the Dice term and the EMA update are a few milliseconds, the seconds are
recorded), then samples the same number of volumes with the same seed, from the EMA weights and from the raw
weights of the same run, and is scored against the real training masks with the quality report's anatomy measures:
presence rate, volume fraction, connected components, slice continuity and z-profile correlation per structure.

    .venv/bin/python benchmarks/mask_variants.py train --iterations 600      # resumable, one variant after another
    .venv/bin/python benchmarks/mask_variants.py sample --volumes 8
    .venv/bin/python benchmarks/mask_variants.py report
    .venv/bin/python benchmarks/mask_variants.py rescore    # score the samples on disk again (measures changed)

Results: ``benchmarks/results/mask_variants.{json,md}`` and ``mask_variants.png`` (mid-coronal and mid-sagittal
planes of two samples per variant beside two real masks).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import fire
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mask_stage import structure_measures  # noqa: E402  (its successor's, the same measures)

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "mask_mcdpm"
RUNS = ROOT / "benchmarks" / "runs" / "mask_variants"
RESULTS = ROOT / "benchmarks" / "results"
DATASET = ROOT / "demo_output" / "brain-mni-small"

# Each variant adds one choice to the one before it, so each row shows what that choice adds.
CONSTANT_LR = {"warmup_iterations": 0, "final_lr_fraction": 1.0}
VARIANTS: dict[str, dict] = {
    "baseline": {**CONSTANT_LR, "dice_weight": 0.0, "flip_prob": 0.0, "position_mode": "add"},
    "+schedule": {"dice_weight": 0.0, "flip_prob": 0.0, "position_mode": "add"},
    "+dice": {"dice_weight": 1.0, "flip_prob": 0.0, "position_mode": "add"},
    "+flip": {"dice_weight": 1.0, "flip_prob": 0.5, "position_mode": "add"},
    "+concat": {"dice_weight": 1.0, "flip_prob": 0.5, "position_mode": "concat"},
}
WEIGHTS = ("ema", "model")


def _record(name: str, step: str) -> Path:
    """Each variant's results are its own file, so variants can run in parallel processes."""
    return RUNS / name / f"{step}_result.json"


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _write(path: Path, entry: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entry, indent=2) + "\n")


def _results() -> dict:
    """Every variant's records, gathered."""
    results: dict = {"train": {}, "sample": {}}
    for name in VARIANTS:
        for step in ("train", "sample"):
            entry = _read(_record(name, step))
            if entry is not None:
                results[step][name] = entry
    return results


def _workflow(configs: list[str], bundle_root: Path, **overrides):
    from medgen3d.pipeline.stages import StageBundle

    # the brain's CPU preset (64 x 80 slices) is what these results were measured at
    stage = StageBundle(BUNDLE, Path(bundle_root) / "models", Path(bundle_root) / "eval", overlays=["brain.json"])
    workflow = stage.workflow(configs, bundle_root=str(bundle_root), dataset_dir=str(DATASET), **overrides)
    workflow.initialize()
    return workflow


def _ensure_dataset() -> None:
    if not (DATASET / "dataset.json").exists():
        from medgen3d.data.brain_mni import build_brain_mni

        build_brain_mni(DATASET, preset="small")


def _load() -> str:
    """The machine's load when a step starts: 'idle' when the 1-minute load average is under one core."""
    return "idle" if os.getloadavg()[0] < 1.0 else f"shared (load {os.getloadavg()[0]:.1f})"


def train(iterations: int = 600, variants: tuple[str, ...] = tuple(VARIANTS), threads: int = 2) -> None:
    """Train each variant for ``iterations`` (a finished variant is skipped; an interrupted one resumes).

    ``threads``: torch threads; two processes with ``--threads 1`` and disjoint ``--variants`` share two cores
    without slowing each other down by oversubscription.
    """
    torch.set_num_threads(threads)
    _ensure_dataset()
    for name in variants:
        done = _read(_record(name, "train"))
        if done and done["iterations"] == iterations:
            continue
        load = _load()
        workflow = _workflow(
            ["train.json"],
            RUNS / name,
            max_iterations=iterations,
            val_interval=iterations,
            save_interval=50,
            **VARIANTS[name],
        )
        start = time.perf_counter()
        workflow.run()
        seconds = time.perf_counter() - start
        workflow.finalize()
        entry = {
            "iterations": iterations,
            "seconds": round(seconds, 1),
            "seconds_per_iteration": round(seconds / iterations, 3),
            "threads": threads,
            "machine": load,
            "overrides": VARIANTS[name],
        }
        _write(_record(name, "train"), entry)
        print(f"{name}: {entry}", file=sys.stderr, flush=True)


def _real_masks() -> list[np.ndarray]:
    from medgen3d.data.dataset import read_dataset

    spec = read_dataset(DATASET)
    return [spec.load_case(c)[1].array.astype(np.int64) for c in spec.training]


def sample(volumes: int = 8, steps: int = 25, variants: tuple[str, ...] = tuple(VARIANTS), threads: int = 2) -> None:
    """Sample ``volumes`` masks (DDIM-``steps``, seed 0) from each variant's EMA and raw weights and score them."""
    from medgen3d.data.dataset import read_dataset

    torch.set_num_threads(threads)
    real = _real_masks()
    names = [v for k, v in sorted(read_dataset(DATASET).labels.items()) if int(k) > 0]
    for name in variants:
        run = RUNS / name
        record: dict = {}
        state = torch.load(run / "models" / "checkpoint.pt", map_location="cpu", weights_only=True)
        for weights in WEIGHTS:
            path = run / "models" / f"{weights}.pt"
            torch.save(state[weights], path)
            out = run / "eval" / f"samples-{weights}"
            shutil.rmtree(out, ignore_errors=True)
            workflow = _workflow(
                ["inference.json"],
                run,
                checkpoint=str(path),
                synthetic_dir=str(out),
                num_cases=volumes,
                batch_size=volumes,
                num_inference_steps=steps,
                **{k: v for k, v in VARIANTS[name].items() if k == "position_mode"},
            )
            start = time.perf_counter()
            workflow.run()
            seconds = time.perf_counter() - start
            record[weights] = {"sampler": f"DDIM-{steps}", "seconds": round(seconds, 1), "load": _load()}
            record[weights].update(_score(out, real, names))
            _write(_record(name, "sample"), record)
            print(f"{name} {weights}: sampled {volumes} in {seconds:.0f} s", file=sys.stderr, flush=True)
    _montage(variants)


def _score(samples: Path, real: list[np.ndarray], names: list[str]) -> dict:
    from medgen3d.data.io import load_nifti

    synthetic = [load_nifti(p).array.astype(np.int64) for p in sorted((samples / "labels").glob("*.nii.gz"))]
    return {"volumes": len(synthetic), "structures": structure_measures(synthetic, real, names)}


def rescore(variants: tuple[str, ...] = tuple(VARIANTS)) -> None:
    """Score the samples already on disk again (after a change to the measures), without sampling."""
    from medgen3d.data.dataset import read_dataset

    real = _real_masks()
    names = [v for k, v in sorted(read_dataset(DATASET).labels.items()) if int(k) > 0]
    for name in variants:
        record = _read(_record(name, "sample")) or {}
        for weights in record:
            record[weights].update(_score(RUNS / name / "eval" / f"samples-{weights}", real, names))
        _write(_record(name, "sample"), record)


def _montage(variants: tuple[str, ...]) -> None:
    """Mid-coronal and mid-sagittal planes: two real masks, then two EMA samples per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medgen3d.data.io import load_nifti
    from medgen3d.preview import label_colormap

    rows = [("real", v) for v in _real_masks()[:2]]
    for name in variants:
        files = sorted((RUNS / name / "eval" / "samples-ema" / "labels").glob("*.nii.gz"))[:2]
        rows += [(name, load_nifti(f).array) for f in files]
    cmap = label_colormap(5)
    fig, axes = plt.subplots(2, len(rows), figsize=(1.6 * len(rows), 4.2), squeeze=False)
    for col, (title, volume) in enumerate(rows):
        h, w, _ = volume.shape
        for row, plane in enumerate((volume[:, w // 2, :], volume[h // 2, :, :])):
            axes[row, col].imshow(plane.T, cmap=cmap, vmin=0, vmax=4, origin="lower", interpolation="nearest")
            axes[row, col].set_axis_off()
        axes[0, col].set_title(title, fontsize=8)
    fig.suptitle("mask_mcdpm variants at equal iterations: coronal (top) and sagittal (bottom) mid planes", fontsize=9)
    fig.tight_layout()
    fig.savefig(RESULTS / "mask_variants.png", dpi=80)
    plt.close(fig)


def report() -> None:
    """Gather every variant's records into ``benchmarks/results/mask_variants.json`` and write the Markdown."""
    results = _results()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mask_variants.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# mask_mcdpm variants at an equal training budget (brain-mni small, CPU)", ""]
    for name, entry in results["train"].items():
        seconds = f"{entry['seconds']} s ({entry['seconds_per_iteration']} s/iteration, machine {entry['machine']})"
        if entry.get("paused"):
            seconds = f"not timed ({entry['paused']})"
        lines.append(f"- **{name}** `{entry['overrides']}`: {entry['iterations']} iterations, {seconds}")
    samples = results["sample"]
    if not samples:
        (RESULTS / "mask_variants.md").write_text("\n".join(lines) + "\n")
        return
    structures = list(next(iter(next(iter(samples.values())).values()))["structures"])
    lines += [
        "",
        f"{next(iter(next(iter(samples.values())).values()))['volumes']} volumes per row (DDIM-25, seed 0) against "
        "the 40 real training masks. Each cell: present in (fraction of volumes) / volume fraction / components "
        "/ slice continuity / z-profile r.",
        "",
        "| variant | weights | " + " | ".join(structures) + " |",
        "|---|---|" + "---|" * len(structures),
    ]
    first = next(iter(next(iter(samples.values())).values()))["structures"]
    real = [
        f"{m['presence_rate_real']:.2f} / {m['fraction_real']:.3f} / {m['components_real']:.0f} / "
        f"{m['continuity_real']:.2f} / –"
        for m in first.values()
    ]
    lines.append("| real | – | " + " | ".join(real) + " |")
    for name, by_weights in samples.items():
        for weights, entry in by_weights.items():
            cells = [
                f"{m['presence_rate']:.2f} / {m['fraction_synthetic']:.3f} / {m['components_synthetic']:.1f} / "
                f"{_f(m['continuity_synthetic'])} / {_f(m['z_profile_correlation'])}"
                for m in entry["structures"].values()
            ]
            lines.append(f"| {name} | {weights} | " + " | ".join(cells) + " |")
    (RESULTS / "mask_variants.md").write_text("\n".join(lines) + "\n")
    _montage(tuple(samples))


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    fire.Fire({"train": train, "sample": sample, "rescore": rescore, "report": report})
