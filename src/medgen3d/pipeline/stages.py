"""Running a stage bundle's configs in-process, as ``python -m monai.bundle run`` would.

The workflow bundle chains the four stage bundles without copying their configs: each stage is a bundle folder, the
configs it needs (a task config such as ``train.json``, which stands alone, and a preset overlay such as
``paper.json``), and where its checkpoints and logs go. The stage's own ``initialize`` checks (labels, checkpoints)
run as usual, so a mismatch fails the same way whether a stage runs alone or inside the workflow.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from monai.bundle import ConfigWorkflow

from medgen3d.data.io import DataError

__all__ = ["StageBundle", "PipelineStages", "require_files", "working_directory"]


@dataclass
class StageBundle:
    """One stage of the pipeline: a bundle folder and how to run it.

    Args:
        bundle_dir: the stage bundle (holds ``configs/``).
        ckpt_dir: where the stage's checkpoints are written and read (its ``ckpt_dir``).
        output_dir: where its logs, previews and TensorBoard files go (its ``output_dir``).
        base: config files of ``configs/`` read before the task's own (none: every task config stands alone).
        overlays: config files read after the task's, so they override it too: a preset such as ``paper.json``,
            a network such as ``unet2d.json``.
        overrides: further top-level values for every task of this stage (e.g. ``dataset_dir``, ``labels``).
    """

    bundle_dir: str | os.PathLike
    ckpt_dir: str | os.PathLike
    output_dir: str | os.PathLike
    base: Sequence[str] = ()
    overlays: Sequence[str] = ()
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return Path(self.bundle_dir).name

    def config_files(self, task: Sequence[str]) -> list[Path]:
        """``base`` + ``task`` + ``overlays``, as paths into the bundle's ``configs/`` (all must exist)."""
        config_dir = Path(self.bundle_dir) / "configs"
        files = [config_dir / name for name in [*self.base, *task, *self.overlays]]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DataError(f"stage {self.name}: config files not found: {missing}")
        return files

    def workflow(self, task: Sequence[str], **overrides: Any) -> ConfigWorkflow:
        """The stage's workflow for ``task`` (e.g. ``["inference.json"]``) with the stage's overrides, then
        ``overrides``, not yet initialised; its ``parser`` gives parsed values (a network, an inferer)."""
        config_dir = Path(self.bundle_dir) / "configs"
        values = {
            "bundle_root": str(Path(self.bundle_dir).resolve()),
            "ckpt_dir": str(self.ckpt_dir),
            "output_dir": str(self.output_dir),
            **self.overrides,
            **overrides,
        }
        logging_file = config_dir / "logging.conf"
        workflow = ConfigWorkflow(
            config_file=[str(f) for f in self.config_files(task)],
            meta_file=str(config_dir / "metadata.json"),
            logging_file=str(logging_file) if logging_file.is_file() else False,
            workflow_type=None,
            **values,
        )
        # A task config copies what it shares with inference.json through MONAI's "%configs/inference.json#id"
        # macros, whose paths MONAI reads relative to the working directory (the bundle folder, in the zoo's
        # commands). Expand them here, from the bundle folder, so that the workflow runs from anywhere.
        with working_directory(self.bundle_dir):
            workflow.parser.resolve_macro_and_relative_ids()
        return workflow

    def run(self, task: Sequence[str], **overrides: Any) -> ConfigWorkflow:
        """Initialise, run and finalise :meth:`workflow`; returns it finished (its parsed values can be read)."""
        workflow = self.workflow(task, **overrides)
        start = time.monotonic()
        print(f"[{self.name}] {' + '.join(task)} starts", file=sys.stderr, flush=True)
        workflow.initialize()
        workflow.run()
        workflow.finalize()
        print(f"[{self.name}] {' + '.join(task)} done in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
        return workflow


class PipelineStages(NamedTuple):
    """The four stages: the three generators and the segmenter trained on real data, which the quality report
    uses for features and alignment."""

    mask: StageBundle
    image: StageBundle
    refiner: StageBundle
    segmenter: StageBundle


@contextlib.contextmanager
def working_directory(path: str | os.PathLike) -> Iterator[None]:
    """Run the block with ``path`` as the working directory, then return to the previous one."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def require_files(files: Mapping[str, str | os.PathLike]) -> None:
    """Raise one :class:`DataError` listing every missing file (what -> path), so a long run fails before it
    starts rather than after its first stage."""
    missing = [f"{what}: {path}" for what, path in files.items() if not Path(path).is_file()]
    if missing:
        raise DataError("missing " + "; ".join(missing))
