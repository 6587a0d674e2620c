"""Placement policies of the simulator.

The baselines are the plain load-balancer policies: each binds a request to a device
when it arrives (or when it is retried after a failure), with no knowledge of the
devices' speeds; each device then pulls its own queue first come, first served into its
free sequence slots. Only devices that are up are chosen (a health check), and only
devices whose KV cache can hold the request (``prompt + output`` tokens) at all: a
request too long for some devices is bound by the same policy among the others, as a
router that knows each backend's max context length would do (one that no device can
hold fails at arrival under every policy: :func:`capsched.sim.engine.unservable`).

* ``round_robin``: the devices in turn.
* ``least_load``: the device with the fewest outstanding requests (queued + running),
  ties to the first in device order.
* ``random``: uniformly at random.
* ``power_of_two_choices``: two distinct devices at random, the one with fewer
  outstanding requests (ties to the first drawn).

``capsched`` is not a binding policy: requests go into one :class:`capsched.Scheduler`,
which places them at device iteration boundaries (see :mod:`capsched.sim.engine`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np

from ..errors import ConfigError

__all__ = [
    "BASELINES",
    "POLICIES",
    "BindingPolicy",
    "RoundRobin",
    "LeastLoad",
    "RandomChoice",
    "PowerOfTwoChoices",
    "make_policy",
    "parse_policies",
]


class BindingPolicy:
    """Chooses a device for a request at arrival.

    ``choose(outstanding, up, eligible)`` gets the outstanding request count of every
    device, whether each is up and (``eligible``; None: every device) whether each can
    hold the request, and returns the index of an eligible device (one that is up, if
    any eligible one is). Some device must be eligible.
    """

    name = ""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def choose(
        self, outstanding: Sequence[int], up: Sequence[bool], eligible: Optional[Sequence[bool]] = None
    ) -> int:  # pragma: no cover
        """The index of the device for the next request (an eligible one; up, if any
        eligible one is)."""
        raise NotImplementedError

    @staticmethod
    def _candidates(up: Sequence[bool], eligible: Optional[Sequence[bool]]) -> list[int]:
        """The eligible devices that are up, or (none is up) every eligible device."""
        if eligible is None:
            return [i for i, u in enumerate(up) if u] or list(range(len(up)))
        ok = [i for i, e in enumerate(eligible) if e]
        return [i for i in ok if up[i]] or ok


class RoundRobin(BindingPolicy):
    """The devices in turn, skipping those that are down."""

    name = "round_robin"

    def __init__(self, rng: np.random.Generator) -> None:
        super().__init__(rng)
        self.next = 0

    def choose(
        self, outstanding: Sequence[int], up: Sequence[bool], eligible: Optional[Sequence[bool]] = None
    ) -> int:
        n = len(up)
        for k in range(n):
            i = (self.next + k) % n
            if up[i] and (eligible is None or eligible[i]):
                self.next = (i + 1) % n
                return i
        for k in range(n):  # none is up: the next eligible one in turn
            i = (self.next + k) % n
            if eligible is None or eligible[i]:
                self.next = (i + 1) % n
                return i
        raise ValueError("no eligible device")


class LeastLoad(BindingPolicy):
    """The device with the fewest outstanding requests (ties to the first)."""

    name = "least_load"

    def choose(
        self, outstanding: Sequence[int], up: Sequence[bool], eligible: Optional[Sequence[bool]] = None
    ) -> int:
        best, best_n = -1, 0
        for i, n in enumerate(outstanding):
            if up[i] and (eligible is None or eligible[i]) and (best < 0 or n < best_n):
                best, best_n = i, n
        return best if best >= 0 else self._candidates(up, eligible)[0]


class RandomChoice(BindingPolicy):
    """A device that is up, uniformly at random."""

    name = "random"

    def choose(
        self, outstanding: Sequence[int], up: Sequence[bool], eligible: Optional[Sequence[bool]] = None
    ) -> int:
        alive = self._candidates(up, eligible)
        return alive[int(self.rng.integers(len(alive)))]


class PowerOfTwoChoices(BindingPolicy):
    """Two distinct devices at random, the one with fewer outstanding requests."""

    name = "power_of_two_choices"

    def choose(
        self, outstanding: Sequence[int], up: Sequence[bool], eligible: Optional[Sequence[bool]] = None
    ) -> int:
        alive = self._candidates(up, eligible)
        if len(alive) == 1:
            return alive[0]
        a, b = self.rng.choice(len(alive), size=2, replace=False)
        i, j = alive[int(a)], alive[int(b)]
        return j if outstanding[j] < outstanding[i] else i


BASELINES: dict[str, type[BindingPolicy]] = {
    p.name: p for p in (RoundRobin, LeastLoad, RandomChoice, PowerOfTwoChoices)
}

#: Every policy the simulator runs, in table order.
POLICIES: tuple[str, ...] = ("round_robin", "random", "least_load", "power_of_two_choices", "capsched")


def make_policy(name: str, rng: np.random.Generator) -> BindingPolicy:
    """A baseline policy by name.

    Raises:
        ConfigError: not a baseline name.
    """
    try:
        return BASELINES[name](rng)
    except KeyError:
        raise ConfigError(f"unknown baseline policy {name!r} (known: {', '.join(BASELINES)})") from None


def parse_policies(text: str) -> tuple[str, ...]:
    """``"least_load,capsched"`` (or ``"all"``) as a tuple of policy names; case does not
    matter, ``-`` and ``_`` are interchangeable, ``p2c`` names power_of_two_choices.

    Raises:
        ConfigError: empty, an unknown name, a name given twice (``p2c`` and
            ``power_of_two_choices`` are the same name), or ``all`` with other names.
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"--policies is empty: give some of {', '.join(POLICIES)}")
    if text.strip().lower() == "all":  # (names are case-insensitive, 'all' too)
        return POLICIES
    out: list[str] = []
    for part in text.split(","):
        name = part.strip().lower().replace("-", "_")
        if name == "all":
            raise ConfigError(f"--policies {text.strip()!r}: 'all' already names every policy; give it alone")
        name = {"p2c": "power_of_two_choices", "rr": "round_robin", "ll": "least_load"}.get(name, name)
        if name not in POLICIES:
            raise ConfigError(f"unknown policy {part.strip()!r} (known: {', '.join(POLICIES)}, or 'all')")
        if name in out:
            raise ConfigError(f"policy {name!r} is listed twice")
        out.append(name)
    return tuple(out)
