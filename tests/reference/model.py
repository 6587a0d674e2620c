"""A brute-force, obviously-correct reference model of ``capsched.Scheduler``.

Nothing here is clever: every step re-scores every ready request from scratch at the
step's ``now`` with the keys of docs/policies.md, sorts them by ``(key, id)`` and deals
them out to the devices. The property tests (tests/test_reference_properties.py) drive
the real scheduler and this model with the same operations and compare the results.

Conventions (docs/policies.md, docs/api-contract.md, cpp/include/capsched/scheduler.hpp):

* ids are issued 1, 2, 3, ... in submission order; a call that raises issues no id;
* time never runs backwards: every ``now`` is clamped to the latest one seen, and a call
  that raises changes nothing (the clock included);
* a request with live, not-yet-completed dependencies is ``waiting``; when the last one
  completes it becomes ``queued`` (keeping its arrival); when one fails, expires or is
  cancelled, the waiting dependents end ``failed``, recursively;
* ``step(now)``: (1) every waiting/queued request with ``deadline <= now`` expires,
  reported in ascending ``(deadline, id)`` order, and then the dependents of the expired
  requests fail; (2) every ready request is keyed at ``now`` and sorted by ``(key, id)``;
  (3) devices, strongest first (normalised capacity descending, then index), each with a
  free batch slot take up to ``max_batch_size`` requests into one batch, a non-batchable
  request always forming a batch on its own; (4) ``failed`` lists the dependency failures
  since the previous step (in the order they happened), then those of this step's
  expiries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

POLICIES = ("fcfs", "priority", "edf", "srtf", "weighted")

CAPACITY_SCALE = 1024.0
INF = math.inf

LIVE_STATES = ("waiting", "queued", "in_flight")
ENDED_STATES = ("completed", "failed", "expired", "cancelled")

# Config field names of capsched.Config, with their documented defaults.
CONFIG_DEFAULTS: Dict[str, Any] = {
    "weight_urgency": 0.5,
    "weight_resource": 0.3,
    "weight_deadline": 0.2,
    "resource_scale_tokens": 4096.0,
    "deadline_levels": 16,
    "aging_priority": 0.01,
    "aging_weighted": 0.01,
    "aging_srtf": 64.0,
    "aging_edf": 0.0,
    "no_deadline_horizon": 60.0,
    "max_retries": 3,
}


# --- errors the reference raises (the tests map them onto capsched.errors) -----------


class RefError(Exception):
    """Base of the reference's errors."""


class RefInvalidRequest(RefError):
    """Maps to capsched.errors.InvalidRequestError."""


class RefUnknownRequest(RefError):
    """Maps to capsched.errors.UnknownRequestError."""


class RefRequestState(RefError):
    """Maps to capsched.errors.RequestStateError."""


class RefDependencyError(RefError):
    """Maps to capsched.errors.DependencyError."""


# --- data ----------------------------------------------------------------------------


@dataclass
class RefRequest:
    id: int
    arrival: float
    deadline: float
    priority: float
    prompt_tokens: int
    max_new_tokens: int
    batchable: bool
    state: str
    deps: set  # ids of live dependencies that have not completed yet
    dependents: List[int] = field(default_factory=list)  # in submission order
    retries: int = 0
    batch: Optional[int] = None

    @property
    def tokens(self) -> float:
        return float(self.prompt_tokens + self.max_new_tokens)


@dataclass
class RefDevice:
    index: int
    capacity: float  # normalised: the strongest device has CAPACITY_SCALE
    max_inflight_batches: int
    inflight_batches: int = 0
    inflight_requests: int = 0
    dispatched_requests: int = 0
    dispatched_batches: int = 0
    completed_requests: int = 0


@dataclass
class RefBatch:
    device: int
    members: set


def _config_dict(config: Any) -> Dict[str, Any]:
    """A plain dict of the Config fields from None, a dict or a capsched.Config."""
    out = dict(CONFIG_DEFAULTS)
    if config is None:
        return out
    if isinstance(config, dict):
        for k, v in config.items():
            if k in out:
                out[k] = v
        return out
    for k in list(out):
        if hasattr(config, k):
            out[k] = getattr(config, k)
    return out


def weighted_level_bruteforce(deadline: float, now: float, q_levels: int) -> int:
    """L = #{k in 1..Q : now >= d + 1 - Q/k}, exactly as documented (IEEE doubles)."""
    if math.isinf(deadline):
        return 0
    q = float(q_levels)
    level = 0
    for k in range(1, q_levels + 1):
        if now >= deadline + 1.0 - q / float(k):
            level += 1
    return level


def weighted_level(deadline: float, now: float, q_levels: int) -> int:
    """The same count by bisection (the brute force is too slow for Q = 1024 in the
    property tests). c_k = (d + 1.0) - Q/k is non-decreasing in k in IEEE doubles too
    (correctly rounded division and subtraction are monotone), so the k with now >= c_k
    are exactly 1..L. tests/test_reference_properties.py checks this against the brute
    force."""
    if math.isinf(deadline):
        return 0
    q = float(q_levels)
    lo, hi = 0, q_levels  # invariant: c_k <= now for k <= lo; c_k > now for k > hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if now >= deadline + 1.0 - q / float(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


class ReferenceScheduler:
    def __init__(
        self,
        device_capacities: Sequence[float],
        max_inflight: Sequence[int],
        policy: str,
        max_batch_size: int,
        config: Any = None,
        max_retries: Optional[int] = None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}")
        if len(device_capacities) != len(max_inflight) or not device_capacities:
            raise ValueError("need one max_inflight per device, and at least one device")
        self.policy = policy
        self.max_batch_size = int(max_batch_size)
        cfg = _config_dict(config)
        if max_retries is not None:
            cfg["max_retries"] = int(max_retries)
        self.cfg = cfg
        self.max_retries = int(cfg["max_retries"])
        top = max(float(c) for c in device_capacities)
        self.devices = [
            RefDevice(i, float(c) / top * CAPACITY_SCALE, int(m))
            for i, (c, m) in enumerate(zip(device_capacities, max_inflight))
        ]
        # Strongest first: normalised capacity descending, then device order.
        self.device_order = sorted(range(len(self.devices)),
                                   key=lambda i: (-self.devices[i].capacity, i))
        self.now = -INF
        self.next_id = 1
        self.requests: Dict[int, RefRequest] = {}
        self.batches: Dict[int, RefBatch] = {}
        self.next_batch = 0
        self.counters = dict(accepted=0, completed=0, failed=0, expired=0, cancelled=0,
                             retried=0, dispatched=0, batches=0)
        # Dependency failures since the last step: a list of events, each a list of
        # (id, reason) in the order the cascade ended them.
        self.pending_failed: List[List[Tuple[int, str]]] = []
        # Groups of the last step's `failed` list (for tests that compare groups as sets).
        self.last_failed_groups: List[List[Tuple[int, str]]] = []

    # --- time & keys ---------------------------------------------------------------

    def _clamp(self, now: float) -> float:
        now = float(now)
        if not math.isfinite(now):
            raise RefInvalidRequest(f"now must be finite, got {now!r}")
        return now if now > self.now else self.now

    def key(self, r: RefRequest, now: float) -> float:
        """The policy key of a ready request at `now` (lower first), per docs/policies.md."""
        c = self.cfg
        a = r.arrival
        if self.policy == "fcfs":
            return a
        if self.policy == "priority":
            return -r.priority + c["aging_priority"] * a
        if self.policy == "edf":
            d_eff = r.deadline if math.isfinite(r.deadline) else a + c["no_deadline_horizon"]
            return d_eff + c["aging_edf"] * a
        if self.policy == "srtf":
            return r.tokens + c["aging_srtf"] * a
        # weighted
        u = min(1.0, r.tokens / c["resource_scale_tokens"])
        res = 0.1 / (u + 0.1)
        score_base = c["weight_urgency"] * r.priority + c["weight_resource"] * res
        q_levels = int(c["deadline_levels"])
        level = weighted_level(r.deadline, now, q_levels)
        return -(score_base + c["weight_deadline"] * (level / float(q_levels))) + \
            c["aging_weighted"] * a

    def ready_order(self, now: float) -> List[int]:
        """Every queued request sorted by (key at now, id)."""
        ready = [r for r in self.requests.values() if r.state == "queued"]
        ready.sort(key=lambda r: (self.key(r, now), r.id))
        return [r.id for r in ready]

    # --- helpers -------------------------------------------------------------------

    def _get(self, rid: int) -> RefRequest:
        r = self.requests.get(rid)
        if r is None:
            raise RefUnknownRequest(f"unknown request id {rid}")
        return r

    def _leave_batch(self, r: RefRequest) -> None:
        b = self.batches[r.batch]
        b.members.discard(r.id)
        dev = self.devices[b.device]
        dev.inflight_requests -= 1
        if not b.members:
            dev.inflight_batches -= 1
            del self.batches[r.batch]
        r.batch = None

    def _cascade(self, root: RefRequest) -> List[Tuple[int, str]]:
        """End the waiting dependents of `root` (which ended not-completed) as failed,
        recursively (depth first, dependents in submission order)."""
        out: List[Tuple[int, str]] = []

        def visit(x: RefRequest) -> None:
            for did in x.dependents:
                d = self.requests[did]
                if d.state != "waiting":
                    continue  # already ended (a waiting request cannot be anything else)
                d.state = "failed"
                self.counters["failed"] += 1
                out.append((d.id, f"dependency {x.id} {x.state}"))
                visit(d)

        visit(root)
        return out

    # --- public API ----------------------------------------------------------------

    def submit(self, prompt_tokens: int, max_new_tokens: int, priority: float,
               timeout: Optional[float], deadline: Optional[float], now: float,
               depends_on: Iterable[int] = (), batchable: bool = True) -> int:
        now = self._clamp(now)
        deps = list(depends_on)
        # Validate everything before changing anything.
        if timeout is not None and deadline is not None:
            raise RefInvalidRequest("timeout and deadline are exclusive")
        if timeout is not None:
            if not (timeout > 0 and math.isfinite(timeout)):
                raise RefInvalidRequest("timeout must be > 0")
            d = now + float(timeout)
        elif deadline is not None:
            if not (math.isfinite(deadline) and deadline > now):
                raise RefInvalidRequest("deadline must be after now")
            d = float(deadline)
        else:
            d = INF
        if len(set(deps)) != len(deps):
            raise RefDependencyError("depends_on lists an id twice")
        for dep in deps:
            r = self.requests.get(dep)
            if r is None:
                raise RefDependencyError(f"depends_on names unknown request {dep}")
            if r.state in ("failed", "expired", "cancelled"):
                raise RefDependencyError(f"dependency {dep} ended as {r.state}")
        live = {dep for dep in deps if self.requests[dep].state in LIVE_STATES}
        rid = self.next_id
        self.next_id += 1
        self.now = now
        r = RefRequest(id=rid, arrival=now, deadline=d, priority=float(priority),
                       prompt_tokens=int(prompt_tokens), max_new_tokens=int(max_new_tokens),
                       batchable=bool(batchable), state="waiting" if live else "queued",
                       deps=live)
        for dep in sorted(live):
            self.requests[dep].dependents.append(rid)
        self.requests[rid] = r
        self.counters["accepted"] += 1
        return rid

    def step(self, now: float):
        """Returns (batches: [(device_index, [ids])], expired: [ids], failed: [(id, reason)])."""
        now = self._clamp(now)
        self.now = now
        # (1) expire every waiting/queued request due at now, in (deadline, id) order ...
        due = [r for r in self.requests.values()
               if r.state in ("waiting", "queued") and r.deadline <= now]
        due.sort(key=lambda r: (r.deadline, r.id))
        # docs/policies.md: "every queued or dependency-waiting request with d <= now ends
        # as expired" -- all of them, a due dependent of a due request included ...
        for r in due:
            r.state = "expired"
            self.counters["expired"] += 1
        expired = [r.id for r in due]
        # ... then the (still waiting) dependents of the expired fail.
        expiry_failed: List[Tuple[int, str]] = []
        for r in due:
            expiry_failed.extend(self._cascade(r))
        # (2) key every ready request at now.
        order = self.ready_order(now)
        # (3) deal them out, strongest device first.
        batches: List[Tuple[int, List[int]]] = []
        pos = 0
        for di in self.device_order:
            if pos >= len(order):
                break
            dev = self.devices[di]
            if dev.inflight_batches >= dev.max_inflight_batches:
                continue
            batch: List[int] = []
            while pos < len(order) and len(batch) < self.max_batch_size:
                r = self.requests[order[pos]]
                if not r.batchable:
                    if not batch:
                        batch.append(r.id)
                        pos += 1
                    break
                batch.append(r.id)
                pos += 1
            assert batch
            bid = self.next_batch
            self.next_batch += 1
            self.batches[bid] = RefBatch(device=di, members=set(batch))
            for rid in batch:
                r = self.requests[rid]
                r.state = "in_flight"
                r.batch = bid
            dev.inflight_batches += 1
            dev.inflight_requests += len(batch)
            dev.dispatched_requests += len(batch)
            dev.dispatched_batches += 1
            self.counters["dispatched"] += len(batch)
            self.counters["batches"] += 1
            batches.append((di, batch))
        # (4) failures since the last step, then this step's.
        groups = self.pending_failed
        if expiry_failed:
            groups = groups + [expiry_failed]
        self.pending_failed = []
        self.last_failed_groups = groups
        failed = [x for g in groups for x in g]
        return batches, expired, failed

    def complete(self, rid: int, now: float) -> None:
        r = self._get(rid)
        if r.state != "in_flight":
            raise RefRequestState(f"request {rid} is {r.state}, not in flight")
        now = self._clamp(now)
        self.now = now
        dev = self.devices[self.batches[r.batch].device]
        self._leave_batch(r)
        dev.completed_requests += 1
        r.state = "completed"
        self.counters["completed"] += 1
        for did in r.dependents:
            d = self.requests[did]
            if d.state != "waiting":
                continue
            d.deps.discard(rid)
            if not d.deps:
                d.state = "queued"

    def fail(self, rid: int, now: float, retryable: bool = False, error: str = "") -> bool:
        r = self._get(rid)
        if r.state != "in_flight":
            raise RefRequestState(f"request {rid} is {r.state}, not in flight")
        now = self._clamp(now)
        self.now = now
        self._leave_batch(r)
        if retryable and r.retries < self.max_retries and now < r.deadline:
            r.retries += 1
            self.counters["retried"] += 1
            r.state = "queued"
            return True
        r.state = "failed"
        self.counters["failed"] += 1
        ev = self._cascade(r)
        if ev:
            self.pending_failed.append(ev)
        return False

    def cancel(self, rid: int) -> bool:
        r = self._get(rid)
        if r.state in ENDED_STATES:
            return False
        if r.state == "in_flight":
            self._leave_batch(r)
        r.state = "cancelled"
        self.counters["cancelled"] += 1
        ev = self._cascade(r)
        if ev:
            self.pending_failed.append(ev)
        return True

    def status(self, rid: int) -> str:
        return self._get(rid).state

    # --- observation ---------------------------------------------------------------

    def counts(self) -> Dict[str, int]:
        c = {s: 0 for s in LIVE_STATES + ENDED_STATES}
        for r in self.requests.values():
            c[r.state] += 1
        return c

    def stats(self) -> Dict[str, Any]:
        c = self.counts()
        out: Dict[str, Any] = dict(self.counters)
        out.update(waiting=c["waiting"], queued=c["queued"], in_flight=c["in_flight"],
                   now=self.now, policy=self.policy)
        out["conservation_ok"] = self.conservation_ok()
        out["devices"] = [
            dict(capacity=d.capacity, max_inflight_batches=d.max_inflight_batches,
                 inflight_batches=d.inflight_batches, inflight_requests=d.inflight_requests,
                 dispatched_requests=d.dispatched_requests,
                 dispatched_batches=d.dispatched_batches,
                 completed_requests=d.completed_requests)
            for d in self.devices
        ]
        return out

    def conservation_ok(self) -> bool:
        c = self.counts()
        k = self.counters
        return (k["accepted"] == len(self.requests)
                and k["accepted"] == k["completed"] + k["failed"] + k["expired"]
                + k["cancelled"] + c["waiting"] + c["queued"] + c["in_flight"]
                and all(k[s] == c[s] for s in ENDED_STATES))

    def check_invariants(self) -> bool:
        """Self-consistency of the model (for the model's own tests)."""
        if not self.conservation_ok():
            return False
        for r in self.requests.values():
            if (r.state == "in_flight") != (r.batch is not None):
                return False
            if r.state == "waiting":
                if not r.deps:
                    return False
                if any(self.requests[d].state not in LIVE_STATES for d in r.deps):
                    return False
            if r.state == "queued" and r.deps:
                return False
        for di, dev in enumerate(self.devices):
            bs = [b for b in self.batches.values() if b.device == di]
            if dev.inflight_batches != len(bs) or dev.inflight_batches > dev.max_inflight_batches:
                return False
            if dev.inflight_requests != sum(len(b.members) for b in bs):
                return False
        for bid, b in self.batches.items():
            if not b.members:
                return False
            for m in b.members:
                if self.requests[m].batch != bid or self.requests[m].state != "in_flight":
                    return False
        return True
