"""The case runner: shards, pending cases, resuming after a failure, dataset.json once, and two gloo ranks."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from medgen3d.data.dataset import Case, DatasetSpec, read_dataset
from medgen3d.data.io import SettingError, load_nifti, save_nifti
from medgen3d.synthesis.cases import CaseRunner, Shard, wait_for_ranks

IDS = [f"c{i}" for i in range(7)]


class _Item:
    def __init__(self, case_id: str) -> None:
        self.case_id = case_id


def _spec(ids: list[str] = IDS) -> DatasetSpec:
    return DatasetSpec("cases", "MR", {0: "background", 1: "a"}, training=[Case.named(i, image=False) for i in ids])


def _writer(runner: CaseRunner, log: list[str]):
    def write(batch: list[_Item]) -> None:
        for item in batch:
            save_nifti(runner.target(item.case_id), np.full((2, 2, 2), len(log) % 2, np.uint8), np.eye(4))
            log.append(item.case_id)

    return write


def test_the_shards_of_a_run_take_every_case_exactly_once():
    for world in (1, 2, 3, 5):
        owners = [[r for r in range(world) if Shard(r, world).owns(i)] for i in range(11)]
        assert all(len(o) == 1 for o in owners)
        assert [o[0] for o in owners] == [i % world for i in range(11)]
    with pytest.raises(SettingError, match=r"rank: must be in \[0, 1\], got 2"):
        Shard(2, 2).checked()
    with pytest.raises(SettingError, match="world_size: must be at least 1, got 0"):
        Shard(0, 0).checked()


def test_the_environment_names_the_shard(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert Shard.from_environment() == Shard(1, 3)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert Shard.from_environment() == Shard(0, 1)


def test_finished_cases_are_skipped_and_a_failed_batch_resumes_where_it_stopped(tmp_path):
    runner = CaseRunner(tmp_path, "labels", progress=lambda d, t, c: seen.append((d, t, c)))
    items = [_Item(i) for i in IDS]
    seen: list[tuple[int, int, str]] = []
    log: list[str] = []
    write = _writer(runner, log)

    def failing(batch: list[_Item]) -> None:
        if batch[0].case_id == "c4":
            raise RuntimeError("interrupted")
        write(batch)

    with pytest.raises(RuntimeError):
        runner.run(items, failing, batch_size=2)
    assert log == ["c0", "c1", "c2", "c3"] and [c for _, _, c in seen] == log
    assert not list((tmp_path / "labels").glob(".tmp*"))  # nothing half-written
    assert [item.case_id for item in runner.pending(items)] == ["c4", "c5", "c6"]
    stamp = runner.target("c0").stat().st_mtime_ns
    seen.clear()
    runner.run(items, write, batch_size=2)
    assert log[4:] == ["c4", "c5", "c6"] and seen == [(5, 7, "c4"), (6, 7, "c5"), (7, 7, "c6")]
    assert runner.target("c0").stat().st_mtime_ns == stamp
    redo = CaseRunner(tmp_path, "labels", redo=True)
    assert len(redo.pending(items)) == 7


def test_dataset_json_is_written_by_rank_zero_once_every_case_exists(tmp_path):
    items = [_Item(i) for i in IDS]
    log: list[str] = []
    second = CaseRunner(tmp_path, "labels", Shard(1, 2))
    second.run(items, _writer(second, log))
    assert log == ["c1", "c3", "c5"]
    first = CaseRunner(tmp_path, "labels", Shard(0, 2))
    assert second.finish(IDS, _spec) is None  # rank 1 never writes it
    assert first.finish(IDS, _spec) is None and not (tmp_path / "dataset.json").exists()  # cases missing
    first.run(items, _writer(first, log))
    assert sorted(log) == IDS
    spec = first.finish(IDS, _spec)
    assert [c.case_id for c in spec.training] == IDS and read_dataset(tmp_path).training == spec.training
    with pytest.raises(ValueError, match="done_in"):
        CaseRunner(tmp_path, "previews")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    shard = Shard.from_environment()
    shard.connect()
    try:
        runner = CaseRunner(out, "labels", shard)
        written: list[str] = []
        runner.run([_Item(i) for i in IDS], _writer(runner, written), batch_size=2)

        def dataset() -> DatasetSpec:
            Path(out, f"dataset-by-rank{rank}").touch()
            return _spec()

        spec = runner.finish(IDS, dataset)
        result = {"written": written, "read": None if spec is None else [c.case_id for c in spec.training]}
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
        wait_for_ranks()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_write_each_case_once_and_both_read_the_finished_dataset(tmp_path):
    mp.spawn(_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0]["written"] == ["c0", "c2", "c4", "c6"] and results[1]["written"] == ["c1", "c3", "c5"]
    assert results[0]["read"] == results[1]["read"] == IDS  # rank 1 waited for rank 0's dataset.json
    assert sorted(p.name for p in tmp_path.glob("dataset-by-rank*")) == ["dataset-by-rank0"]
    assert all(load_nifti(tmp_path / "labels" / f"{i}.nii.gz").array.shape == (2, 2, 2) for i in IDS)
