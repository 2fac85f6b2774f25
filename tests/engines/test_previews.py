from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from medgen3d.data.io import SettingError, save_nifti
from medgen3d.diffusion.sampler import SubsequenceSampler
from medgen3d.engines.mcdpm_trainer import MCDPMTrainer
from medgen3d.engines.previews import MaskSamplePreview
from medgen3d.metrics.anatomy import slice_change_rate
from tests.conftest import random_mcdpm, slab_label


def test_mask_previews_log_the_convergence_measures_against_the_reference_masks(tmp_path):
    reference = tmp_path / "label.nii.gz"
    label = slab_label((8, 8, 12))
    save_nifti(reference, label.astype(np.int16), np.eye(4))
    sampler = SubsequenceSampler(DDIMScheduler(100, prediction_type="sample"), num_inference_steps=3)
    labels = {0: "background", 1: "a", 2: "b", 3: "c"}
    preview = MaskSamplePreview(random_mcdpm(4, 4), sampler, tmp_path, labels, 8, (8, 8), reference=[reference])
    for iteration in (5, 10):
        preview(types.SimpleNamespace(state=types.SimpleNamespace(iteration=iteration)))
    lines = [json.loads(line) for line in (tmp_path / "previews" / "convergence.jsonl").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [5, 10]  # one line per preview, appended
    rate = lines[0]["slice_change_rate"]
    assert rate["real"] == pytest.approx(slice_change_rate(label)) and 0 <= rate["synthetic"] <= 1
    assert set(lines[0]["seed_agreement_gap"]) == {"a", "b", "c"}
    assert lines[0] == lines[1] | {"iteration": 5}  # same weights, same seeds: the same measures
    assert (tmp_path / "previews" / "iteration-000010.png").is_file()


def test_the_structure_term_is_refused_with_noise_prediction():
    label = torch.from_numpy(slab_label((8, 8, 12))).long()
    batch = [{"label": label[None, ..., :4], "position": torch.tensor(0.0)}]
    network = random_mcdpm(4, 4)
    arguments = ("cpu", 1, batch, network, torch.optim.AdamW(network.parameters()))
    probabilities = {"forward": 0.5, "backward": 0.5}
    with pytest.raises(SettingError, match="dice_weight: must be 0 with prediction_type 'epsilon'"):
        MCDPMTrainer(*arguments, DDPMScheduler(100, prediction_type="epsilon"), 4, probabilities, (2, 3), 1.0)
    MCDPMTrainer(*arguments, DDPMScheduler(100, prediction_type="epsilon"), 4, probabilities, (2, 3), 0.0)
    with pytest.raises(SettingError, match="dice_weighting: must be one of"):
        sample = DDPMScheduler(100, prediction_type="sample")
        MCDPMTrainer(*arguments, sample, 4, probabilities, (2, 3), 1.0, dice_weighting="high")
    for weights in ([1.0, 2.0], [1.0, 1.0, 0.0, 1.0]):
        with pytest.raises(SettingError, match=r"class_weights: must be 4 positive weights, one per label"):
            MCDPMTrainer(
                *arguments,
                DDPMScheduler(100, prediction_type="sample"),
                4,
                probabilities,
                (2, 3),
                1.0,
                class_weights=weights,
            )
