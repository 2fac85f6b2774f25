from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine

from medgen3d.engines.ema import WeightAverage


def _train(network, iterations, ema):
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)

    def step(engine, batch):
        optimizer.zero_grad()
        ((network(torch.ones(1, 2)) - 3.0) ** 2).sum().backward()
        optimizer.step()

    engine = Engine(step)
    ema.attach(engine)
    engine.run(range(iterations), max_epochs=1)
    return engine


def test_the_average_lags_behind_the_raw_weights_and_follows_them_as_training_settles():
    torch.manual_seed(0)
    network = torch.nn.Linear(2, 1)
    ema = WeightAverage(network, decay=0.99)
    start = network.weight.detach().clone()
    _train(network, 3, ema)
    # after 3 steps the average sits between the initial and the current weights
    raw, averaged = network.weight.detach(), ema.ema_model.weight
    assert not torch.allclose(raw, averaged)
    assert ((averaged - start).norm() < (raw - start).norm()).item()
    _train(network, 300, ema)  # converged: the average has caught up
    assert torch.allclose(ema.ema_model.weight, network.weight, atol=1e-3)


def test_momentum_depends_only_on_the_iteration_so_a_resumed_run_continues_it():
    ema = WeightAverage(torch.nn.Linear(2, 1), decay=0.999)
    assert ema.momentum_at(1) == pytest.approx(9 / 11)
    assert ema.momentum_at(100) == pytest.approx(9 / 110)
    assert ema.momentum_at(100_000) == pytest.approx(0.001)


def test_decay_outside_the_unit_interval_is_refused():
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(torch.nn.Linear(2, 1), decay=1.0)
