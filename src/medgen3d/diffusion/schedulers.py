"""Rectified flow for the MC-DPM: MONAI's ``RFlowScheduler`` with the network's prediction type.

MONAI's rectified flow follows the straight path ``x_t = (1 - t/T) x_0 + (t/T) noise`` and its ``step`` reads a
velocity ``v = x_0 - noise``: ``x_{t'} = x_t + v (t - t') / T``. The MC-DPM learns its masks far sooner predicting
``x_0`` (as it does under DDPM), so :class:`RectifiedFlowScheduler` keeps MONAI's path, timestep draw and step, and
only turns an ``x_0`` prediction into the velocity the step reads, ``v = (x_0 - x_t) / (t/T)``. A sampling chain
then ends on the network's last ``x_0`` estimate: the last step runs from ``t`` to 0, a step of ``t/T``.
"""

from __future__ import annotations

import torch
from monai.networks.schedulers import RFlowScheduler

__all__ = ["RectifiedFlowScheduler", "rflow_fraction"]


def rflow_fraction(
    scheduler: RFlowScheduler, timesteps: torch.Tensor | float, like: torch.Tensor
) -> torch.Tensor | float:
    """How far along the path ``t`` lies, ``t / T`` (0: clean, 1: noise): a number for a number, else ``(B, 1, ...)``
    to broadcast over ``like`` ``(B, ...)``."""
    if not isinstance(timesteps, torch.Tensor):
        return float(timesteps) / scheduler.num_train_timesteps
    fraction = timesteps.to(like.device, torch.float32) / scheduler.num_train_timesteps
    return fraction.reshape(-1, *[1] * (like.dim() - 1))


class RectifiedFlowScheduler(RFlowScheduler):
    """MONAI's rectified flow for a network that predicts ``x_0`` (``"sample"``) or the velocity.

    Training draws steps with ``sample_timesteps`` and noises with ``add_noise``, both MONAI's; sampling calls
    ``set_timesteps`` then :meth:`step` with the network's output as it is, like MONAI's DDPM and DDIM schedulers.
    Timestep transforms for large volumes are not offered: a subsequence of slices is not the volume they assume.

    Args:
        num_train_timesteps: ``T``, the number of steps the path is divided into (``t = T`` is pure noise).
        prediction_type: what the network outputs: ``"sample"`` (``x_0``) or ``"v_prediction"`` (``x_0 - noise``).
        use_discrete_timesteps: integer steps (MONAI's default) rather than continuous ones.
        sample_method: the training draw of ``t``: ``"uniform"`` or ``"logit-normal"`` (more weight mid-path).
        loc: location of the logit-normal draw.
        scale: scale of the logit-normal draw.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        prediction_type: str = "sample",
        use_discrete_timesteps: bool = True,
        sample_method: str = "uniform",
        loc: float = 0.0,
        scale: float = 1.0,
    ) -> None:
        if prediction_type not in ("sample", "v_prediction"):
            raise ValueError(
                f"prediction_type must be 'sample' or 'v_prediction' for rectified flow, got {prediction_type!r} "
                "(a noise prediction cannot give x_0 at t = T)"
            )
        if num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be positive, got {num_train_timesteps}")
        super().__init__(num_train_timesteps, use_discrete_timesteps, sample_method, loc, scale)
        self.prediction_type = prediction_type

    def velocity(
        self, model_output: torch.Tensor, timestep: torch.Tensor | float, sample: torch.Tensor
    ) -> torch.Tensor:
        """The velocity ``x_0 - noise`` that ``model_output`` implies for ``sample`` at ``timestep``.

        Args:
            model_output: ``(B, ...)`` the network's output (``x_0`` or the velocity, by ``prediction_type``).
            timestep: the step ``t`` (a number, or ``(B,)``).
            sample: ``(B, ...)`` the current ``x_t``.
        """
        if self.prediction_type == "v_prediction":
            return model_output
        # x_t = (1 - s) x_0 + s noise, so x_0 - noise = (x_0 - x_t) / s; s >= 1/T on every step a chain takes
        fraction = rflow_fraction(self, timestep, sample)
        if isinstance(fraction, torch.Tensor):
            fraction = fraction.clamp(min=1.0 / self.num_train_timesteps)
        else:
            fraction = max(fraction, 1.0 / self.num_train_timesteps)
        return (model_output - sample) / fraction

    def step(
        self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, next_timestep: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One Euler step of MONAI's rectified flow from ``timestep`` to ``next_timestep``, with the network's output
        as it is; returns ``(x_next, x_0 estimate)``."""
        return super().step(self.velocity(model_output, timestep, sample), timestep, sample, next_timestep)
