"""End-to-end speed: seconds per paired volume for each generating stage (masks, images, three-view refinement),
small presets, CPU; and the demo's total time.

Generation speed does not depend on the weights (the samplers take a fixed number of steps), so ``run`` saves
untrained checkpoints of every stage's network and generates through the workflow's ``generate_dataset`` once per
setting of :data:`SETTINGS`, side by side in one process, and records each setting's ratio to the defaults:

    .venv/bin/python benchmarks/medgen3d_benchmark.py run --dataset brain-mni
    .venv/bin/python benchmarks/medgen3d_benchmark.py run --dataset thorax-phantom
    .venv/bin/python benchmarks/medgen3d_benchmark.py demo        # `medgen3d demo` into a fresh folder, and its report
    .venv/bin/python benchmarks/medgen3d_benchmark.py report
"""

from __future__ import annotations

import json
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import fire
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_benchmark import _machine, record  # noqa: E402  (the machine's load as every benchmark samples it)

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "benchmarks" / "runs" / "medgen3d"
DATASETS = {
    "brain-mni": (ROOT / "demo_output" / "brain-mni-small", ["brain.json"]),
    "thorax-phantom": (ROOT / "demo_output" / "thorax-phantom-small", ["thorax.json"]),
}


def _untrained_checkpoints(stages, dataset_dir: Path, views) -> None:
    """Save each generating stage's freshly initialised network where generation loads it."""
    from medgen3d.data.dataset import read_dataset

    real = read_dataset(dataset_dir)
    values = {"dataset_dir": str(dataset_dir), "labels": {str(k): v for k, v in real.labels.items()}}
    for stage in (stages.mask, stages.image, stages.refiner):
        # network_def has the state dict of model.pt (the refiner's: every view's weights in one file)
        network = stage.workflow(["inference.json"], **values, views=list(views)).parser.get_parsed_content(
            "network_def"
        )
        path = Path(stage.ckpt_dir) / "model.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(network.state_dict(), path)


# Settings compared side by side in one run: stage -> overrides of its inference.json. The same untrained weights
# serve every setting (the mask network is the same for both noise schedules; only its sampler differs).
SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "defaults": {},
    "rflow-10, refiner DDIM-2": {"mask_mcdpm": {"noise_schedule": "rflow"}, "sdm_refiner": {"denoising_steps": 2}},
    "before: DDIM-50, DDPM chain": {
        "mask_mcdpm": {"noise_schedule": "ddpm", "beta_schedule": "linear_beta", "num_inference_steps": 50},
        "sdm_refiner": {"denoising_steps": None},
    },
}


def run(dataset: str = "brain-mni", num_cases: int = 3, settings: str | tuple[str, ...] = tuple(SETTINGS)) -> None:
    """Generate ``num_cases`` pairs with untrained stages under each of ``settings``, one after the other in this
    process; record seconds per volume per stage, each setting's ratio to the first, the machine load and the peak
    memory."""
    from monai.bundle import ConfigParser

    from medgen3d.pipeline.generation import generate_dataset

    torch.set_num_threads(2)
    names = settings.split(",") if isinstance(settings, str) else list(settings)
    unknown = sorted(set(names) - set(SETTINGS))
    if unknown:
        raise SystemExit(f"--settings: unknown {unknown}; choose from {list(SETTINGS)}")
    data_dir, overlays = DATASETS[dataset]
    root = WORK / dataset
    shutil.rmtree(root, ignore_errors=True)
    parser = ConfigParser()
    parser.read_config([str(BUNDLES / "medgen3d" / "configs" / c) for c in ["common.json", *overlays]])
    parser.update({"bundle_root": str(root), "stages_dir": str(BUNDLES), "dataset_dir": str(data_dir)})
    defaults = parser.get_parsed_content("stage_overrides")
    stages, views = parser.get_parsed_content("stages"), parser.get_parsed_content("views")
    _untrained_checkpoints(stages, data_dir, views)
    rows: dict[str, dict[str, Any]] = {}
    shape = None
    for name in names:
        overrides = {stage: {**values, **SETTINGS[name].get(stage, {})} for stage, values in defaults.items()}
        parser["stage_overrides"] = overrides
        stages = parser.get_parsed_content("stages", lazy=False)
        machine = _machine()
        start = time.perf_counter()
        result = generate_dataset(
            stages, data_dir, root / "synthetic" / name.replace(" ", "_").replace(",", ""), num_cases, views=views
        )
        wall = time.perf_counter() - start
        shape = result.refined.load_case(result.refined.training[0])[1].array.shape
        per_volume = {stage: round(s / num_cases, 2) for stage, s in result.seconds.items() if stage != "previews"}
        rows[name] = {
            "overrides": SETTINGS[name],
            "seconds_per_volume": per_volume,
            "total_seconds_per_volume": round(sum(per_volume.values()), 2),
            "wall_seconds": round(wall, 1),
            "machine": f"{machine} at the start; {_machine()} at the end",
        }
    first = rows[names[0]]
    for row in rows.values():
        row["ratio_to_" + names[0]] = {
            stage: round(seconds / first["seconds_per_volume"][stage], 3)
            for stage, seconds in row["seconds_per_volume"].items()
        } | {"total": round(row["total_seconds_per_volume"] / first["total_seconds_per_volume"], 3)}
    record = {
        "dataset": dataset,
        "volume": "x".join(map(str, shape)),
        "num_cases": num_cases,
        "settings": rows,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch_threads": torch.get_num_threads(),
    }
    _save(f"generation/{dataset}", record)
    print(json.dumps(record, indent=2))


def demo(out: str = str(WORK / "demo")) -> None:
    """Run ``medgen3d demo`` into an empty folder and record its total and per-part seconds and the machine's load;
    then record its quality report as ``results/quality_demo.*`` (``quality_benchmark.py record``)."""
    shutil.rmtree(out, ignore_errors=True)
    machine = _machine()
    start = time.perf_counter()
    command = [str(ROOT / ".venv" / "bin" / "medgen3d"), "demo", "--out", out]
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(done.stderr[-2000:])
    machine = f"{machine} at the start; {_machine()} at the end"
    parts = dict((k, float(v)) for k, v in re.findall(r"(\w+) (\d+) s", done.stdout.splitlines()[-1]))
    _save("demo", {"total_seconds": round(seconds, 1), "parts_seconds": parts, "machine": machine})
    print(done.stdout[-3000:])
    record(str(Path(out) / "workflow"), str(Path(out) / "brain-mni-small"), "demo", machine)
    report()


def _save(key: str, record: dict) -> None:
    path = RESULTS / "medgen3d.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[key] = record
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def report() -> None:
    """Write ``results/medgen3d.md`` from the recorded results."""
    results = json.loads((RESULTS / "medgen3d.json").read_text())
    lines = [
        "| dataset (small preset) | volume | setting | masks s/volume | images s/volume | refinement s/volume "
        "(3 views) | total s/volume | ratio to defaults | machine |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in sorted(results.items()):
        if key.startswith("generation/"):
            for name, row in r["settings"].items():
                s = row["seconds_per_volume"]
                ratio = row.get("ratio_to_defaults", {}).get("total")
                lines.append(
                    f"| {r['dataset']} | {r['volume']} | {name} | {s['masks']} | {s['images']} | {s['refinement']} "
                    f"| {row['total_seconds_per_volume']} | {ratio if ratio is not None else '-'} | {row['machine']} |"
                )
    lines += [
        "",
        "Peak RSS per run: "
        + ", ".join(
            f"{r['dataset']} {r['peak_rss_mb']} MB" for k, r in sorted(results.items()) if k.startswith("generation/")
        )
        + ".",
    ]
    if "demo" in results:
        d = results["demo"]
        parts = {k: v for k, v in d["parts_seconds"].items() if k != "total"}
        lines += [
            "",
            f"`medgen3d demo` (what `make demo` runs after its set-up), machine {d.get('machine', 'not recorded')}:",
            "",
            "| " + " | ".join(parts) + " | total |",
            "|---" * (len(parts) + 1) + "|",
            "| " + " | ".join(f"{v:.0f} s" for v in parts.values()) + f" | {d['total_seconds'] / 60:.1f} min |",
        ]
    (RESULTS / "medgen3d.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    fire.Fire({"run": run, "demo": demo, "report": report})
