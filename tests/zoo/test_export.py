"""``medgen3d bundle export``: trained stages become model-zoo bundles that MONAI's own tools read offline.

The segmentation bundle is exported with the weights of a real (untrained) Swin-UNETR and then read back the ways a
user would: ``monai.bundle.download`` from the archive's ``file://`` address, ``monai.bundle.load`` of the network
and ``download_large_files`` checking the hash. The generators' metadata is checked on copies of their bundles
whose network sizes the test sets, so the expected channel counts do not depend on the repository's defaults.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

from medgen3d.cli import main
from medgen3d.data.io import DataError
from medgen3d.zoo import export as export_module
from medgen3d.zoo.export import EXPORT_MARKER, ExportedBundle, export_bundles

REPO = Path(__file__).resolve().parents[2]
SCHEMA_NAME = "meta_schema_20240725.json"
LABELS = {"0": "background", "1": "liver", "2": "spleen", "3": "kidney"}
K = len(LABELS)
SEG_RECORD = {"name": "tiny-ct", "modality": "CT", "labels": LABELS, "image_size": None}
# what training writes beside the weights: the record and the ids of its training cases, which are not exported
TRAINED_RECORD = SEG_RECORD | {"training_cases": ["patient-smith-01", "patient-jones-02"]}

# the archive name carries the bundle version, read from the bundle itself
VERSION = json.loads((REPO / "bundles" / "segmentation_eval" / "configs" / "metadata.json").read_text())["version"]


def schema_path() -> Path | None:
    """The offline bundle schema, found as tests/bundles/test_bundle_layout.py finds it."""
    candidates = [os.environ.get("MEDGEN3D_BUNDLE_SCHEMA"), REPO.parent / "shared" / "schema" / SCHEMA_NAME]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def check_schema(meta_file: Path) -> None:
    from monai.bundle import verify_metadata

    schema = schema_path()
    if schema is None:
        pytest.skip(f"no offline copy of {SCHEMA_NAME}: set MEDGEN3D_BUNDLE_SCHEMA to check exported metadata")
    verify_metadata(meta_file=str(meta_file), filepath=str(schema))


def write_stage(models: Path, folder: str, record: dict, weights: dict) -> Path:
    """A trained stage as the workflow leaves it: ``models/<folder>/model.pt`` and ``training_data.json``."""
    stage = models / folder
    stage.mkdir(parents=True)
    torch.save(weights, stage / "model.pt")
    (stage / "training_data.json").write_text(json.dumps(record, indent=4))
    return stage


def swin_unetr() -> torch.nn.Module:
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(0)
    return SwinUNETR(in_channels=1, out_channels=K, feature_size=12)


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path, list[ExportedBundle]]:
    """segmentation_eval trained (as 'segmenter') on a 4-label CT dataset, exported once for the module."""
    root = tmp_path_factory.mktemp("export")
    models = root / "models"
    write_stage(models, "segmenter", TRAINED_RECORD, swin_unetr().state_dict())
    out = root / "out"
    return models, out, export_bundles(models, out)


def test_export_copies_the_bundle_with_its_weights_and_record(exported):
    models, out, result = exported
    assert [b.name for b in result] == ["segmentation_eval"]
    bundle = result[0]
    assert bundle.folder == out / "segmentation_eval"
    assert bundle.archive == out / f"segmentation_eval_v{VERSION}.zip" and bundle.archive.is_file()
    source = REPO / "bundles" / "segmentation_eval"
    for name in ("LICENSE", "docs/README.md", "configs/inference.json", "configs/train.json", "configs/logging.conf"):
        assert (bundle.folder / name).read_bytes() == (source / name).read_bytes(), name
    weights = (models / "segmenter" / "model.pt").read_bytes()
    assert (bundle.folder / "models" / "model.pt").read_bytes() == weights
    assert bundle.sha256 == hashlib.sha256(weights).hexdigest()
    record = json.loads((bundle.folder / "models" / "training_data.json").read_text())
    assert record == SEG_RECORD  # without the training case ids
    assert not any(b"patient-" in data for data in tree(bundle.folder).values())
    assert sorted(p.name for p in (bundle.folder / "models").iterdir()) == ["model.pt", "training_data.json"]
    assert not (bundle.folder / "eval").exists() and not list(bundle.folder.rglob("__pycache__"))
    # nothing but the bundle and its archive: no temporary folder or file is left behind
    assert sorted(p.name for p in out.iterdir()) == ["segmentation_eval", f"segmentation_eval_v{VERSION}.zip"]
    assert bundle.sha256[:12] in bundle.describe()


def test_large_files_lists_the_weights_with_their_sha256(exported, tmp_path):
    import yaml
    from monai.bundle import download_large_files  # what `python -m monai.bundle download_large_files` runs

    bundle = exported[2][0]
    entries = yaml.safe_load((bundle.folder / "large_files.yml").read_text())["large_files"]
    assert entries == [{"path": "models/model.pt", "url": "", "hash_val": bundle.sha256, "hash_type": "sha256"}]
    download_large_files(bundle_path=str(bundle.folder))  # present and matching: nothing to download

    tampered = tmp_path / "segmentation_eval"
    shutil.copytree(bundle.folder, tampered)
    with (tampered / "models" / "model.pt").open("ab") as file:
        file.write(b"x")
    with pytest.raises(Exception, match="hash check"):
        download_large_files(bundle_path=str(tampered))


@pytest.mark.slow
def test_download_large_files_command_succeeds_offline(exported):
    bundle = exported[2][0]
    command = [sys.executable, "-m", "monai.bundle", "download_large_files", "--bundle_path", str(bundle.folder)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipped downloading" in done.stdout + done.stderr


def test_metadata_describes_the_trained_network(exported):
    bundle = exported[2][0]
    meta_file = bundle.folder / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    original = json.loads((REPO / "bundles" / "segmentation_eval" / "configs" / "metadata.json").read_text())
    assert meta["version"] == original["version"] and meta["version"] in meta["changelog"]
    assert meta["required_packages_version"]["medgen3d"] == version("medgen3d")
    assert meta["label_classes"] == "tiny-ct: 0 background, 1 liver, 2 spleen, 3 kidney"
    image = meta["network_data_format"]["inputs"]["image"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert (image["num_channels"], image["modality"], image["channel_def"]) == (1, "CT", {"0": "image"})
    assert pred["num_channels"] == K and pred["channel_def"] == LABELS
    assert pred["spatial_shape"] == original["network_data_format"]["outputs"]["pred"]["spatial_shape"]
    assert meta["pred_classes"] == "4 channels: background, liver, spleen, kidney"
    assert meta[EXPORT_MARKER] == SEG_RECORD
    check_schema(meta_file)


def test_archive_holds_the_bundle_under_one_top_folder(exported):
    bundle = exported[2][0]
    with zipfile.ZipFile(bundle.archive) as archive:
        names = archive.namelist()
        assert {name.split("/", 1)[0] for name in names} == {"segmentation_eval"}
        content = {name.split("/", 1)[1]: archive.read(name) for name in names}
    assert content == tree(bundle.folder)


def test_monai_downloads_the_archive_from_a_local_path_and_loads_the_network(exported, tmp_path):
    from monai.bundle import download, load

    bundle = exported[2][0]
    download(name="segmentation_eval", url=bundle.archive.resolve().as_uri(), bundle_dir=tmp_path, progress=False)
    assert tree(tmp_path / "segmentation_eval") == tree(bundle.folder)

    # models/model.pt is there, so load() downloads nothing; network_def comes from configs/inference.json
    network = load(
        "segmentation_eval",
        bundle_dir=tmp_path,
        workflow_type="inference",
        device="cpu",
        net_override={"in_channels": 1, "out_channels": K, "feature_size": 12},
    )
    saved = torch.load(bundle.folder / "models" / "model.pt", weights_only=True)
    loaded = network.state_dict()
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[key], saved[key]) for key in saved)


@pytest.fixture
def generator_bundles(tmp_path) -> Path:
    """Copies of the generators' bundles whose inference.json fixes m = 3 and L = 2."""
    root = tmp_path / "bundles"
    sizes = {"mask_mcdpm": {"subsequence_length": 3}, "image_vid2vid": {"history": 2}, "sdm_refiner": {}}
    for name, values in sizes.items():
        shutil.copytree(REPO / "bundles" / name, root / name, ignore=shutil.ignore_patterns("models", "eval"))
        (root / name / "configs" / "inference.json").write_text(json.dumps({**values, "network_def": {}}))
    return root


def test_generator_metadata_counts_channels_from_labels_and_network_sizes(tmp_path, generator_bundles):
    models = tmp_path / "models"
    record = {"name": "tiny-ct", "modality": "CT", "labels": LABELS, "image_size": [32, 40]}
    write_stage(models, "mask_mcdpm", record, {"w": torch.zeros(2)})
    write_stage(models, "image_vid2vid", record, {"w": torch.ones(2)})
    write_stage(models, "sdm_refiner", {**record, "image_size": None}, {"axial.w": torch.ones(1)})
    result = export_bundles(models, tmp_path / "out", repo_bundles=generator_bundles)
    assert [b.name for b in result] == ["mask_mcdpm", "image_vid2vid", "sdm_refiner"]
    metas = {b.name: json.loads((b.folder / "configs" / "metadata.json").read_text()) for b in result}
    formats = {name: meta["network_data_format"] for name, meta in metas.items()}

    def io(name: str) -> tuple[dict, dict]:
        return formats[name]["inputs"]["image"], formats[name]["outputs"]["pred"]

    image, pred = io("mask_mcdpm")  # m = 3 slices of K one-hot channels, then 3 indicators -> 3 x K
    assert (image["num_channels"], pred["num_channels"]) == (3 * (K + 1), 3 * K)
    assert image["channel_def"]["0"] == "slice 1, background" and image["channel_def"]["11"] == "slice 3, kidney"
    assert image["channel_def"][str(3 * K + 2)] == "indicator of slice 3"
    assert len(image["channel_def"]) == 3 * (K + 1) and len(pred["channel_def"]) == 3 * K
    assert image["spatial_shape"] == pred["spatial_shape"] == [32, 40]

    image, pred = io("image_vid2vid")  # masks of slices t-2..t, then 2 previous image slices -> 1 image slice
    assert (image["num_channels"], pred["num_channels"]) == (3 * K + 2, 1)
    assert image["channel_def"]["0"] == "slice t-2, background" and image["channel_def"]["8"] == "slice t, background"
    assert image["channel_def"][str(3 * K + 1)] == "previous image slice t-1"
    assert image["spatial_shape"] == [32, 40]

    image, pred = io("sdm_refiner")  # noisy image, then the one-hot mask -> noise; any slice size
    assert (image["num_channels"], pred["num_channels"], image["modality"]) == (1 + K, 1, "CT")
    assert image["channel_def"] == {"0": "noisy image slice", "1": "mask: background", "2": "mask: liver",
                                    "3": "mask: spleen", "4": "mask: kidney"}  # fmt: skip
    original = json.loads((generator_bundles / "sdm_refiner" / "configs" / "metadata.json").read_text())
    assert image["spatial_shape"] == original["network_data_format"]["inputs"]["image"]["spatial_shape"]

    for bundle in result:
        assert metas[bundle.name]["label_classes"] == "tiny-ct: 0 background, 1 liver, 2 spleen, 3 kidney"
        check_schema(bundle.folder / "configs" / "metadata.json")


def test_network_sizes_kept_in_the_record_win_over_the_config(tmp_path, generator_bundles):
    models = tmp_path / "models"
    record = {"name": "tiny-ct", "modality": "CT", "labels": LABELS, "image_size": None, "subsequence_length": 4}
    write_stage(models, "mask_mcdpm", record, {"w": torch.zeros(2)})
    (bundle,) = export_bundles(models, tmp_path / "out", repo_bundles=generator_bundles)
    meta = json.loads((bundle.folder / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 4 * (K + 1)


@pytest.fixture
def seg_models(tmp_path) -> Path:
    """A models folder with small stand-in weights for segmentation_eval (the export only copies them)."""
    models = tmp_path / "models"
    write_stage(models, "segmentation_eval", SEG_RECORD, {"w": torch.arange(4.0)})
    return models


def test_a_named_bundle_without_weights_is_an_error(seg_models, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"mask_mcdpm[/\\]model\.pt: trained weights of mask_mcdpm not found"):
        export_bundles(seg_models, out, bundles=["segmentation_eval", "mask_mcdpm"])
    assert not out.exists()  # checked before anything is written, so not even the segmentation bundle


def test_no_weights_at_all_and_unknown_names_are_errors(tmp_path):
    (tmp_path / "models").mkdir()
    with pytest.raises(DataError, match="no trained stage found"):
        export_bundles(tmp_path / "models", tmp_path / "out")
    with pytest.raises(DataError, match="unknown bundle"):
        export_bundles(tmp_path / "models", tmp_path / "out", bundles="segmentation_eval,vae")
    with pytest.raises(DataError, match="models folder not found"):
        export_bundles(tmp_path / "missing", tmp_path / "out")


def test_weights_without_a_record_are_an_error(tmp_path):
    stage = tmp_path / "models" / "segmenter"
    stage.mkdir(parents=True)
    torch.save({"w": torch.zeros(1)}, stage / "model.pt")
    with pytest.raises(DataError, match="training_data.json: training record not found"):
        export_bundles(tmp_path / "models", tmp_path / "out")


def test_a_folder_that_is_not_an_export_is_never_replaced(seg_models, tmp_path):
    out = tmp_path / "out"
    mine = out / "segmentation_eval"
    (mine / "configs").mkdir(parents=True)
    (mine / "configs" / "metadata.json").write_text('{"version": "9.9.9"}')
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="segmentation_eval: exists and is not an export; choose another --out"):
        export_bundles(seg_models, out)
    assert tree(mine) == {"configs/metadata.json": b'{"version": "9.9.9"}', "notes.txt": b"mine"}
    assert sorted(p.name for p in out.iterdir()) == ["segmentation_eval"]


def test_an_earlier_export_is_replaced(seg_models, tmp_path):
    out = tmp_path / "out"
    (first,) = export_bundles(seg_models, out)
    (first.folder / "stale.txt").write_text("from an earlier export")
    torch.save({"w": torch.ones(4)}, seg_models / "segmentation_eval" / "model.pt")
    (second,) = export_bundles(seg_models, out)
    assert second.folder == first.folder and second.sha256 != first.sha256
    assert not (second.folder / "stale.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == ["segmentation_eval", f"segmentation_eval_v{VERSION}.zip"]


def test_a_failure_midway_leaves_no_half_bundle(seg_models, tmp_path, monkeypatch):
    out = tmp_path / "out"
    copyfile = shutil.copyfile

    def failing_copyfile(src, dst, *args, **kwargs):
        if Path(dst).name == "model.pt":
            copyfile(src, dst, *args, **kwargs)
            with open(dst, "r+b") as file:  # as if the disk filled up halfway through the weights
                file.truncate(3)
            raise OSError("No space left on device")
        return copyfile(src, dst, *args, **kwargs)

    monkeypatch.setattr(export_module.shutil, "copyfile", failing_copyfile)
    with pytest.raises(OSError, match="No space left"):
        export_bundles(seg_models, out)
    assert list(out.iterdir()) == []  # no bundle, no archive, no temporary folder

    monkeypatch.undo()
    (earlier,) = export_bundles(seg_models, out)
    before = tree(out)
    torch.save({"w": torch.ones(4)}, seg_models / "segmentation_eval" / "model.pt")
    monkeypatch.setattr(export_module.shutil, "copyfile", failing_copyfile)
    with pytest.raises(OSError):
        export_bundles(seg_models, out)
    assert tree(out) == before  # the earlier export and its archive are untouched


def test_a_failure_while_archiving_leaves_no_half_bundle(seg_models, tmp_path, monkeypatch):
    def failing_archive(folder, name, path):
        Path(path).write_bytes(b"PK")
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "_write_archive", failing_archive)
    with pytest.raises(KeyboardInterrupt):
        export_bundles(seg_models, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_cli_exports_and_prints_one_line_per_bundle(seg_models, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["bundle", "export", "--models_dir", str(seg_models), "--out", str(out)]
    assert main([*args, "--bundles", "[segmentation_eval]"]) == 0
    sha = hashlib.sha256((seg_models / "segmentation_eval" / "model.pt").read_bytes()).hexdigest()
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segmentation_eval: ") and sha[:12] in lines[0]
    assert (out / f"segmentation_eval_v{VERSION}.zip").is_file()

    assert main([*args, "--bundles", "[sdm_refiner]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medgen3d: error: ") and "sdm_refiner" in err and "model.pt" in err
    assert len(err.splitlines()) == 1


def test_exported_files_are_as_readable_as_any_new_file(exported):
    bundle = exported[2][0]
    umask = os.umask(0)
    os.umask(umask)
    assert bundle.folder.stat().st_mode & 0o777 == 0o777 & ~umask
    assert bundle.archive.stat().st_mode & 0o777 == 0o666 & ~umask
    for file in ("configs/metadata.json", "models/model.pt", "models/training_data.json", "large_files.yml"):
        assert (bundle.folder / file).stat().st_mode & 0o444 == 0o444 & ~umask, file
