"""Long-run soak of the real capsched.Scheduler in a simulated fleet (issue 8, part 3).

    python bench/soak.py --requests 10_000_000 [--seed S] [--json F]

Pushes N synthetic requests (N accepted; more are offered, the excess refused by
back-pressure) through one real :class:`capsched.Scheduler` driven the way
a server drives it, in virtual time, with injected faults, and checks two things at the
end (``docs/soak.md`` has the full description and the numbers of a 10-million run):

* **accounting is exact**: every accepted request ended exactly once, and the tallies by
  outcome (completed / failed for good / expired / cancelled) agree three ways: the
  driver's own per-id ledger, the events it saw (return values and StepResult lists), and
  the scheduler's ``stats()`` and Prometheus counters; a sample of ended ids is
  re-checked with ``status()`` at the end of the run;
* **memory is flat**: resident memory (RSS) and malloc'd bytes (glibc ``mallinfo2``)
  sampled through the run; with the queue drained, their growth over the last 80 % of
  the run stays within the core's documented per-id records (3 bits per id ever issued,
  allocated by doubling, so up to twice that) plus a fixed allowance, and so does the
  slope of memory against ids issued; the number of Python objects tracked by the
  garbage collector does not grow.

The simulated fleet: 8 devices of three speeds, batch mode (``step(now)``), each device
running up to 2 batches; a batch takes ``(0.05 + 0.004 x size) / capacity / clock`` virtual
seconds, with lognormal noise. Arrivals are Poisson with a periodic burst above the
fleet's capacity (arrays drawn with numpy a chunk at a time, so the driver holds O(chunk)
memory). Faults, all simulated (:mod:`capsched.sim.faults`): devices go down for tens of
seconds (every batch fails, the breaker trips, probes and recovers), random request
failures (retryable or not), clock throttling (``set_clock``), and clock drops in the
times the server reads (stalls, far forward jumps, backward steps: the driver clamps
them, as a server should, and now and then passes a backward reading on to check the
documented clamp, and a NaN to check it is refused). Requests carry timeouts (they
expire in bursts), some are cancelled, a share goes one by one through ``submit`` with
tenants, classes and dependencies, the rest through ``submit_many``; back-pressure
(``max_queued``) refuses submits during bursts.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import heapq
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any, Optional

import numpy as np

import capsched
from capsched import Device, InferenceRequest, Scheduler
from capsched.errors import (
    ConfigError,
    DependencyError,
    InvalidArgumentError,
    InvalidRequestError,
    QueueFullError,
    RequestStateError,
)
from capsched.sim.faults import (
    ClockDropRates,
    DeviceFaultRates,
    SimulatedClockSource,
    SimulatedDeviceFaults,
)

__all__ = ["SoakConfig", "SoakError", "IdLedger", "run_soak", "failed_checks", "main"]

#: Bytes per id ever issued that the core documents keeping (2 outcome bits + 1 live bit).
DOCUMENTED_BYTES_PER_ID = 3 / 8

# Outcome codes of the ledger (0 = live).
COMPLETED, FAILED, EXPIRED, CANCELLED = 1, 2, 3, 4
KINDS = {COMPLETED: "completed", FAILED: "failed", EXPIRED: "expired", CANCELLED: "cancelled"}

#: The simulated fleet: (name, relative capacity, batches in flight at once).
SIM_FLEET = (
    ("sim-fast-0", 1.0, 2),
    ("sim-fast-1", 1.0, 2),
    ("sim-mid-0", 0.5, 2),
    ("sim-mid-1", 0.5, 2),
    ("sim-slow-0", 0.25, 2),
    ("sim-slow-1", 0.25, 2),
    ("sim-slow-2", 0.25, 2),
    ("sim-slow-3", 0.25, 2),
)
_MAX_CLOCK_MHZ = 1980.0
_TENANTS = ("tenant-a", "tenant-b", "tenant-c", None)
_CLASSES = ("chat", "code", None)


class SoakError(AssertionError):
    """The soak's oracle found an inconsistency while running (the message says which)."""


@dataclasses.dataclass(frozen=True)
class SoakConfig:
    """Parameters of a soak run (times are virtual seconds).

    Attributes:
        mode: ``"batch"`` (``step(now)``: each device runs up to 2 batches of up to
            ``batch_size``) or ``"continuous"`` (``step(now, free_slots=...)``: each
            device runs up to ``max_seqs`` sequences, each ending on its own; strict-class
            requests preempt).
        requests: requests accepted: arrivals are offered until this many were accepted
            (those refused by back-pressure or a dependency error are counted apart).
        seed: seed of every random stream.
        chunk: arrivals drawn per numpy chunk.
        warmup: share of the accepted requests after which memory is the baseline.
        batch_size: the scheduler's ``max_batch_size``.
        base_load, burst_load: offered load (share of the simulated fleet's capacity)
            outside and inside bursts; a burst lasts ``burst_s`` of every ``cycle_s``.
        max_queued: the scheduler's back-pressure bound.
        timeout_share: share of requests with a timeout (lognormal, median
            ``timeout_median_s``); the others have none.
        per_request_share: share submitted one by one as :class:`InferenceRequest`
            (tenants, classes, and a dependency for ``depends_share`` of them).
        cancel_share: share cancelled 0..``cancel_within_s`` after arrival (if still live).
        per_request_complete_share: share of healthy batches completed one ``complete``
            call per request (with ``output_tokens``) instead of one ``complete_many``.
        throttle_every_s, throttle_for_s: a random device's clock drops to half for
            ``throttle_for_s`` about every ``throttle_every_s`` (``set_clock``).
        device_faults, clock_drops: the simulated fault rates.
        breaker_cooldown: the scheduler's breaker cooldown.
        poll_s: longest time the server loop sleeps between steps.
        bad_input_every: every this many loop turns, feed one bad call and check it is
            refused with nothing changed.
        max_seqs: continuous mode: sequences per device.
        seq_service_s: continuous mode: median seconds one sequence runs on a device of
            capacity 1.0 at full clock (lognormal, sigma 0.5).
        strict_share, background_share: shares of the one-by-one requests submitted with
            ``sched_class="strict"`` (served before normal ones) and ``"background"``
            (served on capacity the others leave idle). In continuous mode a queued strict
            request evicts a running normal or background one when no slot is free, and a
            queued normal request evicts a running background one.
        background_timeout_s: timeout of a background request drawn without one
            (default 300 s; 0: none). A background request without a deadline that has
            been queued longer than ``Config.no_deadline_horizon`` is never dispatched, and
            holds back every background request behind it (docs/soak.md: a core bug this
            soak found); 0 reproduces it (the run then fails: the queue does not drain).
        stuck_after_s: virtual seconds of draining with nothing running and nothing
            changing after which the run fails with the stuck requests named.
        memory_samples: resident-memory samples over the run.
    """

    requests: int = 10_000_000
    seed: int = 0
    mode: str = "batch"
    chunk: int = 65_536
    warmup: float = 0.2
    batch_size: int = 64
    base_load: float = 0.75
    burst_load: float = 2.0
    burst_s: float = 8.0
    cycle_s: float = 30.0
    max_queued: int = 12_000
    timeout_share: float = 0.7
    timeout_median_s: float = 6.0
    per_request_share: float = 0.03
    depends_share: float = 0.3
    cancel_share: float = 0.005
    cancel_within_s: float = 5.0
    per_request_complete_share: float = 0.05
    throttle_every_s: float = 40.0
    throttle_for_s: float = 10.0
    device_faults: DeviceFaultRates = DeviceFaultRates(down_every_s=400.0, down_for_s=(15.0, 60.0))
    clock_drops: ClockDropRates = ClockDropRates(jump=0.0001, jump_s=20.0)
    breaker_cooldown: float = 10.0
    poll_s: float = 0.05
    bad_input_every: int = 5_000
    memory_samples: int = 200
    max_seqs: int = 128
    seq_service_s: float = 0.25
    strict_share: float = 0.2
    background_share: float = 0.2
    background_timeout_s: float = 300.0
    stuck_after_s: float = 1000.0

    def __post_init__(self) -> None:
        if self.mode not in ("batch", "continuous"):
            raise ConfigError(f"mode must be 'batch' or 'continuous', got {self.mode!r}")
        if isinstance(self.requests, bool) or not isinstance(self.requests, int) or self.requests < 1:
            raise ConfigError(f"requests must be an integer >= 1, got {self.requests!r}")


# --------------------------------------------------------------------------- the ledger


_BLOCK = 1 << 15  # elements per block of the ledger's scans (32 KiB temporaries at most)


class IdLedger:
    """Per-id outcomes of the live window of ids (the driver's own books).

    Ids are issued 1, 2, 3, ...; each must end exactly once. A ring buffer of one byte
    per id holds the outcome of ids from the oldest not yet retired on; :meth:`retire`
    tallies and forgets the prefix of ended ids. So memory is O(span of live ids),
    however many ids the run issues (the ring doubles if the span outgrows it).
    """

    def __init__(self, capacity: int = 1 << 16) -> None:
        cap = 1
        while cap < capacity:
            cap *= 2
        self.ring = np.zeros(cap, dtype=np.uint8)
        self.base = 1  # oldest id not yet retired
        self.next_id = 1  # the next id the scheduler will issue
        self.tally = dict.fromkeys(KINDS, 0)
        self.max_span = 0
        self.samples: list[tuple[int, int]] = []  # (id, kind) kept to re-check at the end
        self._sample_cursor = 0

    @property
    def live_span(self) -> int:
        return self.next_id - self.base

    def issued(self, ids: np.ndarray) -> None:
        """Record ids just issued: they must be the next ones, in order."""
        n = int(ids.size)
        if n == 0:
            return
        first, last = int(ids[0]), int(ids[-1])
        if first != self.next_id or last != self.next_id + n - 1 or (n > 1 and not bool((np.diff(ids) == 1).all())):
            raise SoakError(f"ids issued out of sequence: got {first}..{last}, expected from {self.next_id}")
        self.next_id += n
        span = self.next_id - self.base
        self.max_span = max(self.max_span, span)
        if span > self.ring.size:
            self._grow(span)

    def _grow(self, span: int) -> None:
        cap = self.ring.size
        new = cap
        while new < span:
            new *= 2
        ring = np.zeros(new, dtype=np.uint8)
        window = np.concatenate([self.ring[a:b] for a, b in self._slices(self.base, cap, cap)])
        at = 0
        for a, b in self._slices(self.base, cap, new):
            ring[a:b] = window[at : at + b - a]
            at += b - a
        self.ring = ring

    @staticmethod
    def _slices(first_id: int, n: int, size: int) -> list[tuple[int, int]]:
        """Ring positions of ids first_id .. first_id + n - 1 in a ring of ``size``: one or
        two contiguous ``(start, stop)`` ranges, in id order."""
        start = first_id & (size - 1)
        if start + n <= size:
            return [(start, start + n)]
        return [(start, size), (0, start + n - size)]

    def ended(self, ids: np.ndarray, kind: int) -> None:
        """Record that ``ids`` ended as ``kind``; raises SoakError on an id that is
        unknown, already ended, or listed twice."""
        if ids.size == 0:
            return
        lo, hi = int(ids.min()), int(ids.max())
        if hi >= self.next_id:
            raise SoakError(f"request {hi} ended as {KINDS[kind]} but was never issued (next id {self.next_id})")
        if lo < self.base:
            raise SoakError(f"request {lo} ended as {KINDS[kind]} but had already ended (and was retired)")
        pos = (ids & np.uint64(self.ring.size - 1)).astype(np.intp)
        prev = self.ring[pos]
        if prev.any():
            j = int(np.flatnonzero(prev)[0])
            raise SoakError(f"request {int(ids[j])} ended twice: {KINDS[int(prev[j])]}, then {KINDS[kind]}")
        if ids.size > 1 and np.unique(pos).size != ids.size:
            raise SoakError(f"an id is listed twice among {ids.size} ids ending as {KINDS[kind]}")
        self.ring[pos] = kind

    def ended_one(self, rid: int, kind: int) -> None:
        """:meth:`ended` for one id."""
        if not self.base <= rid < self.next_id:
            raise SoakError(f"request {rid} ended as {KINDS[kind]}: unknown or already retired")
        p = rid & (self.ring.size - 1)
        if self.ring[p]:
            raise SoakError(f"request {rid} ended twice: {KINDS[int(self.ring[p])]}, then {KINDS[kind]}")
        self.ring[p] = kind

    def kind_of(self, rid: int) -> int:
        """The recorded outcome of a not yet retired id (0 = live)."""
        return int(self.ring[rid & (self.ring.size - 1)]) if self.base <= rid < self.next_id else -1

    def retire(self, keep_samples: int = 8, rng: Optional[np.random.Generator] = None) -> int:
        """Tally and forget the ended ids from the oldest on, up to the first live one;
        keeps a few ``(id, kind)`` samples. Returns how many were retired."""
        n = self.next_id - self.base
        if n == 0:
            return 0
        # the window in ring order is one or two contiguous slices (views: no copies); it
        # is scanned in blocks so that no temporary is large (large temporaries come and
        # go through the heap and would show in this process's RSS, blurring the curve)
        segs = [self.ring[a:b] for a, b in self._slices(self.base, n, self.ring.size)]
        k = 0
        for seg in segs:
            z = int(np.argmin(seg))  # first live (0) entry, if any
            if seg[z] == 0:
                k += z
                break
            k += seg.size
        if k == 0:
            return 0
        if rng is not None and keep_samples:
            for off in rng.integers(0, k, size=keep_samples).tolist():
                self.samples.append((self.base + off, self.kind_of(self.base + off)))
            if len(self.samples) > 4096:  # keep a bounded, spread-out sample
                self.samples = self.samples[::2]
        left = k
        for seg in segs:
            part = seg[: min(left, seg.size)]
            for lo in range(0, part.size, _BLOCK):
                block = part[lo : lo + _BLOCK]
                for kind in KINDS:
                    self.tally[kind] += int(np.count_nonzero(block == kind))
            part[:] = 0
            left -= part.size
        self.base += k
        return k


# --------------------------------------------------------------------------- memory


def rss_bytes() -> Optional[int]:
    """Resident set size of this process in bytes (Linux ``/proc/self/statm``), or None."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _mallinfo2() -> Optional[Callable[[], _MallInfo2]]:
    try:
        libc = ctypes.CDLL(None)
        fn = libc.mallinfo2  # glibc >= 2.33
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    fn.argtypes = []
    return fn


_MALLINFO2 = _mallinfo2()


def heap_bytes() -> Optional[int]:
    """Bytes allocated with malloc and not freed (glibc's ``mallinfo2``: the main arena's
    in-use chunks plus mmapped blocks), or None off glibc. This counts the core's C++
    containers and numpy's buffers, not pages: unlike RSS it does not move when the
    allocator keeps or returns free memory. (CPython's small objects live in its own
    arenas, mapped outside malloc: ``gc`` object counts cover those.)"""
    if _MALLINFO2 is None:
        return None
    m = _MALLINFO2()
    return int(m.uordblks + m.hblkhd)


# --------------------------------------------------------------------------- the fleet


@dataclasses.dataclass
class _Flight:
    """A batch running on a simulated device."""

    finish: float
    seq: int
    device: int
    ids: np.ndarray
    alive: np.ndarray

    def __lt__(self, other: "_Flight") -> bool:
        return (self.finish, self.seq) < (other.finish, other.seq)


class _Arrivals:
    """Synthetic arrivals drawn a chunk at a time (simulated workload).

    The chunk's arrays are allocated once and refilled in place (numpy ``out=``), so the
    driver's own memory is the same from the first chunk to the last: fresh half-megabyte
    arrays per chunk would leave the allocator's heap a little more fragmented each time
    and blur the scheduler's memory curve.
    """

    _FLOAT = ("t", "priority", "timeout", "cancel_at", "u", "v")

    def __init__(self, cfg: SoakConfig, fleet_rate: float, rng: np.random.Generator) -> None:
        self.cfg = cfg
        self.rng = rng
        self.rate_burst = cfg.burst_load * fleet_rate
        self.rate_base = cfg.base_load * fleet_rate
        self.per_cycle = self.rate_burst * cfg.burst_s + self.rate_base * (cfg.cycle_s - cfg.burst_s)
        self.cum = 0.0  # cumulative intensity drawn so far
        self.offered = 0  # arrivals drawn so far
        self.stopped = False
        self.pos = 0
        n = cfg.chunk
        self.arr: dict[str, np.ndarray] = {k: np.empty(n) for k in self._FLOAT}
        self.arr["prompt"] = np.empty(n, dtype=np.int64)
        self.arr["new"] = np.empty(n, dtype=np.int64)
        self.arr["single"] = np.empty(n, dtype=bool)
        self._mask = np.empty(n, dtype=bool)
        self.n = 0
        self._draw()

    def _lognormal(self, out: np.ndarray, mu: float, sigma: float) -> np.ndarray:
        self.rng.standard_normal(out=out)
        out *= sigma
        out += mu
        np.exp(out, out=out)
        return out

    def _draw(self) -> None:
        c, rng, a, m = self.cfg, self.rng, self.arr, self._mask
        self.n = 0 if self.stopped else c.chunk
        self.pos = 0
        if self.n == 0:
            return
        # arrival times: cumulative unit-rate exponentials through the inverse of the
        # periodic piecewise-constant cumulative intensity
        t, u, v = a["t"], a["u"], a["v"]
        rng.standard_exponential(out=t)
        np.cumsum(t, out=t)
        t += self.cum
        self.cum = float(t[-1])
        np.floor_divide(t, self.per_cycle, out=u)  # u = cycle index k
        np.multiply(u, -self.per_cycle, out=v)
        v += t  # v = intensity into the cycle
        burst_mass = self.rate_burst * c.burst_s
        np.less(v, burst_mass, out=m)
        np.divide(v, self.rate_burst, out=t, where=m)
        np.invert(m, out=m)
        np.subtract(v, burst_mass, out=v, where=m)
        v /= self.rate_base
        v += c.burst_s
        np.copyto(t, v, where=m)
        u *= c.cycle_s
        t += u
        # lengths, priority, timeouts, the per-request share, cancellations
        a["prompt"][:] = np.clip(self._lognormal(u, 6.0, 1.0), 1, 8000, out=u)
        a["new"][:] = np.clip(self._lognormal(u, 5.0, 0.8), 1, 2000, out=u)
        rng.random(out=a["priority"])
        self._lognormal(a["timeout"], math.log(c.timeout_median_s), 0.6)
        rng.random(out=u)
        np.greater_equal(u, c.timeout_share, out=m)
        a["timeout"][m] = np.nan
        rng.random(out=u)
        np.less(u, c.per_request_share, out=a["single"])
        rng.random(out=u)
        np.multiply(u, c.cancel_within_s, out=a["cancel_at"])
        rng.random(out=u)
        np.greater_equal(u, c.cancel_share, out=m)
        a["cancel_at"][m] = np.nan
        self.offered += self.n

    def done(self) -> bool:
        return self.n == 0

    def stop(self) -> None:
        """No more arrivals (the run has accepted its requests)."""
        self.stopped = True
        self.n = self.pos = 0

    def next_time(self) -> float:
        return float(self.arr["t"][self.pos]) if self.n else math.inf

    def take_until(self, t: float) -> Optional[dict[str, np.ndarray]]:
        """Arrivals up to time ``t`` in this chunk (the caller loops until it returns None)."""
        if not self.n:
            return None
        if self.pos >= self.n:
            self._draw()
            if not self.n:
                return None
        end = int(np.searchsorted(self.arr["t"], t, side="right"))
        if end <= self.pos:
            return None
        sl = slice(self.pos, end)
        self.pos = end
        return {k: v[sl] for k, v in self.arr.items()}


# --------------------------------------------------------------------------- the run


def _fleet_rate(cfg: SoakConfig) -> float:
    """Requests per virtual second the simulated fleet serves when kept full."""
    if cfg.mode == "continuous":  # (mean of the lognormal service: median x e^(sigma^2 / 2))
        return sum(cfg.max_seqs * cap / (cfg.seq_service_s * math.exp(0.125)) for _, cap, _ in SIM_FLEET)
    b = cfg.batch_size
    return sum(inflight * b * cap / (0.05 + 0.004 * b) for _, cap, inflight in SIM_FLEET)


def run_soak(cfg: SoakConfig, progress: Optional[Callable[[str], None]] = None) -> dict[str, Any]:
    """Run the soak; returns its report (a JSON-able dict; ``failed_checks`` lists what
    failed). Raises :class:`SoakError` as soon as the books disagree mid-run."""
    wall0 = time.perf_counter()
    rng = np.random.default_rng([cfg.seed, 1])
    names = [n for n, _, _ in SIM_FLEET]
    caps = np.array([c for _, c, _ in SIM_FLEET])
    config = capsched.Config(
        max_queued=cfg.max_queued,
        breaker_cooldown=cfg.breaker_cooldown,
        retry_seed=cfg.seed,
    )
    sched = Scheduler(
        [Device(n, capacity=c, max_inflight_batches=m, max_clock_mhz=_MAX_CLOCK_MHZ) for n, c, m in SIM_FLEET],
        max_batch_size=cfg.batch_size,
        enable_dynamic_batching=False,
        config=config,
    )
    inflight_cap = sum(m for _, _, m in SIM_FLEET) * cfg.batch_size
    sched.reserve(cfg.max_queued + inflight_cap)
    clock = SimulatedClockSource(cfg.clock_drops, seed=cfg.seed)
    faults = SimulatedDeviceFaults(names, cfg.device_faults, seed=cfg.seed)
    arrivals = _Arrivals(cfg, _fleet_rate(cfg), rng)
    continuous = cfg.mode == "continuous"
    where: dict[int, tuple[_Flight, int]] = {}  # continuous: running request -> (flight, index)
    running = [0] * len(names)  # continuous: sequences running per device
    ledger = IdLedger()

    ev = dict.fromkeys(
        (
            "completed", "failed_final", "failed_dependency", "expired", "cancelled", "cancel_noop",
            "retried", "dispatched", "batches", "migrated", "rejected", "dependency_refused",
            "offered", "submitted_bulk", "submitted_single", "completed_single_calls", "batches_failed_down",
            "request_failures_random", "backward_checked", "nonfinite_checked", "bad_input_checked",
            "throttles", "steps", "loop_turns", "preempted", "submitted_strict", "submitted_background",
        ),
        0,
    )
    flights: list[_Flight] = []
    seq = 0
    cancels: list[tuple[float, int]] = []  # (time, id)
    clock_scale = np.ones(len(names))
    throttled_until = np.full(len(names), -math.inf)
    next_throttle = float(rng.uniform(0.0, cfg.throttle_every_s))
    last_single: Optional[int] = None
    unreported_deps: list[int] = []  # refused as dependencies before a step reported their end
    jumped_s = 0.0
    # per device: batches that failed because it was down, and healthy batches after one
    down_batches = [0] * len(names)
    recovered_batches = [0] * len(names)

    # memory samples: (accepted = ids issued, offered, RSS, malloc'd bytes); -1 = unknown
    samples: list[tuple[int, int, int, int]] = []
    sample_every = max(1, cfg.requests // max(1, cfg.memory_samples))  # (in accepted requests)
    next_sample = sample_every
    warm_at = max(1, int(cfg.requests * cfg.warmup))
    warm: Optional[dict[str, int]] = None
    progress_every = max(cfg.chunk, cfg.requests // 50)
    next_progress = progress_every

    t_true = 0.0
    now = -math.inf  # the last time passed to the scheduler (the driver's clamp)
    next_step_at = math.inf

    def end_ids(ids: np.ndarray, kind: int) -> None:
        ledger.ended(ids, kind)

    def find_inflight(rid: int, device: Optional[int] = None) -> Optional[tuple[_Flight, int]]:
        if continuous:
            g = where.get(rid)
            return None if g is None or (device is not None and g[0].device != device) else g
        for f in flights:
            if device is not None and f.device != device:
                continue
            hit = np.flatnonzero(f.ids == rid)
            if hit.size and f.alive[hit[0]]:
                return f, int(hit[0])
        return None

    def stop_running(hit: tuple[_Flight, int]) -> None:
        """The server stops a running request (cancelled, migrated away, preempted)."""
        f, j = hit
        f.alive[j] = False
        if continuous:
            running[f.device] -= 1
            del where[int(f.ids[j])]

    def do_step(t: float) -> capsched.StepResult:
        if continuous:
            free = {names[d]: max(0, cfg.max_seqs - running[d]) for d in range(len(names))}
            return sched.step(t, free_slots=free)
        return sched.step(t)

    def counters() -> tuple[int, ...]:
        s = sched.stats()
        return tuple(s[k] for k in ("accepted", "completed", "failed", "expired", "cancelled", "queued", "in_flight"))

    def bad_input_checks() -> None:
        # A bulk submit with one NaN priority is refused whole, naming the value.
        before = counters()
        try:
            sched.submit_many([10, 20, 30], priority=[0.1, float("nan"), 0.2], now=now)
        except InvalidRequestError as exc:
            if "nan" not in str(exc).lower():
                raise SoakError(f"the error for a NaN priority does not name it: {exc}") from None
        else:
            raise SoakError("submit_many accepted a NaN priority")
        # Completing an id that is not in flight (the newest, queued or ended) is refused.
        if ledger.next_id > 1:
            rid = ledger.next_id - 1
            if find_inflight(rid) is None:
                try:
                    sched.complete(rid, now=now)
                except RequestStateError:
                    pass
                else:
                    raise SoakError(f"complete({rid}) of a request not in flight was accepted")
        if counters() != before:
            raise SoakError(f"a refused call changed the scheduler: {before} -> {counters()}")
        ev["bad_input_checked"] += 1

    def submit_arrivals(a: dict[str, np.ndarray]) -> None:
        nonlocal last_single
        single = a["single"]
        bulk = ~single
        t_now = now
        room = cfg.requests - (ledger.next_id - 1)  # accepted requests still to go
        if bulk.sum() > room:  # the run ends: offer only what could still be accepted
            keep = np.cumsum(bulk) <= room
            bulk &= keep
            single &= keep
        if bulk.any():
            p, q, pr, to = a["prompt"][bulk], a["new"][bulk], a["priority"][bulk], a["timeout"][bulk]
            cancel_at = a["cancel_at"][bulk]
            for s in range(0, p.size, 512):  # a backlog goes in pieces: some may be refused
                e = s + 512
                ev["offered"] += int(p[s:e].size)
                try:
                    ids = sched.submit_many(p[s:e], max_new_tokens=q[s:e], priority=pr[s:e], timeout=to[s:e], now=t_now)
                except QueueFullError:
                    ev["rejected"] += int(p[s:e].size)
                    continue
                ledger.issued(ids)
                ev["submitted_bulk"] += int(ids.size)
                c = cancel_at[s:e]
                for j in np.flatnonzero(~np.isnan(c)):
                    heapq.heappush(cancels, (t_now + float(c[j]), int(ids[j])))
        for j in np.flatnonzero(single):
            k = int(j)
            if ledger.next_id - 1 >= cfg.requests:
                break
            ev["offered"] += 1
            deps: tuple[int, ...] = ()
            if last_single is not None and rng.random() < cfg.depends_share:
                deps = (last_single,)
            to1 = float(a["timeout"][k])
            u_class = rng.random()
            sched_class = (
                "strict" if u_class < cfg.strict_share
                else "background" if u_class < cfg.strict_share + cfg.background_share
                else "normal"
            )
            if sched_class == "background" and math.isnan(to1) and cfg.background_timeout_s > 0:
                to1 = cfg.background_timeout_s
            req = InferenceRequest(
                prompt_tokens=int(a["prompt"][k]),
                max_new_tokens=int(a["new"][k]),
                priority=float(a["priority"][k]),
                timeout=None if math.isnan(to1) else to1,
                tenant=_TENANTS[k % len(_TENANTS)],
                request_class=_CLASSES[k % len(_CLASSES)],
                depends_on=deps,
                sched_class=sched_class,
            )
            try:
                rid = sched.submit(req, now=t_now)
            except QueueFullError:
                ev["rejected"] += 1
                continue
            except DependencyError as exc:
                # documented: a dependency that ended without completing is refused. It may
                # have failed through its own dependency since the last step (the step
                # reports it): then it must be among the next step's failures.
                kind = ledger.kind_of(deps[0]) if deps else COMPLETED
                if kind == 0:
                    unreported_deps.append(deps[0])
                elif kind not in (FAILED, EXPIRED, CANCELLED, -1):
                    raise SoakError(f"submit refused a dependency on a request that did not fail: {exc}") from None
                ev["dependency_refused"] += 1
                continue
            ledger.issued(np.array([rid], dtype=np.uint64))
            ev["submitted_single"] += 1
            ev["submitted_strict"] += int(sched_class == "strict")
            ev["submitted_background"] += int(sched_class == "background")
            last_single = rid
            ca = float(a["cancel_at"][k])
            if not math.isnan(ca):
                heapq.heappush(cancels, (t_now + ca, rid))

    def finish_flight(f: _Flight) -> None:
        ids = f.ids[f.alive]
        if ids.size == 0:
            return
        d = f.device
        if faults.is_down(d, f.finish):
            ev["batches_failed_down"] += 1
            down_batches[d] += 1
            retry = faults.draw_retryable(ids.size)
            for rid, r in zip(ids.tolist(), retry.tolist()):
                if sched.fail(rid, now=now, retryable=r, error="simulated device down"):
                    ev["retried"] += 1
                else:
                    ev["failed_final"] += 1
                    ledger.ended_one(rid, FAILED)
            return
        if down_batches[d]:
            recovered_batches[d] += 1
        fails, retry = faults.draw_failures(ids.size)
        if fails.any():
            for rid, r in zip(ids[fails].tolist(), retry[fails].tolist()):
                ev["request_failures_random"] += 1
                if sched.fail(rid, now=now, retryable=r, error="simulated request failure"):
                    ev["retried"] += 1
                else:
                    ev["failed_final"] += 1
                    ledger.ended_one(rid, FAILED)
            ids = ids[~fails]
        if ids.size == 0:
            return
        if rng.random() < cfg.per_request_complete_share:
            for rid in ids.tolist():
                sched.complete(rid, now=now, output_tokens=int(rng.integers(1, 500)))
            ev["completed_single_calls"] += int(ids.size)
        else:
            sched.complete_many(ids, now=now)
        ev["completed"] += int(ids.size)
        end_ids(ids, COMPLETED)

    def _absorb(res: capsched.StepResult) -> None:
        nonlocal seq
        if res.expired:
            ev["expired"] += len(res.expired)
            end_ids(np.array(res.expired, dtype=np.uint64), EXPIRED)
        if res.failed:
            ev["failed_dependency"] += len(res.failed)
            end_ids(np.array([i for i, _ in res.failed], dtype=np.uint64), FAILED)
        if res.preempted and not continuous:
            raise SoakError(f"batch mode preempted {res.preempted[:3]}")
        # Preempted and migrated requests both stop running on the device named.
        for moves, event, prep in ((res.preempted, "preempted", "on"), (res.migrated, "migrated", "from")):
            for rid, dev in moves:
                hit = find_inflight(rid, names.index(dev))
                if hit is None:
                    raise SoakError(f"request {rid} {event} {prep} {dev}, where it was not running")
                stop_running(hit)
                ev[event] += 1
        for b in res.batches:
            n = len(b.request_ids)
            d = b.device_index
            ev["dispatched"] += n
            ev["batches"] += 1
            ids = np.array(b.request_ids, dtype=np.uint64)
            if continuous:
                # each sequence runs on its own; the server sees exits at its iteration
                # boundaries (every poll_s), so sequences ending in the same one share a flight
                durs = rng.lognormal(0.0, 0.5, n) * (cfg.seq_service_s / caps[d] / clock_scale[d])
                ticks = np.ceil((t_true + durs) / cfg.poll_s)
                uniq, inv = np.unique(ticks, return_inverse=True)
                for g in range(uniq.size):
                    members = ids[inv == g]
                    seq += 1
                    f = _Flight(float(uniq[g]) * cfg.poll_s, seq, d, members, np.ones(members.size, dtype=bool))
                    heapq.heappush(flights, f)
                    for j, rid in enumerate(members.tolist()):
                        if rid in where:
                            raise SoakError(f"request {rid} dispatched while it was running")
                        where[rid] = (f, j)
                running[d] += n
                continue
            dur = (0.05 + 0.004 * n) / caps[d] / clock_scale[d] * float(rng.lognormal(0.0, 0.2))
            seq += 1
            heapq.heappush(flights, _Flight(t_true + dur, seq, d, ids, np.ones(n, dtype=bool)))

    def take_memory_sample(accepted: int) -> None:
        r = rss_bytes()
        if r is not None or heap_bytes() is not None:
            samples.append((accepted, ev["offered"], _or_minus(r), _or_minus(heap_bytes())))

    draining = False
    drain_turns = 0
    drain_live = -1  # live requests at the last change while draining
    drain_since = 0.0
    while True:
        ev["loop_turns"] += 1
        # ---- the server sleeps until the next batch ends, a held/backoff step is due, or the poll period
        wake = t_true + cfg.poll_s
        if flights and not continuous:  # (continuous: the server works in iterations of poll_s)
            wake = min(wake, flights[0].finish)
        if next_step_at < wake:
            wake = max(t_true, next_step_at)
        reading = clock.read(max(wake, t_true))
        t_true = reading.true_s
        jumped_s += reading.jumped_s
        if reading.kind == "backward" and reading.reading_s < now:
            # documented: a `now` earlier than the latest seen is treated as the latest
            latest = sched.stats()["now"]
            back = do_step(reading.reading_s)
            if back.now != latest:
                raise SoakError(f"step({reading.reading_s}) after now={latest} ran at {back.now}, not clamped")
            ev["backward_checked"] += 1
            ev["steps"] += 1
            _absorb(back)
        # the driver clamps its clock readings, as a server on a non-monotonic clock should
        now = max(now, reading.reading_s)

        # ---- batches (continuous: sequences) that ended
        if continuous:
            ended: dict[int, list[np.ndarray]] = {}
            while flights and flights[0].finish <= t_true:
                f = heapq.heappop(flights)
                live = f.ids[f.alive]
                if live.size:
                    running[f.device] -= int(live.size)
                    for rid in live.tolist():
                        del where[rid]
                    ended.setdefault(f.device, []).append(live)
            for d, parts in ended.items():  # reported per device, as one iteration's exits
                ids = np.concatenate(parts)
                finish_flight(_Flight(t_true, 0, d, ids, np.ones(ids.size, dtype=bool)))
        while flights and flights[0].finish <= t_true:
            finish_flight(heapq.heappop(flights))
        # ---- cancellations due
        while cancels and cancels[0][0] <= t_true:
            _, rid = heapq.heappop(cancels)
            hit = find_inflight(rid)
            if sched.cancel(rid):
                ev["cancelled"] += 1
                ledger.ended_one(rid, CANCELLED)
                if hit is not None:
                    stop_running(hit)
            else:
                ev["cancel_noop"] += 1
                if hit is not None:
                    raise SoakError(f"cancel({rid}) of an in-flight request returned False")
        # ---- device clock throttling (simulated thermal events)
        if t_true >= next_throttle:
            d = int(rng.integers(len(names)))
            sched.set_clock(names[d], _MAX_CLOCK_MHZ * 0.5, now=now)
            clock_scale[d] = 0.5
            throttled_until[d] = t_true + cfg.throttle_for_s
            next_throttle = t_true + float(rng.exponential(cfg.throttle_every_s))
            ev["throttles"] += 1
        for dd in np.flatnonzero(clock_scale < 1.0).tolist():
            if t_true >= throttled_until[dd]:
                sched.set_clock(names[dd], _MAX_CLOCK_MHZ, now=now)
                clock_scale[dd] = 1.0
        # ---- arrivals since the last turn
        while True:
            a = arrivals.take_until(t_true)
            if a is None:
                break
            submit_arrivals(a)
        # ---- the step
        res = do_step(now)
        ev["steps"] += 1
        _absorb(res)
        for dep in unreported_deps:
            if ledger.kind_of(dep) not in (FAILED, -1):
                raise SoakError(f"submit refused a dependency on {dep}, and the step did not report it failed")
        unreported_deps.clear()
        next_step_at = res.next_step_at

        # ---- bookkeeping once in a while
        if cfg.bad_input_every and ev["loop_turns"] % cfg.bad_input_every == 0:
            bad_input_checks()
            before = counters()
            try:  # a non-finite now is refused, naming the value, and changes nothing
                sched.step(float("nan"))
            except InvalidArgumentError as exc:
                if "nan" not in str(exc).lower():
                    raise SoakError(f"the error for now=NaN does not name it: {exc}") from None
                ev["nonfinite_checked"] += 1
            else:
                raise SoakError("step(NaN) was accepted")
            if counters() != before:
                raise SoakError("a refused step(NaN) changed the scheduler")
        accepted = ledger.next_id - 1
        if accepted >= cfg.requests and not arrivals.done():
            arrivals.stop()
        if accepted >= next_sample:
            take_memory_sample(accepted)
            if warm is None and accepted >= warm_at:
                ledger.retire(rng=rng)
                gc.collect()
                warm = {"accepted": accepted, "ids": ledger.next_id - 1, "rss": _or_minus(rss_bytes()),
                        "heap": _or_minus(heap_bytes()), "gc_objects": len(gc.get_objects()),
                        "ring_bytes": int(ledger.ring.nbytes)}
            next_sample = (accepted // sample_every + 1) * sample_every
        if accepted >= next_progress:
            ledger.retire(rng=rng)
            next_progress = (accepted // progress_every + 1) * progress_every
            if progress is not None:
                el = time.perf_counter() - wall0
                r = rss_bytes()
                progress(
                    f"soak: {accepted:,}/{cfg.requests:,} accepted ({100 * accepted / cfg.requests:.0f} %), "
                    f"{accepted / el:,.0f} req/s wall, {el:.0f} s, virtual {t_true:,.0f} s, "
                    f"RSS {0 if r is None else r / 2**20:.1f} MiB, live id span {ledger.live_span:,}"
                )
        if arrivals.done() and not draining:
            draining = True
        if draining:
            drain_turns += 1
            if not flights and not cancels:
                s = sched.stats()
                live = s["queued"] + s["waiting"] + s["in_flight"] + s["retrying"]
                if live == 0:
                    break
                if live != drain_live:
                    drain_live, drain_since = live, t_true
                elif t_true - drain_since > cfg.stuck_after_s:
                    stuck = [i for i in range(ledger.base, ledger.next_id) if ledger.kind_of(i) == 0][:10]
                    raise SoakError(
                        f"the queue does not drain: {live} requests live ({ {k: s[k] for k in ('queued', 'waiting', 'retrying', 'queued_background', 'queued_strict', 'queued_normal')} }) "
                        f"for {cfg.stuck_after_s:g} virtual s with nothing running; e.g. "
                        + ", ".join(f"{i}: {sched.status(i)}" for i in stuck)
                    )

    # ---- the end: everything ended; the books
    wall = time.perf_counter() - wall0
    ledger.retire(rng=rng)
    gc.collect()
    end = {"rss": _or_minus(rss_bytes()), "heap": _or_minus(heap_bytes()), "gc_objects": len(gc.get_objects())}
    take_memory_sample(cfg.requests)
    stats = sched.stats()
    per_device = stats.pop("devices")
    metrics = _metric_counters(sched)
    status_mismatch = [(i, KINDS[k], sched.status(i)) for i, k in ledger.samples if sched.status(i) != KINDS[k]]

    accepted = ledger.next_id - 1
    checks: list[dict[str, Any]] = []

    def check(name: str, ok: bool, detail: Any = None) -> None:
        checks.append({"name": name, "ok": bool(ok), "detail": detail})

    check("every accepted id retired (ended exactly once)", ledger.base == ledger.next_id,
          {"oldest_live": ledger.base, "next_id": ledger.next_id})
    check("accepted = the requests asked for", accepted == cfg.requests, accepted)
    check("offered = accepted + rejected + dependency-refused",
          ev["offered"] == accepted + ev["rejected"] + ev["dependency_refused"],
          {"offered": ev["offered"], "accepted": accepted, "rejected": ev["rejected"],
           "dependency_refused": ev["dependency_refused"]})
    ledger_by_kind = {KINDS[k]: v for k, v in ledger.tally.items()}
    events_by_kind = {"completed": ev["completed"], "failed": ev["failed_final"] + ev["failed_dependency"],
                      "expired": ev["expired"], "cancelled": ev["cancelled"]}
    stats_by_kind = {k: stats[k] for k in KINDS.values()}
    check("ledger tallies = event counts", ledger_by_kind == events_by_kind,
          {"ledger": ledger_by_kind, "events": events_by_kind})
    check("ledger tallies = stats()", ledger_by_kind == stats_by_kind, {"stats": stats_by_kind})
    check("stats accepted = ids issued", stats["accepted"] == accepted, {"stats": stats["accepted"]})
    check("queue drained", stats["queued"] + stats["waiting"] + stats["in_flight"] + stats["retrying"] == 0,
          {k: stats[k] for k in ("queued", "waiting", "in_flight", "retrying")})
    check("stats conservation_ok", stats["conservation_ok"])
    check("check_invariants()", sched.check_invariants())
    check("stats retried = requeued failures", stats["retried"] == ev["retried"],
          {"stats": stats["retried"], "events": ev["retried"]})
    check("stats dispatched = ids dispatched", stats["dispatched"] == ev["dispatched"],
          {"stats": stats["dispatched"], "events": ev["dispatched"]})
    check("stats rejected = submits refused", stats["rejected"] == ev["rejected"],
          {"stats": stats["rejected"], "events": ev["rejected"]})
    check("stats preempted and migrated = evictions and moves seen",
          stats["preempted"] == ev["preempted"] and stats["migrated"] == ev["migrated"],
          {"stats": [stats["preempted"], stats["migrated"]], "events": [ev["preempted"], ev["migrated"]]})
    if continuous:
        check("running requests were preempted (continuous)", ev["preempted"] > 0, ev["preempted"])
    check("per-device dispatched add up", sum(d["dispatched_requests"] for d in per_device) == stats["dispatched"])
    check("per-device completed add up", sum(d["completed_requests"] for d in per_device) == stats["completed"])
    if metrics is not None:
        want = {k: float(stats[k]) for k in ("accepted", "completed", "failed", "expired", "cancelled", "retried",
                                            "dispatched", "rejected")}
        check("Prometheus counters = stats()", metrics == want, {"metrics": metrics})
    check("status() of sampled ended ids = ledger", not status_mismatch,
          {"sampled": len(ledger.samples), "mismatches": status_mismatch[:5]})
    check("a backward now was clamped (checked)", ev["backward_checked"] > 0, ev["backward_checked"])
    check("faults were injected, and a device came back", ev["batches_failed_down"] > 0
          and ev["request_failures_random"] > 0 and stats["breaker_trips"] > 0 and ev["throttles"] > 0
          and sum(recovered_batches) > 0,
          {"batches_failed_down": ev["batches_failed_down"], "breaker_trips": stats["breaker_trips"],
           "throttles": ev["throttles"], "batches_after_a_down_window": sum(recovered_batches)})
    check("every outcome occurred", all(v > 0 for v in events_by_kind.values()) and ev["retried"] > 0
          and ev["rejected"] > 0, events_by_kind)

    memory = _memory_report(samples, warm, end, ledger)
    for what, label in (("rss", "RSS"), ("heap", "malloc'd bytes")):
        m = memory.get(what)
        if m is None:
            continue
        check(f"{label}: growth after warm-up within bound", m["growth_bytes"] <= m["bound_bytes"],
              {k: m[k] for k in ("growth_bytes", "bound_bytes")})
        check(f"{label}: slope after warm-up within bound", m["slope_bytes_per_id"] <= m["slope_bound_bytes_per_id"],
              {k: m[k] for k in ("slope_bytes_per_id", "slope_bound_bytes_per_id")})
    gco = memory["gc_objects"]
    check("Python objects do not grow", gco["growth"] <= gco["bound"], gco)

    return {
        "config": _jsonable(dataclasses.asdict(cfg)),
        "capsched_version": capsched.__version__ if hasattr(capsched, "__version__") else None,
        "wall_s": round(wall, 2),
        "rate_accepted_per_wall_s": round(accepted / wall, 1),
        "virtual_s": round(t_true, 1),
        "accepted": accepted,
        "outcomes": ledger_by_kind,
        "events": ev,
        "stats": {k: v for k, v in stats.items() if not isinstance(v, float) or math.isfinite(v)},
        "breakers": {d["name"]: {"trips": d["breaker_trips"], "state": d["breaker"]} for d in per_device},
        "device_down_windows": dict(zip(names, faults.windows_started)),
        "device_batches_failed_down": dict(zip(names, down_batches)),
        "device_batches_after_first_down": dict(zip(names, recovered_batches)),
        "clock_readings": clock.counts,
        "clock_jumped_s": round(jumped_s, 1),
        "ledger_max_live_span": ledger.max_span,
        "memory": memory,
        "checks": checks,
    }


def _metric_counters(sched: Scheduler) -> Optional[dict[str, float]]:
    """The scheduler's Prometheus counters (None when prometheus-client is missing)."""
    try:
        from prometheus_client import CollectorRegistry

        from capsched.metrics import register
    except ImportError:
        return None
    reg = CollectorRegistry()
    register(sched, reg)
    out: dict[str, float] = {}
    for k in ("accepted", "completed", "failed", "expired", "cancelled", "retried", "dispatched", "rejected"):
        v = reg.get_sample_value(f"capsched_{k}_total")
        out[k] = math.nan if v is None else float(v)
    return out


def _or_minus(x: Optional[int]) -> int:
    return -1 if x is None else x


#: Fixed allowances over the documented per-id records: allocator granularity (RSS moves
#: by whole pages and whole heap extensions; a queue whose depth differs by a few thousand
#: requests between two samples touches a different number of them).
RSS_ALLOWANCE = 4 * 2**20
HEAP_ALLOWANCE = 1 * 2**20


def _memory_report(
    samples: list[tuple[int, int, int, int]],
    warm: Optional[dict[str, int]],
    end: dict[str, int],
    ledger: IdLedger,
) -> dict[str, Any]:
    """Memory after warm-up against its bound (module docstring, docs/soak.md).

    For RSS and for malloc'd bytes (each when measurable): growth from the warm-up sample
    to the end (queue drained), and the least-squares slope against ids issued over the
    samples after warm-up. Growth bound: what the core documents keeping per id ever
    issued, 3 bits, allocated by doubling (so up to twice that), for every id issued by
    the end; plus the driver's ledger ring growth and a fixed allowance. Slope bound:
    twice 3 bits per id, plus the allowance spread over the ids issued after warm-up."""
    out: dict[str, Any] = {"samples": len(samples)}
    gc_warm = warm["gc_objects"] if warm else end["gc_objects"]
    out["gc_objects"] = {"warm": gc_warm, "end": end["gc_objects"], "growth": end["gc_objects"] - gc_warm,
                         "bound": 1000}
    if warm is None or not samples:
        return out
    ids_window = samples[-1][0] - warm["ids"]
    ring_growth = max(0, int(ledger.ring.nbytes) - warm["ring_bytes"])
    per_id = 2 * DOCUMENTED_BYTES_PER_ID * samples[-1][0]
    out["ids_after_warmup"] = ids_window
    out["documented_bytes_after_warmup"] = int(DOCUMENTED_BYTES_PER_ID * ids_window)
    out["ledger_ring_bytes"] = int(ledger.ring.nbytes)
    after = [smp for smp in samples if smp[0] >= warm["accepted"]]
    for col, what, fixed in ((2, "rss", RSS_ALLOWANCE), (3, "heap", HEAP_ALLOWANCE)):
        if warm[what] < 0 or end[what] < 0:
            continue
        ys = [smp[col] for smp in after]
        if len(after) >= 3 and after[-1][0] > after[0][0]:
            slope = float(np.polyfit(np.array([smp[0] for smp in after], dtype=float), np.array(ys, dtype=float), 1)[0])
        else:
            slope = 0.0
        out[what] = {
            "warm_bytes": warm[what],
            "end_bytes": end[what],
            "max_after_warm_bytes": max(ys + [end[what]]),
            "min_after_warm_bytes": min(ys + [end[what]]),
            "growth_bytes": end[what] - warm[what],
            "growth_pct": round(100.0 * (end[what] - warm[what]) / max(1, warm[what]), 3),
            "bound_bytes": int(per_id + ring_growth + fixed),
            "bound": f"2 x 3/8 B x ids issued by the end + ledger ring growth + {fixed // 2**20} MiB",
            "slope_bytes_per_id": round(slope, 4),
            "slope_bound_bytes_per_id": round(2 * DOCUMENTED_BYTES_PER_ID + fixed / max(1, ids_window), 4),
        }
    out["curve"] = {
        "columns": ["accepted", "offered", "rss_bytes", "heap_bytes"],
        "rows": [list(smp) for smp in samples[:: max(1, len(samples) // 50)]] + [list(samples[-1])],
    }
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def failed_checks(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The checks of a :func:`run_soak` report that failed."""
    return [c for c in report["checks"] if not c["ok"]]


def main(argv: Optional[list[str]] = None) -> int:
    """Command line: run a soak, print a summary (and write the JSON report)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=lambda s: int(s.replace("_", "")), default=10_000_000,
                    help="requests to push through (default 10_000_000; use at least about 1_000_000: the fault "
                    "schedule is set for long runs, and a shorter one may end before a device comes back)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", choices=("batch", "continuous"), default="batch",
                    help="batch: step(now); continuous: step(now, free_slots=...) with preemption")
    ap.add_argument("--json", dest="json_path", default=None, help="write the report here")
    args = ap.parse_args(argv)
    if args.requests < 1000:
        ap.error(f"--requests must be >= 1000, got {args.requests}")
    cfg = SoakConfig(requests=args.requests, seed=args.seed, mode=args.mode)
    report = run_soak(cfg, progress=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    mem = report["memory"]
    print(f"{report['accepted']:,} requests accepted ({report['events']['offered']:,} offered) in {report['wall_s']} s "
          f"({report['rate_accepted_per_wall_s']:,.0f} accepted/s), virtual {report['virtual_s']:,} s")
    print("outcomes:", report["outcomes"])
    for what in ("rss", "heap"):
        m = mem.get(what)
        if m is not None:
            print(f"{what}: warm {m['warm_bytes'] / 2**20:.2f} MiB -> end {m['end_bytes'] / 2**20:.2f} MiB "
                  f"(growth {m['growth_bytes'] / 2**20:+.2f} MiB, bound {m['bound_bytes'] / 2**20:.2f} MiB; "
                  f"slope {m['slope_bytes_per_id']} B/id, bound {m['slope_bound_bytes_per_id']})")
    bad = failed_checks(report)
    for c in report["checks"]:
        print(("ok   " if c["ok"] else "FAIL ") + c["name"] + ("" if c["ok"] else f": {c['detail']}"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
