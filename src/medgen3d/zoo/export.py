"""Exporting trained stages as self-contained model-zoo bundles.

A stage trained by the workflow leaves ``<models_dir>/<stage>/model.pt`` and the record of its data,
``training_data.json``. :func:`export_bundles` turns each into what the model zoo and MONAI Label expect: a copy of
the stage's bundle folder from this repository with ``models/model.pt``, ``models/training_data.json``, a
``large_files.yml`` holding the weights' sha256 and a ``configs/metadata.json`` that describes the trained network
(label names, channel counts, modality, slice size), plus the archive ``<name>_v<version>.zip`` whose single top
folder is ``<name>/`` (the zoo's release format, which ``monai.bundle.download(url=...)`` unpacks).

Nothing is written until every requested stage has been checked, and each bundle is assembled in a hidden folder
beside its destination and renamed into place at the end, so an interrupted or failed export never leaves a half
bundle under a bundle's name. A destination that exists is replaced only when it is itself an export (its metadata
carries :data:`EXPORT_MARKER`), so a folder of the user's own is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NamedTuple

from medgen3d.data.io import DataError, atomic_path, read_json, write_json
from medgen3d.zoo.metadata import EXPORT_MARKER, exported_metadata, positive_int
from medgen3d.zoo.record import RECORD_NAME, read_training_record, shareable_record

__all__ = ["BUNDLE_STAGES", "EXPORT_MARKER", "ExportedBundle", "export_bundles", "exported_metadata"]

# bundle -> the folders under models_dir that may hold its trained stage, first match wins (the workflow trains
# segmentation_eval as its "segmenter"; a stand-alone run of the bundle names the folder after it)
BUNDLE_STAGES: dict[str, tuple[str, ...]] = {
    "mask_mcdpm": ("mask_mcdpm",),
    "image_vid2vid": ("image_vid2vid",),
    "sdm_refiner": ("sdm_refiner",),
    "segmentation_eval": ("segmenter", "segmentation_eval"),
}
WEIGHTS = "models/model.pt"

_LARGE_FILES = """\
# models/model.pt is not kept in git. To share this bundle without the weights inside, publish models/model.pt
# (a release asset, a Hugging Face repository, ...) and put its address in url; `python -m monai.bundle
# download_large_files --bundle_path .` then fetches it and checks the hash. With the file present and matching,
# that command downloads nothing.
large_files:
  - path: "{path}"
    url: ""
    hash_val: "{sha256}"
    hash_type: "sha256"
"""


class ExportedBundle(NamedTuple):
    """One exported bundle: its folder ``OUT/<name>/``, its archive ``OUT/<name>_v<version>.zip`` and the sha256 of
    its ``models/model.pt``."""

    folder: Path
    archive: Path
    sha256: str

    @property
    def name(self) -> str:
        """The bundle's name (its folder's)."""
        return self.folder.name

    def describe(self) -> str:
        """One summary line: name, folder, archive and the first 12 digits of the weights' sha256."""
        return f"{self.name}: {self.folder}  {self.archive}  sha256 {self.sha256[:12]}"


@dataclass(frozen=True)
class _Plan:
    """A checked export, before anything is written."""

    name: str
    source: Path
    weights: Path
    metadata: dict[str, Any]


def export_bundles(
    models_dir: str | os.PathLike,
    out: str | os.PathLike,
    bundles: Sequence[str] | str | None = None,
    repo_bundles: str | os.PathLike | None = None,
) -> list[ExportedBundle]:
    """Export every trained stage in ``models_dir`` (or those named in ``bundles``) as a bundle under ``out``.

    Args:
        models_dir: the workflow's models folder: ``mask_mcdpm/``, ``image_vid2vid/``, ``sdm_refiner/`` and
            ``segmenter/`` (or ``segmentation_eval/``), each with ``model.pt`` and ``training_data.json``.
        out: where ``<name>/`` and ``<name>_v<version>.zip`` go (created if missing).
        bundles: bundle names to export (a list, or one name or several separated by commas); default: every
            bundle whose weights are found. A named bundle without weights is an error.
        repo_bundles: the folder holding the bundle sources (default: this checkout's ``bundles/``).

    Returns:
        The exported bundles, in pipeline order.

    Raises:
        DataError: no weights found, a named bundle's weights or record missing, a record that is not one, or an
            existing ``out/<name>`` that is not an earlier export. Nothing is written then.
    """
    models = Path(models_dir)
    if not models.is_dir():
        raise DataError(f"{models}: models folder not found")
    source_root = Path(repo_bundles) if repo_bundles is not None else Path(__file__).resolve().parents[3] / "bundles"
    if not source_root.is_dir():
        raise DataError(f"{source_root}: the bundles folder was not found; export from a clone of the repository")
    out = Path(out)
    package_version = _medgen3d_version()
    plans = [
        _plan(name, weights, source_root / name, out, package_version)
        for name, weights in _find_weights(models, _bundle_names(bundles)).items()
    ]
    out.mkdir(parents=True, exist_ok=True)
    return [_write(plan, out) for plan in plans]


def _bundle_names(bundles: Sequence[str] | str | None) -> list[str] | None:
    if bundles is None:
        return None
    if isinstance(bundles, str):
        bundles = [part.strip() for part in bundles.split(",") if part.strip()]
    unknown = [b for b in bundles if b not in BUNDLE_STAGES]
    if unknown:
        raise DataError(f"--bundles: unknown bundle(s) {unknown}; choose from {list(BUNDLE_STAGES)}")
    # pipeline order, each once, whatever order they were named in
    return [b for b in BUNDLE_STAGES if b in bundles]


def _find_weights(models: Path, names: list[str] | None) -> dict[str, Path]:
    """bundle -> its weights; a named bundle without weights, or nothing found at all, raises DataError."""
    found = {}
    for name in names if names is not None else BUNDLE_STAGES:
        candidates = [models / folder / "model.pt" for folder in BUNDLE_STAGES[name]]
        weights = next((path for path in candidates if path.is_file()), None)
        if weights is not None:
            found[name] = weights
        elif names is not None:
            alternatives = "".join(f" (nor {path})" for path in candidates[1:])
            raise DataError(f"{candidates[0]}: trained weights of {name} not found{alternatives}; train it first")
    if not found:
        expected = ", ".join(f"{folder}/model.pt" for folders in BUNDLE_STAGES.values() for folder in folders)
        raise DataError(f"{models}: no trained stage found (expected one of {expected})")
    return found


def _plan(name: str, weights: Path, source: Path, out: Path, package_version: str) -> _Plan:
    """Check everything the export of ``name`` needs and build its metadata; writes nothing."""
    meta_path = source / "configs" / "metadata.json"
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: bundle metadata not found; export from a clone of the repository")
    target = out / name
    if target.exists() and not _is_export(target):
        raise DataError(f"{target}: exists and is not an export; choose another --out")
    record = shareable_record(read_training_record(weights.parent))
    record_path = weights.parent / RECORD_NAME
    sizes = {key: _setting(source, key, record, record_path) for key in _SIZE_KEYS.get(name, ())}
    metadata = exported_metadata(read_json(meta_path), record, name, sizes, package_version, record_path)
    overlay = _network_overlay(source, record, record_path)
    if overlay.get("slice_size"):  # a slice network: MONAI Label reads the dimension from the shape's length
        for tensor in (
            metadata["network_data_format"]["inputs"]["image"],
            metadata["network_data_format"]["outputs"]["pred"],
        ):
            tensor["spatial_shape"] = [int(s) for s in overlay["slice_size"]]
    return _Plan(name, source, weights, metadata)


# training-only entries of a network overlay, which an exported inference.json leaves out
_TRAIN_ONLY = ("random_transforms",)


def _network_overlay(source: Path, record: Mapping[str, Any], record_path: Path) -> dict[str, Any]:
    """The network overlay the weights were trained with (segmentation_eval's ``unet2d.json`` and the like, named
    in the record as ``network_overlay``), without its training-only entries; empty for the bundle's own network."""
    name = record.get("network_overlay")
    if not name:
        return {}
    path = source / "configs" / str(name)
    if not path.is_file():
        raise DataError(f"{record_path}: names the network overlay {name!r}, which {source / 'configs'} lacks")
    overlay = read_json(path)
    return {key: value for key, value in overlay.items() if key not in _TRAIN_ONLY}


# the network's structural settings whose values set its channel counts
_SIZE_KEYS = {"mask_mcdpm": ("subsequence_length",), "image_vid2vid": ("history",)}


def _setting(source: Path, key: str, record: Mapping[str, Any], record_path: Path) -> int:
    """``key`` as the network was built: from the record when training kept it there, else the bundle's config.

    The raw JSON is read, not parsed by MONAI, because these are plain integers and parsing would run the
    config's imports and expressions (which need a dataset) just to read one number.
    """
    if key in record.get("settings", {}):
        return positive_int(record["settings"][key], key, record_path)
    if key in record:
        return positive_int(record[key], key, record_path)
    # inference.json holds the network; common.json did before the configs were merged into it
    for path in (source / "configs" / "inference.json", source / "configs" / "common.json"):
        if path.is_file():
            config = read_json(path)
            if isinstance(config, Mapping) and key in config:
                return positive_int(config[key], key, path)
    raise DataError(f"{source / 'configs' / 'inference.json'}: no '{key}' setting (a plain integer) found")


def _medgen3d_version() -> str:
    try:
        return version("medgen3d")
    except PackageNotFoundError as err:
        raise DataError("medgen3d is not installed as a package, so its version is unknown: pip install -e .") from err


def _is_export(folder: Path) -> bool:
    """Whether ``folder`` is an earlier export (its metadata carries the training record)."""
    try:
        return EXPORT_MARKER in json.loads((folder / "configs" / "metadata.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def _ignore_untracked(root: Path) -> Callable[[str, list[str]], set[str]]:
    """A ``copytree`` ignore function: what git does not track in a bundle folder (weights, outputs, caches)."""

    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n.startswith(".") or n == "__pycache__" or n.endswith((".pyc", ".pyo"))}
        skipped |= {n for n in names if n.endswith((".pt", ".ts"))}
        if Path(folder).resolve() == root.resolve():
            skipped |= {"models", "eval", "large_files.yml"} & set(names)
        return skipped

    return ignore


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write(plan: _Plan, out: Path) -> ExportedBundle:
    """Assemble ``plan`` in a hidden folder in ``out``, then rename it and its archive into place."""
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{plan.name}.", dir=out))
    try:
        _share(staging, 0o777)
        shutil.copytree(plan.source, staging, ignore=_ignore_untracked(plan.source), dirs_exist_ok=True)
        weights = staging / WEIGHTS
        weights.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(plan.weights, weights)
        sha256 = _sha256(weights)
        # rewritten without the training case ids, which name the user's files and stay home
        write_json(weights.parent / RECORD_NAME, shareable_record(read_training_record(plan.weights.parent)))
        _share(weights.parent / RECORD_NAME, 0o666)
        (staging / "large_files.yml").write_text(_LARGE_FILES.format(path=WEIGHTS, sha256=sha256))
        write_json(staging / "configs" / "metadata.json", plan.metadata)
        _pin_settings(staging / "configs" / "inference.json", read_training_record(plan.weights.parent))
        _share(staging / "configs" / "metadata.json", 0o666)  # written atomically, so under a private name
        folder = out / plan.name
        archive = out / f"{plan.name}_v{plan.metadata['version']}.zip"
        # the archive is renamed into place right after the folder, so the two change together
        with atomic_path(archive) as tmp_archive:
            _write_archive(staging, plan.name, tmp_archive)
            _share(tmp_archive, 0o666)
            _replace_folder(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return ExportedBundle(folder, archive, sha256)


def _pin_settings(config_path: Path, record: Mapping[str, Any]) -> None:
    """Write the settings the network was trained with (the record's ``settings`` and ``image_size``) into the
    exported ``inference.json``, so that it builds the network its weights fit, whatever preset or command-line
    override the training had. Only top-level values the config already has are replaced."""
    if not config_path.is_file():
        return
    config = read_json(config_path)
    # the network the weights were trained as, when an overlay replaced the bundle's own
    overlay = _network_overlay(config_path.parents[1], record, config_path)
    values = {**overlay, **dict(record.get("settings") or {})}
    if record.get("image_size"):
        values["image_size"] = list(record["image_size"])
    changed = {
        key: value for key, value in values.items() if (key in config or key in overlay) and config.get(key) != value
    }
    if changed:
        config.update(changed)
        write_json(config_path, config)
        _share(config_path, 0o666)


def _share(path: Path, mode: int) -> None:
    """Give ``path`` the permissions of a normally created file or folder: temporary names are created private
    (0600/0700), and a bundle made to be shared should not stay so after its rename."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(mode & ~umask)


def _write_archive(folder: Path, name: str, path: Path) -> None:
    """Zip ``folder`` as the single top folder ``name/`` (how zoo releases are unpacked, ``has_base=True``)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            archive.write(file, f"{name}/{file.relative_to(folder).as_posix()}")


def _replace_folder(staging: Path, folder: Path) -> None:
    """Rename ``staging`` onto ``folder``; an earlier export there is moved aside first and removed after."""
    if not folder.exists():
        os.rename(staging, folder)
        return
    aside = folder.with_name(f".old-{folder.name}.{uuid.uuid4().hex[:8]}")
    os.rename(folder, aside)
    try:
        os.rename(staging, folder)
    except BaseException:
        os.rename(aside, folder)  # put the earlier export back rather than leave no bundle at all
        raise
    shutil.rmtree(aside)
