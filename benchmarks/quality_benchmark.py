"""The quality benchmark: every stage trained at the small preset's defaults, 8 synthetic pairs, the quality report.

For one embedded dataset (``brain-mni`` or ``thorax-phantom``, small preset) it runs what a user runs with the
workflow bundle and no overlay but the dataset's own (``thorax.json`` for the thorax): ``train.json`` stage by stage
(each timed), ``generate.json`` with 8 cases, ``evaluate.json``; then it writes

- ``benchmarks/results/quality_<dataset>.json``: training seconds per stage, the report's image measures (feature
  Fréchet distance, MS-SSIM, alignment Dice: reference, refined, unrefined; alignment per structure, and the
  estimate of what images as segmentable as the real ones would score on the synthetic masks), per-structure
  anatomy (presence rate, volume fraction, components, continuity, z-profile correlation, the mask model's seed
  agreement gap), the slice-change rate of the synthetic and real masks, and the memorised cases;
- ``benchmarks/results/quality_<dataset>.md``: the same as tables (what the top README shows);
- ``benchmarks/results/quality_<dataset>.png``: real cases beside synthetic ones, image and mask, three planes.

Everything runs under ``benchmarks/runs/quality/<dataset>/`` and resumes: finished training and cases are kept, so a
rerun after an interruption continues (the seconds of a stage are those of the run that finished it).

    .venv/bin/python benchmarks/quality_benchmark.py run --dataset brain-mni
    .venv/bin/python benchmarks/quality_benchmark.py run --dataset thorax-phantom
    .venv/bin/python benchmarks/quality_benchmark.py run --train_only mask,image,refiner   # the generators only
    .venv/bin/python benchmarks/quality_benchmark.py run --regenerate   # stages kept, every case generated again
    .venv/bin/python benchmarks/quality_benchmark.py compare --dataset brain-mni   # the change file again
    .venv/bin/python benchmarks/quality_benchmark.py record      # the files of a finished `make demo`
    .venv/bin/python benchmarks/quality_benchmark.py curve_point --iterations 5600   # masks trained 4x as long
    .venv/bin/python benchmarks/quality_benchmark.py curve_point --iterations 5600 --image_iterations 1600  # + images
    .venv/bin/python benchmarks/quality_benchmark.py tables --dataset brain-mni   # the files again from the reports

``curve_point`` generates and evaluates the pairs again with a mask model of the mask stage's learning curve
(``mask_stage.py curve``: the same preset trained longer), and optionally an image generator of the image stage's
(``image_stage.py curve``), every other stage the benchmark's own, into ``benchmarks/runs/quality/<dataset>_<name>/``
and ``results/quality_<dataset>_<name>.*`` (``mask-<n>-iterations``, ``mask-<n>-image-<m>-iterations``): what more
training of the generators buys the whole pipeline.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import fire
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
RUNS = ROOT / "benchmarks" / "runs" / "quality"
RESULTS = ROOT / "benchmarks" / "results"
DATASETS = {"brain-mni": ["brain.json"], "thorax-phantom": ["thorax.json"]}
STAGES = ("mask", "image", "refiner", "segmenter")
STAGE_BUNDLES = {
    "mask": "mask_mcdpm",
    "image": "image_vid2vid",
    "refiner": "sdm_refiner",
    "segmenter": "segmentation_eval",
}


def _cpu_ticks() -> tuple[float, float]:
    """The machine's busy and total CPU clock ticks since boot, all cores (busy: all but idle and iowait)."""
    fields = [float(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


def _busy_cores(seconds: float = 2.0) -> float:
    """How many cores other processes keep busy, measured over ``seconds`` while this one waits (the load average
    would count this process's own previous stage)."""

    busy_start, total_start = _cpu_ticks()
    time.sleep(seconds)
    busy_end, total_end = _cpu_ticks()
    return (busy_end - busy_start) / max(total_end - total_start, 1.0) * os.cpu_count()


def _load(others: float) -> str:
    return "idle" if others < 0.5 else f"shared ({others:.1f} cores busy with other work)"


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, {_load(_busy_cores())}"


class OtherLoad:
    """The cores other processes keep busy on average over a span of this process's work, from its creation to
    each :meth:`cores` call: the machine's busy CPU seconds (``/proc/stat``) less this process's own (threads and
    waited-for children included), over the wall time. Readings at a phase's ends alone miss a job that ran
    only in its middle."""

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float]:
        busy = _cpu_ticks()[0] / os.sysconf("SC_CLK_TCK")
        own = os.times()
        return busy, own.user + own.system + own.children_user + own.children_system, time.monotonic()

    def cores(self) -> float:
        (busy, own, now), (busy_0, own_0, start) = self._read(), self._start
        return max(0.0, ((busy - busy_0) - (own - own_0)) / max(now - start, 1e-6))

    def describe(self) -> str:
        """``idle``, or ``shared (<cores> cores busy with other work)`` on average since creation. An average over a
        whole phase is steadier than a 2-second reading, so a tenth of a core already counts (a niced test run
        beside a phase averages a few tenths)."""
        cores = self.cores()
        return "idle" if cores < 0.1 else f"shared ({cores:.2f} cores busy with other work)"


def _build(dataset: str, out: Path) -> Path:
    from medgen3d.data.brain_mni import build_brain_mni
    from medgen3d.data.thorax_phantom import build_thorax_phantom
    from medgen3d.progress import progress_printer

    build = build_brain_mni if dataset == "brain-mni" else build_thorax_phantom
    build(out, preset="small", progress=progress_printer(dataset))
    return out


def _timings(run: Path) -> dict[str, Any]:
    path = run / "timings.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _record(run: Path, key: str, seconds: float, machine: str) -> None:
    timings = _timings(run)
    timings[key] = {"seconds": round(seconds, 1), "machine": machine}
    (run / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")


def _finished(stages, stage: str) -> bool:
    """A stage whose checkpoints are all at their last iteration (then training it again does nothing).

    ``stages``: the workflow's parsed ``PipelineStages``, which say where each stage keeps its checkpoints."""
    models = Path(getattr(stages, stage).ckpt_dir)
    names = ["axial", "coronal", "sagittal"] if stage == "refiner" else [""]
    for name in names:
        path = models / name / "checkpoint.pt"
        if not path.is_file():
            return False
        state = torch.load(path, map_location="cpu", weights_only=True)["trainer"]
        if state.get("max_iters") is not None and state["iteration"] < state["max_iters"]:
            return False
        if state.get("max_epochs") is not None and state["iteration"] < state["max_epochs"] * state["epoch_length"]:
            return False
    return True


def run(
    dataset: str = "brain-mni",
    cases: int = 8,
    threads: int = 2,
    train_only: tuple[str, ...] | str = (),
    regenerate: bool = False,
) -> dict[str, Any] | None:
    """Train, generate, evaluate and write the results of ``dataset`` (see the module docstring).

    ``train_only``: train just these stages (e.g. ``mask,image``) and stop; a later full run keeps them.
    ``regenerate``: generate every synthetic case again with the trained stages (after a change of a generating
    setting; otherwise finished cases are kept); the results before are kept as ``quality_<dataset>_before.json``
    and ``quality_<dataset>_change.md`` compares every measure before and after."""
    from medgen3d.pipeline.stages import StageBundle

    if dataset not in DATASETS:
        raise SystemExit(f"--dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
    torch.set_num_threads(threads)
    run_dir = RUNS / dataset
    run_dir.mkdir(parents=True, exist_ok=True)
    data = _build(dataset, run_dir / f"{dataset}-small")
    workflow = StageBundle(BUNDLES / "medgen3d", run_dir / "models", run_dir / "eval", overlays=DATASETS[dataset])
    common = {"bundle_root": str(run_dir), "stages_dir": str(BUNDLES), "dataset_dir": str(data)}
    stages = workflow.workflow(["train.json"], **common).parser.get_parsed_content("stages")
    only = train_only.split(",") if isinstance(train_only, str) else list(train_only)
    unknown = sorted(set(only) - set(STAGES))
    if unknown:
        raise SystemExit(f"--train_only: unknown stages {unknown}; choose from {list(STAGES)}")
    for stage in only or STAGES:
        if stage in _timings(run_dir) and _finished(stages, stage):
            continue
        machine, start = _machine(), time.monotonic()
        workflow.run(["train.json"], train_stages=[stage], **common)
        _record(run_dir, stage, time.monotonic() - start, machine)
    if only:
        return None
    before_path = RESULTS / f"quality_{dataset}_before.json"
    if regenerate:
        shutil.rmtree(run_dir / "eval" / "synthetic", ignore_errors=True)
        if (RESULTS / f"quality_{dataset}.json").is_file():
            shutil.copyfile(RESULTS / f"quality_{dataset}.json", before_path)
    for task, extra in (("generate", {"num_cases": cases}), ("evaluate", {})):
        machine, start = _machine(), time.monotonic()
        workflow.run([f"{task}.json"], **common, **extra)
        _record(run_dir, task, time.monotonic() - start, machine)
    results = _write_results(f"{dataset} small", f"quality_{dataset}", run_dir, data, workflow, common)
    if regenerate and before_path.is_file():
        text = change(json.loads(before_path.read_text()), results)
        (RESULTS / f"quality_{dataset}_change.md").write_text(text)
        print(text)
    return results


def curve_point(
    dataset: str = "brain-mni",
    iterations: int = 5600,
    image_iterations: int | None = None,
    cases: int = 8,
    threads: int = 2,
) -> dict:
    """The quality benchmark's pairs generated again with the mask model the mask stage's learning curve kept at
    ``iterations`` (``benchmarks/runs/mask_stage/<dataset>/learning-curve/models/ema-<iterations>.pt``), every other
    stage (image generator, refiner, segmenter) the benchmark's own; with ``image_iterations``, the image generator
    too is the one its learning curve trained that long (``image_stage.py curve``: the defaults, their learning rate
    decaying over that run), generating as the bundle's defaults do. See the module docstring."""
    from medgen3d.pipeline.stages import StageBundle

    if dataset not in DATASETS:
        raise SystemExit(f"--dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
    torch.set_num_threads(threads)
    base, curve = RUNS / dataset, ROOT / "benchmarks" / "runs" / "mask_stage" / dataset / "learning-curve"
    replaced = {"mask_mcdpm": (curve / "models" / f"ema-{iterations}.pt", base / "models" / "mask_mcdpm")}
    name = f"mask-{iterations}-iterations"
    if image_iterations is not None:
        from image_stage import CURVE_SETTING, _folder

        image_run = ROOT / "benchmarks" / "runs" / "image_stage" / dataset / "curve" / _folder(CURVE_SETTING)
        image_run = image_run / f"{image_iterations}-iterations"
        replaced["image_vid2vid"] = (image_run / "models" / "model.pt", image_run / "models")
        name = f"mask-{iterations}-image-{image_iterations}-iterations"
    needed = [weights for weights, _ in replaced.values()] + [base / "models" / "segmenter" / "model.pt"]
    needed.append(base / "models" / "image_vid2vid" / "model.pt")
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise SystemExit(f"run `quality_benchmark.py run` and the stages' `curve` first; missing {missing}")
    run_dir = RUNS / f"{dataset}_{name}"
    shutil.rmtree(run_dir / "eval", ignore_errors=True)  # every case generated by the current code, never kept
    models = run_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    for stage in sorted(p.name for p in (base / "models").iterdir() if p.is_dir()):
        if stage in replaced:  # the stage's training record beside the longer-trained weights
            weights, record = replaced[stage]
            (models / stage).mkdir(exist_ok=True)
            shutil.copyfile(record / "training_data.json", models / stage / "training_data.json")
            shutil.copyfile(weights, models / stage / "model.pt")
        elif not (models / stage).exists():
            (models / stage).symlink_to(base / "models" / stage, target_is_directory=True)
    timings = _timings(base)
    if image_iterations is not None:
        trained = json.loads((image_run / "result.json").read_text())
        timings["image"] = {"seconds": trained["training_seconds"], "machine": trained["machine"]}
    curve_training = json.loads((ROOT / "benchmarks" / "results" / f"mask_learning_curve_{dataset}.json").read_text())
    training = curve_training["training"]
    first = training.get("first_point_from") or {}
    reached = (training.get("seconds_at") or {}).get(str(iterations))
    if reached is not None:  # the curve's seconds count from its first point, whose own run's seconds come first
        timings["mask"] = {"seconds": round(first.get("seconds", 0.0) + reached, 1), "machine": training["machine"]}
    else:
        timings.pop("mask", None)
    (run_dir / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    data = base / f"{dataset}-small"
    workflow = StageBundle(BUNDLES / "medgen3d", models, run_dir / "eval", overlays=DATASETS[dataset])
    common = {"bundle_root": str(run_dir), "stages_dir": str(BUNDLES), "dataset_dir": str(data)}
    for task, extra in (("generate", {"num_cases": cases}), ("evaluate", {})):
        machine, start = _machine(), time.monotonic()
        workflow.run([f"{task}.json"], **common, **extra)
        _record(run_dir, task, time.monotonic() - start, machine)
    title = f"{dataset} small, the mask model trained {iterations} iterations"
    if image_iterations is not None:
        title += f" and the image generator {image_iterations}"
    results = _write_results(title, f"quality_{dataset}_{name}", run_dir, data, workflow, common)
    results["settings"]["mask"]["max_iterations"] = iterations  # the configs say the preset's; these weights trained on
    if image_iterations is not None:
        results["settings"]["image"]["max_iterations"] = image_iterations
    (RESULTS / f"quality_{dataset}_{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"quality_{dataset}_{name}.md").write_text(markdown(results))
    return results


def record(
    run_dir: str = "demo_output/workflow",
    data: str = "demo_output/brain-mni-small",
    name: str = "demo",
    machine: str | None = None,
) -> None:
    """Write the results files of a finished workflow run made elsewhere, such as ``make demo``'s
    (``results/quality_<name>.*``): its report, its ``timings.json`` and a montage. ``machine``: the load the run
    saw, when whoever ran it measured it (its ``timings.json`` does not say)."""
    from medgen3d.pipeline.stages import StageBundle

    run_path, data_path = Path(run_dir).resolve(), Path(data).resolve()
    overlays = ["demo.json"] if name == "demo" else []
    workflow = StageBundle(BUNDLES / "medgen3d", run_path / "models", run_path / "eval", overlays=overlays)
    common = {"bundle_root": str(run_path), "stages_dir": str(BUNDLES), "dataset_dir": str(data_path)}
    _write_results(name, f"quality_{name}", run_path, data_path, workflow, common, machine)


def _write_results(
    title: str,
    stem: str,
    run_dir: Path,
    data: Path,
    workflow,
    common: dict[str, Any],
    machine: str | None = None,
    results_dir: Path = RESULTS,
) -> dict:
    results = summarise(title, run_dir, workflow, common)
    results["machine"] = machine or results["machine"]
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    (results_dir / f"{stem}.md").write_text(markdown(results))
    montage(data, run_dir / "eval" / "synthetic", results_dir / f"{stem}.png", title)
    print(markdown(results))
    return results


def _settings(workflow, common: dict[str, Any]) -> dict[str, Any]:
    """The training length and sampler of each stage, as the stage configs resolve them."""
    stages = workflow.workflow(["train.json"], **common).parser.get_parsed_content("stages")
    keys = {
        "mask": [
            "max_iterations",
            "batch_size",
            "image_size",
            "dice_weight",
            "dice_weighting",
            "p_min_known",
            "condition_corruption",
            "learning_rate",
            "final_lr_fraction",
            "ema_decay",
            "position_mode",
            "flip_prob",
            "class_weights",
        ],
        "image": ["max_iterations", "batch_size"],
        "refiner": ["max_iterations", "batch_size"],
        "segmenter": ["max_iterations", "network_name"],
    }
    out = {}
    for stage, names in keys.items():
        parser = getattr(stages, stage).workflow(["train.json"], dataset_dir=common["dataset_dir"]).parser
        out[stage] = {name: parser.get_parsed_content(name) for name in names if name in parser}
    parser = stages.mask.workflow(["inference.json"], dataset_dir=common["dataset_dir"]).parser
    steps = parser.get_parsed_content("num_inference_steps")
    if parser.get_parsed_content("noise_schedule") == "rflow":
        out["mask"]["sampler"] = f"RFlow-{steps}"
    else:  # the betas too: they set where DDIM's steps fall (a result before they were named had linear ones)
        out["mask"]["sampler"] = f"DDIM-{steps}, {parser.get_parsed_content('beta_schedule')}"
        if "timestep_spacing" in parser:  # named since mask_mcdpm 0.12.0; MONAI's leading steps before
            out["mask"]["sampler"] += f", {parser.get_parsed_content('timestep_spacing')} steps"
    out["mask"]["sampler"] += f", guidance {parser.get_parsed_content('guidance_scale'):g}"
    kept = parser.get_parsed_content("new_slices_per_window") if "new_slices_per_window" in parser else None
    if kept is not None:  # named since mask_mcdpm 0.11.0; the brain preset keeps 2 since 0.13.0
        out["mask"]["sampler"] += f", {kept} new slices kept per window"
    parser = stages.refiner.workflow(["inference.json"], dataset_dir=common["dataset_dir"]).parser
    names = ("noise_steps", "denoising_steps", "denoising_eta")
    out["refiner"].update({name: parser.get_parsed_content(name) for name in names})
    for stage, bundle in STAGE_BUNDLES.items():  # which version of each stage's code the run measured
        out[stage]["version"] = json.loads((BUNDLES / bundle / "configs" / "metadata.json").read_text())["version"]
    return out


EARLIER = "†"  # marks a row kept from the committed results file (see :func:`with_earlier_rows`)
EARLIER_NOTE = (
    f"{EARLIER} kept from the committed results file: its run is not on this machine (an earlier session ran it "
    "with this script; run it again to refresh it)."
)


def with_earlier_rows(
    path: Path, names: tuple[str, ...], rows: dict[str, Any], same: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``rows`` (the settings whose runs are on this machine) completed with the rows of ``path``, the committed
    results JSON, that have no run here, each marked ``"earlier_run": true``, in the order of ``names``. Nothing
    is kept when the committed file's top-level values differ from ``same`` (say another iteration count).

    A benchmark's run folders are not committed, so a fresh checkout that adds one setting would otherwise write a
    results file holding that setting alone."""
    committed = json.loads(path.read_text()) if path.exists() else {}
    if any(committed.get(key) != value for key, value in (same or {}).items()):
        committed = {}
    committed = committed.get("rows", {})
    merged = {}
    for name in names:
        if name in rows:
            merged[name] = rows[name]
        elif name in committed:
            merged[name] = committed[name] | {"earlier_run": True}
    return merged


def _machines(timings: dict[str, Any]) -> str | None:
    """The machine's load as every timed step saw it: one label when all agree, else each step's own."""
    seen = {step: t["machine"] for step, t in timings.items() if t.get("machine")}
    if len(set(seen.values())) <= 1:
        return next(iter(seen.values()), None)
    return "; ".join(f"{step}: {machine}" for step, machine in seen.items())


def summarise(title: str, run_dir: Path, workflow, common: dict[str, Any]) -> dict[str, Any]:
    """The results JSON from the quality report and the timings."""
    from medgen3d.metrics.render import memorised_cases

    report = json.loads((run_dir / "eval" / "report" / "report.json").read_text())
    timings = _timings(run_dir)
    sets = _report_sets(report)
    anatomy = report["anatomy"]
    structures = {}
    for name in anatomy["presence_rate_synthetic"]:
        structures[name] = {
            "presence_rate": anatomy["presence_rate_synthetic"][name],
            "presence_rate_real": anatomy["presence_rate_real"][name],
            "fraction_real": anatomy["fractions"]["real"][name],
            "fraction_synthetic": anatomy["fractions"]["synthetic"][name],
            "components_real": anatomy["components"]["real"][name],
            "components_synthetic": anatomy["components"]["synthetic"][name],
            "continuity_real": anatomy["continuity"]["real"][name],
            "continuity_synthetic": anatomy["continuity"]["synthetic"][name],
            "z_profile_correlation": anatomy["z_profile_correlation"][name],
        }
        if "seed_agreement_gap" in anatomy:  # measured when the report had the mask model
            structures[name]["seed_agreement_gap"] = anatomy["seed_agreement_gap"][name]
    convergence = {"slice_change_rate": anatomy["slice_change_rate"]} if "slice_change_rate" in anatomy else {}
    memorised = memorised_cases(report, "refined")
    return {
        "dataset": title,
        "cases": report["counts"]["synthetic"],
        "held_out_cases": report["counts"]["held_out"],
        "machine": _machines(timings),
        "settings": _settings(workflow, common),
        "training_seconds": {stage: timings[stage]["seconds"] for stage in STAGES if stage in timings},
        "generation_seconds": timings.get("generate", {}).get("seconds"),
        "report_seconds": timings.get("evaluate", {}).get("seconds"),
        "structures": structures,
        **convergence,
        "alignment_dice": {k: v["alignment_dice"]["mean"] for k, v in sets.items()},
        **alignment_by_structure(sets),
        "feature_fd": {k: v["fidelity_frechet"]["mean"] for k, v in sets.items()},
        "ms_ssim": {k: v["diversity_ms_ssim"]["mean"] for k, v in sets.items()},
        "memorised_cases": len(memorised),
        "features": report["features"],
    }


def _report_sets(report: dict[str, Any]) -> dict[str, Any]:
    """The report's image sets: real held-out, the per-label lookups (in reports written since each was measured),
    refined and unrefined."""
    lookups = {key: report[key] for key in ("lookup", "lookup_synthetic") if key in report}
    return {"reference": report["reference"], **lookups, **report["sets"]}


def alignment_by_structure(sets: dict[str, Any]) -> dict[str, Any]:
    """``alignment_dice_structures``: each set's alignment Dice per structure; ``alignment_dice_real_looking``: the
    estimate of :func:`medgen3d.metrics.alignment.real_looking_alignment`, where the report has both lookups."""
    from medgen3d.metrics.alignment import real_looking_alignment

    by_structure = {k: {n: d for n, d in v["alignment_dice"].items() if n != "mean"} for k, v in sets.items()}
    out: dict[str, Any] = {"alignment_dice_structures": by_structure}
    if {"reference", "lookup", "lookup_synthetic"} <= by_structure.keys():
        out["alignment_dice_real_looking"] = real_looking_alignment(
            by_structure["reference"], by_structure["lookup"], by_structure["lookup_synthetic"]
        )
    return out


def tables(dataset: str = "brain-mni") -> None:
    """Write the results files of ``dataset``'s finished quality runs (the benchmark's own and its curve points)
    again from their reports, after a change of what the tables show: nothing is generated or scored again, and the
    recorded settings and timings are kept."""
    for path in sorted(RESULTS.glob(f"quality_{dataset}*.json")):
        report = RUNS / path.stem.removeprefix("quality_") / "eval" / "report" / "report.json"
        if path.stem.endswith("_before") or not report.is_file():
            continue
        results = json.loads(path.read_text())
        results.update(alignment_by_structure(_report_sets(json.loads(report.read_text()))))
        path.write_text(json.dumps(results, indent=2) + "\n")
        path.with_suffix(".md").write_text(markdown(results))
        print(f"{path.with_suffix('.md')}: rewritten from {report}")


def distances_to_real(structures: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Per structure and measure, how far a sampler's masks are from the real ones (0: as real): 1 - presence rate,
    and the absolute differences of volume fraction, components and slice continuity, 1 - z-profile r; None where
    the structure never appears."""
    out: dict[str, float | None] = {}
    for name, m in structures.items():
        present = m["continuity_synthetic"] is not None
        out[f"{name} presence"] = m["presence_rate_real"] - m["presence_rate"]
        out[f"{name} fraction"] = abs(m["fraction_synthetic"] - m["fraction_real"])
        out[f"{name} components"] = abs(m["components_synthetic"] - m["components_real"])
        out[f"{name} continuity"] = abs(m["continuity_synthetic"] - m["continuity_real"]) if present else None
        r = m["z_profile_correlation"]
        out[f"{name} z-profile"] = 1 - r if r is not None else None
    return out


REFINER_SETTINGS = ("noise_steps", "denoising_steps", "denoising_eta")
SET_TITLES = {"lookup": "per-label lookup (baseline)", "lookup_synthetic": "lookup of the synthetic masks"}
IMAGE_MEASURES = {  # results key -> (title, whether lower is closer to real)
    "feature_fd": ("feature Fréchet distance", True),
    "ms_ssim": ("MS-SSIM among cases", None),  # diversity: compared, not ranked
    "alignment_dice": ("alignment Dice", False),
}


def _generating_settings(results: dict[str, Any]) -> str:
    settings = results["settings"]
    mask, refiner = settings.get("mask", {}), settings.get("refiner", {})
    rate = ""  # recorded since mask_mcdpm 0.10.0, whose brain preset changed it
    if "learning_rate" in mask and "final_lr_fraction" in mask:
        start, end = mask["learning_rate"], mask["learning_rate"] * mask["final_lr_fraction"]
        rate = f", trained at learning rate {start:g} to {end:g}"
    if mask.get("class_weights"):  # recorded since mask_mcdpm 0.12.0, whose brain preset sets them
        rate += f", class weights {', '.join(f'{w:g}' for w in mask['class_weights'])}"
    versions = [f"{STAGE_BUNDLES[k]} {settings[k]['version']}" for k in STAGES if "version" in settings.get(k, {})]
    return (
        f"masks {mask.get('sampler', 'not recorded')}{rate}; refiner "
        + ", ".join(f"{k} {refiner[k] if k in refiner else 'not recorded'}" for k in REFINER_SETTINGS)
        + (f" (stage versions: {', '.join(versions)})" if versions else "")
    )


def compare(dataset: str = "brain-mni") -> None:
    """Write ``quality_<dataset>_change.md`` again from ``quality_<dataset>_before.json`` and the current results: after
    a rerun without ``--regenerate`` (the same cases evaluated again) has rewritten the results."""
    paths = [RESULTS / f"quality_{dataset}{suffix}.json" for suffix in ("_before", "")]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise SystemExit(f"nothing to compare: {missing} missing (run with --regenerate first)")
    text = change(*(json.loads(p.read_text()) for p in paths))
    (RESULTS / f"quality_{dataset}_change.md").write_text(text)
    print(text)


def change(before: dict[str, Any], after: dict[str, Any], tolerance: float = 0.1) -> str:
    """Markdown comparing two results of the same trained stages generated with different settings: each image
    measure and each mask measure's distance to the real masks, before, after, their ratio, and whether the after
    is within ``tolerance`` of the before (or closer to real)."""
    lines = [
        f"Quality benchmark, {after['dataset']}: every case generated again after a change of the settings below "
        "(the stages whose training settings changed trained again).",
        "",
        f"- before: {_generating_settings(before)}",
        f"- after: {_generating_settings(after)}",
        "",
        "| measure | before | after | after / before | within 10% or closer to real |",
        "|---|---|---|---|---|",
    ]
    kept = total = 0
    for key, (title, lower_is_better) in IMAGE_MEASURES.items():
        for setting in ("refined", "unrefined", "lookup_synthetic"):
            b, a = before[key].get(setting), after[key].get(setting)
            if b is None or a is None:
                continue
            if lower_is_better is None:
                verdict = "–"
            else:
                ok = a <= b * (1 + tolerance) if lower_is_better else a >= b * (1 - tolerance)
                kept, total, verdict = kept + ok, total + 1, "yes" if ok else "**no**"
            name = f"{title}, {SET_TITLES.get(setting, setting)}"
            lines.append(f"| {name} | {b:.3f} | {a:.3f} | {a / b if b else float('nan'):.2f} | {verdict} |")
    distances_before = distances_to_real(before["structures"])
    distances_after = distances_to_real(after["structures"])
    for key, b in distances_before.items():
        a = distances_after[key]
        if a is None and b is None:
            continue
        ok = a is not None and (b is None or a <= b * (1 + tolerance) + 1e-9)
        kept, total = kept + ok, total + 1
        ratio = f"{a / b:.2f}" if a is not None and b else "n/a"
        lines.append(f"| {key}: distance to real | {_f(b)} | {_f(a)} | {ratio} | {'yes' if ok else '**no**'} |")
    lines += ["", f"Kept: {kept} of {total} measures."]
    return "\n".join(lines) + "\n"


def _f(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    """The benchmark's tables."""
    t = results["training_seconds"]
    # Results recorded before a per-label lookup was measured have no such column, and are drawn as they were.
    lookups = [k for k in ("lookup", "lookup_synthetic") if k in results["alignment_dice"]]
    lines = [
        f"Quality benchmark, {results['dataset']}: {results['cases']} synthetic pairs against "
        f"{results['held_out_cases']} real held-out cases; training {sum(t.values()) / 60:.1f} min in all ("
        + ", ".join(f"{k} {v / 60:.1f}" for k, v in t.items())
        + f"), machine {results['machine'] or 'not recorded'}.",
        "",
        "| measure | real held-out (reference) | "
        + "".join(f"{SET_TITLES[k]} | " for k in lookups)
        + "synthetic, refined | synthetic, unrefined |",
        "|---|---|---|---|" + "---|" * len(lookups),
    ]
    for key, title in (
        ("feature_fd", "feature Fréchet distance, mean of 3 views (lower is closer to real)"),
        ("ms_ssim", "MS-SSIM among cases (lower is more diverse)"),
        ("alignment_dice", "alignment Dice (structures present)"),
    ):
        row = results[key]
        cells = [row["reference"], *[row[k] for k in lookups], row.get("refined"), row.get("unrefined")]
        lines.append(f"| {title} | " + " | ".join(_f(c) for c in cells) + " |")
    # Results recorded before the convergence measures existed have neither, and are drawn as they were.
    gap = all("seed_agreement_gap" in s for s in results["structures"].values())
    rate = results.get("slice_change_rate")
    lines += [
        "",
        f"Memorised synthetic cases: {results['memorised_cases']} of {results['cases']}."
        + (f" Slice-change rate, real / synthetic: {_f(rate['real'])} / {_f(rate['synthetic'])}." if rate else ""),
        "",
        "| structure | present in | volume fraction, real / synthetic | components, real / synthetic | "
        "slice continuity, real / synthetic | z-profile r |" + (" seed agreement gap |" if gap else ""),
        "|---|---|---|---|---|---|" + ("---|" if gap else ""),
    ]
    for name, s in results["structures"].items():
        lines.append(
            f"| {name} | {round(s['presence_rate'] * results['cases'])}/{results['cases']} | "
            f"{_f(s['fraction_real'])} / {_f(s['fraction_synthetic'])} | {_f(s['components_real'], 1)} / "
            f"{_f(s['components_synthetic'], 1)} | {_f(s['continuity_real'])} / {_f(s['continuity_synthetic'])} | "
            f"{_f(s['z_profile_correlation'], 2)} |" + (f" {_f(s['seed_agreement_gap'], 2)} |" if gap else "")
        )
    lines += _alignment_by_structure(results, lookups)
    return "\n".join(lines) + "\n"


def _alignment_by_structure(results: dict[str, Any], lookups: list[str]) -> list[str]:
    """The alignment Dice of each structure per set, with the estimate for real-looking images of the synthetic
    masks beside the lookup of those masks; nothing for results recorded before either was kept."""
    by_structure, estimate = results.get("alignment_dice_structures"), results.get("alignment_dice_real_looking")
    if not by_structure or estimate is None:
        return []
    columns = ["reference", *lookups, "real_looking", "refined", "unrefined"]
    titles = {
        **SET_TITLES,
        "reference": "real held-out",
        "real_looking": "real-looking images of the synthetic masks (estimate)",
        "refined": "synthetic, refined",
        "unrefined": "synthetic, unrefined",
    }
    means = {**results["alignment_dice"], "real_looking": estimate["mean"]}
    table = {c: {**by_structure.get(c, {}), "mean": means.get(c)} for c in columns if c != "real_looking"}
    table["real_looking"] = estimate
    lines = [
        "",
        "Alignment Dice by structure. The estimate: each structure's Dice on the lookup of the synthetic masks times "
        "the real images' Dice over the lookup's on the real masks, i.e. what images that lose to a lookup what the "
        f"real images lose would score on these masks (mean {_f(estimate['mean'])}).",
        "",
        "| structure | " + " | ".join(titles[c] for c in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    names = [n for n in estimate if n != "mean"]
    for name in [*names, "mean"]:
        lines.append(f"| {name} | " + " | ".join(_f(table[c].get(name)) for c in columns) + " |")
    return lines


def montage(real_dir: Path, synthetic_dir: Path, path: Path, title: str, count: int = 3) -> None:
    """``count`` real held-out cases beside ``count`` synthetic ones: image and mask overlay, three mid planes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medgen3d.data.dataset import read_dataset
    from medgen3d.preview import label_colormap

    rows = []
    for kind, directory, split in (("real", real_dir, "test"), ("synthetic", synthetic_dir, "training")):
        spec = read_dataset(directory)
        for case in spec.split(split)[:count]:
            image, label = spec.load_case(case)
            rows.append((f"{kind} {case.case_id}", image.array, label.array.astype(np.int64)))
    k = len(read_dataset(real_dir).labels)
    cmap = label_colormap(k)
    fig, axes = plt.subplots(len(rows), 6, figsize=(12, 2.1 * len(rows)), squeeze=False)
    for r, (name, image, label) in enumerate(rows):
        h, w, d = image.shape
        lo, hi = np.percentile(image, [1, 99])
        for v, take in enumerate((lambda a: a[:, :, d // 2], lambda a: a[:, w // 2, :], lambda a: a[h // 2, :, :])):
            axes[r, 2 * v].imshow(take(image).T, cmap="gray", vmin=lo, vmax=hi, origin="lower")
            axes[r, 2 * v + 1].imshow(
                take(label).T, cmap=cmap, vmin=0, vmax=k - 1, origin="lower", interpolation="nearest"
            )
        axes[r, 0].set_ylabel(name, fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    for v, view in enumerate(("axial", "coronal", "sagittal")):
        axes[0, 2 * v].set_title(f"{view} image", fontsize=9)
        axes[0, 2 * v + 1].set_title(f"{view} mask", fontsize=9)
    fig.suptitle(f"{title}: real held-out (top) and synthetic (bottom)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


if __name__ == "__main__":
    fire.Fire({"run": run, "compare": compare, "record": record, "curve_point": curve_point, "tables": tables})
