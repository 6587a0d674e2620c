"""Ray Serve integration: capsched ranks a deployment's replicas.

Ray Serve's custom request-router hook (alpha API; pinned by the ``ray`` extra,
``pip install "capsched[ray]"``) lets a deployment choose which replica serves each
request. This module plugs capsched's capacity-aware placement into it, thinly:

* On each replica, :class:`ReplicaStats` (with the :class:`CapacityReporter` mixin)
  reports through ``record_routing_stats`` what the replica can serve (``capacity`` or an
  accelerator ``model`` from capsched's spec table, optionally its clocks) and how busy it
  is (``utilization``, ``ongoing``, ``pressure`` from work Serve does not route).
* In every handle, :class:`CapschedRequestRouter` (a Ray ``RequestRouter``) turns the
  candidate replicas into capsched devices and asks capsched's placement which one it
  would give a request to, then which next, and so on: :func:`rank_replicas`. Ray then
  tries the replicas in that order and skips any that is full
  (``max_ongoing_requests``).

The ranking uses a throwaway :class:`capsched.Scheduler` with one device per replica:
capsched's public API has no "rank these devices" call, and re-implementing the rule
here would let the two drift apart. A replica's load is given to capsched as pressure
(``Scheduler.set_pressure``: the share of a device's capacity that is taken), so that
capsched's spare capacity of replica *i* is::

    capacity_i x (1 - min(0.999, pressure_i + max(utilization_i, ongoing_i / max_ongoing_i)))

and the placement rule of ``docs/placement.md`` (fit with margin, best score, else most
spare; exact ties broken at random) picks the replicas one after another. Only this
module imports Ray, and only when the router is asked for: the ranking and the
replica-side helper work without Ray. ``docs/ray.md`` describes the whole setup.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import numbers
import random
import statistics
import threading
import warnings
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable, Optional

import numpy as np

from ..devices import Device
from ..errors import CapschedError, ConfigError, InvalidArgumentError
from ..scheduler import Scheduler

__all__ = [
    "STATS_KEY",
    "MAX_CAPACITY",
    "MAX_ONGOING",
    "MAX_PRESSURE",
    "MIN_CAPACITY",
    "RAY_EXTRA_HINT",
    "TIE_JITTER",
    "CapacityReporter",
    "CapschedRequestRouter",
    "ReplicaCapacity",
    "ReplicaStats",
    "ReplicaView",
    "parse_replica_stats",
    "rank_replicas",
    "request_router_config",
]

#: The key of a replica's routing stats under which capsched's fields sit; a deployment
#: may report other stats next to it.
STATS_KEY = "capsched"
#: Highest pressure handed to capsched (its pressure must stay below 1): a replica this
#: loaded keeps 0.1 % of its capacity as spare, so full replicas still rank by capacity.
MAX_PRESSURE = 0.999
#: How to install what this module needs from Ray.
RAY_EXTRA_HINT = 'pip install "capsched[ray]"'

_FIELDS = ("capacity", "model", "clock_mhz", "max_clock_mhz", "utilization", "pressure", "ongoing", "error")
_DEVICE_FIELDS = ("capacity", "model", "clock_mhz", "max_clock_mhz")

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- parsing


@dataclasses.dataclass(frozen=True)
class ReplicaCapacity:
    """A replica's routing stats, validated.

    Attributes:
        device: the capsched device the replica stands for (its capacity, model, clocks).
        reported: whether the replica stated a ``capacity`` or ``model`` (otherwise the
            ranking assumes the mean of the others').
        utilization: the share of its capacity the replica measured as busy, in [0, 1],
            or ``None``.
        pressure: share of its capacity taken by work the router does not send, [0, 1).
        ongoing: requests in flight on the replica when it reported, or ``None``.
    """

    device: Device
    reported: bool
    utilization: Optional[float]
    pressure: float
    ongoing: Optional[int]


#: Bounds of a replica's effective capacity (only ratios matter; beyond these the
#: ratio of two replicas' capacities could over- or underflow in the ranking).
MIN_CAPACITY, MAX_CAPACITY = 1e-100, 1e100
#: Largest ``ongoing`` count a replica may report (exact as a float).
MAX_ONGOING = 2**53


def _short(value: object) -> str:
    r = repr(value)
    return r if len(r) <= 40 else f"{r[:20]}... ({len(r)} characters)"


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (OverflowError, ValueError, TypeError):  # an int beyond a float's range
        return False


def _number(name: str, key: str, value: object, lo: float, hi: float, hi_open: bool) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    x = math.nan
    if ok:
        try:
            x = float(value)  # type: ignore[arg-type]
        except (OverflowError, ValueError, TypeError):  # an int beyond a float's range
            ok = False
    ok = ok and math.isfinite(x) and lo <= x and (x < hi if hi_open else x <= hi)
    if not ok:
        bound = f"[{lo:g}, {hi:g})" if hi_open else f"[{lo:g}, {hi:g}]"
        raise ConfigError(f"replica {name!r}: routing stat {key!r} must be a number in {bound}, got {_short(value)}")
    return x


def _count(name: str, key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= int(value) <= MAX_ONGOING:
        raise ConfigError(
            f"replica {name!r}: routing stat {key!r} must be an integer in [0, 2**53], got {_short(value)}"
        )
    return int(value)


def parse_replica_stats(name: str, stats: Optional[Mapping[str, Any]]) -> ReplicaCapacity:
    """Validate a replica's routing stats (the whole dict ``record_routing_stats``
    returned; capsched reads ``stats["capsched"]`` and ignores the other keys).

    Missing or empty stats (a replica that has not reported yet) give an unreported
    device of capacity 1 and no load.

    Raises:
        ConfigError: the replica reported that it could not produce its stats
            (``stats["capsched"]["error"]``, set by :class:`CapacityReporter` when
            :meth:`ReplicaStats.routing_stats` raises), the stats are not a dict,
            ``stats["capsched"]`` is not a dict or has an unknown key, or a value is out of range (the effective capacity outside
            ``[MIN_CAPACITY, MAX_CAPACITY]``, ``ongoing`` above ``MAX_ONGOING``, a number
            too large for a float); the message names the replica, the key and the value.
    """
    if stats is None:
        stats = {}
    if not isinstance(stats, Mapping):
        raise ConfigError(f"replica {name!r}: routing stats must be a dict, got {stats!r}")
    fields = stats.get(STATS_KEY, {})
    if not isinstance(fields, Mapping):
        raise ConfigError(f"replica {name!r}: routing stat {STATS_KEY!r} must be a dict, got {fields!r}")
    unknown = sorted(str(k) for k in fields if k not in _FIELDS)
    if unknown:
        raise ConfigError(
            f"replica {name!r}: unknown routing stat(s) {', '.join(map(repr, unknown))} under {STATS_KEY!r}; "
            f"expected {', '.join(map(repr, _FIELDS))}"
        )
    error = fields.get("error")
    if error is not None:
        text = str(error)
        text = text if len(text) <= 300 else text[:300] + "..."
        raise ConfigError(f"replica {name!r}: its record_routing_stats failed: {text}")
    try:
        device = Device(name, **{k: fields[k] for k in _DEVICE_FIELDS if fields.get(k) is not None})
    except ConfigError as exc:
        raise ConfigError(f"replica {name!r}: routing stats: {exc}") from None
    eff = device.effective_capacity
    if not MIN_CAPACITY <= eff <= MAX_CAPACITY:
        raise ConfigError(
            f"replica {name!r}: routing stats: capacity {eff!r} (from capacity / model and clocks) is out of "
            f"range [{MIN_CAPACITY:g}, {MAX_CAPACITY:g}] (only ratios between replicas matter)"
        )
    util = fields.get("utilization")
    ongoing = fields.get("ongoing")
    return ReplicaCapacity(
        device=device,
        reported=fields.get("capacity") is not None or fields.get("model") is not None,
        utilization=None if util is None else _number(name, "utilization", util, 0.0, 1.0, False),
        pressure=_number(name, "pressure", fields.get("pressure", 0.0), 0.0, 1.0, True),
        ongoing=None if ongoing is None else _count(name, "ongoing", ongoing),
    )


# --------------------------------------------------------------------------- ranking


@dataclasses.dataclass(frozen=True)
class ReplicaView:
    """What the ranking knows of one replica.

    Attributes:
        name: the replica's name (for messages).
        stats: its routing stats as Ray delivered them (may be empty).
        ongoing: requests in flight on it as the router knows now (Ray's queue-length
            cache), or ``None`` when unknown; then the count the replica reported is used.
        max_ongoing: its ``max_ongoing_requests`` (>= 1).
    """

    name: str
    stats: Optional[Mapping[str, Any]] = None
    ongoing: Optional[int] = None
    max_ongoing: int = 1

    def __post_init__(self) -> None:
        m = self.max_ongoing
        if isinstance(m, bool) or not isinstance(m, numbers.Integral) or m < 1:
            raise InvalidArgumentError(f"replica {self.name!r}: max_ongoing must be an integer >= 1, got {m!r}")
        q = self.ongoing
        if q is not None and (isinstance(q, bool) or not isinstance(q, numbers.Integral) or q < 0):
            raise InvalidArgumentError(f"replica {self.name!r}: ongoing must be an integer >= 0 or None, got {q!r}")


def _load(view: ReplicaView, cap: ReplicaCapacity) -> float:
    """The share of a replica's capacity taken: pressure + max(observed, committed)."""
    ongoing = view.ongoing if view.ongoing is not None else cap.ongoing
    # (compared first: a huge count over a small max would overflow a float division)
    committed = 0.0 if ongoing is None else 1.0 if ongoing >= view.max_ongoing else ongoing / view.max_ongoing
    observed = 0.0 if cap.utilization is None else cap.utilization
    return min(MAX_PRESSURE, cap.pressure + max(observed, committed))


#: Ties between replicas are broken by adding up to this much to each one's pressure,
#: drawn at random per ranking: far below any real difference in load.
TIE_JITTER = 1e-6


class _Ranker:
    """Ranks replicas with one capsched Scheduler, kept while the replicas' devices stay
    the same (building one costs several times more than a ranking).

    Each ranking sets every device's pressure to its replica's load, submits one small
    request per device and steps at the same instant: with one batch of one request per
    device, the step hands the requests out one by one by the placement rule, so the
    order in which devices open batches is the ranking. The requests then complete at
    that instant too, so nothing stays in flight and no time passes for the utilization
    signals; the scheduler is rebuilt every ``REBUILD_AFTER`` rankings so that its record
    of ended requests stays small.
    """

    REBUILD_AFTER = 10_000

    def __init__(self) -> None:
        self._key: Optional[tuple[tuple[Any, ...], ...]] = None
        self._sched: Optional[Scheduler] = None
        self._uses = 0

    def rank(self, views: Sequence[ReplicaView], caps: Sequence[ReplicaCapacity], rng: random.Random) -> list[int]:
        n = len(views)
        if n == 0:
            return []
        known = [c.device.effective_capacity for c in caps if c.reported]
        default = statistics.fmean(known) if known else 1.0
        key = tuple(
            (c.device.capacity if c.reported else default, c.device.model, c.device.clock_mhz, c.device.max_clock_mhz)
            for c in caps
        )
        sched = self._sched
        if sched is None or key != self._key or self._uses >= self.REBUILD_AFTER:
            devices = [
                dataclasses.replace(c.device, name=f"r{i}", capacity=k[0], max_inflight_batches=1)
                for i, (c, k) in enumerate(zip(caps, key))
            ]
            sched = Scheduler(devices, policy="fcfs", max_batch_size=1, enable_dynamic_batching=False)
            self._sched, self._key, self._uses = sched, key, 0
        self._uses += 1
        for i in range(n):
            load = min(MAX_PRESSURE, _load(views[i], caps[i]) + TIE_JITTER * rng.random())
            sched.set_pressure(f"r{i}", load, now=0.0)
        ids = sched.submit_many(np.ones(n, dtype=np.int64), max_new_tokens=1, now=0.0)
        ranked = [int(b.device[1:]) for b in sched.step(now=0.0).batches]
        sched.complete_many(ids, now=0.0)
        if sorted(ranked) != list(range(n)):  # pragma: no cover - every device has room for one
            raise RuntimeError(f"capsched placed probes on {ranked!r}, expected every one of {n} replicas once")
        return ranked


def rank_replicas(replicas: Sequence[ReplicaView], *, rng: Optional[random.Random] = None) -> list[int]:
    """The replicas' indices, best first, by capsched's capacity-aware placement.

    Each replica becomes a capsched device (capacity, or the accelerator model's, scaled
    by its clocks; a replica that has not reported gets the mean of the reported
    capacities) whose pressure is its load (``MAX_PRESSURE`` at most; see the module
    docstring); capsched then places one small request after another, each on the
    device its placement rule picks among those without one: the order is the ranking.
    Ties are broken at random (``rng``; default a generator seeded from the ``random``
    module's) by a pressure jitter of at most ``TIE_JITTER``.

    Raises:
        ConfigError: a replica's routing stats are bad (see :func:`parse_replica_stats`).
    """
    caps = [parse_replica_stats(v.name, v.stats) for v in replicas]
    return _Ranker().rank(replicas, caps, rng if rng is not None else random.Random(random.getrandbits(64)))


# --------------------------------------------------------------------------- replica side


class ReplicaStats:
    """A replica's side: what it can serve and how busy it is, for the router.

    Create one in the deployment's ``__init__`` (as ``self.capsched`` when the class uses
    :class:`CapacityReporter`), wrap each request in :meth:`track`, and return
    :meth:`routing_stats` from ``record_routing_stats``.

    Args:
        capacity: the replica's relative serving capacity (> 0; only ratios between
            replicas matter), or ``None`` to take it from ``model``.
        model: an accelerator of capsched's spec table (``"H100-SXM"``, ``"L4"``; see
            ``capsched specs``) whose peak TFLOP/s is the capacity when ``capacity`` is
            not given.
        clock_mhz, max_clock_mhz: the clock the device runs at now and its maximum
            (capacity scales with their ratio), as for :class:`capsched.Device`.
        slots: requests the replica runs at once at full speed (>= 1); the measured
            utilization is the time-averaged share of slots in use.
        clock: seconds (default ``time.monotonic``); read once here, it must return a
            finite number.

    Raises:
        ConfigError: a bad value, named (also a capacity out of ``[MIN_CAPACITY,
            MAX_CAPACITY]`` or a clock that does not return a finite number).
    """

    def __init__(
        self,
        *,
        capacity: Optional[float] = None,
        model: Optional[str] = None,
        clock_mhz: Optional[float] = None,
        max_clock_mhz: Optional[float] = None,
        slots: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(slots, bool) or not isinstance(slots, numbers.Integral) or slots < 1:
            raise ConfigError(f"slots must be an integer >= 1, got {slots!r}")
        if not callable(clock):
            raise ConfigError(f"clock must be callable (returning seconds), got {clock!r}")
        self._fields: dict[str, Any] = {
            k: v
            for k, v in (("capacity", capacity), ("model", model), ("clock_mhz", clock_mhz), ("max_clock_mhz", max_clock_mhz))
            if v is not None
        }
        parse_replica_stats("this replica", {STATS_KEY: self._fields})  # validate now, not at the router
        self._slots: int = int(slots)
        self._clock: Callable[[], float] = clock
        self._lock: threading.Lock = threading.Lock()  # sync deployment methods run in threads
        self._pressure: float = 0.0
        self._ongoing: int = 0
        self._tracked: bool = False
        first = clock()
        if isinstance(first, bool) or not isinstance(first, numbers.Real) or not _finite(first):
            raise ConfigError(f"clock must return seconds as a finite number, got {_short(first)} from {clock!r}")
        self._last: float = float(first)
        self._window_start: float = self._last
        self._busy: float = 0.0  # integral of min(1, ongoing / slots) dt over the window

    def _advance(self) -> float:
        now = self._clock()
        if now > self._last:
            self._busy += min(1.0, self._ongoing / self._slots) * (now - self._last)
            self._last = now
        return now

    @property
    def ongoing(self) -> int:
        """Requests inside :meth:`track` now."""
        return self._ongoing

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Count a request as in flight while the block runs (also in async code)."""
        with self._lock:
            self._advance()
            self._ongoing += 1
            self._tracked = True
        try:
            yield
        finally:
            with self._lock:
                self._advance()
                self._ongoing -= 1

    def set_pressure(self, pressure: float) -> None:
        """Share of the replica's capacity taken by work the router does not send
        (another process on the GPU, throttling not expressed in clocks), in [0, 1)."""
        self._pressure = _number("this replica", "pressure", pressure, 0.0, 1.0, True)

    def set_clock(self, clock_mhz: float, max_clock_mhz: Optional[float] = None) -> None:
        """The clock the device can run at now (and its max, if not known already)."""
        fields = dict(self._fields, clock_mhz=clock_mhz)
        if max_clock_mhz is not None:
            fields["max_clock_mhz"] = max_clock_mhz
        parse_replica_stats("this replica", {STATS_KEY: fields})
        self._fields = fields

    def utilization(self) -> float:
        """The time-averaged share of slots in use since the previous call (or since
        creation), in [0, 1]; starts a new window."""
        with self._lock:
            now = self._advance()
            span = now - self._window_start
            util = self._busy / span if span > 0 else min(1.0, self._ongoing / self._slots)
            self._window_start, self._busy = now, 0.0
        return min(1.0, max(0.0, util))

    def routing_stats(self) -> dict[str, Any]:
        """The routing stats to return from ``record_routing_stats``:
        ``{"capsched": {capacity/model/clocks, "pressure", and once :meth:`track` has
        been used, "utilization" (a new window) and "ongoing"}}``."""
        fields = dict(self._fields, pressure=self._pressure)
        if self._tracked:
            fields["utilization"] = self.utilization()
            fields["ongoing"] = self._ongoing
        return {STATS_KEY: fields}


class CapacityReporter:
    """Mixin for a Ray Serve deployment class: defines ``record_routing_stats`` from
    ``self.capsched``, a :class:`ReplicaStats` the class sets in ``__init__``."""

    capsched: ReplicaStats

    def record_routing_stats(self) -> dict[str, Any]:
        """Ray Serve calls this every ``request_routing_stats_period_s``.

        If :meth:`ReplicaStats.routing_stats` raises, the failure is reported instead,
        as ``{"capsched": {"error": "<exception>"}}``, so that the router ranks this
        replica last: Ray would log the exception and keep handing the router the last
        stats it had (none, before the first report: a replica counted as not reported
        yet, at the mean capacity). A missing ``self.capsched`` still raises
        :class:`ConfigError` (a setup error, found on the first call).
        """
        stats = getattr(self, "capsched", None)
        if not isinstance(stats, ReplicaStats):
            raise ConfigError(
                f"{type(self).__name__} uses CapacityReporter but self.capsched is {stats!r}: "
                "set self.capsched = ReplicaStats(...) in __init__"
            )
        try:
            return stats.routing_stats()
        except Exception as exc:  # noqa: BLE001 - reported to the router, which ranks the replica last
            return {STATS_KEY: {"error": f"{type(exc).__name__}: {exc}"}}


# --------------------------------------------------------------------------- Ray side


def _import_ray() -> Any:
    try:
        # Ray's own import raises pydantic DeprecationWarnings (Ray 2.60); they are Ray's
        # business, not the caller's (and an error under warnings-as-errors).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import ray.serve.request_router as rr
    except ImportError as exc:
        raise ImportError(
            f"capsched's Ray Serve router needs Ray Serve, which is not installed: {RAY_EXTRA_HINT}. "
            f"Original error: {exc}"
        ) from exc
    return rr


_router_class: Optional[type] = None
_router_lock = threading.Lock()


#: Consecutive valid reads of a failing replica's stats after which the router ends its
#: failure streak (logs "valid again"; a later failure warns anew). Ranking does not wait:
#: each read ranks the replica by that read.
_RECOVERY_READS = 3


def _build_router_class() -> type:
    _import_ray()  # the clear ImportError first
    from ray.serve.request_router import FIFOMixin, LocalityMixin, MultiplexMixin, RequestRouter

    # (Ray is Any to mypy here: pyproject's [tool.mypy] skips it so that the result does
    # not depend on whether the extra is installed.)
    class CapschedRequestRouter(FIFOMixin, LocalityMixin, MultiplexMixin, RequestRouter):  # type: ignore[misc]
        """Ray Serve request router that ranks replicas with capsched's placement.

        Candidates are narrowed as Ray's default router does (multiplexed model, then
        locality), ranked by :func:`rank_replicas` with Ray's live queue lengths, and
        returned one replica per rank: Ray takes the first that is not full. Replicas
        whose routing stats are bad, or raise when read, are ranked last (after those
        not reported yet), so they still serve; each is logged once per failure streak,
        and ranked normally again at its first valid read. A streak ends (an info line
        "valid again") only after ``_RECOVERY_READS`` consecutive valid reads, so a
        replica flapping between failing and valid stats logs once, not on every flap.
        ``request_router_kwargs``: ``seed`` (int) for the tie-breaks.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._capsched_rng = random.Random()
            self._capsched_warned: set[str] = set()
            # replica name -> (the problem that started its current failure streak, the
            # valid reads since its last failing one: the streak ends at _RECOVERY_READS)
            self._capsched_failing: dict[str, tuple[str, int]] = {}
            self._capsched_ranker = _Ranker()
            # replica name -> (its capsched stats as delivered, parsed): they change once a period
            self._capsched_parsed: dict[str, tuple[Any, ReplicaCapacity]] = {}

        def initialize_state(self, seed: Optional[int] = None, **kwargs: Any) -> None:
            """Ray passes ``request_router_kwargs`` here."""
            if kwargs:
                raise ConfigError(f"CapschedRequestRouter: unknown request_router_kwargs {sorted(kwargs)!r}; expected 'seed'")
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
                raise ConfigError(f"CapschedRequestRouter: seed must be an int, got {seed!r}")
            self._capsched_rng = random.Random(seed)

        def rank(self, replicas: Sequence[Any]) -> list[list[Any]]:
            """Ranks of replicas (``RunningReplica``), best first, one replica each; any
            whose stats are bad or raise together in a last rank."""
            cache = self.replica_queue_len_cache
            good: list[Any] = []
            views: list[ReplicaView] = []
            caps: list[ReplicaCapacity] = []
            bad: list[Any] = []
            parsed = self._capsched_parsed
            failing = self._capsched_failing
            for r in replicas:
                name = str(r.replica_id)
                try:
                    view = ReplicaView(name, r.routing_stats, cache.get(r.replica_id), max(1, r.max_ongoing_requests))
                    fields = view.stats.get(STATS_KEY) if isinstance(view.stats, Mapping) else None
                    hit = parsed.get(name)
                    if hit is not None and fields is not None and hit[0] == fields:
                        cap = hit[1]
                    else:
                        cap = parse_replica_stats(name, view.stats)
                        if isinstance(fields, Mapping):
                            parsed[name] = (dict(fields), cap)
                    _load(view, cap)  # a load that cannot be computed ranks the replica last too
                except Exception as exc:  # noqa: BLE001 - never out of the router: the replica still serves
                    # Not the mean of the others, as a replica not reported yet: last. Logged
                    # when its failure streak starts, not on every request (nor on every
                    # flap: a streak ends only after _RECOVERY_READS valid reads in a row).
                    streak = failing.get(name)
                    if streak is None:
                        msg = str(exc) if isinstance(exc, CapschedError) else f"replica {name!r}: bad routing stats: {exc!r}"
                        failing[name] = (msg, 0)
                        _log.warning("capsched router: %s; ranking this replica last until its stats are valid", msg)
                    elif streak[1]:
                        failing[name] = (streak[0], 0)
                    bad.append(r)
                    continue
                streak = failing.get(name)
                if streak is not None:  # ranked normally from this read on; the streak ends later
                    if streak[1] + 1 >= _RECOVERY_READS:
                        del failing[name]
                        _log.info("capsched router: replica %r: routing stats valid again (%d reads in a row); "
                                  "ranked normally", name, _RECOVERY_READS)
                    else:
                        failing[name] = (streak[0], streak[1] + 1)
                good.append(r)
                views.append(view)
                caps.append(cap)
            if max(len(parsed), len(failing)) > 2 * len(replicas) + 16:  # forget replicas that are gone
                live = {str(r.replica_id) for r in replicas} | {str(k) for k in (self.curr_replicas or {})}
                for name in [k for k in parsed if k not in live]:
                    del parsed[name]
                for name in [k for k in failing if k not in live]:
                    del failing[name]
            try:
                order = self._capsched_ranker.rank(views, caps, self._capsched_rng)
            except Exception as exc:  # noqa: BLE001 - the router must keep routing
                self._capsched_warn(f"ranking failed ({exc!r}); keeping the replicas' order")
                self._capsched_ranker = _Ranker()  # do not keep a scheduler in an unknown state
                order = list(range(len(good)))
            ranks = [[good[i]] for i in order]
            if bad:
                ranks.append(bad)
            return ranks

        def _capsched_warn(self, msg: str) -> None:
            if msg not in self._capsched_warned:  # once per distinct problem
                if len(self._capsched_warned) > 1000:
                    self._capsched_warned.clear()
                self._capsched_warned.add(msg)
                _log.warning("capsched router: %s", msg)

        async def choose_replicas(
            self, candidate_replicas: list[Any], pending_request: Optional[Any] = None
        ) -> list[list[Any]]:
            """One routing attempt: the candidates ranked by capsched."""
            if pending_request is not None and pending_request.metadata.multiplexed_model_id:
                ids = self.apply_multiplex_routing(pending_request=pending_request)
            else:
                ids = self.apply_locality_routing(pending_request=pending_request)
            return self.rank([r for r in candidate_replicas if r.replica_id in ids])

    CapschedRequestRouter.__module__ = __name__  # so that pickle finds it by reference
    CapschedRequestRouter.__qualname__ = "CapschedRequestRouter"
    return CapschedRequestRouter


def _router() -> type:
    global _router_class
    with _router_lock:
        if _router_class is None:
            _router_class = _build_router_class()
        return _router_class


#: The ``RequestRouterConfig`` fields that :func:`request_router_config` passes on as
#: given (it sets the router's class, kwargs and stats period itself).
_ROUTER_CONFIG_FIELDS = ("request_routing_stats_timeout_s", "initial_backoff_s", "backoff_multiplier",
                         "max_backoff_s")


def request_router_config(*, seed: Optional[int] = None, stats_period_s: float = 1.0, **kwargs: Any) -> Any:
    """A ``ray.serve.config.RequestRouterConfig`` that routes with
    :class:`CapschedRequestRouter`; pass it as ``@serve.deployment(request_router_config=...)``.

    Args:
        seed: seed of the router's tie-breaks (``None``: random).
        stats_period_s: how often Serve asks each replica for its routing stats (Ray's
            default is 10 s; capacity rarely changes, but the measured utilization is only
            as fresh as this).
        kwargs: further ``RequestRouterConfig`` fields: ``request_routing_stats_timeout_s``,
            ``initial_backoff_s``, ``backoff_multiplier``, ``max_backoff_s`` (each a
            finite number > 0).

    Raises:
        ConfigError: ``seed`` is not an int or None, a number is not finite and > 0, or
            a keyword is none of the above (the message names it); checked before Ray
            is imported.
        ImportError: Ray Serve is not installed (the message says how to install it).
    """
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(f"request_router_config: seed must be an int or None, got {seed!r}")
    unknown = sorted(k for k in kwargs if k not in _ROUTER_CONFIG_FIELDS)
    if unknown:
        raise ConfigError(f"request_router_config: unknown field(s) {unknown!r}; expected 'seed', "
                          f"'stats_period_s' or one of {list(_ROUTER_CONFIG_FIELDS)!r}")
    for name, value in (("stats_period_s", stats_period_s), *kwargs.items()):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (_finite(value) and float(value) > 0):
            raise ConfigError(f"request_router_config: {name} must be a finite number > 0, got {_short(value)}")
    _import_ray()
    from ray.serve.config import RequestRouterConfig

    fields: dict[str, Any] = dict(
        request_router_class=_router(),
        request_router_kwargs={} if seed is None else {"seed": seed},
        request_routing_stats_period_s=stats_period_s,
    )
    fields.update(kwargs)
    # Ray annotates RequestRouterConfig(**kwargs: dict[str, Any]); the fields are plain values.
    return RequestRouterConfig(**fields)


def __getattr__(name: str) -> Any:
    if name == "CapschedRequestRouter":  # built on first use so that Ray is imported lazily
        return _router()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
