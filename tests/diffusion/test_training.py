from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from medgen3d.diffusion.autoregressive import generate_volumes, generation_plan
from medgen3d.diffusion.conditions import condition_indicator, draw_condition, one_hot_slices
from medgen3d.diffusion.sampler import SubsequenceSampler
from medgen3d.diffusion.training import (
    masked_slice_mse,
    mcdpm_loss,
    predicted_x0,
    regression_target,
    structure_dice_loss,
)
from medgen3d.networks import MultiConditionDiffusionUNet
from tests.conftest import slab_label


def test_loss_counts_only_the_generated_slices():
    target = torch.zeros(2, 4, 3, 5, 5)
    prediction = target.clone()
    indicator = torch.stack([condition_indicator("forward", 2, 4), condition_indicator("backward", 1, 4)])
    prediction[0, :2] = 7.0  # errors on known slices only
    prediction[1, 3] = 7.0
    assert masked_slice_mse(prediction, target, indicator) == 0.0
    prediction[0, 2] = 1.0  # one generated slice off by one everywhere: 1 / (number of generated slices)
    assert masked_slice_mse(prediction, target, indicator).item() == pytest.approx(1 / 5)


def test_regression_target_follows_the_prediction_type():
    x_0, noise, t = torch.randn(2, 3), torch.randn(2, 3), torch.tensor([10, 500])
    assert torch.equal(regression_target(DDPMScheduler(1000, prediction_type="epsilon"), x_0, noise, t), noise)
    assert torch.equal(regression_target(DDPMScheduler(1000, prediction_type="sample"), x_0, noise, t), x_0)
    v_scheduler = DDPMScheduler(1000, prediction_type="v_prediction")
    assert torch.allclose(regression_target(v_scheduler, x_0, noise, t), v_scheduler.get_velocity(x_0, noise, t))


def _foreground_accuracy(network, reference, m):
    sampler = SubsequenceSampler(DDIMScheduler(100, prediction_type="sample"), 10)
    depth = reference.shape[0]
    plans = [generation_plan(depth, start, m, 1) for start in (0, 4, 9, 2)]
    volumes = generate_volumes(
        network.eval(),
        sampler,
        plans,
        [depth] * 4,
        4,
        tuple(reference.shape[1:]),
        generator=torch.Generator().manual_seed(0),
    )
    foreground = reference > 0
    return torch.stack([(v == reference)[foreground].float().mean() for v in volumes]).mean().item()


@pytest.mark.slow
def test_short_training_learns_a_layout_that_depends_on_slice_position():
    # label k fills the k-th third of the slices: only the relative position tells which label a slice holds
    torch.manual_seed(0)
    reference = torch.from_numpy(slab_label((8, 8, 12))).long().permute(2, 0, 1)
    m, depth = 3, 12
    network = MultiConditionDiffusionUNet(
        4, m, channels=(16, 32), attention_levels=(False, False), norm_num_groups=8, num_head_channels=8
    )
    untrained = _foreground_accuracy(network, reference, m)
    scheduler = DDPMScheduler(100, prediction_type="sample")
    optimizer = torch.optim.AdamW(network.parameters(), lr=3e-3)
    probabilities = {"forward": 0.4, "backward": 0.4, "unconditional": 0.2}
    for _ in range(200):
        network.train()
        starts = torch.randint(0, depth - m + 1, (8,))
        x_0 = one_hot_slices(torch.stack([reference[s : s + m] for s in starts]), 4)
        condition = draw_condition(x_0, starts.float() / depth, probabilities, (1, 2))
        loss = mcdpm_loss(network, scheduler, x_0, condition).regression
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    trained = _foreground_accuracy(network, reference, m)
    assert untrained < 0.2  # an untrained network puts background everywhere
    assert trained > 0.5 and trained > untrained + 0.4


def test_structure_dice_is_zero_for_a_perfect_estimate_and_grows_with_a_wrong_small_structure():
    # 4 slices of 8x8: a large structure 1 and a 2x2 structure 2 on every slice
    labels = torch.zeros(1, 4, 8, 8, dtype=torch.long)
    labels[..., :, :4] = 1
    labels[..., 6:, 6:] = 2
    x_0 = one_hot_slices(labels, 3)
    indicator = condition_indicator("forward", 1, 4)[None]
    assert structure_dice_loss(x_0.clone(), x_0, indicator).item() == pytest.approx(0.0, abs=1e-6)
    # a structure drawn as background on the generated slices: the Dice term charges the small one as much as the
    # large one (each is one of two structures), where the voxel-weighted regression charges it 8 times less
    missing = {}
    for value in (1, 2):
        wrong = labels.clone()
        wrong[wrong == value] = 0
        estimate = one_hot_slices(wrong, 3)
        missing[value] = (
            structure_dice_loss(estimate, x_0, indicator).item(),
            masked_slice_mse(estimate, x_0, indicator).item(),
        )
    assert missing[2][0] == pytest.approx(0.5, abs=1e-3) and missing[1][0] == pytest.approx(0.5, abs=1e-3)
    assert missing[2][1] == pytest.approx(missing[1][1] / 8)
    wrong = labels.clone()
    wrong[..., 6:, 6:] = 0
    # errors on the given (known) slice are not scored
    known_only = x_0.clone()
    known_only[:, 0] = one_hot_slices(wrong, 3)[:, 0]
    assert structure_dice_loss(known_only, x_0, indicator).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("kind", ["epsilon", "sample", "v_prediction"])
def test_the_x0_estimate_inverts_the_forward_process_for_every_prediction_type(kind):
    scheduler = DDPMScheduler(1000, prediction_type=kind)
    x_0, noise, t = torch.randn(3, 2, 4), torch.randn(3, 2, 4), torch.tensor([1, 400, 999])
    x_t = scheduler.add_noise(x_0, noise, t)
    exact = regression_target(scheduler, x_0, noise, t)  # what a perfect network outputs
    assert torch.allclose(predicted_x0(scheduler, x_t, exact, t), x_0, atol=1e-3)
