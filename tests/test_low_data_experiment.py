"""The low-data experiment's same-N generators and ablation sets (benchmarks/low_data_experiment.py,
benchmarks/ablation_sets.py) on tiny data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from medgen3d.data.dataset import read_dataset
from medgen3d.data.io import load_nifti, save_nifti
from medgen3d.data.subset import subset_dataset
from medgen3d.data.validate import validate_dataset
from medgen3d.zoo.record import read_training_record
from tests.bundles.test_medgen3d import STAGES
from tests.conftest import write_tiny_dataset

ROOT = Path(__file__).resolve().parents[1]


def _benchmarks():
    """The two benchmark modules, imported from benchmarks/ as the scripts import each other."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import ablation_sets
        import low_data_experiment
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return ablation_sets, low_data_experiment


def _noisy_images(spec, seed: int = 0) -> None:
    """Rewrite every image of ``spec`` as its label's value times 100 plus noise: label means no longer round."""
    rng = np.random.default_rng(seed)
    for case in spec.cases():
        label = load_nifti(spec.path(case.label))
        image = 100.0 * label.array + rng.normal(0.0, 30.0, label.array.shape)
        save_nifti(spec.path(case.image), image.astype(np.float32), label.affine)


def test_masks_only_images_are_the_real_training_means_of_each_label(tmp_path):
    ablation_sets, _ = _benchmarks()
    real = write_tiny_dataset(tmp_path / "real", splits=(3, 1, 1))
    _noisy_images(real)
    generated = write_tiny_dataset(tmp_path / "generated", splits=(2, 0, 0))  # stands for generated masks
    pairs = ablation_sets.masks_only_set(generated.root, real.root, tmp_path / "arm")
    validate_dataset(pairs.root)
    # the expected means, from the training images only (the validation and test images must not count)
    voxels = {}
    for case in real.training:
        label = load_nifti(real.path(case.label)).array
        image = load_nifti(real.path(case.image)).array
        for value in np.unique(label):
            voxels.setdefault(int(value), []).append(image[label == value])
    means = {value: np.concatenate(v).astype(np.float64).mean() for value, v in voxels.items()}
    assert len(pairs.training) == 2
    for case, source in zip(pairs.training, generated.training):
        label = load_nifti(pairs.path(case.label)).array
        image = load_nifti(pairs.path(case.image)).array
        assert pairs.path(case.label).read_bytes() == generated.path(source.label).read_bytes()
        for value, mean in means.items():
            np.testing.assert_allclose(image[label == value], mean, rtol=1e-5)
    assert pairs.extra["medgen3d"]["label_means"] == pytest.approx([means[v] for v in sorted(means)], rel=1e-5)


@pytest.mark.slow
def test_same_n_generators_train_on_exactly_the_subjects_and_images_only_keeps_the_real_masks(tmp_path):
    ablation_sets, experiment = _benchmarks()
    source = write_tiny_dataset(tmp_path / "source", splits=(4, 1, 2))
    real = subset_dataset(source.root, tmp_path / "real-2", training=2)
    seen = ["case-0", "case-1"]
    stages = experiment.train_generators(real.root, tmp_path / "gen", overlays=[], stage_overrides=STAGES)
    for stage in ("mask_mcdpm", "image_vid2vid", "sdm_refiner"):
        record = read_training_record(tmp_path / "gen" / "models" / stage)
        assert record["training_cases"] == seen, stage  # the segmenter's subjects, not the source's 4
    assert not (tmp_path / "gen" / "models" / "segmenter").exists()  # the segmenter is not a generator

    arm = ablation_sets.images_only_set(stages, real.root, tmp_path / "images-only")
    validate_dataset(arm.root)
    assert [c.case_id for c in arm.training] == seen and not arm.validation and not arm.test
    for case in arm.training:  # the real masks, byte for byte, with new images of their shape
        original = real.path(f"labels/{case.case_id}.nii.gz")
        assert arm.path(case.label).read_bytes() == original.read_bytes()
        image = load_nifti(arm.path(case.image)).array
        assert image.shape == load_nifti(original).array.shape and np.isfinite(image).all()
        assert not np.array_equal(image, load_nifti(real.path(f"images/{case.case_id}.nii.gz")).array)

    both = experiment.generate_pairs(
        real.root, tmp_path / "gen", tmp_path / "both", 2, overlays=[], stage_overrides=STAGES
    )
    masks_only = ablation_sets.masks_only_set(both, real.root, tmp_path / "masks-only")
    generated = read_dataset(both)
    assert [c.case_id for c in masks_only.cases()] == [c.case_id for c in generated.cases()]
    recorded = json.loads((masks_only.root / "dataset.json").read_text())["medgen3d"]
    assert recorded["images"].startswith("per-label lookup")

    # an arm's segmenters, scored on the real held-out split and on the transfer set
    target = write_tiny_dataset(tmp_path / "target", splits=(2, 1, 2)).root
    tiny = {"roi_size": [16, 16, 16], "val_interval": 2}
    rows = experiment._experiment(tmp_path / "arm", real.root, masks_only.root, target, ["E2-3"], [0], 4, tiny)
    assert {(r["strategy"], r["test_set"], r["steps"], r["cases"]) for r in rows} == {
        ("E2-3", "brain-mni", "4", 2),
        ("E2-3", experiment.TARGET, "4", 2),
    }


def _rows(strategy: str, test_set: str, means: list[float]) -> list[dict]:
    return [
        {"strategy": strategy, "network": "unet3d", "seed": seed, "test_set": test_set, "mean": m,
         "dice": {"cortex": m + 0.1, "csf": m - 0.1}, "cases": 10, "steps": "200"}
        for seed, m in enumerate(means)
    ]


def test_the_report_summarises_each_setting_arm_and_test_set_over_seeds(tmp_path, monkeypatch):
    _, experiment = _benchmarks()
    monkeypatch.setattr(experiment, "RUN", tmp_path / "runs")
    monkeypatch.setattr(experiment, "RESULTS", tmp_path / "results")
    arms = tmp_path / "runs" / "same-n-5" / "arms"
    arms.mkdir(parents=True)
    real = _rows("E2-1", "brain-mni", [0.70, 0.80, 0.90]) + _rows("E2-1", experiment.TARGET, [0.5, 0.5, 0.5])
    (arms / "real.json").write_text(json.dumps(real))
    (arms / "masks-only.json").write_text(json.dumps(_rows("masks-only", "brain-mni", [0.6, 0.6, 0.6])))
    experiment.report()
    results = json.loads((tmp_path / "results" / "low_data_experiment.json").read_text())
    assert set(results["summary"]) == {"same-n-5"}  # settings without finished arms are left out
    summary = results["summary"]["same-n-5"]
    assert set(summary) == {"E2-1", "masks-only"}
    e21 = summary["E2-1"]["brain-mni"]
    assert e21["mean"] == pytest.approx(0.80) and e21["std"] == pytest.approx(np.std([0.7, 0.8, 0.9]))
    assert e21["seeds"] == [0, 1, 2] and e21["structures"]["csf"] == pytest.approx(0.70)
    assert summary["E2-1"][experiment.TARGET]["std"] == 0.0
    setting = results["settings"]["same-n-5"]
    assert (setting["real_training_subjects"], setting["generator_training_subjects"]) == (5, 5)
    page = (tmp_path / "results" / "low_data_experiment.md").read_text()
    assert "| E2-1 | real only | 0.800 ± 0.082 | 0.500 ± 0.000 |" in page
    assert "| masks-only |" in page and (tmp_path / "results" / "low_data_experiment.png").stat().st_size > 0
