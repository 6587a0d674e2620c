"""Devices: the placement targets a scheduler dispatches to.

Device names are logical (the workers may sit on other hosts). A bare name gets equal
capacity; a :class:`Device` (or a dict with its fields) states its relative capacity and
how many batches it may run at once.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Union

from .errors import ConfigError

__all__ = ["Device", "DeviceLike", "parse_devices", "MAX_DEVICES"]

#: Most devices one scheduler manages.
MAX_DEVICES = 65536


@dataclasses.dataclass(frozen=True)
class Device:
    """A logical device.

    Attributes:
        name: unique name, e.g. ``"cuda:0"`` or ``"node3/h100-1"``.
        capacity: relative compute capacity (> 0, default 1.0). Capacities are
            normalised so that the strongest device is 1024, as Linux does with CPU
            capacity; only ratios matter.
        max_inflight_batches: batches the device may run at once (>= 1, default 1); a
            step gives a device a new batch only while it has fewer in flight.
    """

    name: str
    capacity: float = 1.0
    max_inflight_batches: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"device name must be a non-empty str, got {self.name!r}")
        c = self.capacity
        if isinstance(c, bool) or not isinstance(c, numbers.Real) or not math.isfinite(c) or c <= 0:
            raise ConfigError(f"device {self.name!r}: capacity must be a finite number > 0, got {c!r}")
        m = self.max_inflight_batches
        if isinstance(m, bool) or not isinstance(m, numbers.Integral) or not 1 <= m <= 2**31 - 1:
            raise ConfigError(
                f"device {self.name!r}: max_inflight_batches must be an integer >= 1, got {m!r}"
            )


DeviceLike = Union[str, Device, Mapping[str, Any]]


def parse_devices(devices: object) -> tuple[Device, ...]:
    """Turn the ``devices`` argument of :class:`capsched.Scheduler` into Devices.

    Raises:
        ConfigError: not a list, empty, an entry of the wrong kind, a duplicate name.
    """
    if isinstance(devices, str):
        raise ConfigError(
            f"devices must be a list of device names or Device objects, got the string {devices!r}"
            + (" (NVML discovery with devices='auto' is not part of this version)" if devices == "auto" else "")
        )
    if not isinstance(devices, Sequence) or isinstance(devices, (bytes, bytearray)):
        raise ConfigError(f"devices must be a list, got {type(devices).__name__}")
    if not devices:
        raise ConfigError("the device list is empty: give at least one device")
    if len(devices) > MAX_DEVICES:
        raise ConfigError(f"too many devices: {len(devices)} (limit {MAX_DEVICES})")
    out = []
    for i, d in enumerate(devices):
        if isinstance(d, Device):
            out.append(d)
        elif isinstance(d, str):
            out.append(Device(d))
        elif isinstance(d, Mapping):
            unknown = sorted(set(d) - {"name", "capacity", "max_inflight_batches"})
            if unknown or "name" not in d:
                raise ConfigError(
                    f"device {i}: a device dict needs 'name' and may have 'capacity' and "
                    f"'max_inflight_batches'; got keys {sorted(d)}"
                )
            out.append(Device(**d))
        else:
            raise ConfigError(f"device {i}: expected a name, a Device or a dict, got {d!r}")
    seen: dict[str, int] = {}
    for i, d in enumerate(out):
        if d.name in seen:
            raise ConfigError(f"device name {d.name!r} appears twice (entries {seen[d.name]} and {i})")
        seen[d.name] = i
    return tuple(out)
