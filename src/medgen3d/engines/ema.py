"""An exponential moving average of a network's weights, for sampling and previews (ignite's ``EMAHandler``).

Diffusion models sample better from averaged weights than from the last optimiser step. ignite's own warm-up
keeps its progress in a scheduler that checkpoints do not hold, so here the momentum is a function of the
iteration count alone: ``max(1 - decay, 9 / (10 + iteration))``. Early in training the average follows the
network closely (an average over roughly the last tenth of the steps), later it settles at ``decay``; a resumed
run continues with exactly the momentum it would have had.
"""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler

__all__ = ["WeightAverage"]


class WeightAverage(EMAHandler):
    """EMA of ``network``'s parameters, updated after every iteration; ``ema_model`` is the averaged copy.

    Args:
        network: the network being trained (unwrapped from DDP by ignite).
        decay: the long-run decay (0.999: an average over about the last thousand steps).
    """

    def __init__(self, network: torch.nn.Module, decay: float = 0.999) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        super().__init__(network, momentum=1.0 - decay)

    def momentum_at(self, iteration: int) -> float:
        """The update weight of the network's new parameters after ``iteration`` steps."""
        return max(self.momentum, 9.0 / (10.0 + iteration))

    def attach(self, engine: Engine, name: str = "ema_momentum") -> None:  # type: ignore[override]
        # the momentum is set before the update that reads it, both after every iteration
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._set_momentum, name)
        super().attach(engine, name, warn_if_exists=False)

    def _set_momentum(self, engine: Engine, name: str) -> None:
        setattr(engine.state, name, self.momentum_at(engine.state.iteration))
