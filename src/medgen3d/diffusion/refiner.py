"""The semantic diffusion refiner of MedGen3D (paper Sec. 3.2, Fig. 3).

An image volume from the sequence generator is cut into slices along a view (axial, coronal or sagittal), each
slice is noised a little (to step ``t_r``, default 10 of 1000) and denoised back to step 0 by that view's
semantic diffusion model, conditioned on the mask slice with classifier-free guidance; the refined volume is the
mean over the views. A few steps keep the anatomy and the slice-to-slice continuity, and replace blur and blocking
with texture the diffusion models learned from real slices.

Volumes are ``(H, W, D)`` RAS: axial slices run along ``D``, coronal along ``W`` (anterior-posterior), sagittal
along ``H`` (left-right), as :mod:`medgen3d.views` slices them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from monai.networks.schedulers import DDPMScheduler
from torch import nn

from medgen3d.diffusion.sampler import guide
from medgen3d.networks.spade_cache import reuse_mask_modulation
from medgen3d.views import from_view, to_view

__all__ = ["SegmentationDenoiser", "SemanticRefiner", "refine_volume"]


class SegmentationDenoiser(Protocol):
    """A SPADE diffusion UNet: ``(x (B, 1, a, b), t (B,), seg (B, K, a, b)) -> noise prediction``."""

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, seg: torch.Tensor) -> torch.Tensor: ...


def _pad_to(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    a, b = x.shape[-2:]
    pad_a, pad_b = (-a) % multiple, (-b) % multiple
    return F.pad(x, (0, pad_b, 0, pad_a), mode="replicate"), (a, b)


class SemanticRefiner:
    """Noise slices to step ``t_r`` and denoise them back, conditioned on their masks.

    Args:
        scheduler: the DDPM schedule the diffusion models were trained with (epsilon prediction).
        noise_steps: ``t_r``: slices are noised to diffusion step ``t_r`` and denoised by ``t_r`` network steps;
            0 returns the input exactly.
        guidance_scale: classifier-free guidance scale ``s`` (MedGen3D Eq. 2); the null condition is an all-zero
            mask, as in training with dropped masks. ``s = 1`` uses the conditional prediction alone.
        size_multiple: slices are padded (edge values) to a multiple of this, the UNet's total downsampling.
        denoising_steps: network steps back from ``t_r``. ``None`` (or ``t_r``) runs the DDPM chain
            ``t_r - 1, …, 0``, one stochastic step each; fewer run DDIM steps (Song et al., Eq. 12) over the same
            noise level, evenly spaced from ``t_r - 1`` down to the clean image, so the refinement costs
            ``denoising_steps`` network calls per slice instead of ``t_r``.
        eta: the DDIM steps' randomness: 0 is deterministic; 1 adds the noise of the DDPM posterior between the two
            steps (with one level between them, exactly a DDPM step), so fewer steps keep the chain's fresh noise.
    """

    def __init__(
        self,
        scheduler: DDPMScheduler,
        noise_steps: int = 10,
        guidance_scale: float = 1.0,
        size_multiple: int = 4,
        denoising_steps: int | None = None,
        eta: float = 0.0,
    ) -> None:
        if not 0 <= noise_steps <= scheduler.num_train_timesteps:
            raise ValueError(f"noise_steps must be in [0, {scheduler.num_train_timesteps}], got {noise_steps}")
        if denoising_steps is not None and not 1 <= denoising_steps <= max(noise_steps, 1):
            raise ValueError(f"denoising_steps must be in [1, noise_steps={noise_steps}], got {denoising_steps}")
        self.scheduler, self.noise_steps = scheduler, noise_steps
        self.guidance_scale, self.size_multiple = float(guidance_scale), size_multiple
        if eta < 0:
            raise ValueError(f"eta must be at least 0, got {eta}")
        self.denoising_steps = noise_steps if denoising_steps is None else int(denoising_steps)
        self.eta = float(eta)
        scheduler.set_timesteps(scheduler.num_train_timesteps)  # every step: the partial chain t_r-1 .. 0

    def timesteps(self) -> list[int]:
        """The steps the network denoises at, from ``t_r - 1`` down (0-based, as MONAI's schedule counts)."""
        if self.noise_steps == 0:
            return []
        # evenly spaced over [0, t_r - 1], always starting where the noise was added
        spaced = torch.linspace(self.noise_steps - 1, 0, self.denoising_steps).round().long().tolist()
        return list(dict.fromkeys(int(t) for t in spaced))

    def _alphas(self, t: int, previous: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``ᾱ`` at step ``t`` and at step ``previous`` (``-1``: the clean image, ``ᾱ = 1``)."""
        alphas = self.scheduler.alphas_cumprod
        return alphas[t], alphas[previous] if previous >= 0 else torch.ones(())

    def ddim_sigma(self, t: int, previous: int) -> torch.Tensor:
        """The standard deviation of the noise a DDIM step from ``t`` to ``previous`` adds: ``eta`` times the DDPM
        posterior's between the two steps (0 when ``previous`` is the clean image)."""
        a_t, a_prev = self._alphas(t, previous)
        return self.eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()

    def _ddim_step(
        self, eps: torch.Tensor, t: int, previous: int, x_t: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """DDIM step from step ``t`` to step ``previous`` (``-1``: the clean image)."""
        a_t, a_prev = (a.to(x_t.device) for a in self._alphas(t, previous))
        sigma = self.ddim_sigma(t, previous).to(x_t.device)
        x_0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        if self.scheduler.clip_sample:  # as the DDPM chain's step (and MONAI's DDIM step) clip the clean estimate
            x_0 = x_0.clamp(*self.scheduler.clip_sample_values)
        x_prev = a_prev.sqrt() * x_0 + (1 - a_prev - sigma**2).sqrt() * eps
        if self.eta == 0 or previous < 0:
            return x_prev
        return x_prev + sigma * torch.randn(x_t.shape, generator=generator).to(x_t.device)

    def condition(self, seg: torch.Tensor) -> torch.Tensor:
        """What :meth:`predict` takes as ``seg``: the masks, followed by the null masks when guiding."""
        return seg if self.guidance_scale == 1.0 else torch.cat([seg, torch.zeros_like(seg)])

    def predict(self, network: SegmentationDenoiser, x_t: torch.Tensor, seg: torch.Tensor, t: int) -> torch.Tensor:
        """The guided noise prediction at step ``t``; ``seg`` is :meth:`condition` of the masks."""
        timesteps = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        if self.guidance_scale == 1.0:
            return network(x_t, timesteps, seg=seg)
        both = network(torch.cat([x_t, x_t]), torch.cat([timesteps, timesteps]), seg=seg)
        conditional, unconditional = both.chunk(2)
        return guide(unconditional, conditional, self.guidance_scale)

    @torch.no_grad()
    def refine_slices(
        self,
        network: SegmentationDenoiser,
        x: torch.Tensor,
        seg: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Refine a batch of slices.

        Args:
            network: the view's SPADE diffusion UNet.
            x: ``(N, 1, a, b)`` slices in [-1, 1].
            seg: ``(N, K, a, b)`` one-hot masks in {0, 1}.
            generator: random source for the noising and the stochastic steps.

        Returns:
            ``(N, 1, a, b)``.
        """
        if self.noise_steps == 0:
            return x
        x, size = _pad_to(x, self.size_multiple)
        seg, _ = _pad_to(seg, self.size_multiple)
        # 1. forward process to step t_r (index t_r - 1 of MONAI's 0-based schedule)
        start = self.noise_steps - 1
        noise = torch.randn(x.shape, generator=generator).to(x.device)
        x_t = self.scheduler.add_noise(x, noise, torch.full((x.shape[0],), start, device=x.device, dtype=torch.long))
        # 2. reverse process from t_r - 1 to the clean image, guided by the masks (the last step returns the x_0
        # estimate); one condition tensor for every step, so the SPADE blocks modulate with it once, not per step
        condition = self.condition(seg)
        reuse = reuse_mask_modulation(network) if isinstance(network, nn.Module) else contextlib.nullcontext()
        steps = self.timesteps()
        with reuse:
            if self.denoising_steps == self.noise_steps:  # the DDPM chain, one stochastic step per noise level
                for t in steps:
                    x_t, _ = self.scheduler.step(self.predict(network, x_t, condition, t), t, x_t, generator=generator)
            else:
                for t, previous in zip(steps, [*steps[1:], -1]):
                    x_t = self._ddim_step(self.predict(network, x_t, condition, t), t, previous, x_t, generator)
        return x_t[..., : size[0], : size[1]]


@torch.no_grad()
def refine_volume(
    networks: Mapping[str, SegmentationDenoiser],
    refiner: SemanticRefiner,
    image: torch.Tensor,
    label: torch.Tensor,
    num_classes: int,
    views: Sequence[str] = ("axial", "coronal", "sagittal"),
    batch_size: int = 32,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Refine one volume along each view and return the mean of the views.

    The networks see the image clipped to [-1, 1], their training range; what they change is added to the image
    itself, so intensities beyond the range keep their excess (a CT bone above the window, the brightest MR
    voxels) instead of being cut off, and a network that returns its input unchanged returns ``image`` exactly,
    as ``noise_steps=0`` does.

    Args:
        networks: view -> its SPADE diffusion UNet.
        refiner: the noising/denoising schedule.
        image: ``(H, W, D)``, [-1, 1] the networks' range (values beyond it pass through).
        label: ``(H, W, D)`` integer labels.
        num_classes: ``K``.
        views: the views to refine along (their mean is returned).
        batch_size: slices per network call.
        generator: random source.

    Returns:
        ``(H, W, D)``: ``image`` plus the mean over the views of the refinement's change.
    """
    if tuple(image.shape) != tuple(label.shape):
        raise ValueError(f"image shape {tuple(image.shape)} differs from mask shape {tuple(label.shape)}")
    missing = [v for v in views if v not in networks]
    if missing:
        raise ValueError(f"no diffusion model for view(s) {missing}")
    if refiner.noise_steps == 0:
        return image  # nothing is noised, so nothing changes
    device = next(iter(networks[views[0]].parameters())).device if hasattr(networks[views[0]], "parameters") else "cpu"
    seg = F.one_hot(label.long(), num_classes).permute(3, 0, 1, 2).float().to(device)  # (K, H, W, D)
    volume = image.float()[None].to(device)  # (1, H, W, D)
    within = volume.clamp(-1.0, 1.0)  # what the networks were trained on
    refined = []
    for view in views:
        x, s = to_view(within, view), to_view(seg, view)
        out = torch.cat(
            [
                refiner.refine_slices(networks[view], x[i : i + batch_size], s[i : i + batch_size], generator)
                for i in range(0, x.shape[0], batch_size)
            ]
        )
        refined.append(from_view(out, view)[0])
    return (volume + torch.stack(refined).mean(0) - within)[0]
