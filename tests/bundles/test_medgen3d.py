"""The workflow bundle on tiny data: train every stage, generate, resume, report, and the downstream experiment."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from medgen3d.data.dataset import DatasetSpec, read_dataset, write_dataset
from medgen3d.data.io import load_nifti, read_json
from medgen3d.data.validate import validate_dataset
from medgen3d.metrics.report import quality_report
from medgen3d.pipeline.stages import StageBundle
from tests.bundles.helpers import BUNDLES, TINY_NETWORKS, error_chain, run_torchrun
from tests.conftest import TINY_AFFINE, TINY_SHAPE, write_tiny_dataset

# tiny networks and a few iterations per stage: seconds each
STAGES = {
    "mask_mcdpm": {
        **TINY_NETWORKS["mask_mcdpm"],
        "max_iterations": 4,
        "batch_size": 2,
        "val_interval": 4,
        "save_interval": 2,
        "preview_depth": 8,
        "num_inference_steps": 4,
    },
    "image_vid2vid": {
        **TINY_NETWORKS["image_vid2vid"],
        "max_iterations": 4,
        "batch_size": 2,
        "run_length": 4,
        "val_interval": 4,
        "save_interval": 2,
        "ndf": 8,
        "discriminator_scales": 1,
        "discriminator_layers": 2,
    },
    "sdm_refiner": {
        **TINY_NETWORKS["sdm_refiner"],
        "max_iterations": 2,
        "batch_size": 4,
        "val_interval": 2,
        "save_interval": 1,
        "noise_steps": 4,
    },
    "segmentation_eval": {"slice_size": [16, 16], "max_iterations": 18, "val_interval": 9, "learning_rate": 0.002},
}


def _run(root, dataset, configs, **overrides):
    """``python -m monai.bundle run`` of the workflow bundle with ``configs`` over its common.json."""
    segmentation = {**STAGES["segmentation_eval"], "slice_views": ["axial", "coronal", "sagittal"]}
    values = {
        "stages_dir": str(BUNDLES),
        "dataset_dir": str(dataset),
        "stage_overrides": {**STAGES, "segmentation_eval": segmentation},
        "num_cases": 3,
        **overrides,
    }
    bundle = StageBundle(BUNDLES / "medgen3d", root / "models", root / "eval")
    return bundle.run(configs, bundle_root=str(root), **values)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    base = tmp_path_factory.mktemp("workflow")
    dataset = write_tiny_dataset(base / "data", splits=(4, 1, 2)).root
    root = base / "bundle"
    _run(root, dataset, ["train.json"])
    _run(root, dataset, ["generate.json"])
    return root, dataset


@pytest.mark.slow
def test_the_whole_chain_writes_paired_cases_in_the_real_geometry_with_known_labels(pipeline):
    root, dataset = pipeline
    for stage in ("mask_mcdpm/model.pt", "image_vid2vid/model.pt", "segmenter/model.pt"):
        assert (root / "models" / stage).is_file()
    assert all((root / "models" / "sdm_refiner" / v / "model.pt").is_file() for v in ("axial", "coronal", "sagittal"))
    out = root / "eval" / "synthetic"
    for folder in (out, out / "unrefined"):
        spec = read_dataset(folder)
        assert len(spec.cases()) == 3 and spec.labels == read_dataset(dataset).labels
        validate_dataset(folder)  # shapes, affines, finite values, declared labels, each pair checked
        for case in spec.cases():
            image, label = spec.load_case(case)
            assert image.array.shape == label.array.shape and image.array.shape[:2] == TINY_SHAPE[:2]
            np.testing.assert_allclose(image.affine, TINY_AFFINE)
            assert set(np.unique(label.array)) <= {0, 1, 2, 3}
    refined = read_dataset(out)
    unrefined = read_dataset(out / "unrefined")
    case = refined.training[0]
    # the same mask under both, and the refiner changed the image
    assert np.array_equal(refined.load_case(case)[1].array, unrefined.load_case(case)[1].array)
    assert not np.array_equal(refined.load_case(case)[0].array, unrefined.load_case(case)[0].array)
    assert len(list((out / "previews").glob("*.png"))) == 3
    assert len(list((out / "previews" / "unrefined").glob("*.png"))) == 3


@pytest.mark.slow
def test_an_interrupted_generation_resumes_without_redoing_or_losing_cases(pipeline, tmp_path):
    root, dataset = pipeline
    copy = tmp_path / "bundle"
    shutil.copytree(root, copy)
    out = copy / "eval" / "synthetic"
    # as a run stopped part-way leaves it: one case not refined yet, one not even imaged
    original = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.nii.gz")}
    (out / "images" / "synth-0002.nii.gz").unlink()
    (out / "unrefined" / "images" / "synth-0001.nii.gz").unlink()
    (out / "images" / "synth-0001.nii.gz").unlink()
    redone = {out / "labels" / "synth-0001.nii.gz", out / "labels" / "synth-0002.nii.gz"}  # copied with their images
    kept = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz") if p not in redone}
    _run(copy, dataset, ["generate.json"])
    assert [p for p, t in kept.items() if p.stat().st_mtime_ns != t] == []  # finished cases untouched
    for relative, content in original.items():
        regenerated = load_nifti(out / relative).array
        expected = load_nifti(root / "eval" / "synthetic" / relative).array
        # same seed, same case, up to float rounding (a case generated alone vs in a batch of three, compounded
        # through the image recurrence): within 0.1% of the volume's intensity range
        tolerance = 1e-3 * float(np.ptp(expected)) + 1e-6
        np.testing.assert_allclose(regenerated, expected, rtol=0, atol=tolerance)
    assert len(read_dataset(out).cases()) == 3


@pytest.mark.slow
def test_generation_under_torchrun_shards_every_stage_and_matches_one_process(pipeline, tmp_path):
    root, dataset = pipeline
    # one case per network call and one thread in both runs, as torchrun's processes have here: a batch of several
    # cases, or another thread count, changes float rounding (see the resume test)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run(root, dataset, ["generate.json"], synthetic_dir=str(tmp_path / "one"), batch_size=1, num_cases=4)
    finally:
        torch.set_num_threads(threads)
    segmentation = {**STAGES["segmentation_eval"], "slice_views": ["axial", "coronal", "sagittal"]}
    result = run_torchrun(
        "medgen3d",
        ["common.json", "generate.json"],
        root,
        stages_dir=str(BUNDLES),
        dataset_dir=str(dataset),
        stage_overrides={**STAGES, "segmentation_eval": segmentation},
        synthetic_dir=str(tmp_path / "two"),
        batch_size=1,
        num_cases=4,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # every stage split its cases: rank 0 took 0 and 2, rank 1 took 1 and 3
    for stage in ("mask_mcdpm", "image_vid2vid", "sdm_refiner"):
        assert f"{stage} [2/2] synth-0003" in result.stderr and f"{stage} [2/2] synth-0002" in result.stderr
        assert f"{stage} [3/" not in result.stderr
    one, two = tmp_path / "one", tmp_path / "two"
    for folder in ("", "unrefined"):
        files = sorted(p.relative_to(two / folder) for p in (two / folder).glob("*/*.nii.gz"))
        assert len(files) == 8 and files == sorted(
            p.relative_to(one / folder) for p in (one / folder).glob("*/*.nii.gz")
        )
        assert read_dataset(two / folder).to_json() == read_dataset(one / folder).to_json()
        for relative in files:
            np.testing.assert_array_equal(
                load_nifti(two / folder / relative).array, load_nifti(one / folder / relative).array
            )
    assert len(list((two / "previews").glob("*.png"))) == 4  # rank 0 alone drew them


@pytest.mark.slow
def test_an_output_folder_of_another_run_or_missing_checkpoints_are_clear_errors(pipeline, tmp_path):
    root, dataset = pipeline
    out = root / "eval" / "synthetic"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(Exception) as err:
        _run(root, dataset, ["generate.json"], seed=7)
    assert "holds a generation run with other settings (seed differ)" in error_chain(err.value)
    with pytest.raises(Exception) as err:
        _run(root, dataset, ["generate.json"], num_cases=4)
    assert "num_cases" in error_chain(err.value)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before  # nothing touched
    stranger = tmp_path / "notes"
    stranger.mkdir()
    (stranger / "mine.txt").write_text("keep")
    with pytest.raises(Exception) as err:
        _run(root, dataset, ["generate.json"], synthetic_dir=str(stranger))
    assert "not empty and holds no generation run" in error_chain(err.value)
    assert [p.name for p in stranger.iterdir()] == ["mine.txt"]
    with pytest.raises(Exception) as err:
        _run(root, dataset, ["generate.json"], models_dir=str(tmp_path / "none"), synthetic_dir=str(tmp_path / "x"))
    message = error_chain(err.value)
    assert "mask_mcdpm checkpoint" in message and "sdm_refiner checkpoint" in message
    assert not (tmp_path / "x" / "unrefined").exists()  # failed before generating anything


@pytest.mark.slow
def test_checkpoints_trained_on_another_label_set_are_refused_naming_the_file(pipeline, tmp_path):
    root, dataset = pipeline
    spec = read_dataset(dataset)
    other = DatasetSpec(spec.name, spec.modality, {**spec.labels, 4: "extra"}, spec.training, spec.validation)
    shutil.copytree(dataset, tmp_path / "other")
    write_dataset(tmp_path / "other", other)
    with pytest.raises(Exception) as err:
        _run(root, tmp_path / "other", ["generate.json"], synthetic_dir=str(tmp_path / "out"))
    message = error_chain(err.value)
    assert "mask_mcdpm/model.pt: does not fit the configured network" in message


@pytest.mark.slow
def test_the_quality_report_measures_refined_and_unrefined_images_against_real_data(pipeline):
    root, dataset = pipeline
    _run(root, dataset, ["evaluate.json"])
    report_dir = root / "eval" / "report"
    report = read_json(report_dir / "report.json")
    assert set(report["sets"]) == {"refined", "unrefined"}
    for row in [report["reference"], *report["sets"].values()]:
        assert set(row["fidelity_frechet"]) == {"axial", "coronal", "sagittal", "mean"}
        assert all(np.isfinite(v) and v >= 0 for v in row["fidelity_frechet"].values())
        # null: a structure absent from both the mask and the segmentation in every case has no Dice
        assert all(v is None or 0 <= v <= 1 for v in row["alignment_dice"].values())
        assert -1 <= row["diversity_ms_ssim"]["mean"] <= 1
    assert len(report["sets"]["refined"]["memorisation"]) == 3
    # the trained mask model's convergence, measured on the held-out masks, and the masks' slice-change rates
    structures = {name for value, name in read_dataset(dataset).labels.items() if int(value) != 0}
    gaps = report["anatomy"]["seed_agreement_gap"]
    assert set(gaps) == structures and all(v is None or -1 <= v <= 1 for v in gaps.values())
    assert all(0 <= v <= 1 for v in report["anatomy"]["slice_change_rate"].values())
    assert (report_dir / "report.png").stat().st_size > 0
    text = (report_dir / "report.md").read_text()
    assert "## Memorisation" in text and "Seed agreement gap" in text and "Slice-change rate" in text


@pytest.mark.slow
def test_local_lpips_and_feature_weights_enter_the_report(pipeline, tmp_path):
    from tests.metrics.test_lpips import _ChannelStats, _MeanAbsolute, save_script

    root, dataset = pipeline
    overrides = {
        "report_dir": str(tmp_path / "report"),
        "lpips_network": save_script(_MeanAbsolute(), tmp_path / "lpips.pt"),
        "feature_network": save_script(_ChannelStats(), tmp_path / "inception.pt"),
        "feature_input_size": [16, 16],
    }
    _run(root, dataset, ["evaluate.json"], **overrides)
    report = read_json(tmp_path / "report" / "report.json")
    assert report["features"] == "features of inception.pt"
    for row in [report["reference"], *report["sets"].values()]:
        assert set(row["diversity_lpips"]) == {"axial", "coronal", "sagittal", "mean"}
        assert all(0 < v < 2 for v in row["diversity_lpips"].values())  # mean |a - b| of different cases in [-1, 1]
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "mean LPIPS between slices" in markdown and "Features: features of inception.pt." in markdown


@pytest.mark.slow
def test_a_copy_of_the_training_set_is_flagged_as_memorised_and_has_real_anatomy(pipeline, tmp_path):
    root, dataset = pipeline
    wf = _run(root, dataset, ["evaluate.json"], run=[])  # only to build the trained segmenter and features
    segment, features = wf.parser.get_parsed_content("segmenter"), wf.parser.get_parsed_content("features")
    real = read_dataset(dataset)
    copy = DatasetSpec(real.name, real.modality, real.labels, real.training)
    shutil.copytree(dataset, tmp_path / "copy")
    write_dataset(tmp_path / "copy", copy)
    report = quality_report(dataset, tmp_path / "copy", tmp_path / "report", segment, features)
    memo = report["sets"]["refined"]["memorisation"]
    assert [m["nearest_training_case"] for m in memo] == [c.case_id for c in real.training]
    assert all(m["image_ssim"] == pytest.approx(1.0, abs=1e-4) and m["label_dice"] == 1.0 for m in memo)
    assert all(v == pytest.approx(0.0, abs=1e-9) for v in report["anatomy"]["fraction_distance"].values())
    assert "refined: 4 case(s) closer to a training case" in (tmp_path / "report" / "report.md").read_text()


def _trainer_iteration(ckpt_dir):
    return torch.load(ckpt_dir / "checkpoint.pt", weights_only=True)["trainer"]["iteration"]


@pytest.mark.slow
def test_the_experiment_trains_sources_with_equal_steps_scores_each_run_and_resumes(pipeline, tmp_path, monkeypatch):
    root, dataset = pipeline
    target = write_tiny_dataset(tmp_path / "target", splits=(2, 1, 2)).root
    experiment = tmp_path / "experiment"
    overrides = {
        "experiment_dir": str(experiment),
        "strategies": ["E2-1", "E2-4", "E3-3"],
        "networks": ["unet3d"],
        "seeds": [0, 1],
        "target_dir": str(target),
        "steps": 6,
        "transfer_steps": 3,
        "experiment_overrides": {"roi_size": [16, 16, 16], "val_interval": 3},
    }
    _run(root, dataset, ["experiment.json"], **overrides)
    runs = sorted(p.name for p in (experiment / "runs").glob("*.json"))
    assert runs == [f"{s}-unet3d-seed{k}.json" for s in ("E2-1", "E2-2", "E2-4", "E3-3") for k in (0, 1)]
    results = read_json(experiment / "results.json")
    assert sorted({(r["strategy"], r["seed"]) for r in results if r["test_set"] == "tiny"}) == [
        (s, k) for s in ("E2-1", "E2-4", "E3-3") for k in (0, 1)
    ]
    # equal steps per table: E2-4 is 3 steps of its source (E2-2's snapshot) and 3 of fine-tuning; E3-3 is its
    # 6-step source and 3 steps on the target
    assert {r["strategy"]: r["steps"] for r in results} == {"E2-1": "6", "E2-4": "3 + 3", "E3-3": "6 + 3"}
    models = experiment / "models" / "unet3d" / "seed0"
    assert {s: _trainer_iteration(models / s) for s in ("E2-1", "E2-2", "E2-4", "E3-3")} == {
        "E2-1": 6,
        "E2-2": 6,
        "E2-4": 3,
        "E3-3": 3,
    }
    assert (models / "E2-2" / "model_step3.pt").is_file()
    # every run scored on both test sets, the table says on how many cases and seeds
    # every run scored on both test sets (the target, named like the real data, under "target"); the table says
    # on how many cases and seeds
    assert {(r["test_set"], r["cases"]) for r in results} == {("tiny", 2), ("target", 2)}
    table = (experiment / "results.md").read_text()
    assert "mean ± std over 2 seed(s) (0, 1)" in table and "E2-2" not in table  # trained as a source only
    assert table.count("| strategy | network | steps |") == 2  # one table for E2, one for E3

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(StageBundle, "run", refuse, raising=True)
    from medgen3d.pipeline.experiment import run_experiment

    segmentation = StageBundle(
        BUNDLES / "segmentation_eval", tmp_path / "m", tmp_path / "l", base=(), overrides={"val_interval": 3}
    )
    synthetic = root / "eval" / "synthetic"
    args = (segmentation, dataset, synthetic, experiment, ["E2-1", "E2-4", "E3-3"], ["unet3d"], [0, 1])
    again = run_experiment(*args, target_dir=target, steps=6, transfer_steps=3)
    assert sorted((r.strategy, r.seed, r.test_set, r.dice["slab_2"]) for r in again) == sorted(
        (r["strategy"], r["seed"], r["test_set"], r["dice"]["slab_2"]) for r in results
    )
    # records of another step budget are not mixed into this one
    with pytest.raises(ValueError, match=r"E2-1-unet3d-seed0.json: trained with 6 steps, this experiment plans 12"):
        run_experiment(*args, target_dir=target, steps=12, transfer_steps=3)


def test_the_step_budget_gives_every_strategy_of_a_table_the_same_steps():
    from medgen3d.pipeline.experiment import STRATEGIES, StepBudget

    budget = StepBudget(300, fine_tune_fraction=0.5, transfer_steps=100)
    plans = {s: budget.plan(s) for s in STRATEGIES}
    total = {s: sum(int(n) for n in p.steps.split(" + ")) for s, p in plans.items()}
    assert {total[s] for s in STRATEGIES if s.startswith("E2")} == {300}
    assert {total[s] for s in STRATEGIES if s.startswith("E3")} == {400}
    # fine-tuned strategies start from their source's weights after the pre-training share, and train the rest
    assert plans["E2-4"] == (150, "model_step150.pt", (), "150 + 150")
    assert plans["E2-2"].snapshots == plans["E2-3"].snapshots == (150,)
    assert plans["E3-3"] == (100, "model.pt", (), "300 + 100")
    assert plans["E3-1"] == (400, None, (), "400") and plans["E2-0"] == (300, None, (), "300")
    with pytest.raises(ValueError, match="transfer_steps must be >= 1"):
        StepBudget(300).plan("E3-2")
    with pytest.raises(ValueError, match="fine_tune_fraction"):
        StepBudget(300, fine_tune_fraction=1.0)


def test_unknown_strategies_and_networks_are_refused():
    from medgen3d.pipeline.experiment import run_order

    assert run_order(["E2-5", "E2-1"]) == ["E2-1", "E2-3", "E2-5"]
    assert run_order(["E3-4"]) == ["E2-3", "E2-5", "E3-4"]
    assert run_order(["E3-3", "E2-0"]) == ["E2-0", "E2-2", "E2-4", "E3-3"]
    with pytest.raises(ValueError, match="unknown strategies"):
        run_order(["E9"])
