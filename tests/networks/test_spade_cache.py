from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks.spade_norm import SPADE
from monai.networks.nets import SPADEDiffusionModelUNet

from medgen3d.networks.spade_cache import reuse_mask_modulation


def _network() -> SPADEDiffusionModelUNet:
    torch.manual_seed(0)
    network = SPADEDiffusionModelUNet(
        2, 1, 1, label_nc=3, channels=(8, 16), attention_levels=(False, False), num_res_blocks=1, norm_num_groups=4,
        num_head_channels=8, spade_intermediate_channels=8,
    ).eval()
    for p in network.parameters():  # MONAI zero-initialises the output layer; random weights make outputs differ
        torch.nn.init.normal_(p, std=0.1)
    return network


def _masks(seed: int) -> torch.Tensor:
    labels = torch.randint(0, 3, (2, 12, 8), generator=torch.Generator().manual_seed(seed))
    return F.one_hot(labels, 3).permute(0, 3, 1, 2).float()


def _count_mask_branch_calls(network) -> list[int]:
    calls = [0]
    for block in network.modules():
        if isinstance(block, SPADE):
            block.mlp_shared.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@torch.no_grad()
def test_outputs_are_unchanged_and_each_mask_is_modulated_once_per_block():
    network = _network()
    blocks = sum(isinstance(m, SPADE) for m in network.modules())
    x, seg, other = torch.randn(2, 1, 12, 8), _masks(0), _masks(1)
    expected = [network(x, torch.full((2,), t), seg=seg) for t in (5, 4, 3)]
    expected_other = network(x, torch.full((2,), 2), seg=other)
    calls = _count_mask_branch_calls(network)
    with reuse_mask_modulation(network):
        got = [network(x, torch.full((2,), t), seg=seg) for t in (5, 4, 3)]
        assert calls[0] == blocks  # three steps, one modulation per block
        got_other = network(x, torch.full((2,), 2), seg=other)  # another mask is not served the first one's
        assert calls[0] == 2 * blocks
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
    assert torch.equal(got_other, expected_other)


@torch.no_grad()
def test_the_network_is_restored_on_exit_even_after_an_error():
    network = _network()
    x, seg = torch.randn(2, 1, 12, 8), _masks(0)
    try:
        with reuse_mask_modulation(network):
            network(x, torch.full((2,), 1), seg=seg)
            raise RuntimeError("interrupted")
    except RuntimeError:
        pass
    assert all("forward" not in vars(m) and not hasattr(m, "_modulation_cache") for m in network.modules())
    calls = _count_mask_branch_calls(network)
    network(x, torch.full((2,), 1), seg=seg)
    network(x, torch.full((2,), 1), seg=seg)
    assert calls[0] == 2 * sum(isinstance(m, SPADE) for m in network.modules())  # computed every call again
