"""Simulated fault injection for long runs of the real :class:`capsched.Scheduler`.

Everything here is simulated: nothing touches a device or a real clock. Two seeded,
deterministic helpers a driver (``bench/soak.py``) combines with its own fleet model:

* :class:`SimulatedClockSource` turns the driver's true virtual time into the readings a
  server's clock would give it, with **clock drops**: stalls (the reading stays put for a
  few loop turns), far forward jumps (the server was frozen: a GC pause, a VM migration;
  everything that happened meanwhile is seen at once) and backward steps (a reading
  earlier than the previous one: an NTP step on a non-monotonic clock, or two threads that
  read the clock and then race). A server passes readings to the scheduler; the scheduler
  documents that a ``now`` earlier than the latest one seen is treated as the latest
  (``StepResult.now`` says which time a step ran at) and that a non-finite ``now`` raises
  :class:`capsched.errors.InvalidArgumentError`.
* :class:`SimulatedDeviceFaults` decides when each device is *down* (every batch it runs
  fails: windows long enough for its circuit breaker to trip, probe and recover) and which
  requests of a healthy device's batch fail at random, and whether a failure is
  retryable.

Both draw from their own :class:`numpy.random.Generator` (``numpy.random.default_rng``),
so a seed replays a run exactly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Optional

import numpy as np

from ..errors import ConfigError

__all__ = [
    "ClockDropRates",
    "ClockReading",
    "SimulatedClockSource",
    "SimulatedDeviceFaults",
    "DeviceFaultRates",
]


def _check_prob(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= float(value) <= 1.0):
        raise ConfigError(f"{name} must be a probability in [0, 1], got {value!r}")


def _check_pos(name: str, value: float, *, zero_ok: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
    if not ok or float(value) < 0.0 or (float(value) == 0.0 and not zero_ok):
        raise ConfigError(f"{name} must be a finite number {'>= 0' if zero_ok else '> 0'}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ClockDropRates:
    """How often a :class:`SimulatedClockSource` misbehaves, per reading.

    Attributes:
        stall: probability that a reading starts a stall (the reading then stays at its
            value for ``stall_readings`` readings while true time moves on).
        stall_readings: readings a stall lasts (>= 1).
        jump: probability that the server freezes before this reading: true time jumps
            forward by ``jump_s`` x a uniform draw in [0.5, 1.5) seconds.
        jump_s: mean length of a forward jump in seconds (> 0).
        backward: probability that a reading is earlier than the previous reading by
            ``backward_s`` x a uniform draw in (0, 1] seconds.
        backward_s: largest backward step in seconds (> 0).
    """

    stall: float = 0.002
    stall_readings: int = 5
    jump: float = 0.0002
    jump_s: float = 60.0
    backward: float = 0.002
    backward_s: float = 0.5

    def __post_init__(self) -> None:
        for name in ("stall", "jump", "backward"):
            _check_prob(name, getattr(self, name))
        if isinstance(self.stall_readings, bool) or not isinstance(self.stall_readings, int) or self.stall_readings < 1:
            raise ConfigError(f"stall_readings must be an integer >= 1, got {self.stall_readings!r}")
        _check_pos("jump_s", self.jump_s)
        _check_pos("backward_s", self.backward_s)


@dataclasses.dataclass(frozen=True)
class ClockReading:
    """One reading of a :class:`SimulatedClockSource`.

    Attributes:
        true_s: the true (virtual) time, after any forward jump this reading applied.
        reading_s: what the server's clock says; may be below an earlier reading.
        kind: ``"ok"``, ``"stall"`` (a stalled reading), ``"jump"`` (a forward jump was
            applied to ``true_s`` first) or ``"backward"``.
        jumped_s: seconds of the forward jump (0.0 unless ``kind == "jump"``).
    """

    true_s: float
    reading_s: float
    kind: str
    jumped_s: float = 0.0


class SimulatedClockSource:
    """A server's clock with drops, driven by the caller's true virtual time (simulated).

    Call :meth:`read` with the true time at each loop turn (non-decreasing); it returns
    the reading, and the true time moved on by a forward jump when one happened (the
    caller then takes that as its true time: the server was frozen that long).

    Args:
        rates: the misbehaviours' rates (:class:`ClockDropRates`).
        seed: seed of its random stream.
    """

    def __init__(self, rates: Optional[ClockDropRates] = None, *, seed: int = 0) -> None:
        self.rates = rates if rates is not None else ClockDropRates()
        self._rng = np.random.default_rng([int(seed), 0x5C0C])
        self._last_true = -math.inf
        self._last_reading = -math.inf
        self._stall_left = 0
        self._stall_at = 0.0
        self._draws = np.empty((0, 4))
        self._next = 0
        #: readings by kind so far
        self.counts: dict[str, int] = {"ok": 0, "stall": 0, "jump": 0, "backward": 0}

    def _uniforms(self) -> np.ndarray:
        if self._next >= len(self._draws):  # draw in blocks: one numpy call per 4096 readings
            self._draws = self._rng.random((4096, 4))
            self._next = 0
        row: np.ndarray = self._draws[self._next]
        self._next += 1
        return row

    def read(self, true_s: float) -> ClockReading:
        """The clock's reading at true time ``true_s`` (seconds, finite, never below the
        previous call's true time, including any jump it applied).

        Raises:
            ConfigError: ``true_s`` is not finite or runs backwards.
        """
        if not math.isfinite(true_s):
            raise ConfigError(f"true time must be finite, got {true_s!r}")
        if true_s < self._last_true:
            raise ConfigError(f"true time runs backwards: {true_s!r} after {self._last_true!r}")
        r = self.rates
        u = self._uniforms()
        kind, jumped = "ok", 0.0
        if self._stall_left > 0:
            self._stall_left -= 1
            reading, kind = self._stall_at, "stall"
        elif u[0] < r.jump:
            jumped = r.jump_s * (0.5 + u[3])
            true_s += jumped
            reading, kind = true_s, "jump"
        elif u[1] < r.stall and self._last_reading > -math.inf:
            self._stall_left = r.stall_readings - 1
            self._stall_at = reading = self._last_reading
            kind = "stall"
        elif u[2] < r.backward and self._last_reading > -math.inf:
            reading = self._last_reading - r.backward_s * (1.0 - u[3])  # (0, backward_s]
            kind = "backward"
        else:
            reading = true_s
        self._last_true = true_s
        self._last_reading = reading
        self.counts[kind] += 1
        return ClockReading(true_s, reading, kind, jumped)


@dataclasses.dataclass(frozen=True)
class DeviceFaultRates:
    """Rates of :class:`SimulatedDeviceFaults`.

    Attributes:
        down_every_s: mean seconds between the starts of a device's down windows
            (exponential; > 0).
        down_for_s: (shortest, longest) length of a down window in seconds, uniform.
        request_fail: probability that a request of a healthy device's batch fails.
        retryable: probability that a failure is reported as retryable.
    """

    down_every_s: float = 600.0
    down_for_s: tuple[float, float] = (20.0, 90.0)
    request_fail: float = 0.002
    retryable: float = 0.8

    def __post_init__(self) -> None:
        _check_pos("down_every_s", self.down_every_s)
        lo, hi = self.down_for_s
        _check_pos("down_for_s[0]", lo)
        _check_pos("down_for_s[1]", hi)
        if hi < lo:
            raise ConfigError(f"down_for_s must be (shortest, longest), got {self.down_for_s!r}")
        _check_prob("request_fail", self.request_fail)
        _check_prob("retryable", self.retryable)


class SimulatedDeviceFaults:
    """Which simulated devices are down when, and which requests fail (simulated).

    Each device alternates between up and down: up for an exponential time of mean
    ``down_every_s``, then down for a uniform time in ``down_for_s``. A batch that ends
    on a down device fails as a whole; on an up device each request fails with
    probability ``request_fail``. Windows are generated lazily as time advances, so the
    helper holds O(devices) state however long the run.

    Args:
        devices: device names.
        rates: :class:`DeviceFaultRates`.
        seed: seed of its random stream.
    """

    def __init__(self, devices: Sequence[str], rates: Optional[DeviceFaultRates] = None, *, seed: int = 0) -> None:
        if not devices:
            raise ConfigError("SimulatedDeviceFaults needs at least one device")
        self.devices = list(devices)
        self.rates = rates if rates is not None else DeviceFaultRates()
        self._rng = np.random.default_rng([int(seed), 0xFA17])
        # per device: the current or next down window [start, end)
        self._start = np.array([self._rng.exponential(self.rates.down_every_s) for _ in self.devices])
        self._end = self._start + self._window()
        #: down windows that have started, per device
        self.windows_started = [0] * len(self.devices)

    def _window(self) -> float:
        lo, hi = self.rates.down_for_s
        return float(self._rng.uniform(lo, hi)) if hi > lo else float(lo)

    def _advance(self, i: int, t: float) -> None:
        while t >= self._end[i]:
            self.windows_started[i] += 1
            self._start[i] = self._end[i] + self._rng.exponential(self.rates.down_every_s)
            self._end[i] = self._start[i] + self._window()

    def is_down(self, device: int, t: float) -> bool:
        """Whether device ``device`` (an index) is down at time ``t``. Calls for one
        device must come with non-decreasing ``t`` (windows are forgotten once past)."""
        self._advance(device, t)
        return bool(self._start[device] <= t)

    def down_until(self, device: int, t: float) -> float:
        """End of the down window containing ``t``, or ``t`` itself when the device is up."""
        return float(self._end[device]) if self.is_down(device, t) else t

    def draw_failures(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """For a batch of ``n`` requests on an up device: a boolean mask of those that
        fail, and a boolean mask (same length) of which failures are retryable."""
        u = self._rng.random((2, n))
        fails = u[0] < self.rates.request_fail
        return fails, u[1] < self.rates.retryable

    def draw_retryable(self, n: int) -> np.ndarray:
        """For a batch of ``n`` requests on a down device (all fail): which are retryable."""
        return self._rng.random(n) < self.rates.retryable
