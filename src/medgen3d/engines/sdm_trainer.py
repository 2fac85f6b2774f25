"""Trainer of a semantic diffusion model (one view of the MedGen3D refiner)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.schedulers import Scheduler
from torch.utils.data import DataLoader

from medgen3d.diffusion.training import regression_target
from medgen3d.engines.base import StepTrainer

__all__ = ["SemanticDiffusionTrainer"]


class SemanticDiffusionTrainer(StepTrainer):
    """Trains a SPADE diffusion UNet on (image slice, mask slice) pairs, dropping the mask with probability
    ``condition_dropout`` so that the same network also predicts unconditionally (classifier-free guidance).

    Batches hold ``"image"`` ``(B, 1, a, b)`` in [-1, 1] and ``"label"`` ``(B, 1, a, b)`` integer masks.
    ``engine.state.output`` is ``{"loss": ...}``.

    Args:
        device, max_iterations, train_data_loader, network, optimizer: as :class:`StepTrainer`.
        noise_scheduler: MONAI scheduler of the forward process; its ``prediction_type`` sets the target.
        num_classes: ``K``.
        condition_dropout: probability of training a sample with an all-zero mask (the null condition).
        max_timestep: diffusion steps are drawn from ``[0, max_timestep)``; None (the paper) draws from the whole
            schedule. The refiner only ever denoises from its ``t_r`` (10 of 1000 by default), so a model trained for
            refinement alone learns faster on the low-noise end it is used on; it then cannot generate from noise.
        train_handlers, amp, precision: as :class:`StepTrainer`.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_iterations: int,
        train_data_loader: Iterable | DataLoader,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        noise_scheduler: Scheduler,
        num_classes: int,
        condition_dropout: float = 0.2,
        max_timestep: int | None = None,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        precision: str = "auto",
    ) -> None:
        super().__init__(device, max_iterations, train_data_loader, network, optimizer, train_handlers, amp, precision)
        if not 0.0 <= condition_dropout < 1.0:
            raise ValueError(f"condition_dropout must be in [0, 1), got {condition_dropout}")
        steps = noise_scheduler.num_train_timesteps
        if max_timestep is not None and not 1 <= max_timestep <= steps:
            raise ValueError(f"max_timestep must be in [1, {steps}] (the schedule's steps), got {max_timestep}")
        self.noise_scheduler, self.num_classes, self.condition_dropout = noise_scheduler, num_classes, condition_dropout
        self.max_timestep = steps if max_timestep is None else max_timestep

    def _iteration(self, engine: "SemanticDiffusionTrainer", batchdata: dict[str, Any]) -> dict[str, torch.Tensor]:
        device = engine.state.device
        x_0 = self.batch_tensor(batchdata, "image", device).float()
        labels = self.batch_tensor(batchdata, "label", device).long()[:, 0]
        seg = F.one_hot(labels, self.num_classes).permute(0, 3, 1, 2).float()
        # 1. the null condition for classifier-free guidance: an all-zero mask
        keep = (torch.rand(seg.shape[0], device=device) >= self.condition_dropout).float()
        seg = seg * keep[:, None, None, None]
        # 2. noise to a random step and regress the target
        noise = torch.randn_like(x_0)
        t = torch.randint(0, self.max_timestep, (x_0.shape[0],), device=device)
        x_t = self.noise_scheduler.add_noise(x_0, noise, t)
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)
        with engine.autocast():
            prediction = engine.network(x_t, t, seg=seg)
            loss = F.mse_loss(prediction.float(), regression_target(self.noise_scheduler, x_0, noise, t))
        if engine.scaler is not None:  # float16 only
            engine.scaler.scale(loss).backward()
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.optimizer.step()
        engine.state.output = {"loss": loss.detach()}
        return engine.state.output
