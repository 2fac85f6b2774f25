from __future__ import annotations

import pytest
import torch

from medgen3d.losses.sequence import (
    AdversarialTerms,
    LocalPerceptualLoss,
    WeightedLosses,
    feature_matching_loss,
    flow_smoothness_loss,
    warp_loss,
)


def test_weighted_sum_of_named_terms_and_unknown_names():
    losses = WeightedLosses({"gan": 1.0, "l1": 10.0})
    assert losses.active("l1") and not losses.active("warp")
    total = losses.total({"gan": torch.tensor(0.5), "l1": torch.tensor(0.2), "warp": torch.tensor(99.0)})
    assert total.item() == pytest.approx(2.5)
    with pytest.raises(ValueError, match=r"unknown loss names \['vgg'\]; the registered losses are"):
        WeightedLosses({"vgg": 1.0})


def test_feature_matching_is_zero_for_identical_features_and_l1_otherwise():
    real = [[torch.ones(1, 2, 4, 4), torch.zeros(1, 1, 2, 2)]]
    assert feature_matching_loss(real, real).item() == 0.0
    fake = [[torch.full((1, 2, 4, 4), 3.0), torch.zeros(1, 1, 2, 2)]]
    assert feature_matching_loss(fake, real).item() == pytest.approx(2.0)  # logits (last) are not matched


def test_warp_loss_vanishes_for_the_true_motion():
    previous = torch.zeros(1, 1, 16, 16)
    previous[..., 4:8, 4:8] = 1.0
    current = torch.roll(previous, shifts=2, dims=-1)  # the square moved two columns right
    flow = torch.zeros(1, 2, 16, 16)
    flow[:, 1] = -2.0  # read two columns to the left
    assert warp_loss(flow, previous, current).item() == pytest.approx(0.0, abs=1e-6)
    assert warp_loss(torch.zeros_like(flow), previous, current).item() > 0.01
    assert flow_smoothness_loss(flow).item() == pytest.approx(0.0) and flow_smoothness_loss(torch.randn(1, 2, 8, 8)) > 0


@pytest.mark.parametrize("criterion", ["least_squares", "hinge"])
def test_adversarial_terms_reward_the_right_side(criterion):
    real, fake = [[torch.ones(1, 1, 2, 2)]], [[-torch.ones(1, 1, 2, 2)]]
    terms = AdversarialTerms(criterion)
    # a discriminator that tells real from fake scores better than one fooled the other way round
    assert terms.discriminator(real, fake).item() + 0.2 < terms.discriminator(fake, real).item()
    # the generator gains when its output is judged real
    assert terms.generator(real).item() < terms.generator(fake).item()


def test_unknown_gan_criterion():
    with pytest.raises(ValueError, match="criterion must be"):
        AdversarialTerms("wasserstein")


def test_local_perceptual_loss_uses_only_the_given_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="perceptual-loss network not found"):
        LocalPerceptualLoss(tmp_path / "absent.pt")
    torch.jit.script(torch.nn.Conv2d(1, 2, 3)).save(str(tmp_path / "features.pt"))
    loss = LocalPerceptualLoss(tmp_path / "features.pt")
    x = torch.randn(1, 1, 8, 8)
    assert loss(x, x).item() == 0.0 and loss(x, x + 1).item() > 0
