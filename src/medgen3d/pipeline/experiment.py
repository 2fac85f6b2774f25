"""The paper's downstream experiment (MedGen3D Tables 2-4) through the segmentation_eval bundle.

Every (network, seed) trains the chosen strategies in dependency order, each from its own overlay:

    E2-0 real only, strongly augmented (the baseline synthetic data has to beat)
    E2-1 real only        E2-2 synthetic only        E2-3 real + synthetic
    E2-4 E2-2 fine-tuned on real                     E2-5 E2-3 fine-tuned on real
    E3-1 target only      E3-2 E2-1 fine-tuned on the target
    E3-3 E2-4 fine-tuned on the target               E3-4 E2-5 fine-tuned on the target

The target is a small dataset with the same labels from another domain (another scanner). A fine-tuning strategy
starts from its source strategy's model of the same network and seed; a source that was not asked for is trained
too. Every strategy of one table trains the same number of optimiser steps (:class:`StepBudget`), so none wins by
training longer. Every run is scored by Dice on the held-out split of each test set (and of the target dataset,
when there is one). A finished run leaves ``runs/<strategy>-<network>-seed<k>.json``, so rerunning an interrupted
experiment skips it; the tables over all runs (mean ± std over seeds) go to ``results.*``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

from medgen3d.data.dataset import read_dataset
from medgen3d.data.io import read_json, write_json
from medgen3d.metrics.segmentation import SegmentationResult, markdown_table, write_results
from medgen3d.pipeline.stages import StageBundle

__all__ = [
    "STRATEGIES",
    "NETWORKS",
    "FINE_TUNED_FROM",
    "TARGET_STRATEGIES",
    "StepBudget",
    "run_order",
    "run_experiment",
]

# strategy -> its overlay in the segmentation_eval bundle, in an order where every source precedes its uses
STRATEGIES = {
    "E2-0": "strategies/e2_0_augmented.json",
    "E2-1": "strategies/e2_1_real.json",
    "E2-2": "strategies/e2_2_synthetic.json",
    "E2-3": "strategies/e2_3_mixed.json",
    "E2-4": "strategies/e2_4_finetune_synthetic.json",
    "E2-5": "strategies/e2_5_finetune_mixed.json",
    "E3-1": "strategies/e3_1_target_only.json",
    "E3-2": "strategies/e3_2_from_e2_1.json",
    "E3-3": "strategies/e3_3_from_e2_4.json",
    "E3-4": "strategies/e3_4_from_e2_5.json",
}
FINE_TUNED_FROM = {"E2-4": "E2-2", "E2-5": "E2-3", "E3-2": "E2-1", "E3-3": "E2-4", "E3-4": "E2-5"}
TARGET_STRATEGIES = ("E3-1", "E3-2", "E3-3", "E3-4")  # trained and validated on the target dataset
# the Table 2-3 fine-tuning (E2-4, E2-5) -> its source, whose run keeps a snapshot for it
_FINE_TUNED_ON_REAL = {s: source for s, source in FINE_TUNED_FROM.items() if s not in TARGET_STRATEGIES}
# network name -> its overlay (Swin-UNETR is train.json's own network)
NETWORKS = {"swin_unetr": [], "unetr": ["unetr.json"], "unet3d": ["unet3d.json"], "unet2d": ["unet2d.json"]}


class TrainingPlan(NamedTuple):
    """How one strategy trains within its table's budget.

    iterations: optimiser steps of this run; source_weights: the file of its source's models folder it starts
    from (``None``: fresh weights); snapshots: iterations after which its weights are kept for a fine-tuning
    strategy; steps: the table's label, ``"P + F"`` for a fine-tuned strategy.
    """

    iterations: int
    source_weights: str | None
    snapshots: tuple[int, ...]
    steps: str


@dataclass(frozen=True)
class StepBudget:
    """Optimiser steps per strategy, equal within each table.

    Tables 2-3 (E2-*): every strategy trains ``steps``. E2-4 and E2-5 split them: their source's weights after
    ``steps - fine_tuning`` steps (a snapshot of the source's own run), then ``fine_tuning`` steps on real data.

    Table 4 (E3-*): every strategy trains ``steps + transfer_steps``. E3-2 ... E3-4 fine-tune their source's
    finished model (itself ``steps`` long) for ``transfer_steps`` on the target; E3-1 trains all of them on the
    target from fresh weights.

    Args:
        steps: each E2 strategy's optimiser steps.
        fine_tune_fraction: the share of ``steps`` that E2-4 and E2-5 spend fine-tuning.
        transfer_steps: the E3 strategies' fine-tuning steps on the target.
    """

    steps: int
    fine_tune_fraction: float = 0.5
    transfer_steps: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.transfer_steps < 0 or not 0 < self.fine_tune_fraction < 1:
            raise ValueError(f"steps must be >= 1, transfer_steps >= 0 and fine_tune_fraction in (0, 1): {self}")
        if not 0 < self.fine_tuning < self.steps:
            raise ValueError(f"{self}: fine-tuning would take {self.fine_tuning} of {self.steps} steps")

    @property
    def fine_tuning(self) -> int:
        """E2-4 and E2-5's steps on real data."""
        return round(self.steps * self.fine_tune_fraction)

    @property
    def pretraining(self) -> int:
        """E2-4 and E2-5's steps on their source's data (the source's snapshot)."""
        return self.steps - self.fine_tuning

    def plan(self, strategy: str) -> TrainingPlan:
        """The run of ``strategy`` under this budget."""
        if strategy in _FINE_TUNED_ON_REAL:
            return TrainingPlan(
                self.fine_tuning, f"model_step{self.pretraining}.pt", (), f"{self.pretraining} + {self.fine_tuning}"
            )
        if strategy in TARGET_STRATEGIES and strategy not in FINE_TUNED_FROM:  # E3-1
            return TrainingPlan(self.steps + self.transfer_steps, None, (), str(self.steps + self.transfer_steps))
        if strategy in FINE_TUNED_FROM:
            if self.transfer_steps < 1:
                raise ValueError(f"{strategy} fine-tunes on the target: transfer_steps must be >= 1, got 0")
            return TrainingPlan(self.transfer_steps, "model.pt", (), f"{self.steps} + {self.transfer_steps}")
        snapshots = (self.pretraining,) if strategy in _FINE_TUNED_ON_REAL.values() else ()
        return TrainingPlan(self.steps, None, snapshots, str(self.steps))


def run_order(strategies: Sequence[str]) -> list[str]:
    """The strategies to train, sources of fine-tuning (and theirs) included, in dependency order."""
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; choose from {list(STRATEGIES)}")
    wanted, pending = set(), list(strategies)
    while pending:
        strategy = pending.pop()
        if strategy not in wanted:
            wanted.add(strategy)
            pending += [FINE_TUNED_FROM[strategy]] if strategy in FINE_TUNED_FROM else []
    return [s for s in STRATEGIES if s in wanted]


def run_experiment(
    segmentation: StageBundle,
    dataset_dir: str | os.PathLike,
    synthetic_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    strategies: Sequence[str] = ("E2-0", "E2-1", "E2-2", "E2-3", "E2-4", "E2-5"),
    networks: Sequence[str] = ("swin_unetr",),
    seeds: Sequence[int] = (0, 1, 2),
    test_sets: Mapping[str, str | os.PathLike] | None = None,
    target_dir: str | os.PathLike | None = None,
    test_split: str = "test",
    steps: int | None = None,
    fine_tune_fraction: float = 0.5,
    transfer_steps: int | None = None,
) -> list[SegmentationResult]:
    """Train and score every (strategy, network, seed); write the combined results into ``out_dir``.

    Args:
        segmentation: the segmentation_eval bundle (``base=()``: its ``train.json`` stands alone); its overlays
            and overrides (patch size, learning rate, ``val_interval``, ...) apply to every run.
        dataset_dir: the real dataset (training, validation and the default test set).
        synthetic_dir: the synthetic paired dataset (E2-2, E2-3).
        out_dir: ``models/<network>/seed<k>/<strategy>/``, ``runs/`` and ``results.{json,csv,md,png}``.
        strategies: strategies to report (sources of fine-tuning are trained too).
        networks: names of :data:`NETWORKS`.
        seeds: one run per seed.
        test_sets: name -> dataset folder; default the real dataset under its own name.
        target_dir: the small target dataset of the E3 strategies (required for them); it is also scored as a
            test set.
        test_split: the split of each test set that is scored.
        steps: each E2 strategy's optimiser steps (:class:`StepBudget`); default the bundle's ``max_iterations``.
        fine_tune_fraction: the share of ``steps`` E2-4 and E2-5 spend fine-tuning.
        transfer_steps: the E3 strategies' steps on the target beyond ``steps``; default half of ``steps``.
    """
    unknown = sorted(set(networks) - set(NETWORKS))
    if unknown:
        raise ValueError(f"unknown networks {unknown}; choose from {list(NETWORKS)}")
    order = run_order(strategies)
    targeted = [s for s in order if s in TARGET_STRATEGIES]
    if targeted and target_dir is None:
        raise ValueError(f"strategies {targeted} train on a target dataset: set target_dir")
    budget = _budget(segmentation, order, steps, fine_tune_fraction, transfer_steps)
    real = read_dataset(dataset_dir)
    tests = {name: str(folder) for name, folder in (test_sets or {real.name: str(real.root)}).items()}
    if target_dir is not None and str(target_dir) not in tests.values():
        name = read_dataset(target_dir).name
        tests["target" if name in tests else name] = str(target_dir)  # a target named like the real dataset
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
                run = _run_one(segmentation, out, models, strategy, network, int(seed), budget.plan(strategy), shared)
                if strategy in strategies:
                    results.extend(run)
    write_results(results, out)
    print(markdown_table(results))
    return results


def _budget(
    segmentation: StageBundle, order: Sequence[str], steps: int | None, fraction: float, transfer: int | None
) -> StepBudget:
    """The step budget, checked against the bundle's ``val_interval`` (a run's length is whole validation
    intervals, so every run must be a multiple of it to train exactly its planned steps)."""
    parser = segmentation.workflow(["train.json"]).parser
    steps = int(parser.get_parsed_content("max_iterations")) if steps is None else int(steps)
    budget = StepBudget(steps, fraction, steps // 2 if transfer is None else int(transfer))
    interval = int(parser.get_parsed_content("val_interval"))
    uneven = {s: budget.plan(s).iterations for s in order if budget.plan(s).iterations % interval}
    if uneven:
        raise ValueError(
            f"{budget}: runs of {uneven} steps are not whole multiples of val_interval {interval}; choose steps, "
            "fine_tune_fraction and transfer_steps that give multiples of it, or set val_interval"
        )
    return budget


def _run_one(
    segmentation: StageBundle,
    out: Path,
    models: Path,
    strategy: str,
    network: str,
    seed: int,
    plan: TrainingPlan,
    shared: dict,
) -> list[SegmentationResult]:
    """Train then score one run, or read its recorded scores (which must come from the same plan)."""
    record = out / "runs" / f"{strategy}-{network}-seed{seed}.json"
    if record.is_file():
        recorded = [SegmentationResult(**r) for r in read_json(record)]
        if any(r.steps != plan.steps for r in recorded):
            raise ValueError(
                f"{record}: trained with {recorded[0].steps or 'unrecorded'} steps, this experiment plans "
                f"{plan.steps}; use another experiment folder, or delete the record to train it again"
            )
        return recorded
    overrides = {
        **shared,
        "seed": seed,
        "strategy": strategy,
        "network_name": network,
        "ckpt_dir": str(models / strategy),
        "evaluation_dir": str(out / "runs" / f"{strategy}-{network}-seed{seed}"),
        "max_iterations": plan.iterations,
        "snapshot_iterations": list(plan.snapshots),
    }
    if strategy in TARGET_STRATEGIES:
        del overrides["dataset_dir"]  # trained and validated on the target dataset (its overlay's dataset_dir)
    if plan.source_weights is not None:
        overrides["pretrained_checkpoint"] = str(models / FINE_TUNED_FROM[strategy] / plan.source_weights)
    task = ["train.json", *NETWORKS[network], STRATEGIES[strategy]]
    stage = replace(segmentation, output_dir=Path(segmentation.output_dir) / f"{strategy}-{network}-seed{seed}")
    stage.run(task, **overrides)
    # evaluation in its own workflow: evaluate.json loads the best model the training just saved
    scored = stage.run([*task, "evaluate.json"], **overrides).parser.get_parsed_content("results")
    results = [replace(r, steps=plan.steps) for r in scored]
    write_json(record, [asdict(r) | {"dice": dict(r.dice)} for r in results])
    return results
