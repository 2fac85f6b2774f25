"""Every folder in bundles/ is a model-zoo style bundle: metadata valid against the bundle schema, its version in
the changelog, LICENSE and docs/README.md present.

The schema is read offline: from $MEDGEN3D_BUNDLE_SCHEMA, else from the copy that CI keeps beside the clone
(../shared/schema/meta_schema_20240725.json). Without either, the schema check is skipped with that reason.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUNDLES = sorted(p for p in (REPO / "bundles").glob("*") if (p / "configs").is_dir())
SCHEMA_NAME = "meta_schema_20240725.json"


def schema_path() -> Path | None:
    candidates = [os.environ.get("MEDGEN3D_BUNDLE_SCHEMA"), REPO.parent / "shared" / "schema" / SCHEMA_NAME]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def check_bundle(bundle: Path, schema: Path) -> list[str]:
    """Problems found in ``bundle``; empty when it follows the layout."""
    from monai.bundle import verify_metadata

    problems = [
        f"{bundle.name}: {name} is missing" for name in ("LICENSE", "docs/README.md") if not (bundle / name).is_file()
    ]
    meta = bundle / "configs" / "metadata.json"
    if not meta.is_file():
        return problems + [f"{bundle.name}: configs/metadata.json is missing"]
    metadata = json.loads(meta.read_text())
    if metadata.get("version") not in metadata.get("changelog", {}):
        problems.append(f"{bundle.name}: version {metadata.get('version')!r} is not in the changelog")
    try:
        verify_metadata(meta_file=str(meta), filepath=str(schema))
    except ValueError as err:
        problems.append(f"{bundle.name}: metadata does not validate: {err}")
    return problems


@pytest.fixture
def schema() -> Path:
    path = schema_path()
    if path is None:
        pytest.skip(f"no offline copy of {SCHEMA_NAME}: set MEDGEN3D_BUNDLE_SCHEMA to check bundle metadata")
    return path


def _minimal_bundle(root: Path) -> Path:
    metadata = {
        "schema": f"https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/{SCHEMA_NAME}",
        "version": "0.1.0",
        "changelog": {"0.1.0": "first version"},
        "monai_version": "1.6.1",
        "pytorch_version": "2.13.0",
        "numpy_version": "2.4.6",
        "required_packages_version": {"nibabel": "5.4.2"},
        "task": "test",
        "description": "test bundle",
        "authors": "medgen3d",
        "copyright": "medgen3d",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "num_channels": 1,
                    "spatial_shape": [16, 16, 16],
                    "dtype": "float32",
                    "value_range": [0, 1],
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": 2,
                    "spatial_shape": [16, 16, 16],
                    "dtype": "float32",
                    "value_range": [0, 1],
                }
            },
        },
    }
    (root / "configs").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=4))
    (root / "docs" / "README.md").write_text("# test\n")
    (root / "LICENSE").write_text("Apache-2.0\n")
    return root


def test_checker_accepts_a_valid_bundle_and_names_each_problem(tmp_path, schema):
    good = _minimal_bundle(tmp_path / "good")
    assert check_bundle(good, schema) == []
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    (bad / "LICENSE").unlink()
    metadata = json.loads((bad / "configs" / "metadata.json").read_text())
    metadata["version"] = "0.2.0"
    del metadata["task"]
    (bad / "configs" / "metadata.json").write_text(json.dumps(metadata))
    problems = check_bundle(bad, schema)
    assert len(problems) == 3
    assert "LICENSE is missing" in problems[0]
    assert "version '0.2.0' is not in the changelog" in problems[1]
    assert "metadata does not validate" in problems[2] and "task" in problems[2]


@pytest.mark.skipif(not BUNDLES, reason="no bundles yet")
@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_bundle_follows_the_layout(bundle, schema):
    assert check_bundle(bundle, schema) == []
