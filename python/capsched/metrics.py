"""Prometheus metrics for a :class:`capsched.Scheduler` (optional extra ``metrics``).

Install with ``pip install "capsched[metrics]"`` (it needs ``prometheus-client``).

:class:`SchedulerCollector` is a custom collector: it reads :meth:`Scheduler.stats` at
scrape time (one call, one lock of the core) and turns every numeric key into a metric,
so keys the core adds later are exported without a change here. The naming rule
(``docs/operations.md`` lists every metric of the current core):

Scheduler-wide keys (``stats()[key]``):

* the queue gauges in :data:`SCHEDULER_GAUGES` (``waiting``, ``queued``, ``in_flight``,
  ``retrying``, ``max_batch_size``) -> gauge ``<prefix>_<key>``;
* any other integer -> counter ``<prefix>_<key>_total`` (``accepted``, ``completed``,
  ``failed``, ``expired``, ``cancelled``, ``retried``, ``dispatched``, ``batches``,
  ``placed_fitting``, ``placed_fallback``, ``misfits``, ``migrated``, ``readmitted``,
  ``held``, ``trimmed``, ``preempted``, ``deferred``, ``breaker_trips``, ...);
* any other real number -> gauge ``<prefix>_<key>``;
* ``now`` -> gauge ``<prefix>_clock_seconds`` (absent before the first call with a time);
  ``conservation_ok`` -> gauge ``<prefix>_conservation_ok`` (1 or 0); ``policy`` and
  ``dynamic_batching`` -> info ``<prefix>_scheduler_info``.

Per-device keys (``stats()['devices'][i][key]``), each labelled ``device=<name>``:

* integers named ``dispatched_*``, ``completed_*``, ``preempted_*``, ``failed_*``,
  ``expired_*``, ``migrated_*``, ``retried_*`` or ``*_trips`` -> counter
  ``<prefix>_device_<key>_total``;
* any other real number -> gauge ``<prefix>_device_<key>`` (``capacity``,
  ``capacity_orig``, ``clock_scale``, ``pressure``, ``util_avg``, ``placed_util``,
  ``dl_bw``, ``kv_budget`` (unlimited = ``+Inf``), ``kv_used``, ``inflight_batches``,
  ``inflight_requests``, ``batch_limit``, ``max_inflight_batches``,
  ``consecutive_failures``, ``fail_rate``, ``service_samples``, ...);
* a tuple or list of numbers -> gauge ``<prefix>_device_<key>`` with a further label
  ``index`` (0, 1, ...);
* a string -> state gauge ``<prefix>_device_<key>_state`` with a further label
  ``state``: 1 for the current state, 0 for the others (for ``breaker``: ``closed``,
  ``open``, ``half_open``; for a key not known here, every value seen so far).

Booleans are exported as 0/1 gauges wherever they appear. ``name`` is the label, not a
metric. Histograms of queue wait, end-to-end latency and batch size cannot come from
``stats()`` (it holds no per-request times): :class:`RequestTimer` records them from the
calls a server makes.

>>> from prometheus_client import CollectorRegistry, generate_latest   # doctest: +SKIP
>>> registry = CollectorRegistry()                                      # doctest: +SKIP
>>> register(scheduler, registry)                                       # doctest: +SKIP
>>> print(generate_latest(registry).decode())                           # doctest: +SKIP
"""

from __future__ import annotations

import math
import numbers
import re
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Optional, Protocol, Union

from .errors import ConfigError

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Histogram
    from prometheus_client import start_http_server as _prom_start_http_server
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        InfoMetricFamily,
        Metric,
    )
except ImportError as _exc:  # pragma: no cover - exercised by a test that hides the module
    raise ImportError(
        "capsched.metrics needs prometheus-client, which is not installed: "
        'pip install "capsched[metrics]" (or pip install prometheus-client). '
        f"Original error: {_exc}"
    ) from _exc

__all__ = [
    "SchedulerCollector",
    "RequestTimer",
    "register",
    "start_http_server",
    "SCHEDULER_GAUGES",
    "DEVICE_STATES",
    "StatsSource",
]

#: Scheduler-wide integer keys that are levels (gauges), not running totals.
SCHEDULER_GAUGES = frozenset(
    {"waiting", "queued", "in_flight", "retrying", "max_batch_size", "queued_deadline", "queued_strict",
     "queued_normal", "queued_background"}
)

#: The states of per-device string keys known in advance (each exported, 0 or 1, at
#: every scrape, so that a dashboard sees an ``open`` series at 0 before the first trip).
DEVICE_STATES: Mapping[str, tuple[str, ...]] = {"breaker": ("closed", "open", "half_open")}

#: Per-device integer keys matching this are counters; other numbers are gauges.
_DEVICE_COUNTER = re.compile(r"^(dispatched|completed|preempted|failed|expired|migrated|retried)_|_trips$")

#: Scheduler-wide keys handled specially (not by the generic rule).
_SPECIAL = frozenset({"devices", "now", "conservation_ok", "policy", "dynamic_batching"})

_DOC = {
    "accepted": "Requests accepted by submit",
    "completed": "Requests that completed",
    "failed": "Requests that ended failed (server failures, dependency failures, exhausted retries)",
    "expired": "Requests that passed their deadline before being dispatched",
    "cancelled": "Requests cancelled",
    "retried": "Retryable failures that were queued again after a backoff",
    "dispatched": "Requests dispatched to a device (retries and re-dispatches included)",
    "batches": "Batches dispatched",
    "placed_fitting": "Placements on a device the request fitted",
    "placed_fallback": "Placements on the device with the most spare capacity when none fitted",
    "misfits": "Requests found not to fit their device after its capacity dropped",
    "migrated": "In-flight requests moved to a bigger device",
    "readmitted": "Queued deadline-class requests whose reserved bandwidth moved to another device",
    "held": "Batches held back to fill (dynamic batching; each step counts)",
    "trimmed": "Requests put back to cut a batch to a preferred size",
    "preempted": "Running requests evicted for more urgent work (continuous mode)",
    "deferred": "Placements passed over because only devices too slow for the deadline had room (each step counts)",
    "breaker_trips": "Times a device's circuit breaker opened",
    "waiting": "Requests waiting on their dependencies",
    "queued": "Requests ready and queued",
    "in_flight": "Requests dispatched and not yet ended",
    "retrying": "Requests waiting out a retry backoff",
    "queued_deadline": "Queued deadline-class requests",
    "queued_strict": "Queued strict-class requests",
    "queued_normal": "Queued normal-class requests",
    "queued_background": "Queued background-class requests",
    "max_batch_size": "Configured most requests per batch",
    "capacity": "Usable capacity (strongest device = 1024, after clock and pressure)",
    "capacity_orig": "Capacity before clock scaling and pressure",
    "clock_scale": "Current clock over max clock",
    "pressure": "Share of capacity taken by foreign work",
    "util_avg": "PELT utilization (capacity units)",
    "placed_util": "Sum of the in-flight requests' utilization",
    "dl_bw": "Bandwidth reserved by admitted deadline-class requests",
    "kv_budget": "KV-cache budget in tokens (+Inf: unlimited)",
    "kv_used": "KV-cache tokens held by in-flight requests",
    "inflight_batches": "Batches in flight",
    "inflight_requests": "Requests in flight",
    "batch_limit": "Current batch size limit (adapted to latency)",
    "max_inflight_batches": "Most batches in flight at once",
    "dispatched_requests": "Requests dispatched to the device",
    "dispatched_batches": "Batches dispatched to the device",
    "completed_requests": "Requests completed on the device",
    "preempted_requests": "Requests evicted from the device",
    "consecutive_failures": "Consecutive failures (circuit breaker)",
    "fail_rate": "Decayed failure rate (degraded-device capacity scaling)",
    "service_samples": "Completions the service-time model learned from",
    "service_multipliers": "Learned service-time multipliers (prefill, decode step, decode per sequence)",
    "breaker": "Circuit breaker state (1 = current)",
}


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _name_ok(name: str) -> bool:
    return re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name) is not None


class SchedulerCollector:
    """A Prometheus collector reading ``scheduler.stats()`` at each scrape.

    Args:
        scheduler: the :class:`capsched.Scheduler` (anything with a ``stats()`` of the
            same shape).
        prefix: metric name prefix (default ``"capsched"``).
        labels: constant labels added to every metric, e.g. ``{"scheduler": "east"}``.

    Register it with :func:`register` (or ``registry.register(collector)``). Several
    schedulers in one registry go into one collector (:meth:`add`, which
    :func:`register` calls when the registry already holds a collector of the same
    prefix), each with its own values of the same label names: a scrape then has each
    metric family once, with every scheduler's samples (the text format allows a family
    name only once, so two collectors of the same names would make a scrape Prometheus
    refuses).
    """

    def __init__(
        self, scheduler: StatsSource, prefix: str = "capsched", labels: Optional[Mapping[str, str]] = None
    ) -> None:
        if not isinstance(prefix, str) or not _name_ok(prefix):
            raise ConfigError(f"prefix must be a Prometheus metric name prefix ([a-zA-Z_][a-zA-Z0-9_]*), got {prefix!r}")
        labels = _check_labels(labels)
        _check_scheduler(scheduler)
        self._prefix = prefix
        self._members: list[tuple[Any, dict[str, str]]] = [(scheduler, labels)]
        self._seen_states: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    @property
    def prefix(self) -> str:
        """The metric name prefix."""
        return self._prefix

    def _drop(self, scheduler: Any) -> bool:
        """Stop scraping ``scheduler`` (undoes a failed start_http_server); whether any
        scheduler is left."""
        with self._lock:
            self._members = [m for m in self._members if m[0] is not scheduler]
            return bool(self._members)

    def add(self, scheduler: Any, labels: Mapping[str, str]) -> None:
        """Scrape ``scheduler`` too, its samples labelled ``labels``.

        Raises:
            ConfigError: ``labels`` do not have the same names as those of the schedulers
                already here, or the same values as one of them, or the scheduler is
                already here.
            TypeError: ``scheduler`` has no ``stats()``.
        """
        labels = _check_labels(labels)
        _check_scheduler(scheduler)
        with self._lock:
            names = sorted(self._members[0][1])
            if sorted(labels) != names:
                raise ConfigError(
                    f"labels {labels!r}: every scheduler of one registry and prefix needs the same label names "
                    f"({names or 'none'}, as the first one registered) with its own values"
                )
            for other, other_labels in self._members:
                if other is scheduler:
                    raise ConfigError(f"this scheduler is already registered (labels {other_labels!r})")
                if other_labels == labels:
                    raise ConfigError(
                        f"labels {labels!r} are already those of another registered scheduler: give each "
                        "scheduler of one registry its own label values, e.g. labels={'scheduler': 'east'}"
                    )
            self._members.append((scheduler, labels))

    # The registry calls describe() when the collector is registered, to refuse a second
    # collector with the same metric names (which would give a scrape duplicate
    # families). The names come from stats(), so describe() is one collect().
    def describe(self) -> Iterable[Metric]:
        """The metric families of one ``stats()`` call (their names are what the
        registry checks for clashes when the collector is registered)."""
        return list(self.collect())

    def _doc(self, key: str, device: bool = False) -> str:
        d = _DOC.get(key)
        return d if d is not None else f"{'device ' if device else ''}stats()[{key!r}]"

    def collect(self) -> Iterator[Metric]:
        """The metrics of one ``stats()`` call of each scheduler (the registry calls it
        at each scrape), one family per name."""
        with self._lock:
            members = list(self._members)
        merged: dict[str, Metric] = {}
        for scheduler, labels in members:
            for m in self._collect_one(scheduler, labels):
                first = merged.get(m.name)
                if first is None:
                    merged[m.name] = m
                else:
                    first.samples.extend(m.samples)
        yield from merged.values()

    def _collect_one(self, scheduler: Any, labels: Mapping[str, str]) -> Iterator[Metric]:
        s = scheduler.stats()
        p = self._prefix
        cl = list(labels)
        cv = list(labels.values())
        m: Metric  # each assignment below narrows it to the family it makes

        # -- scheduler-wide
        for key in sorted(s):
            if key in _SPECIAL or not _name_ok(key):
                continue
            v = s[key]
            if isinstance(v, bool):
                m = GaugeMetricFamily(f"{p}_{key}", self._doc(key), labels=cl)
                m.add_metric(cv, 1.0 if v else 0.0)
            elif _is_int(v) and key not in SCHEDULER_GAUGES:
                m = CounterMetricFamily(f"{p}_{key}", self._doc(key), labels=cl)
                m.add_metric(cv, float(v))
            elif _is_real(v):
                m = GaugeMetricFamily(f"{p}_{key}", self._doc(key), labels=cl)
                m.add_metric(cv, float(v))
            else:
                continue
            yield m
        now = s.get("now")
        if _is_real(now) and math.isfinite(now):
            m = GaugeMetricFamily(f"{p}_clock_seconds", "Latest time the scheduler has seen (its clock)", labels=cl)
            m.add_metric(cv, float(now))
            yield m
        if "conservation_ok" in s:
            m = GaugeMetricFamily(
                f"{p}_conservation_ok", "1 if accepted = ended + live (every request accounted for)", labels=cl
            )
            m.add_metric(cv, 1.0 if s["conservation_ok"] else 0.0)
            yield m
        info = {k: str(s[k]) for k in ("policy", "dynamic_batching") if k in s}
        if info:
            m = InfoMetricFamily(f"{p}_scheduler", "The scheduler's policy and batching mode", labels=cl)
            m.add_metric(cv, info)
            yield m

        # -- per device
        devices = s.get("devices") or []
        families: dict[str, Union[CounterMetricFamily, GaugeMetricFamily]] = {}
        order: list[str] = []

        def family(
            name: str, kind: str, doc: str, extra: tuple[str, ...] = ()
        ) -> Union[CounterMetricFamily, GaugeMetricFamily]:
            m = families.get(name)
            if m is None:
                cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                m = families[name] = cls(name, doc, labels=cl + ["device", *extra])
                order.append(name)
            return m

        for i, d in enumerate(devices):
            dev = str(d.get("name", i))
            for key in sorted(d):
                if key == "name" or not _name_ok(key):
                    continue
                v = d[key]
                if isinstance(v, bool):
                    family(f"{p}_device_{key}", "gauge", self._doc(key, True)).add_metric(cv + [dev], 1.0 if v else 0.0)
                elif _is_int(v) and _DEVICE_COUNTER.search(key):
                    family(f"{p}_device_{key}", "counter", self._doc(key, True)).add_metric(cv + [dev], float(v))
                elif _is_real(v):
                    x = float(v)
                    if key == "kv_budget" and x < 0:
                        x = math.inf  # -1: unlimited
                    family(f"{p}_device_{key}", "gauge", self._doc(key, True)).add_metric(cv + [dev], x)
                elif isinstance(v, (tuple, list)) and v and all(_is_real(x) for x in v):
                    m = family(f"{p}_device_{key}", "gauge", self._doc(key, True), ("index",))
                    for j, x in enumerate(v):
                        m.add_metric(cv + [dev, str(j)], float(x))
                elif isinstance(v, str):
                    with self._lock:
                        seen = self._seen_states.setdefault(key, set(DEVICE_STATES.get(key, ())))
                        seen.add(v)
                        states = sorted(seen)
                    m = family(f"{p}_device_{key}_state", "gauge", self._doc(key, True), ("state",))
                    for st in states:
                        m.add_metric(cv + [dev, st], 1.0 if st == v else 0.0)
        for name in order:
            yield families[name]


# Label names capsched's metrics use themselves (per-device samples, state gauges, the
# scheduler_info metric): a constant label of one of these names would be overwritten.
_OWN_LABELS = ("device", "state", "index", "policy", "dynamic_batching")


def _check_labels(labels: Optional[Mapping[str, str]]) -> dict[str, str]:
    if labels is not None and not isinstance(labels, Mapping):
        raise ConfigError(f"labels must be a mapping of label names to str values, got {type(labels).__name__}")
    out = dict(labels or {})
    for k, v in out.items():
        if not isinstance(k, str) or not _name_ok(k) or k.startswith("__"):
            raise ConfigError(f"bad constant label name {k!r}")
        if k in _OWN_LABELS:  # (the info metric's own labels would overwrite it)
            raise ConfigError(f"constant label name {k!r} is one of capsched's own labels ({', '.join(_OWN_LABELS)})")
        if not isinstance(v, str):
            raise ConfigError(f"constant label {k!r} must have a str value, got {v!r}")
    return out


class StatsSource(Protocol):
    """What the collector reads: a :class:`capsched.Scheduler`, or anything with its
    ``stats()``."""

    def stats(self) -> Mapping[str, Any]:
        """The counters and gauges, as :meth:`capsched.Scheduler.stats` gives them."""
        ...


def _check_scheduler(scheduler: Any) -> None:
    if not callable(getattr(scheduler, "stats", None)):
        raise TypeError(f"scheduler must have a stats() method, got {type(scheduler).__name__}")


# The collector register() made for each (registry, prefix), so that a second scheduler
# joins it instead of clashing with it. Weak: a registry that is dropped drops its entry.
_REGISTERED: "weakref.WeakKeyDictionary[Any, dict[str, SchedulerCollector]]" = weakref.WeakKeyDictionary()
_REGISTERED_LOCK = threading.Lock()


def _still_registered(registry: Any, c: SchedulerCollector) -> bool:
    # (prometheus-client keeps its collectors in a private dict; without it, assume so)
    held = getattr(registry, "_collector_to_names", None)
    return True if held is None else c in held


def register(
    scheduler: StatsSource,
    registry: Optional[CollectorRegistry] = None,
    *,
    prefix: str = "capsched",
    labels: Optional[Mapping[str, str]] = None,
) -> SchedulerCollector:
    """Register ``scheduler``'s metrics in ``registry`` (default: prometheus-client's
    global ``REGISTRY``); returns its :class:`SchedulerCollector` (``registry.unregister(c)``
    removes it, with every scheduler in it).

    A second scheduler registered in the same registry with the same prefix joins the
    first one's collector (:meth:`SchedulerCollector.add`): give each the same label
    names with its own values, e.g. ``labels={"scheduler": "east"}`` and ``{"scheduler":
    "west"}``.

    Raises:
        ConfigError: a bad ``prefix`` or ``labels``; the scheduler is already registered
            there; its labels clash with those already registered (other names, or
            the same values); or the registry holds other metrics of these names.
    """
    reg = REGISTRY if registry is None else registry
    with _REGISTERED_LOCK:
        try:
            by_prefix = _REGISTERED.setdefault(reg, {})
        except TypeError:  # (a registry that cannot be weakly referenced: no joining)
            by_prefix = {}
        first = by_prefix.get(prefix)
        if first is not None and _still_registered(reg, first):
            first.add(scheduler, labels or {})  # (add checks the labels and the scheduler)
            return first
        c = SchedulerCollector(scheduler, prefix=prefix, labels=labels)
        try:
            reg.register(c)
        except ValueError as exc:  # prometheus-client: "Duplicated timeseries in CollectorRegistry: {...}"
            names = sorted(re.findall(r"'([^']+)'", str(exc)))
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise ConfigError(
                f"cannot register the scheduler's metrics: the registry already holds metrics of these names "
                f"({shown or exc}); use another prefix= or registry"
            ) from exc
        by_prefix[prefix] = c
    return c


def start_http_server(
    scheduler: StatsSource,
    port: int,
    addr: str = "127.0.0.1",
    *,
    registry: Optional[CollectorRegistry] = None,
    prefix: str = "capsched",
) -> Any:
    """Serve ``/metrics`` for ``scheduler`` on ``addr:port`` from a daemon thread.

    Uses a fresh registry unless one is given (so the process's default collectors are
    not mixed in). Binds to localhost by default; pass ``addr="0.0.0.0"`` to expose it.
    Returns what ``prometheus_client.start_http_server`` returns (``(server, thread)``
    in recent versions; ``server.shutdown()`` stops it).

    Raises:
        ConfigError: ``port`` is not an integer in 0..65535, ``addr`` not a non-empty
            str, or as :func:`register`.
        OSError: the address cannot be bound (in use, say); the scheduler is then not
            left registered, so the call can be retried.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"port must be an integer in 0..65535, got {port!r}")
    if not isinstance(addr, str) or not addr:
        raise ConfigError(f"addr must be a non-empty host name or address, got {addr!r}")
    reg = CollectorRegistry() if registry is None else registry
    c = register(scheduler, reg, prefix=prefix)
    try:
        return _prom_start_http_server(port, addr=addr, registry=reg)
    except BaseException:
        if not c._drop(scheduler):  # (it was the only one: the collector goes too)
            with _REGISTERED_LOCK:
                reg.unregister(c)
                by_prefix = _REGISTERED.get(reg)
                if by_prefix is not None and by_prefix.get(prefix) is c:
                    del by_prefix[prefix]
        raise


#: Histogram buckets (seconds) for queue wait and latency: 1 ms .. ~17 min.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 1000)
#: Histogram buckets for batch sizes.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class RequestTimer:
    """Histograms of queue wait, end-to-end latency and batch size, fed by the server.

    ``stats()`` holds counters and levels only; a server that wants distributions calls
    this next to the scheduler::

        timer = RequestTimer(registry)
        rid = scheduler.submit(req, now=t); timer.submitted(rid, t)
        res = scheduler.step(t);            timer.stepped(res)
        scheduler.complete(rid, t);         timer.ended(rid, t)

    Metrics: ``<prefix>_queue_wait_seconds`` (submit to first dispatch),
    ``<prefix>_latency_seconds`` (submit to completion, completed requests only) and
    ``<prefix>_batch_size`` (requests per dispatched batch). It keeps one entry per live
    request; ``ended`` (called for completed, failed, cancelled) and ``stepped`` (for
    expired and dependency-failed ids) drop it. Thread-safe.
    """

    def __init__(self, registry: Optional[CollectorRegistry] = None, *, prefix: str = "capsched") -> None:
        if not isinstance(prefix, str) or not _name_ok(prefix):
            raise ConfigError(f"prefix must be a Prometheus metric name prefix ([a-zA-Z_][a-zA-Z0-9_]*), got {prefix!r}")
        reg = REGISTRY if registry is None else registry
        try:
            self._make(reg, prefix)
        except ValueError as exc:  # prometheus-client: "Duplicated timeseries in CollectorRegistry"
            raise ConfigError(
                f"cannot register the request timer's histograms: the registry already holds metrics of these "
                f"names ({exc}); use another prefix= or registry"
            ) from exc
        self._submitted: dict[int, float] = {}
        self._dispatched: set[int] = set()
        self._lock = threading.Lock()

    def _make(self, reg: Any, prefix: str) -> None:
        made: list[Any] = []
        try:
            self._histograms(reg, prefix, made)
        except BaseException:
            for h in made:  # (none of them stays registered)
                reg.unregister(h)
            raise

    def _histograms(self, reg: Any, prefix: str, made: list[Any]) -> None:
        self.queue_wait = Histogram(
            f"{prefix}_queue_wait_seconds", "Seconds from submit to first dispatch", buckets=LATENCY_BUCKETS, registry=reg
        )
        made.append(self.queue_wait)
        self.latency = Histogram(
            f"{prefix}_latency_seconds",
            "Seconds from submit to completion (completed requests)",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        made.append(self.latency)
        self.batch_size = Histogram(
            f"{prefix}_batch_size", "Requests per dispatched batch", buckets=BATCH_BUCKETS, registry=reg
        )
        made.append(self.batch_size)

    def submitted(self, request_id: int, now: float) -> None:
        """Record that ``request_id`` was submitted at ``now`` (a finite time in seconds;
        else ValueError, nothing recorded)."""
        t = _finite_time(now)
        with self._lock:
            self._submitted[int(request_id)] = t

    def stepped(self, result: Any) -> None:
        """Record a :class:`capsched.StepResult` (or a :class:`capsched.StepArrays`, from
        ``step_many``): batch sizes, first dispatches, and the requests it ended
        (expired, dependency failures)."""
        now = float(result.now)
        batches = result.batches
        if callable(batches):  # StepArrays.batches() is a method
            batches = batches()
        expired = result.expired
        expired = expired.tolist() if hasattr(expired, "tolist") else list(expired)
        with self._lock:
            for b in batches:
                self.batch_size.observe(len(b.request_ids))
                for rid in b.request_ids:
                    t0 = self._submitted.get(rid)
                    if t0 is not None and rid not in self._dispatched:
                        self._dispatched.add(rid)
                        self.queue_wait.observe(max(0.0, now - t0))
            for rid in expired + [i for i, _ in result.failed]:
                self._submitted.pop(rid, None)
                self._dispatched.discard(rid)

    def ended(self, request_id: int, now: float, *, completed: bool = True) -> None:
        """A request ended (``completed=False`` for failed or cancelled ones: no latency)."""
        t = _finite_time(now)
        with self._lock:
            rid = int(request_id)
            t0 = self._submitted.pop(rid, None)
            self._dispatched.discard(rid)
            if completed and t0 is not None:
                self.latency.observe(max(0.0, t - t0))


def _finite_time(now: Any) -> float:
    try:
        t = float(now) if isinstance(now, numbers.Real) and not isinstance(now, bool) else math.nan
    except OverflowError:
        t = math.nan
    if not math.isfinite(t):
        raise ValueError(f"now must be a finite time in seconds, got {now if isinstance(now, float) else type(now).__name__ if not isinstance(now, numbers.Real) else 'a number beyond a float'}")
    return t
