"""The image_vid2vid bundle's configs, run through monai.bundle on tiny data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Events

from medgen3d.data.dataset import Case, DatasetSpec, write_dataset
from medgen3d.data.io import load_nifti, save_nifti
from medgen3d.data.validate import validate_dataset
from tests.bundles.helpers import (
    BUNDLES,
    DEFAULT_LABELS,
    check_cached_preprocessing,
    error_chain,
    run_torchrun,
    verify_net_in_out,
    workflow,
    zoo_bundle,
)
from tests.conftest import TINY_AFFINE, TINY_LABELS, slab_label, write_tiny_dataset

TINY = {
    "image_size": [16, 16],
    "ngf": 8,
    "n_downsample": 2,
    "n_blocks": 2,
    "labels": {"0": "background", "1": "slab_1", "2": "slab_2", "3": "slab_3"},
}
TRAIN = {
    "max_iterations": 4,
    "batch_size": 2,
    "run_length": 4,
    "val_interval": 4,
    "save_interval": 2,
    "ndf": 8,
    "discriminator_scales": 1,
    "discriminator_layers": 2,
}


def _workflow(configs, root, dataset, **overrides):
    return workflow("image_vid2vid", configs, root, dataset_dir=str(dataset), **{**TINY, **overrides})


def _iterations(root):
    return torch.load(root / "models" / "checkpoint.pt", weights_only=True)["trainer"]["iteration"]


def _mask_dataset(root, depths=(12, 10), labels=TINY_LABELS):
    cases = []
    for i, depth in enumerate(depths):
        save_nifti(root / "labels" / f"synth-{i}.nii.gz", slab_label((16, 16, depth)), TINY_AFFINE)
        cases.append(Case(None, f"labels/synth-{i}.nii.gz"))
    return write_dataset(root, DatasetSpec("tiny-synthetic-masks", "MR", dict(labels), training=cases)).root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("vid2vid")
    dataset = write_tiny_dataset(base / "data").root
    wf = _workflow(["train.json"], base / "bundle", dataset, **TRAIN)
    wf.run()
    wf.finalize()
    return base / "bundle", dataset


def test_train_config_writes_checkpoints_previews_and_named_losses(trained):
    root, _ = trained
    state = torch.load(root / "models" / "checkpoint.pt", weights_only=True)
    assert {"model", "optimizer", "discriminators", "d_optimizer", "trainer"} <= set(state)
    assert _iterations(root) == 4 and (root / "models" / "model.pt").is_file()
    assert (root / "eval" / "previews" / "iteration-000004.png").is_file()
    assert list((root / "eval").glob("events.out.tfevents.*"))


def test_the_learning_rates_decay_to_0_by_default_and_a_final_fraction_of_1_holds_them(trained, tmp_path):
    root, dataset = trained
    state = torch.load(root / "models" / "checkpoint.pt", weights_only=True)
    # the schedules travel with the checkpoint, one step per iteration; by default the rate ends at 0
    for key, optimizer in (("lr_schedule", "optimizer"), ("d_lr_schedule", "d_optimizer")):
        assert state[key]["last_epoch"] == state["trainer"]["iteration"] == 4, key
        assert np.allclose([g["lr"] for g in state[optimizer]["param_groups"]], [0.0], rtol=0, atol=1e-12), key

    # cosine from the rate to 0 over max_iterations (4): 1, (1 + cos(pi/4)) / 2, 1/2, (1 - cos(pi/4)) / 2
    cosine = [1e-3 * (1 + np.cos(np.pi * i / 4)) / 2 for i in range(4)]
    for name, overrides, expected in (("default", {}, cosine), ("constant", {"final_lr_fraction": 1.0}, [1e-3] * 4)):
        rates = []
        wf = _workflow(["train.json"], tmp_path / name, dataset, **{**TRAIN, **overrides})
        trainer = wf.parser.get_parsed_content("train#trainer")
        optimizers = [wf.parser.get_parsed_content(k) for k in ("optimizer", "d_optimizer")]
        trainer.add_event_handler(
            Events.ITERATION_STARTED, lambda engine: rates.append([o.param_groups[0]["lr"] for o in optimizers])
        )
        wf.run()
        assert np.allclose(rates, np.array([expected, expected]).T, rtol=1e-6, atol=0), overrides


def test_l1_terms_weigh_1_by_default_and_the_paper_keeps_vid2vid_weights(trained, tmp_path):
    _, dataset = trained
    # 0.6.0: L1 at 10 held the images smoother than real inside each structure at any budget (the bundle's docs:
    # the learning curve), so both L1 terms weigh 1 beside the adversarial 1 and feature matching 10
    default = _workflow(["train.json"], tmp_path / "d", dataset, **TRAIN).parser.get_parsed_content("train#trainer")
    weights = default.losses.weights
    assert (weights["l1"], weights["hallucinated_l1"], weights["gan"], weights["feature_matching"]) == (1, 1, 1, 10)
    paper = _workflow(["train.json", "paper.json"], tmp_path / "p", dataset, **TRAIN)
    weights = paper.parser.get_parsed_content("train#trainer").losses.weights
    assert (weights["l1"], weights["hallucinated_l1"]) == (10, 0)  # vid2vid's L1, on the blended slice only


def test_the_generator_returns_its_hallucinated_slice_by_default_and_the_paper_the_composite(trained, tmp_path):
    from monai.bundle import ConfigParser

    root, dataset = trained
    # 0.7.0: the composite's bilinear warp softens thin structures; the hallucinated slice alone aligns as well as the
    # real images (the bundle's docs), with the same weights
    configs = BUNDLES / "image_vid2vid" / "configs"

    def configured(*files):
        parser = ConfigParser()
        parser.read_config([str(configs / f) for f in files])
        return parser["output_slice"], parser["generator_def"]["output"]

    assert configured("inference.json") == ("hallucinated", "@output_slice")
    assert configured("inference.json", "paper.json")[0] == "composite"  # vid2vid's blend in the paper preset
    masks = str(_mask_dataset(tmp_path / "masks"))
    for output in ("hallucinated", "composite"):  # the trained weights serve either
        flow = _workflow(["inference.json"], root, dataset, masks_dir=masks, output_slice=output)
        assert flow.parser.get_parsed_content("network").output == output
    trainer = _workflow(["train.json"], tmp_path / "r", dataset, output_slice="composite", **TRAIN)
    assert trainer.parser.get_parsed_content("network").output == "composite"  # train.json takes it from there


def test_training_resumes_from_its_checkpoint(trained):
    root, dataset = trained
    wf = _workflow(["train.json"], root, dataset, **{**TRAIN, "max_iterations": 5})
    iterations = []
    wf.parser.get_parsed_content("train#trainer").add_event_handler(
        Events.ITERATION_STARTED, lambda engine: iterations.append(engine.state.iteration)
    )
    wf.run()
    assert iterations == [5] and _iterations(root) == 5


def test_inference_pairs_each_mask_with_a_generated_image_and_resumes(trained, tmp_path):
    root, dataset = trained
    masks = _mask_dataset(tmp_path / "masks")
    out = tmp_path / "pairs"
    _workflow(["inference.json"], root, dataset, masks_dir=str(masks), synthetic_dir=str(out)).run()
    summary = validate_dataset(out)
    assert summary.split_sizes["training"] == 2 and summary.shapes == {(16, 16, 12), (16, 16, 10)}
    for i, depth in enumerate((12, 10)):
        image, label = load_nifti(out / "images" / f"synth-{i}.nii.gz"), load_nifti(
            out / "labels" / f"synth-{i}.nii.gz"
        )
        assert image.array.shape == (16, 16, depth)
        np.testing.assert_allclose(image.affine, TINY_AFFINE)
        assert np.array_equal(label.array, slab_label((16, 16, depth)))
    # the real data's MR scale (0..300 in the tiny dataset), not the network's [-1, 1]
    assert summary.intensity_range[1] > 10
    first = out / "images" / "synth-0.nii.gz"
    stamp = first.stat().st_mtime_ns
    _workflow(["inference.json"], root, dataset, masks_dir=str(masks), synthetic_dir=str(out)).run()
    assert first.stat().st_mtime_ns == stamp


def test_bad_input_is_named(trained, tmp_path):
    root, dataset = trained
    masks = _mask_dataset(tmp_path / "other", labels={0: "background", 1: "a", 2: "b", 3: "c", 4: "d"})
    with pytest.raises(Exception) as err:
        _workflow(["inference.json"], root, dataset, masks_dir=str(masks), synthetic_dir=str(tmp_path / "x"))
    assert "differ from the configured labels" in error_chain(err.value)
    with pytest.raises(Exception) as err:
        _workflow(["inference.json"], tmp_path / "no-model", dataset, masks_dir=str(_mask_dataset(tmp_path / "good")))
    assert "model.pt: checkpoint not found" in error_chain(err.value)
    broken = write_tiny_dataset(tmp_path / "broken")
    save_nifti(broken.path(broken.training[0].image), np.zeros((16, 16, 10), np.float32), TINY_AFFINE)
    with pytest.raises(Exception) as err:
        _workflow(["train.json"], tmp_path / "t", broken.root, **TRAIN).run()
    assert "case-0.nii.gz: shape (16, 16, 12) differs from its image" in error_chain(err.value)


def test_verify_net_in_out_on_inference_json_alone(tmp_path):
    # as the zoo runs it (n = 1: the smallest slice the metadata allows), on the bundle as an export leaves it
    result = verify_net_in_out(zoo_bundle("image_vid2vid", tmp_path, DEFAULT_LABELS))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "data shape of network is verified with no error" in result.stdout + result.stderr


@pytest.mark.slow
def test_multi_gpu_train_config_runs_under_torchrun_with_gloo(trained, tmp_path):
    _, dataset = trained
    overrides = {**TINY, **TRAIN, "max_iterations": 2, "dataset_dir": str(dataset), "val_interval": 5}
    result = run_torchrun("image_vid2vid", ["train.json", "multi_gpu_train.json"], tmp_path, **overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _iterations(tmp_path) == 2


def test_training_caches_what_is_deterministic(tmp_path):
    dataset = write_tiny_dataset(tmp_path / "data").root
    check_cached_preprocessing(_workflow(["train.json"], tmp_path / "bundle", dataset, **TRAIN))
