"""A simulated Ray Serve replica for the router's test and scenario (no model, no GPU).

:class:`SimulatedReplica` sleeps instead of serving: a request takes
``base_s / speed x (1 + slowdown x (running - 1) / (slots - 1))`` seconds, where
``running`` counts the requests on the replica when it starts (itself included), so a
full replica serves each request ``1 + slowdown`` times slower than an idle one, as a
batched LLM server does. The replica's speed is ``speeds[rank]`` (Serve's replica rank),
so one deployment has heterogeneous replicas; it reports ``capacity = speed`` through
:class:`capsched.integrations.ray_serve.CapacityReporter`. Wrap it with
``serve.deployment(max_ongoing_requests=slots, ...)``; it imports Ray only when a replica
is built.
"""

from __future__ import annotations

import asyncio
import math
import numbers
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError
from .ray_serve import CapacityReporter, ReplicaStats

__all__ = ["SimulatedReplica", "simulated_service_s"]


def simulated_service_s(base_s: float, speed: float, running: int, slots: int, slowdown: float) -> float:
    """Seconds the simulated replica takes for a request that starts with ``running``
    requests on it (itself included)."""
    share = 0.0 if slots <= 1 else (min(running, slots) - 1) / (slots - 1)
    return base_s / speed * (1.0 + slowdown * share)


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"SimulatedReplica: {name} must be a finite number > 0, got {value!r}")
    return float(value)


class SimulatedReplica(CapacityReporter):
    """A simulated replica (see the module docstring).

    Args:
        speeds: relative speed per replica rank (rank ``i`` gets ``speeds[i % len]``).
        base_s: seconds a request takes on an idle replica of speed 1.
        slots: requests it runs at once; give the deployment the same
            ``max_ongoing_requests``.
        slowdown: how much slower each request is on a full replica (0.5: 1.5x).

    Raises:
        ConfigError: a bad value, named.
    """

    def __init__(self, speeds: Sequence[float], base_s: float, slots: int, slowdown: float = 0.5) -> None:
        if isinstance(speeds, (str, bytes)) or not isinstance(speeds, Sequence) or not speeds:
            raise ConfigError(f"SimulatedReplica: speeds must be a non-empty list of numbers, got {speeds!r}")
        clean = [_positive("speeds[]", s) for s in speeds]
        self.base_s: float = _positive("base_s", base_s)
        if isinstance(slots, bool) or not isinstance(slots, numbers.Integral) or slots < 1:
            raise ConfigError(f"SimulatedReplica: slots must be an integer >= 1, got {slots!r}")
        if isinstance(slowdown, bool) or not isinstance(slowdown, numbers.Real) or not 0 <= slowdown < math.inf:
            raise ConfigError(f"SimulatedReplica: slowdown must be a finite number >= 0, got {slowdown!r}")
        from ray import serve

        rank = serve.get_replica_context().rank
        self.rank: int = int(getattr(rank, "rank", rank))
        self.speed: float = clean[self.rank % len(clean)]
        self.slots: int = int(slots)
        self.slowdown: float = float(slowdown)
        self.capsched = ReplicaStats(capacity=self.speed, slots=self.slots)

    async def __call__(self, payload: Any = None) -> dict[str, Any]:
        """Serve one request (by sleeping); returns the replica's rank and speed."""
        with self.capsched.track():
            delay = simulated_service_s(self.base_s, self.speed, self.capsched.ongoing, self.slots, self.slowdown)
            await asyncio.sleep(delay)
        return {"rank": self.rank, "speed": self.speed}
