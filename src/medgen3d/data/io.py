"""Atomic file writing and NIfTI reading with errors that name the file.

Every file the project writes goes through :func:`atomic_path`: the content is written under a hidden temporary
name in the destination folder and renamed into place only once complete, so an interrupted run never leaves a
half-written file that looks valid (``os.replace`` is atomic within one file system).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np

__all__ = [
    "DataError",
    "SettingError",
    "Volume",
    "atomic_path",
    "json_safe",
    "write_json",
    "read_json",
    "load_nifti",
    "save_nifti",
]


class DataError(ValueError):
    """A dataset file is missing, unreadable or inconsistent; the message names the file and the problem."""


class SettingError(DataError):
    """A configured value a stage cannot work with (a count below one, an impossible depth, a size the network
    cannot take); the message names the setting, as a :class:`DataError` names its file, so both end a run with
    the same one line."""


class Volume(NamedTuple):
    """A 3D array with its voxel-to-world (RAS+ millimetre) affine.

    ``array`` is laid out ``(H, W, D)`` in the file's voxel order; ``affine`` is ``(4, 4)`` float64.
    """

    array: np.ndarray
    affine: np.ndarray


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block ends without error.

    The temporary name keeps the destination's suffixes (``.nii.gz``, ``.json``), so writers that choose a format
    from the file name still work. On error the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", suffix="".join(path.suffixes), dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike, content: Any) -> None:
    """Write ``content`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(content, indent=4) + "\n")


def json_safe(content: Any) -> Any:
    """``content`` with every NaN or infinite float replaced by ``None`` (and NumPy floats made Python floats).

    ``json.dumps`` writes them as ``NaN`` and ``Infinity``, which are not JSON: strict readers (``jq``, browsers,
    most languages) reject the whole file. Reports use ``null`` for "no value" (e.g. the Dice of a structure
    absent from both maps) instead. Mappings become dicts and tuples lists, as ``json.dumps`` writes them.
    """
    if isinstance(content, (float, np.floating)):
        return float(content) if math.isfinite(content) else None
    if isinstance(content, Mapping):
        return {key: json_safe(value) for key, value in content.items()}
    if isinstance(content, (list, tuple)):
        return [json_safe(value) for value in content]
    return content


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing or malformed file raises :class:`DataError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err


def load_nifti(path: str | os.PathLike, dtype: np.dtype | type | None = None) -> Volume:
    """Load a 3D NIfTI volume as ``(H, W, D)`` with its affine.

    A trailing singleton fourth axis is dropped. Raises :class:`DataError` naming the file when it is missing,
    not a NIfTI file, not 3D, or (for floating point data) holds NaN or infinite values.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if not path.name.endswith((".nii", ".nii.gz")):
        raise DataError(f"{path}: not a NIfTI file (expected a .nii or .nii.gz name)")
    try:
        image = nib.load(path)
        array = np.asarray(image.dataobj)
    except Exception as err:  # nibabel raises several unrelated types for unreadable files
        raise DataError(f"{path}: cannot be read as NIfTI ({type(err).__name__}: {err})") from err
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, found shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise DataError(f"{path}: {bad} voxels are NaN or infinite")
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return Volume(array, np.asarray(image.affine, dtype=np.float64))


def save_nifti(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray) -> None:
    """Write ``array`` ``(H, W, D)`` with ``affine`` to ``path`` atomically, keeping the array's dtype.

    The sform and qform both carry the affine (code 1, scanner), so every reader agrees on the geometry.
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"array must be 3D (H, W, D), got shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    image = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    image.set_sform(image.affine, code=1)
    image.set_qform(image.affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
