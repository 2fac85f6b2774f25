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


def workflow(
    bundle: str, configs: list[str], root: Path, base: tuple[str, ...] = (), **overrides
) -> ConfigWorkflow:
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
    args = [arg for key, value in overrides.items() for arg in (f"--{key}", json.dumps(value))]
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


def bundle_command(bundle: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m monai.bundle ARGS`` in a fresh process, from the bundle folder (the zoo's commands)."""
    cmd = [sys.executable, "-m", "monai.bundle", *args]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=BUNDLES / bundle, env=env, timeout=timeout)


def verify_net_in_out(bundle: str, n: int = 2, **overrides: str) -> subprocess.CompletedProcess:
    """``monai.bundle verify_net_in_out network_def`` on ``configs/inference.json`` alone, from the bundle folder."""
    args = [arg for key, value in overrides.items() for arg in (f"--{key}", value)]
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
        overrides: further ``--id value`` pairs (values as JSON).
    """
    files = configs[0] if len(configs) == 1 else "[" + ",".join(f"'{c}'" for c in configs) + "]"
    args = [arg for key, value in overrides.items() for arg in (f"--{key}", json.dumps(value))]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    if block:
        shadows = Path(tempfile.mkdtemp(prefix="blocked-packages-"))
        for package in block:
            (shadows / package).mkdir()
            (shadows / package / "__init__.py").write_text(f"raise ImportError('{package} is blocked in this run')\n")
        # PYTHONPATH comes before site-packages (and an editable install's path), so the shadow is found first
        env["PYTHONPATH"] = os.pathsep.join([str(shadows), *filter(None, [os.environ.get("PYTHONPATH")])])
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=bundle_dir, env=env, timeout=timeout)
