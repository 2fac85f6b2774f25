"""image_vid2vid speed and memory on the brain-mni and thorax-phantom small presets (CPU).

Each dataset runs in its own process so that peak memory is its own:

    .venv/bin/python benchmarks/image_vid2vid_benchmark.py run --dataset brain-mni
    .venv/bin/python benchmarks/image_vid2vid_benchmark.py run --dataset thorax-phantom
    .venv/bin/python benchmarks/image_vid2vid_benchmark.py report

Training: iterations per second of the bundle's small preset (its batch size and run length are recorded), after 2
warm-up iterations. Inference: slices per second generating the images of real validation masks, batch of 2 volumes.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import fire
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_benchmark import _machine  # noqa: E402  (the machine's load, sampled as every benchmark does)

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "image_vid2vid"
RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "benchmarks" / "runs" / "image_vid2vid"
DATASETS = {
    "brain-mni": (ROOT / "demo_output" / "brain-mni-small", ["brain.json"]),
    "thorax-phantom": (ROOT / "demo_output" / "thorax-phantom-small", ["thorax.json"]),
}


def _ensure(dataset: str) -> Path:
    path = DATASETS[dataset][0]
    if not (path / "dataset.json").exists():
        if dataset == "brain-mni":
            from medgen3d.data.brain_mni import build_brain_mni

            build_brain_mni(path, preset="small")
        else:
            from medgen3d.data.thorax_phantom import build_thorax_phantom

            build_thorax_phantom(path, preset="small")
    return path


def run(dataset: str = "brain-mni", iterations: int = 12, volumes: int = 2) -> None:
    """Measure training and inference speed and peak memory for one dataset."""
    from ignite.engine import Events

    from medgen3d.data.datalists import label_datalist
    from medgen3d.data.dataset import read_dataset
    from medgen3d.pipeline.stages import StageBundle

    torch.set_num_threads(2)
    data_dir = _ensure(dataset)
    machine = _machine()
    overlays = DATASETS[dataset][1]
    stage = StageBundle(BUNDLE, RUNS / dataset / "models", RUNS / dataset / "eval", overlays=overlays)
    workflow = stage.workflow(
        ["train.json"],
        bundle_root=str(RUNS / dataset),
        dataset_dir=str(data_dir),
        max_iterations=1_000_000,
        val_interval=1_000_000,
    )
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    stamps: list[float] = []

    def tick(engine):
        stamps.append(time.perf_counter())
        if len(stamps) >= iterations + 2:
            engine.terminate()

    trainer.add_event_handler(Events.ITERATION_COMPLETED, tick)
    workflow.run()
    train_rate = (len(stamps) - 3) / (stamps[-1] - stamps[2])
    generator = workflow.parser.get_parsed_content("generator_def").eval()
    spec = read_dataset(data_dir)
    labels = workflow.parser.get_parsed_content("labels")
    image_size = workflow.parser.get_parsed_content("slice_size")
    cases = label_datalist(spec, labels, 1, ("validation",))[:volumes]
    from medgen3d.data.io import load_nifti
    from medgen3d.synthesis.images import generate_image_volumes
    from medgen3d.transforms.subsequence import resize_label_slices

    volumes_in = [
        resize_label_slices(
            torch.from_numpy(load_nifti(c["label"]).array).long().permute(2, 0, 1), image_size, len(labels)
        )
        for c in cases
    ]
    start = time.perf_counter()
    generate_image_volumes(generator, volumes_in, len(labels))
    seconds = time.perf_counter() - start
    slices = sum(v.shape[0] for v in volumes_in)
    entry = {
        "image_size": list(image_size),
        "train_iterations_per_second": round(train_rate, 3),
        "train_seconds_per_iteration": round(1 / train_rate, 2),
        "inference_slices_per_second": round(slices / seconds, 1),
        "inference_seconds_per_volume": round(seconds / len(volumes_in), 2),
        "slices_per_volume": volumes_in[0].shape[0],
        "batch_size": workflow.parser.get_parsed_content("batch_size"),
        "run_length": workflow.parser.get_parsed_content("run_length"),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "machine": f"{machine} at the start; {_machine()} at the end",
    }
    path = RESULTS / "image_vid2vid.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[dataset] = entry
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(dataset, entry, file=sys.stderr)


def report() -> None:
    """Write benchmarks/results/image_vid2vid.md."""
    results = json.loads((RESULTS / "image_vid2vid.json").read_text())
    lines = [
        "| dataset (small preset) | slice size | training batch × run length | training s / iteration | "
        "inference slices / s | s / volume | peak RSS (MB) | machine |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, e in results.items():
        lines.append(
            f"| {name} | {e['image_size'][0]}×{e['image_size'][1]} | {e['batch_size']} × {e['run_length']} | "
            f"{e['train_seconds_per_iteration']} | {e['inference_slices_per_second']} | "
            f"{e['inference_seconds_per_volume']} ({e['slices_per_volume']} slices) | {e['peak_rss_mb']} | "
            f"{e['machine']} |"
        )
    (RESULTS / "image_vid2vid.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    fire.Fire({"run": run, "report": report})
