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


def test_coordinate_channels_run_from_pixel_centre_to_pixel_centre():
    from medgen3d.networks.mcdpm_unet import coordinate_channels

    grid = coordinate_channels(torch.zeros(3, 5, 4, 8, dtype=torch.float64))
    assert grid.shape == (3, 2, 4, 8) and grid.dtype == torch.float64
    assert grid[0, 0, :, 0].tolist() == pytest.approx([-0.75, -0.25, 0.25, 0.75])  # rows
    assert grid[2, 1, 3, :].tolist() == pytest.approx([-0.875 + 0.25 * i for i in range(8)])  # columns
    assert (grid[:, 0].diff(dim=2) == 0).all() and (grid[:, 1].diff(dim=1) == 0).all()


def test_with_coordinates_the_same_input_gives_an_output_that_depends_on_the_pixels_place(monkeypatch):
    import medgen3d.networks.mcdpm_unet as unet

    torch.manual_seed(0)
    network = MultiConditionDiffusionUNet(3, 4, coordinates=True, **SMALL).eval()
    for parameter in network.parameters():
        if not parameter.any():
            torch.nn.init.normal_(parameter, std=0.1)
    assert network.conv_in.conv.in_channels == 4 * 4 + 2  # the caller still passes 4 * 4 channels
    plain = MultiConditionDiffusionUNet(3, 4, **SMALL)
    assert plain.conv_in.conv.in_channels == 4 * 4
    with pytest.raises(RuntimeError):  # a checkpoint without the channels does not fit
        MultiConditionDiffusionUNet(3, 4, coordinates=True, **SMALL).load_state_dict(plain.state_dict())
    x, t, z = torch.randn(1, 4 * 4, 8, 8), torch.tensor([10]), torch.tensor([0.5])
    with torch.no_grad():
        placed = network(x, t, z)
        monkeypatch.setattr(unet, "coordinate_channels", lambda x: torch.zeros(x.shape[0], 2, *x.shape[2:]))
        unplaced = network(x, t, z)
    assert placed.shape == (1, 4 * 3, 8, 8)
    assert (placed - unplaced).abs().mean() > 1e-4
