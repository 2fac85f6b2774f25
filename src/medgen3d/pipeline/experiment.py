"""The paper's downstream experiment (MedGen3D Tables 2-4) through the segmentation_eval bundle.

Every (network, seed) trains the chosen strategies in dependency order, each from its own overlay:

    E2-1 real only        E2-2 synthetic only        E2-3 real + synthetic
    E2-4 E2-2 fine-tuned on real                     E2-5 E2-3 fine-tuned on real
    E3   E2-3 fine-tuned on a small target dataset (transfer)

A fine-tuning strategy starts from its source strategy's model of the same network and seed; a source that was
not asked for is trained too. Every run is scored by Dice on the held-out split of each test set (and of the target
dataset, when there is one). A finished run leaves ``runs/<strategy>-<network>-seed<k>.json``, so rerunning an
interrupted experiment skips it; the table over all runs (mean ± std over seeds) goes to ``results.*``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path

from medgen3d.data.dataset import read_dataset
from medgen3d.data.io import read_json, write_json
from medgen3d.metrics.segmentation import SegmentationResult, markdown_table, write_results
from medgen3d.pipeline.stages import StageBundle

__all__ = ["STRATEGIES", "NETWORKS", "FINE_TUNED_FROM", "run_order", "run_experiment"]

# strategy -> its overlay in the segmentation_eval bundle, in the order they must run
STRATEGIES = {
    "E2-1": "strategies/e2_1_real.json",
    "E2-2": "strategies/e2_2_synthetic.json",
    "E2-3": "strategies/e2_3_mixed.json",
    "E2-4": "strategies/e2_4_finetune_synthetic.json",
    "E2-5": "strategies/e2_5_finetune_mixed.json",
    "E3": "strategies/e3_transfer.json",
}
FINE_TUNED_FROM = {"E2-4": "E2-2", "E2-5": "E2-3", "E3": "E2-3"}
# network name -> its overlay (Swin-UNETR is train.json's own network)
NETWORKS = {"swin_unetr": [], "unetr": ["unetr.json"], "unet3d": ["unet3d.json"], "unet2d": ["unet2d.json"]}


def run_order(strategies: Sequence[str]) -> list[str]:
    """The strategies to train, sources of fine-tuning included, in dependency order."""
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; choose from {list(STRATEGIES)}")
    wanted = set(strategies) | {FINE_TUNED_FROM[s] for s in strategies if s in FINE_TUNED_FROM}
    return [s for s in STRATEGIES if s in wanted]


def run_experiment(
    segmentation: StageBundle,
    dataset_dir: str | os.PathLike,
    synthetic_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    strategies: Sequence[str] = ("E2-1", "E2-2", "E2-3", "E2-4", "E2-5"),
    networks: Sequence[str] = ("swin_unetr",),
    seeds: Sequence[int] = (0, 1, 2),
    test_sets: Mapping[str, str | os.PathLike] | None = None,
    target_dir: str | os.PathLike | None = None,
    test_split: str = "test",
) -> list[SegmentationResult]:
    """Train and score every (strategy, network, seed); write the combined results into ``out_dir``.

    Args:
        segmentation: the segmentation_eval bundle (``base=()``: its ``train.json`` stands alone); its overlays
            and overrides (epochs, patch size, ...) apply to every run.
        dataset_dir: the real dataset (training, validation and the default test set).
        synthetic_dir: the synthetic paired dataset (E2-2, E2-3).
        out_dir: ``models/<network>/seed<k>/<strategy>/``, ``runs/`` and ``results.{json,csv,md,png}``.
        strategies: strategies to report (sources of fine-tuning are trained too).
        networks: names of :data:`NETWORKS`.
        seeds: one run per seed.
        test_sets: name -> dataset folder; default the real dataset under its own name.
        target_dir: the small target dataset of E3 (required for E3); it is also scored as a test set.
        test_split: the split of each test set that is scored.
    """
    unknown = sorted(set(networks) - set(NETWORKS))
    if unknown:
        raise ValueError(f"unknown networks {unknown}; choose from {list(NETWORKS)}")
    order = run_order(strategies)
    if "E3" in order and target_dir is None:
        raise ValueError("strategy E3 (transfer) needs a target dataset: set target_dir")
    real = read_dataset(dataset_dir)
    tests = {name: str(folder) for name, folder in (test_sets or {real.name: str(real.root)}).items()}
    if target_dir is not None:
        tests.setdefault(read_dataset(target_dir).name, str(target_dir))
    out = Path(out_dir)
    shared = {
        "dataset_dir": str(real.root),
        "synthetic_dir": str(synthetic_dir),
        "labels": {str(k): v for k, v in real.labels.items()},
        "modality": real.modality,
        "test_sets": tests,
        "test_split": test_split,
        **({"target_dir": str(target_dir)} if target_dir is not None else {}),
    }
    results = []
    for network in networks:
        for seed in seeds:
            models = out / "models" / network / f"seed{seed}"
            for strategy in order:
                run = _run_one(segmentation, out, models, strategy, network, int(seed), shared)
                if strategy in strategies:
                    results.extend(run)
    write_results(results, out)
    print(markdown_table(results))
    return results


def _run_one(
    segmentation: StageBundle, out: Path, models: Path, strategy: str, network: str, seed: int, shared: dict
) -> list[SegmentationResult]:
    """Train then score one run, or read its recorded scores."""
    record = out / "runs" / f"{strategy}-{network}-seed{seed}.json"
    if record.is_file():
        return [SegmentationResult(**r) for r in read_json(record)]
    overrides = {
        **shared,
        "seed": seed,
        "strategy": strategy,
        "network_name": network,
        "ckpt_dir": str(models / strategy),
        "evaluation_dir": str(out / "runs" / f"{strategy}-{network}-seed{seed}"),
    }
    if strategy == "E3":
        del overrides["dataset_dir"]  # E3 trains and validates on the target dataset (its overlay's dataset_dir)
    if strategy in FINE_TUNED_FROM:
        overrides["pretrained_checkpoint"] = str(models / FINE_TUNED_FROM[strategy] / "model.pt")
    task = ["train.json", *NETWORKS[network], STRATEGIES[strategy]]
    stage = replace(segmentation, output_dir=Path(segmentation.output_dir) / f"{strategy}-{network}-seed{seed}")
    stage.run(task, **overrides)
    # evaluation in its own workflow: evaluate.json loads the best model the training just saved
    results = stage.run([*task, "evaluate.json"], **overrides).parser.get_parsed_content("results")
    write_json(record, [asdict(r) | {"dice": dict(r.dice)} for r in results])
    return list(results)
