"""The sdm_refiner bundle's configs, run through monai.bundle on tiny data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medgen3d.data.io import load_nifti
from medgen3d.data.validate import validate_dataset
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
from tests.conftest import TINY_AFFINE, write_tiny_dataset

TINY = {**TINY_NETWORKS["sdm_refiner"], "labels": {"0": "background", "1": "slab_1", "2": "slab_2", "3": "slab_3"}}
TRAIN = {"max_iterations": 2, "batch_size": 4, "val_interval": 2, "save_interval": 1}


def _workflow(configs, root, dataset, **overrides):
    return workflow("sdm_refiner", configs, root, dataset_dir=str(dataset), **{**TINY, **overrides})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("sdm")
    dataset = write_tiny_dataset(base / "data").root
    for view in ("axial", "coronal", "sagittal"):
        wf = _workflow(["train.json"], base / "bundle", dataset, view=view, **TRAIN)
        wf.run()
        wf.finalize()
    return base / "bundle", dataset


def test_each_view_trains_into_its_own_checkpoint_with_previews(trained):
    root, _ = trained
    for view in ("axial", "coronal", "sagittal"):
        state = torch.load(root / "models" / view / "checkpoint.pt", weights_only=True)
        assert state["trainer"]["iteration"] == 2
        assert (root / "eval" / view / "previews" / "iteration-000002.png").is_file()


def test_training_assembles_every_view_into_one_model_pt(trained):
    root, _ = trained
    assembled = torch.load(root / "models" / "model.pt", weights_only=True)
    for view in ("axial", "coronal", "sagittal"):
        own = torch.load(root / "models" / view / "model.pt", weights_only=True)
        assert all(torch.equal(assembled[f"{view}.{key}"], value) for key, value in own.items())
    assert len(assembled) == 3 * len(own)


def test_inference_refines_every_pair_in_the_data_geometry(trained, tmp_path):
    root, dataset = trained
    out = tmp_path / "refined"
    _workflow(
        ["inference.json"],
        root,
        dataset,
        pairs_dir=str(dataset),
        refined_dir=str(out),
        noise_steps=2,
        guidance_scale=1.5,
    ).run()
    summary = validate_dataset(out)
    assert summary.split_sizes == {"training": 3, "validation": 1, "test": 1}
    refined, original = load_nifti(out / "images" / "case-0.nii.gz"), load_nifti(dataset / "images" / "case-0.nii.gz")
    np.testing.assert_allclose(refined.affine, TINY_AFFINE)
    assert refined.array.shape == original.array.shape and not np.array_equal(refined.array, original.array)


def test_subset_of_views_and_zero_steps(trained, tmp_path):
    root, dataset = trained
    out = tmp_path / "copy"
    _workflow(
        ["inference.json"], root, dataset, pairs_dir=str(dataset), refined_dir=str(out), noise_steps=0, views=["axial"]
    ).run()
    for name in ("case-0", "case-4"):
        assert np.array_equal(
            load_nifti(out / "images" / f"{name}.nii.gz").array, load_nifti(dataset / "images" / f"{name}.nii.gz").array
        )


def test_missing_view_checkpoint_and_label_mismatch_are_named(trained, tmp_path):
    root, dataset = trained
    with pytest.raises(Exception) as err:
        _workflow(["inference.json"], tmp_path / "empty", dataset, pairs_dir=str(dataset)).run()
    assert "missing ['axial', 'coronal', 'sagittal']" in error_chain(err.value)
    with pytest.raises(Exception) as err:
        _workflow(["inference.json"], root, dataset, pairs_dir=str(dataset), labels={"0": "background", "1": "x"})
    assert "differ from the configured labels" in error_chain(err.value)


def test_verify_net_in_out_on_inference_json_alone(tmp_path):
    # as the zoo runs it (n = 1: the smallest slice the metadata allows), on the bundle as an export leaves it
    result = verify_net_in_out(zoo_bundle("sdm_refiner", tmp_path, DEFAULT_LABELS))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "data shape of network is verified with no error" in result.stdout + result.stderr


@pytest.mark.slow
def test_multi_gpu_train_config_runs_under_torchrun_with_gloo(trained, tmp_path):
    _, dataset = trained
    overrides = {**TINY, **TRAIN, "dataset_dir": str(dataset), "val_interval": 5}
    result = run_torchrun("sdm_refiner", ["train.json", "multi_gpu_train.json"], tmp_path, **overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "models" / "axial" / "model.pt").is_file()
    assert list(torch.load(tmp_path / "models" / "model.pt", weights_only=True))[0].startswith("axial.")


def test_missing_dataset_is_named(tmp_path):
    with pytest.raises(Exception) as err:
        _workflow(["train.json"], tmp_path / "b", tmp_path / "nowhere", **TRAIN).run()
    assert "nowhere: dataset folder not found" in error_chain(err.value)


def test_training_caches_what_is_deterministic(tmp_path):
    dataset = write_tiny_dataset(tmp_path / "data").root
    check_cached_preprocessing(_workflow(["train.json"], tmp_path / "bundle", dataset, **TRAIN))
