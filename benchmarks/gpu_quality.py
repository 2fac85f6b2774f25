"""The GPU quality run: what the method makes of one GPU's training, in one command within a time budget.

    python benchmarks/gpu_quality.py                                        # CUDA, 540 s, brain-mni small
    python benchmarks/gpu_quality.py --device cpu --tiny --out /tmp/gpu    # the smoke run (tests): tiny sizes

The CPU benchmarks train each stage for minutes; :data:`GPU` plans 20 times their items for one H200-class GPU,
more than the first lent H200 reached within the shares (``results/gpu_quality_training_2026-12-04a.md``).
In order, each phase under a deadline (the budget's shares in :data:`SHARES`, time
an earlier phase leaves unused passing on; a trainer past its deadline ends after the iteration under way, keeps
what it learned and records where it stopped):

1. builds brain-mni small (40/10/10 subjects; ``--tiny``: 4/1/2 tiny subjects);
2. trains the four stages as the workflow bundle does, with the GPU's iterations and batches (:data:`GPU`),
   keeping the mask model's EMA weights at a quarter, half and all of its iterations;
3. generates 20 pairs and writes the quality report: ``gpu_quality.{json,md,png}``, the quality benchmark's
   tables and montage, to be read beside the CPU's ``quality_brain-mni.*``;
4. samples and scores every kept mask model (the learning curve): ``gpu_mask_curve.{json,png}``, as
   ``mask_stage.py curve`` draws it;
5. if its share leaves time for them, the low-data experiment's headline arms that use the pairs (E2-1, E2-3,
   E2-5: a 3D UNet on the first 5 real training subjects alone, with the 20 pairs, and fine-tuned on real; one
   seed, the CPU experiment's steps and settings), scored on the held-out test subjects, into
   ``gpu_quality.{json,md}``: the CPU experiment's ``generators-40`` setting, as the generators saw all 40
   training subjects;
6. measures speed with ``gpu_benchmark.py`` in the time left: ``gpu_benchmark.{json,md}``.

The results files are written as soon as their phase ends, so a run cut short returns what it measured.

On the lent GPU machine (Python 3.12 with PyTorch, but no MONAI, ignite, nibabel, nilearn or fire) the missing
packages travel as wheels, downloaded here once into the ignored folder ``.whl``::

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux2014_x86_64 -d .whl monai==1.6.1 pytorch-ignite==0.5.5 nibabel==5.4.2 \\
        nilearn==0.14.1 fire==0.7.1 termcolor==3.3.0

and the run (``carry: [".whl"]``) starts with
``python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export
PYTHONPATH=/tmp/site:src && python3 benchmarks/gpu_quality.py --out $OUT``.
"""

from __future__ import annotations

import time

START = time.monotonic()  # the budget counts from here, imports included

import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # runs from a bare clone too
    sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fire  # noqa: E402
import torch  # noqa: E402
from gpu_benchmark import TINY_NETWORKS, environment  # noqa: E402
from mask_stage import _curve_plot, score_stage  # noqa: E402
from quality_benchmark import BUNDLES, RESULTS, _record, _write_results  # noqa: E402

# The GPU's training of each stage: the CPU defaults' items seen (iterations x batch) times the factor noted.
# The generators load data in 8 worker processes: in the training process the data wait was a quarter (mask) to a
# half (refiner) of each GPU iteration (results/gpu_quality_training_2026-12-04b.md).
GPU = {
    "mask_mcdpm": {"max_iterations": 7000, "batch_size": 32, "num_workers": 8},  # 20x (1400 x 8)
    "image_vid2vid": {"max_iterations": 2000, "batch_size": 16, "num_workers": 8},  # 20x (400 x 4)
    "sdm_refiner": {"max_iterations": 750, "batch_size": 32, "num_workers": 8},  # 20x (150 x 8), each view
    "segmentation_eval": {"max_iterations": 4800},  # 4x the quality benchmark's judge
}
# A smoke run: the tiny networks and a few iterations (seconds per stage on a CPU).
TINY = {
    "mask_mcdpm": {**TINY_NETWORKS["mask_mcdpm"], "max_iterations": 8, "batch_size": 2, "preview_depth": 8},
    "image_vid2vid": {
        **TINY_NETWORKS["image_vid2vid"],
        "max_iterations": 4,
        "batch_size": 2,
        "run_length": 4,
        "ndf": 8,
        "discriminator_scales": 1,
        "discriminator_layers": 2,
    },
    "sdm_refiner": {**TINY_NETWORKS["sdm_refiner"], "max_iterations": 2, "batch_size": 4},
    "segmentation_eval": {"slice_size": [16, 16], "max_iterations": 18, "val_interval": 9, "learning_rate": 0.002},
}
# Shares of the budget, in order; what is left after the last goes to the speed figures.
SHARES = {
    "data": 0.05,
    "mask": 0.26,
    "image": 0.12,
    "refiner": 0.13,
    "segmenter": 0.08,
    "generate": 0.07,
    "evaluate": 0.07,
    "curve": 0.07,
    "arms": 0.08,
}
CURVE_FRACTIONS = (0.25, 0.5, 1.0)  # of the mask model's iterations, where its EMA weights are kept
ARMS = ["E2-1", "E2-3", "E2-5"]  # the low-data experiment's headline arms that the pairs change (E2-0 needs none)
# the arms' segmenter runs cannot stop at a deadline: they start only when their share has this many seconds
ARMS_MINIMUM_S = {False: 45.0, True: 5.0}  # by ``tiny``; on the H200 the judge trained at about 20 steps a second
STAGE_OF = {"mask": "mask_mcdpm", "image": "image_vid2vid", "refiner": "sdm_refiner", "segmenter": "segmentation_eval"}


def log(message: str) -> None:
    print(f"[gpu_quality {time.monotonic() - START:5.0f} s] {message}", file=sys.stderr, flush=True)


class Deadlines:
    """Each phase's deadline: the end of its cumulative share of the budget (unused time passes on)."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        total, self.ends = 0.0, {}
        for phase, share in SHARES.items():
            total += share
            self.ends[phase] = START + budget_s * total

    def end(self, phase: str) -> float:
        return self.ends[phase]

    def left(self) -> float:
        return START + self.budget_s - time.monotonic()


def stage_overrides(tiny: bool, device: str) -> dict[str, dict[str, Any]]:
    """The workflow's ``stage_overrides``: the GPU's (or tiny) training, one preview at the end, this device."""
    chosen = TINY if tiny else GPU
    out = {}
    for stage, values in chosen.items():
        last = values["max_iterations"]
        out[stage] = {**values, "device": f"$torch.device('{device}')"}
        if stage != "segmentation_eval":  # the segmenter keeps its validation interval: it saves its best model then
            out[stage] |= {"val_interval": last, "save_interval": max(1, last // 4)}
    out["segmentation_eval"]["slice_views"] = ["axial", "coronal", "sagittal"]
    return out


def train_stage(stage, shared: dict[str, Any], deadline: float, keep: Path | None = None) -> dict:
    """Train one stage bundle's ``train.json`` until its last iteration or ``deadline``.

    With ``keep`` (a folder), its EMA weights are saved there as ``ema-<iteration>.pt`` at each of
    :data:`CURVE_FRACTIONS`, of the planned iterations or of the time to the deadline, whichever comes first, and
    at the end. The record holds the seconds, the iterations reached and planned, and the seconds per iteration
    spent waiting for data and in the step (after a warm-up), which say whether the device was kept busy."""
    from gpu_benchmark import IterationTimer
    from ignite.engine import Events

    workflow = stage.workflow(["train.json"], **shared)
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    planned = int(workflow.parser.get_parsed_content("max_iterations"))
    device = torch.device(workflow.parser.get_parsed_content("device"))
    start = time.monotonic()

    def stop(engine) -> None:
        if time.monotonic() > deadline:
            engine.terminate()

    trainer.add_event_handler(Events.ITERATION_COMPLETED, stop)
    timer = IterationTimer(device, warmup=5, iterations=planned + 1, seconds=float("inf"), cap=float("inf"))
    timer.attach(trainer)
    if keep is not None:
        ema = workflow.parser.get_parsed_content("ema")
        marks = list(CURVE_FRACTIONS[:-1])

        def save(engine) -> None:
            done, elapsed = engine.state.iteration, time.monotonic() - start
            if marks and (done >= marks[0] * planned or elapsed >= marks[0] * (deadline - start)):
                marks.pop(0)
                torch.save(ema.ema_model.state_dict(), keep / f"ema-{done}.pt")

        trainer.add_event_handler(Events.ITERATION_COMPLETED, save)
    workflow.run()
    workflow.finalize()
    done = int(trainer.state.iteration)
    if keep is not None:
        torch.save(ema.ema_model.state_dict(), keep / f"ema-{done}.pt")
    speed = timer.summary(1) or {}
    return {
        "seconds": round(time.monotonic() - start, 1),
        "iterations": done,
        "planned_iterations": planned,
        "data_seconds_per_iteration": speed.get("data_seconds_per_iteration"),
        "step_seconds_per_iteration": speed.get("step_seconds_per_iteration"),
    }


def training_table(training: dict[str, dict], overrides: dict[str, dict[str, Any]]) -> str:
    """A markdown table: each trained network's iterations reached of those planned, batch, seconds, items per
    second, and the seconds per iteration spent waiting for data and in the step (which says whether the device
    was kept busy)."""
    rows = [
        "| network | iterations (planned) | batch | seconds | items / s | data s / iteration | step s / iteration |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, record in training.items():
        batch = overrides[STAGE_OF[name.split("/")[0]]].get("batch_size")
        done, planned = record["iterations"], record["planned_iterations"]
        reached = f"{done} ({planned})" + ("" if done == planned else ", stopped by its deadline")
        rate = f"{done * batch / record['seconds']:.0f}" if batch and record["seconds"] else "–"
        timed = [record.get(key) for key in ("data_seconds_per_iteration", "step_seconds_per_iteration")]
        cells = [name, reached, batch or "configured", f"{record['seconds']:.0f}", rate]
        rows.append("| " + " | ".join(str(c) for c in cells + ["–" if t is None else f"{t:.3f}" for t in timed]) + " |")
    return "\n".join(rows) + "\n"


def build_data(root: Path, tiny: bool) -> Path:
    from medgen3d.data.brain_mni import build_brain_mni
    from medgen3d.data.builder import SplitSizes

    sizes = SplitSizes(4, 1, 2) if tiny else SplitSizes(40, 10, 10)
    return build_brain_mni(root / "brain-mni", preset="tiny" if tiny else "small", sizes=sizes).root


def train_all(stages, data: Path, overrides: dict, deadlines: Deadlines, run_dir: Path, label: str) -> dict:
    """Phase 2: every stage (each refiner view) as the workflow trains it, the mask model's EMA kept for the curve.

    Returns each trained network's record (:func:`train_stage`), by ``stage`` or ``refiner/<view>``."""
    from medgen3d.data.dataset import read_dataset

    real = read_dataset(data)
    labels = {str(k): v for k, v in real.labels.items()}
    shared = {"dataset_dir": str(real.root), "labels": labels, "modality": real.modality, "seed": 0}
    (run_dir / "curve").mkdir()
    training: dict[str, Any] = {}
    for phase in ("mask", "image", "refiner", "segmenter"):
        views = ["axial", "coronal", "sagittal"] if phase == "refiner" else [None]
        for index, view in enumerate(views):
            name = phase if view is None else f"{phase}/{view}"
            log(f"training {name}")
            extra = {"view": view} if view else {}
            kept = run_dir / "curve" if phase == "mask" else None
            # each view gets an equal part of the time its phase has left
            deadline = time.monotonic() + (deadlines.end(phase) - time.monotonic()) / (len(views) - index)
            training[name] = train_stage(getattr(stages, phase), shared | extra, deadline, kept)
            log(f"{name}: {training[name]}")
        seconds = sum(record["seconds"] for n, record in training.items() if n.split("/")[0] == phase)
        _record(run_dir, phase, seconds, label)
    return training


def learning_curve(stages, data: Path, run_dir: Path, deadline: float, title: str, budget: int) -> dict | None:
    """Phase 4: sample and score every kept mask model while ``deadline`` allows; None when none was scored."""
    points = []
    for path in sorted((run_dir / "curve").glob("ema-*.pt"), key=lambda p: int(p.stem.split("-")[1])):
        if time.monotonic() > deadline:
            log(f"curve: no time left for {path.name}")
            break
        iterations = int(path.stem.split("-")[1])
        log(f"curve: scoring the mask model at {iterations} iterations")
        scores = score_stage(stages.mask, data, path, {}, run_dir / "eval" / f"curve-{iterations}", windows=2)
        points.append({"iterations": iterations, **scores})
    return {"dataset": title, "budget": budget, "points": points} if points else None


def headline_arms(data: Path, synthetic: Path, run_dir: Path, device: str, tiny: bool) -> dict[str, Any]:
    """Phase 5: :data:`ARMS` as the CPU low-data experiment trains them (its segmenter settings and steps; tiny:
    16^3 patches, 4 steps), one seed, on the first 5 (tiny: 2) real training subjects of ``data`` and the pairs in
    ``synthetic``; scored on ``data``'s test subjects. Returns the setting and each arm's mean Dice summary."""
    from low_data_experiment import SEGMENTER, _experiment, summarise

    from medgen3d.data.dataset import read_dataset
    from medgen3d.data.subset import subset_dataset

    subjects, steps = (2, 4) if tiny else (5, 200)
    real = subset_dataset(data, run_dir / f"brain-mni-{subjects}", training=subjects).root
    segmenter = {"roi_size": [16, 16, 16], "val_interval": 2} if tiny else dict(SEGMENTER)
    segmenter["device"] = f"$torch.device('{device}')"
    rows = _experiment(run_dir / "arms", real, synthetic, None, ARMS, [0], steps, segmenter)
    return {
        "real_training_subjects": subjects,
        "generator_training_subjects": len(read_dataset(data).split("training")),
        "steps": steps,
        "seeds": [0],
        "summary": summarise(rows),
    }


def arms_table(arms: dict[str, Any]) -> str:
    """The headline arms' markdown section: mean Dice (and each structure's) on the held-out test subjects."""
    summary = arms["summary"]
    names = list(next(iter(summary.values()))["brain-mni"]["structures"])
    lines = [
        f"\nLow-data headline arms on the GPU: a 3D UNet on {arms['real_training_subjects']} real subjects, generators "
        f"trained on {arms['generator_training_subjects']} (the CPU experiment's `generators-40` setting), "
        f"{arms['steps']} steps, seed {arms['seeds'][0]}; Dice on brain-mni's held-out test subjects.\n",
        "| arm | mean | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for arm in ARMS:
        if arm in summary:
            scores = summary[arm]["brain-mni"]
            cells = [f"{scores['mean']:.3f}"] + [f"{scores['structures'][n]:.3f}" for n in names]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(
    device: str = "cuda",
    budget_s: float = 540.0,
    tiny: bool = False,
    cases: int | None = None,
    out: str = str(RESULTS),
    work: str = str(ROOT / "benchmarks" / "runs" / "gpu_quality"),
    table_from: str = "",
) -> None:
    """Train, generate, report and time within ``budget_s``; results into ``out`` (see the module docstring).

    Args:
        device: ``"cuda"`` or ``"cpu"`` (the smoke run).
        budget_s: the whole run's seconds, imports included.
        tiny: tiny data and networks, a few iterations (a smoke run on a CPU).
        cases: synthetic pairs (default 20; tiny 3).
        out: the results folder.
        work: the run's folder (data, checkpoints, synthetic pairs); emptied first, as each run starts afresh.
        table_from: only write the training table of a run cut short before its report, from the
            ``gpu_quality_training.json`` it left, as a ``.md`` beside that file (the GPU's overrides).
    """
    if table_from:
        record = json.loads(Path(table_from).read_text())
        Path(table_from).with_suffix(".md").write_text(training_table(record["training"], stage_overrides(False, "")))
        return
    from medgen3d.pipeline.stages import StageBundle

    cases = int(cases or (3 if tiny else 20))
    results_dir, run_dir = Path(out), Path(work)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    deadlines = Deadlines(budget_s)
    torch.backends.cudnn.benchmark = torch.device(device).type == "cuda"
    machine = environment(torch.device(device))
    label = str(machine.get("gpu") or device)
    log(f"{machine}")

    data = build_data(run_dir, tiny)
    _record(run_dir, "data", time.monotonic() - START, label)
    overrides = stage_overrides(tiny, device)
    common = {"bundle_root": str(run_dir), "stages_dir": str(BUNDLES), "dataset_dir": str(data)}
    common["stage_overrides"] = overrides
    workflow = StageBundle(BUNDLES / "medgen3d", run_dir / "models", run_dir / "eval", overlays=["brain.json"])
    stages = workflow.workflow(["train.json"], **common).parser.get_parsed_content("stages")
    training = train_all(stages, data, overrides, deadlines, run_dir, label)
    # kept until the report replaces it, so that a run cut short in generation still says what it trained
    _write(results_dir / "gpu_quality_training.json", {"device": machine, "training": training})
    (results_dir / "gpu_quality_training.md").write_text(training_table(training, overrides))

    for task, extra in (("generate", {"num_cases": cases}), ("evaluate", {})):
        log(task)
        start = time.monotonic()
        workflow.run([f"{task}.json"], **common, **extra)
        _record(run_dir, task, time.monotonic() - start, label)
    title = f"brain-mni small on {label}"
    results = _write_results(title, "gpu_quality", run_dir, data, workflow, common, label, results_dir)
    _write(results_dir / "gpu_quality.json", results | {"training": training, "device": machine})
    with (results_dir / "gpu_quality.md").open("a") as page:
        page.write("\nTraining on the GPU:\n\n" + training_table(training, overrides))
    (results_dir / "gpu_quality_training.json").unlink()
    (results_dir / "gpu_quality_training.md").unlink()

    budget = overrides["mask_mcdpm"]["max_iterations"]
    curve = learning_curve(stages, data, run_dir, deadlines.end("curve"), f"brain-mni on {label}", budget)
    if curve is not None:
        _write(results_dir / "gpu_mask_curve.json", curve)
        _curve_plot(curve, results_dir / "gpu_mask_curve.png")

    if deadlines.end("arms") - time.monotonic() >= ARMS_MINIMUM_S[tiny]:
        log("low-data headline arms")
        synthetic = Path(workflow.workflow(["generate.json"], **common).parser.get_parsed_content("synthetic_dir"))
        results["arms"] = headline_arms(data, synthetic, run_dir, device, tiny)
        _write(results_dir / "gpu_quality.json", results | {"training": training, "device": machine})
        with (results_dir / "gpu_quality.md").open("a") as page:
            page.write(arms_table(results["arms"]))
    else:
        log("low-data headline arms: no time left in their share")

    left = deadlines.left()
    if left > (5 if tiny else 30):
        log(f"speed figures in the {left:.0f} s left")
        script = str(ROOT / "benchmarks" / "gpu_benchmark.py")
        command = [sys.executable, script, "--device", device, "--budget_s", str(int(left - 5)), "--out", out]
        # a smoke run times one anatomy's trainers only: gpu_benchmark's own test covers the rest at tiny sizes
        smoke = ["--tiny", "--anatomies", "brain", "--parts", "training"]
        subprocess.run(command + (smoke if tiny else []), check=False)
    log(f"done in {time.monotonic() - START:.0f} s; results in {results_dir}")


def _write(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2, default=str) + "\n")


if __name__ == "__main__":
    fire.Fire(main)
