"""The mask_mcdpm bundle's configs, run through monai.bundle on tiny data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

from medgen3d.data.io import load_nifti, save_nifti
from medgen3d.data.validate import validate_dataset

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "mask_mcdpm"
CONFIGS = BUNDLE / "configs"
TINY = {
    "image_size": [16, 16],
    "subsequence_length": 4,
    "channels": [8, 16],
    "attention_levels": [False, False],
    "norm_num_groups": 8,
    "num_head_channels": 8,
    "num_train_timesteps": 20,
    "labels": {"0": "background", "1": "slab_1", "2": "slab_2", "3": "slab_3"},
}
TRAIN = {"max_epochs": 2, "batch_size": 2, "val_interval": 2, "save_interval": 1, "preview_depth": 8}
INFER = {"num_cases": 2, "batch_size": 2, "num_inference_steps": 4}


def _workflow(configs, root, dataset, **overrides):
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / c) for c in ["common.json", *configs]],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type="train" if "train.json" in configs else "infer",
        bundle_root=str(root),
        dataset_dir=str(dataset),
        **{**TINY, **overrides},
    )
    workflow.initialize()
    return workflow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tests.conftest import write_tiny_dataset

    base = tmp_path_factory.mktemp("mcdpm")
    dataset = write_tiny_dataset(base / "data").root
    workflow = _workflow(["train.json"], base / "bundle", dataset, **TRAIN)
    workflow.run()
    workflow.finalize()
    return base / "bundle", dataset


def test_train_config_writes_checkpoints_previews_and_logs(trained):
    root, _ = trained
    assert (root / "models" / "model.pt").is_file() and (root / "models" / "checkpoint.pt").is_file()
    state = torch.load(root / "models" / "checkpoint.pt", weights_only=True)
    assert state["trainer"]["iteration"] // state["trainer"]["epoch_length"] == 2
    assert (root / "eval" / "previews" / "epoch-0002.png").is_file()
    assert list((root / "eval").glob("events.out.tfevents.*"))


def test_training_resumes_from_its_checkpoint(trained, tmp_path):
    root, dataset = trained
    workflow = _workflow(["train.json"], root, dataset, **{**TRAIN, "max_epochs": 3})
    trainer = workflow.parser.get_parsed_content("train#trainer")
    epochs = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: epochs.append(engine.state.epoch))
    workflow.run()
    assert epochs == [3]  # epochs 1 and 2 were not redone
    state = torch.load(root / "models" / "checkpoint.pt", weights_only=True)["trainer"]
    assert state["iteration"] // state["epoch_length"] == 3


@pytest.mark.parametrize("overlay", [[], ["inference_ddpm.json"]], ids=["ddim", "ddpm"])
def test_inference_config_writes_a_valid_mask_dataset_in_the_data_geometry(trained, tmp_path, overlay):
    root, dataset = trained
    out = tmp_path / "masks"
    infer = {**INFER, "num_inference_steps": None} if overlay else INFER
    workflow = _workflow(["inference.json", *overlay], root, dataset, synthetic_dir=str(out), **infer)
    workflow.run()
    summary = validate_dataset(out)
    assert summary.split_sizes["training"] == 2 and summary.shapes == {(16, 16, 12)}
    reference = load_nifti(dataset / "labels" / "case-0.nii.gz")
    for path in (out / "labels").glob("*.nii.gz"):
        np.testing.assert_allclose(load_nifti(path).affine, reference.affine)
    if overlay:
        assert workflow.parser.get_parsed_content("sampler").timesteps.tolist() == list(range(19, -1, -1))


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


def _chain(err: BaseException) -> str:
    """Every message in an exception's cause chain (monai.bundle wraps errors raised inside configs)."""
    messages = []
    while err is not None:
        messages.append(str(err))
        err = err.__cause__
    return "\n".join(messages)


def test_mismatched_labels_and_missing_checkpoint_are_clear_errors(trained, tmp_path):
    root, dataset = trained
    labels = {"0": "background", "1": "liver"}
    with pytest.raises(Exception) as err:
        _workflow(["train.json"], tmp_path / "b", dataset, **{**TRAIN, "labels": labels}).run()
    assert "dataset.json: the dataset's labels" in _chain(err.value)
    assert "differ from the configured labels" in _chain(err.value)
    with pytest.raises(Exception) as err:
        _workflow(["inference.json"], tmp_path / "empty", dataset, **INFER)
    assert "model.pt: checkpoint not found" in _chain(err.value)


def test_verify_net_in_out_with_the_fixed_condition_wrapper(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "verify_net_in_out",
        "network_def",
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--config_file",
        f"['{CONFIGS / 'common.json'}','{CONFIGS / 'verify_net.json'}']",
        "--device",
        "cpu",
        "--n",
        "2",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "data shape of network is verified with no error" in result.stdout + result.stderr


@pytest.mark.slow
def test_multi_gpu_train_config_runs_under_torchrun_with_gloo(trained, tmp_path):
    _, dataset = trained
    overrides = {**TINY, **TRAIN, "max_epochs": 1}
    args = []
    for key, value in overrides.items():
        args += [f"--{key}", json.dumps(value)]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        f"['{CONFIGS / 'common.json'}','{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']",
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--logging_file",
        str(CONFIGS / "logging.conf"),
        "--bundle_root",
        str(tmp_path),
        "--dataset_dir",
        str(dataset),
        *args,
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(tmp_path / "models" / "checkpoint.pt", weights_only=True)
    assert state["trainer"]["iteration"] // state["trainer"]["epoch_length"] == 1
