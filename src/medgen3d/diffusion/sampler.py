"""Sampling one mask subsequence with the MC-DPM: DDPM or DDIM, re-imposed conditions, classifier-free guidance.

MONAI's ``DiffusionInferer.sample`` cannot re-impose known slices between steps, so the loop is written here
(about fifteen lines); the noise maths stays in MONAI's schedulers. The sampler never owns the network: it is
passed to every call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, Union

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from medgen3d.diffusion.conditions import pack, unpack

__all__ = ["SubsequenceDenoiser", "Generators", "guide", "sampling_timesteps", "SubsequenceSampler"]

# One generator for the whole batch, or one per item: per-item generators make an item's sample independent of
# the rest of its batch (up to floating point), so that sharded and resumed runs draw the same noise per case.
Generators = Union[torch.Generator, Sequence[torch.Generator], None]


def randn(shape: Sequence[int], generator: Generators, device: torch.device) -> torch.Tensor:
    """Standard normal noise of ``shape``, drawn per item when ``generator`` is a sequence (on the CPU)."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator).to(device)
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in generator]).to(device)


class SubsequenceDenoiser(Protocol):
    """What the sampler needs of a network: ``(B, m(K+1), H, W), (B,), (B,) -> (B, mK, H, W)``."""

    subsequence_length: int

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, position: torch.Tensor) -> torch.Tensor: ...


def guide(unconditional: torch.Tensor, conditional: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (MedGen3D Eq. 2): ``u + s * (c - u)``; ``s = 1`` is the conditional prediction.

    Written as ``c + (s - 1) * (c - u)`` so that ``s = 1`` returns ``c`` to the last bit.
    """
    return conditional + (scale - 1.0) * (conditional - unconditional)


def sampling_timesteps(scheduler: DDPMScheduler | DDIMScheduler, num_inference_steps: int | None) -> torch.Tensor:
    """The descending timesteps to visit.

    DDPM always runs its full chain: MONAI's ``DDPMScheduler.step`` computes the ``t -> t-1`` posterior, so a
    shortened DDPM chain would be wrong. DDIM's ``set_timesteps`` spaces steps with ``linspace`` while its ``step``
    assumes a stride of ``T // N``; the steps are therefore laid on that stride here.
    """
    total = scheduler.num_train_timesteps
    if isinstance(scheduler, DDIMScheduler):
        steps = num_inference_steps or 50
        if not 1 <= steps <= total:
            raise ValueError(f"num_inference_steps must be in [1, {total}], got {steps}")
        scheduler.set_timesteps(steps)
        return torch.arange(steps - 1, -1, -1) * (total // steps)
    if num_inference_steps not in (None, total):
        raise ValueError(
            f"DDPM samples with its full chain of {total} steps (got num_inference_steps={num_inference_steps}); "
            "use a DDIMScheduler for fewer steps"
        )
    scheduler.set_timesteps(total)
    return torch.arange(total - 1, -1, -1)


class SubsequenceSampler:
    """Generates the unknown slices of subsequences given the known ones and their relative position.

    Args:
        scheduler: a MONAI ``DDPMScheduler`` (full chain) or ``DDIMScheduler``, with the network's
            ``prediction_type``.
        num_inference_steps: DDIM steps (ignored for DDPM, which uses every step).
        guidance_scale: classifier-free guidance scale ``s`` for conditional subsequences; the unconditional
            mode (no known slices) is the null condition.
        eta: DDIM stochasticity (0 is deterministic DDIM).
    """

    def __init__(
        self,
        scheduler: DDPMScheduler | DDIMScheduler,
        num_inference_steps: int | None = None,
        guidance_scale: float = 1.0,
        eta: float = 0.0,
    ) -> None:
        self.scheduler = scheduler
        self.timesteps = sampling_timesteps(scheduler, num_inference_steps)
        self.guidance_scale = float(guidance_scale)
        self.step_kwargs = {"eta": eta} if isinstance(scheduler, DDIMScheduler) else {}
        self.network_evaluations = 0  # subsequence forwards, for benchmarks

    def predict(
        self,
        network: SubsequenceDenoiser,
        x_t: torch.Tensor,
        x_known: torch.Tensor,
        indicator: torch.Tensor,
        position: torch.Tensor,
        t: int,
        generator: Generators = None,
    ) -> torch.Tensor:
        """The (guided) network prediction ``(B, m, K, H, W)`` at step ``t``.

        Conditional items are also evaluated under the null condition (no known slices; the known slices noised
        to step ``t`` like the rest) and combined by :func:`guide`.
        """
        m = x_t.shape[1]
        timesteps = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        conditional = indicator.any(dim=1)
        if self.guidance_scale == 1.0 or not conditional.any():
            self.network_evaluations += x_t.shape[0]
            return unpack(network(pack(x_t, x_known, indicator), timesteps, position), m)
        # the null condition sees every slice noisy at step t (RePaint-style replacement of the known slices)
        noise = randn(x_known.shape, generator, x_known.device)
        noisy_known = self.scheduler.add_noise(x_known, noise, timesteps)
        null_input = pack(x_t, noisy_known, indicator)
        null_input[:, -m:] = 0.0
        inputs = torch.cat([pack(x_t, x_known, indicator), null_input[conditional]])
        outputs = network(
            inputs, torch.cat([timesteps, timesteps[conditional]]), torch.cat([position, position[conditional]])
        )
        self.network_evaluations += inputs.shape[0]
        prediction = unpack(outputs[: x_t.shape[0]], m)
        prediction[conditional] = guide(
            unpack(outputs[x_t.shape[0] :], m), prediction[conditional], self.guidance_scale
        )
        return prediction

    @torch.no_grad()
    def sample(
        self,
        network: SubsequenceDenoiser,
        x_known: torch.Tensor,
        indicator: torch.Tensor,
        position: torch.Tensor,
        generator: Generators = None,
    ) -> torch.Tensor:
        """Run the reverse process for a batch of subsequences.

        Args:
            network: the denoiser.
            x_known: ``(B, m, K, H, W)`` one-hot slices in [-1, 1]; only the slices under ``indicator`` are read.
            indicator: ``(B, m)``, 1 on known slices.
            position: ``(B,)`` relative position ``z / D`` of each subsequence's first slice.
            generator: random source for the initial noise and stochastic steps, one or one per item.

        Returns:
            ``(B, m, K, H, W)``: the generated slices, with the known slices returned exactly.
        """
        x_t = randn(x_known.shape, generator, x_known.device)
        for t in self.timesteps.tolist():
            prediction = self.predict(network, x_t, x_known, indicator, position, t, generator)
            # 1. x_{t-1} from the prediction (noise, x_0 or v, as the scheduler was configured)
            x_t = self._step(prediction, t, x_t, generator)
        # 2. the known slices come back exactly as given
        keep = indicator.bool()[:, :, None, None, None]
        return torch.where(keep, x_known, x_t)

    def _step(self, prediction: torch.Tensor, t: int, x_t: torch.Tensor, generator: Generators) -> torch.Tensor:
        if generator is None or isinstance(generator, torch.Generator):
            return self.scheduler.step(prediction, t, x_t, generator=generator, **self.step_kwargs)[0]
        # MONAI's schedulers draw their step noise for the whole batch: step item by item with its own generator
        steps = [
            self.scheduler.step(prediction[i : i + 1], t, x_t[i : i + 1], generator=g, **self.step_kwargs)[0]
            for i, g in enumerate(generator)
        ]
        return torch.cat(steps)
