"""The segmentation_eval bundle's configs on tiny data, and a MONAI Label style load of its inference config."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.transforms import Compose, SaveImaged, ScaleIntensityRanged

from medgen3d.data.dataset import DatasetSpec, read_dataset
from medgen3d.data.intensity import volume_scale
from medgen3d.data.io import load_nifti
from medgen3d.metrics.segmentation import dice_per_structure, mean_present
from medgen3d.zoo.record import read_training_record, write_training_record
from tests.bundles.helpers import (
    BUNDLES,
    error_chain,
    run_bundle_command,
    run_torchrun,
    verify_net_in_out,
    workflow,
    zoo_bundle,
)
from tests.conftest import write_tiny_dataset

CONFIGS = BUNDLES / "segmentation_eval" / "configs"
LABELS = {"0": "background", "1": "slab_1", "2": "slab_2", "3": "slab_3"}
# 3 training cases, 2 crops each per batch of one volume: 3 iterations per pass over the data; labels and modality
# come from the dataset (train.json's defaults)
TRAIN = {"roi_size": [16, 16, 16], "max_iterations": 180, "val_interval": 60, "learning_rate": 0.002}


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
def test_short_training_on_an_easy_dataset_scores_above_075_on_held_out_cases(trained):
    # The held-out case is 12 slices deep and the window 16. Scored on its own voxels it reaches about 0.78 (its
    # misses are at two slab boundaries); when the label was padded with 4 replicated edge slices, the same kind of
    # model scored above 0.8, the bias that padding added.
    root, dataset = trained
    best = json.loads((root / "models" / "model.pt.best.json").read_text())
    assert best["metric"] == "val_mean_dice" and best["value"] > 0.75
    assert (root / "models" / "checkpoint.pt").is_file() and (root / "models" / "model_last.pt").is_file()
    # the held-out validation case, scored by evaluate.json with per-structure Dice
    wf = _train_workflow(root, dataset, ["evaluate.json"], test_split="validation", network_name="unet3d")
    wf.run()
    rows = json.loads((root / "eval" / "evaluation" / "results.json").read_text())
    assert len(rows) == 1 and rows[0]["network"] == "unet3d" and rows[0]["mean"] > 0.75
    # validation (MONAI's MeanDice) and evaluation (Dice per structure) score the best model's case alike
    assert rows[0]["mean"] == pytest.approx(best["value"], abs=1e-4)
    assert set(rows[0]["dice"]) == {"slab_1", "slab_2", "slab_3"}
    assert (root / "eval" / "evaluation" / "results.png").is_file()


def test_training_records_the_labels_and_modality_of_its_data_beside_the_weights(trained):
    root, dataset = trained
    record = read_training_record(root / "models")
    assert record["labels"] == LABELS and record["modality"] == "MR" and record["name"] == read_dataset(dataset).name


def test_evaluation_is_a_named_component_whose_arguments_are_overridden_by_id(trained, tmp_path):
    root, dataset = trained
    # a held-out set with a validation case and no test case: scoring any split but the one set by id would fail
    held_out = write_tiny_dataset(tmp_path / "held-out", splits=(3, 1, 0)).root
    out = tmp_path / "evaluation"
    overrides = {
        "evaluation#test_split": "validation",
        "evaluation#test_sets": {"held-out": str(held_out)},
        "network_name": "unet3d",
        "evaluation_dir": str(out),
    }
    wf = _train_workflow(root, dataset, ["evaluate.json"], **overrides)
    wf.run()
    rows = json.loads((out / "results.json").read_text())
    assert [(r["test_set"], r["network"], r["strategy"]) for r in rows] == [("held-out", "unet3d", "E2-1")]
    assert set(rows[0]["dice"]) == {"slab_1", "slab_2", "slab_3"}


def test_monai_label_style_load_segments_a_volume_in_its_own_geometry(trained, tmp_path):
    root, dataset = trained
    # as MONAI Label's BundleInferTask does: inference.json alone, bundle_root overridden, no metadata references,
    # network_def + models/model.pt, then preprocessing -> inferer(inputs, network) -> postprocessing without SaveImaged
    # (the class count comes from models/training_data.json, which training wrote)
    inference = CONFIGS / "inference.json"
    assert "@_meta_" not in inference.read_text()
    parser = ConfigParser()
    parser.read_config(str(inference))
    parser.update(
        {
            "bundle_root": str(root),
            "device": torch.device("cpu"),
            "roi_size": [16, 16, 16],
            "network_def": ConfigParser.load_config_file(str(CONFIGS / "unet3d.json"))["network_def"],
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
    configs = CONFIGS
    wf = ConfigWorkflow(
        config_file=[str(configs / "inference.json"), str(configs / "unet3d.json")],
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type="infer",
        bundle_root=str(root),
        dataset_dir=str(dataset),
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
    "e2_0_augmented",
    "e2_1_real",
    "e2_2_synthetic",
    "e2_3_mixed",
    "e2_4_finetune_synthetic",
    "e2_5_finetune_mixed",
    "e3_1_target_only",
    "e3_2_from_e2_1",
    "e3_3_from_e2_4",
    "e3_4_from_e2_5",
]


def _first_weights(wf):
    """The network's weights as the first training step starts (filled in when the workflow runs)."""
    from ignite.engine import Events

    network, weights = wf.parser.get_parsed_content("network"), {}
    wf.parser.get_parsed_content("train#trainer").add_event_handler(
        Events.ITERATION_STARTED(once=1),
        lambda e: weights.update({k: v.clone() for k, v in network.state_dict().items()}),
    )
    return weights


def test_every_strategy_overlay_composes_runs_and_starts_from_its_source_or_fresh_weights(tmp_path):
    real = write_tiny_dataset(tmp_path / "real").root
    synthetic = write_tiny_dataset(tmp_path / "synthetic", splits=(4, 0, 0)).root
    target = write_tiny_dataset(tmp_path / "target", splits=(2, 1, 1)).root
    root = tmp_path / "bundle"
    quick = {"max_iterations": 2, "val_interval": 2, "synthetic_dir": str(synthetic), "target_dir": str(target)}
    trained = {}
    for name in STRATEGIES:
        wf = _train_workflow(root, real, [f"strategies/{name}.json"], **quick)
        strategy = wf.parser.get_parsed_content("strategy")
        pretrained = wf.parser.get_parsed_content("pretrained_checkpoint")
        first = _first_weights(wf)
        size = len(wf.parser.get_parsed_content("train#dataset"))
        wf.run()
        assert (root / "models" / strategy / "checkpoint.pt").is_file(), name
        expected_cases = {"E2-2": 4, "E2-3": 7}.get(strategy, 2 if strategy.startswith("E3") else 3)
        assert size == expected_cases, name
        sources = {"E2-4": "E2-2", "E2-5": "E2-3", "E3-2": "E2-1", "E3-3": "E2-4", "E3-4": "E2-5"}
        if strategy in sources:
            # fine-tuning starts from its source's model: the weights before the first step are exactly its weights
            assert pretrained == f"{root}/models/{sources[strategy]}/model.pt", name
            given = torch.load(pretrained, weights_only=True)
            assert all(torch.equal(first[k], given[k]) for k in given), name
        else:
            # from scratch: fresh weights, none of the models trained before it
            assert pretrained is None, name
            for model, weights in trained.items():
                assert not all(torch.equal(first[k], weights[k]) for k in weights), (name, model)
        trained[strategy] = torch.load(root / "models" / strategy / "model.pt", weights_only=True)


def _patches(wf):
    """The training images of every iteration, by epoch: ``{epoch: [(1, *roi) patches]}``."""
    from ignite.engine import Events

    seen = {}
    trainer = wf.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        # after an iteration MONAI holds the batch decollated: one dict per patch
        lambda e: seen.setdefault(e.state.epoch, []).extend(torch.as_tensor(d["image"]).clone() for d in e.state.batch),
    )
    return trainer, seen


def test_the_augmentation_baseline_transforms_every_epoch_anew_and_trains_as_long_as_e2_3(tmp_path):
    real = write_tiny_dataset(tmp_path / "real").root
    synthetic = write_tiny_dataset(tmp_path / "synthetic", splits=(4, 0, 0)).root
    # 3 training volumes, one per step, 2 patches each: an epoch of 3 steps sees every volume once
    quick = {"max_iterations": 6, "val_interval": 3, "synthetic_dir": str(synthetic)}
    steps, distinct = {}, {}
    for name in ("e2_0_augmented", "e2_1_real", "e2_3_mixed"):
        wf = _train_workflow(tmp_path / name, real, [f"strategies/{name}.json"], **quick)
        trainer, seen = _patches(wf)
        wf.run()
        steps[name] = trainer.state.iteration
        # a tiny image holds 4 intensities (one per label); crops, flips, scaling and shifts keep 4, while
        # deformation, bias field and noise make new ones
        distinct[name] = [len(torch.unique(p)) for epoch in seen.values() for p in epoch]
        if name == "e2_0_augmented":
            assert len(seen) == 2 and len(seen[1]) == len(seen[2]) == 6
            assert not any(torch.equal(a, b) for a in seen[1] for b in seen[2])  # every patch of epoch 2 is new
    assert steps["e2_0_augmented"] == steps["e2_3_mixed"] == 6
    assert max(distinct["e2_1_real"]) <= 4
    assert sum(n > 4 for n in distinct["e2_0_augmented"]) > len(distinct["e2_0_augmented"]) // 2


def test_the_augmentation_baseline_suits_the_2d_network_too(tmp_path):
    real = write_tiny_dataset(tmp_path / "real").root
    wf = workflow(
        "segmentation_eval",
        ["train.json", "unet2d.json", "strategies/e2_0_augmented.json"],
        tmp_path / "bundle",
        base=(),
        dataset_dir=str(real),
        slice_size=[16, 16],
    )
    dataset = wf.parser.get_parsed_content("train#dataset")
    patches = [p for _ in range(4) for p in dataset[0]]  # each access draws the random transforms anew
    assert all(tuple(p["image"].shape) == (1, 16, 16) for p in patches)  # deformed volumes, then 2D slices
    # the tiny image holds 4 intensities; deformation, bias field and noise reach the slices and add more
    assert any(len(torch.unique(p["image"])) > 4 for p in patches)


def test_a_case_smaller_than_the_window_scores_only_its_own_voxels(tmp_path):
    # 16 x 16 x 12 cases: a 16^3 window pads 4 slices; a voxel-wise network predicts each voxel from its own value,
    # so the scores with and without padding can only agree if padded voxels are left out
    dataset = write_tiny_dataset(tmp_path / "data", splits=(3, 1, 2)).root
    root = tmp_path / "bundle"
    # logits 2 c x - c^2 pick the class whose centre c is nearest to the voxel's value; the scaled slab intensities
    # are -1, -1/3, 1/3 and 1, so labels 2 and 3 are both predicted as 2: an imperfect segmenter whose Dice
    # would change with every replicated slice of label 3 at the volume's edge
    network = torch.nn.Conv3d(1, 4, 1)
    centres = torch.tensor([-1.0, -1 / 3, 2 / 3, 5.0])
    with torch.no_grad():
        network.weight.copy_(2 * centres.view(4, 1, 1, 1, 1))
        network.bias.copy_(-(centres**2))
    (root / "models").mkdir(parents=True)
    torch.save(network.state_dict(), root / "models" / "model.pt")
    voxelwise = {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": "@num_classes", "kernel_size": 1}
    scores = {}
    for roi in ([16, 16, 16], [16, 16, 8]):
        out = tmp_path / f"evaluation-{roi[2]}"
        wf = _train_workflow(
            root, dataset, ["evaluate.json"], roi_size=roi, network_def=voxelwise, evaluation_dir=str(out)
        )
        wf.run()
        scores[roi[2]] = json.loads((out / "results.json").read_text())[0]
    dice = {k: np.array([np.nan if v is None else v for v in s["dice"].values()]) for k, s in scores.items()}
    # slab_1 is in neither map (n/a), slab_2 partly right, slab_3 never predicted
    assert scores[16]["cases"] == 2 and np.isnan(dice[16][0]) and 0.0 < dice[16][1] < 1.0 and dice[16][2] == 0.0
    np.testing.assert_allclose(dice[16], dice[8], atol=1e-6)
    # and they are the Dice of the cases as saved
    spec = read_dataset(dataset)
    expected = []
    for case in spec.test:
        image, label = (load_nifti(spec.path(p)).array for p in (case.image, case.label))
        x = volume_scale(image, "MR").to_network(torch.from_numpy(image))[None, None]
        with torch.no_grad():
            prediction = network(x).argmax(1)[0].numpy()
        expected.append(dice_per_structure(prediction, label, 4))
    np.testing.assert_allclose(dice[16], mean_present(expected, axis=0), atol=1e-5)


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

    configs = CONFIGS
    files = "[" + ",".join(f"'{configs / c}'" for c in ["inference.json", *overlay]) + "]"
    meta = str(configs / "metadata.json")
    # the record's labels are the metadata's channels, which verify_net_in_out compares the output with
    channel_def = json.loads((configs / "metadata.json").read_text())["network_data_format"]["outputs"]["pred"]
    # as the zoo runs it, on the bundle as an export leaves it (the overlay merged into its inference.json)
    result = verify_net_in_out(zoo_bundle("segmentation_eval", tmp_path / "zoo", channel_def["channel_def"], overlay))
    assert result.returncode == 0 and "verified with no error" in result.stdout + result.stderr, result.stderr[-2000:]
    # the export below runs from tmp_path (bundle_root "."), whose models/ needs the record too
    _write_record(tmp_path / "models", channel_def["channel_def"])
    parser = ConfigParser()
    parser.read_config([str(configs / "inference.json"), *[str(configs / c) for c in overlay]])
    parser["bundle_root"] = str(tmp_path)
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
    real = write_tiny_dataset(tmp_path / "real").root
    root = tmp_path / "bundle"
    configs = CONFIGS
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
        slice_size=[16, 16],
        output_dir=str(tmp_path / "pred"),
    )
    infer.initialize()
    infer.run()
    pred, image = load_nifti(tmp_path / "pred" / "case-0_seg.nii.gz"), load_nifti(real / "images" / "case-0.nii.gz")
    assert pred.array.shape == image.array.shape
    np.testing.assert_allclose(pred.affine, image.affine, atol=1e-4)


# ------------------------------------------------------------------------------------------------------------------
# inference.json needs only MONAI (MONAI Label loads it in-process with nothing else installed)
# ------------------------------------------------------------------------------------------------------------------


def _write_record(ckpt_dir, labels, modality="MR", name="tiny"):
    """A training record as train.json writes it, without training."""
    return write_training_record(DatasetSpec(name, modality, {int(k): v for k, v in labels.items()}), ckpt_dir)


def _strings(content):
    """Every key and string value of a JSON document."""
    if isinstance(content, dict):
        return [s for k, v in content.items() for s in (k, *_strings(v))]
    if isinstance(content, list):
        return [s for v in content for s in _strings(v)]
    return [content] if isinstance(content, str) else []


@pytest.fixture(scope="module")
def swin_bundle(tmp_path_factory):
    """A bundle folder as the zoo ships it: the configs, models/model.pt (an untrained Swin-UNETR, inference.json's
    own network) and models/training_data.json, plus a one-case tiny dataset."""
    base = tmp_path_factory.mktemp("swin")
    dataset = write_tiny_dataset(base / "data", splits=(1, 0, 0)).root
    bundle = base / "segmentation_eval"
    shutil.copytree(BUNDLES / "segmentation_eval", bundle, ignore=shutil.ignore_patterns("models", "eval"))
    _write_record(bundle / "models", LABELS)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser["bundle_root"] = str(bundle)
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    return bundle, dataset


def _assert_segmentations(pred_dir, dataset):
    spec = read_dataset(dataset)
    for case in spec.cases():
        pred = load_nifti(pred_dir / f"{case.case_id}_seg.nii.gz")
        image = load_nifti(spec.path(case.image))
        assert pred.array.shape == image.array.shape and set(np.unique(pred.array)) <= {0, 1, 2, 3}
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-4)


def test_inference_json_has_no_medgen3d_component_or_import():
    content = json.loads((CONFIGS / "inference.json").read_text())
    assert not [s for s in _strings(content) if "medgen3d" in s.lower()]


def test_inference_json_alone_segments_with_the_labels_of_the_training_record(swin_bundle, tmp_path):
    bundle, dataset = swin_bundle
    # only inference.json and the metadata, as MONAI Label loads them: Swin-UNETR with the record's 4 classes
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type="infer",
        bundle_root=str(bundle),
        dataset_dir=str(dataset),
        output_dir=str(tmp_path / "pred"),
        device="$torch.device('cpu')",
    )
    wf.initialize()
    assert wf.parser.get_parsed_content("num_classes") == 4 and wf.parser.get_parsed_content("modality") == "MR"
    wf.run()
    _assert_segmentations(tmp_path / "pred", dataset)


def test_inference_runs_with_the_zoo_command_from_the_bundle_folder_without_medgen3d(swin_bundle, tmp_path):
    bundle, dataset = swin_bundle
    out = tmp_path / "pred"
    result = run_bundle_command(
        bundle,
        ["configs/inference.json"],
        block=["medgen3d"],
        dataset_dir=str(dataset),
        output_dir=str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_segmentations(out, dataset)


def test_inference_without_a_training_record_names_the_missing_file(tmp_path):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser["bundle_root"] = str(tmp_path)
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("network_def")
    assert f"{tmp_path / 'models' / 'training_data.json'}: training record not found" in error_chain(err.value)
    # labels and modality given by hand need no record
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"bundle_root": str(tmp_path), "labels": LABELS, "modality": "CT"})
    assert parser.get_parsed_content("num_classes") == 4
    assert isinstance(parser.get_parsed_content("scale_intensity"), ScaleIntensityRanged)


@pytest.mark.parametrize("config", ["inference.json", "train.json"])
def test_an_unknown_modality_is_refused_naming_it(config):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / config))
    parser["modality"] = "PET"
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("scale_intensity")
    assert "modality 'PET': no intensity scaling for it; set modality to one of ['CT', 'MR']" in error_chain(err.value)


def _scaled(modality, image):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser["modality"] = modality
    return parser.get_parsed_content("scale_intensity")({"image": image.clone()})["image"]


def test_ct_scaling_is_medgen3ds_hu_window():
    # HU well beyond the window on both sides, so the clipping is compared too
    image = torch.empty(1, 40, 36, 20).uniform_(-3000.0, 3000.0)
    expected = volume_scale(image, "CT").to_network(image)
    torch.testing.assert_close(torch.as_tensor(_scaled("CT", image)), expected, atol=1e-6, rtol=0)


def test_mr_scaling_is_medgen3ds_per_volume_percentiles():
    image = torch.randn(1, 40, 36, 20) * 300.0 + 200.0
    image[0, :4] = 5000.0  # bright outliers above the 99.5th percentile, clipped to 1
    expected = volume_scale(image, "MR").to_network(image)
    scaled = torch.as_tensor(_scaled("MR", image))
    assert scaled.dtype == torch.float32 and scaled.min() == -1.0 and scaled.max() == 1.0
    torch.testing.assert_close(scaled, expected, atol=1e-6, rtol=0)
    # above 2M voxels medgen3d takes its percentiles from every k-th voxel (k = voxels // 1M) and MONAI from all of
    # them: close, not equal
    large = torch.randn(1, 136, 128, 128) * 300.0 + 200.0
    difference = (torch.as_tensor(_scaled("MR", large)) - volume_scale(large, "MR").to_network(large)).abs().max()
    assert difference < 5e-3


# ------------------------------------------------------------------------------------------------------------------
# one network definition, in two stand-alone files
# ------------------------------------------------------------------------------------------------------------------

# what train.json and inference.json must define alike: the network, what it is built from, the intensity scaling
# and the sliding window
SHARED_IDS = ["network_def", "feature_size", "roi_size", "num_classes", "intensity", "scale_intensity", "inferer"]


def test_train_and_inference_define_the_network_and_its_inputs_alike():
    train = json.loads((CONFIGS / "train.json").read_text())
    inference = json.loads((CONFIGS / "inference.json").read_text())
    for key in SHARED_IDS:
        assert train[key] == inference[key], key


@pytest.mark.parametrize("overlay", ["unet2d.json", "unet3d.json", "unetr.json"])
def test_a_network_overlay_gives_train_and_inference_the_same_network(overlay):
    expected = json.loads((CONFIGS / overlay).read_text())["network_def"]
    for config in ("train.json", "inference.json"):
        parser = ConfigParser()
        parser.read_config([str(CONFIGS / config), str(CONFIGS / overlay)])
        assert parser.get("network_def") == expected, config


# ------------------------------------------------------------------------------------------------------------------
# train.json: labels and modality from the dataset, or the training record, or given by hand
# ------------------------------------------------------------------------------------------------------------------


def test_labels_set_by_hand_that_differ_from_the_datasets_are_refused_before_the_record_is_written(tmp_path):
    real = write_tiny_dataset(tmp_path / "real").root
    root = tmp_path / "bundle"
    _write_record(root / "models", LABELS, name="earlier")
    with pytest.raises(Exception) as err:
        _train_workflow(root, real, labels={**LABELS, "3": "liver"})
    assert "differ from the configured labels" in error_chain(err.value)
    assert read_training_record(root / "models")["name"] == "earlier"  # the record of the earlier training stays


def test_a_modality_set_by_hand_that_differs_from_the_datasets_is_refused(tmp_path):
    real = write_tiny_dataset(tmp_path / "real").root
    with pytest.raises(Exception) as err:
        _train_workflow(tmp_path / "bundle", real, modality="CT")
    assert "modality 'MR' differs from the configured 'CT'" in error_chain(err.value)


def test_training_without_a_dataset_folder_takes_labels_from_the_record_as_monai_label_does(tmp_path):
    # MONAI Label trains train.json with its own data lists and no dataset folder, on a bundle that holds the record
    # of its earlier training; it overrides only the ids below
    real = write_tiny_dataset(tmp_path / "real")
    root = tmp_path / "bundle"
    _write_record(root / "models", LABELS, modality="MR", name="earlier")
    pairs = [{"image": str(real.path(c.image)), "label": str(real.path(c.label))} for c in real.cases()]
    overrides = {
        "train#dataset#data": pairs[:4],
        "validate#dataset#data": pairs[4:],
        "train#trainer#max_epochs": 1,
        "device": "$torch.device('cpu')",
        "val_interval": 2,
    }
    wf = _train_workflow(root, tmp_path / "no-dataset-here", **overrides)
    assert wf.parser.get_parsed_content("labels") == LABELS and wf.parser.get_parsed_content("num_classes") == 4
    wf.run()
    assert (root / "models" / "model.pt").is_file()
    record = read_training_record(root / "models")  # rewritten from what training used: the record's own values
    assert (record["name"], record["modality"], record["labels"]) == ("earlier", "MR", LABELS)


def test_training_without_a_dataset_folder_or_record_needs_labels_and_modality(tmp_path):
    root = tmp_path / "bundle"
    missing = tmp_path / "no-dataset-here"
    with pytest.raises(Exception) as err:
        _train_workflow(root, missing)
    message = error_chain(err.value)
    assert f"{missing / 'dataset.json'}: not found, and no training record" in message
    assert "set labels, modality and dataset_name" in message
    # given by hand, they need neither, and the record is written from them
    _train_workflow(root, missing, labels=LABELS, modality="CT", dataset_name="by-hand")
    record = read_training_record(root / "models")
    assert (record["name"], record["modality"], record["labels"]) == ("by-hand", "CT", LABELS)
