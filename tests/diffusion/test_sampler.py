from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from medgen3d.diffusion.conditions import SubsequenceCondition, condition_indicator, one_hot_slices, pack
from medgen3d.diffusion.sampler import SubsequenceSampler, guide, sampling_timesteps
from tests.conftest import random_mcdpm


@pytest.fixture
def network():
    return random_mcdpm(3, 4)


def _batch():
    x_known = one_hot_slices(torch.randint(0, 3, (2, 4, 8, 8)), 3)
    indicator = torch.stack([condition_indicator("forward", 2, 4), condition_indicator("unconditional", 0, 4)])
    return SubsequenceCondition(x_known, indicator, torch.tensor([0.2, 0.5]))


def test_guide_is_linear_and_scale_one_is_the_conditional():
    u, c = torch.randn(5), torch.randn(5)
    assert torch.equal(guide(u, c, 1.0), c)
    assert torch.allclose(guide(u, c, 0.0), u)
    assert torch.allclose(guide(u, c, 3.0), u + 3 * (c - u))


@torch.no_grad()
def test_guidance_scale_one_gives_the_conditional_prediction_and_other_scales_extrapolate(network):
    condition = _batch()
    x_t, t = torch.randn_like(condition.known), torch.full((2,), 40)
    conditional = network(pack(x_t, condition), t, condition.position).reshape(2, 4, 3, 8, 8)
    assert torch.equal(_sampler(1.0).predict(network, x_t, condition, 40), conditional)
    sampler = _sampler(3.0)
    guided = sampler.predict(network, x_t, condition, 40, torch.Generator().manual_seed(0))
    # the null condition: no indicator, known slices noised to step t with the same random draw
    noise = torch.randn(condition.known.shape, generator=torch.Generator().manual_seed(0))
    null = pack(x_t, condition._replace(known=sampler.scheduler.add_noise(condition.known, noise, t)))
    null[:, -4:] = 0.0
    unconditional = network(null, t, condition.position).reshape(2, 4, 3, 8, 8)
    assert torch.allclose(guided[0], unconditional[0] + 3.0 * (conditional[0] - unconditional[0]), atol=1e-5)
    # an unconditional item has nothing to guide
    assert torch.equal(guided[1], conditional[1])
    assert sampler.network_evaluations == 3  # both items conditioned, plus one null-condition pass


def _sampler(scale):
    return SubsequenceSampler(DDIMScheduler(100, prediction_type="sample"), 5, guidance_scale=scale)


@torch.no_grad()
def test_known_slices_come_back_exactly_and_same_seed_same_sample(network):
    condition = _batch()
    a = _sampler(2.0).sample(network, condition, torch.Generator().manual_seed(3))
    b = _sampler(2.0).sample(network, condition, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.equal(a[0, :2], condition.known[0, :2])
    assert not torch.equal(a[1, :2], condition.known[1, :2])


def test_ddim_timesteps_lie_on_the_stride_step_expects_and_ddpm_runs_its_full_chain():
    assert sampling_timesteps(DDIMScheduler(1000), 10).tolist() == list(range(900, -1, -100))
    assert sampling_timesteps(DDPMScheduler(50), None).tolist() == list(range(49, -1, -1))
    with pytest.raises(ValueError, match="full chain"):
        sampling_timesteps(DDPMScheduler(1000), 50)
