"""sdm_refiner speed and memory: seconds per volume per view and in total, small presets, CPU.

Speed does not depend on the weights, so the bundle's networks are used untrained. For one dataset, ``run`` refines
the same validation volume under every setting of :data:`SETTINGS` (the bundle's defaults first, then each with
its overrides), one after the other in this one process, and records each one's ratio to the defaults and the
machine's load:

    .venv/bin/python benchmarks/sdm_refiner_benchmark.py run --dataset brain-mni
    .venv/bin/python benchmarks/sdm_refiner_benchmark.py run --dataset thorax-phantom
    .venv/bin/python benchmarks/sdm_refiner_benchmark.py report

Whether fewer steps keep the quality is measured with trained models by ``refiner_steps.py``.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import fire
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_benchmark import _machine  # noqa: E402  (the machine's load, sampled as every benchmark does)

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "sdm_refiner"
RESULTS = ROOT / "benchmarks" / "results"
DATASETS = {
    "brain-mni": (ROOT / "demo_output" / "brain-mni-small", ["brain.json"]),
    "thorax-phantom": (ROOT / "demo_output" / "thorax-phantom-small", ["thorax.json"]),
}
# setting -> overrides of inference.json; the first is the bundle's defaults
SETTINGS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "DDPM chain": {"denoising_steps": None},
    "DDIM-2": {"denoising_steps": 2},
    "guidance 1.5": {"guidance_scale": 1.5},
}


def _refine_once(parser: Any, overrides: dict[str, Any], dataset_dir: Path) -> dict[str, Any]:
    """Refine the first validation volume along each view with ``overrides``; seconds per view."""
    from medgen3d.data.dataset import read_dataset
    from medgen3d.data.intensity import volume_scale
    from medgen3d.diffusion.refiner import refine_volume
    from medgen3d.views import VIEWS

    for key, value in overrides.items():
        parser[key] = value
    network = parser.get_parsed_content("denoiser_def", lazy=False).eval()  # one view's network
    refiner = parser.get_parsed_content("refiner", lazy=False)
    num_classes, batch_size = parser.get_parsed_content("num_classes"), parser.get_parsed_content("batch_size")
    spec = read_dataset(dataset_dir)
    image, label = spec.load_case(spec.validation[0])
    x = volume_scale(image.array, spec.modality).to_network(torch.from_numpy(image.array))
    per_view = {}
    for view in VIEWS:
        start = time.perf_counter()
        refine_volume(
            {view: network},
            refiner,
            x,
            torch.from_numpy(label.array),
            num_classes,
            [view],
            batch_size,
            torch.Generator().manual_seed(0),
        )
        per_view[view] = round(time.perf_counter() - start, 2)
    return {
        "shape": list(image.array.shape),
        "noise_steps": refiner.noise_steps,
        "denoising_steps": refiner.denoising_steps,
        "guidance_scale": refiner.guidance_scale,
        "batch_size": batch_size,
        "seconds_per_view": per_view,
        "seconds_total": round(sum(per_view.values()), 2),
        "parameters_millions": round(sum(p.numel() for p in network.parameters()) / 1e6, 2),
    }


def run(dataset: str = "brain-mni", settings: str | tuple[str, ...] = tuple(SETTINGS), threads: int = 2) -> None:
    """Refine one validation volume along each view under each of ``settings``, side by side; time each."""
    from monai.bundle import ConfigParser

    torch.set_num_threads(threads)
    names = settings.split(",") if isinstance(settings, str) else list(settings)
    names = ["defaults", *(n for n in names if n != "defaults")]  # every ratio is to the defaults
    unknown = sorted(set(names) - set(SETTINGS))
    if unknown:
        raise SystemExit(f"--settings: unknown {unknown}; choose from {list(SETTINGS)}")
    data_dir, overlays = DATASETS[dataset]
    rows = {}
    for name in names:
        parser = ConfigParser()
        parser.read_config([str(BUNDLE / "configs" / c) for c in ["inference.json", *overlays]])
        parser["dataset_dir"] = str(data_dir)
        machine = _machine()
        rows[name] = {
            "overrides": SETTINGS[name],
            **_refine_once(parser, SETTINGS[name], data_dir),
            "machine": f"{machine} at the start; {_machine()} at the end",
        }
        print(dataset, name, rows[name], file=sys.stderr, flush=True)
    for row in rows.values():
        row["ratio_to_defaults"] = round(row["seconds_total"] / rows["defaults"]["seconds_total"], 3)
    path = RESULTS / "sdm_refiner.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results = {k: v for k, v in results.items() if "settings" in v}  # records of the old layout are dropped
    results[dataset] = {
        "settings": rows,
        "threads": threads,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    report()


def report() -> None:
    """Write benchmarks/results/sdm_refiner.md."""
    results = json.loads((RESULTS / "sdm_refiner.json").read_text())
    lines = [
        "Untrained networks, one validation volume, each view refined on its own; settings side by side in one "
        "process per dataset.",
        "",
        "| dataset | volume | setting | t_r | network steps | guidance | s axial | s coronal | s sagittal | "
        "s total per volume | ratio to defaults | machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset, record in results.items():
        for name, e in record["settings"].items():
            v = e["seconds_per_view"]
            lines.append(
                f"| {dataset} | {'×'.join(map(str, e['shape']))} | {name} | {e['noise_steps']} | "
                f"{e['denoising_steps']} | {e['guidance_scale']} | {v['axial']} | {v['coronal']} | {v['sagittal']} | "
                f"{e['seconds_total']} | {e['ratio_to_defaults']} | {e['machine']} |"
            )
    lines += [
        "",
        "Peak RSS per run: " + ", ".join(f"{d} {r['peak_rss_mb']} MB" for d, r in results.items()) + ".",
    ]
    (RESULTS / "sdm_refiner.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    fire.Fire({"run": run, "report": report})
