"""The common base of MedGen3D's trainers: a MONAI ``SupervisedTrainer`` whose ``_iteration`` is its own."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.utils import convert_to_tensor
from torch.utils.data import DataLoader

__all__ = ["StepTrainer"]


class StepTrainer(SupervisedTrainer):
    """A ``SupervisedTrainer`` for subclasses that compute their own losses in ``_iteration``.

    Batches are not decollated (the iteration works on whole batches) and the stock loss function is unused.
    Handlers, checkpointing, distributed samplers and events work as in any MONAI trainer.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        epoch_length: int | None = None,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=torch.nn.MSELoss(),  # unused: subclasses compute their losses
            train_handlers=train_handlers,
            amp=amp,
            epoch_length=epoch_length,
            decollate=False,
        )

    @staticmethod
    def batch_tensor(batchdata: dict[str, Any], key: str, device: torch.device) -> torch.Tensor:
        """``batchdata[key]`` as a plain tensor (no MetaTensor metadata) on ``device``."""
        return convert_to_tensor(batchdata[key], track_meta=False).to(device)
