from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events

from medgen3d.data.io import DataError
from medgen3d.engines.base import StepTrainer
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


def test_an_epoch_counted_engine_resumes_with_weights_optimiser_and_epoch(tmp_path):
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
    with pytest.raises(DataError, match=r"other\.pt: does not fit the configured network") as err:
        load_weights(network, tmp_path / "other.pt")
    # one line, saying what differs: torch's own message lists every key on lines of its own
    assert str(err.value).endswith("1 of another shape (first 'weight': (1, 3) in the file, (1, 2) in the network)")
    save_atomically({"extra.weight": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(DataError, match=r"2 weights missing \(first 'weight'\); 1 unexpected \(first 'extra.weight'\)"):
        load_weights(network, tmp_path / "foreign.pt")
    save_atomically({"model": network.state_dict()}, tmp_path / "wrapped.pt")
    assert load_weights(torch.nn.Linear(2, 1), tmp_path / "wrapped.pt") is not None


class _Counted(StepTrainer):
    """A StepTrainer whose iteration is one optimiser step on a fixed input."""

    def _iteration(self, engine, batchdata):
        engine.optimizer.zero_grad()
        loss = engine.network(torch.ones(1, 2)).sum()
        loss.backward()
        engine.optimizer.step()
        return {"loss": loss.detach()}


def _step_trainer(tmp_path, max_iterations, data, interval=2):
    torch.manual_seed(0)
    network = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    trainer = _Counted("cpu", max_iterations, torch.utils.data.DataLoader(data, batch_size=1), network, optimizer)
    ResumableCheckpoint(tmp_path, {"model": network, "optimizer": optimizer}, interval=interval).attach(trainer)
    seen: list[int] = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: seen.append(e.state.iteration))
    return trainer, network, seen


def test_training_length_is_counted_in_iterations_whatever_the_dataset_size(tmp_path):
    # 7 iterations over 3 items: the loader restarts as often as needed, the last pass stops part-way
    trainer, _, seen = _step_trainer(tmp_path / "small", 7, [0, 1, 2])
    trainer.run()
    assert seen == [1, 2, 3, 4, 5, 6, 7] and trainer.state.iteration == 7
    big, _, big_seen = _step_trainer(tmp_path / "big", 7, list(range(40)))
    big.run()
    assert big_seen == seen


def test_resume_mid_epoch_continues_to_the_configured_iterations_and_matches_an_uninterrupted_run(tmp_path):
    straight, straight_net, _ = _step_trainer(tmp_path / "straight", 9, [0, 1, 2, 3])
    straight.run()
    first, _, _ = _step_trainer(tmp_path / "resumed", 5, [0, 1, 2, 3])  # stops mid-way through the second pass
    first.run()
    second, resumed_net, seen = _step_trainer(tmp_path / "resumed", 9, [0, 1, 2, 3])
    second.run()
    assert seen == [6, 7, 8, 9]
    assert torch.allclose(resumed_net.weight, straight_net.weight)
    finished, _, again = _step_trainer(tmp_path / "resumed", 9, [0, 1, 2, 3])
    finished.run()
    assert again == []  # already at its last iteration: nothing is redone


def test_a_checkpoint_counted_in_epochs_resumes_in_iterations(tmp_path):
    # written before training was counted in iterations: ignite's epoch-mode state (max_epochs, epoch_length 2)
    network = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    old = Engine(lambda e, b: None)
    old.state.iteration, old.state.epoch, old.state.epoch_length, old.state.max_epochs = 6, 3, 2, 3
    save_atomically(
        {"model": network.state_dict(), "optimizer": optimizer.state_dict(), "trainer": old.state_dict()},
        tmp_path / "checkpoint.pt",
    )
    trainer, resumed, seen = _step_trainer(tmp_path, 10, [0, 1, 2])  # a loader of another length
    trainer.run()
    assert seen == [7, 8, 9, 10] and trainer.state.iteration == 10
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["trainer"]["max_iters"] == 10


def test_an_object_the_checkpoint_lacks_starts_as_a_copy_of_the_model(tmp_path):
    network = torch.nn.Linear(2, 1)
    save_atomically(
        {"model": network.state_dict(), "trainer": {"iteration": 2, "epoch_length": 2, "max_epochs": 1}},
        tmp_path / "checkpoint.pt",
    )
    copy = torch.nn.Linear(2, 1)
    engine = Engine(lambda e, b: None)
    checkpoint = ResumableCheckpoint(tmp_path, {"model": torch.nn.Linear(2, 1), "ema": copy})
    checkpoint.attach(engine)
    engine.state.max_epochs, engine.state.epoch_length = 1, 2
    checkpoint.load(engine)
    assert torch.equal(copy.weight, network.weight) and engine.state.iteration == 2


def test_an_extended_run_decays_its_learning_rate_over_the_new_length(tmp_path):
    from monai.handlers import LrScheduleHandler
    from monai.optimizers import WarmupCosineSchedule

    def trainer(max_iterations):
        network = torch.nn.Linear(2, 1)
        optimizer = torch.optim.SGD(network.parameters(), lr=1.0)
        schedule = WarmupCosineSchedule(optimizer, warmup_steps=1, t_total=max_iterations, end_lr=0.1)
        engine = _Counted("cpu", max_iterations, torch.utils.data.DataLoader([0, 1]), network, optimizer)
        LrScheduleHandler(schedule, epoch_level=False, print_lr=False).attach(engine)
        ResumableCheckpoint(tmp_path, {"model": network, "optimizer": optimizer, "schedule": schedule}).attach(engine)
        return engine, optimizer

    first, _ = trainer(4)
    first.run()
    extended, optimizer = trainer(8)
    rates: list[float] = []
    extended.add_event_handler(Events.ITERATION_COMPLETED, lambda e: rates.append(optimizer.param_groups[0]["lr"]))
    extended.run()
    reference = WarmupCosineSchedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 1, 8, 0.1)
    expected = [reference.lr_lambda(step) for step in range(5, 9)]
    assert rates == pytest.approx([max(0.1, e) for e in expected])
