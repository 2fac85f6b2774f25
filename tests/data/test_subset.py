from __future__ import annotations

import json

import pytest

from medgen3d.data.dataset import read_dataset, write_dataset
from medgen3d.data.io import DataError
from medgen3d.data.subset import subset_dataset
from medgen3d.data.validate import validate_dataset
from tests.conftest import write_tiny_dataset


@pytest.fixture
def source(tmp_path):
    """6 training, 2 validation, 3 test cases, with per-case provenance as a generated dataset has."""
    spec = write_tiny_dataset(tmp_path / "source", splits=(6, 2, 3))
    seeds = {case.case_id: 100 + i for i, case in enumerate(spec.cases())}
    spec.extra = {"numTraining": 6, "medgen3d": {"generator": "tiny", "seed": 1, "case_seeds": seeds}}
    return write_dataset(spec.root, spec)


def _files(spec):
    return [path for case in spec.cases() for path in (case.image, case.label)]


def test_subset_keeps_the_first_cases_as_byte_equal_copies(source, tmp_path):
    subset = subset_dataset(source.root, tmp_path / "sub", training=2)
    assert subset.training == source.training[:2]
    # held-out splits untouched when not asked for
    assert subset.validation == source.validation and subset.test == source.test
    assert (subset.name, subset.modality, subset.labels) == (source.name, source.modality, source.labels)
    for relative in _files(subset):
        assert subset.path(relative).read_bytes() == source.path(relative).read_bytes()
    # nothing beyond the chosen cases is copied
    assert not subset.path(source.training[2].image).exists()
    assert validate_dataset(subset.root).split_sizes == {"training": 2, "validation": 2, "test": 3}


def test_subset_records_where_it_came_from(source, tmp_path):
    subset_dataset(source.root, tmp_path / "sub", training=1, validation=0, test=2)
    written = read_dataset(tmp_path / "sub")
    provenance = written.extra["medgen3d"]
    assert provenance["subset_of"] == str(source.root.resolve())
    assert provenance["sizes"] == {"training": 1, "validation": 0, "test": 2}
    # the source's provenance stays, its per-case records cut to the cases kept
    assert provenance["generator"] == "tiny"
    kept = [case.case_id for case in written.cases()]
    assert list(provenance["case_seeds"]) == kept == ["case-0", "case-8", "case-9"]
    # the source's MSD case count would be wrong here
    assert "numTraining" not in written.extra
    assert written.validation == []


def test_asking_for_more_cases_than_a_split_has_is_one_line_naming_everything(source, tmp_path):
    with pytest.raises(DataError) as err:
        subset_dataset(source.root, tmp_path / "sub", training=2, test=4)
    message = str(err.value)
    assert message == f"{source.root / 'dataset.json'}: asked for 4 test cases but the test split has only 3"
    assert not (tmp_path / "sub").exists()


def test_rerun_is_idempotent_and_skips_files_already_there(source, tmp_path):
    first = subset_dataset(source.root, tmp_path / "sub", training=3)
    before = (tmp_path / "sub" / "dataset.json").read_bytes()
    marker = first.path(first.training[0].image)
    mtime = marker.stat().st_mtime_ns
    second = subset_dataset(source.root, tmp_path / "sub", training=3)
    assert (tmp_path / "sub" / "dataset.json").read_bytes() == before
    assert second.cases() == first.cases()
    assert marker.stat().st_mtime_ns == mtime  # not copied again


def test_interrupted_copy_resumes(source, tmp_path):
    subset_dataset(source.root, tmp_path / "sub", training=3)
    # as if stopped before dataset.json was written, with one file still to copy
    (tmp_path / "sub" / "dataset.json").unlink()
    (tmp_path / "sub" / source.training[2].label).unlink()
    subset = subset_dataset(source.root, tmp_path / "sub", training=3)
    assert validate_dataset(subset.root).split_sizes == {"training": 3, "validation": 2, "test": 3}


def test_a_folder_holding_another_subset_or_dataset_is_refused(source, tmp_path):
    subset_dataset(source.root, tmp_path / "sub", training=3)
    where = tmp_path / "sub" / "dataset.json"
    with pytest.raises(DataError, match="this folder holds another dataset") as err:
        subset_dataset(source.root, tmp_path / "sub", training=2)
    assert str(err.value).startswith(str(where))
    assert json.loads(where.read_text())["medgen3d"]["sizes"]["training"] == 3  # left alone
    # a dataset that is no subset at all
    other = write_tiny_dataset(tmp_path / "other")
    with pytest.raises(DataError, match="holds another dataset"):
        subset_dataset(source.root, other.root, training=1)


def test_bad_counts_are_rejected(source, tmp_path):
    with pytest.raises(ValueError, match="training must be a case count"):
        subset_dataset(source.root, tmp_path / "sub", training=-1)
    with pytest.raises(ValueError, match="at least one case"):
        subset_dataset(source.root, tmp_path / "sub", training=0, validation=0, test=0)
    with pytest.raises(ValueError, match="out_dir must differ"):
        subset_dataset(source.root, source.root, training=1)
