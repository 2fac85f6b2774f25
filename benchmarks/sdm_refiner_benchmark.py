"""sdm_refiner speed and memory: seconds per volume per view and in total, small presets, CPU, t_r = 10.

Speed does not depend on the weights, so the bundle's networks are used untrained:

    .venv/bin/python benchmarks/sdm_refiner_benchmark.py run --dataset brain-mni
    .venv/bin/python benchmarks/sdm_refiner_benchmark.py run --dataset thorax-phantom
    .venv/bin/python benchmarks/sdm_refiner_benchmark.py report
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import fire
import torch

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "sdm_refiner"
RESULTS = ROOT / "benchmarks" / "results"
DATASETS = {
    "brain-mni": (ROOT / "demo_output" / "brain-mni-small", []),
    "thorax-phantom": (ROOT / "demo_output" / "thorax-phantom-small", ["thorax.json"]),
}


def run(dataset: str = "brain-mni", noise_steps: int = 10, guidance_scale: float = 1.0, batch_size: int = 16) -> None:
    """Refine one validation volume along each view and time it."""
    from monai.bundle import ConfigParser

    from medgen3d.data.dataset import read_dataset
    from medgen3d.data.intensity import volume_scale
    from medgen3d.diffusion.refiner import SemanticRefiner, refine_volume
    from medgen3d.views import VIEWS

    torch.set_num_threads(2)
    data_dir, overlays = DATASETS[dataset]
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / c) for c in ["inference.json", *overlays]])
    parser["dataset_dir"] = str(data_dir)
    network = parser.get_parsed_content("denoiser_def").eval()  # one view's network
    num_classes = parser.get_parsed_content("num_classes")
    spec = read_dataset(data_dir)
    image, label = spec.load_case(spec.validation[0])
    x = volume_scale(image.array, spec.modality).to_network(torch.from_numpy(image.array))
    refiner = SemanticRefiner(
        parser.get_parsed_content("noise_scheduler"),
        noise_steps,
        guidance_scale,
        parser.get_parsed_content("size_multiple"),
    )
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
    entry = {
        "shape": list(image.array.shape),
        "noise_steps": noise_steps,
        "guidance_scale": guidance_scale,
        "seconds_per_view": per_view,
        "seconds_total": round(sum(per_view.values()), 2),
        "parameters_millions": round(sum(p.numel() for p in network.parameters()) / 1e6, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    path = RESULTS / "sdm_refiner.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[f"{dataset} s={guidance_scale}"] = entry
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(dataset, entry, file=sys.stderr)


def report() -> None:
    """Write benchmarks/results/sdm_refiner.md."""
    results = json.loads((RESULTS / "sdm_refiner.json").read_text())
    lines = [
        "| dataset, guidance | volume | t_r | s axial | s coronal | s sagittal | s total per volume | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, e in results.items():
        v = e["seconds_per_view"]
        lines.append(
            f"| {name} | {'×'.join(map(str, e['shape']))} | {e['noise_steps']} | {v['axial']} | {v['coronal']} | "
            f"{v['sagittal']} | {e['seconds_total']} | {e['peak_rss_mb']} |"
        )
    (RESULTS / "sdm_refiner.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    fire.Fire({"run": run, "report": report})
