"""The mask stage against the real masks: MC-DPM settings at the quality benchmark's mask budget; its learning curve.

Every setting trains mask_mcdpm on an embedded dataset (the quality benchmark's copy, small preset) from the same
seed, samples 8 volumes with the bundle's own sampler, and is scored against the real training masks with the
quality report's anatomy measures per structure (presence rate, volume fraction, connected components, slice
continuity, z-profile correlation), the slice-change rate (foreground voxels whose label changes from one slice to
the next) and the seed agreement gap on windows of the real held-out masks (two samples of a window agree with
each other minus with the real continuation; 0 when converged, see :mod:`medgen3d.metrics.convergence`) and, on
the same windows, the change per step from the last given slice through the new ones, generated and real.

    .venv/bin/python benchmarks/mask_stage.py run [--settings '["a","b"]'] [--iterations 1400]
    .venv/bin/python benchmarks/mask_stage.py report
    .venv/bin/python benchmarks/mask_stage.py curve --dataset brain-mni [--multiples 1,2,4] [--iterations 1400]
        [--sampler preset]
    .venv/bin/python benchmarks/mask_stage.py steps [--setting NAME] [--counts 5,10,20] [--eta 1] [--new_per_window 1]
        [--spacing trailing] [--guidance 0.25]

``run`` keeps each setting under ``benchmarks/runs/mask_stage/<dataset>/<setting>/`` and skips finished ones; an
interrupted training resumes from its checkpoint. ``report`` writes
``benchmarks/results/mask_stage_<dataset>.{json,md}`` and a montage ``.png`` (mid-coronal and mid-sagittal planes of
two samples per setting beside two real masks).
``curve`` trains the shipped defaults once to the largest multiple of ``--iterations``, keeps the EMA weights at each
multiple, scores each, and writes ``benchmarks/results/mask_learning_curve_<dataset>.{json,md,png}`` (each measure
against iterations, the real value as a line, the working-size reference dotted: the real masks resized to the
network's slice size and back, what a perfect model at that size would score) and ``_samples.png`` (two samples per
multiple beside two real masks);
``--start_from`` a finished ``run`` setting equal to the defaults makes that run the first point. ``run`` and
``curve`` score every model with the same sampler (DDIM-20, MONAI's step spacing, no guidance), so their rows
compare training alone; ``curve --sampler preset`` samples the same weights with the preset's own sampler, as the
quality benchmark does (``…_preset_sampler.*``; each point's kept scores name their sampler, and a preset whose
sampler changed is sampled again). ``steps`` samples a finished setting's model with several sampler
step counts, optionally with another step spacing or guidance scale or keeping fewer new slices per window (no
training), and writes
``benchmarks/results/mask_sampling_steps_<dataset>.{json,md,png}``. On the 2-core CPU with bf16 instructions a
brain iteration costs about 0.33 s at 64x80 and 0.42 s at 80x96 (0.9 and 1.3 to 1.6 s in float32; the settings'
training seconds): a setting takes 7 to 13 minutes (20 to 37 in float32), a sweep of ``steps`` 40 s to 1.5 minutes per
sampler (guidance other than 1 doubles it).
"""

from __future__ import annotations

import shutil
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import fire
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from image_stage import _folder, _names, _read, _write  # noqa: E402  (the sibling benchmarks' helpers)
from quality_benchmark import (  # noqa: E402  (the sibling benchmark's paths, build and load)
    BUNDLES,
    EARLIER,
    EARLIER_NOTE,
    RESULTS,
    _build,
    _machine,
    with_earlier_rows,
)

ROOT = Path(__file__).resolve().parents[1]
QUALITY = ROOT / "benchmarks" / "runs" / "quality"
RUNS = ROOT / "benchmarks" / "runs" / "mask_stage"
DATASETS = {"brain-mni": ["brain.json"], "thorax-phantom": ["thorax.json"]}
VOLUMES = 8  # sampled per setting, as the quality benchmark generates
WINDOWS_PER_VOLUME = 4  # windows of each held-out mask for the seed agreement gap

# The first settings each add one change to the one before; from the fixes on, each changes one thing of the 64x80
# fixes (see their comments). The first is the shipped setting before this benchmark.
BEFORE = {
    "image_size": [64, 80],
    "noise_schedule": "ddpm",  # the defaults then, named so that the rows keep their meaning as defaults change
    "beta_schedule": "linear_beta",
    "dice_weighting": "uniform",
    "p_min_known": 0.0,
    "condition_corruption": 0.0,
    "class_weights": None,  # brain.json weights CSF since mask_mcdpm 0.12.0, subcortical GM since 0.12.1
}
NATIVE = BEFORE | {"image_size": None}  # None: the data's own slice size (80 x 96)
FIXES = {"dice_weighting": "low_noise", "p_min_known": 0.75, "condition_corruption": 0.1}
THORAX = BEFORE | FIXES | {"image_size": [64, 64], "learning_rate": 5e-4, "final_lr_fraction": 0.1}
RFLOW = {"noise_schedule": "rflow", "rflow_sample_method": "uniform"}  # rectified flow, steps drawn uniformly
LOGIT_NORMAL = {"rflow_sample_method": "logit-normal"}
SCALED_LINEAR = {"beta_schedule": "scaled_linear_beta"}
RATE = {"learning_rate": 0.001, "final_lr_fraction": 0.0}  # 1e-3 decaying to 0
BRAIN_0_10 = BEFORE | FIXES | SCALED_LINEAR | RATE  # mask_mcdpm 0.10.0's brain preset
CSF_TWICE = {"class_weights": [1.0, 1.0, 1.0, 1.0, 2.0]}  # brain labels: background, cortex, sGM, WM, CSF
CSF_SGM_TWICE = {"class_weights": [1.0, 1.0, 2.0, 1.0, 2.0]}
CSF_TWICE_SGM_HALF_AGAIN = {"class_weights": [1.0, 1.0, 1.5, 1.0, 2.0]}
# thorax labels: background, body, left lung, right lung, heart, trachea, esophagus, spinal cord
THORAX_SMALL_WEIGHTED = {"class_weights": [1.0, 1.0, 1.0, 1.0, 1.5, 3.0, 3.0, 3.0]}
THORAX_TUBES_WEIGHTED = {"class_weights": [1.0, 1.0, 1.0, 1.0, 1.0, 3.0, 3.0, 3.0]}
SETTINGS: dict[str, dict[str, Any]] = {
    "64x80 (before)": BEFORE,
    "80x96": NATIVE,
    "80x96, low-noise Dice": NATIVE | {"dice_weighting": "low_noise"},
    "80x96, low-noise Dice, n=2 mostly, jittered condition": NATIVE | FIXES,
    # the same fixes at the old size: what they bring at the old cost per iteration (80x96 costs about 1.9x)
    "64x80, low-noise Dice, n=2 mostly, jittered condition": BEFORE | FIXES,
    # the paper's noise target, without the structure term that confounded the earlier epsilon comparison
    "80x96, epsilon, no Dice": NATIVE | {"prediction_type": "epsilon", "dice_weight": 0.0},
    # iterations against cost per iteration, at about equal CPU time (ITERATION_FACTORS): the model is under-trained
    # (the learning curve still bends at 4x), so more, cheaper steps may buy more than width or batch
    "64x80, fixes, half width (16/32/32)": BEFORE | FIXES | {"channels": [16, 32, 32]},
    "64x80, fixes, batch 4": BEFORE | FIXES | {"batch_size": 4},
    # velocity makes the x0 estimate x_t itself at low noise (sqrt(a) x_t - sqrt(1 - a) v), so an under-trained
    # network cannot smooth away what little noise is left: more DDIM steps made the x0 model's masks smoother
    "64x80, fixes, v-prediction": BEFORE | FIXES | {"prediction_type": "v_prediction"},
    # rectified flow spends half its training and its sampling steps where the signal outweighs the noise, DDPM's
    # linear betas about a quarter; before the fixes it drew 4x the components of DDIM-20 (mask_mcdpm.md)
    "64x80, fixes, rectified flow": BEFORE | FIXES | RFLOW,
    # the flow's steps drawn logit-normal (mid-path, where a mask's layout is decided, drawn most); the flow at the
    # data's own slice size (1.4x the cost of an iteration with bf16)
    "64x80, fixes, rectified flow, logit-normal steps": BEFORE | FIXES | RFLOW | LOGIT_NORMAL,
    "80x96, fixes, rectified flow": NATIVE | FIXES | RFLOW,
    # DDPM with cosine betas: half its training steps and its DDIM steps where the signal outweighs the noise, as the
    # flow's, on the path whose in-plane layout the quality benchmark kept (the flow's lost laterality on thorax)
    "64x80, fixes, cosine betas": BEFORE | FIXES | {"beta_schedule": "cosine"},
    # between the two: the square-root-spaced betas (median signal-to-noise 0.5 against linear's 0.08, cosine's 1)
    "64x80, fixes, scaled-linear betas": BEFORE | FIXES | {"beta_schedule": "scaled_linear_beta"},
    # the brain preset's curve loses white-matter and CSF volume as it trains: the uniform structure Dice pulled the
    # thin structures harder (CSF nearer its volume before the low-noise weighting)
    "64x80, fixes, scaled-linear betas, uniform Dice": BEFORE
    | FIXES
    | {"beta_schedule": "scaled_linear_beta", "dice_weighting": "uniform"},
    # the image stage's lesson: a larger step decaying to 0 learnt most within a short budget (its FD 0.10 -> 0.013)
    "64x80, fixes, scaled-linear betas, learning rate 1e-3 decaying to 0": BEFORE | FIXES | SCALED_LINEAR | RATE,
    # the same at the data's own slice size, for about the same CPU time (ITERATION_FACTORS): at 64x80 the CSF, the
    # thinnest structure, keeps about half its real volume, and the flow at 80x96 drew more of it
    "80x96, fixes, scaled-linear betas, learning rate 1e-3 decaying to 0": NATIVE | FIXES | SCALED_LINEAR | RATE,
    # a window's slices are channels of one 2D UNet, every new slice read out of the same 32 full-size features:
    # from real given slices the row above changes 0.163, 0.136, 0.110, 0.097 of the labels per step through a
    # window's four new slices with DDIM-5 (real about 0.19 each), so its later slices repeat each other; windows of
    # 4 make 2 at a time (``steps --new_per_window 1`` samples them keeping one)
    "64x80, fixes, scaled-linear betas, learning rate 1e-3 decaying to 0, windows of 4": BRAIN_0_10
    | {"subsequence_length": 4},
    # CSF's voxels counting twice in the regression: CSF keeps about half its real volume at every point of the
    # learning curve, the arg-max of thin bands the network is unsure of; on the windows of 4, then on 0.10.0's preset
    "64x80, fixes, scaled-linear betas, learning rate 1e-3 decaying to 0, windows of 4, CSF weighted 2": BRAIN_0_10
    | {"subsequence_length": 4}
    | CSF_TWICE,
    "64x80, fixes, scaled-linear betas, learning rate 1e-3 decaying to 0, CSF weighted 2": BRAIN_0_10 | CSF_TWICE,
    # sampled with 0.12.0's sampler (trailing DDIM-5, guidance 0.25), CSF weighted 2 comes within 10% of its real volume
    # while subcortical grey matter keeps about half of its: here both thin structures count twice
    "64x80, fixes, scaled-linear betas, learning rate 1e-3 decaying to 0, CSF and subcortical GM weighted 2": BRAIN_0_10
    | CSF_SGM_TWICE,
    # between the two: CSF's volume came with a weight of 2 (0.027, real 0.029), subcortical grey matter's went from
    # 0.005 to 0.013 (real 0.009) between 1 and 2
    "64x80, fixes, scaled-linear betas, learning rate 1e-3 decaying to 0, CSF weighted 2, subcortical GM 1.5": (
        BRAIN_0_10 | CSF_TWICE_SGM_HALF_AGAIN
    ),
    # the deep grey matter comes as one blob across the midline where the real nuclei lie either side of it, and the
    # real-trained segmenter finds little of it (alignment 0.05 on the quality benchmark's pairs): convolutions do not
    # know where in the slice they are, so the network is given the row and column of every pixel
    "64x80, fixes, scaled-linear betas, learning rate 1e-3 decaying to 0, CSF weighted 2, subcortical GM 1.5, "
    "coordinates": BRAIN_0_10
    | CSF_TWICE_SGM_HALF_AGAIN
    | {"coordinates": True},
    # the deep grey matter is still one central blob at the benchmark's budget, found only at 4x its training
    # (lookup alignment 0.11, 0.17, 0.40 at 1x, 2x, 4x): the brain labels have no sides, so mirrored subsequences
    # are as real as the originals and show the network each nucleus on both sides of the midline
    "64x80, fixes, scaled-linear betas, learning rate 1e-3 decaying to 0, CSF weighted 2, subcortical GM 1.5, "
    "left-right flip": BRAIN_0_10
    | CSF_TWICE_SGM_HALF_AGAIN
    | {"flip_prob": 0.5},
    # both again from another training seed (sampled with the same seed): is the flip's small gain more than chance?
    "64x80, fixes, scaled-linear betas, learning rate 1e-3 decaying to 0, CSF weighted 2, subcortical GM 1.5, "
    "training seed 1": BRAIN_0_10
    | CSF_TWICE_SGM_HALF_AGAIN
    | {"seed": 1},
    "64x80, fixes, scaled-linear betas, learning rate 1e-3 decaying to 0, CSF weighted 2, subcortical GM 1.5, "
    "left-right flip, training seed 1": BRAIN_0_10
    | CSF_TWICE_SGM_HALF_AGAIN
    | {"flip_prob": 0.5, "seed": 1},
    # the image stage learnt most in a short budget from a larger step decaying to 0: twice the preset's step
    "64x80, fixes, scaled-linear betas, learning rate 2e-3 decaying to 0, CSF weighted 2, "
    "subcortical GM 1.5": BRAIN_0_10
    | CSF_TWICE_SGM_HALF_AGAIN
    | {"learning_rate": 0.002},
    # thorax-phantom (--dataset thorax-phantom): its preset of 0.9.0, and the brain preset's learning rate on it
    "thorax 64x64, fixes": THORAX,
    "thorax 64x64, fixes, learning rate 1e-3 decaying to 0": THORAX | RATE,
    # the thorax's tubes are about 0.001 of the volume each (the heart 0.010): with 0.12.0's sampler the esophagus
    # and spinal cord appear in 5 of 8 volumes; as CSF's weight brought it to its real volume on brain, their voxels
    # count three times (the heart's one and a half)
    "thorax 64x64, fixes, heart 1.5, trachea, esophagus and spinal cord weighted 3": THORAX | THORAX_SMALL_WEIGHTED,
    # with the heart's 1.5 every structure came in 7 or 8 of 8 volumes, the heart at 1.7 times its real volume: the
    # tubes alone weighted
    "thorax 64x64, fixes, trachea, esophagus and spinal cord weighted 3": THORAX | THORAX_TUBES_WEIGHTED,
}
# Settings whose iterations are this multiple of ``--iterations``, for about the same CPU time as the defaults: a
# training step of the half-width network cost 1.56 s against 4.20 s (batch 8, 64x80, one thread, 2.7x; the
# machine shared with another job), and half the batch about half as much. ``run`` records the seconds each took.
ITERATION_FACTORS = {
    "64x80, fixes, half width (16/32/32)": 2.5,
    "64x80, fixes, batch 4": 2.0,
    # with bf16 an iteration costs 0.33 s at 64x80 and 0.42 s at 80x96 (the settings' training seconds)
    "80x96, fixes, scaled-linear betas, learning rate 1e-3 decaying to 0": 0.8,
}
# what inference.json must also know of a setting, and the sampler settings a scoring may change
NETWORK_KEYS = (
    "image_size",
    "prediction_type",
    "noise_schedule",
    "beta_schedule",
    "position_mode",
    "coordinates",
    "channels",
    "subsequence_length",
)
SAMPLING_KEYS = ("num_inference_steps", "eta", "new_slices_per_window", "timestep_spacing", "guidance_scale")


def _data(dataset: str) -> Path:
    if dataset not in DATASETS:
        raise SystemExit(f"--dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
    data = QUALITY / dataset / f"{dataset}-small"
    if not (data / "dataset.json").exists():
        _build(dataset, data)
    return data


def _stage(dataset: str, run: Path):
    from medgen3d.pipeline.stages import StageBundle

    return StageBundle(
        BUNDLES / "mask_mcdpm",
        run / "models",
        run / "eval",
        overlays=DATASETS[dataset],
        overrides={"dataset_dir": str(_data(dataset))},
    )


def _masks(data: Path, split: str) -> list[np.ndarray]:
    """The label maps of one split of the dataset in ``data``."""
    from medgen3d.data.dataset import read_dataset

    spec = read_dataset(data)
    return [spec.load_case(c)[1].array.astype(np.int64) for c in spec.split(split)]


def structure_measures(synthetic: list[np.ndarray], real: list[np.ndarray], names: list[str]) -> dict[str, Any]:
    """Per structure: presence rate, fraction, components, continuity (synthetic and real), z-profile r."""
    from medgen3d.metrics import anatomy

    k = len(names) + 1
    s, r = anatomy.summarise(synthetic, k), anatomy.summarise(real, k)
    correlation = anatomy.z_profile_correlation(synthetic, real, k)
    present = s.presence.mean(0)
    return {
        name: {
            "presence_rate": float(present[i]),
            "presence_rate_real": float(r.presence.mean(0)[i]),
            "fraction_real": float(r.fractions[:, i + 1].mean()),
            "fraction_synthetic": float(s.fractions[:, i + 1].mean()),
            "components_real": float(r.components[:, i].mean()),
            "components_synthetic": float(s.components[:, i].mean()),
            "continuity_real": float(np.nanmean(r.continuity[:, i])),
            "continuity_synthetic": float(np.nanmean(s.continuity[:, i])) if present[i] > 0 else None,
            "z_profile_correlation": None if np.isnan(correlation[i]) else float(correlation[i]),
        }
        for i, name in enumerate(names)
    }


# The sampler every row is scored with: DDIM-20 for DDPM networks (mask_mcdpm's default until 0.8.0, when every row
# of the table was scored) and the flow's 10 steps, so that a rerun row compares with the others; ``steps`` sweeps it
SCORING_STEPS = {"ddpm": 20, "rflow": 10}
# the sampler every trained setting is scored with, whatever the bundle's defaults: the rows compare training
# settings, so they keep the sampler of the table's first rows (mask_mcdpm before 0.12.0); `steps` varies it
SCORING_SAMPLER = {"guidance_scale": 1.0, "timestep_spacing": "leading"}
# what ``curve --sampler`` may name, and the suffix of its files
CURVE_SAMPLERS = {"scoring": "", "preset": "_preset_sampler"}


def score(
    dataset: str, run: Path, checkpoint: Path, overrides: dict[str, Any], out: Path, pinned: bool = True
) -> dict[str, Any]:
    """Sample :data:`VOLUMES` masks from ``checkpoint`` and measure them; the seed gap on the held-out masks.
    ``pinned``: with the scoring sampler (:data:`SCORING_STEPS`, :data:`SCORING_SAMPLER`), else with the preset's
    own (``inference.json`` and the dataset's preset)."""
    sampling = _sampling(overrides, pinned)
    return score_stage(_stage(dataset, run), _data(dataset), checkpoint, overrides, out, sampling_overrides=sampling)


def _sampling(overrides: dict[str, Any], pinned: bool) -> dict[str, Any]:
    """The sampler overrides :func:`score` samples ``overrides``' model with (see its ``pinned``)."""
    steps = SCORING_STEPS[overrides.get("noise_schedule", "ddpm")]
    sampling = {"num_inference_steps": steps, **SCORING_SAMPLER} if pinned else {}
    return sampling | {k: v for k, v in overrides.items() if k in SAMPLING_KEYS}


def scored_with(record: dict[str, Any] | None, sampler: dict[str, Any], pinned: bool) -> bool:
    """Whether a kept score ``record`` was drawn with ``sampler`` (:func:`sampler_settings`). A preset's sampler
    changes with its config, so its scores count only for the sampler they name; the pinned scoring sampler changes
    only with this file, so its records from before they named it count as its own."""
    if record is None:
        return False
    return record.get("sampler", sampler if pinned else None) == sampler


def sampler_settings(parser) -> dict[str, Any]:
    """The sampler an ``inference.json`` parser samples with, in the form a score record keeps it."""
    return {k: _value(parser.get_parsed_content(k)) for k in SAMPLING_KEYS if k in parser}


def score_stage(
    stage,
    data: Path,
    checkpoint: Path,
    overrides: dict[str, Any],
    out: Path,
    windows: int = WINDOWS_PER_VOLUME,
    sampling_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """:func:`score` for any mask stage (a ``StageBundle``) and real dataset ``data``: :data:`VOLUMES` samples
    against the training masks, ``windows`` seed-gap windows per held-out (test) mask; ``sampling_overrides``
    (:data:`SAMPLING_KEYS`) change the sampler for both."""
    from medgen3d.data.io import load_nifti
    from medgen3d.engines.checkpoint import load_weights
    from medgen3d.metrics.convergence import SeedAgreement, step_change_rates

    sampling_overrides = sampling_overrides or {}
    if not set(sampling_overrides) <= set(SAMPLING_KEYS):
        raise ValueError(f"sampling_overrides may set {SAMPLING_KEYS}, got {sorted(sampling_overrides)}")
    network_overrides = {k: v for k, v in overrides.items() if k in NETWORK_KEYS} | sampling_overrides
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    workflow = stage.run(
        ["inference.json"],
        dataset_dir=str(data),
        checkpoint=str(checkpoint),
        synthetic_dir=str(out),
        num_cases=VOLUMES,
        batch_size=VOLUMES,
        **network_overrides,
    )
    seconds = time.perf_counter() - start
    parser = workflow.parser
    synthetic = [load_nifti(p).array.astype(np.int64) for p in sorted((out / "labels").glob("*.nii.gz"))]
    real = _masks(data, "training")
    labels = parser.get_parsed_content("labels")
    names = [labels[k] for k in sorted(labels, key=int) if int(k) != 0]
    network = load_weights(parser.get_parsed_content("network"), checkpoint).eval()
    agreement = SeedAgreement(
        network,
        parser.get_parsed_content("sampler"),
        parser.get_parsed_content("slice_size"),
        parser.get_parsed_content("num_condition_slices"),
        len(labels),
        windows,
    )
    held_out = agreement.windows(_masks(data, "test"))
    structures = structure_measures(synthetic, real, names)
    for name, gap in zip(names, agreement.gaps(held_out)):
        structures[name]["seed_agreement_gap"] = None if np.isnan(gap) else float(gap)
    steps = {
        kind: [None if np.isnan(r) else round(float(r), 4) for r in step_change_rates(held_out.last_given, new)]
        for kind, new in (("synthetic", held_out.first), ("real", held_out.truth))
    }
    return {
        "volumes": len(synthetic),
        "sampling_seconds": round(seconds, 1),
        "slice_size": list(parser.get_parsed_content("slice_size")),
        "sampler": sampler_settings(parser),
        **volume_measures(synthetic, real),
        "window_step_change": steps,
        "structures": structures,
    }


def volume_measures(synthetic: list[np.ndarray], real: list[np.ndarray]) -> dict[str, dict[str, float]]:
    """The whole-volume measures, synthetic and real: the slice-change rate, the outline pieces per slice and the
    specks among them (pieces of at most 4 voxels)."""
    from medgen3d.metrics.anatomy import outline_pieces, outline_specks, slice_change_rate

    measures = {
        "slice_change_rate": slice_change_rate,
        "outline_pieces": outline_pieces,
        "outline_specks": outline_specks,
    }
    return {
        key: {
            "synthetic": float(np.nanmean([f(v) for v in synthetic])),
            "real": float(np.nanmean([f(v) for v in real])),
        }
        for key, f in measures.items()
    }


OUTLINE_MEASURES = ("outline_pieces", "outline_specks")  # measured after the first scorings: filled in from samples


def _with_outline(dataset: str, entry: dict[str, Any], samples: Path) -> dict[str, Any]:
    """``entry`` with the outline measures (:data:`OUTLINE_MEASURES`), computed from its samples on disk when its
    scoring predates them."""
    from medgen3d.data.io import load_nifti

    files = sorted((samples / "labels").glob("*.nii.gz"))
    if all(k in entry["scores"] for k in OUTLINE_MEASURES) or not files:
        return entry
    synthetic = [load_nifti(f).array.astype(np.int64) for f in files]
    measures = volume_measures(synthetic, _masks(_data(dataset), "training"))
    return entry | {"scores": entry["scores"] | {k: measures[k] for k in OUTLINE_MEASURES}}


_JUDGES: dict[str, Any] = {}  # per dataset: the quality benchmark's segmenter, loaded once


def lookup_alignment(dataset: str, synthetic: list[np.ndarray]) -> dict[str, Any] | None:
    """How much of the generated anatomy a real-trained segmenter recognises: the masks rendered by the per-label
    lookup (every structure at its real mean intensity) and segmented by the quality benchmark's segmenter, Dice per
    structure against the masks (``{"mean": ..., "structures": {name: ...}}``, the mean over the structures present).

    The same figure as the quality report's ``lookup_synthetic`` alignment: what these masks allow an image stage (on
    real masks the lookup aligns better than the real images). None where the quality benchmark's segmenter has not
    been trained here.
    """
    import image_stage

    if not (QUALITY / dataset / "models" / "segmenter" / "model.pt").exists():
        return None
    if dataset not in _JUDGES:
        _JUDGES[dataset] = image_stage.Judge(dataset)
    return image_stage.lookup_alignment(_JUDGES[dataset], synthetic)


def _with_alignment(dataset: str, scores: dict[str, Any], samples: Path) -> dict[str, Any]:
    """``scores`` with :func:`lookup_alignment` of the samples on disk, when it is missing and can be measured."""
    from medgen3d.data.io import load_nifti

    files = sorted((samples / "labels").glob("*.nii.gz"))
    if "lookup_alignment" in scores or not files:
        return scores
    measured = lookup_alignment(dataset, [load_nifti(f).array.astype(np.int64) for f in files])
    return scores if measured is None else scores | {"lookup_alignment": measured}


def _checkpoint_iteration(path: Path) -> int:
    """The iteration a training checkpoint holds (0 when there is none): where an interrupted training resumes."""
    if not path.is_file():
        return 0
    return int(torch.load(path, map_location="cpu", weights_only=True)["trainer"]["iteration"])


def run(
    dataset: str = "brain-mni", settings: tuple[str, ...] = tuple(SETTINGS), iterations: int = 1400, threads: int = 2
) -> None:
    """Train each setting for ``iterations`` (times its :data:`ITERATION_FACTORS`; same seed), sample, score."""
    torch.set_num_threads(threads)
    for name in _names(settings, SETTINGS):
        run_dir = RUNS / dataset / _folder(name)
        record = run_dir / "result.json"
        steps = round(iterations * ITERATION_FACTORS.get(name, 1.0))
        if (_read(record) or {}).get("iterations") == steps:
            continue
        overrides = SETTINGS[name]
        resumed = _checkpoint_iteration(run_dir / "models" / "checkpoint.pt")
        machine, start = _machine(), time.perf_counter()
        _stage(dataset, run_dir).run(["train.json"], max_iterations=steps, val_interval=steps, **overrides)
        seconds = time.perf_counter() - start
        scores = score(dataset, run_dir, run_dir / "models" / "model.pt", overrides, run_dir / "eval" / "samples")
        entry = {"iterations": steps, "training_seconds": round(seconds, 1), "threads": threads}
        if resumed:  # the seconds are those of the iterations after it; the table marks them
            entry["resumed_from_iteration"] = resumed
        _write(record, entry | {"machine": machine, "overrides": overrides, "scores": scores})
        print(f"{name}: {entry} {scores['slice_change_rate']}", file=sys.stderr, flush=True)


def _seed_curve(dataset: str, setting: str, iterations: int, run_dir: Path, parser) -> None:
    """Start the curve from the finished ``run`` of ``setting`` at ``iterations``: its training checkpoint (the
    curve resumes from it), its EMA weights as the first point and that point's scores. The later points continue
    that training: the cosine learning-rate schedule, which had decayed over the first point's iterations, resumes
    on the curve's longer horizon (at 1x of 4x, about 0.9 of the peak rate), so they are a run continued, not fresh
    runs of 2x and 4x. ``parser`` holds the curve's training config, against which the setting is checked."""
    if setting not in SETTINGS:
        raise SystemExit(f"unknown setting {setting!r}; known: {list(SETTINGS)}")
    source = RUNS / dataset / _folder(setting)
    result = _read(source / "result.json") or {}
    if result.get("iterations") != iterations:
        raise SystemExit(f"{source}: no finished run of {iterations} iterations to start the curve from")
    unset = {k: v for k, v in result["overrides"].items() if _value(parser.get_parsed_content(k)) != v}
    if unset:
        raise SystemExit(f"{setting!r} differs from the shipped defaults in {unset}; the curve trains the defaults")
    (run_dir / "models").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "models" / "checkpoint.pt", run_dir / "models" / "checkpoint.pt")
    shutil.copyfile(source / "models" / "model.pt", run_dir / "models" / f"ema-{iterations}.pt")
    _write(run_dir / f"score-{iterations}.json", result["scores"])
    seeded = {"setting": setting, "iterations": iterations, "seconds": result["training_seconds"]}
    _write(run_dir / "seeded.json", seeded)


def _value(config: Any) -> Any:
    """A parsed config value in the form a result file records it (sequences as lists)."""
    return list(config) if isinstance(config, (tuple, list)) else config


def curve(
    dataset: str = "brain-mni",
    multiples: tuple[int, ...] = (1, 2, 4),
    iterations: int = 1400,
    threads: int = 2,
    start_from: str | None = None,
    sampler: str = "scoring",
) -> None:
    """Train the shipped defaults to ``max(multiples) * iterations``, keeping the EMA weights at every multiple,
    then score each; writes ``results/mask_learning_curve_<dataset>.{json,png}``. ``start_from`` names a finished
    ``run`` setting equal to the defaults that stands for the first multiple (see :func:`_seed_curve`).
    ``sampler``: ``"scoring"`` samples every point as ``run`` scores its settings; ``"preset"`` with the preset's
    own sampler, what the quality benchmark and users get, into ``mask_learning_curve_<dataset>_preset_sampler.*``
    (the weights are the same: a second call after the first only samples and scores)."""
    from ignite.engine import Events

    if sampler not in CURVE_SAMPLERS:
        raise SystemExit(f"--sampler must be one of {list(CURVE_SAMPLERS)}, got {sampler!r}")
    torch.set_num_threads(threads)
    multiples = (multiples,) if isinstance(multiples, int) else tuple(sorted(multiples))
    run_dir = RUNS / dataset / "learning-curve"
    total = iterations * multiples[-1]
    marks = {iterations * m for m in multiples}
    saved = {m: run_dir / "models" / f"ema-{m}.pt" for m in marks}
    started = (_read(run_dir / "seeded.json") or {}).get("setting")
    if start_from is not None and started not in (None, start_from):
        # its weights are another preset's: continuing or scoring them would be mislabelled as this one's curve
        raise SystemExit(f"{run_dir}: started from {started!r}, not {start_from!r}; remove it to start again")
    if not all(p.exists() for p in saved.values()):
        workflow = _stage(dataset, run_dir).workflow(["train.json"], max_iterations=total, val_interval=iterations)
        if start_from is not None and not (run_dir / "models" / "checkpoint.pt").exists():
            _seed_curve(dataset, start_from, iterations * multiples[0], run_dir, workflow.parser)
        workflow.initialize()
        trainer, ema = workflow.parser.get_parsed_content("train#trainer"), workflow.parser.get_parsed_content("ema")

        reached: dict[str, float] = {}  # iteration -> seconds since this training started

        def keep(engine) -> None:
            if engine.state.iteration in marks and not saved[engine.state.iteration].exists():
                torch.save(ema.ema_model.state_dict(), saved[engine.state.iteration])
                reached[str(engine.state.iteration)] = round(time.perf_counter() - start, 1)

        trainer.add_event_handler(Events.ITERATION_COMPLETED, keep)
        resumed = _checkpoint_iteration(run_dir / "models" / "checkpoint.pt")
        start, machine = time.perf_counter(), _machine()
        workflow.run()
        workflow.finalize()
        record = {"seconds": round(time.perf_counter() - start, 1), "machine": machine, "seconds_at": reached}
        if resumed:  # an interrupted run: its seconds count the iterations after this one only
            record["resumed_from_iteration"] = resumed
        _write(run_dir / "training.json", record)
    points, samples = [], {}
    seeded = _read(run_dir / "seeded.json") or {}
    suffix, pinned = CURVE_SAMPLERS[sampler], sampler == "scoring"
    inference = _stage(dataset, run_dir).workflow(["inference.json"], **_sampling({}, pinned)).parser
    expected = sampler_settings(inference)
    for mark in sorted(marks):
        record = run_dir / f"score-{mark}{suffix}.json"
        samples[f"{mark} iterations"] = run_dir / "eval" / f"samples-{mark}{suffix}"
        # the first point's scores and samples are those of the run it came from, which used the scoring sampler
        if seeded.get("iterations") == mark and pinned:
            samples[f"{mark} iterations"] = RUNS / dataset / _folder(seeded["setting"]) / "eval" / "samples"
        if not scored_with(_read(record), expected, pinned):
            _write(record, score(dataset, run_dir, saved[mark], {}, samples[f"{mark} iterations"], pinned))
        kept = _read(record)
        filled = _with_outline(dataset, {"scores": kept}, samples[f"{mark} iterations"])["scores"]
        filled = _with_alignment(dataset, filled, samples[f"{mark} iterations"])
        if filled is not kept:  # the measures computed from the samples, kept with the point's record
            _write(record, filled)
        points.append({"iterations": mark, **filled})
    training = _read(run_dir / "training.json") or {}
    if (run_dir / "seeded.json").exists():  # the first point's training ran as a ``run`` setting
        training["first_point_from"] = _read(run_dir / "seeded.json")
    results = {"dataset": dataset, "budget": iterations, "sampler": sampler, "training": training, "points": points}
    results["working_size"] = working_size_reference(dataset, tuple(inference.get_parsed_content("slice_size")))
    stem = f"mask_learning_curve_{dataset}{suffix}"
    _write(RESULTS / f"{stem}.json", results)
    (RESULTS / f"{stem}.md").write_text(_curve_markdown(results))
    _curve_plot(results, RESULTS / f"{stem}.png")
    montage(dataset, samples, RESULTS / f"{stem}_samples.png", "learning curve")


def resized_and_back(mask: np.ndarray, size: tuple[int, int], num_classes: int) -> np.ndarray:
    """``(H, W, D)`` label map -> the same map with every slice resized to ``size`` and back to ``(H, W)`` by
    :func:`~medgen3d.transforms.subsequence.resize_label_slices`, as the mask stage's training data and its samples
    are resized."""
    from medgen3d.transforms.subsequence import resize_label_slices

    slices = torch.from_numpy(mask).permute(2, 0, 1)  # (D, H, W): in-plane resizing, depth kept
    back = resize_label_slices(resize_label_slices(slices, size, num_classes), tuple(slices.shape[1:]), num_classes)
    return back.permute(1, 2, 0).numpy()


def working_size_reference(dataset: str, size: tuple[int, int]) -> dict[str, Any]:
    """The real training masks resized to the network's slice ``size`` and back to theirs, as training and generation
    resize (:func:`~medgen3d.transforms.subsequence.resize_label_slices`), measured as if they were samples: what a
    model that learnt the real masks perfectly at that size would score, the ceiling of the learning curve."""
    from medgen3d.data.dataset import read_dataset

    real = _masks(_data(dataset), "training")
    labels = read_dataset(_data(dataset)).labels  # value -> name, background 0
    k, names = len(labels), [labels[v] for v in sorted(labels) if v != 0]
    resized = [resized_and_back(m, size, k) for m in real]
    measures = volume_measures(resized, real)
    return {"slice_size": list(size), **measures, "structures": structure_measures(resized, real, names)}


def _curve_markdown(results: dict[str, Any]) -> str:
    """The curve's points as :func:`markdown`'s table; training seconds where the run recorded them (cumulative,
    the first point's own run included)."""
    training = results["training"]
    first = training.get("first_point_from") or {}
    offset = first.get("seconds", 0.0)
    seconds = {int(k): round(offset + v, 1) for k, v in (training.get("seconds_at") or {}).items()}
    if first:
        seconds[first["iterations"]] = offset
    if "seconds" in training and results["points"]:
        seconds.setdefault(results["points"][-1]["iterations"], round(offset + training["seconds"], 1))
    rows = {
        f"defaults, {p['iterations']} iterations": {
            "iterations": p["iterations"],
            "training_seconds": seconds.get(p["iterations"], "–"),
            "machine": training.get("machine", "not recorded"),
            "scores": p,
        }
        for p in results["points"]
    }
    reference = results.get("working_size")
    if reference:  # curves written before it was measured have none
        h, w = reference["slice_size"]
        entry = {"iterations": "–", "training_seconds": "–", "scores": reference}
        rows = {f"real masks at {h}x{w} and back": entry} | rows
    text = markdown({"dataset": results["dataset"], "volumes": VOLUMES, "rows": rows})
    if reference:
        text += (
            f"\nThe row `real masks at {h}x{w} and back`: the real training masks resized to the network's slice size "
            "and back, as training and generation resize them, measured as samples are: what a model that learnt the "
            "real masks perfectly at that size would score.\n"
        )
    if results.get("sampler") == "preset":  # curves written before the option were all sampled for scoring
        return "Sampled with the preset's own sampler (its inference settings), as the quality benchmark does. " + text
    return text


CURVE_MEASURES = {
    "fraction_synthetic": ("volume fraction", "fraction_real"),
    "components_synthetic": ("components", "components_real"),
    "continuity_synthetic": ("slice continuity", "continuity_real"),
    "seed_agreement_gap": ("seed agreement gap", None),
}


def _curve_plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, reference = results["points"], results.get("working_size")
    x = [p["iterations"] for p in points]
    names = list(points[0]["structures"])
    fig, axes = plt.subplots(1, len(CURVE_MEASURES) + 1, figsize=(3.4 * (len(CURVE_MEASURES) + 1), 3.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, (title, real_key)) in zip(axes, CURVE_MEASURES.items()):
        for i, name in enumerate(names):
            values = [p["structures"][name][key] for p in points]
            ax.plot(x, [np.nan if v is None else v for v in values], "o-", color=colours[i], label=name)
            if real_key is not None:
                ax.axhline(points[0]["structures"][name][real_key], color=colours[i], ls="--", lw=0.8)
                if reference:
                    ax.axhline(reference["structures"][name][key], color=colours[i], ls=":", lw=1.0)
            elif i == 0:
                ax.axhline(0.0, color="k", ls="--", lw=0.8)
        if key == "components_synthetic":  # real CSF has thousands, the other structures tens to hundreds
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iterations", fontsize=8)
    rate = axes[-1]
    rate.plot(x, [p["slice_change_rate"]["synthetic"] for p in points], "o-", color="k")
    rate.axhline(points[0]["slice_change_rate"]["real"], color="k", ls="--", lw=0.8)
    if reference:
        rate.axhline(reference["slice_change_rate"]["synthetic"], color="k", ls=":", lw=1.0)
    rate.set_title("slice-change rate", fontsize=9)
    rate.set_xlabel("iterations", fontsize=8)
    axes[0].legend(fontsize=7)
    dotted = f"; dotted: real at {'x'.join(map(str, reference['slice_size']))} and back" if reference else ""
    fig.suptitle(f"mask_mcdpm on {results['dataset']}: measures against iterations (dashed: real{dotted})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def report(dataset: str = "brain-mni") -> None:
    """Write ``benchmarks/results/mask_stage_<dataset>.{json,md,png}`` from the finished settings."""
    rows = {}
    for name in SETTINGS:
        path = RUNS / dataset / _folder(name) / "result.json"
        entry = _read(path)
        if entry is not None:
            rows[name] = _with_outline(dataset, entry, path.parent / "eval" / "samples")
            scores = _with_alignment(dataset, rows[name]["scores"], path.parent / "eval" / "samples")
            rows[name] = rows[name] | {"scores": scores}
            if rows[name] is not entry:  # keep the measure computed from the samples with the run's record
                _write(path, rows[name])
    if not rows:
        raise SystemExit(f"no finished setting under {RUNS / dataset}; run `mask_stage.py run` first")
    stem = RESULTS / f"mask_stage_{dataset}"
    rows = with_earlier_rows(stem.with_suffix(".json"), tuple(SETTINGS), rows, {"volumes": VOLUMES})
    results = {"dataset": dataset, "volumes": VOLUMES, "rows": rows}
    _write(stem.with_suffix(".json"), results)
    stem.with_suffix(".md").write_text(markdown(results))
    here = [name for name, entry in rows.items() if not entry.get("earlier_run")]  # the montage needs their samples
    samples = {name: RUNS / dataset / _folder(name) / "eval" / "samples" for name in here}
    montage(dataset, samples, stem.with_suffix(".png"))
    print(markdown(results))


def _f(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _outline(scores: dict[str, Any], which: str) -> str:
    """``pieces (specks)`` per slice of ``which`` (``"synthetic"`` or ``"real"``), ``n/a`` for a measure scored
    before it."""
    pieces, specks = (scores.get(k, {}).get(which) for k in OUTLINE_MEASURES)
    return f"{_f(pieces)} ({_f(specks)})"


def _real_outline(rows: dict[str, Any]) -> str:
    """The real masks' outline pieces and specks, from the first row that has both measures."""
    known = [e["scores"] for e in rows.values() if all(k in e["scores"] for k in OUTLINE_MEASURES)]
    known = known or [e["scores"] for e in rows.values() if "outline_pieces" in e["scores"]]
    return _outline(known[0], "real") if known else "n/a"


def _steps(rates: list[float | None] | None) -> str:
    """A window's change per step (:func:`~medgen3d.metrics.convergence.step_change_rates`), ``n/a`` before it."""
    return ", ".join(_f(r, 3) for r in rates) if rates else "n/a"


def _real_steps(rows: dict[str, Any]) -> str:
    """The real continuations' change per step, from the row with the longest windows that has the measure."""
    known = [e["scores"]["window_step_change"]["real"] for e in rows.values() if "window_step_change" in e["scores"]]
    return _steps(max(known, key=len)) if known else "n/a"


def markdown(results: dict[str, Any]) -> str:
    rows = results["rows"]
    first = next(iter(rows.values()))["scores"]
    names = list(first["structures"])
    lines = [
        f"Mask stage on {results['dataset']} small: {results['volumes']} volumes per setting against the real "
        "training masks; seed agreement gap on windows of the real held-out masks. Each structure cell: present in "
        "(fraction of volumes) / volume fraction / components / slice continuity / z-profile r / seed gap. Outline "
        "pieces: separate pieces of foreground per slice, in brackets the specks among them (pieces of at most 4 "
        "voxels; n/a: scored before the measure, samples not on this machine). Change per window step: the "
        "slice-change rate from the last given slice to the first new one, then from each new slice to the next, "
        "over windows of the held-out masks started from real slices (n/a: scored before the measure). Lookup "
        "alignment: the masks with every structure at its real mean intensity, segmented "
        "by the quality benchmark's real-trained segmenter, Dice against the masks (its mean over the structures; the "
        "quality report's `lookup_synthetic`, what these masks allow an image stage; n/a: samples not on this "
        "machine).",
        "",
        "| setting | iterations | training s | slice-change rate | outline pieces (specks) per slice | "
        "change per window step | lookup alignment | "
        + " | ".join(names)
        + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(names),
    ]
    real = first["structures"]
    lines.append(
        f"| real | – | – | {_f(first['slice_change_rate']['real'], 3)} | {_real_outline(rows)} | {_real_steps(rows)} | "
        "– | "
        + " | ".join(
            f"{_f(real[n]['presence_rate_real'])} / {_f(real[n]['fraction_real'], 3)} / "
            f"{real[n]['components_real']:.0f} / {_f(real[n]['continuity_real'])} / – / 0"
            for n in names
        )
        + " |"
    )
    for name, entry in rows.items():
        s = entry["scores"]
        cells = [
            f"{_f(m['presence_rate'])} / {_f(m['fraction_synthetic'], 3)} / {m['components_synthetic']:.1f} / "
            f"{_f(m['continuity_synthetic'])} / {_f(m['z_profile_correlation'])} / {_f(m.get('seed_agreement_gap'))}"
            for m in s["structures"].values()
        ]
        resumed = entry.get("resumed_from_iteration")
        seconds = f"{entry['training_seconds']} (from iteration {resumed})" if resumed else entry["training_seconds"]
        earlier = f" {EARLIER}" if entry.get("earlier_run") else ""
        lines.append(
            f"| `{name}`{earlier} | {entry['iterations']} | {seconds} | "
            f"{_f(s['slice_change_rate']['synthetic'], 3)} | {_outline(s, 'synthetic')} | "
            f"{_steps(s.get('window_step_change', {}).get('synthetic'))} | "
            f"{_f(s.get('lookup_alignment', {}).get('mean'), 3)} | " + " | ".join(cells) + " |"
        )
    machines = sorted({entry["machine"] for entry in rows.values() if "machine" in entry})  # reference rows: none
    lines += ["", "Training machine: " + "; ".join(machines) + "."]
    if any(entry.get("earlier_run") for entry in rows.values()):
        lines += ["", EARLIER_NOTE]
    return "\n".join(lines) + "\n"


def montage(dataset: str, samples: dict[str, Path], path: Path, what: str = "settings") -> None:
    """Mid-coronal and mid-sagittal planes: two real masks, then two samples of each entry of ``samples`` (title ->
    the folder a scoring wrote its samples to)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medgen3d.data.io import load_nifti
    from medgen3d.preview import label_colormap

    panels = [("real", v) for v in _masks(_data(dataset), "training")[:2]]
    for name, folder in samples.items():
        files = sorted((folder / "labels").glob("*.nii.gz"))[:2]
        panels += [(name, load_nifti(f).array) for f in files]
    k = int(max(v.max() for _, v in panels)) + 1
    cmap = label_colormap(k)
    fig, axes = plt.subplots(2, len(panels), figsize=(1.7 * len(panels), 4.8), squeeze=False)
    for col, (title, volume) in enumerate(panels):
        h, w, _ = volume.shape
        for row, plane in enumerate((volume[:, w // 2, :], volume[h // 2, :, :])):
            axes[row, col].imshow(plane.T, cmap=cmap, vmin=0, vmax=k - 1, origin="lower", interpolation="nearest")
            axes[row, col].set_axis_off()
        # setting names are long: wrapped onto a few lines above each pair of samples
        axes[0, col].set_title(textwrap.fill(title, 22), fontsize=6)
    fig.suptitle(f"mask_mcdpm {what} on {dataset}: coronal (top) and sagittal (bottom) mid planes", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def steps(
    dataset: str = "brain-mni",
    setting: str = "64x80, low-noise Dice, n=2 mostly, jittered condition",
    counts: tuple[int, ...] = (5, 10, 20),
    eta: float = 0.0,
    threads: int = 2,
    new_per_window: int | None = None,
    spacing: str = "leading",
    guidance: float = 1.0,
) -> None:
    """Sample one finished ``run`` setting's model with each number of sampler steps in ``counts`` (DDIM with
    ``eta`` for a ``ddpm`` network, Euler steps for rectified flow), DDIM's steps laid by ``spacing`` (``"leading"``
    or ``"trailing"``), classifier-free guidance ``guidance``, each expansion window keeping ``new_per_window`` of its
    new slices (``None``: all), and score it as ``run`` does; writes
    ``benchmarks/results/mask_sampling_steps_<dataset>.{json,md,png}``, keeping the rows of earlier sweeps (other
    settings, another ``eta``)."""
    torch.set_num_threads(threads)
    if setting not in SETTINGS:
        raise SystemExit(f"unknown setting {setting!r}; known: {list(SETTINGS)}")
    run_dir = RUNS / dataset / _folder(setting)
    trained = _read(run_dir / "result.json")
    if trained is None:
        raise SystemExit(f"{run_dir}: not finished; run `mask_stage.py run --settings '[\"{setting}\"]'` first")
    counts = (counts,) if isinstance(counts, int) else tuple(counts)
    stem = RESULTS / f"mask_sampling_steps_{dataset}"
    rows = (_read(stem.with_suffix(".json")) or {}).get("rows", {})
    flow = SETTINGS[setting].get("noise_schedule") == "rflow"
    for count in counts:
        sampler = f"flow-{count}" if flow else f"DDIM-{count}" + (f", eta {eta:g}" if eta else "")
        sampling = {
            "num_inference_steps": int(count),
            "eta": float(eta),
            "timestep_spacing": spacing,
            "guidance_scale": float(guidance),
        }
        if spacing != "leading":
            sampler += f", {spacing} steps"
        if guidance != 1.0:
            sampler += f", guidance {guidance:g}"
        if new_per_window is not None:
            sampler += f", {new_per_window} new slice{'s' if new_per_window > 1 else ''} per window"
            sampling["new_slices_per_window"] = int(new_per_window)
        name = f"{setting}: {sampler}"
        scores = score_stage(
            _stage(dataset, run_dir),
            _data(dataset),
            run_dir / "models" / "model.pt",
            SETTINGS[setting],
            run_dir / "eval" / _folder(f"steps {sampler}") / "samples",
            sampling_overrides=sampling,
        )
        rows[name] = {
            "iterations": trained["iterations"],
            "training_seconds": trained["training_seconds"],
            "machine": _machine(),
            "setting": setting,
            "sampler": sampler,
            "sampling": sampling,
            "scores": scores,
        }
        print(f"{name}: {scores['slice_change_rate']}", file=sys.stderr, flush=True)
    samples = {
        n: RUNS / dataset / _folder(r["setting"]) / "eval" / _folder(f"steps {r['sampler']}") / "samples"
        for n, r in rows.items()
    }
    for n, r in rows.items():  # the measures added since a row was scored, from its samples where they are here
        rows[n] = _with_outline(dataset, r, samples[n])
        rows[n]["scores"] = _with_alignment(dataset, rows[n]["scores"], samples[n])
    results = {"dataset": dataset, "volumes": VOLUMES, "rows": rows}
    _write(stem.with_suffix(".json"), results)
    head = "Each trained setting of the mask stage sampled with several numbers of steps (row: setting: sampler).\n\n"
    text = head + markdown(results).replace("| setting | iterations |", "| setting: sampler | iterations |", 1)
    stem.with_suffix(".md").write_text(text)
    montage(dataset, samples, stem.with_suffix(".png"), "sampling steps")
    print(text)


if __name__ == "__main__":
    fire.Fire({"run": run, "report": report, "curve": curve, "steps": steps})
