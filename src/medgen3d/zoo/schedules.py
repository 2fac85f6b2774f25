"""The noise schedule of a diffusion bundle, chosen by name in its configs and kept in its training record.

mask_mcdpm trains and samples with either schedule of :data:`NOISE_SCHEDULES`, by its top-level ``noise_schedule``:

- ``"ddpm"``: MONAI's DDPM path (trained with ``DDPMScheduler``, sampled with DDIM or the full DDPM chain), its
  betas named by ``beta_schedule`` (MONAI's names: the paper's ``linear_beta`` by default; ``scaled_linear_beta``,
  the brain preset's, trains and samples more where signal and noise are alike; ``cosine`` more still);
- ``"rflow"``: rectified flow (:class:`~medgen3d.diffusion.schedulers.RectifiedFlowScheduler`), a few steps.

The configs hold one scheduler definition per name and pick one with :func:`choose_scheduler`. The two paths noise
differently, so a network sampled along the other path gives noise: training keeps its ``noise_schedule`` in the
record beside the weights (its ``beta_schedule`` too), and :func:`check_trained_schedule` refuses a sampler whose
scheduler differs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from monai.networks.schedulers import RFlowScheduler, Scheduler

from medgen3d.data.io import SettingError
from medgen3d.zoo.record import RECORD_NAME, read_training_record

__all__ = ["NOISE_SCHEDULES", "noise_schedule_of", "choose_scheduler", "check_trained_schedule"]

NOISE_SCHEDULES = ("ddpm", "rflow")
# the betas (MONAI's name) of a DDPM network whose record predates the choice: before mask_mcdpm 0.9.0, linear ones
_UNRECORDED_BETAS = "linear_beta"


def noise_schedule_of(scheduler: Scheduler) -> str:
    """The noise path ``scheduler`` follows: ``"rflow"`` for rectified flow, else ``"ddpm"`` (DDPM, DDIM and PNDM
    share DDPM's path)."""
    return "rflow" if isinstance(scheduler, RFlowScheduler) else "ddpm"


def choose_scheduler(schedulers: Mapping[str, Scheduler | None], noise_schedule: str) -> Scheduler:
    """The scheduler of ``schedulers`` (one per name; the ones not chosen are disabled, ``None``) named by
    ``noise_schedule``; another name raises :class:`SettingError`."""
    scheduler = schedulers.get(noise_schedule) if noise_schedule in NOISE_SCHEDULES else None
    if scheduler is None:
        raise SettingError(f"noise_schedule: must be one of {list(NOISE_SCHEDULES)}, got {noise_schedule!r}")
    return scheduler


def check_trained_schedule(ckpt_dir: str | os.PathLike, scheduler: Scheduler, beta_schedule: str) -> None:
    """Refuse to sample the weights in ``ckpt_dir`` with ``scheduler`` when their training record says they were
    trained along another noise path, for another prediction type or, on the DDPM path, with other betas
    (``beta_schedule``, MONAI's schedule name) (:class:`SettingError`, one line naming the record and the setting to
    change). A record written before a choice existed holds what there was then: DDPM with linear betas. Without a
    record there is nothing to check."""
    path = Path(ckpt_dir) / RECORD_NAME
    if not path.is_file():
        return
    defaults = {"noise_schedule": "ddpm", "beta_schedule": _UNRECORDED_BETAS}
    settings = defaults | (read_training_record(ckpt_dir).get("settings") or {})
    used = {"noise_schedule": noise_schedule_of(scheduler), "prediction_type": str(scheduler.prediction_type)}
    if used["noise_schedule"] == "ddpm":  # the flow's path has no betas
        used["beta_schedule"] = beta_schedule
    for key, value in used.items():
        trained = settings.get(key)
        if trained is not None and trained != value:
            raise SettingError(
                f"{path}: the network was trained with {key} {trained!r}, but this run samples with "
                f"{type(scheduler).__name__} and {key} {value!r}; run with --{key} {trained}"
            )
