from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine

from medgen3d.data.io import DataError
from medgen3d.engines.checkpoint import ResumableCheckpoint, load_weights, save_atomically


def _run(tmp_path, max_epochs, network, optimizer, seen):
    def step(engine, batch):
        optimizer.zero_grad()
        loss = network(torch.ones(1, 2)).sum()
        loss.backward()
        optimizer.step()
        seen.append(engine.state.epoch)

    engine = Engine(step)
    ResumableCheckpoint(tmp_path, {"model": network, "optimizer": optimizer}).attach(engine)
    engine.run([0, 1], max_epochs=max_epochs)
    return engine


def test_training_resumes_from_the_last_checkpoint_with_weights_optimiser_and_epoch(tmp_path):
    torch.manual_seed(0)
    first = torch.nn.Linear(2, 1)
    first_optimizer = torch.optim.Adam(first.parameters(), lr=0.1)
    _run(tmp_path, 2, first, first_optimizer, [])
    assert (tmp_path / "checkpoint.pt").is_file() and (tmp_path / "model.pt").is_file()
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], first.weight)
    second = torch.nn.Linear(2, 1)
    second_optimizer = torch.optim.Adam(second.parameters(), lr=0.1)
    seen: list[int] = []
    engine = Engine(lambda e, b: None)
    checkpoint = ResumableCheckpoint(tmp_path, {"model": second, "optimizer": second_optimizer})
    checkpoint.attach(engine)
    checkpoint.load(engine)
    assert engine.state.epoch == 2
    assert torch.equal(second.weight, first.weight)
    assert second_optimizer.state_dict()["state"][0]["step"] == first_optimizer.state_dict()["state"][0]["step"]
    engine = _run(tmp_path, 4, second, second_optimizer, seen)
    assert seen == [3, 3, 4, 4]  # only the epochs not done yet


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_atomically({"weight": torch.ones(2)}, tmp_path / "model.pt")

    def broken_save(obj, f):
        open(f, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_atomically({"weight": torch.zeros(2)}, tmp_path / "model.pt")
    monkeypatch.undo()
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_missing_corrupt_and_mismatched_checkpoints_are_named(tmp_path):
    network = torch.nn.Linear(2, 1)
    with pytest.raises(DataError, match=r"absent\.pt: checkpoint not found"):
        load_weights(network, tmp_path / "absent.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match=r"corrupt\.pt: not a readable checkpoint"):
        load_weights(network, tmp_path / "corrupt.pt")
    save_atomically(torch.nn.Linear(3, 1).state_dict(), tmp_path / "other.pt")
    with pytest.raises(DataError, match=r"other\.pt: does not fit the configured network"):
        load_weights(network, tmp_path / "other.pt")
    save_atomically({"model": network.state_dict()}, tmp_path / "wrapped.pt")
    assert load_weights(torch.nn.Linear(2, 1), tmp_path / "wrapped.pt") is not None
