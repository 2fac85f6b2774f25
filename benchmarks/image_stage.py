"""The image stage against its baselines: image_vid2vid settings beside a per-label lookup and the real images.

Every row renders the same masks, the real held-out masks of an embedded dataset, so every figure compares images of
identical anatomy with the real image of that anatomy:

- ``real``: the real images themselves (the ceiling; their feature distance is real held-out against real training);
- ``lookup``: each voxel its label's mean real training intensity (:mod:`medgen3d.metrics.lookup`), the simplest
  image a mask can have; a generator it beats has not learnt label -> intensity;
- one row per generator setting of :data:`SETTINGS`, each trained for the same iterations from the same seed;
- :data:`PIPELINE`: the quality benchmark's trained generator, and its images after the quality benchmark's refiner
  (what the workflow gives a user; the refiner's images carry its texture, which the contrast-to-noise sees).

Measures (network scale, [-1, 1]; generated images as the generator wrote them, never re-normalised):
mean absolute difference to the real image; alignment Dice (the quality benchmark's real-trained segmenter on the
image, against the mask); feature Fréchet distance to the real held-out images (mean of three views); each
structure's mean intensity; contrast-to-noise of the dataset's structure pairs (``|mean_a - mean_b|`` over the pooled
standard deviation, per case, averaged); and drift: from real slices at 30%, 50% and 70% of each volume's depth the
generator continues on its own, and the error inside the foreground is recorded by slices since the last real one
(``drift_ratio``: at 10 slices over at 1; ``excess_drift_ratio``: at 10 slices over the error at the same slices of
the whole volume the generator made without real slices, 1 when its own fed-back slices cost nothing). The real row
also holds the feature FD of the real images mirrored and shifted by a voxel (:data:`OTHER_REAL`): where the FD of
real images that are not copies of the held-out ones lies.

The dataset and the segmenter are the quality benchmark's, so run its segmenter first:

    .venv/bin/python benchmarks/quality_benchmark.py run --dataset brain-mni --train_only segmenter
    .venv/bin/python benchmarks/image_stage.py run --dataset brain-mni [--settings '["a","b"]'] [--iterations 400]
    .venv/bin/python benchmarks/image_stage.py pipeline --dataset brain-mni   # after a full quality benchmark run
    .venv/bin/python benchmarks/image_stage.py report --dataset brain-mni
    .venv/bin/python benchmarks/image_stage.py curve --dataset brain-mni [--multiples 1,2,4] [--iterations 400]

``run`` keeps each setting's result in ``benchmarks/runs/image_stage/<dataset>/`` and skips what is finished;
``report`` writes ``benchmarks/results/image_stage_<dataset>.{json,md}`` and a montage ``.png`` (one held-out case:
its mask, its real image, the lookup and every setting, in three planes), and ``_pipeline.png`` the same for the
:data:`PIPELINE` rows. ``curve`` trains :data:`CURVE_SETTING` for each multiple of ``--iterations`` (each run's
learning rate decaying to 0 at its own end), scores each like ``run``, and writes
``benchmarks/results/image_learning_curve_<dataset>.{json,md,png}`` (each measure against iterations, the real
images' and the lookup's values as lines) and ``_montage.png`` (the first held-out case at each budget): what more
training buys the image stage. At about 0.55 s an iteration on the 2-core CPU with bf16, 1, 2 and 4 times 400
iterations take half an hour with their scoring.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import fire
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_benchmark import (  # noqa: E402  (the sibling benchmark's paths, load and results)
    BUNDLES,
    EARLIER,
    EARLIER_NOTE,
    RESULTS,
    _machine,
    with_earlier_rows,
)

ROOT = Path(__file__).resolve().parents[1]
QUALITY = ROOT / "benchmarks" / "runs" / "quality"
RUNS = ROOT / "benchmarks" / "runs" / "image_stage"
VIEWS = ("axial", "coronal", "sagittal")

# per dataset: the overlay the quality benchmark trains with, and the structure pairs whose contrast is measured
DATASETS: dict[str, dict[str, Any]] = {
    "brain-mni": {"overlays": ["brain.json"], "contrasts": [("white_matter", "cortex"), ("cortex", "csf")]},
    "thorax-phantom": {
        "overlays": ["thorax.json"],
        "contrasts": [("left_lung", "body"), ("right_lung", "body"), ("heart", "body")],
    },
}
# the paper's losses and generator, then the changes one at a time
CONSTANT_2E4 = {"learning_rate": 2e-4, "final_lr_fraction": 1.0}  # vid2vid's rate, held for the whole run
L1_10 = {"loss_weights#l1": 10.0}  # the blended slice's L1 weight before image_vid2vid 0.6.0 (vid2vid's own)
SPADE_DECAYING = {"spade": True, "p_own_history": 0.5, "learning_rate": 1e-3, "final_lr_fraction": 0.0}  # + L1 weights


def _l1_weight(weight: float) -> dict[str, float]:
    """The same weight on both L1 terms, the blended and the hallucinated slice's."""
    return {"loss_weights#l1": weight, "loss_weights#hallucinated_l1": weight}


SETTINGS: dict[str, dict[str, Any]] = {
    # each row names every setting it changes from the bundle's defaults, so a later default leaves it unchanged
    "vid2vid": {"spade": False, "p_own_history": 0.0, "loss_weights#hallucinated_l1": 0.0} | L1_10 | CONSTANT_2E4,
    "+own history +hallucinated L1": {"spade": False, "p_own_history": 0.5, "loss_weights#hallucinated_l1": 10.0}
    | L1_10
    | CONSTANT_2E4,
    "+SPADE": {"spade": True, "p_own_history": 0.5, "loss_weights#hallucinated_l1": 10.0} | L1_10 | CONSTANT_2E4,
    # vid2vid's 2e-4 is sized for 100k+ iterations: an Adam step moves a weight by about the learning rate, so in
    # 400 steps no output intensity can move far
    "+SPADE, learning rate 1e-3": SPADE_DECAYING | {"final_lr_fraction": 1.0} | _l1_weight(10.0),
    # pix2pixHD and vid2vid end with the rate decaying to 0: the last steps settle instead of jumping by 1e-3
    "+SPADE, learning rate 1e-3 decaying to 0": SPADE_DECAYING | _l1_weight(10.0),
    # the learning curve (image_learning_curve_brain-mni_l1-10.md) stays flat in contrast-to-noise and feature distance
    # from 400 to 1600 iterations: the objective, not the budget, keeps the images smoother than real inside each
    # structure. L1 (weight 10 on the blended and the hallucinated slice) pulls every pixel to its conditional median;
    # pix2pixHD and vid2vid have no L1 term, their adversarial and feature-matching terms alone shape the texture
    "+SPADE, learning rate 1e-3 decaying to 0, L1 weight 1": SPADE_DECAYING | _l1_weight(1.0),
    "+SPADE, learning rate 1e-3 decaying to 0, L1 weight 2": SPADE_DECAYING | _l1_weight(2.0),
    "+SPADE, learning rate 1e-3 decaying to 0, no L1": SPADE_DECAYING | _l1_weight(0.0),
    # the same training; the generator returns its hallucinated slice instead of the blend with the warped previous
    # slice, whose bilinear resampling softens thin structures (a 1-minute probe of the default's weights: alignment
    # on real masks 0.783 -> 0.799, on the quality benchmark's generated masks 0.581 -> 0.616)
    "+SPADE, learning rate 1e-3 decaying to 0, L1 weight 1, hallucinated slice out": SPADE_DECAYING
    | _l1_weight(1.0)
    | {"output_slice": "hallucinated"},
}
DEFAULT = "+SPADE, learning rate 1e-3 decaying to 0, L1 weight 1, hallucinated slice out"  # the defaults (0.7.0)
# the setting ``curve`` trains at each budget: 0.6.0's defaults, which 0.7.0's train alike (the output slice is chosen
# at generation), so its runs hold the defaults' weights at each budget; its scores are of 0.6.0's composite output
CURVE_SETTING = "+SPADE, learning rate 1e-3 decaying to 0, L1 weight 1"
# what a user of the workflow gets on these masks: the quality benchmark's own generator (the defaults, trained at its
# budget), as it writes its images and after its refiner (the defaults: t_r = 10, DDIM-5 with fresh noise)
PIPELINE = ("quality benchmark's generator", "quality benchmark's generator, refined")
DRIFT_STARTS = (0.3, 0.5, 0.7)  # where along each held-out volume the real slices end
DRIFT_SLICES = 12  # slices generated after them
DRIFT_AT = 10  # drift_ratio: error this many slices after the last real one, over the first's


def _check(dataset: str) -> dict[str, Any]:
    if dataset not in DATASETS:
        raise SystemExit(f"--dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
    return DATASETS[dataset]


def _names(settings: str | tuple[str, ...], known: dict[str, Any]) -> tuple[str, ...]:
    """The names of ``known`` that ``--settings`` asks for: ``--settings a`` arrives as a string, ``--settings a,b``
    as a tuple; names that hold commas need the list form, ``--settings '["a, b","c"]'`` (fire reads ``"a, b","c"``
    as one string)."""
    names = (settings,) if isinstance(settings, str) else tuple(settings)
    unknown = [n for n in names if n not in known]
    if unknown:
        hint = 'several names with commas: --settings \'["a, b","c"]\''
        raise SystemExit(f"unknown settings {unknown}; known: {list(known)}; {hint}")
    return names


def _folder(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


class Judge:
    """The real held-out cases of one dataset and the quality benchmark's segmenter and features."""

    def __init__(self, dataset: str) -> None:
        from medgen3d.data.dataset import read_dataset
        from medgen3d.metrics.report import load_pairs
        from medgen3d.pipeline.stages import StageBundle

        quality = QUALITY / dataset
        self.data = quality / f"{dataset}-small"
        needed = [self.data / "dataset.json", quality / "models" / "segmenter" / "model.pt"]
        missing = [str(p) for p in needed if not p.exists()]
        if missing:
            command = f"quality_benchmark.py run --dataset {dataset} --train_only segmenter"
            raise SystemExit(f"run `{command}` first; missing {missing}")
        workflow = StageBundle(BUNDLES / "medgen3d", quality / "models", quality / "eval")
        parser = workflow.workflow(
            ["evaluate.json"], bundle_root=str(quality), stages_dir=str(BUNDLES), dataset_dir=str(self.data)
        ).parser
        self.segment = parser.get_parsed_content("segmenter")
        self.extract = parser.get_parsed_content("features")
        spec = read_dataset(self.data)
        self.labels = spec.labels
        self.num_classes = len(spec.labels)
        self.real = load_pairs(spec, ("test",))
        self.training = load_pairs(spec, ("training",))
        self.generated = generated_masks(dataset)

    def score(self, images: list[torch.Tensor], contrasts: list[tuple[str, str]], real_row: bool = False) -> dict:
        """Every measure of ``images`` (``(H, W, D)``, one per held-out mask, in order) but drift."""
        from medgen3d.metrics.alignment import alignment_dice
        from medgen3d.metrics.fidelity import view_frechet_distances
        from medgen3d.metrics.segmentation import mean_present

        labels, real = self.real.labels, self.real.images
        dice = alignment_dice(self.segment, images, labels, self.num_classes)
        reference = self.training.images if real_row else self.real.images
        names = {name: value for value, name in self.labels.items()}
        return {
            "mean_abs_difference": float(np.mean([(a - b).abs().mean().item() for a, b in zip(images, real)])),
            "alignment_dice": float(mean_present(mean_present(dice, axis=0))),
            "feature_fd": view_frechet_distances(self.extract, images, reference, VIEWS)["mean"],
            "structure_means": {
                name: float(torch.cat([i[torch.from_numpy(lab == v)] for i, lab in zip(images, labels)]).mean())
                for v, name in sorted(self.labels.items())
            },
            "contrast_to_noise": {
                f"{a} vs {b}": _contrast_to_noise(images, labels, names[a], names[b]) for a, b in contrasts
            },
        }


def generated_masks(dataset: str) -> list[np.ndarray] | None:
    """The quality benchmark's generated masks (``(H, W, D)``, its ``eval/synthetic/labels``), or None before it
    generated any: the masks a user's image stage renders, rougher than the real ones."""
    from medgen3d.data.dataset import read_dataset

    synthetic = QUALITY / dataset / "eval" / "synthetic"
    if not (synthetic / "dataset.json").exists():
        return None
    spec = read_dataset(synthetic)
    return [spec.load_case(c)[1].array.astype(np.int64) for c in spec.split("training")]


def mask_alignment(judge: Judge, images: list[torch.Tensor], masks: list[np.ndarray]) -> dict[str, Any]:
    """Alignment Dice of ``images`` against ``masks`` (``(H, W, D)`` each, in order) by the judge's segmenter:
    ``{"mean": ..., "structures": {name: ... or None}}``, the mean over the structures present, as the quality
    report averages it."""
    from medgen3d.metrics.alignment import alignment_dice
    from medgen3d.metrics.segmentation import mean_present

    per_structure = mean_present(alignment_dice(judge.segment, images, masks, judge.num_classes), axis=0)
    names = [judge.labels[v] for v in sorted(judge.labels) if v != 0]
    return {
        "mean": float(mean_present(per_structure)),
        "structures": {n: (None if np.isnan(d) else float(d)) for n, d in zip(names, per_structure)},
    }


def lookup_alignment(judge: Judge, masks: list[np.ndarray]) -> dict[str, Any]:
    """:func:`mask_alignment` of ``masks`` rendered by the per-label lookup of the real training images (the quality
    report's ``lookup_synthetic`` for generated masks): what the masks allow an image stage."""
    from medgen3d.metrics.lookup import label_means, lookup_images

    means = label_means(judge.training.images, judge.training.labels, judge.num_classes)
    return mask_alignment(judge, lookup_images(masks, means), masks)


def generated_mask_alignment(images: list[torch.Tensor], judge: Judge) -> float:
    """Alignment Dice of ``images`` (``(H, W, D)``, one per :attr:`Judge.generated` mask, in order) against those
    masks: how well an image stage shows masks of the mask stage, not the real anatomy it trained on."""
    return mask_alignment(judge, images, judge.generated)["mean"]


def _contrast_to_noise(images: list[torch.Tensor], labels: list[np.ndarray], a: int, b: int) -> float | None:
    """``|mean_a - mean_b| / sqrt((var_a + var_b) / 2)`` per case, averaged over the cases with both labels; None
    where the images have no spread inside the labels (the lookup: infinite)."""
    values = []
    for image, label in zip(images, labels):
        x, y = image[torch.from_numpy(label == a)], image[torch.from_numpy(label == b)]
        if x.numel() < 2 or y.numel() < 2:
            continue
        noise = float(torch.sqrt((x.var() + y.var()) / 2))
        if noise < 1e-6:
            return None
        values.append(abs(float(x.mean() - y.mean())) / noise)
    return float(np.mean(values)) if values else None


def _generator(dataset: str, run: Path, overrides: dict[str, Any]):
    """The trained generator of ``run`` (eval mode) and its in-plane size."""
    from medgen3d.engines.checkpoint import load_weights

    parser = _stage(dataset, run).workflow(["inference.json"], **_network_overrides(overrides)).parser
    network = load_weights(parser.get_parsed_content("network"), run / "models" / "model.pt").eval()
    return network, tuple(parser.get_parsed_content("slice_size"))


def _network_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """The settings inference.json knows (the generator's); the training ones stay in train.json. A setting that
    does not name ``output_slice`` returns the composite, as every generator did before the option."""
    return {"output_slice": "composite"} | {k: v for k, v in overrides.items() if k in ("spade", "output_slice")}


def _stage(dataset: str, run: Path):
    from medgen3d.pipeline.stages import StageBundle

    data = QUALITY / dataset / f"{dataset}-small"
    return StageBundle(
        BUNDLES / "image_vid2vid",
        run / "models",
        run / "eval",
        overlays=DATASETS[dataset]["overlays"],
        overrides={"dataset_dir": str(data)},
    )


def _volumes(labels: list[np.ndarray]) -> list[torch.Tensor]:
    return [torch.from_numpy(label).permute(2, 0, 1) for label in labels]  # (D, H, W), as the generator runs


def generated_images(generator, size, judge: Judge) -> list[torch.Tensor]:
    """The image of every held-out mask, generated from its first slice on: ``(H, W, D)``."""
    return rendered(generator, size, judge.real.labels)


def drift_windows(depth: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each drift window of a volume of ``depth`` slices: real slices before ``start``, slices
    ``start .. stop - 1`` generated (:data:`DRIFT_SLICES`, fewer at the volume's end)."""
    return [(int(f * depth), min(int(f * depth) + DRIFT_SLICES, depth)) for f in DRIFT_STARTS]


def drift(generator, size, judge: Judge) -> list[float]:
    """Mean absolute error inside the foreground at 1 .. :data:`DRIFT_SLICES` slices after the last real slice."""
    from medgen3d.synthesis.images import generate_image_volumes
    from medgen3d.transforms.subsequence import resize_label_slices

    history = generator.history
    errors = torch.zeros(DRIFT_SLICES)
    count = 0
    for label, real in zip(_volumes(judge.real.labels), judge.real.images):
        for start, stop in drift_windows(label.shape[0]):
            window = label[start - history : stop]
            known = real.permute(2, 0, 1)[start - history : start]
            resized = resize_label_slices(window, size, judge.num_classes)
            known = torch.nn.functional.interpolate(known[:, None], size=size, mode="area")[:, 0]
            [image] = generate_image_volumes(generator, [resized], judge.num_classes, known=[known])
            image = torch.nn.functional.interpolate(image[:, None].cpu(), size=tuple(label.shape[1:]), mode="bilinear")
            truth = real.permute(2, 0, 1)[start - history : stop]
            for k in range(1, stop - start + 1):
                inside = window[history + k - 1] > 0
                errors[k - 1] += (image[history + k - 1, 0] - truth[history + k - 1]).abs()[inside].mean()
            count += 1
    return (errors / count).tolist()


def errors_at_drift_slices(
    images: list[torch.Tensor], labels: list[np.ndarray], real: list[torch.Tensor]
) -> list[float]:
    """The error :func:`drift` records, at the same slices, of images made without real slices before them: whole
    volumes generated from their first slice, or the lookup.

    A generator whose error after real slices settles where its whole volume's error lies does not drift: what
    its own slices feed back is no worse than what it feeds back from the volume's start. ``drift_ratio`` mixes
    that with how much the real slices help the first generated slice, which a better generator raises.

    Args:
        images, real: per case ``(H, W, D)``, generated and real.
        labels: per case ``(H, W, D)`` masks.

    Returns:
        :data:`DRIFT_SLICES` mean errors: at 1 .. :data:`DRIFT_SLICES` slices from each window's start.
    """
    errors = torch.zeros(DRIFT_SLICES)
    count = 0
    for label, image, truth in zip(_volumes(labels), images, real):
        image, truth = image.permute(2, 0, 1), truth.permute(2, 0, 1)
        for start, stop in drift_windows(label.shape[0]):
            for k, z in enumerate(range(start, stop)):
                inside = label[z] > 0
                errors[k] += (image[z] - truth[z]).abs()[inside].mean()
            count += 1
    return (errors / count).tolist()


def run(
    dataset: str = "brain-mni", settings: tuple[str, ...] = tuple(SETTINGS), iterations: int = 400, threads: int = 2
) -> None:
    """Train each setting for ``iterations`` (same seed), generate the held-out masks' images and score them."""
    torch.set_num_threads(threads)
    _check(dataset)
    judge = Judge(dataset)
    base = RUNS / dataset
    baselines(dataset, judge)
    for name in _names(settings, SETTINGS):
        run_dir = base / _folder(name)
        record = run_dir / "result.json"
        entry = _read(record)
        if (entry or {}).get("iterations") == iterations:
            with_later_scores(dataset, run_dir, entry, judge)
            continue
        entry = train_and_score(dataset, run_dir, SETTINGS[name], iterations, judge, threads)
        print(f"{name}: {entry}", file=sys.stderr, flush=True)


def baselines(dataset: str, judge: Judge) -> dict[str, dict[str, Any]]:
    """The scores of the real images and of the per-label lookup (``{"real": ..., "lookup": ...}``), measured once
    and kept in ``benchmarks/runs/image_stage/<dataset>/{real,lookup}/result.json``: every :meth:`Judge.score`
    measure, the real row's :func:`other_real_fd` and the lookup's error at the drift slices."""
    from medgen3d.metrics.report import lookup_pairs

    extra = {"real": ["feature_fd_of_other_real"], "lookup": ["whole_volume_error"]}
    if judge.generated is not None:  # the lookup of the generated masks: what they allow an image stage
        extra["lookup"].append("generated_mask_alignment")
    scores = {}
    for name in ("real", "lookup"):
        record = RUNS / dataset / name / "result.json"
        kept = (_read(record) or {}).get("scores")
        if kept is None or any(k not in kept for k in extra[name]):
            if name == "real":
                images = judge.real.images
            else:  # the quality report's lookup row, so the benchmark and the report measure the same baseline
                images = lookup_pairs(judge.training, judge.real, judge.num_classes)[0].images
            kept = judge.score(images, _check(dataset)["contrasts"], real_row=name == "real")
            if name == "real":
                kept["feature_fd_of_other_real"] = other_real_fd(judge)
            else:
                kept["whole_volume_error"] = errors_at_drift_slices(images, judge.real.labels, judge.real.images)
                if judge.generated is not None:
                    kept["generated_mask_alignment"] = lookup_alignment(judge, judge.generated)["mean"]
            _write(record, {"scores": kept})
        scores[name] = kept
    return scores


# real images that are not the held-out ones, each scored by feature FD against them: where the FD of images as
# real as real, but not copies of these ten, lies
OTHER_REAL = {
    "mirrored left to right": lambda image: image.flip(0),  # the datasets' first axis is left-right (RAS)
    "shifted one voxel": lambda image: image.roll(1, 0),
}


def other_real_fd(judge: Judge) -> dict[str, float]:
    """Feature FD to the real held-out images of the same images altered as :data:`OTHER_REAL` says.

    The FD of generated images is measured against the real images of the same masks (10 held-out cases in the
    embedded datasets): a mirrored brain is as real as the brain, yet its FD shows how much of a small FD is owed to
    copying these very images rather than to realism. A target below it asks for near-copies of images the generator
    never saw.
    """
    from medgen3d.metrics.fidelity import view_frechet_distances

    real = judge.real.images
    return {
        name: view_frechet_distances(judge.extract, [alter(i) for i in real], real, VIEWS)["mean"]
        for name, alter in OTHER_REAL.items()
    }


def train_and_score(
    dataset: str, run_dir: Path, overrides: dict[str, Any], iterations: int, judge: Judge, threads: int
) -> dict[str, Any]:
    """Train image_vid2vid with ``overrides`` for ``iterations`` in ``run_dir`` (resuming its checkpoint), score its
    images of the held-out masks with every measure and drift, and write ``run_dir/result.json``."""
    machine, start = _machine(), time.perf_counter()
    _stage(dataset, run_dir).run(["train.json"], max_iterations=iterations, val_interval=iterations, **overrides)
    seconds = time.perf_counter() - start
    generator, size = _generator(dataset, run_dir, overrides)
    images = generated_images(generator, size, judge)
    scores = judge.score(images, _check(dataset)["contrasts"])
    errors = drift(generator, size, judge)
    scores |= {"drift": errors, "drift_ratio": errors[DRIFT_AT - 1] / errors[0], "slice_size": list(size)}
    scores |= whole_volume_scores(errors, images, judge)
    if judge.generated is not None:
        scores["generated_mask_alignment"] = generated_mask_alignment(rendered(generator, size, judge.generated), judge)
    torch.save(images[0].clone(), run_dir / "first-case.pt")  # for the montage
    entry = {"iterations": iterations, "training_seconds": round(seconds, 1), "threads": threads, "machine": machine}
    entry |= {"overrides": overrides, "scores": scores}
    _write(run_dir / "result.json", entry)
    return entry


def whole_volume_scores(errors: list[float], images: list[torch.Tensor], judge: Judge) -> dict[str, Any]:
    """``whole_volume_error`` (:func:`errors_at_drift_slices` of ``images``, the whole volumes the generator made of
    the held-out masks) and ``excess_drift_ratio``: the error :data:`DRIFT_AT` slices after real slices (``errors``,
    from :func:`drift`) over the whole volume's at the same slices; 1 when the generator does not drift."""
    whole = errors_at_drift_slices(images, judge.real.labels, judge.real.images)
    return {"whole_volume_error": whole, "excess_drift_ratio": errors[DRIFT_AT - 1] / whole[DRIFT_AT - 1]}


def rendered(generator, size, masks: list[np.ndarray]) -> list[torch.Tensor]:
    """The generator's image of each ``(H, W, D)`` mask, generated from its first slice on: ``(H, W, D)``."""
    from medgen3d.synthesis.images import generate_images_for_labels

    num_classes = generator.num_classes
    images = generate_images_for_labels(generator, _volumes(masks), num_classes, size)
    return [image.permute(1, 2, 0) for image in images]


def with_later_scores(dataset: str, run_dir: Path, entry: dict[str, Any], judge: Judge) -> dict[str, Any]:
    """``entry`` (a run's ``result.json``, scored before :func:`whole_volume_scores` or
    :func:`generated_mask_alignment` existed) with those scores, its trained generator's images generated again (the
    same seed, the same images); written back."""
    scores = entry["scores"]
    whole = "excess_drift_ratio" not in scores and "drift" in scores
    generated = "generated_mask_alignment" not in scores and judge.generated is not None
    if not (whole or generated):
        return entry
    generator, size = _generator(dataset, run_dir, entry["overrides"])
    if whole:
        scores |= whole_volume_scores(scores["drift"], generated_images(generator, size, judge), judge)
    if generated:
        scores["generated_mask_alignment"] = generated_mask_alignment(rendered(generator, size, judge.generated), judge)
    _write(run_dir / "result.json", entry)
    return entry


def curve(
    dataset: str = "brain-mni", multiples: tuple[int, ...] = (1, 2, 4), iterations: int = 400, threads: int = 2
) -> None:
    """The image stage's learning curve: :data:`CURVE_SETTING` trained for each multiple of ``iterations``
    from the same seed, each run with its own learning-rate schedule (decaying to 0 at its end, as a user who sets
    ``max_iterations`` gets), scored like every ``run`` row; writes
    ``benchmarks/results/image_learning_curve_<dataset>.{json,md,png}`` and ``_montage.png``."""
    torch.set_num_threads(threads)
    _check(dataset)
    multiples = (multiples,) if isinstance(multiples, int) else tuple(sorted(set(multiples)))
    if not multiples or min(multiples) < 1:
        raise SystemExit(f"--multiples must be whole numbers from 1, got {multiples}")
    judge = Judge(dataset)
    results = {"dataset": dataset, "setting": CURVE_SETTING, "iterations": iterations, "points": []}
    results |= baselines(dataset, judge)
    curve_dir = RUNS / dataset / "curve" / _folder(CURVE_SETTING)  # per setting: another trains its own points
    for multiple in multiples:
        total = multiple * iterations
        run_dir = curve_dir / f"{total}-iterations"
        entry = _read(run_dir / "result.json")
        if (entry or {}).get("iterations") != total or entry.get("overrides") != SETTINGS[CURVE_SETTING]:
            entry = train_and_score(dataset, run_dir, SETTINGS[CURVE_SETTING], total, judge, threads)
            print(f"{total} iterations: {entry}", file=sys.stderr, flush=True)
        entry = with_later_scores(dataset, run_dir, entry, judge)
        point = {"multiple": multiple} | {k: entry[k] for k in ("iterations", "training_seconds", "machine")}
        results["points"].append(point | entry["scores"])
    stem = RESULTS / f"image_learning_curve_{dataset}"
    _write(stem.with_suffix(".json"), results)
    stem.with_suffix(".md").write_text(curve_markdown(results))
    curve_plot(results, stem.with_suffix(".png"))
    budgets = [p["iterations"] for p in results["points"]]
    firsts = {f"{n} iterations": curve_dir / f"{n}-iterations" / "first-case.pt" for n in budgets}
    montage(dataset, {}, RESULTS / f"{stem.name}_montage.png", firsts)
    print(curve_markdown(results))


CURVE_MEASURES = (  # (key, column and axis label); the contrast-to-noise pairs follow
    ("mean_abs_difference", "mean abs. difference to real"),
    ("alignment_dice", "alignment Dice"),
    ("feature_fd", "feature FD"),
    ("drift_ratio", f"drift ({DRIFT_AT} slices / 1)"),
    ("excess_drift_ratio", "excess drift (over the whole volume's)"),
)


def curve_markdown(results: dict[str, Any]) -> str:
    """The learning curve's table: one row per point, the real images and the lookup as reference rows."""
    points, real, lookup = results["points"], results["real"], results["lookup"]
    pairs = list(real["contrast_to_noise"])
    head = ["iterations", "training s"] + [label for _, label in CURVE_MEASURES] + [f"CNR {p}" for p in pairs]
    lines = [
        f"Image stage learning curve on {results['dataset']} small: the setting `{results['setting']}` trained "
        f"for each multiple of {results['iterations']} iterations from the same seed, each run's learning rate "
        "decaying to 0 at its own end; every row renders the 10 real held-out masks and is scored as "
        f"`image_stage_{results['dataset']}.md` scores (images as written, [-1, 1] scale). Contrast-to-noise of the "
        "real images is the target; the lookup's is ∞ (no spread inside a structure).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]

    def cells(row: dict[str, Any]) -> list[str]:
        measures = [_f(row[k], 2 if "drift" in k else 3) if k in row else "–" for k, _ in CURVE_MEASURES]
        return measures + [_f(row["contrast_to_noise"][p], 2) for p in pairs]

    lines.append("| real image | – | " + " | ".join(cells(real)) + " |")
    lines.append("| per-label lookup | – | " + " | ".join(cells(lookup)) + " |")
    for point in points:
        lines.append(f"| {point['iterations']} | {point['training_seconds']} | " + " | ".join(cells(point)) + " |")
    machines = sorted({p["machine"] for p in points})
    lines += ["", "Training machine: " + "; ".join(machines) + "."]
    return "\n".join(lines) + "\n"


def curve_plot(results: dict[str, Any], path: Path) -> None:
    """Each measure against iterations (log scale), the real images' and the lookup's values as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, real, lookup = results["points"], results["real"], results["lookup"]
    pairs = list(real["contrast_to_noise"])
    measured = [(k, label) for k, label in CURVE_MEASURES if any(k in p for p in points)]  # older curves lack some
    panels = measured + [(p, f"CNR {p}") for p in pairs]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.6), squeeze=False)
    x = [p["iterations"] for p in points]

    def value(row: dict[str, Any], key: str) -> float | None:
        return row["contrast_to_noise"].get(key) if key in pairs else row.get(key)

    for ax, (key, label) in zip(axes[0], panels):
        ax.plot(x, [value(p, key) for p in points], "o-", color="C0", label="generator")
        for row, name, colour in ((real, "real image", "C2"), (lookup, "lookup", "C3")):
            if value(row, key) is not None:
                ax.axhline(value(row, key), color=colour, linestyle="--", label=name)
        mirrored = (real.get("feature_fd_of_other_real") or {}).get("mirrored left to right")
        if key == "feature_fd" and mirrored is not None:  # where real images that are not these ten lie
            ax.axhline(mirrored, color="C2", linestyle=":", label="real image mirrored")
            ax.legend(handles=ax.get_lines()[-1:], fontsize=6)
        if key == "excess_drift_ratio":  # 1: no drift; a flat axis, so that rounding does not look like a trend
            ax.axhline(1.0, color="grey", linestyle=":")
            ax.set_ylim(0.8, 1.4)
        ax.set_xscale("log", base=2)
        ax.set_xticks(x, [str(i) for i in x])
        ax.set_title(label, fontsize=8)
        ax.set_xlabel("iterations", fontsize=7)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"image_vid2vid on {results['dataset']} small: measures against training", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def quality_stage(dataset: str, bundle: str, judge: Judge, out: Path):
    """``bundle`` with the quality benchmark's trained models of it and its dataset; ``out``: where it writes."""
    from medgen3d.pipeline.stages import StageBundle

    return StageBundle(
        BUNDLES / bundle,
        QUALITY / dataset / "models" / bundle,
        out,
        overlays=DATASETS[dataset]["overlays"],
        overrides={"dataset_dir": str(judge.data)},
    )


def quality_generator(dataset: str, judge: Judge, out: Path):
    """The quality benchmark's trained image generator (eval mode) and its in-plane size."""
    from medgen3d.engines.checkpoint import load_weights

    parser = quality_stage(dataset, "image_vid2vid", judge, out).workflow(["inference.json"]).parser
    weights = QUALITY / dataset / "models" / "image_vid2vid" / "model.pt"
    return load_weights(parser.get_parsed_content("network"), weights).eval(), tuple(
        parser.get_parsed_content("slice_size")
    )


def pipeline(dataset: str = "brain-mni", threads: int = 2) -> None:
    """Score the :data:`PIPELINE` rows: the quality benchmark's trained generator and refiner on the held-out masks,
    each case refined with the noise of seed ``i`` as :mod:`image_variants` refines. Run it again after the quality
    benchmark retrains either stage."""
    from image_variants import _refine  # the sibling benchmark's refinement of a judge's held-out masks

    torch.set_num_threads(threads)
    contrasts = _check(dataset)["contrasts"]
    judge = Judge(dataset)
    quality = QUALITY / dataset
    models = {bundle: quality / "models" / bundle for bundle in ("image_vid2vid", "sdm_refiner")}
    missing = [str(p) for p in models.values() if not (p / "model.pt").exists() and not (p / "axial").is_dir()]
    if missing:
        raise SystemExit(
            f"run `quality_benchmark.py run --dataset {dataset} --train_only image,refiner` first; {missing}"
        )

    def stage(bundle: str):
        return quality_stage(dataset, bundle, judge, RUNS / dataset / "pipeline" / bundle)

    generator, size = quality_generator(dataset, judge, RUNS / dataset / "pipeline" / "image_vid2vid")
    machine, start = _machine(), time.perf_counter()
    images = generated_images(generator, size, judge)
    generating = time.perf_counter() - start
    refiner = stage("sdm_refiner")
    noise_steps = refiner.workflow(["inference.json"]).parser.get_parsed_content("noise_steps")
    start = time.perf_counter()
    refined = _refine(refiner, models["sdm_refiner"], images, judge, noise_steps)
    refining = time.perf_counter() - start
    timings = json.loads((quality / "timings.json").read_text())
    for name, rendered, seconds, trained in (
        (PIPELINE[0], images, generating, ("image",)),
        (PIPELINE[1], refined, refining, ("image", "refiner")),
    ):
        folder = RUNS / dataset / _folder(name)
        entry = {
            "training_seconds": round(sum(timings[k]["seconds"] for k in trained), 1),
            "machine": machine,
            "seconds_per_volume": round(seconds / len(rendered), 2),
            "scores": judge.score(rendered, contrasts),
        }
        _write(folder / "result.json", entry)
        torch.save(rendered[0].clone(), folder / "first-case.pt")  # for the montage
        print(f"{name}: {entry}", file=sys.stderr, flush=True)


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _write(path: Path, entry: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entry, indent=2) + "\n")


def report(dataset: str = "brain-mni") -> None:
    """Write ``benchmarks/results/image_stage_<dataset>.{json,md,png}`` from the finished rows."""
    _check(dataset)
    base = RUNS / dataset
    rows: dict[str, Any] = {}
    iterations = None
    for name in ("real", "lookup", *SETTINGS, *PIPELINE):
        entry = _read(base / _folder(name) / "result.json")
        if entry is None:
            continue
        rows[name] = entry["scores"] | {k: entry[k] for k in ("training_seconds", "machine") if k in entry}
        if "overrides" in entry:
            rows[name]["overrides"] = entry["overrides"]
            iterations = entry["iterations"]
    stem = RESULTS / f"image_stage_{dataset}"
    if iterations is None:  # no generator row ran here: the committed rows' iteration count
        iterations = (_read(stem.with_suffix(".json")) or {}).get("iterations")
    names = ("real", "lookup", *SETTINGS, *PIPELINE)
    rows = with_earlier_rows(stem.with_suffix(".json"), names, rows, {"iterations": iterations})
    results = {"dataset": dataset, "iterations": iterations, "default": DEFAULT, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(results))
    if any((base / _folder(name) / "first-case.pt").exists() for name in SETTINGS):
        montage(dataset, {n: r for n, r in rows.items() if n not in PIPELINE}, stem.with_suffix(".png"))
    else:  # every generator row is kept from the committed file: so is its montage, which shows them all
        print(f"no generator row ran on this machine: {stem.with_suffix('.png')} kept", file=sys.stderr)
    if all((base / _folder(name) / "first-case.pt").exists() for name in PIPELINE):
        montage(dataset, {n: r for n, r in rows.items() if n in PIPELINE}, RESULTS / f"{stem.name}_pipeline.png")
    print(markdown(results))


def _f(value: float | None, digits: int = 3) -> str:
    return "∞" if value is None else f"{value:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    rows = results["rows"]
    pairs = list(next(iter(rows.values()))["contrast_to_noise"])
    structures = [s for s in next(iter(rows.values()))["structure_means"] if s != "background"]
    lines = [
        f"Image stage on {results['dataset']} small: every row renders the 10 real held-out masks; generator rows "
        f"trained {results['iterations']} iterations from the same seed (the default: `{results['default']}`). "
        "The quality benchmark's rows: its own generator and refiner (the defaults at its budget; training s: the "
        "stages' seconds there). Difference and intensities on the networks' [-1, 1] scale, images as written; "
        "contrast-to-noise ∞ where an image has no spread inside a structure (the lookup).",
        "",
        "| image of the real held-out mask | mean abs. difference to real | alignment Dice | feature FD | "
        + " | ".join(f"CNR {p}" for p in pairs)
        + f" | drift ({DRIFT_AT} slices / 1) | excess drift | alignment on generated masks | training s |",
        "|---|---|---|---|" + "---|" * len(pairs) + "---|---|---|---|",
    ]
    for name, row in rows.items():
        label = {"real": "real image", "lookup": "per-label lookup"}.get(name, f"`{name}`")
        label += f" {EARLIER}" if row.get("earlier_run") else ""
        lines.append(
            f"| {label} | {_f(row['mean_abs_difference'])} | {_f(row['alignment_dice'])} | {_f(row['feature_fd'])} | "
            + " | ".join(_f(row["contrast_to_noise"][p], 2) for p in pairs)
            + f" | {_f(row['drift_ratio'], 2) if 'drift_ratio' in row else '–'} | "
            + f"{_f(row['excess_drift_ratio'], 2) if 'excess_drift_ratio' in row else '–'} | "
            + f"{_f(row['generated_mask_alignment']) if 'generated_mask_alignment' in row else '–'} | "
            + f"{row.get('training_seconds', '–')} |"
        )
    other = rows.get("real", {}).get("feature_fd_of_other_real")
    lines += [
        "",
        f"Drift: the error {DRIFT_AT} slices after the last real slice over the first generated slice's. Excess drift: "
        "the same error over the error at the same slices of the whole volume the generator made from the first "
        "slice on (1: what it feeds back of its own slices costs nothing more than generating without real slices; "
        "drift above 1 at excess 1 is the help the real slices give the first slices, which fades). Alignment on "
        "generated masks: the same segmenter on the row's images of the quality benchmark's generated masks (its 8 "
        "pairs' masks, the images generated again here, unrefined), against those masks; the lookup's is what the "
        "masks allow.",
    ]
    if other:
        described = ", ".join(f"{name} {value:.4f}" for name, value in other.items())
        lines += [
            "",
            f"Feature FD to the real held-out images of the same images altered: {described}. A mirrored image is "
            "as real as the image; an FD far below its value measures how nearly an image copies these ten, not how "
            "real it is.",
        ]
    lines += [
        "",
        "Mean intensity per structure:",
        "",
        "| image | " + " | ".join(structures) + " |",
        "|---|" + "---|" * len(structures),
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(_f(row["structure_means"][s]) for s in structures) + " |")
    drifting = {name: row["drift"] for name, row in rows.items() if "drift" in row}
    if drifting:
        lines += [
            "",
            "Error inside the foreground by slices since the last real slice:",
            "",
            "| setting | " + " | ".join(str(k) for k in range(1, DRIFT_SLICES + 1)) + " |",
            "|---|" + "---|" * DRIFT_SLICES,
        ]
        lines += [f"| {n} | " + " | ".join(f"{e:.3f}" for e in errs) + " |" for n, errs in drifting.items()]
        whole = {n: row["whole_volume_error"] for n, row in rows.items() if "whole_volume_error" in row}
        lines += [
            f"| {n}, {'no real slices' if n == 'lookup' else 'whole volume'} | "
            + " | ".join(f"{e:.3f}" for e in errs)
            + " |"
            for n, errs in whole.items()
        ]
    machines = {row["machine"] for row in rows.values() if "machine" in row}
    lines += ["", "Training machine: " + "; ".join(sorted(machines)) + "." if machines else ""]
    if any(row.get("earlier_run") for row in rows.values()):
        lines += ["", EARLIER_NOTE]
    return "\n".join(lines) + "\n"


def draw_planes(panels: list[tuple[str, np.ndarray]], num_classes: int, planes: tuple[str, ...] = VIEWS):
    """A figure with one column per ``(title, (H, W, D) volume)`` panel and one row per mid plane of ``planes``
    (axial, coronal, sagittal): the panel titled ``mask`` in label colours, the others in grey on [-1, 1]."""
    import matplotlib.pyplot as plt

    from medgen3d.preview import label_colormap

    h, w, d = panels[0][1].shape
    cut = {"axial": lambda a: a[:, :, d // 2], "coronal": lambda a: a[:, w // 2, :], "sagittal": lambda a: a[h // 2]}
    fig, axes = plt.subplots(len(planes), len(panels), figsize=(1.9 * len(panels), 2.1 * len(planes)), squeeze=False)
    for c, (name, volume) in enumerate(panels):
        for r, plane in enumerate(planes):
            ax, cross_section = axes[r, c], cut[plane](volume).T
            if name == "mask":
                ax.imshow(
                    cross_section,
                    cmap=label_colormap(num_classes),
                    vmin=0,
                    vmax=num_classes - 1,
                    origin="lower",
                    interpolation="nearest",
                )
            else:
                ax.imshow(cross_section, cmap="gray", vmin=-1, vmax=1, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(textwrap.fill(name, 30), fontsize=7)  # long setting names on several lines
    for r, plane in enumerate(planes):
        axes[r, 0].set_ylabel(plane, fontsize=8)
    return fig


def montage(dataset: str, rows: dict[str, Any], path: Path, firsts: dict[str, Path] | None = None) -> None:
    """The first held-out case: its mask, then each row's image, in three mid planes, on one grey scale; ``firsts``
    (title -> saved image) instead of the rows' own run folders."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medgen3d.data.dataset import read_dataset
    from medgen3d.metrics.report import load_pairs, lookup_pairs

    spec = read_dataset(QUALITY / dataset / f"{dataset}-small")
    real = load_pairs(spec, ("test",))
    training = load_pairs(spec, ("training",))
    k = len(spec.labels)
    label = real.labels[0]
    panels = [("mask", label), ("real", real.images[0].numpy())]
    panels.append(("lookup", lookup_pairs(training, real, k)[0].images[0].numpy()))
    firsts = firsts if firsts is not None else {name: RUNS / dataset / _folder(name) / "first-case.pt" for name in rows}
    for name, first in firsts.items():
        if first.exists():
            panels.append((name, torch.load(first, weights_only=True).numpy()))
    fig = draw_planes(panels, k, VIEWS)
    fig.suptitle(f"{dataset}: one real held-out mask rendered by each row (grey scale [-1, 1])", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    fire.Fire({"run": run, "curve": curve, "pipeline": pipeline, "report": report})
