from __future__ import annotations

import pytest
import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from medgen3d.diffusion.conditions import (
    SubsequenceCondition,
    condition_indicator,
    decode_slices,
    one_hot_slices,
    pack,
)
from medgen3d.diffusion.sampler import SubsequenceSampler, guide, sampling_timesteps
from medgen3d.diffusion.schedulers import RectifiedFlowScheduler
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


def test_trailing_ddim_steps_start_from_pure_noise_and_end_one_stride_above_zero():
    assert sampling_timesteps(DDIMScheduler(1000), 5, "trailing").tolist() == [999, 799, 599, 399, 199]
    assert sampling_timesteps(DDIMScheduler(1000), 3, "trailing").tolist() == [998, 665, 332]
    assert sampling_timesteps(DDIMScheduler(1000), 5).tolist() == [800, 600, 400, 200, 0]
    # the full DDPM chain is the same either way
    assert sampling_timesteps(DDPMScheduler(50), None, "trailing").tolist() == list(range(49, -1, -1))
    with pytest.raises(ValueError, match="timestep_spacing"):
        sampling_timesteps(DDIMScheduler(1000), 5, "middle")


class _StepOracle:
    """An x0-predicting network whose estimate at step ``t`` is ``x_0 (1 - t / 1000)`` (inside DDIM's clipping range),
    so that a sample shows which call it came from; records the steps it is called at."""

    subsequence_length = 4

    def __init__(self, x_0):
        self.x_0, self.steps = x_0, []

    def __call__(self, x, timesteps, position):
        self.steps.append(int(timesteps[0]))
        estimate = self.x_0 * (1 - timesteps.view(-1, 1, 1, 1, 1).float() / 1000)
        return estimate.reshape(self.x_0.shape[0], -1, *self.x_0.shape[-2:])


@torch.no_grad()
@pytest.mark.parametrize("spacing, last", [("leading", 0), ("trailing", 199)])
def test_a_ddim_chain_ends_on_the_estimate_of_its_last_step(spacing, last):
    condition = _batch()
    x_0 = one_hot_slices(torch.randint(0, 3, (2, 4, 8, 8), generator=torch.Generator().manual_seed(1)), 3)
    oracle = _StepOracle(x_0)
    scheduler = DDIMScheduler(1000, schedule="scaled_linear_beta", prediction_type="sample")
    sample = SubsequenceSampler(scheduler, 5, timestep_spacing=spacing).sample(oracle, condition)
    assert oracle.steps[-1] == last and len(oracle.steps) == 5
    # DDIM's step from the last call lands on that call's x_0 estimate (the known slices come back as given)
    assert torch.allclose(sample, condition.impose(x_0 * (1 - last / 1000)), atol=1e-4)


def _rflow(scale=1.0, steps=5):
    return SubsequenceSampler(RectifiedFlowScheduler(1000), steps, guidance_scale=scale)


def test_rflow_timesteps_run_from_pure_noise_in_equal_strides():
    assert sampling_timesteps(RectifiedFlowScheduler(1000), 5).tolist() == [1000, 800, 600, 400, 200]
    assert len(sampling_timesteps(RectifiedFlowScheduler(1000), None)) == 10
    with pytest.raises(ValueError, match="num_inference_steps"):
        sampling_timesteps(RectifiedFlowScheduler(100), 101)


@torch.no_grad()
def test_rflow_sampling_keeps_known_slices_decodes_and_repeats_with_its_seed(network):
    condition = _batch()
    sampler = _rflow(2.0)
    a = sampler.sample(network, condition, torch.Generator().manual_seed(3))
    b = _rflow(2.0).sample(network, condition, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.isfinite(a).all()
    assert torch.equal(a[0, :2], condition.known[0, :2])
    labels = decode_slices(a)
    assert labels.shape == (2, 4, 8, 8) and 0 <= labels.min() and labels.max() < 3
    # 5 steps: item 0 is conditioned (guided: a second, null-condition pass), item 1 is not
    assert sampler.network_evaluations == 5 * 3
    unguided = _rflow(1.0)
    unguided.sample(network, condition, torch.Generator().manual_seed(3))
    assert unguided.network_evaluations == 5 * 2
    # one generator per item: an item's sample does not depend on the rest of its batch
    pair = _rflow(2.0).sample(network, condition, [torch.Generator().manual_seed(s) for s in (4, 5)])
    alone = _rflow(2.0).sample(network, condition.select(torch.tensor([1])), [torch.Generator().manual_seed(5)])
    assert torch.allclose(pair[1:], alone, atol=1e-5)


class _Oracle:
    """Predicts the same clean slices whatever it sees (a perfect x0-predicting network for one target)."""

    subsequence_length = 4

    def __init__(self, x_0):
        self.x_0 = x_0

    def __call__(self, x, timesteps, position):
        return self.x_0.reshape(self.x_0.shape[0], -1, *self.x_0.shape[-2:])


@torch.no_grad()
def test_rflow_with_a_perfect_x0_network_lands_on_its_estimate():
    condition = _batch()
    x_0 = one_hot_slices(torch.randint(0, 3, (2, 4, 8, 8)), 3)
    sample = _rflow(1.0, steps=7).sample(_Oracle(x_0), condition, torch.Generator().manual_seed(0))
    assert torch.allclose(sample, condition.impose(x_0), atol=1e-5)


class _NoiseOracle:
    """Predicts the exact noise of ``x_t`` for one clean target (a perfect epsilon network): ``(x_t - sqrt(a) x_0)
    / sqrt(1 - a)`` with ``a`` the scheduler's cumulative alpha at the step."""

    subsequence_length = 4

    def __init__(self, x_0, scheduler):
        self.x_0, self.alphas = x_0, scheduler.alphas_cumprod

    def __call__(self, x, timesteps, position):
        b, m, k, h, w = self.x_0.shape
        x_t = x[:, : m * k].reshape(b, m, k, h, w)  # the packed input starts with the (imposed) slices
        a = self.alphas[timesteps].view(-1, 1, 1, 1, 1)
        return ((x_t - a.sqrt() * self.x_0) / (1 - a).sqrt()).reshape(b, m * k, h, w)

    def blank(self, x, timesteps, position):
        """A network that learned nothing: noise 0 everywhere."""
        b, m, k, h, w = self.x_0.shape
        return torch.zeros(b, m * k, h, w)


@torch.no_grad()
@pytest.mark.parametrize("steps", [20, 50])
def test_ddim_with_a_perfect_noise_network_rebuilds_the_target(steps):
    # the epsilon target's samples are noise after a CPU budget's training (mask_mcdpm's docs): not the sampler's doing
    condition = _batch()
    x_0 = one_hot_slices(torch.randint(0, 3, (2, 4, 8, 8), generator=torch.Generator().manual_seed(1)), 3)
    scheduler = DDIMScheduler(1000, schedule="linear_beta", prediction_type="epsilon")
    sample = SubsequenceSampler(scheduler, steps).sample(
        _NoiseOracle(x_0, scheduler), condition, torch.Generator().manual_seed(0)
    )
    assert torch.allclose(sample, condition.impose(x_0), atol=1e-4)
    # a network that learned nothing (noise 0) leaves the starting noise, rescaled: no structure at all
    blank = SubsequenceSampler(scheduler, steps).sample(
        _NoiseOracle(x_0, scheduler).blank, condition, torch.Generator().manual_seed(0)
    )
    assert (blank - condition.impose(x_0)).abs().mean() > 0.5
