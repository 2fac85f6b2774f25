"""Running a bundle's configs in-process on tiny data, as ``python -m monai.bundle run`` would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from monai.bundle import ConfigWorkflow

from medgen3d.pipeline.stages import working_directory

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"

# each generating bundle's `configs/tiny.json`: networks for 16 x 16 slices and seconds of training
TINY_NETWORKS = {
    bundle: json.loads((BUNDLES / bundle / "configs" / "tiny.json").read_text())
    for bundle in ("mask_mcdpm", "image_vid2vid", "sdm_refiner")
}


def workflow(bundle: str, configs: list[str], root: Path, base: tuple[str, ...] = (), **overrides) -> ConfigWorkflow:
    """An initialised workflow over ``base`` + ``configs`` of ``bundles/<bundle>``, parsed from the bundle folder as
    the zoo's commands run (a task config's ``%configs/inference.json#id`` macros are read from there)."""
    config_dir = BUNDLES / bundle / "configs"
    wf = ConfigWorkflow(
        config_file=[str(config_dir / c) for c in [*base, *configs]],
        meta_file=str(config_dir / "metadata.json"),
        logging_file=str(config_dir / "logging.conf"),
        workflow_type="train" if "train.json" in configs else "infer",
        bundle_root=str(root),
        **overrides,
    )
    with working_directory(BUNDLES / bundle):
        wf.initialize()
    return wf


def error_chain(err: BaseException | None) -> str:
    """Every message in an exception's cause chain (monai.bundle wraps errors raised inside configs)."""
    messages = []
    while err is not None:
        messages.append(str(err))
        err = err.__cause__
    return "\n".join(messages)


def run_torchrun(
    bundle: str, configs: list[str], root: Path, base: tuple[str, ...] = (), **overrides
) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 -m monai.bundle run`` on the CPU (gloo), over ``base`` + ``configs``."""
    config_dir = BUNDLES / bundle / "configs"
    files = ",".join(f"'{config_dir / c}'" for c in [*base, *configs])
    args = cli_args(overrides)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        f"[{files}]",
        "--meta_file",
        str(config_dir / "metadata.json"),
        "--logging_file",
        str(config_dir / "logging.conf"),
        "--bundle_root",
        str(root),
        *args,
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=BUNDLES / bundle)


def cli_args(overrides: dict) -> list[str]:
    """``--id value`` pairs for ``python -m monai.bundle``, values as Python literals: fire reads the command line
    with Python's syntax, so JSON's ``false`` would arrive as a (true) string."""
    return [arg for key, value in overrides.items() for arg in (f"--{key}", repr(value))]


def bundle_command(
    where: str | Path, *args: str, timeout: int = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """``python -m monai.bundle ARGS`` in a fresh process, from a bundle folder (the zoo's commands): ``where`` is a
    bundle's name in ``bundles/`` or any bundle folder (an exported one)."""
    folder = BUNDLES / where if isinstance(where, str) else where
    cmd = [sys.executable, "-m", "monai.bundle", *args]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=folder, env=env, timeout=timeout)


def verify_net_in_out(bundle: str | Path, n: int = 2, **overrides: str) -> subprocess.CompletedProcess:
    """``monai.bundle verify_net_in_out network_def`` on ``configs/inference.json`` alone, from the bundle folder
    (a bundle's name in ``bundles/`` or any bundle folder, as :func:`bundle_command`); overrides as command-line
    text."""
    args = [arg for key, value in overrides.items() for arg in (f"--{key}", value)]  # given as command-line text
    return bundle_command(
        bundle,
        "verify_net_in_out",
        "network_def",
        "--meta_file",
        "configs/metadata.json",
        "--config_file",
        "configs/inference.json",
        "--device",
        "cpu",
        "--n",
        str(n),
        *args,
    )


def run_bundle_command(
    bundle_dir: Path, configs: list[str], block: Sequence[str] = (), timeout: int = 600, **overrides
) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run --config_file <configs>`` with ``bundle_dir`` as the working directory, the
    model zoo's form (config paths relative to the bundle folder, ``bundle_root`` ``"."``).

    Args:
        bundle_dir: the bundle folder the command runs from.
        configs: config files relative to ``bundle_dir`` (e.g. ``["configs/inference.json"]``).
        block: top-level packages that must not be imported: each is shadowed by a package whose import fails, so
            a run that needs it fails (e.g. ``["medgen3d"]`` for a config that must need only MONAI).
        timeout: seconds before the command is killed.
        overrides: further ``--id value`` pairs (Python values).
    """
    files = configs[0] if len(configs) == 1 else "[" + ",".join(f"'{c}'" for c in configs) + "]"
    env = {}
    if block:
        shadows = Path(tempfile.mkdtemp(prefix="blocked-packages-"))
        for package in block:
            (shadows / package).mkdir()
            (shadows / package / "__init__.py").write_text(f"raise ImportError('{package} is blocked in this run')\n")
        # PYTHONPATH comes before site-packages (and an editable install's path), so the shadow is found first
        env["PYTHONPATH"] = os.pathsep.join([str(shadows), *filter(None, [os.environ.get("PYTHONPATH")])])
    return bundle_command(
        Path(bundle_dir), "run", "--config_file", files, *cli_args(overrides), timeout=timeout, env=env
    )
