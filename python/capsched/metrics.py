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
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Optional, Protocol, TypeVar, Union

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


def _label_value(v: str) -> str:
    """``v`` made encodable: a lone surrogate (a name read from JSON's ``"\\ud800"`` or
    from undecodable bytes) becomes its ``\\udXXX`` escape, so that one such value does
    not make every scrape of the registry fail with a UnicodeEncodeError."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return v.encode("utf-8", "backslashreplace").decode("utf-8")
    return v


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
        self._registry: Optional[weakref.ReferenceType[Any]] = None  # (set by register())

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

    def _labels_of(self, scheduler: Any) -> Optional[dict[str, str]]:
        """The labels ``scheduler`` is scraped with here, or None if it is not here."""
        with self._lock:
            for other, labels in self._members:
                if other is scheduler:
                    return dict(labels)
        return None

    def remove(self, scheduler: Any) -> None:
        """Stop scraping ``scheduler``; the other schedulers here stay. When it was the
        last one and :func:`register` registered this collector, the collector is also
        unregistered from that registry (a later :func:`register` there starts afresh).

        To replace a scheduler, e.g. by the one ``Scheduler.restore`` rebuilt from its
        checkpoint: ``collector.remove(old)``, then ``register(restored, registry,
        labels=<the old one's labels>)``.

        Raises:
            ConfigError: ``scheduler`` is not scraped by this collector.
        """
        if self._labels_of(scheduler) is None:
            raise ConfigError(
                f"this scheduler ({type(scheduler).__name__}) is not one this collector scrapes: nothing to remove"
            )
        if not self._drop(scheduler):
            reg = self._registry() if self._registry is not None else None
            if reg is not None:
                _unregister_empty(reg, self)

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
        info = {k: _label_value(str(s[k])) for k in ("policy", "dynamic_batching") if k in s}
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
            dev = _label_value(str(d.get("name", i)))
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
                    v = _label_value(v)
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
        if _label_value(v) != v:  # (every scrape would fail: UnicodeEncodeError)
            raise ConfigError(f"constant label {k!r} must be valid Unicode text (it must encode to UTF-8), got {v!r}")
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
_T = TypeVar("_T")
_REGISTERED: "weakref.WeakKeyDictionary[Any, dict[str, SchedulerCollector]]" = weakref.WeakKeyDictionary()
_REGISTERED_LOCK = threading.Lock()


def _still_registered(registry: Any, c: Any) -> bool:
    # (prometheus-client keeps its collectors in a private dict; without it, assume so)
    held = getattr(registry, "_collector_to_names", None)
    return True if held is None else c in held



def _by_prefix(table: "weakref.WeakKeyDictionary[Any, dict[str, _T]]", reg: Any) -> "dict[str, _T]":
    """``table``'s entry for registry ``reg`` (its objects by prefix), made on first use;
    a registry that cannot be weakly referenced gets a fresh dict each time (nothing is
    joined or shared there)."""
    try:
        return table.setdefault(reg, {})
    except TypeError:
        return {}

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
        by_prefix = _by_prefix(_REGISTERED, reg)
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
        try:
            c._registry = weakref.ref(reg)
        except TypeError:  # (not weakly referenceable: remove() cannot unregister it)
            pass
    return c


def _unregister_empty(reg: Any, c: SchedulerCollector) -> None:
    """Unregister ``c``, left with no scheduler, from ``reg`` and forget it there."""
    with _REGISTERED_LOCK:
        with c._lock:
            if c._members:  # (a scheduler joined it meanwhile: it stays)
                return
        try:
            reg.unregister(c)
        except KeyError:  # (already unregistered by hand)
            pass
        try:
            by_prefix = _REGISTERED.get(reg)
        except TypeError:
            by_prefix = None
        if by_prefix is not None and by_prefix.get(c.prefix) is c:
            del by_prefix[c.prefix]


def start_http_server(
    scheduler: StatsSource,
    port: int,
    addr: str = "127.0.0.1",
    *,
    registry: Optional[CollectorRegistry] = None,
    prefix: str = "capsched",
    labels: Optional[Mapping[str, str]] = None,
) -> Any:
    """Serve ``/metrics`` for ``scheduler`` on ``addr:port`` from a daemon thread.

    Uses a fresh registry unless one is given (so the process's default collectors are
    not mixed in), and registers ``scheduler`` in it with ``prefix`` and ``labels`` as
    :func:`register` does; a scheduler already registered in the given registry (with
    that prefix, and these labels if given) is served as it is. Binds to localhost by
    default; pass ``addr="0.0.0.0"`` to expose it. Returns what
    ``prometheus_client.start_http_server`` returns (``(server, thread)`` in recent
    versions; ``server.shutdown()`` stops it).

    Raises:
        ConfigError: ``port`` is not an integer in 0..65535, ``addr`` not a non-empty
            str, or as :func:`register`; ``scheduler`` is already registered there with
            other labels than ``labels``.
        OSError: the address cannot be bound (in use, say); a scheduler this call
            registered is then not left registered, so the call can be retried.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"port must be an integer in 0..65535, got {port!r}")
    if not isinstance(addr, str) or not addr:
        raise ConfigError(f"addr must be a non-empty host name or address, got {addr!r}")
    reg = CollectorRegistry() if registry is None else registry
    c = _registered_collector(reg, prefix, scheduler)
    if c is not None:  # already registered there: serve it as it is
        held = c._labels_of(scheduler)
        if labels is not None and held is not None and _check_labels(labels) != held:
            raise ConfigError(
                f"this scheduler is already registered in the registry with labels {held!r}, not {dict(labels)!r}"
            )
        return _prom_start_http_server(port, addr=addr, registry=reg)
    c = register(scheduler, reg, prefix=prefix, labels=labels)
    try:
        return _prom_start_http_server(port, addr=addr, registry=reg)
    except BaseException:
        if not c._drop(scheduler):  # (it was the only one: the collector goes too)
            _unregister_empty(reg, c)
        raise


def _registered_collector(reg: Any, prefix: str, scheduler: Any) -> Optional[SchedulerCollector]:
    """The collector :func:`register` made for ``(reg, prefix)`` if it still scrapes
    ``scheduler`` there, else None."""
    with _REGISTERED_LOCK:
        try:
            c = _REGISTERED.get(reg, {}).get(prefix)
        except TypeError:
            return None
    if c is None or not _still_registered(reg, c) or c._labels_of(scheduler) is None:
        return None
    return c


#: Histogram buckets (seconds) for queue wait and latency: 1 ms .. ~17 min.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 1000)
#: Histogram buckets for batch sizes.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


#: How many recently ended ids a :class:`RequestTimer` remembers (see its note on threads).
_ENDED_MEMORY = 65536


class _TimerHistograms:
    """The three histograms the request timers of one (registry, prefix) share, with
    the label names they were made with and the live timer of each label value tuple."""

    def __init__(self, reg: Any, prefix: str, labelnames: tuple[str, ...]) -> None:
        self.labelnames = labelnames
        self.timers: dict[tuple[str, ...], weakref.ReferenceType[RequestTimer]] = {}
        made: list[Any] = []
        try:
            self.queue_wait = Histogram(
                f"{prefix}_queue_wait_seconds", "Seconds from submit to first dispatch", labelnames=labelnames,
                buckets=LATENCY_BUCKETS, registry=reg,
            )
            made.append(self.queue_wait)
            self.latency = Histogram(
                f"{prefix}_latency_seconds", "Seconds from submit to completion (completed requests)",
                labelnames=labelnames, buckets=LATENCY_BUCKETS, registry=reg,
            )
            made.append(self.latency)
            self.batch_size = Histogram(
                f"{prefix}_batch_size", "Requests per dispatched batch", labelnames=labelnames,
                buckets=BATCH_BUCKETS, registry=reg,
            )
            made.append(self.batch_size)
        except BaseException:
            for h in made:  # (none of them stays registered)
                reg.unregister(h)
            raise


# The histograms of the request timers of each (registry, prefix), shared through their
# label names as register() shares one collector. Weak, as _REGISTERED.
_TIMERS: "weakref.WeakKeyDictionary[Any, dict[str, _TimerHistograms]]" = weakref.WeakKeyDictionary()


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

    ``labels`` are constant labels, as :func:`register`'s: with several schedulers in
    one registry, give each its timer with the labels of its :func:`register`, e.g.
    ``RequestTimer(registry, labels={"scheduler": "east"})``. The timers of one registry
    and prefix share the three histograms (one family each, a series per label values),
    so they need the same label names, each (while alive) its own values.

    With threads, the API thread's ``submitted(id, t)`` can come after the loop thread's
    ``stepped``/``ended`` already ended that request (it expired, or it ran and completed,
    between ``submit`` and ``submitted``). The timer remembers the last 65,536 ended ids,
    and a ``submitted`` for one of them is a no-op, so no entry is left behind. Ids are
    those of one scheduler (unique): one timer per scheduler.

    Raises:
        ConfigError: a bad ``prefix`` or ``labels``; label names other than those of the
            registry's other timers of this prefix, or the same values as a live one; or
            the registry holds other metrics of these names.
    """

    def __init__(
        self,
        registry: Optional[CollectorRegistry] = None,
        *,
        prefix: str = "capsched",
        labels: Optional[Mapping[str, str]] = None,
    ) -> None:
        if not isinstance(prefix, str) or not _name_ok(prefix):
            raise ConfigError(f"prefix must be a Prometheus metric name prefix ([a-zA-Z_][a-zA-Z0-9_]*), got {prefix!r}")
        own = _check_labels(labels)
        if "le" in own:
            raise ConfigError("constant label name 'le' is the histograms' own bucket label")
        reg = REGISTRY if registry is None else registry
        names = tuple(sorted(own))
        values = tuple(own[n] for n in names)
        with _REGISTERED_LOCK:
            by_prefix = _by_prefix(_TIMERS, reg)
            shared = by_prefix.get(prefix)
            if shared is not None and not _still_registered(reg, shared.queue_wait):
                shared = None  # (its histograms were unregistered by hand)
            if shared is None:
                try:
                    shared = _TimerHistograms(reg, prefix, names)
                except ValueError as exc:  # prometheus-client: "Duplicated timeseries in CollectorRegistry"
                    raise ConfigError(
                        f"cannot register the request timer's histograms: the registry already holds metrics of "
                        f"these names ({exc}); use another prefix= or registry"
                    ) from exc
                by_prefix[prefix] = shared
            elif names != shared.labelnames:
                raise ConfigError(
                    f"labels {own!r}: every request timer of one registry and prefix needs the same label names "
                    f"({list(shared.labelnames) or 'none'}, as the first one) with its own values"
                )
            else:
                ref = shared.timers.get(values)
                if ref is not None and ref() is not None:
                    raise ConfigError(
                        f"cannot register the request timer's histograms: the registry already holds metrics of "
                        f"these names ({prefix}_queue_wait_seconds, {prefix}_latency_seconds, {prefix}_batch_size) "
                        f"for the labels {own!r} of another request timer; give each timer its own label values, "
                        "e.g. labels={'scheduler': 'east'}, or use another prefix= or registry"
                    )
            shared.timers[values] = weakref.ref(self)
        self.labels: dict[str, str] = own
        if names:
            self.queue_wait = shared.queue_wait.labels(*values)
            self.latency = shared.latency.labels(*values)
            self.batch_size = shared.batch_size.labels(*values)
        else:
            self.queue_wait, self.latency, self.batch_size = shared.queue_wait, shared.latency, shared.batch_size
        self._submitted: dict[int, float] = {}
        self._dispatched: set[int] = set()
        self._ended: OrderedDict[int, None] = OrderedDict()  # recently ended ids (bounded)
        self._lock = threading.Lock()

    def _remember_ended(self, rid: int) -> None:
        # (under self._lock)
        self._ended[rid] = None
        self._ended.move_to_end(rid)
        while len(self._ended) > _ENDED_MEMORY:
            self._ended.popitem(last=False)

    def submitted(self, request_id: int, now: float) -> None:
        """Record that ``request_id`` was submitted at ``now`` (a finite time in seconds;
        else ValueError, nothing recorded). A no-op for a request already ended (see the
        class's note on threads)."""
        t = _finite_time(now)
        with self._lock:
            rid = int(request_id)
            if rid not in self._ended:
                self._submitted[rid] = t

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
                self._remember_ended(int(rid))

    def ended(self, request_id: int, now: float, *, completed: bool = True) -> None:
        """A request ended (``completed=False`` for failed or cancelled ones: no latency)."""
        t = _finite_time(now)
        with self._lock:
            rid = int(request_id)
            t0 = self._submitted.pop(rid, None)
            self._dispatched.discard(rid)
            self._remember_ended(rid)
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
