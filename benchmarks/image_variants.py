"""Which choices make the image stages learn within a CPU budget: image_vid2vid and sdm_refiner variants.

Both experiments start from what the quality benchmark on brain-mni built (its dataset and its real-trained 2D
segmenter), so run that first. Every figure is measured on the real held-out cases, whose masks have real images:

- **Generator variants** train image_vid2vid's small preset for the same iterations and generate the image of every
  held-out mask. Each is scored against the real image of the same mask (mean absolute difference, in the [-1, 1]
  scale the networks see), with the quality report's alignment Dice (the segmenter on the generated image against
  the mask) and its feature Fréchet distance to the real held-out images (mean of the three views).
- **Refiner variants** train the three views of sdm_refiner for each budget of ``--budgets`` in one run, resumed
  from budget to budget; after each, the views refine the best generator's images of the first ``--cases``
  held-out masks. The same measures before and after refinement are the refiner's effect against its training.

    .venv/bin/python benchmarks/quality_benchmark.py run --dataset brain-mni    # first
    .venv/bin/python benchmarks/image_variants.py generator --iterations 200 [--variants vid2vid] [--threads 1]
    .venv/bin/python benchmarks/image_variants.py refiner --budgets 150,300 [--variants full] [--threads 1]
    .venv/bin/python benchmarks/image_variants.py report

Every step keeps its result in ``benchmarks/runs/image_variants/`` and skips what is finished, so two processes with
``--threads 1`` and disjoint ``--variants`` can share the two cores. ``report`` writes
``benchmarks/results/image_variants.{json,md,png}`` (the tables; the refiner's effect against iterations) and
``image_variants_montage.png`` (one held-out case: its mask, its real image, each generator's, the refined ones).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import fire
import numpy as np
import torch

from medgen3d.views import check_views

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_benchmark import BUNDLES, RESULTS, _machine  # noqa: E402  (the sibling benchmark's paths and load)

ROOT = Path(__file__).resolve().parents[1]
QUALITY = ROOT / "benchmarks" / "runs" / "quality" / "brain-mni"
DATASET = QUALITY / "brain-mni-small"
RUNS = ROOT / "benchmarks" / "runs" / "image_variants"
VIEWS = check_views(None)  # every view, as a tuple: run folders are named by view

GENERATORS: dict[str, dict[str, Any]] = {
    "vid2vid": {"skips": False},  # the paper's generator: everything through the bottleneck
    "+skips": {"skips": True},  # U-Net skips from each encoder level to the decoders
}
REFINERS: dict[str, dict[str, Any]] = {
    "full": {"max_timestep": None},  # the paper: every diffusion step 0..999
    "low-noise": {"max_timestep": 100},  # only the steps a refiner with t_r <= 100 denoises from
}


def _names(variants: str | tuple[str, ...], known: dict[str, Any]) -> tuple[str, ...]:
    """``--variants a`` arrives as a string, ``--variants a,b`` as a tuple."""
    names = (variants,) if isinstance(variants, str) else tuple(variants)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {list(known)}")
    return names


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _write(path: Path, entry: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entry, indent=2) + "\n")


def _stage(bundle: str, run: Path):
    from medgen3d.pipeline.stages import StageBundle

    # the 64 x 80 slices the recorded results were generated at (brain.json's size for image_vid2vid until 0.4.0)
    size = {"image_size": [64, 80]} if bundle == "image_vid2vid" else {}
    return StageBundle(
        BUNDLES / bundle,
        run / "models",
        run / "eval",
        overlays=["brain.json"],
        overrides={"dataset_dir": str(DATASET), **size},
    )


def _require_quality_run() -> None:
    needed = [DATASET / "dataset.json", QUALITY / "models" / "segmenter" / "model.pt"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise SystemExit(f"run `quality_benchmark.py run --dataset brain-mni` first; missing: {missing}")


class Judge:
    """The held-out real cases and the quality benchmark's segmenter and features, to score image sets with."""

    def __init__(self) -> None:
        from medgen3d.data.dataset import read_dataset
        from medgen3d.metrics.report import load_pairs
        from medgen3d.pipeline.stages import StageBundle

        _require_quality_run()
        workflow = StageBundle(BUNDLES / "medgen3d", QUALITY / "models", QUALITY / "eval")
        parser = workflow.workflow(
            ["evaluate.json"], bundle_root=str(QUALITY), stages_dir=str(BUNDLES), dataset_dir=str(DATASET)
        ).parser
        self.segment = parser.get_parsed_content("segmenter")
        self.extract = parser.get_parsed_content("features")
        self.real = load_pairs(read_dataset(DATASET), ("test",))
        self.num_classes = len(read_dataset(DATASET).labels)

    def score(self, images: list[torch.Tensor], count: int | None = None) -> dict[str, float]:
        """``images``: ``(H, W, D)`` in [-1, 1], one per held-out mask, in the held-out order (the first ``count``)."""
        from medgen3d.metrics.alignment import alignment_dice
        from medgen3d.metrics.fidelity import view_frechet_distances
        from medgen3d.metrics.segmentation import mean_present

        n = len(images) if count is None else count
        labels, real = self.real.labels[:n], self.real.images[:n]
        dice = alignment_dice(self.segment, images[:n], labels, self.num_classes)
        return {
            "l1_to_real": float(np.mean([(a - b).abs().mean().item() for a, b in zip(images[:n], real)])),
            "alignment_dice": float(mean_present(mean_present(dice, axis=0))),
            "feature_fd": view_frechet_distances(self.extract, images[:n], self.real.images, VIEWS)["mean"],
        }


def _generated(pairs_dir: Path, ids: list[str]) -> list[torch.Tensor]:
    from medgen3d.data.dataset import read_dataset
    from medgen3d.data.intensity import reference_scale
    from medgen3d.metrics.report import load_pairs

    # read as written: in the real data's reference scale, not re-normalised by each image's own percentiles
    pairs = load_pairs(read_dataset(pairs_dir), ("test",), reference_scale(read_dataset(DATASET)))
    order = {case: i for i, case in enumerate(pairs.ids)}
    return [pairs.images[order[case]] for case in ids]


def generator(iterations: int = 200, variants: tuple[str, ...] = tuple(GENERATORS), threads: int = 2) -> None:
    """Train each generator variant for ``iterations``, generate the held-out masks' images and score them."""
    torch.set_num_threads(threads)
    _require_quality_run()
    judge = None
    for name in _names(variants, GENERATORS):
        run = RUNS / "generator" / name
        record = run / "result.json"
        if (_read(record) or {}).get("iterations") == iterations:
            continue
        stage = _stage("image_vid2vid", run)
        reused = _reuse_quality_run("image_vid2vid", ("",), run / "models", iterations) if name == "vid2vid" else None
        machine, start = _machine(), time.perf_counter()
        stage.run(["train.json"], max_iterations=iterations, val_interval=iterations, **GENERATORS[name])
        seconds = time.perf_counter() - start
        if reused is not None:
            seconds, machine = reused["seconds"], reused["machine"] + " (the quality benchmark's run)"
        pairs = run / "eval" / "pairs"
        shutil.rmtree(pairs, ignore_errors=True)
        stage.run(["inference.json"], masks_dir=str(DATASET), synthetic_dir=str(pairs), **GENERATORS[name])
        judge = judge or Judge()
        scores = judge.score(_generated(pairs, judge.real.ids))
        entry = {"iterations": iterations, "seconds": round(seconds, 1), "threads": threads, "machine": machine}
        _write(record, entry | {"overrides": GENERATORS[name], "scores": scores})
        print(f"{name}: {entry | scores}", file=sys.stderr, flush=True)


def _best_generator() -> str:
    results = {name: _read(RUNS / "generator" / name / "result.json") for name in GENERATORS}
    done = {name: r for name, r in results.items() if r is not None}
    if not done:
        raise SystemExit("run `image_variants.py generator` first: the refiner refines the best generator's images")
    return min(done, key=lambda name: done[name]["scores"]["feature_fd"])


def _reuse_quality_run(stage: str, names: tuple[str, ...], models: Path, iterations: int) -> dict | None:
    """The quality benchmark trained ``stage`` with the paper's choices and the same config, data and seed: when it
    stopped at ``iterations``, its checkpoints (``names``: one per view, or ``("",)``) are this variant's, and
    copying them saves that training. Returns the quality benchmark's timing of the stage when they were copied."""
    source = QUALITY / "models" / stage
    if (models / names[0] / "checkpoint.pt").exists() or not all(
        (source / n / "checkpoint.pt").is_file() for n in names
    ):
        return None
    states = [torch.load(source / n / "checkpoint.pt", map_location="cpu", weights_only=True) for n in names]
    if not all(state["trainer"]["iteration"] == iterations for state in states):
        return None
    shutil.copytree(source, models, dirs_exist_ok=True)
    print(f"{stage}: the quality benchmark's checkpoints at {iterations} iterations reused", file=sys.stderr)
    timings = json.loads((QUALITY / "timings.json").read_text())
    return timings[{"image_vid2vid": "image", "sdm_refiner": "refiner"}[stage]]


def refiner(
    budgets: str | tuple[int, ...] = "150,300",
    variants: tuple[str, ...] = tuple(REFINERS),
    cases: int = 5,
    noise_steps: int = 10,
    threads: int = 2,
) -> None:
    """Train each refiner variant to each of ``budgets`` iterations per view, refine and score after each."""
    torch.set_num_threads(threads)
    steps = sorted(int(b) for b in (budgets.split(",") if isinstance(budgets, str) else budgets))
    source = _best_generator()
    pairs = RUNS / "generator" / source / "eval" / "pairs"
    judge = Judge()
    unrefined = _generated(pairs, judge.real.ids)[:cases]
    _write(RUNS / "refiner" / "unrefined.json", {"generator": source, "cases": cases, **judge.score(unrefined)})
    for name in _names(variants, REFINERS):
        run = RUNS / "refiner" / name
        stage = _stage("sdm_refiner", run)
        reused = _reuse_quality_run("sdm_refiner", VIEWS, run / "models", steps[0]) if name == "full" else None
        for budget in steps:
            record = run / f"result-{budget:06d}.json"
            if _read(record) is not None:
                continue
            machine, start = _machine(), time.perf_counter()
            for view in VIEWS:
                stage.run(["train.json"], view=view, max_iterations=budget, val_interval=budget, **REFINERS[name])
            seconds = time.perf_counter() - start
            if reused is not None and budget == steps[0]:
                seconds, machine = reused["seconds"], reused["machine"] + " (the quality benchmark's run)"
            # each budget's views are kept: the next budget resumes from and overwrites the checkpoints
            shutil.copytree(run / "models", run / f"models-{budget:06d}", dirs_exist_ok=True)
            refined = _refine(stage, run / "models", unrefined, judge, noise_steps)
            np.save(run / f"first-case-{budget:06d}.npy", refined[0].numpy())  # for the montage
            entry = {"iterations": budget, "train_seconds": round(seconds, 1), "machine": machine, "threads": threads}
            _write(record, entry | {"noise_steps": noise_steps, "scores": judge.score(refined)})
            print(f"{name} at {budget}: {_read(record)}", file=sys.stderr, flush=True)


def _refine(
    stage,
    models: Path,
    images: list[torch.Tensor],
    judge: Judge,
    noise_steps: int,
    labels: list[np.ndarray] | None = None,
    **overrides: Any,
) -> list[torch.Tensor]:
    """Refine ``images`` with the three views in ``models``; case ``i`` draws its noise from seed ``i``. ``labels``:
    their masks, by default the first held-out masks (``images`` their generated images). ``overrides``: further
    values of sdm_refiner's inference.json."""
    from medgen3d.diffusion.refiner import refine_volume

    parser = stage.workflow(["inference.json"], ckpt_dir=str(models), noise_steps=noise_steps, **overrides).parser
    networks, schedule = parser.get_parsed_content("view_networks"), parser.get_parsed_content("refiner")
    views, batch_size = parser.get_parsed_content("views"), parser.get_parsed_content("batch_size")
    return [
        refine_volume(
            networks,
            schedule,
            image,
            torch.from_numpy(label),
            judge.num_classes,
            views,
            batch_size,
            torch.Generator().manual_seed(i),
        )
        for i, (image, label) in enumerate(zip(images, judge.real.labels if labels is None else labels))
    ]


def cross(
    generator: str = "+skips",
    budget: int = 300,
    variants: tuple[str, ...] = tuple(REFINERS),
    cases: int = 5,
    noise_steps: int = 10,
    threads: int = 2,
) -> None:
    """Refine another generator's images with the refiner variants' views kept at ``budget`` iterations (after
    ``refiner`` ran): does the refiner's effect depend on what it refines?"""
    torch.set_num_threads(threads)
    judge = Judge()
    images = _generated(RUNS / "generator" / _names(generator, GENERATORS)[0] / "eval" / "pairs", judge.real.ids)
    out = RUNS / "cross" / generator
    if _read(out / "unrefined.json") is None:
        _write(out / "unrefined.json", {"generator": generator, "cases": cases, **judge.score(images[:cases])})
    for name in _names(variants, REFINERS):
        record = out / f"{name}-{budget:06d}.json"
        models = RUNS / "refiner" / name / f"models-{budget:06d}"
        if _read(record) is not None or not models.is_dir():
            continue
        refined = _refine(_stage("sdm_refiner", RUNS / "refiner" / name), models, images[:cases], judge, noise_steps)
        np.save(out / f"first-case-{name}-{budget:06d}.npy", refined[0].numpy())
        _write(
            record, {"refiner": name, "iterations": budget, "noise_steps": noise_steps, "scores": judge.score(refined)}
        )
        print(f"{generator} refined by {name} at {budget}: {_read(record)}", file=sys.stderr, flush=True)


def _refiner_rows() -> dict[str, list[dict]]:
    rows = {}
    for name in REFINERS:
        found = sorted((RUNS / "refiner" / name).glob("result-*.json"))
        if found:
            rows[name] = [json.loads(p.read_text()) for p in found]
    return rows


def _cross_rows() -> dict[str, dict]:
    """generator -> its unrefined scores and each refiner variant's rows (from ``cross``)."""
    rows = {}
    for folder in sorted((RUNS / "cross").glob("*")):
        unrefined = _read(folder / "unrefined.json")
        refined = [json.loads(p.read_text()) for p in sorted(folder.glob("*-0*.json"))]
        if unrefined and refined:
            rows[folder.name] = {"unrefined": unrefined, "refined": refined}
    return rows


def report() -> None:
    """Gather every variant's results into ``results/image_variants.{json,md,png}``."""
    generators = {n: r for n in GENERATORS if (r := _read(RUNS / "generator" / n / "result.json")) is not None}
    unrefined = _read(RUNS / "refiner" / "unrefined.json")
    quality = _read(RESULTS / "quality_brain-mni.json") or {}
    results = {
        "dataset": "brain-mni small, real held-out masks",
        "reference": {  # the quality benchmark's real held-out figures, the ceiling of what can be reached
            "alignment_dice": quality.get("alignment_dice", {}).get("reference"),
            "feature_fd": quality.get("feature_fd", {}).get("reference"),
        },
        "generators": generators,
        "unrefined": unrefined,
        "refiners": _refiner_rows(),
        "cross": _cross_rows(),
        # the same effect in the quality benchmark, where the refiner refines images of generated masks
        "quality_benchmark": {
            "refiner_iterations": quality.get("settings", {}).get("refiner", {}).get("max_iterations"),
            "feature_fd": quality.get("feature_fd"),
            "alignment_dice": quality.get("alignment_dice"),
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "image_variants.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "image_variants.md").write_text(markdown(results))
    _plot(results, RESULTS / "image_variants.png")
    _montage(results, RESULTS / "image_variants_montage.png")
    print(markdown(results))


def _f(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    """The two tables: generator variants, and the refiner's effect against its training."""
    ref = results["reference"]
    lines = [
        "Image stages on brain-mni small, scored on the real held-out masks (their real images are the target). "
        f"Real held-out reference of the quality benchmark: alignment Dice {_f(ref['alignment_dice'])}, "
        f"feature FD {_f(ref['feature_fd'])} (real held-out against real training).",
        "",
        "| generator | iterations | training s | mean abs. difference to the real image | alignment Dice | "
        "feature FD | machine |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results["generators"].items():
        s = r["scores"]
        lines.append(
            f"| {name} | {r['iterations']} | {r['seconds']:.0f} | {_f(s['l1_to_real'])} | {_f(s['alignment_dice'])} "
            f"| {_f(s['feature_fd'])} | {r['machine']}, {r['threads']} thread(s) |"
        )
    unrefined = results["unrefined"]
    if unrefined:
        lines += [
            "",
            f"Refiner: the three views refine the {unrefined['generator']} generator's images of the first "
            f"{unrefined['cases']} held-out masks (t_r as given); the change is against those images unrefined: "
            f"difference {_f(unrefined['l1_to_real'])}, alignment Dice {_f(unrefined['alignment_dice'])}, feature FD "
            f"{_f(unrefined['feature_fd'])}.",
            "",
            "| refiner training | iterations per view | training s (3 views, in all) | t_r | difference to real | "
            "alignment Dice | feature FD | FD change | machine at the start of training |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, rows in results["refiners"].items():
            total = 0.0
            for r in rows:
                s, total = r["scores"], total + r["train_seconds"]
                change = 100 * (s["feature_fd"] / unrefined["feature_fd"] - 1)
                lines.append(
                    f"| {name} | {r['iterations']} | {total:.0f} | {r['noise_steps']} | "
                    f"{_f(s['l1_to_real'])} | {_f(s['alignment_dice'])} | {_f(s['feature_fd'])} | {change:+.0f}% | "
                    f"{r['machine']}, {r['threads']} thread(s) |"
                )
    for generator_name, cross_rows in results.get("cross", {}).items():
        base = cross_rows["unrefined"]
        lines += [
            "",
            f"The same refiners on the {generator_name} generator's images of the same {base['cases']} masks "
            f"(unrefined: difference {_f(base['l1_to_real'])}, alignment Dice {_f(base['alignment_dice'])}, feature FD "
            f"{_f(base['feature_fd'])}):",
            "",
            "| refiner training | iterations per view | t_r | difference to real | alignment Dice | feature FD "
            "| FD change |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in cross_rows["refined"]:
            s = r["scores"]
            change = 100 * (s["feature_fd"] / base["feature_fd"] - 1)
            lines.append(
                f"| {r['refiner']} | {r['iterations']} | {r['noise_steps']} | {_f(s['l1_to_real'])} | "
                f"{_f(s['alignment_dice'])} | {_f(s['feature_fd'])} | {change:+.0f}% |"
            )
    return "\n".join(lines) + "\n"


def _plot(results: dict[str, Any], path: Path) -> None:
    """The refiner's effect on the feature FD and the alignment Dice against training iterations per view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unrefined = results["unrefined"]
    if not unrefined or not results["refiners"]:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, rows in results["refiners"].items():
        its = [r["iterations"] for r in rows]
        axes[0].plot(
            its, [100 * (r["scores"]["feature_fd"] / unrefined["feature_fd"] - 1) for r in rows], "o-", label=name
        )
        axes[1].plot(its, [r["scores"]["alignment_dice"] - unrefined["alignment_dice"] for r in rows], "o-", label=name)
    bench = results["quality_benchmark"]
    if bench["refiner_iterations"] and bench["feature_fd"]:
        fd, dice = bench["feature_fd"], bench["alignment_dice"]
        label = "brain quality benchmark (images of generated masks)"
        axes[0].plot([bench["refiner_iterations"]], [100 * (fd["refined"] / fd["unrefined"] - 1)], "kx", label=label)
        axes[1].plot([bench["refiner_iterations"]], [dice["refined"] - dice["unrefined"]], "kx", label=label)
    axes[0].axhline(0, color="grey", lw=0.8)
    axes[0].axhline(-10, color="tab:green", ls="--", lw=0.8, label="target: 10% below unrefined")
    axes[1].axhline(0, color="grey", lw=0.8)
    axes[0].set(xlabel="refiner training iterations per view", ylabel="feature FD change vs unrefined (%)")
    axes[1].set(xlabel="refiner training iterations per view", ylabel="alignment Dice change vs unrefined")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle("sdm_refiner on brain-mni small: effect against training", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _montage(results: dict[str, Any], path: Path) -> None:
    """The first held-out case in three mid planes: mask, real image, each generator's image, each refiner's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medgen3d.data.dataset import read_dataset
    from medgen3d.metrics.report import load_pairs
    from medgen3d.preview import label_colormap

    real = load_pairs(read_dataset(DATASET), ("test",))
    rows: list[tuple[str, np.ndarray]] = [("real image", real.images[0].numpy())]
    for name in results["generators"]:
        rows.append(
            (f"{name} generator", _generated(RUNS / "generator" / name / "eval" / "pairs", real.ids[:1])[0].numpy())
        )
    for name, found in results["refiners"].items():
        last = found[-1]["iterations"]
        rows.append((f"refined, {name}, {last} its", np.load(RUNS / "refiner" / name / f"first-case-{last:06d}.npy")))
    label, k = real.labels[0], len(read_dataset(DATASET).labels)
    h, w, d = label.shape
    planes = (lambda a: a[:, :, d // 2], lambda a: a[:, w // 2, :], lambda a: a[h // 2, :, :])
    fig, axes = plt.subplots(3, len(rows) + 1, figsize=(1.9 * (len(rows) + 1), 5.6), squeeze=False)
    for v, take in enumerate(planes):
        axes[v, 0].imshow(
            take(label).T, cmap=label_colormap(k), vmin=0, vmax=k - 1, origin="lower", interpolation="nearest"
        )
        for c, (_, image) in enumerate(rows, start=1):
            axes[v, c].imshow(take(image).T, cmap="gray", vmin=-1, vmax=1, origin="lower")
    for c, name in enumerate(["mask", *[n for n, _ in rows]]):
        axes[0, c].set_title(name, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"held-out case {real.ids[0]}: axial, coronal, sagittal mid planes", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    fire.Fire({"generator": generator, "refiner": refiner, "cross": cross, "report": report})
