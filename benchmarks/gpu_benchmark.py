"""GPU speed and memory of every stage at the paper's sizes, within a fixed time budget (one H100/H200-class GPU).

    python benchmarks/gpu_benchmark.py                        # CUDA, precision "auto" (bf16), 450 s budget
    python benchmarks/gpu_benchmark.py --precision fp32       # the float32 baseline
    python benchmarks/gpu_benchmark.py --device cpu --tiny    # smoke run at tiny sizes (what the tests run)

Per anatomy (brain 160 x 192 x 160 MR, thorax 320 x 320 x 96 CT), on one synthetic case from the package's own
generators (``make_brain_case``, ``make_thorax_case``; nothing is downloaded, no dataset is needed), it measures

- ``training``: iterations per second of each stage's bundle trainer (``train.json`` + ``paper.json``, its own data
  pipeline; its handlers, i.e. checkpoints, EMA, LR schedule, previews and logs, are left out), split into seconds
  in the data loader and in the step, and the peak GPU memory;
- ``generation``: seconds and peak GPU memory per generated pair, mask + image + refinement, each stage's
  ``inference.json`` + ``paper.json`` defaults with untrained weights (speed does not depend on weights), files
  written as a run writes them;
- ``max_batch``: the largest batch each trainer takes, doubling from the configured batch until it runs out of
  memory, a trial takes too long, or ``--max_batch`` is reached.

Every measurement has its own time cap and the whole run a budget (``--budget_s``): a network forward past the
deadline stops the measurement under way, and the results gathered so far are written after every measurement to
``benchmarks/results/gpu_benchmark.{json,md}`` (``--out`` elsewhere). Progress goes to stderr.
"""

from __future__ import annotations

import time

START = time.monotonic()  # the budget counts from here, imports included

import contextlib  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, NamedTuple  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # runs from a bare clone too
    sys.path.insert(0, str(ROOT / "src"))

import fire  # noqa: E402
import torch  # noqa: E402
from ignite.engine import Events  # noqa: E402

BUNDLES = ROOT / "bundles"
RESULTS = ROOT / "benchmarks" / "results"
STAGES = ("mask_mcdpm", "image_vid2vid", "sdm_refiner", "segmentation_eval")
ANATOMIES = ("brain", "thorax")
PARTS = ("training", "generation", "max_batch")
OutOfMemory = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)

# what one item of each trainer's batch is (segmentation: random crops, samples_per_volume per case)
BATCH_UNITS = {
    "mask_mcdpm": "subsequences",
    "image_vid2vid": "slice runs",
    "sdm_refiner": "slices",
    "segmentation_eval": "crops",
}


def tiny_preset(bundle: str) -> dict[str, Any]:
    """A generating bundle's ``configs/tiny.json``: the networks its tests train, for 16 x 16 slices."""
    return json.loads((BUNDLES / bundle / "configs" / "tiny.json").read_text())


# A --tiny run: the tiny presets (segmentation: the bundle's 3D UNet overlay, as its tests use, on 16³ crops), two
# sampling steps, and for training small batches and short runs.
TINY_NETWORKS = {
    "mask_mcdpm": {**tiny_preset("mask_mcdpm"), "num_inference_steps": 2},
    "image_vid2vid": tiny_preset("image_vid2vid"),
    "sdm_refiner": {**tiny_preset("sdm_refiner"), "noise_steps": 2},
    "segmentation_eval": {"roi_size": [16, 16, 16]},
}
TINY_TRAINING = {
    "mask_mcdpm": {"batch_size": 2},
    "image_vid2vid": {
        "batch_size": 2,
        "run_length": 4,
        "ndf": 8,
        "discriminator_scales": 1,
        "discriminator_layers": 2,
    },
    "sdm_refiner": {"batch_size": 2},
    "segmentation_eval": {"batch_size": 1, "samples_per_volume": 2},
}
CAPS = {  # seconds: one training measurement, one max-batch search, each generating stage
    "paper": {"train": 12.0, "max_batch": 20.0, "trial": 6.0, "mask": 90.0, "image": 30.0, "refine": 60.0},
    "tiny": {"train": 2.0, "max_batch": 4.0, "trial": 4.0, "mask": 10.0, "image": 5.0, "refine": 5.0},
}


class OutOfTime(RuntimeError):
    """A measurement ran past its cap or the run's budget."""


class Clock:
    """The run's budget and the deadline of the measurement under way (checked before every network forward)."""

    def __init__(self, budget_s: float) -> None:
        self.end = START + budget_s
        self.deadline = self.end

    def left(self) -> float:
        return self.end - time.monotonic()

    @contextlib.contextmanager
    def capped(self, seconds: float) -> Iterator[None]:
        self.deadline = min(self.end, time.monotonic() + seconds)
        try:
            yield
        finally:
            self.deadline = self.end

    def guard(self, *networks: torch.nn.Module) -> list:
        def check(module, args):
            if time.monotonic() > self.deadline:
                raise OutOfTime(f"past the deadline ({time.monotonic() - START:.0f} s into the run)")

        return [network.register_forward_pre_hook(check) for network in networks]


def log(message: str) -> None:
    print(f"[gpu_benchmark {time.monotonic() - START:5.0f} s] {message}", file=sys.stderr, flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


# --- data -------------------------------------------------------------------------------------------------------


def build_case(anatomy: str, root: Path, preset: str) -> tuple[Path, str]:
    """A one-case dataset (training split) of ``anatomy`` at ``preset`` size in ``root``; returns it and its source."""
    from medgen3d.data.builder import SplitSizes

    if anatomy == "thorax":
        from medgen3d.data.thorax_phantom import build_thorax_phantom

        build_thorax_phantom(root, preset, SplitSizes(1, 0, 0))
        return root, "thorax_phantom"
    try:
        from medgen3d.data.brain_mni import build_brain_mni

        build_brain_mni(root, preset, SplitSizes(1, 0, 0))
        return root, "brain_mni"
    except ImportError:  # nilearn (the MNI template) is an extra: nested shells of the same size stand in
        return _shells(root, preset), "nested shells (nilearn not installed)"


def _shells(root: Path, preset: str) -> Path:
    import numpy as np

    from medgen3d.data.brain_mni import BRAIN_LABELS, BRAIN_PRESETS
    from medgen3d.data.dataset import Case, DatasetSpec, write_dataset
    from medgen3d.data.io import save_nifti

    shape, spacing = BRAIN_PRESETS[preset]
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    label = np.digitize(-radius, [-0.95, -0.8, -0.6, -0.3]).astype(np.uint8)  # 0 outside .. 4 at the centre
    image = (label * 100.0 + np.random.default_rng(0).normal(0, 10, shape)).astype(np.float32)
    affine = np.diag([*spacing, 1.0])
    save_nifti(root / "labels" / "case-000.nii.gz", label, affine)
    save_nifti(root / "images" / "case-000.nii.gz", image, affine)
    case = Case("images/case-000.nii.gz", "labels/case-000.nii.gz")
    write_dataset(root, DatasetSpec("brain-shells", "MR", dict(BRAIN_LABELS), training=[case]))
    return root


# --- bundles ----------------------------------------------------------------------------------------------------


class Run:
    """What every measurement shares: device, precision, sizes, caps, scratch folders, and the results so far."""

    def __init__(self, device: str, precision: str, tiny: bool, budget_s: float, out: Path, work: Path) -> None:
        self.device = torch.device(device)
        self.precision, self.tiny, self.out, self.work = precision, tiny, out, work
        self.clock = Clock(budget_s)
        self.caps = CAPS["tiny" if tiny else "paper"]
        self.datasets: dict[str, Path] = {}
        self.cached: dict[tuple[str, str], Any] = {}  # (anatomy, stage) -> its training dataset
        self.results: dict[str, Any] = {"environment": environment(self.device), "settings": {}, "anatomies": {}}

    def workflow(self, stage: str, task: str, anatomy: str, **overrides: Any):
        """The stage's ``task`` config over the anatomy's dataset, paper preset (or tiny networks), this device."""
        from medgen3d.pipeline.stages import StageBundle

        if self.tiny:
            overlays = ["unet3d.json"] if stage == "segmentation_eval" else []
        else:
            overlays = [] if stage == "segmentation_eval" else ["paper.json"]  # Swin-UNETR as train.json has it
        scratch = self.work / anatomy / stage
        bundle = StageBundle(BUNDLES / stage, scratch / "models", scratch / "eval", overlays=overlays)
        tiny = {**TINY_NETWORKS[stage], **(TINY_TRAINING[stage] if task == "train.json" else {})} if self.tiny else {}
        values = {
            "dataset_dir": str(self.datasets[anatomy]),
            "device": f"$torch.device('{self.device}')",
            "precision": self.precision,
            **tiny,
            **overrides,
        }
        return bundle.workflow([task], **values)

    def section(self, anatomy: str, part: str) -> dict:
        return self.results["anatomies"].setdefault(anatomy, {}).setdefault(part, {})

    def save(self) -> None:
        self.results["elapsed_s"] = round(time.monotonic() - START, 1)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_benchmark.json").write_text(json.dumps(self.results, indent=2) + "\n")
        (self.out / "gpu_benchmark.md").write_text(render(self.results))


# --- training ---------------------------------------------------------------------------------------------------


class IterationTimer:
    """Times a trainer's iterations after ``warmup`` of them, data loading apart, and stops it once ``iterations``
    iterations and ``seconds`` are measured, or at ``cap`` seconds from its start."""

    def __init__(self, device: torch.device, warmup: int, iterations: int, seconds: float, cap: float) -> None:
        self.device, self.warmup, self.iterations, self.seconds, self.cap = device, warmup, iterations, seconds, cap
        self.start = time.perf_counter()
        self.count, self.data_s, self.measured_from, self.last = 0, 0.0, None, None
        self._batch_start = 0.0

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._batch_started)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._batch_done)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_done)

    def _batch_started(self, engine) -> None:
        self._batch_start = time.perf_counter()

    def _batch_done(self, engine) -> None:
        if self.measured_from is not None:
            self.data_s += time.perf_counter() - self._batch_start

    def _iteration_done(self, engine) -> None:
        _sync(self.device)
        self.count += 1
        self.last = now = time.perf_counter()
        if self.count == self.warmup:
            self.measured_from = now
        measured = self.count - self.warmup
        if measured < 1:
            return
        enough = measured >= self.iterations and now - self.measured_from >= self.seconds
        if enough or now - self.start >= self.cap:
            engine.terminate()

    def summary(self, batch: int) -> dict | None:
        measured = self.count - self.warmup
        if measured < 1:
            return None
        elapsed = self.last - self.measured_from
        return {
            "iterations_per_second": round(measured / elapsed, 3),
            "samples_per_second": round(measured * batch / elapsed, 2),
            "data_seconds_per_iteration": round(self.data_s / measured, 4),
            "step_seconds_per_iteration": round((elapsed - self.data_s) / measured, 4),
            "iterations_measured": measured,
        }


class Trained(NamedTuple):
    """One short training: its network and batch (``batch_size``, and the items it holds), timings (None: none
    measured) and peak memory."""

    network: str
    batch_size: int
    items: int
    summary: dict | None
    peak_memory_gb: float | None


def train_once(
    run: Run, stage: str, anatomy: str, batch_size: int | None, warmup: int, iterations: int, cap: float
) -> Trained:
    """Train ``stage`` briefly at ``batch_size`` (None: the configured one). Raises out-of-memory and OutOfTime."""
    overrides: dict[str, Any] = {"max_iterations": 10**6, "val_interval": 10**6, "train#handlers": []}
    if batch_size is not None:
        overrides["batch_size"] = batch_size
    parser = run.workflow(stage, "train.json", anatomy, **overrides).parser
    if (anatomy, stage) in run.cached:  # the loaded, preprocessed case of an earlier measurement
        parser["train#dataset"] = run.cached[anatomy, stage]
    batch_size = int(parser.get_parsed_content("batch_size"))
    per_case = int(parser.get_parsed_content("samples_per_volume")) if stage == "segmentation_eval" else 1
    # one case stands for a dataset: the loader draws it as often as a batch needs, each time with new random crops
    parser["train#dataloader#shuffle"] = False
    parser["train#dataloader#sampler"] = {
        "_target_": "torch.utils.data.RandomSampler",
        "data_source": "@train#dataset",
        "replacement": True,
        "num_samples": batch_size * (warmup + iterations + 1000),
    }
    _reset_memory(run.device)
    trainer = parser.get_parsed_content("train#trainer")
    run.cached[anatomy, stage] = parser.get_parsed_content("train#dataset")
    hooks = run.clock.guard(trainer.network)
    timer = IterationTimer(run.device, warmup, iterations, 0.0 if run.tiny else 3.0, cap)
    timer.attach(trainer)
    try:
        with run.clock.capped(cap + 30.0):  # the cap is checked per iteration; the guard stops a stuck one
            trainer.run()
        _sync(run.device)
    finally:
        for hook in hooks:
            hook.remove()
    items = batch_size * per_case
    network = type(getattr(trainer.network, "module", trainer.network)).__name__
    return Trained(network, batch_size, items, timer.summary(items), _peak_gb(run.device))


def measure_training(run: Run, anatomy: str, stage: str) -> None:
    log(f"{anatomy}: training {stage}")
    entry: dict[str, Any] = {"batch_unit": BATCH_UNITS[stage]}
    try:
        trained = train_once(run, stage, anatomy, None, 1 if run.tiny else 2, 1 if run.tiny else 5, run.caps["train"])
        entry.update(network=trained.network, batch_size=trained.batch_size, batch=trained.items)
        entry.update(peak_memory_gb=trained.peak_memory_gb)
        entry.update(trained.summary or {"note": "no iteration measured within the cap"})
    except OutOfMemory:
        entry["note"] = "out of memory at the configured batch"
    except OutOfTime as err:
        entry["note"] = str(err)
    run.section(anatomy, "training")[stage] = entry
    log(f"{anatomy}: {stage} {entry}")
    _reset_memory(run.device)
    run.save()


def measure_max_batch(run: Run, anatomy: str, stage: str, limit: int) -> None:
    """Double the batch from the configured one until out of memory, ``limit``, or a trial that would take longer
    than the trial cap (two iterations at twice the last one's time) or the search's cap."""
    log(f"{anatomy}: largest batch of {stage}")
    trained = run.section(anatomy, "training").get(stage, {})
    if "iterations_per_second" not in trained:
        run.section(anatomy, "max_batch")[stage] = {"note": "the configured batch was not measured"}
        run.save()
        return
    batch_size, largest, stopped = trained["batch_size"], trained["batch"], "limit"
    trials = [{"batch_size": batch_size, "fits": True, "seconds_per_iteration": 1 / trained["iterations_per_second"]}]
    start = time.monotonic()
    while 2 * batch_size <= limit:
        batch_size *= 2
        left = min(run.caps["max_batch"] - (time.monotonic() - start), run.clock.left() - 5)
        cap = min(left, run.caps["trial"])
        if 2 * 2 * trials[-1]["seconds_per_iteration"] > cap:
            stopped = "time"
            break
        try:
            trained = train_once(run, stage, anatomy, batch_size, 1, 1, cap)
        except OutOfMemory:
            trials.append({"batch_size": batch_size, "fits": False})
            stopped = "out_of_memory"
            break
        except OutOfTime:
            stopped = "time"
            break
        finally:
            _reset_memory(run.device)
        if trained.summary is None:
            stopped = "time"
            break
        seconds = 1 / trained.summary["iterations_per_second"]
        trials.append({"batch_size": batch_size, "fits": True, "seconds_per_iteration": seconds})
        largest = trained.items
    for trial in trials:
        if "seconds_per_iteration" in trial:
            trial["seconds_per_iteration"] = round(trial["seconds_per_iteration"], 4)
    entry = {"largest_fitting": largest, "batch_unit": BATCH_UNITS[stage], "stopped_by": stopped, "trials": trials}
    run.section(anatomy, "max_batch")[stage] = entry
    log(f"{anatomy}: {stage} largest batch {largest} {BATCH_UNITS[stage]} (stopped by {stopped})")
    run.save()


# --- generation -------------------------------------------------------------------------------------------------


class CaseClock:
    """A run step's progress callback: prints as the bundles' own does, and notes when each case is finished."""

    def __init__(self, task: str) -> None:
        from medgen3d.progress import progress_printer

        self.printer, self.start, self.finished = progress_printer(task), time.perf_counter(), []

    def __call__(self, done: int, total: int, case_id: str) -> None:
        self.finished.append(time.perf_counter())  # the case's files are written: its tensors reached the CPU
        self.printer(done, total, case_id)


def _generate(run: Run, name: str, workflow, step: str, cases: int) -> tuple[Any, dict]:
    """Run the run step ``step`` of an inference workflow under the cap ``name``; returns the dataset it wrote (None
    when cut short) and its record. Cut short after some cases, its seconds per pair are those of the cases done."""
    parser = workflow.parser
    clock = CaseClock(name)
    parser[f"{step}#progress"] = clock
    component = parser.get_parsed_content(step)
    networks = list(component.networks.values()) if hasattr(component, "networks") else [component.network]
    for network in networks:
        network.eval()  # untrained weights: no checkpoint is loaded, which is what sets eval mode in a run
    _reset_memory(run.device)
    hooks = run.clock.guard(*networks)
    record: dict[str, Any] = {"cases": cases, "batch_size": component.batch_size}
    output, clock.start = None, time.perf_counter()
    try:
        with run.clock.capped(run.caps[name]):
            output = component.run()
        _sync(run.device)
    except OutOfTime:
        record.update(completed=False, note=f"stopped at its cap of {run.caps[name]} s")
    except OutOfMemory:
        record.update(completed=False, note="out of memory")
    finally:
        for hook in hooks:
            hook.remove()
    record["seconds"] = round(time.perf_counter() - clock.start, 2)
    if clock.finished:
        record["seconds_per_pair"] = round((clock.finished[-1] - clock.start) / len(clock.finished), 2)
        if len(clock.finished) < cases:
            record["cases_done"] = len(clock.finished)
    record["peak_memory_gb"] = _peak_gb(run.device)
    return output, record


def measure_generation(run: Run, anatomy: str, pairs: int) -> None:
    """Masks, then their images, then refinement, as the three inference configs run them; a stage cut short hands
    the next one the real case instead, so that every stage is timed."""
    from medgen3d.data.dataset import read_dataset

    log(f"{anatomy}: generating {pairs} pair(s)")
    real = read_dataset(run.datasets[anatomy])
    entry = run.section(anatomy, "generation")
    scratch = run.work / anatomy / "generated"

    mask = run.workflow("mask_mcdpm", "inference.json", anatomy, num_cases=pairs, synthetic_dir=str(scratch / "masks"))
    masks, entry["mask"] = _generate(run, "mask", mask, "synthesis", pairs)
    steps = len(mask.parser.get_parsed_content("sampler").timesteps)
    entry["mask"].update(steps=steps, slice_size=list(mask.parser.get_parsed_content("slice_size")))
    log(f"{anatomy}: masks {entry['mask']}")
    run.save()

    masks = masks or real
    pairs_dir = str(scratch / "pairs")
    image = run.workflow("image_vid2vid", "inference.json", anatomy, masks_dir=str(masks.root), synthetic_dir=pairs_dir)
    paired, entry["image"] = _generate(run, "image", image, "synthesis", len(masks.cases()))
    log(f"{anatomy}: images {entry['image']}")
    run.save()

    paired = paired or real
    refine = run.workflow(
        "sdm_refiner",
        "inference.json",
        anatomy,
        pairs_dir=str(paired.root),
        refined_dir=str(scratch / "refined"),
        view_networks="${view: @network for view in @views}",  # untrained: one network serves every view
    )
    _, entry["refinement"] = _generate(run, "refine", refine, "refinement", len(paired.cases()))
    refiner = refine.parser.get_parsed_content("refiner")
    entry["refinement"].update(
        noise_steps=refiner.noise_steps,
        network_steps=getattr(refiner, "denoising_steps", None) or refiner.noise_steps,
        views=list(refine.parser.get_parsed_content("views")),
    )
    log(f"{anatomy}: refinement {entry['refinement']}")
    stages = [entry[s] for s in ("mask", "image", "refinement")]
    if all("seconds_per_pair" in s for s in stages):
        entry["seconds_per_pair"] = round(sum(s["seconds_per_pair"] for s in stages), 2)
        peaks = [s["peak_memory_gb"] for s in stages if s["peak_memory_gb"] is not None]
        entry["peak_memory_gb"] = max(peaks) if peaks else None
    run.save()


# --- report -----------------------------------------------------------------------------------------------------


def environment(device: torch.device) -> dict:
    import monai

    info = {
        "device": str(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "monai": monai.__version__,
        "cpu_count": os.cpu_count(),
        "commit": _commit(),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(gpu=properties.name, gpu_memory_gb=round(properties.total_memory / 2**30, 1))
    else:
        info["gpu"] = None
    return info


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() or None
    except OSError:
        return None


def _row(*cells: Any) -> str:
    return "| " + " | ".join("-" if c is None else str(c) for c in cells) + " |"


def render(results: dict) -> str:
    """The Markdown page of ``results``: the machine, then per anatomy a training and a generation table."""
    env, settings = results["environment"], results["settings"]
    lines = [
        "# GPU benchmark",
        "",
        f"{env.get('gpu') or 'CPU'} ({env.get('gpu_memory_gb', '-')} GB), torch {env['torch']}, CUDA {env['cuda']}, "
        f"cuDNN {env['cudnn']}, MONAI {env['monai']}, commit {env['commit']}. Precision `{settings.get('precision')}` "
        f"(autocast {settings.get('autocast_dtype')}), sizes `{settings.get('sizes')}`, budget "
        f"{settings.get('budget_s')} s, run took {results.get('elapsed_s')} s.",
        "",
        "Untrained weights; trainers without their handlers (checkpoints, EMA, LR schedule, previews, logs); one "
        "synthetic case per anatomy, drawn as often as a batch needs. Generation writes its NIfTI files as a run does.",
    ]
    for anatomy, parts in results["anatomies"].items():
        lines += ["", f"## {anatomy} {parts.get('shape', '')} ({parts.get('data')})", ""]
        lines.append(_row("stage", "batch", "it/s", "samples/s", "data s/it", "step s/it", "peak GB", "largest batch"))
        lines.append(_row(*["---"] * 8))
        for stage in STAGES:
            t = parts.get("training", {}).get(stage, {})
            m = parts.get("max_batch", {}).get(stage, {})
            largest = f"{m['largest_fitting']} ({m['stopped_by']})" if "stopped_by" in m else m.get("note")
            lines.append(
                _row(
                    stage,
                    f"{t.get('batch', '-')} {t.get('batch_unit', '')}",
                    t.get("iterations_per_second", t.get("note")),
                    t.get("samples_per_second"),
                    t.get("data_seconds_per_iteration"),
                    t.get("step_seconds_per_iteration"),
                    t.get("peak_memory_gb"),
                    largest,
                )
            )
        generation = parts.get("generation", {})
        if generation:
            lines += ["", _row("generation", "cases", "s/pair", "peak GB", "settings"), _row(*["---"] * 5)]
            timing = ("cases", "seconds", "seconds_per_pair", "peak_memory_gb")
            for name in ("mask", "image", "refinement"):
                g = generation.get(name, {})
                shown = ", ".join(f"{k} {v}" for k, v in g.items() if k not in timing)
                lines.append(_row(name, g.get("cases"), g.get("seconds_per_pair"), g.get("peak_memory_gb"), shown))
            lines.append(_row("**pair**", "", generation.get("seconds_per_pair"), generation.get("peak_memory_gb"), ""))
    for key, title in (("skipped", "Not measured within the budget"), ("errors", "Errors")):
        if results.get(key):
            lines += ["", f"{title}: " + "; ".join(results[key]) + "."]
    return "\n".join(lines) + "\n"


# --- main -------------------------------------------------------------------------------------------------------


def _choice(name: str, value: str | tuple[str, ...], allowed: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated string or a sequence of names, each one of ``allowed``."""
    chosen = tuple(v.strip() for v in value.split(",")) if isinstance(value, str) else tuple(value)
    unknown = [v for v in chosen if v not in allowed]
    if unknown:
        raise SystemExit(f"{name}: unknown {unknown}; choose from {list(allowed)}")
    return chosen


def main(
    device: str = "cuda",
    precision: str = "auto",
    tiny: bool = False,
    budget_s: float | None = None,
    pairs: int | None = None,
    anatomies: str | tuple[str, ...] = ANATOMIES,
    stages: str | tuple[str, ...] = STAGES,
    parts: str | tuple[str, ...] = PARTS,
    max_batch: int | None = None,
    out: str = str(RESULTS),
) -> None:
    """Measure training speed, generation per pair and the largest batches; write ``out/gpu_benchmark.{json,md}``.

    Args:
        device: ``"cuda"`` (``"cuda:1"``, ...) or ``"cpu"``.
        precision: ``"auto"`` (bf16 autocast on CUDA), ``"bf16"``, ``"fp16"`` or ``"fp32"``.
        tiny: tiny volumes and networks, short caps (a smoke run in seconds on a CPU).
        budget_s: the whole run's time budget (default 450 s; tiny 90 s).
        pairs: pairs generated per anatomy (default 4, the mask stage's inference batch; tiny 1).
        anatomies: ``brain``, ``thorax`` or both (comma-separated).
        stages: the trainers to measure (default all four).
        parts: ``training``, ``generation``, ``max_batch`` (a search starts from the training measurement).
        max_batch: the largest batch size a search tries (default 4096; tiny 4).
        out: the results folder.
    """
    from medgen3d.data.dataset import read_dataset
    from medgen3d.precision import autocast_dtype

    anatomies = _choice("anatomies", anatomies, ANATOMIES)
    stages, parts = _choice("stages", stages, STAGES), _choice("parts", parts, PARTS)
    budget_s = float(budget_s or (90 if tiny else 450))
    pairs = int(pairs or (1 if tiny else 4))
    max_batch = int(max_batch or (4 if tiny else 4096))
    torch.backends.cudnn.benchmark = torch.device(device).type == "cuda"
    if tiny and torch.device(device).type == "cpu":
        torch.set_num_threads(1)  # a smoke run: one core, no stalls of threads waiting on each other
    preset = "tiny" if tiny else "paper"
    with tempfile.TemporaryDirectory(prefix="gpu_benchmark_") as scratch:
        run = Run(device, precision, tiny, budget_s, Path(out), Path(scratch))
        dtype = autocast_dtype(precision, run.device)
        run.results["settings"] = {
            "precision": precision,
            "autocast_dtype": str(dtype).removeprefix("torch.") if dtype else "off (float32)",
            "sizes": preset,
            "budget_s": budget_s,
            "pairs": pairs,
            "max_batch_limit": max_batch,
            "caps_s": run.caps,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        }
        log(f"{run.results['environment']}, precision {precision} -> {run.results['settings']['autocast_dtype']}")
        for anatomy in anatomies:
            log(f"building one {preset} {anatomy} case")
            path, source = build_case(anatomy, Path(scratch) / f"{anatomy}-data", preset)
            run.datasets[anatomy] = path
            spec = read_dataset(path)
            shape = list(spec.load_case(spec.training[0])[1].array.shape)
            run.results["anatomies"][anatomy] = {"shape": shape, "data": source, "modality": spec.modality}
        run.save()
        plan = [(measure_training, (a, s), f"training {a} {s}") for a in anatomies for s in stages]
        plan += [(measure_generation, (a, pairs), f"generation {a}") for a in anatomies]
        plan += [(measure_max_batch, (a, s, max_batch), f"max batch {a} {s}") for a in anatomies for s in stages]
        plan = [step for step in plan if step[2].startswith(tuple(part.replace("_", " ") for part in parts))]
        skipped, errors = run.results.setdefault("skipped", []), run.results.setdefault("errors", [])
        for measure, args, name in plan:
            if run.clock.left() < (2 if tiny else 10):
                skipped.append(name)
                continue
            try:
                measure(run, *args)
            except OutOfTime:
                skipped.append(name)
            except Exception as err:  # one stage failing must not cost the others their measurements
                errors.append(f"{name}: {type(err).__name__}: {err}")
                log(errors[-1])
            run.save()
        if skipped:
            log(f"not measured within the budget: {', '.join(skipped)}")
        run.save()
    log(f"done; wrote {Path(out) / 'gpu_benchmark.json'} and .md")


if __name__ == "__main__":
    fire.Fire(main)
