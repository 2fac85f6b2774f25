"""The MC-DPM training objective (MedGen3D Eq. 4), with noise, ``x_0`` or velocity as the regression target, and an
auxiliary class-balanced Dice term on the predicted clean slices.

The noise path comes from the scheduler passed in: MONAI's DDPM (``sqrt(a) x_0 + sqrt(1 - a) noise``, integer steps
drawn uniformly) or rectified flow (``(1 - t/T) x_0 + (t/T) noise``, steps drawn by the scheduler, see
:mod:`medgen3d.diffusion.schedulers`). What depends on the path (the step draw, the target, the ``x_0`` estimate) is
in the three small functions below, keyed on the scheduler's type, so the loss itself reads the same for both.

The regression term weighs every voxel alike, so a structure of 1% of the voxels (subcortical grey matter, the
oesophagus) contributes 1% of the loss and is learnt last. The Dice term reads the network's estimate of the
clean slices as class probabilities (one-hot in [-1, 1] maps to [0, 1]) and scores every structure equally,
whatever its size; it is zero for a perfect estimate.

At high noise the best estimate of the clean slices is an average over every continuation the noise allows, a
blurred one; a Dice term there pulls that average towards one crisp shape, and the model learns to commit to the
smoothest continuation (the diagnosis measured 0.95 slice-to-slice continuity of the cortex against 0.83 real).
:func:`structure_weight` therefore weights each item's Dice by how little noise it carries: the normalised
``alpha_bar_t`` of DDPM (1 at ``t = 0``, 0 at the last step) or ``1 - t / T`` of rectified flow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from monai.networks.schedulers import RFlowScheduler, Scheduler

from medgen3d.diffusion.conditions import SubsequenceCondition, SubsequenceDenoiser, network_prediction
from medgen3d.diffusion.schedulers import rflow_fraction

__all__ = [
    "MCDPMLoss",
    "DICE_WEIGHTINGS",
    "draw_timesteps",
    "regression_target",
    "predicted_x0",
    "masked_slice_mse",
    "label_weights",
    "structure_weight",
    "structure_dice_loss",
    "mcdpm_loss",
]


class MCDPMLoss(NamedTuple):
    """The two terms of one MC-DPM loss: the regression (Eq. 4) and the auxiliary structure Dice."""

    regression: torch.Tensor
    dice: torch.Tensor

    def total(self, dice_weight: float) -> torch.Tensor:
        return self.regression + dice_weight * self.dice if dice_weight else self.regression


def draw_timesteps(scheduler: Scheduler, x_0: torch.Tensor) -> torch.Tensor:
    """Training steps ``(B,)`` for a batch ``x_0`` ``(B, ...)``: uniform integers in ``[0, T)`` for DDPM, the
    scheduler's own draw for rectified flow (uniform or logit-normal, integer or continuous)."""
    if isinstance(scheduler, RFlowScheduler):
        return scheduler.sample_timesteps(x_0)
    return torch.randint(0, scheduler.num_train_timesteps, (x_0.shape[0],), device=x_0.device)


def regression_target(scheduler: Scheduler, x_0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the network learns to output, by the scheduler's ``prediction_type``: ``epsilon`` (the paper),
    ``sample`` (``x_0``) or ``v_prediction`` (DDPM's ``sqrt(a) noise - sqrt(1 - a) x_0``; rectified flow's
    velocity ``x_0 - noise``)."""
    kind = scheduler.prediction_type
    if isinstance(scheduler, RFlowScheduler) and kind != "sample":
        if kind != "v_prediction":
            raise ValueError(f"unsupported prediction_type {kind!r} for rectified flow")
        return x_0 - noise
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x_0
    if kind == "v_prediction":
        return scheduler.get_velocity(x_0, noise, t)
    raise ValueError(f"unsupported prediction_type {kind!r}")


def predicted_x0(scheduler: Scheduler, x_t: torch.Tensor, prediction: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The network's estimate of ``x_0`` from its output, by the scheduler's ``prediction_type``.

    Args:
        scheduler: the noise schedule (DDPM's ``alphas_cumprod``, or rectified flow's ``T``).
        x_t: ``(B, ...)`` noisy input.
        prediction: ``(B, ...)`` network output.
        t: ``(B,)`` steps.
    """
    kind = scheduler.prediction_type
    if kind == "sample":
        return prediction
    if isinstance(scheduler, RFlowScheduler):
        if kind != "v_prediction":
            raise ValueError(f"unsupported prediction_type {kind!r} for rectified flow")
        # x_t = (1 - s) x_0 + s noise and v = x_0 - noise, so x_0 = x_t + s v
        return x_t + rflow_fraction(scheduler, t, x_t) * prediction
    alpha_bar = scheduler.alphas_cumprod.to(x_t.device)[t].view(-1, *[1] * (x_t.dim() - 1))
    if kind == "epsilon":
        return (x_t - (1 - alpha_bar).sqrt() * prediction) / alpha_bar.sqrt()
    if kind == "v_prediction":
        return alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * prediction
    raise ValueError(f"unsupported prediction_type {kind!r}")


def masked_slice_mse(
    prediction: torch.Tensor,
    target: torch.Tensor,
    indicator: torch.Tensor,
    voxel_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error over the generated slices only (``indicator == 0``); inputs ``(B, m, K, H, W)``.

    ``voxel_weight`` ``(B, m, 1, H, W)``, optional: how much each voxel counts (see :func:`label_weights`); the mean
    is then weighted, so weights that are all 1 give the plain mean.
    """
    weight = (1.0 - indicator.to(prediction.dtype))[:, :, None, None, None]
    if voxel_weight is not None:
        weight = weight * voxel_weight.to(prediction.dtype)
    weight = weight.expand_as(prediction)
    return ((prediction - target) ** 2 * weight).sum() / weight.sum().clamp(min=1.0)


def label_weights(x_0: torch.Tensor, class_weights: Sequence[float]) -> torch.Tensor:
    """Each voxel's weight by its true label: ``(B, m, K, H, W)`` one-hot slices -> ``(B, m, 1, H, W)``.

    Weighting a label's voxels more in the regression moves the optimal estimate of an uncertain voxel towards that
    label, which is what an arg-max decoding of thin structures needs: where the network is unsure whether a thin
    band of CSF passes, its unweighted mean estimate gives the band less than half and the arg-max erases it.
    """
    if len(class_weights) != x_0.shape[2]:
        raise ValueError(f"class_weights needs one weight per label ({x_0.shape[2]}), got {len(class_weights)}")
    table = torch.as_tensor(class_weights, dtype=torch.float32, device=x_0.device)
    return table[x_0.argmax(dim=2)][:, :, None]


DICE_WEIGHTINGS = ("uniform", "low_noise")
_SMOOTH = 1e-5  # MONAI DiceLoss's smooth_nr and smooth_dr: an absent structure predicted absent costs 0


def structure_weight(scheduler: Scheduler, t: torch.Tensor, weighting: str = "low_noise") -> torch.Tensor:
    """How much each item's structure Dice counts, ``(B,)`` in [0, 1], by its noise level ``t`` ``(B,)``.

    ``"uniform"``: 1 at every step. ``"low_noise"``: 1 at ``t = 0`` and 0 at the noisiest step, in between the
    signal's share of ``x_t``: DDPM's ``alpha_bar_t`` rescaled so its last value maps to 0, rectified flow's
    ``1 - t / T``.
    """
    if weighting not in DICE_WEIGHTINGS:
        raise ValueError(f"dice weighting must be one of {list(DICE_WEIGHTINGS)}, got {weighting!r}")
    if weighting == "uniform":
        return torch.ones(t.shape[0], device=t.device)
    if isinstance(scheduler, RFlowScheduler):
        return 1.0 - rflow_fraction(scheduler, t, torch.zeros(t.shape[0], device=t.device))
    alpha_bar = scheduler.alphas_cumprod.to(t.device)
    last, first = alpha_bar[-1], alpha_bar[0]
    return ((alpha_bar[t.long()] - last) / (first - last)).clamp(0.0, 1.0)


def structure_dice_loss(
    x0_estimate: torch.Tensor, x_0: torch.Tensor, indicator: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Soft Dice loss of the estimated clean slices on the generated slices, mean over foreground structures.

    Each structure's Dice is pooled over all generated slices of the batch (a structure absent from one slice then
    costs nothing there), as MONAI's ``DiceLoss(include_background=False, batch=True)`` computes it; every
    structure weighs the same whatever its size. With ``weight``, each item's voxels count ``weight`` times in the
    pooled sums, and the loss is scaled by the generated slices' mean weight, so an item of weight 0 adds nothing
    and a batch of weight 1 gives the unweighted loss.

    Args:
        x0_estimate: ``(B, m, K, H, W)`` the network's estimate of the one-hot slices in [-1, 1].
        x_0: ``(B, m, K, H, W)`` the clean one-hot slices in [-1, 1].
        indicator: ``(B, m)``, 1 on the given slices (not scored).
        weight: ``(B,)`` per-item weights in [0, 1] (:func:`structure_weight`); ``None``: all 1.

    Returns:
        A scalar in [0, 1]: 0 when the estimate equals ``x_0`` on every generated slice.
    """
    generated = indicator < 0.5
    if not generated.any():
        return x0_estimate.sum() * 0.0
    b, m = indicator.shape
    weight = torch.ones(b, device=x_0.device) if weight is None else weight.to(x_0.device, torch.float32)
    w = weight[:, None].expand(b, m)[generated][:, None, None, None]  # (N, 1, 1, 1), one per generated slice
    probabilities = ((x0_estimate[generated] + 1.0) / 2.0).clamp(0.0, 1.0)[:, 1:]  # (N, K - 1, H, W)
    truth = ((x_0[generated] + 1.0) / 2.0)[:, 1:]
    intersection = (w * probabilities * truth).sum(dim=(0, 2, 3))  # (K - 1,)
    total = (w * (probabilities + truth)).sum(dim=(0, 2, 3))
    dice = 1.0 - (2.0 * intersection + _SMOOTH) / (total + _SMOOTH)
    return dice.mean() * w.mean()


def mcdpm_loss(
    network: SubsequenceDenoiser,
    scheduler: Scheduler,
    x_0: torch.Tensor,
    condition: SubsequenceCondition,
    dice_weighting: str = "uniform",
    class_weights: Sequence[float] | None = None,
) -> MCDPMLoss:
    """One MC-DPM training loss on a batch of clean subsequences.

    Args:
        network: the denoiser (possibly wrapped for data-parallel training).
        scheduler: the noise schedule (a MONAI DDPM or rectified-flow scheduler); its ``prediction_type`` sets the
            target.
        x_0: ``(B, m, K, H, W)`` clean one-hot subsequences in [-1, 1].
        condition: the conditional slices ``X^C`` (normally ``x_0`` under random indicators, see
            :func:`~medgen3d.diffusion.conditions.draw_condition`) and the positions ``z / D``.
        dice_weighting: how the structure Dice of an item depends on its noise level (:func:`structure_weight`).
        class_weights: ``K`` weights of the regression term's voxels by their true label (:func:`label_weights`);
            ``None``: every voxel counts the same (the paper's loss).

    Returns:
        The regression term and the structure Dice term (combine with :meth:`MCDPMLoss.total`).
    """
    # 1. noise every slice to a random step t; the network sees the given ones clean (pack)
    noise = torch.randn_like(x_0)
    t = draw_timesteps(scheduler, x_0)
    x_t = scheduler.add_noise(x_0, noise, t)
    # 2. regress only the generated slices X^P; score their implied clean slices structure by structure
    prediction = network_prediction(network, x_t, t, condition)
    voxels = None if class_weights is None else label_weights(x_0, class_weights)
    target = regression_target(scheduler, x_0, noise, t)
    regression = masked_slice_mse(prediction, target, condition.indicator, voxels)
    weight = structure_weight(scheduler, t, dice_weighting)
    dice = structure_dice_loss(predicted_x0(scheduler, x_t, prediction, t), x_0, condition.indicator, weight)
    return MCDPMLoss(regression, dice)
