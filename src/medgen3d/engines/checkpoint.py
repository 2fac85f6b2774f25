"""Atomic checkpoints and resuming, for every MedGen3D trainer.

MONAI's ``CheckpointSaver`` writes with ignite's non-atomic saver, so a run killed while saving can leave a
truncated file under the final name. :class:`ResumableCheckpoint` writes to a temporary name and renames, keeps
one training checkpoint (everything needed to resume) and the network weights alone as ``model.pt`` (what the
inference configs, ``ckpt_export`` and MONAI Label load), and resumes from the training checkpoint when a run
starts. Files are read with ``weights_only=True``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from torch.optim.lr_scheduler import LRScheduler

from medgen3d.data.io import DataError, atomic_path

__all__ = [
    "first_line",
    "weights_mismatch",
    "BestModelSaver",
    "WeightsSnapshot",
    "ResumableCheckpoint",
    "load_weights",
    "read_weights",
    "save_atomically",
]

logger = logging.getLogger(__name__)


def save_atomically(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary name beside ``path``, then rename."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module


def read_weights(path: str | os.PathLike, key: str = "model") -> Mapping[str, Any]:
    """The state dict saved in ``path`` as a raw state dict or under ``key``, on the CPU (``weights_only``); a
    missing, corrupt or foreign file, or one that holds no mapping, raises :class:`DataError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise DataError(f"{path}: not a readable checkpoint ({type(err).__name__}: {first_line(err)})") from err
    if isinstance(state, Mapping) and key in state:
        state = state[key]
    if not isinstance(state, Mapping):
        raise DataError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state


def load_weights(network: torch.nn.Module, path: str | os.PathLike, key: str = "model") -> torch.nn.Module:
    """Load weights saved as a raw state dict or under ``key``; a missing, corrupt or mismatched file raises
    :class:`DataError` naming it."""
    state = read_weights(path, key)
    try:
        _unwrap(network).load_state_dict(state)
    except (RuntimeError, TypeError) as err:
        raise DataError(f"{path}: does not fit the configured network: {weights_mismatch(network, state)}") from err
    return network


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first non-empty line of ``err``'s message, cut to ``limit`` characters: an error report stays one line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def weights_mismatch(network: torch.nn.Module, state: Mapping[str, Any]) -> str:
    """One line saying how ``state`` differs from ``network``'s own state dict: how many weights are missing,
    unexpected, or of another shape, with the first of each (torch's own message lists every key, one per line)."""
    own = _unwrap(network).state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [
        k for k in own if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} weights missing (first '{missing[0]}')")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first '{unexpected[0]}')")
    if reshaped:
        k = reshaped[0]
        parts.append(
            f"{len(reshaped)} of another shape (first '{k}': {tuple(state[k].shape)} in the file, "
            f"{tuple(own[k].shape)} in the network)"
        )
    return "; ".join(parts) or "the weights do not load (wrong types)"


class ResumableCheckpoint:
    """Saves ``save_dict`` every ``interval`` iterations and at the end; resumes from it when the engine starts.

    Resuming keeps the run's configured length: a trainer counted in iterations (:class:`StepTrainer`) continues up
    to its ``max_iterations``, also from a checkpoint written when training was counted in epochs (the iteration
    count is what both record); an epoch-counted engine continues up to its ``max_epochs``. An object of
    ``save_dict`` that an older checkpoint lacks (an EMA copy, a learning-rate schedule) is reported and starts
    fresh; a module among them starts as a copy of ``"model"`` where the weights fit. A learning-rate schedule
    resumes at its step count but keeps its configured shape (its length, warm-up and final rate).

    Args:
        ckpt_dir: where ``checkpoint.pt`` (all of ``save_dict``) and ``model.pt`` (the network) are written.
        save_dict: objects with ``state_dict``, e.g. ``{"model": net, "optimizer": opt}``; ``"model"`` is the
            network. The engine the handler is attached to is added as ``"trainer"`` (its epoch and iteration).
        interval: iterations between saves.
        resume: load ``checkpoint.pt`` at start when it exists.
        model_filename: name of the weights-only file (another name when a validator saves the best model as
            ``model.pt``, see :class:`BestModelSaver`).
        export: the ``save_dict`` entry whose weights go to ``model_filename``: ``"model"``, or ``"ema"`` when the
            averaged weights are the ones that inference samples with.
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        interval: int = 1,
        resume: bool = True,
        model_filename: str = "model.pt",
        export: str = "model",
    ):
        if "model" not in save_dict:
            raise ValueError("save_dict must hold the network under 'model'")
        if export not in save_dict:
            raise ValueError(f"export {export!r} is not a key of save_dict {sorted(save_dict)}")
        self.ckpt_dir = Path(ckpt_dir)
        self.save_dict = dict(save_dict)
        self.interval = interval
        self.resume = resume
        self.model_filename = model_filename
        self.export = export

    @property
    def checkpoint_path(self) -> Path:
        return self.ckpt_dir / "checkpoint.pt"

    @property
    def model_path(self) -> Path:
        return self.ckpt_dir / self.model_filename

    def attach(self, engine: Engine) -> None:
        self.save_dict.setdefault("trainer", engine)
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def load(self, engine: Engine) -> None:
        if not self.checkpoint_path.is_file():
            return
        try:
            state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise DataError(
                f"{self.checkpoint_path}: not a readable checkpoint ({err}); delete it to start over"
            ) from err
        configured = engine.state.max_epochs, engine.state.max_iters, engine.state.epoch_length
        objects = {k: (_unwrap(v) if isinstance(v, torch.nn.Module) else v) for k, v in self.save_dict.items()}
        schedules = {k: v.state_dict() for k, v in objects.items() if isinstance(v, LRScheduler)}
        missing = [k for k in objects if k not in state]
        Checkpoint.load_objects(to_load={k: v for k, v in objects.items() if k not in missing}, checkpoint=state)
        for key in missing:
            self._start_fresh(key, objects)
        for key, shape in schedules.items():
            # a schedule continues from its step count with the configured shape: a run extended to more
            # iterations decays over the new length, not the old one
            schedule = objects[key]
            schedule.load_state_dict({**shape, "last_epoch": schedule.last_epoch, "_step_count": schedule._step_count})
        self._restore_length(engine, *configured)
        logger.info(f"resumed from {self.checkpoint_path} at iteration {engine.state.iteration}")

    def _start_fresh(self, key: str, objects: Mapping[str, Any]) -> None:
        """An object the checkpoint lacks (written before it existed): a module copies the model where it fits."""
        obj = objects[key]
        if isinstance(obj, torch.nn.Module) and key != "model":
            try:
                obj.load_state_dict(objects["model"].state_dict())
                logger.warning(f"{self.checkpoint_path}: no {key!r}; it starts as a copy of the model")
                return
            except RuntimeError:
                pass
        logger.warning(f"{self.checkpoint_path}: no {key!r}; it starts fresh")

    def _restore_length(
        self, engine: Engine, max_epochs: int | None, max_iters: int | None, epoch_length: int | None
    ) -> None:
        """Keep the configured length (the checkpoint brings its own, possibly in the other unit)."""
        if epoch_length is not None:
            engine.state.epoch_length = epoch_length
            engine.state.epoch = engine.state.iteration // epoch_length
        if max_iters is not None:
            if engine.state.iteration >= max_iters:
                logger.warning(f"{self.checkpoint_path}: already at iteration {engine.state.iteration} of {max_iters}")
            engine.state.max_epochs, engine.state.max_iters = None, max(max_iters, engine.state.iteration)
        else:
            if max_epochs is not None and engine.state.epoch >= max_epochs:
                logger.warning(f"{self.checkpoint_path}: already at epoch {engine.state.epoch} of {max_epochs}")
            engine.state.max_iters, engine.state.max_epochs = None, max(max_epochs or 0, engine.state.epoch)

    def save(self, engine: Engine) -> None:
        if idist.get_rank() != 0:
            return  # one writer under DDP
        state = {
            k: (_unwrap(v) if isinstance(v, torch.nn.Module) else v).state_dict() for k, v in self.save_dict.items()
        }
        save_atomically(state, self.checkpoint_path)
        save_atomically(state[self.export], self.model_path)


class WeightsSnapshot:
    """Attached to a trainer: writes the network's weights after the given iterations, ``model_step<k>.pt``.

    A fine-tuning run that shares a fixed budget of optimiser steps with its pre-training starts from such a
    snapshot: the source trains its full length for its own result, and the weights it had after the pre-training
    share of the budget seed the fine-tuning. Written atomically by rank 0; a resumed training that passes the
    iteration again writes the same weights (the checkpoint it resumed from precedes it).

    Args:
        network: the network being trained (unwrapped from DDP when wrapped).
        ckpt_dir: the folder of the snapshots.
        iterations: after which iterations (1-based, as ``engine.state.iteration``) to write one.
    """

    def __init__(self, network: torch.nn.Module, ckpt_dir: str | os.PathLike, iterations: Sequence[int] = ()) -> None:
        self.network, self.ckpt_dir, self.iterations = network, Path(ckpt_dir), {int(i) for i in iterations}

    def path(self, iteration: int) -> Path:
        """Where the snapshot after ``iteration`` goes."""
        return self.ckpt_dir / f"model_step{iteration}.pt"

    def attach(self, engine: Engine) -> None:
        if self.iterations:
            engine.add_event_handler(Events.ITERATION_COMPLETED(event_filter=lambda _, i: i in self.iterations), self)

    def __call__(self, engine: Engine) -> None:
        if idist.get_rank() != 0:
            return
        save_atomically(_unwrap(self.network).state_dict(), self.path(engine.state.iteration))
        logger.info(f"saved {self.path(engine.state.iteration)}")


class BestModelSaver:
    """Attached to a validator: writes the network's weights atomically whenever ``metric_name`` improves.

    The best value is kept beside the weights (``<path>.best.json``), so a resumed training does not overwrite a
    better model with a worse one.

    Args:
        network: the network being trained (unwrapped from DDP when wrapped).
        path: where the weights go (``models/model.pt``, what inference and MONAI Label load).
        metric_name: the validator's key metric.
    """

    def __init__(self, network: torch.nn.Module, path: str | os.PathLike, metric_name: str = "val_mean_dice") -> None:
        self.network, self.path, self.metric_name = network, Path(path), metric_name
        self.record = self.path.with_name(self.path.name + ".best.json")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    @property
    def best(self) -> float:
        import json

        return json.loads(self.record.read_text())["value"] if self.record.is_file() else float("-inf")

    def __call__(self, engine: Engine) -> None:
        from medgen3d.data.io import write_json

        value = float(engine.state.metrics[self.metric_name])
        if value <= self.best:
            return
        if idist.get_rank() != 0:
            return
        save_atomically(_unwrap(self.network).state_dict(), self.path)
        write_json(self.record, {"metric": self.metric_name, "value": value})
        logger.info(f"saved {self.path}: {self.metric_name} {value:.4f}")
