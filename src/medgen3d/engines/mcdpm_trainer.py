"""Ignite/MONAI trainer for the MC-DPM mask generator."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.networks.schedulers import Scheduler
from torch.utils.data import DataLoader

from medgen3d.data.io import SettingError
from medgen3d.diffusion.conditions import corrupt_condition, draw_condition, one_hot_slices
from medgen3d.diffusion.training import DICE_WEIGHTINGS, mcdpm_loss
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
        dice_weight: weight of the auxiliary structure Dice term (0: the paper's loss alone). It reads the
            network's ``x_0`` estimate, which noise prediction divides by ``sqrt(alpha_bar_t)``: there the term is
            unbounded at high noise and dominates the regression at low noise, so it needs ``prediction_type``
            ``"sample"`` or ``"v_prediction"`` (a :class:`SettingError` otherwise).
        dice_weighting: ``"low_noise"`` (the Dice of an item counts by its signal share, see
            :func:`~medgen3d.diffusion.training.structure_weight`) or ``"uniform"``.
        p_min_known: probability that a conditional item gets exactly ``num_known[0]`` given slices, the count
            every interior generation window uses (see :func:`~medgen3d.diffusion.conditions.draw_indicators`).
        condition_corruption: rate at which the given slices' boundary pixels take a neighbour's label
            (:func:`~medgen3d.diffusion.conditions.corrupt_condition`); 0: given slices exactly real.
        class_weights: ``K`` positive weights of the regression's voxels by their true label
            (:func:`~medgen3d.diffusion.training.label_weights`); ``None``: all 1.
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
        dice_weighting: str = "uniform",
        p_min_known: float = 0.0,
        condition_corruption: float = 0.0,
        class_weights: Sequence[float] | None = None,
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
        if self.dice_weight and noise_scheduler.prediction_type == "epsilon":
            raise SettingError(
                f"dice_weight: must be 0 with prediction_type 'epsilon' (got {self.dice_weight}); the structure term "
                "reads an x_0 estimate that noise prediction makes unstable; use 'sample' to keep it"
            )
        if dice_weighting not in DICE_WEIGHTINGS:
            raise SettingError(f"dice_weighting: must be one of {list(DICE_WEIGHTINGS)}, got {dice_weighting!r}")
        if not 0.0 <= p_min_known <= 1.0:
            raise SettingError(f"p_min_known: must be in [0, 1], got {p_min_known}")
        if not 0.0 <= condition_corruption <= 1.0:
            raise SettingError(f"condition_corruption: must be in [0, 1], got {condition_corruption}")
        if class_weights is not None and (len(class_weights) != num_classes or min(class_weights) <= 0):
            raise SettingError(
                f"class_weights: must be {num_classes} positive weights, one per label (null: all 1), "
                f"got {list(class_weights)}"
            )
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.dice_weighting = dice_weighting
        self.p_min_known = float(p_min_known)
        self.condition_corruption = float(condition_corruption)
        self.max_grad_norm = max_grad_norm

    def _iteration(self, engine: "MCDPMTrainer", batchdata: dict[str, Any]) -> dict[str, torch.Tensor]:
        # 1. clean subsequences as one-hot slices (B, m, K, H, W) and their positions
        labels = self.batch_tensor(batchdata, "label", engine.state.device)
        x_0 = one_hot_slices(labels[:, 0].permute(0, 3, 1, 2), self.num_classes)
        position = self.batch_tensor(batchdata, "position", engine.state.device).float()
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        # 2. conditional slices X^C: the first or last n slices, or none (probabilities p_F, p_B, p_U), their
        # boundaries jittered as a generated slice's would be; the targets stay real
        condition = draw_condition(x_0, position, self.condition_probabilities, self.num_known, None, self.p_min_known)
        condition = corrupt_condition(condition, self.condition_corruption)
        # 3. the masked MC-DPM loss and the structure term, 4. backward and step
        with engine.autocast():
            terms = mcdpm_loss(
                engine.network, self.noise_scheduler, x_0, condition, self.dice_weighting, self.class_weights
            )
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
