"""segmentation_eval speed and memory on CPU: Swin-UNETR (feature sizes 12, 24, 48) and the 3D UNet at 64³ and 96³.

The networks are the bundle's own ``network_def`` (``inference.json``, and ``unet3d.json`` for the UNet), five
classes. Each configuration runs in its own process, so its peak memory is its own, and each names the machine's
load it saw:

    .venv/bin/python benchmarks/segmentation_eval_benchmark.py all
    .venv/bin/python benchmarks/segmentation_eval_benchmark.py report

Training: seconds per iteration (batch 1, one patch of the given size, DiceCE loss, AdamW), median of 5 after 2
warm-up iterations. Inference: seconds for one 2x-patch-size volume (e.g. 128³ for 64³ patches) with a sliding window
(overlap 0.25, 2 windows per batch).
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import fire
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_benchmark import _machine  # noqa: E402  (the machine's load, sampled as every benchmark does)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS_DIR = ROOT / "bundles" / "segmentation_eval" / "configs"
RESULTS = ROOT / "benchmarks" / "results"
WARM_UP, TIMED = 2, 5
CONFIGS = [("swin_unetr", 12), ("swin_unetr", 24), ("swin_unetr", 48), ("unet3d", 0)]
SIZES = (64, 96)


def _network(name: str, feature_size: int, num_classes: int = 5) -> torch.nn.Module:
    """The bundle's ``network_def``: Swin-UNETR from ``inference.json``, another network from its overlay."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    overlays = [] if name == "swin_unetr" else [f"{name}.json"]
    parser.read_config([str(CONFIGS_DIR / c) for c in ["inference.json", *overlays]])
    parser.update({"num_classes": num_classes, "feature_size": feature_size})
    return parser.get_parsed_content("network_def")


def one(name: str, feature_size: int, size: int) -> None:
    """Measure one network at one patch size and append the result."""
    from monai.inferers import SlidingWindowInferer
    from monai.losses import DiceCELoss

    torch.set_num_threads(2)
    torch.manual_seed(0)
    machine = _machine()
    network = _network(name, feature_size)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(network.parameters(), 2e-4)
    x, y = torch.randn(1, 1, size, size, size), torch.randint(0, 5, (1, 1, size, size, size))
    times = []
    for step in range(WARM_UP + TIMED):
        start = time.perf_counter()
        optimizer.zero_grad()
        loss_fn(network(x), y).backward()
        optimizer.step()
        if step >= WARM_UP:
            times.append(time.perf_counter() - start)
    network.eval()
    inferer = SlidingWindowInferer((size,) * 3, sw_batch_size=2, overlap=0.25)
    with torch.no_grad():
        start = time.perf_counter()
        inferer(torch.randn(1, 1, 2 * size, 2 * size, 2 * size), network)
        infer_seconds = time.perf_counter() - start
    entry = {
        "network": name if not feature_size else f"{name} fs={feature_size}",
        "patch": size,
        "parameters_millions": round(sum(p.numel() for p in network.parameters()) / 1e6, 1),
        "train_seconds_per_iteration": round(statistics.median(times), 2),
        "inference_seconds_per_volume": round(infer_seconds, 1),
        "inference_volume": f"{2 * size}³",
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "threads": torch.get_num_threads(),
        "machine": f"{machine} at the start; {_machine()} at the end",
    }
    path = RESULTS / "segmentation_eval.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[f"{entry['network']} {size}"] = entry
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(entry, file=sys.stderr)


def all() -> None:  # noqa: A001 - the command's name
    """Every configuration, each in a fresh process (the old results are replaced)."""
    (RESULTS / "segmentation_eval.json").unlink(missing_ok=True)
    for name, feature_size in CONFIGS:
        for size in SIZES:
            subprocess.run([sys.executable, __file__, "one", name, str(feature_size), str(size)], check=True)
    report()


def report() -> None:
    """Write benchmarks/results/segmentation_eval.md."""
    results = json.loads((RESULTS / "segmentation_eval.json").read_text())
    lines = [
        f"Batch 1, five classes, median of {TIMED} training iterations after {WARM_UP} warm-up ones; inference: one "
        "volume of twice the patch size, sliding window (overlap 0.25, 2 windows per batch).",
        "",
        "| network | patch | parameters | training s / iteration | inference s / volume | peak RSS | threads | "
        "machine |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in results.values():
        lines.append(
            f"| {e['network']} | {e['patch']}³ | {e['parameters_millions']} M | "
            f"{e['train_seconds_per_iteration']} | {e['inference_seconds_per_volume']} "
            f"({e['inference_volume']}) | {e['peak_rss_mb']} MB | {e.get('threads', 'n/a')} | "
            f"{e.get('machine', 'not recorded')} |"
        )
    (RESULTS / "segmentation_eval.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    fire.Fire({"one": one, "all": all, "report": report})
