from __future__ import annotations

import pytest
import torch
from monai.losses import DiceLoss
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, RFlowScheduler

from medgen3d.diffusion.autoregressive import generate_volumes, generation_plan
from medgen3d.diffusion.conditions import condition_indicator, draw_condition, network_prediction, one_hot_slices
from medgen3d.diffusion.sampler import SubsequenceSampler
from medgen3d.diffusion.schedulers import RectifiedFlowScheduler
from medgen3d.diffusion.training import (
    draw_timesteps,
    label_weights,
    masked_slice_mse,
    mcdpm_loss,
    predicted_x0,
    regression_target,
    structure_dice_loss,
    structure_weight,
)
from medgen3d.networks import MultiConditionDiffusionUNet
from tests.conftest import random_mcdpm, slab_label


def test_loss_counts_only_the_generated_slices():
    target = torch.zeros(2, 4, 3, 5, 5)
    prediction = target.clone()
    indicator = torch.stack([condition_indicator("forward", 2, 4), condition_indicator("backward", 1, 4)])
    prediction[0, :2] = 7.0  # errors on known slices only
    prediction[1, 3] = 7.0
    assert masked_slice_mse(prediction, target, indicator) == 0.0
    prediction[0, 2] = 1.0  # one generated slice off by one everywhere: 1 / (number of generated slices)
    assert masked_slice_mse(prediction, target, indicator).item() == pytest.approx(1 / 5)


def test_label_weights_weigh_each_voxel_by_its_true_label():
    labels = torch.tensor([[0, 1], [2, 1]])  # one 2 x 2 slice
    x_0 = torch.nn.functional.one_hot(labels, 3).permute(2, 0, 1)[None, None].float() * 2 - 1  # (1, 1, 3, 2, 2)
    weights = label_weights(x_0, [1.0, 2.0, 5.0])
    assert weights.shape == (1, 1, 1, 2, 2) and weights[0, 0, 0].tolist() == [[1.0, 2.0], [5.0, 2.0]]
    with pytest.raises(ValueError, match=r"one weight per label \(3\), got 2"):
        label_weights(x_0, [1.0, 2.0])
    # in the loss: an error on the label-2 voxel alone counts 5 of the 10 weight units of the slice's 4 voxels
    target = x_0.expand(1, 2, 3, 2, 2).clone()
    prediction = target.clone()
    prediction[0, 1, :, 1, 0] += 1.0  # every channel of voxel (1, 0) of the generated slice off by one
    indicator = torch.tensor([[1.0, 0.0]])
    plain = masked_slice_mse(prediction, target, indicator)
    weighted = masked_slice_mse(prediction, target, indicator, label_weights(target, [1.0, 2.0, 5.0]))
    assert plain.item() == pytest.approx(1 / 4) and weighted.item() == pytest.approx(5 / 10)
    ones = masked_slice_mse(prediction, target, indicator, torch.ones(1, 2, 1, 2, 2))
    assert ones.item() == pytest.approx(plain.item())


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


def test_rflow_path_target_and_x0_estimate_on_a_hand_checked_case():
    # x_0 = 1 and noise = -1 everywhere, t = 5 of T = 10: x_t = 0.5 * 1 + 0.5 * (-1) = 0, velocity x_0 - noise = 2
    x_0, noise, t = torch.ones(1, 2, 3, 4, 4), -torch.ones(1, 2, 3, 4, 4), torch.tensor([5])
    for kind, target in (("v_prediction", 2.0), ("sample", 1.0)):
        scheduler = RectifiedFlowScheduler(10, prediction_type=kind)
        x_t = scheduler.add_noise(x_0, noise, t)
        assert torch.equal(x_t, torch.zeros_like(x_0))
        exact = regression_target(scheduler, x_0, noise, t)
        assert torch.equal(exact, torch.full_like(x_0, target))
        assert torch.allclose(predicted_x0(scheduler, x_t, exact, t), x_0)
    # MONAI's own rectified flow reads a velocity, as its example trains it
    assert torch.equal(regression_target(RFlowScheduler(10), x_0, noise, t), x_0 - noise)


def test_rflow_x0_prediction_steps_along_the_velocity_and_ends_on_the_estimate():
    x_t, x0_estimate = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    scheduler, reference = RectifiedFlowScheduler(1000), RFlowScheduler(1000)
    scheduler.set_timesteps(5)
    reference.set_timesteps(5)
    velocity = (x0_estimate - x_t) / 0.6  # x_0 - noise for this x_t at t/T = 0.6
    assert torch.allclose(scheduler.step(x0_estimate, 600, x_t, 400)[0], reference.step(velocity, 600, x_t, 400)[0])
    last, x0 = scheduler.step(x0_estimate, 200, x_t, 0)
    assert torch.allclose(last, x0_estimate, atol=1e-6) and torch.allclose(x0, x0_estimate, atol=1e-6)
    with pytest.raises(ValueError, match="prediction_type"):
        RectifiedFlowScheduler(1000, prediction_type="epsilon")


def _loss_batch():
    x_0 = one_hot_slices(torch.randint(0, 3, (4, 4, 8, 8)), 3)
    probabilities = {"forward": 0.4, "backward": 0.4, "unconditional": 0.2}
    return x_0, draw_condition(x_0, torch.rand(4), probabilities, (1, 3), torch.Generator().manual_seed(1))


def test_rflow_loss_is_finite_with_the_schedulers_own_step_draw():
    network, (x_0, condition) = random_mcdpm(3, 4), _loss_batch()
    for kind in ("sample", "v_prediction"):
        scheduler = RectifiedFlowScheduler(100, prediction_type=kind)
        terms = mcdpm_loss(network, scheduler, x_0, condition)
        assert torch.isfinite(terms.regression) and torch.isfinite(terms.dice) and terms.total(1.0) > 0
        terms.total(1.0).backward()
    torch.manual_seed(0)
    steps = draw_timesteps(RectifiedFlowScheduler(100, sample_method="logit-normal"), torch.zeros(1000, 2, 3, 4, 4))
    assert steps.dtype == torch.long and 0 <= steps.min() and steps.max() < 100
    # logit-normal puts more steps mid-path: a mean distance from 50 near 17.5, where a uniform draw has 25
    assert (steps - 50).abs().float().mean() < 21


def test_ddpm_loss_is_unchanged_by_the_schedule_choice():
    # the DDPM path draws its steps and noise exactly as before rectified flow existed
    network, (x_0, condition) = random_mcdpm(3, 4), _loss_batch()
    scheduler = DDPMScheduler(100, prediction_type="sample")
    torch.manual_seed(7)
    terms = mcdpm_loss(network, scheduler, x_0, condition)
    torch.manual_seed(7)
    noise = torch.randn_like(x_0)
    t = torch.randint(0, 100, (4,))
    prediction = network_prediction(network, scheduler.add_noise(x_0, noise, t), t, condition)
    assert torch.equal(terms.regression, masked_slice_mse(prediction, x_0, condition.indicator))
    assert torch.equal(terms.dice, structure_dice_loss(prediction, x_0, condition.indicator))


@pytest.mark.parametrize("scheduler", [DDPMScheduler(1000), RectifiedFlowScheduler(1000)])
def test_low_noise_weighting_is_zero_at_the_highest_noise_and_full_at_t_0(scheduler):
    t = torch.tensor([0, 10, 250, 500, 999, 1000 if isinstance(scheduler, RFlowScheduler) else 999])
    weight = structure_weight(scheduler, t, "low_noise")
    assert weight[0].item() == pytest.approx(1.0, abs=1e-3) and weight[-1].item() == pytest.approx(0.0, abs=1e-3)
    assert (weight[:-1] >= weight[1:]).all() and 0.0 < weight[3] < weight[2] < 1.0  # less signal, less weight
    assert torch.equal(structure_weight(scheduler, t, "uniform"), torch.ones(6))
    with pytest.raises(ValueError, match="dice weighting must be one of"):
        structure_weight(scheduler, t, "sigmoid")


def test_weighted_structure_dice_equals_monais_pooled_dice_and_drops_items_of_weight_0():
    torch.manual_seed(0)
    x_0 = one_hot_slices(torch.randint(0, 3, (3, 4, 8, 8)), 3)
    estimate = torch.rand_like(x_0) * 2 - 1
    indicator = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0]])
    generated = indicator < 0.5
    monai = DiceLoss(include_background=False, batch=True)((estimate[generated] + 1) / 2, (x_0[generated] + 1) / 2)
    assert structure_dice_loss(estimate, x_0, indicator).item() == pytest.approx(monai.item(), abs=1e-6)
    assert structure_dice_loss(estimate, x_0, indicator, torch.ones(3)).item() == pytest.approx(monai.item(), abs=1e-6)
    # item 1 at weight 0: the loss is that of items 0 and 2 alone, scaled by the mean weight of the generated slices
    weighted = structure_dice_loss(estimate, x_0, indicator, torch.tensor([1.0, 0.0, 1.0]))
    keep = torch.tensor([True, False, True])
    alone = structure_dice_loss(estimate[keep], x_0[keep], indicator[keep])
    assert weighted.item() == pytest.approx(alone.item() * 5 / 9, abs=1e-6)  # 5 of the 9 generated slices weigh 1
    assert structure_dice_loss(estimate, x_0, indicator, torch.zeros(3)).item() == 0.0


def test_the_loss_weights_its_structure_term_by_noise_level():
    network, (x_0, condition) = random_mcdpm(3, 4), _loss_batch()
    scheduler = DDPMScheduler(100, prediction_type="sample")
    torch.manual_seed(3)
    uniform = mcdpm_loss(network, scheduler, x_0, condition, "uniform")
    torch.manual_seed(3)
    low_noise = mcdpm_loss(network, scheduler, x_0, condition, "low_noise")
    assert torch.equal(uniform.regression, low_noise.regression)  # only the structure term changes
    assert 0.0 < low_noise.dice.item() < uniform.dice.item()


def test_class_weights_reach_the_regression_and_leave_the_structure_term():
    network, (x_0, condition) = random_mcdpm(3, 4), _loss_batch()
    scheduler = DDPMScheduler(100, prediction_type="sample")

    def loss(weights):
        torch.manual_seed(3)  # the same noise and steps for every call
        return mcdpm_loss(network, scheduler, x_0, condition, "low_noise", weights)

    plain, ones, heavy = loss(None), loss([1.0, 1.0, 1.0]), loss([1.0, 1.0, 20.0])
    assert torch.allclose(ones.regression, plain.regression) and torch.allclose(ones.dice, plain.dice)
    # label 2's voxels dominate the weighted mean: it moves towards their own error, away from the plain mean
    assert not torch.allclose(heavy.regression, plain.regression) and torch.allclose(heavy.dice, plain.dice)
    with torch.no_grad():
        torch.manual_seed(3)
        noise, t = torch.randn_like(x_0), draw_timesteps(scheduler, x_0)
        prediction = network_prediction(network, scheduler.add_noise(x_0, noise, t), t, condition)
    only_label_2 = label_weights(x_0, [0.0, 0.0, 1.0])
    expected = masked_slice_mse(prediction, x_0, condition.indicator, only_label_2 * 19 + 1)
    assert heavy.regression.item() == pytest.approx(expected.item(), rel=1e-5)
