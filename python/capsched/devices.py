"""Devices: the placement targets a scheduler dispatches to.

Device names are logical (the workers may sit on other hosts). A bare name gets equal
capacity, as Linux assumes symmetric CPUs until told otherwise; a :class:`Device` (or a
dict with its fields) states its capacity, memory, clock and how many batches it may run
at once, either directly or through ``model``, a row of the spec table
(:mod:`capsched.specs`). ``devices="auto"`` takes what :func:`discover` finds on this
machine (:mod:`capsched.discovery`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Optional, Union, cast

from .config import _brief
from .errors import ConfigError
from .specs import AcceleratorSpec, UnknownAcceleratorError, lookup

__all__ = ["Device", "Slice", "DeviceLike", "parse_devices", "discover", "MAX_DEVICES", "MAX_KV_TOKENS"]

#: Most devices one scheduler manages.
MAX_DEVICES = 65536
#: Largest KV-cache budget a device may state (tokens); ``None`` means unlimited.
MAX_KV_TOKENS = 2**62



def _tenant_names(who: str, tenants: object) -> tuple[str, ...]:
    """A device's or slice's ``tenants`` as a tuple; ConfigError naming ``who`` unless a
    list (tuple, set) of non-empty strings."""
    if isinstance(tenants, str) or not isinstance(tenants, (tuple, list, frozenset, set)):
        raise ConfigError(f"{who}: tenants must be a list of tenant names, got {_brief(tenants)}")
    for t in tenants:
        if not isinstance(t, str) or not t:
            raise ConfigError(f"{who}: tenant names must be non-empty strings, got {_brief(t)}")
    return tuple(tenants)

@dataclasses.dataclass(frozen=True)
class Device:
    """A logical device.

    Attributes:
        name: unique name, e.g. ``"cuda:0"`` or ``"node3/h100-1"``.
        capacity: relative compute capacity (> 0) as given, or ``None`` (the default):
            then it comes from ``model`` (peak dense bf16 TFLOP/s, see
            :func:`capsched.specs.capacity`), else 1.0. :attr:`effective_capacity` is the
            resolved figure. Capacities are normalised so that the strongest device is
            1024, as Linux does with CPU capacity; only ratios matter.
        max_inflight_batches: batches the device may run at once (>= 1, default 1); a
            step gives a device a new batch only while it has fewer in flight.
        model: a spec name or alias (``"H100-SXM"``, ``"NVIDIA L4"``; see
            :func:`capsched.specs.lookup`). It fills ``memory_gib``, ``power_w`` and
            ``max_clock_mhz`` from the table when they are not given, and the capacity
            when ``capacity`` is not given. Stored as given; :attr:`spec` is the row.
        memory_gib: device memory in GiB (> 0), or ``None``.
        kv_tokens: KV-cache budget in tokens (an integer >= 1), or ``None`` for
            unlimited; :func:`capsched.specs.kv_cache_tokens` computes one.
        max_clock_mhz: the max SM clock in MHz (> 0), or ``None``.
        clock_mhz: the clock the device can run at now, in MHz (0 < clock <= max); needs a
            max clock (given or from ``model``). ``None`` means at its max clock. Usable
            capacity scales with ``clock / max``; the scheduler can be told later clocks
            (``Scheduler.set_clock``, :class:`capsched.discovery.ClockFeed`).
        power_w: board power in watts (> 0), or ``None``; energy-aware placement uses
            watts per unit of capacity.
        tenants: tenants pinned to this device (a slice given to them): it takes only
            their requests, and their requests go only to devices that list them. Empty
            (the default): a shared device, for every tenant not pinned anywhere.
        parent: the physical device this is a slice of (set by :meth:`split`);
            ``Scheduler.set_clock``/``set_pressure`` on the parent's name reach every slice.
        prefill_s_per_token, decode_step_s, decode_s_per_seq: seeds of the device's
            service-time model at full clock, in seconds (>= 0, or ``None``): prefill per
            prompt token, one decode step, and a decode step's extra per sequence in the
            batch. The scheduler refines them online from completions and uses them in
            the wait-or-go rule and to keep a request with a deadline off a device that
            could not finish it in time (``docs/batching.md``). ``None`` (the default):
            estimates come from the request classes' learned work per token.
        pool: the device pool (class) it belongs to, e.g. ``"h100"``: requests that name
            a pool run only on its devices (``InferenceRequest(pool=...)``, with an
            optional ``fallback_pool`` while the whole pool's breakers are open).
            ``None`` (the default): in no pool.

    Raises:
        ConfigError: a bad value; the message names the device and the field.
    """

    name: str
    capacity: Optional[float] = None
    max_inflight_batches: int = 1
    model: Optional[str] = None
    memory_gib: Optional[float] = None
    kv_tokens: Optional[int] = None
    max_clock_mhz: Optional[float] = None
    clock_mhz: Optional[float] = None
    power_w: Optional[float] = None
    tenants: Collection[str] = ()
    parent: Optional[str] = None
    prefill_s_per_token: Optional[float] = None
    decode_step_s: Optional[float] = None
    decode_s_per_seq: Optional[float] = None
    pool: Optional[str] = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"device name must be a non-empty str, got {self.name!r}")
        _check_utf8("device name", self.name)
        c = self.capacity
        _check_float_range(self.name, "capacity", c)
        if c is not None and (
            isinstance(c, bool) or not isinstance(c, numbers.Real) or not math.isfinite(c) or c <= 0
        ):
            raise ConfigError(f"device {self.name!r}: capacity must be a finite number > 0, got {c!r}")
        m = self.max_inflight_batches
        if isinstance(m, bool) or not isinstance(m, numbers.Integral) or not 1 <= m <= 2**31 - 1:
            raise ConfigError(
                f"device {self.name!r}: max_inflight_batches must be an integer >= 1, got {m!r}"
            )
        spec = None
        if self.model is not None:
            if not isinstance(self.model, str):
                raise ConfigError(
                    f"device {self.name!r}: model must be an accelerator name (str), got {self.model!r}"
                )
            try:
                spec = lookup(self.model)
            except UnknownAcceleratorError as exc:
                raise ConfigError(f"device {self.name!r}: model: {exc}") from None
        for field in ("memory_gib", "max_clock_mhz", "clock_mhz", "power_w"):
            v = getattr(self, field)
            _check_float_range(self.name, field, v)
            if v is not None and (
                isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0
            ):
                raise ConfigError(f"device {self.name!r}: {field} must be a finite number > 0, got {v!r}")
        if self.pool is not None and (not isinstance(self.pool, str) or not self.pool):
            raise ConfigError(f"device {self.name!r}: pool must be a non-empty str or None, got {self.pool!r}")
        for field in ("prefill_s_per_token", "decode_step_s", "decode_s_per_seq"):
            v = getattr(self, field)
            _check_float_range(self.name, field, v)
            if v is not None and (
                isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0
            ):
                raise ConfigError(f"device {self.name!r}: {field} must be a finite number >= 0, got {v!r}")
        k = self.kv_tokens
        if k is not None and (
            isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= MAX_KV_TOKENS
        ):
            raise ConfigError(
                f"device {self.name!r}: kv_tokens must be an integer >= 1 (or None for unlimited), got {k!r}"
            )
        if spec is not None:  # fill what was not given from the table
            for field, value in (
                ("memory_gib", spec.memory_gib),
                ("max_clock_mhz", spec.max_clock_mhz),
                ("power_w", spec.tdp_w),
            ):
                if getattr(self, field) is None and value is not None:
                    object.__setattr__(self, field, float(value))
        if self.clock_mhz is not None:
            if self.max_clock_mhz is None:
                raise ConfigError(
                    f"device {self.name!r}: clock_mhz={self.clock_mhz!r} needs max_clock_mhz "
                    "(give it, or a model whose max clock is known)"
                )
            if self.clock_mhz > self.max_clock_mhz:
                raise ConfigError(
                    f"device {self.name!r}: clock_mhz must be <= max_clock_mhz "
                    f"({self.max_clock_mhz!r}), got {self.clock_mhz!r}"
                )

        object.__setattr__(self, "tenants", _tenant_names(f"device {self.name!r}", self.tenants))
        if self.parent is not None and (not isinstance(self.parent, str) or not self.parent):
            raise ConfigError(f"device {self.name!r}: parent must be a device name, got {self.parent!r}")
        # Plain Python numbers from here on (a numpy scalar or a Fraction, accepted above and named as given in its messages,
        # would otherwise reach the checkpoint, which has no JSON form for them).
        object.__setattr__(self, "max_inflight_batches", int(m))
        if k is not None:
            object.__setattr__(self, "kv_tokens", int(k))
        for field in ("capacity", "memory_gib", "max_clock_mhz", "clock_mhz", "power_w",
                      "prefill_s_per_token", "decode_step_s", "decode_s_per_seq"):
            v = getattr(self, field)
            if v is not None:
                object.__setattr__(self, field, float(v))

    def split(self, *slices: "Slice") -> tuple["Device", ...]:
        """Partition this device into slices (MIG profiles or fractional shares), each a
        placement target of its own named ``"<device>/<slice>"``: capacity, KV budget,
        memory and power scale with the slice's shares; pinned tenants per slice. Each
        slice keeps the device's model, clocks, ``pool`` and service-time seeds
        (``prefill_s_per_token``, ``decode_step_s``, ``decode_s_per_seq``).

        Raises:
            ConfigError: no slices, a bad share, or shares that add up to more than 1.
        """
        if not slices:
            raise ConfigError(f"device {self.name!r}: split() needs at least one Slice")
        for sl in slices:
            if not isinstance(sl, Slice):
                raise ConfigError(f"device {self.name!r}: split() takes Slice objects, got {sl!r}")
        for what in ("compute", "memory"):
            total = sum(getattr(sl, what) for sl in slices)
            if total > 1.0 + 1e-9:
                raise ConfigError(f"device {self.name!r}: the slices' {what} shares add up to {total:g} > 1")
        out = []
        for sl in slices:
            out.append(
                Device(
                    f"{self.name}/{sl.name}",
                    capacity=self.effective_capacity * sl.compute,
                    max_inflight_batches=sl.max_inflight_batches,
                    model=self.model,
                    memory_gib=None if self.memory_gib is None else self.memory_gib * sl.memory,
                    kv_tokens=None if self.kv_tokens is None else max(1, int(self.kv_tokens * sl.memory)),
                    max_clock_mhz=self.max_clock_mhz,
                    clock_mhz=self.clock_mhz,
                    power_w=None if self.power_w is None else self.power_w * sl.compute,
                    tenants=tuple(sl.tenants),
                    parent=self.name,
                    # a slice runs at the parent's per-token speed and stays in its pool
                    prefill_s_per_token=self.prefill_s_per_token,
                    decode_step_s=self.decode_step_s,
                    decode_s_per_seq=self.decode_s_per_seq,
                    pool=self.pool,
                )
            )
        return tuple(out)

    @property
    def spec(self) -> Optional[AcceleratorSpec]:
        """The spec-table row of ``model`` (``None`` without a model)."""
        if self.model is None:
            return None
        return lookup(self.model)

    @property
    def effective_capacity(self) -> float:
        """The capacity the scheduler uses: ``capacity`` if given, else the model's
        peak TFLOP/s, else 1.0. It is the capacity at max clock; the scheduler scales it
        by ``clock_mhz / max_clock_mhz`` itself."""
        if self.capacity is not None:
            return float(self.capacity)
        spec = self.spec
        if spec is not None:
            return float(spec.peak_tflops)
        return 1.0


@dataclasses.dataclass(frozen=True)
class Slice:
    """A share of a device for :meth:`Device.split` (a MIG profile or a fraction).

    Attributes:
        name: the slice's name within its device (``"mig-3g.40gb-0"``, ``"a"``).
        compute: share of the device's compute, (0, 1] (MIG 3g of 7: 3/7).
        memory: share of its memory and KV budget, (0, 1].
        tenants: tenants pinned to this slice (see :class:`Device`): a list of names,
            not a str.
        max_inflight_batches: batches the slice may run at once (>= 1).

    Raises:
        ConfigError: a bad value; the message names the slice and the field.
    """

    name: str
    compute: float
    memory: float
    tenants: Collection[str] = ()
    max_inflight_batches: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise ConfigError(f"slice name must be a non-empty str without '/', got {self.name!r}")
        _check_utf8("slice name", self.name)
        for what in ("compute", "memory"):
            v = getattr(self, what)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0.0 < cast(float, v) <= 1.0:
                raise ConfigError(f"slice {self.name!r}: {what} share must be in (0, 1], got {_brief(v)}")
        object.__setattr__(self, "tenants", _tenant_names(f"slice {self.name!r}", self.tenants))
        m = self.max_inflight_batches
        if isinstance(m, bool) or not isinstance(m, numbers.Integral) or not 1 <= m <= 2**31 - 1:
            raise ConfigError(f"slice {self.name!r}: max_inflight_batches must be an integer >= 1, got {_brief(m)}")


def _check_utf8(what: str, name: str) -> None:
    """A name must encode to UTF-8: one holding a lone surrogate (``json.loads('"gpu\\ud800"')``,
    undecodable bytes read with ``surrogateescape``) would break every metrics scrape and
    every JSON or text export that carries it."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(
            f"{what} must be valid Unicode text (it must encode to UTF-8), got {name!r}: "
            f"{exc.object[exc.start:exc.end]!r} at {exc.start} is a lone surrogate"
        ) from None


def _check_float_range(device: str, field: str, v: object) -> None:
    """A real ``v`` must convert to a float (``math.isfinite`` of a huge int overflows)."""
    if v is None or isinstance(v, bool) or not isinstance(v, numbers.Real):
        return
    try:
        float(v)
    except (OverflowError, ValueError):
        raise ConfigError(
            f"device {device!r}: {field} must be a number within the range of a float, got {_brief(v)}"
        ) from None


DeviceLike = Union[str, Device, Mapping[str, Any]]


def parse_devices(devices: object) -> tuple[Device, ...]:
    """Turn the ``devices`` argument of :class:`capsched.Scheduler` into Devices.

    ``devices`` is a non-empty list of names, :class:`Device` objects and dicts of
    Device's fields, or the string ``"auto"``: the devices :func:`discover` finds (a GPU
    with MIG enabled gives one device per MIG slice).

    Raises:
        ConfigError: not a list, empty, an entry of the wrong kind, a duplicate name; or
            ``"auto"`` on a machine where discovery finds no GPU (the message says so and
            shows how to describe devices instead).
    """
    if isinstance(devices, str):
        if devices == "auto":
            return _auto_devices()
        raise ConfigError(
            f"devices must be a list of device names or Device objects, got the string {devices!r}"
            " (or 'auto' to use the GPUs discovery finds)"
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
            unknown = sorted(set(d) - set(_FIELDS), key=str)
            if unknown or "name" not in d:
                raise ConfigError(
                    f"device {i}: a device dict needs 'name' and may have "
                    + ", ".join(repr(f) for f in _FIELDS[1:-1])
                    + f" and {_FIELDS[-1]!r}; got keys {sorted(d, key=str)}"
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


_FIELDS = tuple(f.name for f in dataclasses.fields(Device))

_AUTO_HELP = (
    "describe the devices instead, for example "
    "devices=[Device('gpu0', model='H100-SXM'), Device('gpu1', model='L4')] "
    "(a model from capsched.specs; or capacity=..., memory_gib=... directly), "
    "or devices=['cuda:0', 'cuda:1'] for devices of equal capacity"
)


def _auto_devices() -> tuple[Device, ...]:
    from .discovery import discover_with_reason

    found, reason = discover_with_reason()
    if not found:
        raise ConfigError(f"devices='auto': no GPU was found on this machine ({reason}); {_AUTO_HELP}")
    devices = tuple(d for g in found for d in g.to_devices())
    if not devices:
        raise ConfigError(
            "devices='auto': the GPU(s) found have MIG mode on but no visible MIG instance ("
            + ", ".join(f"{g.name} {g.model} {g.uuid}" for g in found)
            + f"); create MIG instances, or {_AUTO_HELP}"
        )
    return parse_devices(list(devices))


from .discovery import discover  # noqa: E402  (re-exported; discovery imports this module lazily)
