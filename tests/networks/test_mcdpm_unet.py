from __future__ import annotations

import pytest
import torch

from medgen3d.networks import MultiConditionDiffusionUNet

SMALL = dict(channels=(8, 16), attention_levels=(False, False), norm_num_groups=8, num_head_channels=8)


@pytest.mark.parametrize("mode", ["concat", "add"])
def test_the_output_depends_on_the_position_in_both_modes(mode):
    torch.manual_seed(0)
    network = MultiConditionDiffusionUNet(3, 4, position_mode=mode, **SMALL).eval()
    for parameter in network.parameters():  # MONAI zero-initialises the output layers: give them weights
        if not parameter.any():
            torch.nn.init.normal_(parameter, std=0.1)
    x, t = torch.randn(2, 4 * 4, 8, 8), torch.tensor([10, 10])
    with torch.no_grad():
        low, high = network(x, t, torch.tensor([0.1, 0.1])), network(x, t, torch.tensor([0.9, 0.9]))
    assert low.shape == (2, 4 * 3, 8, 8)
    assert (low - high).abs().mean() > 1e-4
    # the joint embedding keeps no position between calls
    assert mode == "add" or network.time_embed.position is None


def test_concat_mode_embeds_time_and_position_in_one_mlp_of_both_codes():
    network = MultiConditionDiffusionUNet(3, 4, position_mode="concat", **SMALL)
    assert network.time_embed.mlp[0].in_features == 2 * 8
    assert not any(k.startswith("class_embedding") for k in network.state_dict())
    added = MultiConditionDiffusionUNet(3, 4, position_mode="add", **SMALL)
    with pytest.raises(RuntimeError):  # a checkpoint of one mode does not fit the other
        added.load_state_dict(network.state_dict())


def test_an_unknown_position_mode_is_refused():
    with pytest.raises(ValueError, match="position_mode"):
        MultiConditionDiffusionUNet(3, 4, position_mode="multiply", **SMALL)
