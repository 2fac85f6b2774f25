"""End-to-end speed: seconds per paired volume for each generating stage (masks, images, three-view refinement),
small presets, CPU; and the demo's total time.

Generation speed does not depend on the weights (the samplers take a fixed number of steps), so ``run`` saves
untrained checkpoints of every stage's network and generates through the workflow bundle's generate.json:

    .venv/bin/python benchmarks/medgen3d_benchmark.py run --dataset brain-mni
    .venv/bin/python benchmarks/medgen3d_benchmark.py run --dataset thorax-phantom
    .venv/bin/python benchmarks/medgen3d_benchmark.py demo        # runs `medgen3d demo` into a fresh folder
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

import fire
import torch

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


def run(dataset: str = "brain-mni", num_cases: int = 3) -> None:
    """Generate ``num_cases`` pairs with untrained stages; record seconds per volume per stage and peak memory."""
    from monai.bundle import ConfigParser

    torch.set_num_threads(2)
    data_dir, overlays = DATASETS[dataset]
    root = WORK / dataset
    shutil.rmtree(root, ignore_errors=True)
    parser = ConfigParser()
    parser.read_config([str(BUNDLES / "medgen3d" / "configs" / c) for c in ["common.json", *overlays]])
    parser.update({"bundle_root": str(root), "stages_dir": str(BUNDLES), "dataset_dir": str(data_dir)})
    stages, views = parser.get_parsed_content("stages"), parser.get_parsed_content("views")
    _untrained_checkpoints(stages, data_dir, views)
    from medgen3d.pipeline.generation import generate_dataset

    start = time.perf_counter()
    result = generate_dataset(stages, data_dir, root / "synthetic", num_cases, views=views)
    total = time.perf_counter() - start
    shape = result.refined.load_case(result.refined.training[0])[1].array.shape
    per_volume = {stage: round(s / num_cases, 2) for stage, s in result.seconds.items() if stage != "previews"}
    record = {
        "dataset": dataset,
        "volume": "x".join(map(str, shape)),
        "num_cases": num_cases,
        "seconds_per_volume": per_volume,
        "total_seconds_per_volume": round(sum(per_volume.values()), 2),
        "wall_seconds": round(total, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch_threads": torch.get_num_threads(),
    }
    _save(f"generation/{dataset}", record)
    print(json.dumps(record, indent=2))


def demo(out: str = str(WORK / "demo")) -> None:
    """Run ``medgen3d demo`` into an empty folder and record its total and per-part seconds."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    command = [str(ROOT / ".venv" / "bin" / "medgen3d"), "demo", "--out", out]
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(done.stderr[-2000:])
    parts = dict((k, float(v)) for k, v in re.findall(r"(\w+) (\d+) s", done.stdout.splitlines()[-1]))
    _save("demo", {"total_seconds": round(seconds, 1), "parts_seconds": parts, "out": out})
    print(done.stdout[-3000:])


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
        "| dataset (small preset) | volume | masks s/volume | images s/volume | refinement s/volume (3 views) "
        "| total s/volume | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, r in sorted(results.items()):
        if key.startswith("generation/"):
            s = r["seconds_per_volume"]
            lines.append(
                f"| {r['dataset']} | {r['volume']} | {s['masks']} | {s['images']} | {s['refinement']} "
                f"| {r['total_seconds_per_volume']} | {r['peak_rss_mb']} |"
            )
    if "demo" in results:
        d = results["demo"]
        parts = ", ".join(f"{k} {v:.0f} s" for k, v in d["parts_seconds"].items() if k != "total")
        lines += ["", f"`make demo` (after set-up): {d['total_seconds'] / 60:.1f} minutes ({parts})."]
    (RESULTS / "medgen3d.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    fire.Fire({"run": run, "demo": demo, "report": report})
