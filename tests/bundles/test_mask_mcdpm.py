"""The mask_mcdpm bundle's configs, run through monai.bundle on tiny data."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.networks.schedulers import DDPMScheduler

from medgen3d.data.dataset import read_dataset
from medgen3d.data.io import SettingError, load_nifti, save_nifti
from medgen3d.data.validate import validate_dataset
from medgen3d.zoo.export import export_bundles
from medgen3d.zoo.record import read_training_record
from medgen3d.zoo.schedules import check_trained_schedule
from tests.bundles.helpers import (
    DEFAULT_LABELS,
    TINY_NETWORKS,
    check_cached_preprocessing,
    error_chain,
    run_torchrun,
    verify_net_in_out,
    workflow,
    zoo_bundle,
)
from tests.conftest import write_tiny_dataset

TINY = {**TINY_NETWORKS["mask_mcdpm"], "labels": {"0": "background", "1": "slab_1", "2": "slab_2", "3": "slab_3"}}
TRAIN = {"max_iterations": 4, "batch_size": 2, "val_interval": 4, "save_interval": 2, "preview_depth": 8}
INFER = {"num_cases": 2, "batch_size": 2, "num_inference_steps": 4}


def _workflow(configs, root, dataset, **overrides):
    return workflow("mask_mcdpm", configs, root, dataset_dir=str(dataset), **{**TINY, **overrides})


def _iterations(root):
    return torch.load(root / "models" / "checkpoint.pt", weights_only=True)["trainer"]["iteration"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("mcdpm")
    dataset = write_tiny_dataset(base / "data").root
    wf = _workflow(["train.json"], base / "bundle", dataset, **TRAIN)
    wf.run()
    wf.finalize()
    return base / "bundle", dataset


def test_train_config_writes_checkpoints_previews_and_logs(trained):
    root, dataset = trained
    assert (root / "models" / "model.pt").is_file() and _iterations(root) == 4
    # the record names the cases it trained on: the training split, never validation or test
    training = [case.case_id for case in read_dataset(dataset).training]
    assert read_training_record(root / "models")["training_cases"] == training and len(training) == 3
    assert (root / "eval" / "previews" / "iteration-000004.png").is_file()
    assert list((root / "eval").glob("events.out.tfevents.*"))


def test_model_pt_holds_the_ema_weights_that_inference_samples(trained):
    root, _ = trained
    state = torch.load(root / "models" / "checkpoint.pt", weights_only=True)
    exported = torch.load(root / "models" / "model.pt", weights_only=True)
    assert exported.keys() == state["model"].keys() == state["ema"].keys()
    assert all(torch.equal(exported[k], state["ema"][k]) for k in exported)
    assert any(not torch.equal(state["ema"][k], state["model"][k]) for k in exported if exported[k].is_floating_point())
    # the learning-rate schedule travels with the checkpoint, one step per iteration
    assert state["lr_schedule"]["last_epoch"] == state["trainer"]["iteration"]


def test_training_resumes_from_its_checkpoint(trained):
    root, dataset = trained
    wf = _workflow(["train.json"], root, dataset, **{**TRAIN, "max_iterations": 6})
    iterations = []
    wf.parser.get_parsed_content("train#trainer").add_event_handler(
        Events.ITERATION_STARTED, lambda engine: iterations.append(engine.state.iteration)
    )
    wf.run()
    assert iterations == [5, 6] and _iterations(root) == 6  # iterations 1 to 4 were not redone


@pytest.mark.parametrize("overlay", [[], ["inference_ddpm.json"]], ids=["ddim", "ddpm"])
def test_inference_config_writes_a_valid_mask_dataset_in_the_data_geometry(trained, tmp_path, overlay):
    root, dataset = trained
    out = tmp_path / "masks"
    infer = {**INFER, "num_inference_steps": None} if overlay else INFER
    wf = _workflow(["inference.json", *overlay], root, dataset, synthetic_dir=str(out), **infer)
    wf.run()
    summary = validate_dataset(out)
    assert summary.split_sizes["training"] == 2 and summary.shapes == {(16, 16, 12)}
    reference = load_nifti(dataset / "labels" / "case-0.nii.gz")
    for path in (out / "labels").glob("*.nii.gz"):
        np.testing.assert_allclose(load_nifti(path).affine, reference.affine)
    if overlay:
        assert wf.parser.get_parsed_content("sampler").timesteps.tolist() == list(range(19, -1, -1))
    else:  # DDIM's stochasticity reaches the sampler's steps
        sampler = wf.parser.get_parsed_content("sampler")
        assert sampler.step_kwargs == {"eta": 0.0}
        stochastic = _workflow(["inference.json"], root, dataset, **infer, eta=1.0)
        assert stochastic.parser.get_parsed_content("sampler").step_kwargs == {"eta": 1.0}
        # the CPU default: steps from pure noise to one stride above 0 (20 training steps, 4 DDIM steps), guidance
        # 0.25; the paper's sampler (the two settings paper.json sets): MONAI's spacing, guidance 1
        assert sampler.timesteps.tolist() == [19, 14, 9, 4] and sampler.guidance_scale == 0.25
        paper = _workflow(["inference.json"], root, dataset, **infer, timestep_spacing="leading", guidance_scale=1.0)
        assert paper.parser.get_parsed_content("sampler").timesteps.tolist() == [15, 10, 5, 0]


def test_completion_config(trained, tmp_path):
    root, dataset = trained
    partial = load_nifti(dataset / "labels" / "case-0.nii.gz")
    save_nifti(tmp_path / "partial.nii.gz", partial.array, partial.affine)
    overrides = dict(
        partial_file=str(tmp_path / "partial.nii.gz"),
        known_slices=[4, 8],
        completed_file=str(tmp_path / "done.nii.gz"),
        num_inference_steps=4,
    )
    _workflow(["inference.json", "complete.json"], root, dataset, **overrides).run()
    done = load_nifti(tmp_path / "done.nii.gz")
    assert np.array_equal(done.array[..., 4:8], partial.array[..., 4:8])


def test_mismatched_labels_and_missing_checkpoint_are_clear_errors(trained, tmp_path):
    root, dataset = trained
    with pytest.raises(Exception) as err:
        _workflow(["train.json"], tmp_path / "b", dataset, **{**TRAIN, "labels": {"0": "background", "1": "x"}}).run()
    assert "dataset.json: the dataset's labels" in error_chain(err.value)
    with pytest.raises(Exception) as err:
        _workflow(["inference.json"], tmp_path / "empty", dataset, **INFER)
    assert "model.pt: checkpoint not found" in error_chain(err.value)


def test_verify_net_in_out_on_inference_json_alone(tmp_path):
    # as the zoo runs it (n = 1: the smallest slice the metadata allows), on the bundle as an export leaves it
    result = verify_net_in_out(zoo_bundle("mask_mcdpm", tmp_path, DEFAULT_LABELS))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "data shape of network is verified with no error" in result.stdout + result.stderr


@pytest.mark.slow
def test_multi_gpu_train_config_runs_under_torchrun_with_gloo(trained, tmp_path):
    _, dataset = trained
    overrides = {**TINY, **TRAIN, "max_iterations": 2, "dataset_dir": str(dataset)}
    result = run_torchrun("mask_mcdpm", ["train.json", "multi_gpu_train.json"], tmp_path, **overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _iterations(tmp_path) == 2


@pytest.fixture(scope="module")
def trained_rflow(tmp_path_factory):
    base = tmp_path_factory.mktemp("mcdpm-rflow")
    dataset = write_tiny_dataset(base / "data").root
    wf = _workflow(["train.json"], base / "bundle", dataset, **TRAIN, noise_schedule="rflow")
    assert type(wf.parser.get_parsed_content("noise_scheduler")).__name__ == "RectifiedFlowScheduler"
    wf.run()
    wf.finalize()
    return base / "bundle", dataset


def test_rflow_trains_records_its_schedule_and_samples_masks_in_few_steps(trained_rflow, tmp_path):
    root, dataset = trained_rflow
    assert _iterations(root) == 4 and (root / "eval" / "previews" / "iteration-000004.png").is_file()
    assert read_training_record(root / "models")["settings"]["noise_schedule"] == "rflow"
    out = tmp_path / "masks"
    wf = _workflow(["inference.json"], root, dataset, synthetic_dir=str(out), **INFER, noise_schedule="rflow")
    wf.run()
    summary = validate_dataset(out)
    assert summary.split_sizes["training"] == 2 and summary.shapes == {(16, 16, 12)}
    sampler = wf.parser.get_parsed_content("sampler")
    assert sampler.timesteps.tolist() == [20, 15, 10, 5]  # T = 20, 4 steps
    volume = load_nifti(next((out / "labels").glob("*.nii.gz"))).array
    assert set(np.unique(volume).tolist()) <= {0, 1, 2, 3}
    # training draws the flow's steps uniformly unless told otherwise
    for method in ("uniform", "logit-normal"):
        chosen = {} if method == "uniform" else {"rflow_sample_method": method}
        train = _workflow(["train.json"], tmp_path / "t", dataset, **TRAIN, noise_schedule="rflow", **chosen)
        assert train.parser.get_parsed_content("noise_scheduler").sample_method == method


def test_a_network_is_refused_a_sampler_of_the_other_noise_schedule(trained, trained_rflow, tmp_path):
    for (root, dataset), wrong in ((trained_rflow, {}), (trained, {"noise_schedule": "rflow"})):
        with pytest.raises(Exception) as err:
            _workflow(["inference.json"], root, dataset, synthetic_dir=str(tmp_path / "x"), **INFER, **wrong)
        trained_with = "'ddpm'" if wrong else "'rflow'"
        message = error_chain(err.value)
        assert f"training_data.json: the network was trained with noise_schedule {trained_with}" in message
    root, dataset = trained_rflow
    with pytest.raises(Exception) as err:  # the full DDPM chain is a 'ddpm' sampler too
        _workflow(["inference.json", "inference_ddpm.json"], root, dataset, **INFER, noise_schedule="rflow")
    assert "samples with DDPMScheduler" in error_chain(err.value)
    with pytest.raises(Exception) as err:
        _workflow(["train.json"], tmp_path / "c", dataset, **TRAIN, noise_schedule="flow").run()
    assert "noise_schedule: must be one of ['ddpm', 'rflow'], got 'flow'" in error_chain(err.value)


def test_the_betas_train_and_sample_alike_and_are_kept_in_the_record(trained, tmp_path):
    root, dataset = trained
    assert read_training_record(root / "models")["settings"]["beta_schedule"] == "linear_beta"
    train = _workflow(["train.json"], tmp_path / "t", dataset, **TRAIN, beta_schedule="cosine")
    cosine = DDPMScheduler(20, schedule="cosine").alphas_cumprod
    for key in ("noise_scheduler", "preview_sampler"):
        scheduler = train.parser.get_parsed_content(key)
        scheduler = getattr(scheduler, "scheduler", scheduler)
        assert torch.allclose(scheduler.alphas_cumprod, cosine)
    # the brain preset trains and samples with scaled-linear betas and DDIM-5, trains at a learning rate of 1e-3
    # decaying to 0 and counts subcortical GM 1.5 times and CSF (the 5th brain label) twice (mask_mcdpm's docs:
    # Training choices); the test data has 4 labels, so its run leaves the weights out
    preset = _workflow(["train.json", "brain.json"], tmp_path / "b", dataset, **TRAIN)
    assert preset.parser.get_parsed_content("class_weights") == [1.0, 1.0, 1.5, 1.0, 2.0]
    # the thorax preset counts the trachea, esophagus and spinal cord (its 6th to 8th labels) three times
    thorax = _workflow(["train.json", "thorax.json"], tmp_path / "t", dataset, **TRAIN)
    assert thorax.parser.get_parsed_content("class_weights") == [1.0] * 5 + [3.0] * 3
    brain = _workflow(["train.json", "brain.json"], tmp_path / "b", dataset, **TRAIN, class_weights=None)
    scaled = DDPMScheduler(20, schedule="scaled_linear_beta").alphas_cumprod
    assert torch.allclose(brain.parser.get_parsed_content("noise_scheduler").alphas_cumprod, scaled)
    schedule = brain.parser.get_parsed_content("lr_schedule")
    assert schedule.base_lrs == [1e-3] and schedule.end_lr == 0.0
    brain.run()
    brain.finalize()
    assert read_training_record(tmp_path / "b" / "models")["settings"]["beta_schedule"] == "scaled_linear_beta"
    brain = _workflow(["inference.json", "brain.json"], tmp_path / "b", dataset, image_size=[16, 16])
    assert torch.allclose(brain.parser.get_parsed_content("inference_scheduler").alphas_cumprod, scaled)
    assert brain.parser.get_parsed_content("num_inference_steps") == 5
    assert brain.parser.get_parsed_content("new_slices_per_window") == 2  # each window keeps 2 of its 4 new slices
    with pytest.raises(Exception) as err:  # weights trained with linear betas, sampled with cosine ones
        _workflow(["inference.json"], root, dataset, synthetic_dir=str(tmp_path / "x"), **INFER, beta_schedule="cosine")
    assert "trained with beta_schedule 'linear_beta'" in error_chain(err.value)
    assert "run with --beta_schedule linear_beta" in error_chain(err.value)
    record = root / "models" / "training_data.json"
    older = json.loads(record.read_text())
    del older["settings"]["beta_schedule"]  # a record from before the choice: linear betas
    (tmp_path / "m").mkdir()
    shutil.copy(root / "models" / "model.pt", tmp_path / "m" / "model.pt")
    (tmp_path / "m" / "training_data.json").write_text(json.dumps(older))
    check_trained_schedule(tmp_path / "m", DDPMScheduler(20, prediction_type="sample"), "linear_beta")
    with pytest.raises(SettingError, match="beta_schedule 'linear_beta'"):
        check_trained_schedule(tmp_path / "m", DDPMScheduler(20, prediction_type="sample"), "cosine")


def test_an_exported_rflow_bundle_samples_along_its_recorded_schedule(trained_rflow, tmp_path):
    root, _ = trained_rflow
    models = tmp_path / "models"
    shutil.copytree(root / "models", models / "mask_mcdpm")
    (bundle,) = export_bundles(models, tmp_path / "out", bundles="mask_mcdpm")
    config = json.loads((bundle.folder / "configs" / "inference.json").read_text())
    assert config["noise_schedule"] == "rflow" and config["network_settings"]["noise_schedule"] == "@noise_schedule"


def test_training_caches_what_is_deterministic(tmp_path):
    dataset = write_tiny_dataset(tmp_path / "data").root
    check_cached_preprocessing(_workflow(["train.json"], tmp_path / "bundle", dataset, **TRAIN))


def test_training_with_worker_processes_reproduces_its_weights(tmp_path):
    """num_workers > 0 (the GPU presets') loads in worker processes kept between epochs; the same seed still
    gives the same weights."""
    dataset = write_tiny_dataset(tmp_path / "data").root
    weights = []
    for run in ("a", "b"):
        short = {**TRAIN, "max_iterations": 2, "val_interval": 2, "num_workers": 2}
        wf = _workflow(["train.json"], tmp_path / run, dataset, **short)
        loader = wf.parser.get_parsed_content("train#dataloader")
        assert loader.num_workers == 2 and loader.persistent_workers
        wf.run()
        wf.finalize()
        weights.append(torch.load(tmp_path / run / "models" / "model.pt", weights_only=True))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
