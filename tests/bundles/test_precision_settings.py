"""Every trainer and generating step of the bundles takes the top-level ``precision`` ("auto": bfloat16 autocast on
CUDA, float32 on a CPU), each config standing alone."""

from __future__ import annotations

import json

import pytest
import torch
from monai.bundle import ConfigParser

from tests.bundles.helpers import BUNDLES

# bundle, config, the entry that runs the networks
USERS = [
    ("mask_mcdpm", "inference.json", "synthesis"),
    ("mask_mcdpm", "train.json", "train#trainer"),
    ("image_vid2vid", "inference.json", "synthesis"),
    ("image_vid2vid", "train.json", "train#trainer"),
    ("sdm_refiner", "inference.json", "refinement"),
    ("sdm_refiner", "train.json", "train#trainer"),
]


@pytest.mark.parametrize("bundle, config, user", USERS)
def test_each_config_sets_precision_and_passes_it_on(bundle, config, user):
    content = json.loads((BUNDLES / bundle / "configs" / config).read_text())
    assert content["precision"] == "auto"
    entry = content
    for key in user.split("#"):
        entry = entry[key]
    assert entry["precision"] == "@precision"


def test_mask_completion_passes_precision_on():
    content = json.loads((BUNDLES / "mask_mcdpm" / "configs" / "complete.json").read_text())
    assert content["completion"]["precision"] == "@precision"  # complete.json overlays inference.json


@pytest.mark.parametrize(
    "device, precision, amp",
    [
        ("cpu", "auto", (False, {})),
        ("cpu", "bf16", (False, {})),  # MONAI's engines autocast on CUDA only
        ("cuda", "bf16", (True, {"dtype": torch.bfloat16})),
        ("cuda", "fp32", (False, {})),
    ],
)
def test_segmentation_trainer_and_validator_take_monai_amp_from_precision(device, precision, amp):
    parser = ConfigParser()
    parser.read_config(str(BUNDLES / "segmentation_eval" / "configs" / "train.json"))
    assert parser["precision"] == "auto"
    parser.update({"device": f"$torch.device('{device}')", "precision": precision})
    assert tuple(parser.get_parsed_content("amp_settings")) == amp
    for engine in ("train#trainer", "validate#evaluator"):
        assert (parser[f"{engine}#amp"], parser[f"{engine}#amp_kwargs"]) == (
            "$@amp_settings.amp",
            "$@amp_settings.kwargs",
        )
