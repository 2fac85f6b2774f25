"""Sampling one mask subsequence with the MC-DPM: DDPM, DDIM or rectified flow, re-imposed conditions,
classifier-free guidance.

MONAI's ``DiffusionInferer.sample`` cannot re-impose known slices between steps, so the loop is written here
(about fifteen lines); the noise maths stays in MONAI's schedulers. The sampler never owns the network: it is
passed to every call, with the conditions as one :class:`~medgen3d.diffusion.conditions.SubsequenceCondition`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler, RFlowScheduler

from medgen3d.diffusion.conditions import SubsequenceCondition, SubsequenceDenoiser, network_prediction

__all__ = ["Generators", "guide", "sampling_timesteps", "SubsequenceSampler", "TIMESTEP_SPACINGS"]

# One generator for the whole batch, or one per item: per-item generators make an item's sample independent of
# the rest of its batch (up to floating point), so that sharded and resumed runs draw the same noise per case.
Generators = Union[torch.Generator, Sequence[torch.Generator], None]
SamplingScheduler = Union[DDPMScheduler, DDIMScheduler, RFlowScheduler]

# rectified flow's straight path needs few steps
RFLOW_STEPS = 10
# where a shortened DDIM chain's steps lie on the stride T // N (see sampling_timesteps)
TIMESTEP_SPACINGS = ("leading", "trailing")


def randn(shape: Sequence[int], generator: Generators, device: torch.device) -> torch.Tensor:
    """Standard normal noise of ``shape``, drawn per item when ``generator`` is a sequence (on the CPU)."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator).to(device)
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in generator]).to(device)


def guide(unconditional: torch.Tensor, conditional: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (MedGen3D Eq. 2): ``u + s * (c - u)``; ``s = 1`` is the conditional prediction.

    Written as ``c + (s - 1) * (c - u)`` so that ``s = 1`` returns ``c`` to the last bit.
    """
    return conditional + (scale - 1.0) * (conditional - unconditional)


def sampling_timesteps(
    scheduler: SamplingScheduler, num_inference_steps: int | None, spacing: str = "leading"
) -> torch.Tensor:
    """The descending timesteps to visit.

    DDPM always runs its full chain: MONAI's ``DDPMScheduler.step`` computes the ``t -> t-1`` posterior, so a
    shortened DDPM chain would be wrong. DDIM's ``set_timesteps`` spaces steps with ``linspace`` while its ``step``
    assumes a stride of ``s = T // N``; the steps are therefore laid on that stride here, in one of two ways
    (``spacing``):

    - ``"leading"``: ``(N - 1) s, ..., s, 0``. The chain starts below ``T`` (at ``0.8 T`` for ``N = 5``, where a
      scaled-linear schedule still keeps 2% of the signal's power, but the chain starts from pure noise) and its
      last call denoises an almost clean ``x_0`` at ``t = 0``;
    - ``"trailing"``: ``N s - 1, ..., 2 s - 1, s - 1``. The chain starts from pure noise where training put it and
      ends on the network's ``x_0`` estimate at ``t = s - 1``, without the extra call at ``t = 0``.

    The full DDPM chain is the same under both. Rectified flow (default 10 steps) visits MONAI's
    ``T, T - T/N, ..., T/N``, each step running to the next one and the last to 0: its own trailing spacing, which
    ``"leading"`` does not change.
    """
    if spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}")
    total = scheduler.num_train_timesteps
    if isinstance(scheduler, RFlowScheduler):
        if scheduler.use_timestep_transform:
            raise ValueError("use_timestep_transform is not supported: it scales steps for a volume, not slices")
        steps = num_inference_steps or RFLOW_STEPS
        if not 1 <= steps <= total:
            raise ValueError(f"num_inference_steps must be in [1, {total}], got {steps}")
        scheduler.set_timesteps(steps)
        timesteps = scheduler.timesteps.cpu()
        return timesteps.float() if timesteps.is_floating_point() else timesteps
    if isinstance(scheduler, DDIMScheduler):
        steps = num_inference_steps or 50
        if not 1 <= steps <= total:
            raise ValueError(f"num_inference_steps must be in [1, {total}], got {steps}")
        scheduler.set_timesteps(steps)
        stride = total // steps
        if spacing == "trailing":  # DDIM's step from s - 1 runs to -1, where it uses the clean x_0's alpha of 1
            return torch.arange(steps, 0, -1) * stride - 1
        return torch.arange(steps - 1, -1, -1) * stride
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
        scheduler: a MONAI ``DDPMScheduler`` (full chain) or ``DDIMScheduler``, or a rectified flow
            (:class:`~medgen3d.diffusion.schedulers.RectifiedFlowScheduler`), with the network's ``prediction_type``.
        num_inference_steps: DDIM or rectified-flow steps (``None``: 50 and 10; DDPM always uses every step).
        guidance_scale: classifier-free guidance scale ``s`` for conditional subsequences; the unconditional
            mode (no known slices) is the null condition.
        eta: DDIM stochasticity (0 is deterministic DDIM).
        timestep_spacing: where a DDIM chain's steps lie, ``"leading"`` or ``"trailing"`` (see
            :func:`sampling_timesteps`).
    """

    def __init__(
        self,
        scheduler: SamplingScheduler,
        num_inference_steps: int | None = None,
        guidance_scale: float = 1.0,
        eta: float = 0.0,
        timestep_spacing: str = "leading",
    ) -> None:
        self.scheduler = scheduler
        self.timesteps = sampling_timesteps(scheduler, num_inference_steps, timestep_spacing)
        self.guidance_scale = float(guidance_scale)
        self.step_kwargs = {"eta": eta} if isinstance(scheduler, DDIMScheduler) else {}
        self.network_evaluations = 0  # subsequence forwards, for benchmarks

    def predict(
        self,
        network: SubsequenceDenoiser,
        x_t: torch.Tensor,
        condition: SubsequenceCondition,
        t: float,
        generator: Generators = None,
    ) -> torch.Tensor:
        """The (guided) network prediction ``(B, m, K, H, W)`` at step ``t``.

        Conditional items are also evaluated under the null condition (no known slices; the known slices noised
        to step ``t`` like the rest) and combined by :func:`guide`.

        Args:
            network: the denoiser.
            x_t: ``(B, m, K, H, W)`` the current noisy slices.
            condition: the given slices, their indicator and the positions.
            t: the step.
            generator: random source of the null condition's noise, one or one per item.
        """
        b = x_t.shape[0]
        timesteps = torch.full((b,), t, device=x_t.device, dtype=self.timesteps.dtype)
        conditional = condition.conditional
        if self.guidance_scale == 1.0 or not conditional.any():
            self.network_evaluations += b
            return network_prediction(network, x_t, timesteps, condition)
        # the null condition sees every slice noisy at step t (RePaint-style replacement of the known slices), and
        # rides in the same network call as the conditional pass
        noise = randn(condition.known.shape, generator, condition.known.device)
        noisy = condition._replace(known=self.scheduler.add_noise(condition.known, noise, timesteps)).impose(x_t)
        outputs = network_prediction(
            network,
            torch.cat([x_t, noisy[conditional]]),
            torch.cat([timesteps, timesteps[conditional]]),
            SubsequenceCondition.cat([condition, condition.null().select(conditional)]),
        )
        self.network_evaluations += outputs.shape[0]
        prediction = outputs[:b]
        prediction[conditional] = guide(outputs[b:], prediction[conditional], self.guidance_scale)
        return prediction

    @torch.no_grad()
    def sample(
        self,
        network: SubsequenceDenoiser,
        condition: SubsequenceCondition,
        generator: Generators = None,
    ) -> torch.Tensor:
        """Run the reverse process for a batch of subsequences.

        Args:
            network: the denoiser.
            condition: the given slices ``(B, m, K, H, W)`` (one-hot in [-1, 1], read only under the indicator),
                the indicator ``(B, m)`` and the relative positions ``(B,)`` of the subsequences' first slices.
            generator: random source for the initial noise and stochastic steps, one or one per item.

        Returns:
            ``(B, m, K, H, W)``: the generated slices, with the known slices returned exactly.
        """
        x_t = randn(condition.known.shape, generator, condition.known.device)
        timesteps = self.timesteps.tolist()
        for t, next_t in zip(timesteps, [*timesteps[1:], 0]):
            prediction = self.predict(network, x_t, condition, t, generator)
            # 1. x at the next step from the prediction (noise, x_0 or v, as the scheduler was configured)
            x_t = self._step(prediction, t, x_t, generator, next_t)
        # 2. the known slices come back exactly as given
        return condition.impose(x_t)

    def _step(
        self, prediction: torch.Tensor, t: float, x_t: torch.Tensor, generator: Generators, next_t: float
    ) -> torch.Tensor:
        if isinstance(self.scheduler, RFlowScheduler):
            return self.scheduler.step(prediction, t, x_t, next_t)[0]  # deterministic: no noise to draw
        if generator is None or isinstance(generator, torch.Generator):
            return self.scheduler.step(prediction, t, x_t, generator=generator, **self.step_kwargs)[0]
        # MONAI's schedulers draw their step noise for the whole batch: step item by item with its own generator
        steps = [
            self.scheduler.step(prediction[i : i + 1], t, x_t[i : i + 1], generator=g, **self.step_kwargs)[0]
            for i, g in enumerate(generator)
        ]
        return torch.cat(steps)
