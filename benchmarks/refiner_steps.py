"""How few denoising steps the refiner needs: the DDPM chain from ``t_r`` against DDIM steps over the same noise.

Starts from what the quality benchmark on brain-mni built (run it first): its image generator gives the images of
the first ``--cases`` real held-out masks, and its three refiner views refine each of them once per setting of
``--steps``, side by side in this one process, each case with the same seed under every setting. Every setting is
scored as the image variants are (:class:`image_variants.Judge`: mean absolute difference to the real image of the
same mask, alignment Dice of the real-trained segmenter, feature Fréchet distance to the real held-out images) and
timed per volume; the results give each one's ratio to the DDPM chain (``t_r`` steps, the paper's refiner) and how
much of the chain's change from the unrefined images it keeps. Fewer steps than ``t_r`` run DDIM at each of
``--etas`` (0: deterministic; 1: the DDPM posterior's fresh noise at every step).

    .venv/bin/python benchmarks/quality_benchmark.py run --dataset brain-mni    # first
    .venv/bin/python benchmarks/refiner_steps.py run [--steps 10,5,2,1] [--etas 0,1] [--cases 5]

writes ``benchmarks/results/refiner_steps.{json,md}``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import fire
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from image_variants import QUALITY, Judge, _refine, _stage  # noqa: E402  (the sibling benchmark's judge and stages)
from quality_benchmark import RESULTS, _machine  # noqa: E402

MEASURES = ("l1_to_real", "alignment_dice", "feature_fd")


def _generated_images(judge: Judge, cases: int) -> list[torch.Tensor]:
    """The quality run's image generator on the first ``cases`` held-out masks: ``(H, W, D)`` in [-1, 1]."""
    from medgen3d.engines.checkpoint import load_weights
    from medgen3d.synthesis.images import generate_images_for_labels

    parser = (
        _stage("image_vid2vid", QUALITY)
        .workflow(["inference.json"], ckpt_dir=str(QUALITY / "models" / "image_vid2vid"))
        .parser
    )
    network = load_weights(parser.get_parsed_content("network"), parser.get_parsed_content("checkpoint")).eval()
    labels = [torch.from_numpy(label).permute(2, 0, 1) for label in judge.real.labels[:cases]]
    images = generate_images_for_labels(network, labels, judge.num_classes, parser.get_parsed_content("slice_size"))
    return [image.permute(1, 2, 0) for image in images]


def run(
    steps: str | tuple[int, ...] = "10,5,2,1",
    etas: str | tuple[float, ...] = "0,1",
    cases: int = 5,
    noise_steps: int = 10,
    threads: int = 2,
) -> None:
    """Refine the generated images of ``cases`` held-out masks with each number of denoising steps (fewer than
    ``noise_steps``: DDIM with each of ``etas``); time and score."""
    torch.set_num_threads(threads)
    counts = [int(s) for s in (steps.split(",") if isinstance(steps, str) else steps)]
    eta_values = [float(e) for e in (etas.split(",") if isinstance(etas, str) else etas)]
    judge = Judge()
    machine = _machine()
    images = _generated_images(judge, cases)
    stage, models = _stage("sdm_refiner", QUALITY), QUALITY / "models" / "sdm_refiner"
    rows: dict[str, dict[str, Any]] = {
        "unrefined": {"steps": 0, "eta": None, "seconds_per_volume": 0.0, **judge.score(images)}
    }
    plan = [("DDPM chain", noise_steps, None)] if noise_steps in counts else []
    plan += [
        (f"DDIM-{count}" + (f", eta {eta:g}" if eta else ""), count, eta)
        for count in counts
        if count != noise_steps
        for eta in eta_values
    ]
    for name, count, eta in plan:
        start = time.perf_counter()
        refined = _refine(stage, models, images, judge, noise_steps, denoising_steps=count, denoising_eta=eta or 0.0)
        seconds = (time.perf_counter() - start) / len(images)
        rows[name] = {"steps": count, "eta": eta, "seconds_per_volume": round(seconds, 2), **judge.score(refined)}
        print(f"{name}: {rows[name]}", file=sys.stderr, flush=True)
    baseline = rows["DDPM chain"] if "DDPM chain" in rows else None
    if baseline is not None:
        unrefined = rows["unrefined"]
        for row in rows.values():
            row["ratio"] = {
                key: (row[key] / baseline[key] if baseline[key] else None) for key in ("seconds_per_volume", *MEASURES)
            }
            # how much of the DDPM chain's own change (from the unrefined images) this setting makes: the ratios
            # above cannot tell a setting that refines from one that leaves the images alone when that change is small
            row["effect_kept"] = {
                key: (
                    ((row[key] - unrefined[key]) / (baseline[key] - unrefined[key]))
                    if baseline[key] != unrefined[key]
                    else None
                )
                for key in MEASURES
            }
    shape = "×".join(str(s) for s in images[0].shape)
    results = {
        "dataset": "brain-mni small (the quality benchmark's models)",
        "cases": len(images),
        "volume": shape,
        "noise_steps": noise_steps,
        "threads": threads,
        "machine": f"{machine} at the start; {_machine()} at the end",
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "refiner_steps.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "refiner_steps.md").write_text(markdown(results))
    print(markdown(results))


def _f(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    """The results as a table: each setting's measures and their ratio to the DDPM chain."""
    lines = [
        f"Refiner denoising steps, {results['dataset']}: the generated images of {results['cases']} real held-out "
        f"masks ({results['volume']}), noised to t_r = {results['noise_steps']} and refined by the three views; "
        f"{results['threads']} threads; machine: {results['machine']}.",
        "",
        "| setting | network steps | s per volume | L1 to real | alignment Dice | feature FD | "
        "ratio s | ratio L1 | ratio Dice | ratio FD | change kept L1 | change kept Dice | change kept FD |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["rows"].items():
        ratio = row.get("ratio", {})
        lines.append(
            f"| {name} | {row['steps']} | {_f(row['seconds_per_volume'], 2)} | {_f(row['l1_to_real'])} | "
            f"{_f(row['alignment_dice'])} | {_f(row['feature_fd'])} | "
            + " | ".join(_f(ratio.get(key), 2) for key in ("seconds_per_volume", *MEASURES))
            + " | "
            + " | ".join(_f(row.get("effect_kept", {}).get(key), 2) for key in MEASURES)
            + " |"
        )
    lines += [
        "",
        "Ratio: the setting's value over the DDPM chain's. Change kept: the setting's change from the unrefined images "
        "over the DDPM chain's change (1: the same change, 0: none).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    fire.Fire({"run": run})
