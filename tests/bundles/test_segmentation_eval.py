"""The segmentation_eval bundle's configs on tiny data, and a MONAI Label style load of its inference config."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, SaveImaged

from medgen3d.data.io import load_nifti
from tests.bundles.helpers import BUNDLES, error_chain, run_torchrun, workflow
from tests.conftest import write_tiny_dataset

LABELS = {"0": "background", "1": "slab_1", "2": "slab_2", "3": "slab_3"}
# 3 training cases, 2 crops each per batch of one volume: 3 iterations per pass over the data
TRAIN = {"roi_size": [16, 16, 16], "max_iterations": 180, "val_interval": 60, "learning_rate": 0.002, "labels": LABELS}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("seg")
    dataset = write_tiny_dataset(base / "data").root
    # train.json is self-contained (MONAI Label reads it alone), so the workflow helper's common.json is not used
    wf = _train_workflow(base / "bundle", dataset)
    wf.run()
    wf.finalize()
    return base / "bundle", dataset


def _train_workflow(root, dataset, extra=(), **overrides):
    # train.json stands alone (MONAI Label reads it alone): no common.json underneath
    return workflow(
        "segmentation_eval",
        ["train.json", "unet3d.json", *extra],
        root,
        base=(),
        dataset_dir=str(dataset),
        **{**TRAIN, **overrides},
    )


@pytest.mark.slow
def test_short_training_on_an_easy_dataset_scores_above_08_on_held_out_cases(trained):
    root, dataset = trained
    best = json.loads((root / "models" / "model.pt.best.json").read_text())
    assert best["metric"] == "val_mean_dice" and best["value"] > 0.8
    assert (root / "models" / "checkpoint.pt").is_file() and (root / "models" / "model_last.pt").is_file()
    # the held-out validation case, scored by evaluate.json with per-structure Dice
    wf = _train_workflow(root, dataset, ["evaluate.json"], test_split="validation", network_name="unet3d")
    wf.run()
    rows = json.loads((root / "eval" / "evaluation" / "results.json").read_text())
    assert len(rows) == 1 and rows[0]["network"] == "unet3d" and rows[0]["mean"] > 0.8
    assert set(rows[0]["dice"]) == {"slab_1", "slab_2", "slab_3"}
    assert (root / "eval" / "evaluation" / "results.png").is_file()


def test_monai_label_style_load_segments_a_volume_in_its_own_geometry(trained, tmp_path):
    root, dataset = trained
    # as MONAI Label's BundleInferTask does: inference.json alone, bundle_root overridden, no metadata references,
    # network_def + models/model.pt, then preprocessing -> inferer(inputs, network) -> postprocessing without SaveImaged
    inference = BUNDLES / "segmentation_eval" / "configs" / "inference.json"
    assert "@_meta_" not in inference.read_text()
    parser = ConfigParser()
    parser.read_config(str(inference))
    parser.update(
        {
            "bundle_root": str(root),
            "device": torch.device("cpu"),
            "num_classes": 4,
            "roi_size": [16, 16, 16],
            "network_def": ConfigParser.load_config_file(
                str(BUNDLES / "segmentation_eval" / "configs" / "unet3d.json")
            )["network_def"],
        }
    )
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
    network.eval()
    pre = parser.get_parsed_content("preprocessing")
    inferer = parser.get_parsed_content("inferer")
    post = Compose([t for t in parser.get_parsed_content("postprocessing").transforms if not isinstance(t, SaveImaged)])
    data = pre({"image": str(dataset / "images" / "case-3.nii.gz")})
    with torch.no_grad():
        data["pred"] = inferer(data["image"][None], network)[0]
    pred = post(data)["pred"]
    source = load_nifti(dataset / "images" / "case-3.nii.gz")
    assert tuple(pred.shape[1:]) == source.array.shape
    np.testing.assert_allclose(pred.affine, source.affine, atol=1e-4)
    truth = load_nifti(dataset / "labels" / "case-3.nii.gz").array
    assert (pred[0].numpy() == truth).mean() > 0.9


def test_inference_config_writes_segmentations_with_the_input_geometry(trained, tmp_path):
    root, dataset = trained
    from monai.bundle import ConfigWorkflow

    configs = BUNDLES / "segmentation_eval" / "configs"
    wf = ConfigWorkflow(
        config_file=[str(configs / "inference.json"), str(configs / "unet3d.json")],
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type="infer",
        bundle_root=str(root),
        dataset_dir=str(dataset),
        num_classes=4,
        roi_size=[16, 16, 16],
        output_dir=str(tmp_path / "pred"),
    )
    wf.initialize()
    wf.run()
    for case in range(5):
        pred = load_nifti(tmp_path / "pred" / f"case-{case}_seg.nii.gz")
        image = load_nifti(dataset / "images" / f"case-{case}.nii.gz")
        assert pred.array.shape == image.array.shape and set(np.unique(pred.array)) <= {0, 1, 2, 3}
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-4)


def test_a_test_set_with_other_labels_is_refused(trained, tmp_path):
    root, dataset = trained
    other = write_tiny_dataset(tmp_path / "other")
    content = json.loads(other.path("dataset.json").read_text())
    content["labels"]["3"] = "liver"
    other.path("dataset.json").write_text(json.dumps(content))
    wf = _train_workflow(root, dataset, ["evaluate.json"], test_sets={"other": str(other.root)})
    with pytest.raises(Exception) as err:
        wf.run()
    assert "differ from the configured labels" in error_chain(err.value)


STRATEGIES = [
    "e2_1_real",
    "e2_2_synthetic",
    "e2_3_mixed",
    "e2_4_finetune_synthetic",
    "e2_5_finetune_mixed",
    "e3_transfer",
]


def test_every_strategy_overlay_composes_runs_and_fine_tunes_from_its_checkpoint(tmp_path):
    from ignite.engine import Events

    real = write_tiny_dataset(tmp_path / "real").root
    synthetic = write_tiny_dataset(tmp_path / "synthetic", splits=(4, 0, 0)).root
    target = write_tiny_dataset(tmp_path / "target", splits=(2, 1, 1)).root
    root = tmp_path / "bundle"
    quick = {"max_iterations": 2, "val_interval": 2, "synthetic_dir": str(synthetic), "target_dir": str(target)}
    for name in STRATEGIES:
        wf = _train_workflow(root, real, [f"strategies/{name}.json"], **quick)
        strategy = wf.parser.get_parsed_content("strategy")
        pretrained = wf.parser.get_parsed_content("pretrained_checkpoint")
        trainer = wf.parser.get_parsed_content("train#trainer")
        network = wf.parser.get_parsed_content("network")
        first_weights = {}
        trainer.add_event_handler(
            Events.ITERATION_STARTED(once=1),
            lambda e: first_weights.update({k: v.clone() for k, v in network.state_dict().items()}),
        )
        size = len(wf.parser.get_parsed_content("train#dataset"))
        wf.run()
        assert (root / "models" / strategy / "checkpoint.pt").is_file(), name
        expected_cases = {"E2-1": 3, "E2-2": 4, "E2-3": 7, "E2-4": 3, "E2-5": 3, "E3": 2}[strategy]
        assert size == expected_cases, name
        if pretrained is not None:
            # fine-tuning starts from the given model: the weights before the first step are exactly its weights
            given = torch.load(pretrained, weights_only=True)
            assert all(torch.equal(first_weights[k], given[k]) for k in given), name


def test_fine_tuning_without_its_checkpoint_is_a_clear_error(tmp_path):
    real = write_tiny_dataset(tmp_path / "real").root
    with pytest.raises(Exception) as err:
        _train_workflow(tmp_path / "bundle", real, ["strategies/e2_4_finetune_synthetic.json"], max_iterations=1)
    assert "E2-2/model.pt: checkpoint not found" in error_chain(err.value)


@pytest.mark.slow
def test_multi_gpu_train_config_runs_under_torchrun_with_gloo(tmp_path):
    real = write_tiny_dataset(tmp_path / "real").root
    overrides = {**TRAIN, "max_iterations": 2, "val_interval": 2, "dataset_dir": str(real)}
    configs = ["train.json", "unet3d.json", "multi_gpu_train.json"]
    result = run_torchrun("segmentation_eval", configs, tmp_path / "bundle", base=(), **overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "bundle" / "models" / "model.pt").is_file()


@pytest.mark.parametrize("overlay", [[], ["unetr.json"]], ids=["swin_unetr", "unetr"])
def test_networks_verify_and_export(tmp_path, overlay):
    import subprocess
    import sys

    configs = BUNDLES / "segmentation_eval" / "configs"
    files = "[" + ",".join(f"'{configs / c}'" for c in ["inference.json", *overlay]) + "]"
    meta = str(configs / "metadata.json")
    verify = [
        sys.executable,
        "-m",
        "monai.bundle",
        "verify_net_in_out",
        "network_def",
        "--meta_file",
        meta,
        "--config_file",
        files,
        "--device",
        "cpu",
    ]
    result = subprocess.run(verify, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0 and "verified with no error" in result.stdout + result.stderr, result.stderr[-2000:]
    parser = ConfigParser()
    parser.read_config([str(configs / "inference.json"), *[str(configs / c) for c in overlay]])
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "model.pt")
    export = [
        sys.executable,
        "-m",
        "monai.bundle",
        "ckpt_export",
        "network_def",
        "--filepath",
        str(tmp_path / "model.ts"),
        "--ckpt_file",
        str(tmp_path / "model.pt"),
        "--meta_file",
        meta,
        "--config_file",
        files,
        "--use_trace",
        "True",
        "--input_shape",
        "[1, 1, 64, 64, 64]",
    ]
    result = subprocess.run(export, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    traced = torch.jit.load(str(tmp_path / "model.ts"))
    assert traced(torch.zeros(1, 1, 64, 64, 64)).shape == (1, 5, 64, 64, 64)


def test_unet2d_overlay_trains_on_slices_and_segments_volumes_slice_by_slice(tmp_path):
    from monai.bundle import ConfigWorkflow

    real = write_tiny_dataset(tmp_path / "real").root
    root = tmp_path / "bundle"
    configs = BUNDLES / "segmentation_eval" / "configs"
    wf = ConfigWorkflow(
        config_file=[str(configs / "train.json"), str(configs / "unet2d.json")],
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type="train",
        bundle_root=str(root),
        dataset_dir=str(real),
        **{
            **{k: v for k, v in TRAIN.items() if k != "roi_size"},
            "slice_size": [16, 16],
            "max_iterations": 6,
            "val_interval": 3,
        },
    )
    wf.initialize()
    sample = wf.parser.get_parsed_content("train#dataset")[0][0]
    assert tuple(sample["image"].shape) == (1, 16, 16)  # the network sees 2D slices
    wf.run()
    infer = ConfigWorkflow(
        config_file=[str(configs / "inference.json"), str(configs / "unet2d.json")],
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type="infer",
        bundle_root=str(root),
        dataset_dir=str(real),
        num_classes=4,
        slice_size=[16, 16],
        output_dir=str(tmp_path / "pred"),
    )
    infer.initialize()
    infer.run()
    pred, image = load_nifti(tmp_path / "pred" / "case-0_seg.nii.gz"), load_nifti(real / "images" / "case-0.nii.gz")
    assert pred.array.shape == image.array.shape
    np.testing.assert_allclose(pred.affine, image.affine, atol=1e-4)
