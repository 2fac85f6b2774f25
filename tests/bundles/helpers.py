"""Running a bundle's configs in-process on tiny data, as ``python -m monai.bundle run`` would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from monai.bundle import ConfigParser, ConfigWorkflow

from medgen3d.data.dataset import DatasetSpec
from medgen3d.pipeline.stages import working_directory
from medgen3d.zoo.record import write_training_record

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"

# each generating bundle's `configs/tiny.json`: networks for 16 x 16 slices and seconds of training
TINY_NETWORKS = {
    bundle: json.loads((BUNDLES / bundle / "configs" / "tiny.json").read_text())
    for bundle in ("mask_mcdpm", "image_vid2vid", "sdm_refiner")
}

# the default brain-mni data's labels, which each generating bundle's metadata describes
DEFAULT_LABELS = {"0": "background", "1": "cortex", "2": "subcortical_gm", "3": "white_matter", "4": "csf"}


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


def zoo_bundle(bundle: str, root: Path, labels: Mapping[str, str], overlays: Sequence[str] = ()) -> Path:
    """``bundles/<bundle>``'s configs at ``root/<bundle>`` in the state the zoo receives an exported bundle in, for
    :func:`verify_net_in_out`: ``models/`` holds a training record with ``labels``, and ``overlays`` (config files
    of the bundle, such as ``unetr.json``) are merged into ``configs/inference.json`` as the export merges the
    network overlay the weights were trained with.

    The record stands in for what the export always ships: a source bundle has neither it nor the dataset its
    configs read the labels from, and the labels set only the channel counts the metadata is checked against, never
    a spatial size.
    """
    folder = root / bundle
    shutil.copytree(BUNDLES / bundle / "configs", folder / "configs")
    inference = folder / "configs" / "inference.json"
    merged = ConfigParser.load_config_files([str(inference), *(str(folder / "configs" / o) for o in overlays)])
    inference.write_text(json.dumps(merged, indent=4) + "\n")
    write_training_record(DatasetSpec(bundle, "MR", {int(k): v for k, v in labels.items()}), folder / "models")
    return folder


def verify_net_in_out(folder: Path) -> subprocess.CompletedProcess:
    """``monai.bundle verify_net_in_out`` on a bundle folder (an exported bundle, or :func:`zoo_bundle`'s copy)
    exactly as model-zoo's ``ci/verify_bundle.py`` calls it: ``network_def`` of ``configs/inference.json``, the
    folder as ``bundle_root``, from the folder above it, and nothing else.

    No ``n`` on purpose: the zoo leaves it at 1, so the metadata's ``spatial_shape`` must hold at its smallest
    (``"4*n"`` gives a 4 x 4 slice). No device either: MONAI's default, the CPU here since CUDA is hidden.
    """
    folder = Path(folder).resolve()
    return bundle_command(
        folder.parent,
        "verify_net_in_out",
        "network_def",
        "--meta_file",
        f"{folder.name}/configs/metadata.json",
        "--config_file",
        f"{folder.name}/configs/inference.json",
        "--bundle_root",
        folder.name,
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


def check_cached_preprocessing(wf: ConfigWorkflow) -> None:
    """Assert that a train.json's ``CacheDataset`` caches its deterministic transforms (loading, scaling, resizing)
    and runs only the random ones per item: a ``Compose`` nested in the dataset's ``Compose`` counts as random to
    MONAI, so without ``.flatten()`` nothing is cached and every item is read from disk and scaled again."""
    from monai.transforms import Compose, RandomizableTrait, Transform

    dataset = wf.parser.get_parsed_content("train#dataset")
    deterministic = Compose(wf.parser.get_parsed_content("train#preprocessing")).flatten().transforms
    first_random = dataset.transform.get_index_of_first(
        lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform)
    )
    assert first_random == len(deterministic) > 0
    cached = dataset._cache[0]
    # the cache holds preprocessed volumes, not file names: read and channel first, images scaled to [-1, 1]
    assert cached["label"].ndim == 4
    if "image" in cached:
        assert cached["image"].ndim == 4 and -1.0 <= float(cached["image"].min()) <= float(cached["image"].max()) <= 1.0
