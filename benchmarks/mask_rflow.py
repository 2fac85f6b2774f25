"""Rectified flow against DDPM for the MC-DPM: equal training, then DDIM-50 against a few rectified-flow steps.

The DDPM mask model is the quality benchmark's (``benchmarks/runs/quality/brain-mni/models/mask_mcdpm``, trained by
``quality_benchmark.py`` with the bundle's defaults and ``brain.json``) when it has finished; otherwise one is trained
here with the same settings. The rectified-flow model is trained with the same settings, dataset, seed and number of
iterations, only ``noise_schedule`` set to ``rflow``. Then, in one process, one after the other on the same
machine, the same number of masks (seed 0, the same depths and start positions) is generated

- by the DDPM model with DDIM-50 (the bundle's default sampler, the reference), and
- by the rectified-flow model with each of ``--steps`` (default 5 and 10),

and each sampler is scored: seconds and network evaluations (subsequence forwards) per volume, their ratio to
DDIM-50, and the quality benchmark's anatomy measures per structure against the real training masks (presence
rate, volume fraction, connected components, slice continuity, z-profile correlation). The machine's load is
named for every timed step, as the quality benchmark does.

    .venv/bin/python benchmarks/mask_rflow.py run              # train (resumable), compare, write the results
    .venv/bin/python benchmarks/mask_rflow.py train            # only the training
    .venv/bin/python benchmarks/mask_rflow.py compare --volumes 8 --steps 5,10
    .venv/bin/python benchmarks/mask_rflow.py run --smoke      # tiny data and networks: the script end to end
    .venv/bin/python benchmarks/mask_rflow.py montage          # results/mask_rflow.png, real beside each sampler

On an idle 2-core CPU: training the rectified-flow model takes about 20 minutes (1400 iterations, as long as the
quality benchmark's mask model), 20 more when the DDPM model must be trained here too (and a minute or two to build
brain-mni small); the comparison about 3 minutes (8 volumes: DDIM-50 near 12 s per volume, 10 rectified-flow steps
near 2.5 s); the smoke run about a minute.

Results: ``benchmarks/results/mask_rflow.{json,md}``. Runs live under ``benchmarks/runs/mask_rflow/`` (a smoke run
under its ``smoke/`` folder, results included, so it never touches the recorded ones).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import fire
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_benchmark import TINY_NETWORKS  # noqa: E402  (one tiny size for every smoke run)
from mask_variants import structure_measures  # noqa: E402
from quality_benchmark import _build, _finished, _machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "mask_mcdpm"
RUNS = ROOT / "benchmarks" / "runs" / "mask_rflow"
QUALITY = ROOT / "benchmarks" / "runs" / "quality" / "brain-mni"
RESULTS = ROOT / "benchmarks" / "results"
OVERLAYS = ["brain.json"]  # what the quality benchmark trains the brain's mask model with
REFERENCE = "DDIM"

# the smoke run: tiny data, the GPU benchmark's tiny network (the bundle tests' sizes) and a few iterations; the
# schedule keeps its 1000 steps, so that the reference DDIM-50 runs as recorded, and the comparison sets its steps
SMOKE = {
    **{k: v for k, v in TINY_NETWORKS["mask_mcdpm"].items() if k not in ("num_train_timesteps", "num_inference_steps")},
    "max_iterations": 4,
    "batch_size": 2,
    "val_interval": 4,
    "save_interval": 2,
    "preview_depth": 8,
}


class Setup(NamedTuple):
    """Where a run keeps its data, models and results."""

    run_dir: Path
    dataset: Path
    ddpm_models: Path  # the quality benchmark's when finished, else this run's own
    results: Path  # folder of mask_rflow.{json,md}
    overrides: dict[str, Any]  # bundle settings beyond its defaults and OVERLAYS (the smoke run's sizes)


def _setup(smoke: bool) -> Setup:
    if smoke:
        from medgen3d.data.brain_mni import build_brain_mni
        from medgen3d.data.builder import SplitSizes

        run_dir = RUNS / "smoke"
        data = run_dir / "brain-mni-tiny"
        build_brain_mni(data, preset="tiny", sizes=SplitSizes(4, 1, 1))
        return Setup(run_dir, data, run_dir / "ddpm" / "models", run_dir, dict(SMOKE))
    quality_models = QUALITY / "models" / "mask_mcdpm"
    if _finished(SimpleNamespace(mask=SimpleNamespace(ckpt_dir=quality_models)), "mask"):
        return Setup(RUNS, QUALITY / "brain-mni-small", quality_models, RESULTS, {})
    return Setup(RUNS, _build("brain-mni", RUNS / "brain-mni-small"), RUNS / "ddpm" / "models", RESULTS, {})


def _stage(models: Path, output: Path):
    from medgen3d.pipeline.stages import StageBundle

    return StageBundle(BUNDLE, models, output, overlays=OVERLAYS)


def _trained_iterations(models: Path) -> int | None:
    path = models / "checkpoint.pt"
    if not path.is_file():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=True)["trainer"]["max_iters"])


def _timings(setup: Setup) -> dict[str, Any]:
    path = setup.run_dir / "timings.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _time(setup: Setup, key: str, seconds: float, machine: str, **extra: Any) -> None:
    timings = _timings(setup)
    timings[key] = {"seconds": round(seconds, 1), "machine": machine, **extra}
    setup.run_dir.mkdir(parents=True, exist_ok=True)
    (setup.run_dir / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")


def _train_one(setup: Setup, schedule: str, models: Path, iterations: int | None) -> None:
    """Train (or resume) the ``schedule`` model into ``models``; a finished one is left as it is."""
    stage = _stage(models, models.parent / "eval")
    overrides = {**setup.overrides, "dataset_dir": str(setup.dataset), "seed": 0, "noise_schedule": schedule}
    if iterations is not None:
        overrides["max_iterations"] = iterations
    if schedule in _timings(setup) and _finished(SimpleNamespace(mask=stage), "mask"):
        return
    machine, start = _machine(), time.monotonic()
    stage.run(["train.json"], **overrides)
    _time(setup, schedule, time.monotonic() - start, machine, iterations=_trained_iterations(models))


def train(smoke: bool = False, threads: int = 2) -> None:
    """Train the rectified-flow model as long as the DDPM one (and the DDPM one first when the quality benchmark's
    is not there); resumable."""
    torch.set_num_threads(threads)
    setup = _setup(smoke)
    if setup.ddpm_models.parent.parent == setup.run_dir:  # no finished quality model: this run trains its own
        _train_one(setup, "ddpm", setup.ddpm_models, None)
    _train_one(setup, "rflow", setup.run_dir / "rflow" / "models", _trained_iterations(setup.ddpm_models))


def _labels(dataset: Path) -> tuple[list[np.ndarray], list[str]]:
    """The real training masks and the foreground structures' names."""
    from medgen3d.data.dataset import read_dataset

    spec = read_dataset(dataset)
    real = [spec.load_case(c)[1].array.astype(np.int64) for c in spec.training]
    return real, [name for k, name in sorted(spec.labels.items()) if int(k) > 0]


def _sample(setup: Setup, name: str, models: Path, volumes: int, batch_size: int, **settings: Any) -> dict[str, Any]:
    """Generate ``volumes`` masks with the bundle's inference config; seconds, evaluations and the masks."""
    from medgen3d.data.io import load_nifti

    out = setup.run_dir / "samples" / name
    shutil.rmtree(out, ignore_errors=True)  # generation skips finished cases: time a fresh run
    overrides = {**setup.overrides, "dataset_dir": str(setup.dataset), "seed": 0, "synthetic_dir": str(out)}
    overrides.update(num_cases=volumes, batch_size=batch_size, **settings)
    if setup.overrides:
        overrides["depth"] = 16  # the smoke run: short volumes
    workflow = _stage(models, setup.run_dir / "eval").workflow(["inference.json"], **overrides)
    workflow.initialize()
    sampler = workflow.parser.get_parsed_content("sampler")
    machine, start = _machine(), time.perf_counter()
    workflow.run()
    seconds = time.perf_counter() - start
    workflow.finalize()
    masks = [load_nifti(p).array.astype(np.int64) for p in sorted((out / "labels").glob("*.nii.gz"))]
    entry = {
        "volumes": len(masks),
        "seconds_per_volume": round(seconds / max(len(masks), 1), 2),
        "network_evaluations_per_volume": sampler.network_evaluations / max(len(masks), 1),
        "machine": machine,
        **settings,
    }
    print(f"{name}: {entry}", file=sys.stderr, flush=True)
    return {**entry, "masks": masks}


def compare(
    volumes: int = 8,
    steps: tuple[int, ...] | int = (5, 10),
    reference_steps: int = 50,
    batch_size: int = 4,
    smoke: bool = False,
    threads: int = 2,
) -> dict[str, Any]:
    """Generate ``volumes`` masks with DDIM-``reference_steps`` (DDPM model) and rectified flow at each of ``steps``,
    in this one process, and write the results (the models must be trained: ``train``)."""
    torch.set_num_threads(threads)
    setup = _setup(smoke)
    rflow_models = setup.run_dir / "rflow" / "models"
    for models in (setup.ddpm_models, rflow_models):
        if not (models / "model.pt").is_file():
            raise SystemExit(f"{models / 'model.pt'}: not trained yet; run `train` first")
    real, names = _labels(setup.dataset)
    reference = f"{REFERENCE}-{reference_steps}"
    plan = [(reference, setup.ddpm_models, {"noise_schedule": "ddpm", "num_inference_steps": reference_steps})]
    plan += [
        (f"RFlow-{s}", rflow_models, {"noise_schedule": "rflow", "num_inference_steps": int(s)})
        for s in ((steps,) if isinstance(steps, int) else steps)
    ]
    # one untimed volume first, so that the first timed sampler does not pay for the process's warm-up
    _sample(setup, "warm-up", rflow_models, 1, 1, noise_schedule="rflow", num_inference_steps=1)
    samplers = {}
    for name, models, settings in plan:
        entry = _sample(setup, name, models, volumes, batch_size, **settings)
        entry["structures"] = structure_measures(entry.pop("masks"), real, names)
        samplers[name] = entry
    base = samplers[reference]
    for entry in samplers.values():
        entry["speedup_vs_reference"] = round(base["seconds_per_volume"] / max(entry["seconds_per_volume"], 1e-9), 2)
        entry["evaluations_ratio_vs_reference"] = round(
            base["network_evaluations_per_volume"] / max(entry["network_evaluations_per_volume"], 1e-9), 2
        )
    timings = _timings(setup)
    if setup.ddpm_models.is_relative_to(QUALITY) and (QUALITY / "timings.json").is_file():
        timings["ddpm"] = json.loads((QUALITY / "timings.json").read_text()).get("mask")
    results = {
        "dataset": setup.dataset.name,
        "real_volumes": len(real),
        "reference": reference,
        "batch_size": batch_size,
        "threads": threads,
        "training": {
            "ddpm": {
                "models": str(setup.ddpm_models.relative_to(ROOT)),
                "iterations": _trained_iterations(setup.ddpm_models),
                **(timings.get("ddpm") or {}),
            },
            "rflow": {
                "models": str(rflow_models.relative_to(ROOT)),
                "iterations": _trained_iterations(rflow_models),
                **timings.get("rflow", {}),
            },
        },
        "samplers": samplers,
    }
    setup.results.mkdir(parents=True, exist_ok=True)
    (setup.results / "mask_rflow.json").write_text(json.dumps(results, indent=2) + "\n")
    (setup.results / "mask_rflow.md").write_text(markdown(results))
    print(markdown(results))
    return results


def run(
    volumes: int = 8,
    steps: tuple[int, ...] | int = (5, 10),
    reference_steps: int = 50,
    batch_size: int = 4,
    smoke: bool = False,
    threads: int = 2,
) -> None:
    """``train`` then ``compare`` (a smoke run: 2 volumes, rectified flow at 2 and 4 steps)."""
    if smoke:
        volumes, steps, batch_size = 2, (2, 4), 2
    train(smoke, threads)
    compare(volumes, steps, reference_steps, batch_size, smoke, threads)


def _f(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    """The benchmark's tables: speed, then the anatomy of every sampler's masks beside the real ones."""
    training = results["training"]
    lines = [
        f"# Rectified flow against DDPM for the MC-DPM ({results['dataset']}, CPU, {results['threads']} threads)",
        "",
        "Training, same settings and seed: "
        + "; ".join(
            f"{kind} {t['iterations']} iterations"
            + (f" in {t['seconds'] / 60:.1f} min (machine {t['machine']})" if t.get("seconds") else "")
            + f", `{t['models']}`"
            for kind, t in training.items()
        )
        + ".",
        "",
        f"Sampling: {next(iter(results['samplers'].values()))['volumes']} volumes per sampler, seed 0 (the same "
        f"depths and starts), batch {results['batch_size']}, guidance off, one process, one sampler after another.",
        "",
        f"| sampler | network evaluations / volume | s / volume | speed-up vs {results['reference']} | "
        f"evaluations ratio vs {results['reference']} | machine |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in results["samplers"].items():
        lines.append(
            f"| {name} | {s['network_evaluations_per_volume']:.0f} | {s['seconds_per_volume']} | "
            f"{s['speedup_vs_reference']}× | {s['evaluations_ratio_vs_reference']}× | {s['machine']} |"
        )
    first = next(iter(results["samplers"].values()))["structures"]
    lines += [
        "",
        f"Anatomy against the {results['real_volumes']} real training masks. Each cell: present in (fraction of "
        "volumes) / volume fraction / components / slice continuity / z-profile r.",
        "",
        "| sampler | " + " | ".join(first) + " |",
        "|---|" + "---|" * len(first),
        "| real | "
        + " | ".join(
            f"{m['presence_rate_real']:.2f} / {m['fraction_real']:.3f} / {m['components_real']:.0f} / "
            f"{m['continuity_real']:.2f} / –"
            for m in first.values()
        )
        + " |",
    ]
    for name, s in results["samplers"].items():
        cells = [
            f"{m['presence_rate']:.2f} / {m['fraction_synthetic']:.3f} / {m['components_synthetic']:.1f} / "
            f"{_f(m['continuity_synthetic'])} / {_f(m['z_profile_correlation'])}"
            for m in s["structures"].values()
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def montage(count: int = 3, smoke: bool = False) -> Path:
    """``results/mask_rflow.png``: the central slice of every plane of ``count`` real training masks beside the first
    ``count`` masks of each sampler ``compare`` wrote (rows: real, then one per sampler)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medgen3d.data.io import load_nifti
    from medgen3d.preview import label_colormap
    from medgen3d.views import VIEWS

    setup = _setup(smoke)
    real, names = _labels(setup.dataset)
    rows = {"real": real[:count]}
    for folder in sorted((setup.run_dir / "samples").iterdir()):
        if folder.name != "warm-up":
            rows[folder.name] = [load_nifti(p).array for p in sorted((folder / "labels").glob("*.nii.gz"))[:count]]
    cmap = label_colormap(len(names) + 1)
    figure, axes = plt.subplots(len(rows), 3 * count, figsize=(2.0 * 3 * count, 2.2 * len(rows)), squeeze=False)
    for r, (name, masks) in enumerate(rows.items()):
        for c, mask in enumerate(masks):
            for v, (view, axis) in enumerate(VIEWS.items()):
                ax = axes[r][3 * c + v]
                ax.imshow(
                    np.rot90(np.take(mask, mask.shape[axis] // 2, axis=axis)),
                    cmap=cmap,
                    vmin=0,
                    vmax=len(names),
                    interpolation="nearest",
                )
                ax.set_xticks([])
                ax.set_yticks([])
                if c == 0 and v == 0:
                    ax.set_ylabel(name)
                if r == 0:
                    ax.set_title(f"{view} {c}", fontsize=8)
    figure.tight_layout()
    path = setup.results / "mask_rflow.png"
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


if __name__ == "__main__":
    fire.Fire({"run": run, "train": train, "compare": compare, "montage": montage})
