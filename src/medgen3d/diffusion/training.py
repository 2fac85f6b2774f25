"""The MC-DPM training objective (MedGen3D Eq. 4), with noise, ``x_0`` or velocity as the regression target."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from monai.networks.schedulers import Scheduler

from medgen3d.diffusion.conditions import draw_indicators, pack, unpack
from medgen3d.diffusion.sampler import SubsequenceDenoiser

__all__ = ["regression_target", "masked_slice_mse", "mcdpm_loss"]


def regression_target(scheduler: Scheduler, x_0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the network learns to output, by the scheduler's ``prediction_type``: ``epsilon`` (the paper),
    ``sample`` (``x_0``) or ``v_prediction``."""
    kind = scheduler.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x_0
    if kind == "v_prediction":
        return scheduler.get_velocity(x_0, noise, t)
    raise ValueError(f"unsupported prediction_type {kind!r}")


def masked_slice_mse(prediction: torch.Tensor, target: torch.Tensor, indicator: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the generated slices only (``indicator == 0``); inputs ``(B, m, K, H, W)``."""
    weight = (1.0 - indicator.to(prediction.dtype))[:, :, None, None, None].expand_as(prediction)
    return ((prediction - target) ** 2 * weight).sum() / weight.sum().clamp(min=1.0)


def mcdpm_loss(
    network: SubsequenceDenoiser,
    scheduler: Scheduler,
    x_0: torch.Tensor,
    position: torch.Tensor,
    condition_probabilities: Mapping[str, float],
    num_known: tuple[int, int],
) -> torch.Tensor:
    """One MC-DPM training loss on a batch of clean subsequences.

    Args:
        network: the denoiser (possibly wrapped for data-parallel training).
        scheduler: the noise schedule; its ``prediction_type`` sets the target.
        x_0: ``(B, m, K, H, W)`` clean one-hot subsequences in [-1, 1].
        position: ``(B,)`` relative positions ``z / D``.
        condition_probabilities: ``{"forward": p_F, "backward": p_B, "unconditional": p_U}``.
        num_known: range of known slices in the conditional modes.
    """
    b, m = x_0.shape[:2]
    # 1. conditional slices X^C: the first or last n slices, or none (probabilities p_F, p_B, p_U)
    indicator = draw_indicators(b, m, condition_probabilities, num_known).to(x_0.device)
    # 2. noise every slice to a random step t; the network sees the known ones clean (pack)
    noise = torch.randn_like(x_0)
    t = torch.randint(0, scheduler.num_train_timesteps, (b,), device=x_0.device)
    x_t = scheduler.add_noise(x_0, noise, t)
    # 3. regress only the generated slices X^P
    prediction = unpack(network(pack(x_t, x_0, indicator), t, position), m)
    return masked_slice_mse(prediction, regression_target(scheduler, x_0, noise, t), indicator)
