from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.networks.schedulers import DDPMScheduler

from medgen3d.diffusion.refiner import SemanticRefiner, refine_volume
from medgen3d.engines.sdm_trainer import SemanticDiffusionTrainer
from medgen3d.views import VIEWS
from tests.conftest import slab_label, tiny_spade


def _network(k=4):
    torch.manual_seed(0)
    return tiny_spade(k, channels=(16, 32), spade_channels=16)


def test_zero_noise_steps_return_the_input_exactly():
    refiner = SemanticRefiner(DDPMScheduler(1000), noise_steps=0)
    x, seg = torch.rand(3, 1, 8, 8) * 2 - 1, torch.zeros(3, 4, 8, 8)
    assert torch.equal(refiner.refine_slices(_network(), x, seg), x)
    image, label = torch.rand(8, 8, 6), torch.zeros(8, 8, 6, dtype=torch.long)
    assert torch.equal(refine_volume(dict.fromkeys(VIEWS, _network()), refiner, image, label, 4), image)


def test_the_result_is_the_mean_of_the_views(monkeypatch):
    refiner = SemanticRefiner(DDPMScheduler(1000), noise_steps=5)
    offsets = iter([0.1, 0.2, 0.6])
    # a refiner that leaves every view unchanged gives back the volume; view offsets average
    monkeypatch.setattr(refiner, "refine_slices", lambda net, x, seg, gen: x)
    image, label = torch.rand(8, 8, 6) * 0.5, torch.zeros(8, 8, 6, dtype=torch.long)
    networks = dict.fromkeys(VIEWS, _network())
    assert torch.allclose(refine_volume(networks, refiner, image, label, 4), image)
    monkeypatch.setattr(refiner, "refine_slices", lambda net, x, seg, gen: x + next(offsets))
    assert torch.allclose(refine_volume(networks, refiner, image, label, 4), image + 0.3)


def test_intensities_beyond_the_networks_range_keep_their_excess():
    refiner = SemanticRefiner(DDPMScheduler(1000), noise_steps=3)
    network = _network().eval()
    for p in network.parameters():  # a network that changes its input, so the refinement does something
        torch.nn.init.normal_(p, std=0.05)
    networks = dict.fromkeys(VIEWS, network)
    label = torch.from_numpy(slab_label((8, 8, 6))).long()
    within = torch.rand(8, 8, 6, generator=torch.Generator().manual_seed(0)) * 2 - 1
    outliers = within.clone()
    outliers[2, 3, 1], outliers[5, 5, 4], outliers[0, 7, 2] = 1.0, 1.0, -1.0
    beyond = outliers.clone()
    beyond[2, 3, 1], beyond[5, 5, 4], beyond[0, 7, 2] = 6.0, 2.5, -4.0
    refined = refine_volume(networks, refiner, outliers, label, 4, generator=torch.Generator().manual_seed(1))
    kept = refine_volume(networks, refiner, beyond, label, 4, generator=torch.Generator().manual_seed(1))
    assert (refined - outliers).abs().max() > 0.01  # the refinement changed the image ...
    # ... and the out-of-range voxels carry their excess through it: the networks saw the same clipped volume
    assert torch.allclose(kept - refined, beyond - outliers, atol=1e-5)
    assert kept[2, 3, 1] > 4.0 and kept[0, 7, 2] < -2.0


@torch.no_grad()
def test_guidance_scale_one_is_the_conditional_prediction():
    network = _network().eval()
    for p in network.parameters():  # MONAI zero-initialises the output; random weights make the check meaningful
        torch.nn.init.normal_(p, std=0.05)
    x, seg, t = torch.randn(2, 1, 8, 8), F.one_hot(torch.randint(0, 4, (2, 8, 8)), 4).permute(0, 3, 1, 2).float(), 7
    conditional = network(x, torch.full((2,), t), seg=seg)
    assert torch.equal(SemanticRefiner(DDPMScheduler(1000), 10, 1.0).predict(network, x, seg, t), conditional)
    unconditional = network(x, torch.full((2,), t), seg=torch.zeros_like(seg))
    guiding = SemanticRefiner(DDPMScheduler(1000), 10, 3.0)
    guided = guiding.predict(network, x, guiding.condition(seg), t)
    assert torch.allclose(guided, unconditional + 3.0 * (conditional - unconditional), atol=1e-5)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"noise_steps must be in \[0, 1000\]"):
        SemanticRefiner(DDPMScheduler(1000), noise_steps=-1)
    refiner = SemanticRefiner(DDPMScheduler(1000), 2)
    with pytest.raises(ValueError, match=r"image shape \(8, 8, 6\) differs from mask shape \(8, 8, 5\)"):
        refine_volume(dict.fromkeys(VIEWS, _network()), refiner, torch.rand(8, 8, 6), torch.zeros(8, 8, 5), 4)
    with pytest.raises(ValueError, match=r"no diffusion model for view\(s\) \['sagittal'\]"):
        refine_volume(
            {"axial": _network(), "coronal": _network()}, refiner, torch.rand(8, 8, 6), torch.zeros(8, 8, 6), 4
        )


@pytest.mark.slow
def test_after_short_training_refining_a_degraded_image_brings_it_closer_to_the_clean_one():
    torch.manual_seed(0)
    label = torch.from_numpy(slab_label((16, 16, 12))).long()
    image = label.float() / 3 * 2 - 1
    slices = [{"image": image[None, :, :, k], "label": label[None, :, :, k]} for k in range(12)]
    network, scheduler = _network(), DDPMScheduler(1000)
    loader = torch.utils.data.DataLoader(slices, batch_size=6, shuffle=True)
    trainer = SemanticDiffusionTrainer(
        "cpu", 200, loader, network, torch.optim.AdamW(network.parameters(), 2e-3), scheduler, 4, condition_dropout=0.2
    )
    trainer.run()
    clean = image.permute(2, 0, 1)[:, None]
    seg = F.one_hot(label.permute(2, 0, 1), 4).permute(0, 3, 1, 2).float()
    blurred = F.avg_pool2d(F.pad(clean, (1, 1, 1, 1), mode="replicate"), 3, 1)
    degraded = (blurred + 0.15 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    refined = SemanticRefiner(scheduler, noise_steps=50).refine_slices(
        network.eval(), degraded, seg, torch.Generator().manual_seed(0)
    )
    before, after = F.mse_loss(degraded, clean).item(), F.mse_loss(refined, clean).item()
    print(f"MSE to the clean slices: degraded {before:.4f}, refined {after:.4f}")
    assert after < 0.6 * before


def test_max_timestep_keeps_training_on_the_low_noise_end_and_is_checked():
    label = torch.from_numpy(slab_label((8, 8, 4))).long()
    slices = [{"image": label[None, :, :, k].float() / 3 * 2 - 1, "label": label[None, :, :, k]} for k in range(4)]
    network, scheduler = _network(), DDPMScheduler(1000)
    seen: list[torch.Tensor] = []
    network.register_forward_pre_hook(lambda module, args, kwargs: seen.append(args[1].clone()), with_kwargs=True)
    loader = torch.utils.data.DataLoader(slices, batch_size=4)
    optimizer = torch.optim.AdamW(network.parameters(), 1e-3)
    SemanticDiffusionTrainer("cpu", 20, loader, network, optimizer, scheduler, 4, max_timestep=20).run()
    drawn = torch.cat(seen)
    assert len(drawn) == 80 and drawn.max() < 20 and len(drawn.unique()) > 10
    with pytest.raises(ValueError, match=r"max_timestep must be in \[1, 1000\]"):
        SemanticDiffusionTrainer("cpu", 1, loader, network, optimizer, scheduler, 4, max_timestep=1001)


class _Oracle(torch.nn.Module):
    """Predicts the exact noise that separates ``x_t`` from the known clean slices, and counts its calls."""

    def __init__(self, clean: torch.Tensor, scheduler: DDPMScheduler) -> None:
        super().__init__()
        self.clean, self.alphas, self.calls = clean, scheduler.alphas_cumprod, []

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        self.calls.append(int(timesteps[0]))
        a = self.alphas[timesteps][:, None, None, None]
        return (x - a.sqrt() * self.clean) / (1 - a).sqrt()


def test_fewer_ddim_steps_span_the_same_noise_level_and_an_exact_denoiser_recovers_the_slices():
    scheduler = DDPMScheduler(1000)
    assert SemanticRefiner(scheduler, 10, denoising_steps=2).timesteps() == [9, 0]
    assert SemanticRefiner(scheduler, 10, denoising_steps=1).timesteps() == [9]
    assert SemanticRefiner(scheduler, 10, denoising_steps=4).timesteps() == [9, 6, 3, 0]
    assert SemanticRefiner(scheduler, 10).timesteps() == list(range(9, -1, -1))  # the DDPM chain, as before
    clean = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    seg = torch.zeros(3, 4, 8, 8)
    for steps in (1, 2, 5):
        oracle = _Oracle(clean, scheduler)
        refiner = SemanticRefiner(scheduler, noise_steps=10, denoising_steps=steps)
        refined = refiner.refine_slices(oracle, clean, seg, torch.Generator().manual_seed(1))
        assert oracle.calls == refiner.timesteps() and len(oracle.calls) == steps  # one network call per step
        torch.testing.assert_close(refined, clean, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"denoising_steps must be in \[1, noise_steps=10\], got 11"):
        SemanticRefiner(scheduler, 10, denoising_steps=11)


def test_eta_one_adds_the_ddpm_posterior_noise_between_steps_and_an_exact_denoiser_still_recovers_the_slices():
    scheduler = DDPMScheduler(1000)
    refiner = SemanticRefiner(scheduler, noise_steps=10, denoising_steps=4, eta=1.0)
    betas, alphas = scheduler.betas, scheduler.alphas_cumprod
    for t in (9, 5, 1):  # one level apart, the DDIM step's noise is the DDPM posterior's (Ho et al., beta tilde)
        posterior = (1 - alphas[t - 1]) / (1 - alphas[t]) * betas[t]
        torch.testing.assert_close(refiner.ddim_sigma(t, t - 1) ** 2, posterior)
    assert float(refiner.ddim_sigma(9, -1)) == 0.0  # the last step ends on the clean estimate
    assert float(SemanticRefiner(scheduler, 10, denoising_steps=4).ddim_sigma(9, 6)) == 0.0  # eta 0: deterministic

    clean = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    seg = torch.zeros(2, 4, 8, 8)
    seen = {}
    for eta in (0.0, 1.0):
        for seed in (1, 2):
            oracle = _Oracle(clean, scheduler)
            inputs = []
            oracle.register_forward_pre_hook(
                lambda module, args, kwargs: inputs.append(args[0].clone()), with_kwargs=True
            )
            refined = SemanticRefiner(scheduler, 10, denoising_steps=4, eta=eta).refine_slices(
                oracle, clean, seg, torch.Generator().manual_seed(seed)
            )
            torch.testing.assert_close(refined, clean, atol=1e-5, rtol=0)
            seen[eta, seed] = inputs
    # the same first noising; after it, eta 1 draws fresh noise at each step and eta 0 follows one path
    torch.testing.assert_close(seen[1.0, 1][0], seen[0.0, 1][0])
    assert not torch.allclose(seen[1.0, 1][1], seen[0.0, 1][1])
    with pytest.raises(ValueError, match="eta must be at least 0, got -0.5"):
        SemanticRefiner(scheduler, 10, denoising_steps=4, eta=-0.5)
