from __future__ import annotations

import numpy as np
import pytest

from medgen3d.data.builder import GeneratedCase, SplitSizes, build_dataset, case_seeds
from medgen3d.data.io import DataError
from medgen3d.data.validate import validate_dataset
from tests.conftest import TINY_AFFINE, TINY_LABELS, slab_image, slab_label


class CountingMaker:
    """Makes a slab case whose shift comes from the seed, and counts its calls."""

    def __init__(self) -> None:
        self.seeds: list[int] = []

    def __call__(self, seed: int) -> GeneratedCase:
        self.seeds.append(seed)
        label = slab_label(shift=seed % 7)
        return GeneratedCase(slab_image(label), label, TINY_AFFINE)


def _build(root, maker, params=None, overwrite=False, sizes=SplitSizes(2, 1, 1)):
    return build_dataset(
        root, "toy", "MR", TINY_LABELS, maker, sizes, 5, params or {"preset": "tiny"}, overwrite=overwrite
    )


def test_case_seeds_are_distinct_and_a_larger_dataset_extends_a_smaller_one():
    seeds = case_seeds(0, 60)
    assert len(set(seeds)) == 60
    assert case_seeds(0, 10) == seeds[:10]
    assert case_seeds(1, 10) != seeds[:10]


def test_build_writes_a_valid_dataset_with_seeds_recorded(tmp_path):
    maker = CountingMaker()
    spec = _build(tmp_path / "d", maker)
    assert validate_dataset(spec.root).split_sizes == {"training": 2, "validation": 1, "test": 1}
    provenance = spec.extra["medgen3d"]
    assert provenance["params"] == {"preset": "tiny"} and provenance["seed"] == 5
    assert list(provenance["case_seeds"].values()) == maker.seeds == case_seeds(5, 4)
    assert not (tmp_path / "d" / ".medgen3d-build.json").exists()


def test_interrupted_build_resumes_without_redoing_finished_cases(tmp_path):
    class Interrupting(CountingMaker):
        def __call__(self, seed):
            if len(self.seeds) == 2:
                raise KeyboardInterrupt
            return super().__call__(seed)

    first = Interrupting()
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path / "d", first)
    assert not (tmp_path / "d" / "dataset.json").exists()
    finished = sorted(p.name for p in (tmp_path / "d" / "images").iterdir())
    assert finished == ["case-000.nii.gz", "case-001.nii.gz"]
    second = CountingMaker()
    spec = _build(tmp_path / "d", second)
    assert second.seeds == case_seeds(5, 4)[2:]
    image, label = spec.load_case(spec.training[0])
    np.testing.assert_array_equal(label.array, slab_label(shift=first.seeds[0] % 7))


def test_folder_built_with_other_settings_is_refused_unless_overwrite(tmp_path):
    _build(tmp_path / "d", CountingMaker())
    with pytest.raises(DataError, match="built with other settings"):
        _build(tmp_path / "d", CountingMaker(), params={"preset": "small"})
    again = CountingMaker()
    _build(tmp_path / "d", again, params={"preset": "small"}, overwrite=True)
    assert len(again.seeds) == 4


def test_unfinished_build_with_other_settings_is_refused(tmp_path):
    class Failing(CountingMaker):
        def __call__(self, seed):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path / "d", Failing())
    with pytest.raises(DataError, match="built with other settings"):
        _build(tmp_path / "d", CountingMaker(), params={"preset": "small"})


def test_resume_with_tuple_parameters_is_the_same_build(tmp_path):
    _build(tmp_path / "d", CountingMaker(), params={"shape": (16, 16, 12)})
    again = CountingMaker()
    _build(tmp_path / "d", again, params={"shape": (16, 16, 12)})
    assert again.seeds == []
