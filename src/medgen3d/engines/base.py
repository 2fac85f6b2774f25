"""The common base of MedGen3D's trainers: a MONAI ``SupervisedTrainer`` whose ``_iteration`` is its own and whose
length is counted in optimiser steps."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from ignite.engine import Engine
from monai.engines import SupervisedTrainer
from monai.utils import convert_to_tensor
from torch.utils.data import DataLoader

from medgen3d.precision import autocast, autocast_dtype

__all__ = ["StepTrainer"]


class StepTrainer(SupervisedTrainer):
    """A ``SupervisedTrainer`` for subclasses that compute their own losses in ``_iteration``, run for a number of
    iterations rather than epochs.

    Training length is ``max_iterations`` optimiser steps whatever the dataset size, so a 10-case dataset trains as
    long as a 40-case one; the loader is restarted as often as needed (ignite's ``max_iters`` mode). An epoch is
    still one pass over the loader, which only matters to distributed samplers. Batches are not decollated (the
    iteration works on whole batches) and the stock loss function is unused. Handlers, checkpointing and events
    work as in any MONAI trainer.

    Subclasses run their forward passes and losses under :meth:`autocast` and step through :attr:`scaler` when it is
    set (float16 only: bfloat16 needs no gradient scaler); see :mod:`medgen3d.precision`.

    Args:
        device: training device.
        max_iterations: optimiser steps to run in all (a resumed run continues up to the same number).
        train_data_loader: the training loader.
        network: the network being trained (or its DDP wrapper).
        optimizer: its optimiser.
        train_handlers: ignite handlers.
        amp: the older switch for float16 autocast with a gradient scaler on CUDA: ``precision="fp16"``.
        precision: ``"auto"`` (bfloat16 autocast on CUDA and on a CPU with bfloat16 instructions, else float32),
            ``"bf16"``, ``"fp16"`` or ``"fp32"``.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_iterations: int,
        train_data_loader: Iterable | DataLoader,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        precision: str = "auto",
    ) -> None:
        if int(max_iterations) < 1:
            raise ValueError(f"max_iterations must be at least 1, got {max_iterations}")
        self.precision = "fp16" if amp else precision
        self.autocast_dtype = autocast_dtype(self.precision, device)
        super().__init__(
            device=device,
            max_epochs=1,  # replaced by the iteration budget below
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=torch.nn.MSELoss(),  # unused: subclasses compute their losses
            train_handlers=train_handlers,
            amp=self.autocast_dtype == torch.float16,  # MONAI's flag: a gradient scaler is kept
            decollate=False,
        )
        self.scaler: torch.amp.GradScaler | None = None
        self.state.max_epochs = None
        self.state.max_iters = int(max_iterations)

    @property
    def max_iterations(self) -> int:
        return int(self.state.max_iters)

    def run(self) -> None:  # type: ignore[override]
        """Train until ``max_iterations`` optimiser steps are done (resuming counts the steps already taken)."""
        if self.state.epoch_length == 0:
            warnings.warn("the training loader is empty: nothing to train")
            return
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None  # as MONAI's Trainer.run
        Engine.run(self, data=self.data_loader, max_iters=self.state.max_iters)

    def autocast(self) -> torch.autocast:
        """The autocast context of this trainer's forward passes and losses (disabled in float32)."""
        return autocast(self.autocast_dtype, self.state.device)

    @staticmethod
    def batch_tensor(batchdata: dict[str, Any], key: str, device: torch.device) -> torch.Tensor:
        """``batchdata[key]`` as a plain tensor (no MetaTensor metadata) on ``device``."""
        return convert_to_tensor(batchdata[key], track_meta=False).to(device)
