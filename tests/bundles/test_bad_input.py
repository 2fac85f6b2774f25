"""Bad input through the zoo's command line, ``python -m monai.bundle run`` from the bundle folder: every run ends
with one line ``medgen3d: error: <file or setting>: <problem>`` and a non-zero status, and leaves nothing behind
that looks like output (no case file, no checkpoint, no temporary file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from medgen3d.data.io import load_nifti, read_json, save_nifti, write_json
from tests.bundles.helpers import BUNDLES, TINY_NETWORKS, bundle_command, cli_args
from tests.conftest import TINY_AFFINE, write_tiny_dataset

MASK = {**TINY_NETWORKS["mask_mcdpm"], "num_inference_steps": 2, "num_cases": 2, "batch_size": 2}
IMAGE = {**TINY_NETWORKS["image_vid2vid"], "ndf": 8}
REFINER = {**TINY_NETWORKS["sdm_refiner"], "noise_steps": 2}
SETTINGS = {"mask_mcdpm": MASK, "image_vid2vid": IMAGE, "sdm_refiner": REFINER}
TRAIN = {"max_iterations": 1, "batch_size": 1, "val_interval": 1, "save_interval": 1, "preview_depth": 8}

DATA_FILES = sorted(["dataset.json"] + [f"case-{i}.nii.gz" for i in range(5) for _ in ("image", "label")])

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A tiny dataset and untrained checkpoints (what inference loads; values do not matter); the refiner's holds
    its axial view only."""
    base = tmp_path_factory.mktemp("bad-input")
    dataset = write_tiny_dataset(base / "data").root
    roots = {}
    for bundle, overrides in SETTINGS.items():
        root = base / bundle
        views = {"views": ["axial"]} if bundle == "sdm_refiner" else {}
        parser = ConfigParser()
        parser.read_config(str(BUNDLES / bundle / "configs" / "inference.json"))
        parser.update({"dataset_dir": str(dataset), **overrides, **views})
        state = parser.get_parsed_content("network_def").state_dict()  # model.pt's form
        (root / "models").mkdir(parents=True, exist_ok=True)
        torch.save(state, root / "models" / "model.pt")
        roots[bundle] = root
    return {"data": dataset, **roots}


def _run(bundle: str, config: str, root: Path, overrides: dict) -> tuple[int, str]:
    args = cli_args(overrides)
    result = bundle_command(
        bundle, "run", "--config_file", f"configs/{config}", "--bundle_root", str(root), *args, timeout=240
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return result.returncode, lines[-1] if lines else ""


def _copy_dataset(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


def _bad_label_value(data: Path, tmp: Path) -> Path:
    out = _copy_dataset(data, tmp / "undeclared")
    volume = load_nifti(out / "labels" / "case-0.nii.gz")
    array = volume.array.copy()
    array[0, 0, 0] = 7
    save_nifti(out / "labels" / "case-0.nii.gz", array, volume.affine)
    return out


def _malformed_json(data: Path, tmp: Path) -> Path:
    out = _copy_dataset(data, tmp / "malformed")
    (out / "dataset.json").write_text('{"name": "tiny", ')
    return out


def _missing_file(data: Path, tmp: Path) -> Path:
    out = _copy_dataset(data, tmp / "missing-file")
    (out / "labels" / "case-1.nii.gz").unlink()
    return out


def _shape_mismatch(data: Path, tmp: Path) -> Path:
    out = _copy_dataset(data, tmp / "mismatch")
    save_nifti(out / "images" / "case-0.nii.gz", np.zeros((16, 16, 10), np.float32), TINY_AFFINE)
    return out


def _affine_mismatch(data: Path, tmp: Path) -> Path:
    out = _copy_dataset(data, tmp / "affine")
    image = load_nifti(out / "images" / "case-2.nii.gz")
    moved = image.affine.copy()
    moved[0, 3] += 5.0
    save_nifti(out / "images" / "case-2.nii.gz", image.array, moved)
    return out


def _other_labels(data: Path, tmp: Path) -> Path:
    out = _copy_dataset(data, tmp / "other-labels")
    content = read_json(out / "dataset.json")
    content["labels"] = {**content["labels"], "4": "extra"}
    write_json(out / "dataset.json", content)
    return out


def _truncated(root: Path, tmp: Path) -> dict:
    ckpt = tmp / "truncated" / "model.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes((root / "models" / "model.pt").read_bytes()[:2000])
    return {"checkpoint": str(ckpt)}


def _garbage(root: Path, tmp: Path) -> dict:
    ckpt = tmp / "garbage" / "model.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"not a checkpoint" * 100)
    return {"checkpoint": str(ckpt)}


def _foreign(root: Path, tmp: Path) -> dict:
    ckpt = tmp / "foreign" / "model.pt"
    ckpt.parent.mkdir()
    torch.save({"model": torch.nn.Linear(3, 2).state_dict()}, ckpt)
    return {"checkpoint": str(ckpt)}


def _other_run(root: Path, tmp: Path) -> dict:
    out = tmp / "other-run"
    write_json(out / ".medgen3d-mask_mcdpm.json", {"seed": 99})
    return {"synthetic_dir": str(out)}


def _stray_images(root: Path, tmp: Path) -> dict:
    out = tmp / "stray"
    (out / "images").mkdir(parents=True)
    (out / "images" / "someone-else.nii.gz").write_bytes(b"x")
    return {"synthetic_dir": str(out)}


def _into_input(root: Path, tmp: Path) -> dict:
    return {"views": ["axial"], "refined_dir": "@pairs_dir"}


# (bundle, config, dataset change, overrides or a function of (bundle root, tmp) giving them, expected message)
CASES = {
    "undeclared label value": ("mask_mcdpm", "train.json", _bad_label_value, {}, "label values [7] are not in"),
    "missing dataset folder": (
        "mask_mcdpm",
        "train.json",
        None,
        {"dataset_dir": "/nonexistent/data"},
        "/nonexistent/data: dataset folder not found",
    ),
    "malformed dataset.json": ("mask_mcdpm", "train.json", _malformed_json, {}, "dataset.json: not valid JSON"),
    "listed file missing": ("mask_mcdpm", "train.json", _missing_file, {}, "case-1.nii.gz: file not found"),
    "labels differ from the configured": (
        "mask_mcdpm",
        "train.json",
        None,
        {"labels": {"0": "background", "1": "x"}},
        "differ from the configured",
    ),
    "image and label shapes differ": (
        "image_vid2vid",
        "train.json",
        _shape_mismatch,
        {},
        "labels/case-0.nii.gz: shape (16, 16, 12) differs from its image",
    ),
    "image and label affines differ": (
        "image_vid2vid",
        "train.json",
        _affine_mismatch,
        {},
        "labels/case-2.nii.gz: affine differs from its image",
    ),
    "size no network can take": (
        "mask_mcdpm",
        "train.json",
        None,
        {"image_size": [0, 16]},
        "image_size: every side must be positive",
    ),
    "missing checkpoint": (
        "mask_mcdpm",
        "inference.json",
        None,
        {"checkpoint": "/nonexistent/model.pt"},
        "/nonexistent/model.pt: checkpoint not found",
    ),
    "truncated checkpoint": ("mask_mcdpm", "inference.json", None, _truncated, "not a readable checkpoint"),
    "corrupt checkpoint": ("mask_mcdpm", "inference.json", None, _garbage, "not a readable checkpoint"),
    "mismatched checkpoint": ("mask_mcdpm", "inference.json", None, _foreign, "does not fit the configured network"),
    "impossible depth": ("mask_mcdpm", "inference.json", None, {"depth": 2}, "depth: 2 is shallower"),
    "zero cases": ("mask_mcdpm", "inference.json", None, {"num_cases": 0}, "num_cases: must be at least 1, got 0"),
    "negative batch": ("mask_mcdpm", "inference.json", None, {"batch_size": -1}, "batch_size: must be at least 1"),
    "start out of range": ("mask_mcdpm", "inference.json", None, {"depth": 8, "start": 7}, "start must be in [0, 4]"),
    "output folder of another run": (
        "mask_mcdpm",
        "inference.json",
        None,
        _other_run,
        "holds another mask_mcdpm run (",
    ),
    "masks with another label set": (
        "image_vid2vid",
        "inference.json",
        _other_labels,
        {},
        "differ from the configured labels",
    ),
    "refiner weights lacking views": (
        "sdm_refiner",
        "inference.json",
        None,
        {},
        "model.pt: holds views ['axial']; missing ['coronal', 'sagittal']",
    ),
    "refining into the input folder": (
        "sdm_refiner",
        "inference.json",
        None,
        _into_input,
        "is the input pairs' folder",
    ),
    "image folder of another run": (
        "image_vid2vid",
        "inference.json",
        None,
        _stray_images,
        "images/ holds files of another run",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_ends_with_one_line_and_leaves_nothing(setup, tmp_path, case):
    bundle, config, change_data, overrides, expected = CASES[case]
    root = setup[bundle]
    data = change_data(setup["data"], tmp_path) if change_data else setup["data"]
    values = overrides(root, tmp_path) if callable(overrides) else dict(overrides)
    base = {**SETTINGS[bundle], "dataset_dir": str(setup["data"])}
    if config == "train.json":
        base.update(TRAIN, dataset_dir=str(data), ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "eval"))
    elif bundle == "image_vid2vid":
        base.update(masks_dir=str(data), synthetic_dir=str(tmp_path / "pairs"))
    elif bundle == "sdm_refiner":
        base.update(pairs_dir=str(data), refined_dir=str(tmp_path / "pairs"))
    else:
        base["synthetic_dir"] = str(tmp_path / "masks")
    status, last = _run(bundle, config, root, {**base, **values})
    assert status != 0
    assert last.startswith("medgen3d: error: ") and expected in last, last
    given = {tmp_path / name / "model.pt" for name in ("truncated", "garbage", "foreign")}
    written = [p for p in tmp_path.rglob("*") if p.is_file() and (p.name.startswith(".tmp-") or p.suffix == ".pt")]
    written += list((tmp_path / "masks").glob("labels/*")) + list((tmp_path / "pairs").glob("images/*"))
    assert [p for p in written if p not in given] == []
    assert sorted(p.name for p in setup["data"].rglob("*") if p.is_file()) == DATA_FILES  # the input untouched
