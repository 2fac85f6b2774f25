"""Running a bundle's configs in-process on tiny data, as ``python -m monai.bundle run`` would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from monai.bundle import ConfigWorkflow

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


def workflow(
    bundle: str, configs: list[str], root: Path, base: tuple[str, ...] = ("common.json",), **overrides
) -> ConfigWorkflow:
    """An initialised workflow over ``base`` + ``configs`` of ``bundles/<bundle>`` (``base=()`` for bundles whose
    configs stand alone, as MONAI Label needs)."""
    config_dir = BUNDLES / bundle / "configs"
    wf = ConfigWorkflow(
        config_file=[str(config_dir / c) for c in [*base, *configs]],
        meta_file=str(config_dir / "metadata.json"),
        logging_file=str(config_dir / "logging.conf"),
        workflow_type="train" if "train.json" in configs else "infer",
        bundle_root=str(root),
        **overrides,
    )
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
    bundle: str, configs: list[str], root: Path, base: tuple[str, ...] = ("common.json",), **overrides
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
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def verify_net_in_out(bundle: str, cwd: Path, n: int = 2) -> subprocess.CompletedProcess:
    """``monai.bundle verify_net_in_out`` with the bundle's ``verify_net.json`` overlay."""
    config_dir = BUNDLES / bundle / "configs"
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "verify_net_in_out",
        "network_def",
        "--meta_file",
        str(config_dir / "metadata.json"),
        "--config_file",
        f"['{config_dir / 'common.json'}','{config_dir / 'verify_net.json'}']",
        "--device",
        "cpu",
        "--n",
        str(n),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=300)
