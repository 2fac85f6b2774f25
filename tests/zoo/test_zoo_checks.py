"""A trained bundle through what model-zoo CI checks (``ci/verify_bundle.py``), after ``medgen3d bundle export``.

Each stage bundle is trained for a few iterations on tiny data, exported, and the exported folder is checked as the
zoo's CI checks a bundle: the required files, the version in the changelog, the metadata schema,
``verify_net_in_out`` and ``ckpt_export`` on ``configs/inference.json`` alone, and the exported ``inference.json``
run alone in a fresh process, which must write a valid dataset.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medgen3d.data.io import load_nifti
from medgen3d.data.validate import validate_dataset
from medgen3d.views import VIEWS
from medgen3d.zoo.export import export_bundles
from tests.bundles.helpers import TINY_NETWORKS, bundle_command, cli_args, verify_net_in_out, workflow
from tests.bundles.test_bundle_layout import schema_path
from tests.conftest import write_tiny_dataset

pytestmark = pytest.mark.slow

TINY = {
    "mask_mcdpm": {
        **TINY_NETWORKS["mask_mcdpm"],
        "max_iterations": 2,
        "batch_size": 2,
        "val_interval": 2,
        "save_interval": 2,
        "preview_depth": 8,
    },
    "image_vid2vid": {
        **TINY_NETWORKS["image_vid2vid"],
        "ndf": 8,
        "discriminator_scales": 1,
        "discriminator_layers": 2,
        "run_length": 4,
        "max_iterations": 1,
        "batch_size": 1,
        "val_interval": 1,
        "save_interval": 1,
    },
    "sdm_refiner": {
        **TINY_NETWORKS["sdm_refiner"],
        "max_iterations": 1,
        "batch_size": 4,
        "val_interval": 1,
        "save_interval": 1,
    },
    # the quality report's slice segmenter, as the workflow trains it: an overlay replaces the bundle's network
    "segmentation_eval": {"slice_size": [16, 16], "max_iterations": 2, "val_interval": 2, "learning_rate": 0.002},
}
# task configs each bundle trains with (the refiner: one run per view)
TRAINING = {
    "mask_mcdpm": [["train.json"]],
    "image_vid2vid": [["train.json"]],
    "sdm_refiner": [["train.json"]] * 3,
    "segmentation_eval": [["train.json", "unet2d.json"]],
}
# spatial size of the packed input ckpt_export traces the network with
TRACE_SIZE = {"mask_mcdpm": [16, 16], "image_vid2vid": [16, 16], "sdm_refiner": [16, 16], "segmentation_eval": [64, 64]}
REQUIRED = ("configs/metadata.json", "LICENSE", "models/model.pt", "configs/inference.json")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("zoo")
    dataset = write_tiny_dataset(base / "data").root
    for bundle, overrides in TINY.items():
        for i, configs in enumerate(TRAINING[bundle]):
            view = {"view": list(VIEWS)[i]} if bundle == "sdm_refiner" else {}
            ckpt_dir = str(base / "models" / bundle)
            wf = workflow(
                bundle,
                configs,
                base / "train" / bundle,
                dataset_dir=str(dataset),
                ckpt_dir=ckpt_dir,
                **overrides,
                **view,
            )
            wf.run()
            wf.finalize()
    export_bundles(base / "models", base / "out", bundles=list(TINY))
    return base / "out", dataset


def _command(folder: Path, *args: str) -> tuple[int, str]:
    result = bundle_command(folder, *args)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("bundle", list(TINY))
def test_exported_bundle_passes_the_zoo_checks(exported, bundle):
    out, dataset = exported
    folder = out / bundle
    assert [name for name in REQUIRED if not (folder / name).is_file()] == []
    metadata = json.loads((folder / "configs" / "metadata.json").read_text())
    assert metadata["version"] in metadata["changelog"]
    assert metadata["required_packages_version"]["medgen3d"]
    schema = schema_path()
    if schema is not None:
        from monai.bundle import verify_metadata

        verify_metadata(meta_file=str(folder / "configs" / "metadata.json"), filepath=str(schema))
    # as the zoo's CI runs them: no dataset given, the labels come from the exported training record
    result = verify_net_in_out(folder)
    status, log = result.returncode, result.stdout + result.stderr
    assert status == 0 and "data shape of network is verified with no error" in log, log[-3000:]
    image = metadata["network_data_format"]["inputs"]["image"]
    shape = [1, image["num_channels"], *TRACE_SIZE[bundle]]
    status, log = _command(
        folder,
        "ckpt_export",
        "network_def",
        "--filepath",
        "models/model.ts",
        "--ckpt_file",
        "models/model.pt",
        "--meta_file",
        "configs/metadata.json",
        "--config_file",
        "configs/inference.json",
        "--use_trace",
        "True",
        "--input_shape",
        repr(shape),
    )
    assert status == 0, log[-3000:]
    traced = torch.jit.load(str(folder / "models" / "model.ts"))
    assert traced(torch.rand(*shape)).shape[1] == metadata["network_data_format"]["outputs"]["pred"]["num_channels"]


@pytest.mark.parametrize("bundle", list(TINY))
def test_exported_inference_json_runs_alone_in_a_fresh_process(exported, bundle, tmp_path):
    out, dataset = exported
    values = {"dataset_dir": str(dataset)}
    values.update(
        {
            "mask_mcdpm": {"num_cases": 2, "num_inference_steps": 2, "synthetic_dir": str(tmp_path / "out")},
            "image_vid2vid": {"masks_dir": str(dataset), "synthetic_dir": str(tmp_path / "out")},
            "sdm_refiner": {"pairs_dir": str(dataset), "refined_dir": str(tmp_path / "out"), "noise_steps": 2},
            "segmentation_eval": {"output_dir": str(tmp_path / "out")},
        }[bundle]
    )
    args = cli_args(values)
    status, log = _command(
        out / bundle, "run", "--config_file", "configs/inference.json", "--bundle_root", str(out / bundle), *args
    )
    assert status == 0, log[-3000:]
    if bundle == "segmentation_eval":  # predictions on each image's own grid, labels of the training record
        image = load_nifti(dataset / "images" / "case-0.nii.gz")
        pred = load_nifti(tmp_path / "out" / "case-0_seg.nii.gz")
        assert pred.array.shape == image.array.shape and set(np.unique(pred.array)) <= set(range(4))
    else:
        summary = validate_dataset(tmp_path / "out")
        # the two masks asked for; else one output per case of the 5-case input
        assert sum(summary.split_sizes.values()) == (2 if bundle == "mask_mcdpm" else 5)
