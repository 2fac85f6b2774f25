"""The MC-DPM's models and samplers at equal training: x0 against noise prediction, DDIM against rectified flow.

Three mask models are trained on brain-mni small with the bundle's defaults and ``brain.json``, the same dataset,
seed and number of iterations (the bundle's 1400), each differing in one setting (:data:`MODELS`):

- ``x0``: the bundle's default, a DDPM schedule with x0 (``sample``) prediction;
- ``epsilon``: the same schedule predicting the noise (the paper's Eq. 4);
- ``rflow``: rectified flow (``noise_schedule: rflow``).

Then, in one process, one after the other on the same machine, every sampler of :func:`_plan` generates the same
number of masks (seed 0, the same depths and start positions) through the bundle's ``inference.json``: DDIM-50 from
the x0 model (the reference, the default sampler before mask_mcdpm 0.5.0), DDIM-20 (the default since), DDIM-50
from the epsilon model, rectified flow at each of ``--steps``, and, with ``--ddpm_volumes``, the full DDPM-1000
chain (``inference_ddpm.json``). Each sampler is scored on

- seconds and network evaluations (subsequence forwards) per volume, and their ratios to DDIM-50;
- the stage's start: the seconds of the same command again once every case exists (parsing, loading the weights,
  checking the dataset; no sampling), which an end-to-end run pays once per stage;
- the quality benchmark's anatomy measures per structure against the real training masks (presence rate, volume
  fraction, connected components, slice continuity, z-profile correlation), and on how many of them each sampler
  stays within 10% of DDIM-50's distance to the real masks.

The machine's load is named for every timed step.

    .venv/bin/python benchmarks/mask_mcdpm_benchmark.py run              # train (resumable), compare, write
    .venv/bin/python benchmarks/mask_mcdpm_benchmark.py train            # only the training
    .venv/bin/python benchmarks/mask_mcdpm_benchmark.py compare --volumes 8 --steps 5,10 [--ddpm_volumes 1]
    .venv/bin/python benchmarks/mask_mcdpm_benchmark.py run --smoke      # tiny data and networks, end to end
    .venv/bin/python benchmarks/mask_mcdpm_benchmark.py montage          # results/mask_mcdpm.png

On an idle 2-core CPU each model trains in about 15 minutes (a minute more to build brain-mni small); the comparison
takes about 10 minutes for 8 volumes per sampler (DDIM-50 near 20 s per volume). DDPM-1000 takes about 20 times
DDIM-50's time per volume, so it is off unless asked for. The smoke run takes about a minute.

Results: ``benchmarks/results/mask_mcdpm.{json,md,png}``. Runs live under ``benchmarks/runs/mask_mcdpm/`` (a smoke
run under its ``smoke/`` folder, results included, so it never touches the recorded ones).
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
from gpu_benchmark import tiny_preset  # noqa: E402  (one tiny size for every smoke run)
from mask_stage import SCORING_SAMPLER, structure_measures  # noqa: E402
from quality_benchmark import _build, _finished, _machine, distances_to_real  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "mask_mcdpm"
RUNS = ROOT / "benchmarks" / "runs" / "mask_mcdpm"
RESULTS = ROOT / "benchmarks" / "results"
OVERLAYS = ["brain.json"]  # what the quality benchmark trains the brain's mask model with
REFERENCE = "DDIM-50"

# each model: the bundle settings that differ from its defaults (sampling reads them too); the DDPM models were
# recorded with linear betas, the default before mask_mcdpm 0.9.0, and with no class weights and the sampler of
# before 0.12.0 (no guidance, MONAI's DDIM spacing), which the table's "guidance off" states
RECORDED = {"beta_schedule": "linear_beta", "class_weights": None, **SCORING_SAMPLER}
MODELS: dict[str, dict[str, Any]] = {
    "x0": {"noise_schedule": "ddpm", **RECORDED, "prediction_type": "sample"},
    # noise prediction without the structure Dice, which reads an x0 estimate noise prediction makes unstable (the
    # bundle refuses the pair); the recorded epsilon row predates this and had the Dice on
    "epsilon": {"noise_schedule": "ddpm", **RECORDED, "prediction_type": "epsilon", "dice_weight": 0.0},
    "rflow": {"noise_schedule": "rflow", "class_weights": None, **SCORING_SAMPLER},
}

# the smoke run: tiny data, the bundle's tiny preset and a few iterations; the schedule keeps its 1000 steps, so that
# the reference DDIM-50 runs as recorded, and the comparison sets its steps
SMOKE = {
    **{k: v for k, v in tiny_preset("mask_mcdpm").items() if k != "num_train_timesteps"},
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
    results: Path  # folder of mask_mcdpm.{json,md,png}
    overrides: dict[str, Any]  # bundle settings beyond its defaults and OVERLAYS (the smoke run's sizes)

    def models(self, model: str) -> Path:
        return self.run_dir / model / "models"


class Sampler(NamedTuple):
    """One row of the comparison: a model, its sampling settings and the task configs that run it."""

    name: str
    model: str
    settings: dict[str, Any]
    configs: tuple[str, ...] = ("inference.json",)
    volumes: int | None = None  # None: the comparison's --volumes


def _setup(smoke: bool) -> Setup:
    if smoke:
        from medgen3d.data.brain_mni import build_brain_mni
        from medgen3d.data.builder import SplitSizes

        run_dir = RUNS / "smoke"
        data = run_dir / "brain-mni-tiny"
        build_brain_mni(data, preset="tiny", sizes=SplitSizes(4, 1, 1))
        return Setup(run_dir, data, run_dir, dict(SMOKE))
    data = RUNS / "brain-mni-small"
    if not (data / "dataset.json").is_file():
        _build("brain-mni", data)
    return Setup(RUNS, data, RESULTS, {})


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


def _train_one(setup: Setup, model: str) -> None:
    """Train (or resume) ``model`` into its folder; a finished one is left as it is."""
    models = setup.models(model)
    stage = _stage(models, models.parent / "eval")
    if model in _timings(setup) and _finished(SimpleNamespace(mask=stage), "mask"):
        return
    overrides = {**setup.overrides, "dataset_dir": str(setup.dataset), "seed": 0, **MODELS[model]}
    machine, start = _machine(), time.monotonic()
    stage.run(["train.json"], **overrides)
    seconds = time.monotonic() - start
    machine = f"{machine} at the start; {_machine()} at the end"
    _time(setup, model, seconds, machine, iterations=_trained_iterations(models))


def train(smoke: bool = False, threads: int = 2, models: str | tuple[str, ...] = tuple(MODELS)) -> None:
    """Train each of ``models`` with the same settings, seed and iterations; resumable."""
    torch.set_num_threads(threads)
    setup = _setup(smoke)
    for model in models.split(",") if isinstance(models, str) else models:
        _train_one(setup, model)


def _labels(dataset: Path) -> tuple[list[np.ndarray], list[str]]:
    """The real training masks and the foreground structures' names."""
    from medgen3d.data.dataset import read_dataset

    spec = read_dataset(dataset)
    real = [spec.load_case(c)[1].array.astype(np.int64) for c in spec.training]
    return real, [name for k, name in sorted(spec.labels.items()) if int(k) > 0]


def _plan(steps: tuple[int, ...], ddpm_volumes: int) -> list[Sampler]:
    """The reference first, then the other samplers of the x0 model, the epsilon model and rectified flow."""
    plan = [
        Sampler(REFERENCE, "x0", {"num_inference_steps": 50}),
        Sampler("DDIM-20", "x0", {"num_inference_steps": 20}),
        Sampler("epsilon DDIM-50", "epsilon", {"num_inference_steps": 50}),
    ]
    plan += [Sampler(f"RFlow-{s}", "rflow", {"num_inference_steps": int(s)}) for s in steps]
    if ddpm_volumes > 0:
        # the full chain: brain.json's DDIM step count (an overlay, read after inference_ddpm.json) must not reach it
        full_chain = {"num_inference_steps": None}
        plan.append(Sampler("DDPM-1000", "x0", full_chain, ("inference.json", "inference_ddpm.json"), ddpm_volumes))
    return plan


def _sample(setup: Setup, sampler: Sampler, volumes: int, batch_size: int) -> dict[str, Any]:
    """Generate ``volumes`` masks with ``sampler``; seconds, evaluations, the stage's start and the masks."""
    from medgen3d.data.io import load_nifti

    out = setup.run_dir / "samples" / sampler.name.replace(" ", "_")
    shutil.rmtree(out, ignore_errors=True)  # generation skips finished cases: time a fresh run
    overrides = {**setup.overrides, "dataset_dir": str(setup.dataset), "seed": 0, "synthetic_dir": str(out)}
    overrides.update(num_cases=volumes, batch_size=batch_size, **MODELS[sampler.model], **sampler.settings)
    if setup.overrides:
        overrides["depth"] = 16  # the smoke run: short volumes
    stage = _stage(setup.models(sampler.model), setup.run_dir / "eval")

    def timed_run() -> tuple[float, Any]:
        workflow = stage.workflow(list(sampler.configs), **overrides)
        start = time.perf_counter()
        workflow.initialize()
        parsed = workflow.parser.get_parsed_content("sampler")  # the instance the run uses: it counts evaluations
        workflow.run()
        seconds = time.perf_counter() - start
        workflow.finalize()
        return seconds, parsed

    machine = _machine()
    seconds, parsed = timed_run()
    start_seconds, _ = timed_run()  # every case exists now: only the stage's start is left
    masks = [load_nifti(p).array.astype(np.int64) for p in sorted((out / "labels").glob("*.nii.gz"))]
    entry = {
        "model": sampler.model,
        "configs": list(sampler.configs),
        **sampler.settings,
        "volumes": len(masks),
        "seconds_per_volume": round(seconds / max(len(masks), 1), 2),
        "start_seconds": round(start_seconds, 2),
        "network_evaluations_per_volume": parsed.network_evaluations / max(len(masks), 1),
        "machine": machine,
    }
    print(f"{sampler.name}: {entry}", file=sys.stderr, flush=True)
    return {**entry, "masks": masks}


def compare(
    volumes: int = 8,
    steps: tuple[int, ...] | int = (5, 10),
    ddpm_volumes: int = 0,
    batch_size: int = 4,
    smoke: bool = False,
    threads: int = 2,
) -> dict[str, Any]:
    """Generate ``volumes`` masks with every sampler of :func:`_plan`, in this one process, score them and write the
    results (the models must be trained: ``train``)."""
    torch.set_num_threads(threads)
    setup = _setup(smoke)
    for model in MODELS:
        if not (setup.models(model) / "model.pt").is_file():
            raise SystemExit(f"{setup.models(model) / 'model.pt'}: not trained yet; run `train` first")
    real, names = _labels(setup.dataset)
    # one untimed volume first, so that the first timed sampler does not pay for the process's warm-up
    _sample(setup, Sampler("warm-up", "rflow", {"num_inference_steps": 1}), 1, 1)
    samplers = {}
    for sampler in _plan((steps,) if isinstance(steps, int) else tuple(steps), ddpm_volumes):
        entry = _sample(setup, sampler, sampler.volumes or volumes, batch_size)
        entry["structures"] = structure_measures(entry.pop("masks"), real, names)
        samplers[sampler.name] = entry
    base = samplers[REFERENCE]
    for entry in samplers.values():
        entry["speedup_vs_reference"] = round(base["seconds_per_volume"] / max(entry["seconds_per_volume"], 1e-9), 2)
        entry["evaluations_ratio_vs_reference"] = round(
            base["network_evaluations_per_volume"] / max(entry["network_evaluations_per_volume"], 1e-9), 2
        )
    timings = _timings(setup)
    results = {
        "dataset": setup.dataset.name,
        "real_volumes": len(real),
        "reference": REFERENCE,
        "batch_size": batch_size,
        "threads": threads,
        "training": {
            model: {
                "settings": MODELS[model],
                "models": str(setup.models(model).relative_to(ROOT)),
                "iterations": _trained_iterations(setup.models(model)),
                **timings.get(model, {}),
            }
            for model in MODELS
        },
        "samplers": samplers,
    }
    setup.results.mkdir(parents=True, exist_ok=True)
    (setup.results / "mask_mcdpm.json").write_text(json.dumps(results, indent=2) + "\n")
    (setup.results / "mask_mcdpm.md").write_text(markdown(results))
    print(markdown(results))
    return results


def run(
    volumes: int = 8,
    steps: tuple[int, ...] | int = (5, 10),
    ddpm_volumes: int = 0,
    batch_size: int = 4,
    smoke: bool = False,
    threads: int = 2,
) -> None:
    """``train`` then ``compare`` (a smoke run: 2 volumes, rectified flow at 2 and 4 steps, one DDPM-1000 volume)."""
    if smoke:
        volumes, steps, ddpm_volumes, batch_size = 2, (2, 4), 1, 2
    train(smoke, threads)
    compare(volumes, steps, ddpm_volumes, batch_size, smoke, threads)


def report() -> None:
    """Write ``results/mask_mcdpm.md`` again from ``results/mask_mcdpm.json``."""
    results = json.loads((RESULTS / "mask_mcdpm.json").read_text())
    (RESULTS / "mask_mcdpm.md").write_text(markdown(results))
    print(markdown(results))


def _f(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def within_tolerance(sampler: dict[str, Any], reference: dict[str, Any], tolerance: float = 0.1) -> list[str]:
    """The measures on which ``sampler``'s masks are more than ``tolerance`` farther from the real ones than
    ``reference``'s (a measure the sampler cannot compute, a missing structure, counts as farther)."""
    ours, theirs = distances_to_real(sampler["structures"]), distances_to_real(reference["structures"])
    worse = []
    for key, base in theirs.items():
        value = ours[key]
        if value is None and base is None:
            continue
        if value is None or (base is not None and value > base * (1 + tolerance) + 1e-9):
            worse.append(key)
    return worse


def markdown(results: dict[str, Any]) -> str:
    """The benchmark's tables: training, speed, then the anatomy of every sampler's masks beside the real ones."""
    lines = [
        f"# The MC-DPM's models and samplers ({results['dataset']}, CPU, {results['threads']} threads)",
        "",
        "Training, the bundle's defaults and `brain.json`, the same seed and dataset; each model differs in the "
        "settings named:",
        "",
        "| model | settings | iterations | minutes | machine |",
        "|---|---|---|---|---|",
    ]
    for model, t in results["training"].items():
        settings = ", ".join(f"`{k}: {v}`" for k, v in t["settings"].items())
        minutes = _f(t["seconds"] / 60, 1) if t.get("seconds") else "n/a"
        lines.append(f"| {model} | {settings} | {t['iterations']} | {minutes} | {t.get('machine', 'n/a')} |")
    first = next(iter(results["samplers"].values()))
    lines += [
        "",
        f"Sampling: {first['volumes']} volumes per sampler unless named, seed 0 (the same depths and starts), batch "
        f"{results['batch_size']}, guidance off, one process, one sampler after another. *Start*: the same command "
        "again once every case exists (parsing, weights, dataset check), paid once per stage.",
        "",
        f"| sampler | model | volumes | network evaluations / volume | s / volume | speed-up vs {results['reference']} "
        f"| evaluations ratio vs {results['reference']} | start s | machine |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in results["samplers"].items():
        lines.append(
            f"| {name} | {s['model']} | {s['volumes']} | {s['network_evaluations_per_volume']:.0f} | "
            f"{s['seconds_per_volume']} | {s['speedup_vs_reference']}× | {s['evaluations_ratio_vs_reference']}× | "
            f"{s['start_seconds']} | {s['machine']} |"
        )
    structures = first["structures"]
    lines += [
        "",
        f"Anatomy against the {results['real_volumes']} real training masks. Each cell: present in (fraction of "
        "volumes) / volume fraction / components / slice continuity / z-profile r.",
        "",
        "| sampler | " + " | ".join(structures) + " |",
        "|---|" + "---|" * len(structures),
        "| real | "
        + " | ".join(
            f"{m['presence_rate_real']:.2f} / {m['fraction_real']:.3f} / {m['components_real']:.0f} / "
            f"{m['continuity_real']:.2f} / –"
            for m in structures.values()
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
    reference = results["samplers"][results["reference"]]
    total = len(distances_to_real(reference["structures"]))
    lines += [
        "",
        f"Against {results['reference']}: a measure counts as kept when the sampler's distance to the real masks "
        "(1 - presence rate; the absolute difference of volume fraction, components and continuity; 1 - z-profile r) "
        f"is at most 10% above {results['reference']}'s.",
        "",
        "| sampler | measures kept | farther than 10% on |",
        "|---|---|---|",
    ]
    for name, s in results["samplers"].items():
        if name != results["reference"]:
            worse = within_tolerance(s, reference)
            lines.append(f"| {name} | {total - len(worse)} of {total} | {', '.join(worse) or '–'} |")
    return "\n".join(lines) + "\n"


def montage(count: int = 3, smoke: bool = False) -> Path:
    """``results/mask_mcdpm.png``: the central slice of every plane of ``count`` real training masks beside the first
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
    recorded = json.loads((setup.results / "mask_mcdpm.json").read_text())["samplers"]
    for name in recorded:
        folder = setup.run_dir / "samples" / name.replace(" ", "_")
        rows[name] = [load_nifti(p).array for p in sorted((folder / "labels").glob("*.nii.gz"))[:count]]
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
                if c == 0 and v == 0:
                    ax.set_ylabel(name)
                if r == 0:
                    ax.set_title(f"{view} {c}", fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    figure.tight_layout()
    path = setup.results / "mask_mcdpm.png"
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


if __name__ == "__main__":
    fire.Fire({"run": run, "train": train, "compare": compare, "report": report, "montage": montage})
