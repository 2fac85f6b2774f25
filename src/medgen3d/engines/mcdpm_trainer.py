"""Ignite/MONAI trainer for the MC-DPM mask generator."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.networks.schedulers import Scheduler
from torch.utils.data import DataLoader

from medgen3d.diffusion.conditions import draw_condition, one_hot_slices
from medgen3d.diffusion.training import mcdpm_loss
from medgen3d.engines.base import StepTrainer

__all__ = ["MCDPMTrainer"]


class MCDPMTrainer(StepTrainer):
    """Trains the MC-DPM on random mask subsequences (MedGen3D Sec. 3.1).

    Batches hold ``"label"`` ``(B, 1, H, W, m)`` integer subsequences and ``"position"`` ``(B,)``
    (see :class:`medgen3d.transforms.RandSubsequenced`). ``engine.state.output`` holds ``"loss"`` (what is
    minimised), ``"regression"`` and ``"dice"`` (its two terms, see :mod:`medgen3d.diffusion.training`).

    Args:
        device: training device.
        max_iterations: optimiser steps to run (see :class:`StepTrainer`).
        train_data_loader: the subsequence loader.
        network: the denoiser (or its DDP wrapper).
        optimizer: its optimiser.
        noise_scheduler: MONAI scheduler defining the forward process and the target (DDPM or rectified flow).
        num_classes: ``K``.
        condition_probabilities: ``{"forward": p_F, "backward": p_B, "unconditional": p_U}``.
        num_known: range of known slices in the conditional modes.
        dice_weight: weight of the auxiliary structure Dice term (0: the paper's loss alone).
        max_grad_norm: gradient clipping norm (``None``: no clipping).
        train_handlers: ignite handlers.
        amp, precision: mixed precision (see :class:`StepTrainer`).
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
        condition_probabilities: Mapping[str, float],
        num_known: Sequence[int],
        dice_weight: float = 0.0,
        max_grad_norm: float | None = 1.0,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        precision: str = "auto",
    ) -> None:
        super().__init__(device, max_iterations, train_data_loader, network, optimizer, train_handlers, amp, precision)
        self.noise_scheduler = noise_scheduler
        self.num_classes = num_classes
        self.condition_probabilities = dict(condition_probabilities)
        self.num_known = (int(num_known[0]), int(num_known[1]))
        self.dice_weight = float(dice_weight)
        self.max_grad_norm = max_grad_norm

    def _iteration(self, engine: "MCDPMTrainer", batchdata: dict[str, Any]) -> dict[str, torch.Tensor]:
        # 1. clean subsequences as one-hot slices (B, m, K, H, W) and their positions
        labels = self.batch_tensor(batchdata, "label", engine.state.device)
        x_0 = one_hot_slices(labels[:, 0].permute(0, 3, 1, 2), self.num_classes)
        position = self.batch_tensor(batchdata, "position", engine.state.device).float()
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        # 2. conditional slices X^C: the first or last n slices, or none (probabilities p_F, p_B, p_U)
        condition = draw_condition(x_0, position, self.condition_probabilities, self.num_known)
        # 3. the masked MC-DPM loss and the structure term, 4. backward and step
        with engine.autocast():
            terms = mcdpm_loss(engine.network, self.noise_scheduler, x_0, condition)
            loss = terms.total(self.dice_weight)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        self._backward_and_step(engine, loss)
        engine.state.output = {"loss": loss.detach(), **{k: v.detach() for k, v in terms._asdict().items()}}
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    def _backward_and_step(self, engine: "MCDPMTrainer", loss: torch.Tensor) -> None:
        scaler = engine.scaler if engine.amp and engine.scaler is not None else None
        (scaler.scale(loss) if scaler else loss).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if self.max_grad_norm is not None:
            if scaler:
                scaler.unscale_(engine.optimizer)
            torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.max_grad_norm)
        if scaler:
            scaler.step(engine.optimizer)
            scaler.update()
        else:
            engine.optimizer.step()
