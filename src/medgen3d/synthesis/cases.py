"""The one per-case loop of every stage that writes a dataset: which cases this process owns, which of them are
still to do, and the ``dataset.json`` written once every case exists.

A case is finished when its file in the runner's ``done_in`` folder exists (``labels/`` for generated masks,
``images/`` for the image stages, which copy the mask first and write the image last). Every file goes through
:func:`~medgen3d.data.io.save_nifti`, which writes atomically, so a case is whole or absent and an interrupted run
resumes where it stopped.

Under ``torchrun`` (one node or many) rank ``r`` of ``W`` takes cases ``r, r + W, …``. The ranks join a gloo group
only to wait for each other: rank 0 claims the output folder before the others look at it, and writes
``dataset.json`` once every rank has finished, so every rank then reads the whole dataset and the next stage can
start. Ranks started without a rendezvous (a job array setting ``RANK``/``WORLD_SIZE`` by hand) run without waiting;
rank 0 writes ``dataset.json`` if it finds every case, and a rerun with ``world_size`` 1 writes it once the shards
are all done. The folder must be one file system that every rank sees.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple, Protocol, TypeVar

import torch.distributed as dist

from medgen3d.data.dataset import DATASET_JSON, Case, DatasetSpec, read_dataset, write_dataset
from medgen3d.data.io import SettingError

__all__ = ["Progress", "Shard", "CaseRunner", "wait_for_ranks"]

Progress = Callable[[int, int, str], None]
"""``callback(done, total, case_id)`` after each case a process writes (``total``: the cases it owns)."""

# a rank waits for the slowest one at the end of each stage: hours at paper size on a few GPUs
_WAIT = timedelta(days=1)


class _Named(Protocol):
    @property
    def case_id(self) -> str: ...


Item = TypeVar("Item", bound=_Named)


class Shard(NamedTuple):
    """This process's share of the cases: rank ``rank`` of ``world_size`` takes cases ``rank, rank + W, …``."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def from_environment(cls) -> Shard:
        """The shard ``torchrun`` (or a job array) gave this process through ``RANK`` and ``WORLD_SIZE``."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))).checked()

    def checked(self) -> Shard:
        """This shard, or a :class:`SettingError` naming the setting that is out of range."""
        if self.world_size < 1:
            raise SettingError(f"world_size: must be at least 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise SettingError(f"rank: must be in [0, {self.world_size - 1}], got {self.rank}")
        return self

    def owns(self, index: int) -> bool:
        """Whether case ``index`` (its place in the whole run) is this process's."""
        return index % self.world_size == self.rank

    def connect(self) -> None:
        """Join the ranks' process group, when ``torchrun`` started several processes and none is joined yet.

        gloo works on every machine and carries only the waits; the networks never communicate.
        """
        if self.world_size > 1 and "MASTER_ADDR" in os.environ and dist.is_available() and not dist.is_initialized():
            dist.init_process_group("gloo", rank=self.rank, world_size=self.world_size, timeout=_WAIT)


def wait_for_ranks() -> None:
    """Wait until every rank of the process group gets here (nothing to wait for outside one)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


class CaseRunner:
    """Runs a stage's cases into ``out_dir``: this shard's pending ones, in batches, then ``dataset.json``.

    Args:
        out_dir: the output dataset folder.
        done_in: the sub-folder whose ``<case>.nii.gz`` marks a case finished (``"images"`` or ``"labels"``).
        shard: this process's share of the cases.
        progress: optional ``callback(done, total, case_id)``.
        redo: write every case again, finished or not.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        done_in: str,
        shard: Shard = Shard(),
        progress: Progress | None = None,
        redo: bool = False,
    ) -> None:
        if done_in not in ("images", "labels"):
            raise ValueError(f"done_in must be 'images' or 'labels', got {done_in!r}")
        self.out = Path(out_dir)
        self.done_in = done_in
        self.shard = shard.checked()
        self.progress = progress
        self.redo = redo

    def target(self, case_id: str) -> Path:
        """The file whose existence marks ``case_id`` finished."""
        named = Case.named(case_id)
        return self.out / (named.image if self.done_in == "images" else named.label)

    def pending(self, cases: Sequence[Item]) -> list[Item]:
        """This shard's cases of ``cases`` (the whole run, in order) that are not finished."""
        mine = [case for i, case in enumerate(cases) if self.shard.owns(i)]
        return [case for case in mine if self.redo or not self.target(case.case_id).exists()]

    def run(self, cases: Sequence[Item], write: Callable[[list[Item]], None], batch_size: int = 1) -> None:
        """Call ``write`` on this shard's pending cases, ``batch_size`` at a time; it writes each case's files.

        Args:
            cases: every case of the run, in order (each has a ``case_id``); the shard picks its own.
            write: writes the files of the cases it is given (the image last, where a case has one).
            batch_size: cases per call of ``write``.
        """
        if batch_size < 1:
            raise SettingError(f"batch_size: must be at least 1, got {batch_size}")
        total = sum(1 for i in range(len(cases)) if self.shard.owns(i))
        pending = self.pending(cases)
        done = total - len(pending)
        for first in range(0, len(pending), batch_size):
            batch = pending[first : first + batch_size]
            write(batch)
            for case in batch:
                done += 1
                if self.progress is not None:
                    self.progress(done, total, case.case_id)

    def finish(self, case_ids: Sequence[str], dataset: Callable[[], DatasetSpec]) -> DatasetSpec | None:
        """Write ``dataset()`` as ``dataset.json`` on rank 0 once every case of the run exists.

        Returns:
            The written dataset: on every rank inside a process group (they wait for rank 0), on rank 0 alone
            otherwise; ``None`` where cases are still missing or rank 0 may not have written it yet.
        """
        wait_for_ranks()
        complete = all(self.target(case_id).exists() for case_id in case_ids)
        if complete and self.shard.rank == 0:
            write_dataset(self.out, dataset())
        wait_for_ranks()
        waited = dist.is_available() and dist.is_initialized()
        if complete and (self.shard.rank == 0 or waited) and (self.out / DATASET_JSON).is_file():
            return read_dataset(self.out)
        return None
