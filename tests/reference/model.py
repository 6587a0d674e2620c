"""A brute-force, obviously-correct reference model of ``capsched.Scheduler``.

Nothing here is clever: every step re-scores every ready request from scratch at the
step's ``now`` with the keys of docs/policies.md, sorts them by ``(key, id)`` and places
them one by one with the rules of docs/placement.md, scanning every device for every
request. The property tests (tests/test_reference_properties.py) drive the real scheduler
and this model with the same operations and compare the results.

Conventions (docs/policies.md, docs/placement.md, README.md,
cpp/include/capsched/scheduler.hpp):

* ids are issued 1, 2, 3, ... in submission order; a call that raises issues no id;
* time never runs backwards: every ``now`` is clamped to the latest one seen, and a call
  that raises changes nothing (the clock included);
* a request with live, not-yet-completed dependencies is ``waiting``; when the last one
  completes it becomes ``queued`` (keeping its arrival); when one fails, expires or is
  cancelled, the waiting dependents end ``failed``, recursively;
* ``step(now)``: (1) every waiting/queued request with ``deadline <= now`` expires,
  reported in ascending ``(deadline, id)`` order, and then the dependents of the expired
  requests fail; (2) every ready request is keyed at ``now``; (3) placement
  (docs/placement.md): every device's PELT signal is brought up to ``now``; misfits of
  devices whose capacity dropped move to a bigger device; deadline-class requests
  (earliest deadline first) go to their admitting device; then strict-class requests
  (priority with aging) and normal requests (the policy's order) are placed one by one:
  in a symmetric placement group (every device the request may use has the same usable
  capacity, KV budget and energy per token) on the first device with room, otherwise on
  the device that fits it best; a request with no device stops its group for the step;
  (4) ``failed`` lists the dependency failures since the previous step (in the order
  they happened), then those of this step's expiries.

Floating point: every quantity that decides placement (capacities, PELT, utilizations,
spare capacity, scores) is computed with the same operations in the same order as the
core (cpp/src/scheduler.cpp, cpp/include/capsched/pelt.hpp), so decisions agree exactly;
Python floats are IEEE doubles and the core is built with -ffp-contract=off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

POLICIES = ("fcfs", "priority", "edf", "srtf", "weighted")
SCHED_CLASSES = ("deadline", "strict", "normal", "background")

CAPACITY_SCALE = 1024.0
INF = math.inf

LIVE_STATES = ("waiting", "queued", "in_flight", "retrying")
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
    "breaker_failures": 5,
    "breaker_cooldown": 30.0,
    "breaker_degrade": True,
    "max_queued": 2**24,
    "max_queued_per_tenant": 0,
    "max_dependents": 65536,
    "retry_base": 0.1,
    "retry_cap": 10.0,
    "retry_seed": 0,
    # Placement (docs/placement.md; cpp/include/capsched/config.hpp PlacementConfig).
    "fit_margin": 1.25,
    "score_compute": 0.6,
    "score_memory": 0.4,
    "energy_aware": False,
    "pelt_period": 1.0 / 32.0,
    "default_work_per_token": 1e-4,
    "dl_bandwidth_limit": 0.95,
    "defer_late": False,
    "wait_for_fit": False,
    # Batching (docs/batching.md; config.hpp BatchingConfig).
    "max_batch_tokens": 0,
    "preferred_batch_sizes": (),
    "max_queue_delay": 0.0,
    "latency_target": 0.0,
    "preemption": True,
    "dynamic_batching": True,
    # Fair share between tenants (docs/policies.md; config.hpp FairShareConfig).
    "fair_share": False,
    "fair_input_weight": 1.0,
    "fair_output_weight": 2.0,
    "tenant_weights": {},
}
PLACEMENT_KEYS = ("fit_margin", "score_compute", "score_memory", "energy_aware", "pelt_period",
                  "default_work_per_token", "dl_bandwidth_limit")


# --- errors the reference raises (the tests map them onto capsched.errors) -----------


class RefError(Exception):
    """Base of the reference's errors."""


class RefInvalidArgument(RefError):
    """Maps to capsched.errors.InvalidArgumentError (set_clock / set_pressure values)."""


class RefInvalidRequest(RefError):
    """Maps to capsched.errors.InvalidRequestError."""


class RefUnknownRequest(RefError):
    """Maps to capsched.errors.UnknownRequestError."""


class RefRequestState(RefError):
    """Maps to capsched.errors.RequestStateError."""


class RefDependencyError(RefError):
    """Maps to capsched.errors.DependencyError."""


class RefQueueFull(RefError):
    pass


class RefAdmissionError(RefError):
    """Maps to capsched.errors.AdmissionError (deadline class: no device has bandwidth)."""


# --- PELT and util_est (docs/placement.md) --------------------------------------------

#: Decay per period: y^32 = 1/2.
PELT_Y = 0.5 ** (1.0 / 32.0)
#: LOAD_AVG_MAX = 1024 / (1 - y): the sum of an entity that always ran at scale 1.
LOAD_AVG_MAX = 1024.0 / (1.0 - 0.5 ** (1.0 / 32.0))


class RefPelt:
    """Linux's per-entity load tracking, written plainly from docs/placement.md.

    A period is ``period`` seconds = 1024 units. ``update(now, scale)`` counts the time
    since the previous update as running at ``scale``; the first call only records the
    start time. Advancing by ``delta`` units that cross ``p >= 1`` period boundaries::

        sum = sum x y^p + (d1 x y^p + (LOAD_AVG_MAX x (1 - y^p) - 1024) + d3) x scale
        d1  = 1024 - period_contrib
        d3  = (period_contrib + delta) - 1024 p ;  period_contrib = d3

    within one period ``sum += delta x scale``, ``period_contrib += delta``; then
    ``util_avg = sum / (LOAD_AVG_MAX - 1024 + period_contrib)``.
    """

    def __init__(self, period: float) -> None:
        self.period = float(period)
        self.units_per_s = 1024.0 / self.period  # (the core multiplies by it, rounding so)
        self.started = False
        self.last = 0.0
        self.util_sum = 0.0
        self.period_contrib = 0.0
        self.util_avg = 0.0

    def update(self, now: float, scale: float) -> None:
        if not self.started:
            self.started = True
            self.last = now
            return
        if not now > self.last:
            return
        delta = (now - self.last) * self.units_per_s
        self.last = now
        total = self.period_contrib + delta
        p = float(math.floor(total / 1024.0))
        if p > 0.0:
            yp = PELT_Y ** p
            d1 = 1024.0 - self.period_contrib
            d3 = total - p * 1024.0
            d2 = LOAD_AVG_MAX * (1.0 - yp) - 1024.0
            self.util_sum = self.util_sum * yp + (d1 * yp + d2 + d3) * scale
            self.period_contrib = d3
        else:
            self.util_sum = self.util_sum + delta * scale
            self.period_contrib = total
        self.util_avg = self.util_sum / (LOAD_AVG_MAX - 1024.0 + self.period_contrib)


class RefUtilEst:
    """util_est of a request class: EWMA with weight 1/4; estimate = max(ewma, last)."""

    def __init__(self) -> None:
        self.seen = False
        self.ewma = 0.0
        self.last = 0.0

    def sample(self, v: float) -> None:
        self.ewma = self.ewma + (v - self.ewma) / 4.0 if self.seen else v
        self.last = v
        self.seen = True

    @property
    def estimate(self) -> float:
        return self.ewma if self.ewma > self.last else self.last

    def as_dict(self) -> Optional[Dict[str, float]]:
        if not self.seen:
            return None
        return {"ewma": self.ewma, "last": self.last, "estimate": self.estimate}


# --- data ----------------------------------------------------------------------------


@dataclass
class RefDeviceSpec:
    """A device as given to the scheduler (the fields of capsched.Device it uses)."""

    capacity: float = 1.0
    max_inflight_batches: int = 1
    kv_tokens: Optional[int] = None      # None = unlimited
    max_clock_mhz: Optional[float] = None
    clock_mhz: Optional[float] = None    # None = at max clock
    power_w: Optional[float] = None
    tenants: Tuple[str, ...] = ()
    name: str = ""
    prefill_s_per_token: Optional[float] = None
    decode_step_s: Optional[float] = None
    decode_s_per_seq: Optional[float] = None
    pool: Optional[str] = None


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
    tenant: Optional[str] = None
    request_class: Optional[str] = None
    sched_class: str = "normal"
    uclamp_min: float = 0.0
    uclamp_max: float = 1.0
    util: float = 0.0                 # utilization it was placed with
    dl_bw: float = 0.0                # deadline class: reserved bandwidth
    dl_device: Optional[int] = None   # deadline class: the admitting device
    dispatched_at: float = 0.0        # time of its latest dispatch
    seq: int = 0                      # global dispatch sequence number (latest dispatch)
    preemptions: int = 0
    progress: float = 0.0             # seconds it ran before its evictions
    retry_at: float = 0.0             # retrying: when its backoff ends
    pool: Optional[str] = None        # the device pool it must run in (None: any)
    fallback_pool: Optional[str] = None

    @property
    def tokens(self) -> float:
        return float(self.prompt_tokens + self.max_new_tokens)

    @property
    def kv_tokens(self) -> int:
        return self.prompt_tokens + self.max_new_tokens


class RefServiceModel:
    """docs/batching.md: T = (m0 p P + m1 d S + m2 e S B) / clock_scale; multipliers m
    by recursive least squares (forgetting 0.98), clamped to [1/16, 16]."""

    def __init__(self, seed: Tuple[float, float, float]) -> None:
        self.seed = [float(x) for x in seed]
        self.m = [1.0, 1.0, 1.0]
        self.cov = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
        self.samples = 0

    def known(self) -> bool:
        return self.seed[0] > 0.0 or self.seed[1] > 0.0 or self.seed[2] > 0.0

    def estimate(self, prompt: float, steps: float, batch: float) -> float:
        m, sd = self.m, self.seed
        return m[0] * sd[0] * prompt + m[1] * sd[1] * steps + m[2] * sd[2] * steps * batch

    def learn(self, prompt: float, steps: float, batch: float, observed: float) -> None:
        sd, m, cov = self.seed, self.m, self.cov
        z = [sd[0] * prompt, sd[1] * steps, sd[2] * steps * batch]
        lam = 0.98
        pz = [cov[i][0] * z[0] + cov[i][1] * z[1] + cov[i][2] * z[2] for i in range(3)]
        denom = lam + (z[0] * pz[0] + z[1] * pz[1] + z[2] * pz[2])
        err = observed - (m[0] * z[0] + m[1] * z[1] + m[2] * z[2])
        for i in range(3):
            k = pz[i] / denom
            v = m[i] + k * err
            m[i] = min(16.0, max(1.0 / 16.0, v))
        for i in range(3):
            for j in range(3):
                cov[i][j] = (cov[i][j] - pz[i] * pz[j] / denom) / lam
        self.samples += 1


@dataclass
class RefDevice:
    index: int
    capacity_orig: float  # normalised: the strongest device has CAPACITY_SCALE
    max_inflight_batches: int
    pelt: RefPelt
    clock_scale: float = 1.0
    max_clock: float = 1.0
    pressure: float = 0.0
    capacity: float = CAPACITY_SCALE  # usable: capacity_orig x clock_scale x (1 - pressure)
    kv_budget: Optional[int] = None   # None = unlimited
    kv_used: int = 0
    placed_util: float = 0.0
    dl_bw: float = 0.0
    energy: float = 0.0               # power_w / capacity as given (0 = unknown)
    tenants: Tuple[str, ...] = ()
    misfit_check: bool = False
    clock_known: bool = False          # a max clock was given (device spec or set_clock)
    inflight_batches: int = 0
    inflight_requests: int = 0
    dispatched_requests: int = 0
    dispatched_batches: int = 0
    completed_requests: int = 0
    preempted_requests: int = 0
    service: Any = None                # RefServiceModel
    batch_limit: float = 0.0           # adaptive batch size limit (AIMD)

    # Circuit breaker (docs/placement.md).
    breaker: str = "closed"            # closed | open | half_open
    probe_out: bool = False
    consecutive_failures: int = 0
    fail_rate: float = 0.0
    open_until: float = 0.0
    breaker_trips: int = 0
    degrade_on: bool = True            # Config.breaker_degrade
    pool: Optional[str] = None

    def degrade(self) -> float:
        return min(0.9, self.fail_rate) if self.degrade_on else 0.0

    def refresh_capacity(self) -> None:
        self.capacity = self.capacity_orig * self.clock_scale * (1.0 - self.pressure) * \
            (1.0 - self.degrade())


@dataclass
class RefBatch:
    device: int
    members: set
    size: int = 0  # members ever placed in it (those that left early included)
    tokens: int = 0
    prompt: int = 0
    max_new: int = 0
    steps: int = 0
    work: float = 0.0
    dispatched_at: float = 0.0
    counted: bool = True    # batch mode: counts in the device's inflight_batches
    clean: bool = True      # every member that left it completed
    migrant: bool = False
    solo: bool = False
    probe: bool = False     # opened on a half-open device


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
        device_capacities: Optional[Sequence[float]],
        max_inflight: Optional[Sequence[int]],
        policy: str,
        max_batch_size: int,
        config: Any = None,
        max_retries: Optional[int] = None,
        devices: Optional[Sequence[RefDeviceSpec]] = None,
    ) -> None:
        """Devices are either ``device_capacities`` + ``max_inflight`` (plain devices at
        full clock, unlimited memory, shared), or ``devices``: RefDeviceSpec objects."""
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}")
        if devices is None:
            if device_capacities is None or max_inflight is None or \
                    len(device_capacities) != len(max_inflight) or not device_capacities:
                raise ValueError("need one max_inflight per device, and at least one device")
            devices = [RefDeviceSpec(capacity=float(c), max_inflight_batches=int(m))
                       for c, m in zip(device_capacities, max_inflight)]
        devices = list(devices)
        if not devices:
            raise ValueError("need at least one device")
        self.policy = policy
        self.max_batch_size = int(max_batch_size)
        cfg = _config_dict(config)
        if max_retries is not None:
            cfg["max_retries"] = int(max_retries)
        self.cfg = cfg
        self.max_retries = int(cfg["max_retries"])
        self.specs = devices
        top = max(float(s.capacity) for s in devices)
        self.devices: List[RefDevice] = []
        for i, s in enumerate(devices):
            c = float(s.capacity)
            d = RefDevice(
                index=i,
                # docs/placement.md: normalised so that the strongest device is 1024.
                capacity_orig=CAPACITY_SCALE if c == top else c / top * CAPACITY_SCALE,
                max_inflight_batches=int(s.max_inflight_batches),
                pelt=RefPelt(cfg["pelt_period"]),
                kv_budget=None if s.kv_tokens is None else int(s.kv_tokens),
                energy=0.0 if s.power_w is None else float(s.power_w) / c,
                tenants=tuple(s.tenants or ()),
                service=RefServiceModel((float(s.prefill_s_per_token or 0.0), float(s.decode_step_s or 0.0),
                                         float(s.decode_s_per_seq or 0.0))),
                batch_limit=float(max_batch_size),
                degrade_on=bool(cfg["breaker_degrade"]),
                pool=s.pool,
            )
            if s.max_clock_mhz is not None:
                d.max_clock = float(s.max_clock_mhz)
                d.clock_known = True
                cur = d.max_clock if s.clock_mhz is None else float(s.clock_mhz)
                d.clock_scale = cur / d.max_clock
            d.refresh_capacity()
            self.devices.append(d)
        # A tenant listed by some device goes only to the devices that list it.
        self.pinned = {t for d in self.devices for t in d.tenants}
        # Device order: capacity_orig descending, then the order given.
        self.device_order = sorted(range(len(self.devices)),
                                   key=lambda i: (-self.devices[i].capacity_orig, i))
        self.now = -INF
        self.next_id = 1
        self.next_seq = 0
        self.requests: Dict[int, RefRequest] = {}
        self.batches: Dict[int, RefBatch] = {}
        self.next_batch = 0
        self.classes: Dict[Optional[str], RefUtilEst] = {}
        # Per request class: [PELT signal, running contribution] (docs/placement.md).
        self.class_pelt: Dict[Optional[str], List[Any]] = {}
        self.counters = dict(accepted=0, completed=0, failed=0, expired=0, cancelled=0,
                             retried=0, dispatched=0, batches=0, placed_fitting=0,
                             placed_fallback=0, misfits=0, migrated=0, readmitted=0,
                             held=0, trimmed=0, preempted=0, deferred=0, breaker_trips=0)
        self._wait = False
        self._rng = int(cfg.get("retry_seed", 0)) & ((1 << 64) - 1)
        # Fair share (docs/policies.md): per-tenant service counters and the virtual time.
        self.fair = bool(cfg["fair_share"])
        self.vtc: Dict[Optional[str], float] = {}
        self.vtime = 0.0
        self.tenant_weights: Dict[Optional[str], float] = dict(cfg["tenant_weights"] or {})
        # Device pools: a pool is down while every device of it has an open breaker.
        self.pools = {d.pool for d in self.devices if d.pool is not None}
        self.pool_down: Dict[str, bool] = {p: False for p in self.pools}
        # Continuous mode of the current step: slots and KV left per device (KV < 0:
        # not reported, the device's own budget applies).
        self._continuous = False
        self._slots: List[int] = [0] * len(self.devices)
        self._kv: List[int] = [-1] * len(self.devices)
        # The last step's batching outputs.
        self.last_preempted: List[Tuple[int, int]] = []
        self.last_next_step_at = INF
        self.last_held = 0
        # Dependency failures since the last step: a list of events, each a list of
        # (id, reason) in the order the cascade ended them.
        self.pending_failed: List[List[Tuple[int, str]]] = []
        # Groups of the last step's `failed` list (for tests that compare groups as sets).
        self.last_failed_groups: List[List[Tuple[int, str]]] = []
        # The last step's migrations: (id, old device index), in the order they happened.
        self.last_migrated: List[Tuple[int, int]] = []
        # Per-step placement scratch.
        self._step_batch: Dict[int, int] = {}   # device -> batch opened in this step
        self._step_solo: set = set()            # devices whose step batch is a lone request
        self._step_batches: List[Tuple[int, int]] = []  # (batch, device) opened, in order
        # [batch, id, kind (0 fitting, 1 fallback, 2 migrant), kept] in placement order.
        self._step_members: List[List[Any]] = []

    # --- time & keys ---------------------------------------------------------------

    def _clamp(self, now: float) -> float:
        now = float(now)
        if not math.isfinite(now):
            raise RefInvalidRequest(f"now must be finite, got {now!r}")
        return now if now > self.now else self.now

    def key(self, r: RefRequest, now: float) -> float:
        """The policy key of a ready normal-class request at `now` (lower first), per
        docs/policies.md."""
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

    def strict_key(self, r: RefRequest) -> float:
        """Strict (RT-like) class: priority with aging_priority, whatever the policy."""
        return -r.priority + self.cfg["aging_priority"] * r.arrival

    def ready_order(self, now: float) -> List[int]:
        """Every queued normal-class request sorted by (key at now, id)."""
        ready = [r for r in self.requests.values()
                 if r.state == "queued" and r.sched_class == "normal"]
        ready.sort(key=lambda r: (self.key(r, now), r.id))
        return [r.id for r in ready]

    # --- fair share between tenants (docs/policies.md) -------------------------------

    def _lift(self, tenant: Optional[str], sched_class: str, exclude: Optional[RefRequest] = None) -> None:
        """A normal-class request is about to be queued: if its tenant has no other queued
        normal-class request, its counter starts from the virtual time at least."""
        if not self.fair or sched_class != "normal":
            return
        if any(x.state == "queued" and x.sched_class == "normal" and x.tenant == tenant and x is not exclude
               for x in self.requests.values()):
            return
        self.vtc[tenant] = max(self.vtc.get(tenant, 0.0), self.vtime)

    def _enqueue(self, r: RefRequest) -> None:
        """r becomes queued (with the fair-share lift)."""
        self._lift(r.tenant, r.sched_class, r)
        r.state = "queued"

    def fair_cost(self, r: RefRequest) -> float:
        w = self.tenant_weights.get(r.tenant, 1.0)
        c = self.cfg
        return (c["fair_input_weight"] * float(r.prompt_tokens) + c["fair_output_weight"] * float(r.max_new_tokens)) / w

    def _fair_charge(self, r: RefRequest) -> None:
        c = self.vtc.get(r.tenant, 0.0)
        if c > self.vtime:
            self.vtime = c
        self.vtc[r.tenant] = c + self.fair_cost(r)

    def _fair_by_tenant(self, now: float) -> Dict[Optional[str], List[RefRequest]]:
        """Queued normal-class requests per tenant, each list in (key at now, id) order."""
        out: Dict[Optional[str], List[RefRequest]] = {}
        for r in self.requests.values():
            if r.state == "queued" and r.sched_class == "normal":
                out.setdefault(r.tenant, []).append(r)
        for lst in out.values():
            lst.sort(key=lambda r: (self.key(r, now), r.id))
        return out

    def _fair_pick(self, by_tenant: Dict[Optional[str], List[RefRequest]], now: float) -> RefRequest:
        """The tenant with the smallest (counter, head key, head id); its head."""
        t = min(by_tenant, key=lambda t: (self.vtc.get(t, 0.0), self.key(by_tenant[t][0], now), by_tenant[t][0].id))
        return by_tenant[t][0]

    def normal_head(self, now: float) -> Optional[int]:
        """The first normal-class request a placement would take."""
        if not self.fair:
            order = self.ready_order(now)
            return order[0] if order else None
        by_tenant = self._fair_by_tenant(now)
        return self._fair_pick(by_tenant, now).id if by_tenant else None

    def _fair_placement_order(self, now: float) -> Iterable[int]:
        """Strict-class requests, then normal ones chosen one at a time by tenant counter
        (lazily: the counters change as the step dispatches)."""
        strict = [r for r in self.requests.values() if r.state == "queued" and r.sched_class == "strict"]
        strict.sort(key=lambda r: (self.strict_key(r), r.id))
        by_tenant = self._fair_by_tenant(now)
        for r in strict:
            yield r.id
        while by_tenant:
            r = self._fair_pick(by_tenant, now)
            lst = by_tenant[r.tenant]
            lst.pop(0)
            if not lst:
                del by_tenant[r.tenant]
            yield r.id

    def placement_order(self, now: float) -> List[int]:
        """Strict-class requests by (strict key, id), then normal ones in policy order."""
        strict = [r for r in self.requests.values()
                  if r.state == "queued" and r.sched_class == "strict"]
        strict.sort(key=lambda r: (self.strict_key(r), r.id))
        return [r.id for r in strict] + self.ready_order(now)

    def deadline_order(self) -> List[int]:
        """Queued deadline-class requests, earliest deadline first, ties by id."""
        dl = [r for r in self.requests.values()
              if r.state == "queued" and r.sched_class == "deadline"]
        dl.sort(key=lambda r: (r.deadline, r.id))
        return [r.id for r in dl]

    # --- utilization -----------------------------------------------------------------

    def util_of(self, request_class: Optional[str], tokens: float, due: float,
                uclamp_min: float, uclamp_max: float, now: float) -> float:
        """docs/placement.md: W = estimate x tokens; u = 1024 W / (due - now), +inf when
        due <= now; clamped to [1024 uclamp_min, 1024 uclamp_max]."""
        est = self.classes.get(request_class)
        per_token = est.estimate if est is not None and est.seen \
            else float(self.cfg["default_work_per_token"])
        work = per_token * tokens
        left = due - now
        u = CAPACITY_SCALE * work / left if left > 0.0 else INF
        lo = uclamp_min * CAPACITY_SCALE
        hi = uclamp_max * CAPACITY_SCALE
        if u < lo:
            u = lo
        if u > hi:
            u = hi
        return u

    def request_util(self, r: RefRequest, now: float) -> float:
        if not math.isinf(r.deadline):
            due = r.deadline
        elif r.sched_class == "background":  # never urgent: paced from now
            due = now + self.cfg["no_deadline_horizon"]
        else:
            due = r.arrival + self.cfg["no_deadline_horizon"]
        return self.util_of(r.request_class, r.tokens, due, r.uclamp_min, r.uclamp_max, now)

    # --- devices ---------------------------------------------------------------------

    def _touch(self, d: RefDevice, now: float) -> None:
        """Bring d's PELT signal up to `now` at its current occupancy and clock."""
        inv_slots = 1.0 / (float(self.max_batch_size) * float(d.max_inflight_batches))  # (as the core)
        occupancy = min(1.0, float(d.inflight_requests) * inv_slots)
        d.pelt.update(now, occupancy * d.clock_scale * d.capacity_orig)

    def eligible(self, d: RefDevice, tenant: Optional[str], pool: Optional[str] = None,
                 fallback: Optional[str] = None) -> bool:
        """Open to the tenant: a pinned tenant only on devices listing it; any other
        tenant only on devices that list no tenant. A request with a pool: only its
        pool's devices, or its fallback pool's while its pool is down."""
        if pool is not None:
            use = fallback if fallback is not None and self.pool_down.get(pool, False) else pool
            if d.pool != use:
                return False
        if tenant not in self.pinned:
            return not d.tenants
        return tenant in d.tenants

    def group_devices(self, tenant: Optional[str]) -> List[int]:
        """The devices open to the tenant (its placement group), strongest first."""
        return [di for di in self.device_order if self.eligible(self.devices[di], tenant)]

    def group_key(self, tenant: Optional[str]) -> Optional[str]:
        """Group 0 (None) = the shared devices; a pinned tenant has its own group."""
        return tenant if tenant in self.pinned else None

    def symmetric(self, tenant: Optional[str]) -> bool:
        """Linux's SMP-island rule per group: every device of the tenant's group has the
        same usable capacity, KV budget and energy per token."""
        members = [self.devices[di] for di in self.group_devices(tenant)]
        if not members:
            return False
        a = members[0]
        return all(d.capacity == a.capacity and d.kv_budget == a.kv_budget
                   and d.energy == a.energy
                   and all(d.service.seed[k] * d.service.m[k] == a.service.seed[k] * a.service.m[k]
                           for k in range(3))
                   for d in members)

    def class_share(self, d: RefDevice) -> float:
        """One in-flight request's share of its device's invariant occupancy signal."""
        slots = float(self.max_batch_size) * float(d.max_inflight_batches)
        return d.clock_scale * d.capacity_orig / slots

    def _class_enter(self, r: RefRequest, d: RefDevice, now: float) -> None:
        c = self.class_pelt.setdefault(r.request_class, [RefPelt(self.cfg["pelt_period"]), 0.0])
        c[0].update(now, c[1])
        c[1] = c[1] + self.class_share(d)

    def _class_leave(self, r: RefRequest, d: RefDevice, now: float) -> None:
        c = self.class_pelt[r.request_class]
        c[0].update(now, c[1])
        c[1] = c[1] - self.class_share(d)
        if c[1] < 1e-9:
            c[1] = 0.0

    def class_util(self, request_class: Optional[str] = None) -> float:
        """The class's PELT signal decayed to the latest time seen (on a copy)."""
        c = self.class_pelt.get(request_class)
        if c is None:
            return 0.0
        sig = RefPelt(c[0].period)
        sig.__dict__.update(c[0].__dict__)
        sig.update(self.now, c[1])
        return sig.util_avg

    def spare(self, d: RefDevice) -> float:
        return d.capacity - max(d.pelt.util_avg, d.placed_util)

    def has_room(self, di: int, r: RefRequest) -> bool:
        """A candidate: open to r's tenant, room for r in this step (batch size, token
        budget; in continuous mode the free slots reported), KV memory for r."""
        d = self.devices[di]
        if not self.eligible(d, r.tenant, r.pool, r.fallback_pool) or self.device_closed(di):
            return False
        bid = self._step_batch.get(di)
        if not r.batchable and (bid is not None or (self._continuous and d.inflight_requests > 0)):
            return False
        t = r.kv_tokens
        budget = self.cfg["max_batch_tokens"]
        if budget > 0 and bid is not None and self.batches[bid].tokens + t > budget:
            return False
        if self._continuous and self._kv[di] >= 0:
            return t <= self._kv[di]
        return d.kv_budget is None or d.kv_used + t <= d.kv_budget

    def _could_fit(self, r: RefRequest, u: float, bigger_than: Optional[float],
                   min_capacity: float) -> bool:
        """Whether r would fit some device within the bounds once that device is idle
        (u x margin below its whole capacity) and that device ends it in time."""
        return any(self._within_bounds(d, r, bigger_than, min_capacity)
                   and u * self.cfg["fit_margin"] < d.capacity and self.in_time(d, r)
                   for d in (self.devices[di] for di in self.device_order))

    def _within_bounds(self, d: RefDevice, r: RefRequest, bigger_than: Optional[float],
                       min_capacity: float) -> bool:
        """A device choose_device considers at all: bigger than ``bigger_than`` (a
        misfit's device), at least ``min_capacity``, open to r."""
        if bigger_than is not None and not d.capacity > bigger_than:
            return False
        return d.capacity >= min_capacity and self.eligible(d, r.tenant, r.pool, r.fallback_pool)

    def choose_device(self, r: RefRequest, u: float, bigger_than: Optional[float] = None,
                      min_capacity: float = 0.0, can_wait: bool = False
                      ) -> Tuple[Optional[int], bool]:
        """(device, fitted): the best fitting candidate that is in time (score; energy
        first when energy_aware), else the in-time candidate with the largest spare, else
        -- when some device open to r is in time but only late ones have room and
        ``can_wait`` -- (None, False) with ``self._wait`` set, else the late candidate
        with the largest spare; ties in device order. ``bigger_than``: only devices with
        a strictly larger usable capacity (misfits)."""
        c = self.cfg
        best: Optional[int] = None
        fallback: Optional[int] = None
        late: Optional[int] = None
        idle: Optional[int] = None
        fallback_spare, late_spare, idle_spare = -INF, -INF, -INF
        # The fitting choice in two levels (docs/placement.md): per KV budget, the device
        # with the least (energy if energy_aware, -headroom), device order on ties; then
        # across budgets, the lowest energy (energy_aware), the highest score, device
        # order.
        by_budget: Dict[Optional[int], Tuple[Tuple[float, float, int], float, int]] = {}
        any_timely = False
        self._wait = False
        for pos, di in enumerate(self.device_order):
            d = self.devices[di]
            if not self._within_bounds(d, r, bigger_than, min_capacity):
                continue
            timely = self.in_time(d, r)
            any_timely = any_timely or timely
            if not self.has_room(di, r):
                continue
            spare = self.spare(d)
            if u * c["fit_margin"] < spare and timely:
                compute = (spare - u) / CAPACITY_SCALE
                if d.kv_budget is None:
                    memory = 1.0
                else:
                    memory = float(d.kv_budget - d.kv_used - r.kv_tokens) / \
                        float(d.kv_budget if d.kv_budget > 0 else 1)
                score = c["score_compute"] * compute + c["score_memory"] * memory
                if d.kv_budget is None:
                    free = 1.0
                else:
                    free = float(d.kv_budget - d.kv_used) / float(d.kv_budget if d.kv_budget > 0 else 1)
                headroom = c["score_compute"] * (spare / CAPACITY_SCALE) + c["score_memory"] * free
                key = (d.energy if c["energy_aware"] else 0.0, -headroom, pos)
                held = by_budget.get(d.kv_budget)
                if held is None or key < held[0]:
                    by_budget[d.kv_budget] = (key, score, di)
            elif timely:
                if spare > fallback_spare:
                    fallback, fallback_spare = di, spare
                # idle: nothing in flight, no batch of this step yet
                if d.inflight_requests == 0 and self._step_batch.get(di) is None and d.service.known() \
                        and spare > idle_spare:
                    idle, idle_spare = di, spare
            elif spare > late_spare:
                late, late_spare = di, spare
        best_rank: Optional[Tuple[float, float, int]] = None
        for key, score, di in by_budget.values():
            rank = (key[0], -score, key[2])
            if best_rank is None or rank < best_rank:
                best, best_rank = di, rank
        if best is not None:
            return best, True
        if c["wait_for_fit"] and math.isfinite(r.deadline) and can_wait and \
                (fallback is not None or late is not None):
            # it waits in the queue for a device it fits; one that would fit no device
            # even idle runs on an idle device in time, if there is one
            if idle is not None and not self._could_fit(r, u, bigger_than, min_capacity):
                return idle, False
            self._wait = True
            return None, False
        if fallback is not None:
            return fallback, False
        if late is not None and any_timely and can_wait and c["defer_late"]:
            self._wait = True
            return None, False
        return late, False

    def _open_batch(self, di: int) -> int:
        bid = self.next_batch
        self.next_batch += 1
        self.batches[bid] = RefBatch(device=di, members=set(), size=0, counted=not self._continuous)
        d = self.devices[di]
        if not self._continuous:
            d.inflight_batches += 1
        d.dispatched_batches += 1
        if d.breaker == "half_open":
            d.probe_out = True
            self.batches[bid].probe = True
        self.counters["batches"] += 1
        self._step_batch[di] = bid
        self._step_batches.append((bid, di))
        return bid

    def _batch_for(self, di: int) -> int:
        bid = self._step_batch.get(di)
        return self._open_batch(di) if bid is None else bid

    def work_per_token(self, request_class: Optional[str]) -> float:
        est = self.classes.get(request_class)
        return est.estimate if est is not None and est.seen else float(self.cfg["default_work_per_token"])

    def _dispatch(self, r: RefRequest, bid: int, util: float, now: float, kind: int) -> None:
        """kind: 0 placed on a device it fits, 1 fallback, 2 migrant."""
        b = self.batches[bid]
        d = self.devices[b.device]
        r.state = "in_flight"
        r.batch = bid
        r.util = util
        r.dispatched_at = now
        r.seq = self.next_seq
        self.next_seq += 1
        t = r.kv_tokens
        b.members.add(r.id)
        b.size += 1
        b.tokens += t
        b.prompt += r.prompt_tokens
        b.max_new = max(b.max_new, r.max_new_tokens)
        b.work += self.work_per_token(r.request_class) * float(t)
        if b.size == 1:
            b.dispatched_at = now
        if kind == 2:
            b.migrant = True
        if not r.batchable:
            b.solo = True
        d.inflight_requests += 1
        d.dispatched_requests += 1
        d.placed_util += util
        d.kv_used += t
        if self._continuous:
            self._slots[b.device] -= 1
            if self._kv[b.device] >= 0:
                self._kv[b.device] -= t
        self._class_enter(r, d, now)
        self.counters["dispatched"] += 1
        if kind == 0:
            self.counters["placed_fitting"] += 1
        elif kind == 1:
            self.counters["placed_fallback"] += 1
        self._step_members.append([bid, r.id, kind, True, None])  # [4]: the fair counter charged from

    def _undispatch(self, m: List[Any], now: float) -> None:
        """Put a request placed in this step back in the queue, as if never placed."""
        r = self.requests[m[1]]
        b = self.batches[r.batch]
        d = self.devices[b.device]
        b.size -= 1
        if b.size == 0:
            b.clean = False  # a held batch teaches nothing (a trimmed one still does)
        b.tokens -= r.kv_tokens
        b.prompt -= r.prompt_tokens
        d.dispatched_requests -= 1
        self.counters["dispatched"] -= 1
        self.counters["placed_fitting" if m[2] == 0 else "placed_fallback"] -= 1
        if b.size == 0:
            d.dispatched_batches -= 1
            self.counters["batches"] -= 1
        self._leave_batch(r)
        if m[4] is not None:  # give the charge back; queued again without a lift
            self.vtc[r.tenant] = self.vtc.get(r.tenant, 0.0) - self.fair_cost(r)
        r.state = "queued"
        m[3] = False

    def batch_limit(self, d: RefDevice) -> int:
        if not self.cfg["dynamic_batching"] or self.cfg["latency_target"] <= 0.0:
            return self.max_batch_size
        return int(d.batch_limit)

    def device_closed(self, di: int) -> bool:
        """Can take no further batchable request in this step."""
        if di in self._step_solo:
            return True
        d = self.devices[di]
        bid = self._step_batch.get(di)
        if d.breaker == "open":
            return True
        if d.breaker == "half_open" and (d.probe_out if bid is None else self._continuous):
            return True  # one probe batch (one request in continuous mode)
        if self._continuous:
            return self._slots[di] <= 0
        if bid is None:
            return d.inflight_batches >= d.max_inflight_batches
        return self.batches[bid].size >= self.batch_limit(d)

    def in_time(self, d: RefDevice, r: RefRequest) -> bool:
        """With a seeded service model and a deadline: r alone ends in time there."""
        if not d.service.known() or not math.isfinite(r.deadline):
            return True
        return self.now + d.service.estimate(float(r.prompt_tokens), float(r.max_new_tokens), 1.0) / \
            d.clock_scale <= r.deadline

    def service_estimate(self, d: RefDevice, prompt: float, steps: float, batch: float,
                         work: float) -> float:
        if d.service.known():
            return d.service.estimate(prompt, steps, batch) / d.clock_scale
        return work / (d.capacity_orig / CAPACITY_SCALE * d.clock_scale)

    def estimate_service(self, device: int, prompt_tokens: float, steps: float, batch: float) -> float:
        work = float(self.cfg["default_work_per_token"]) * (prompt_tokens + steps * batch)
        return self.service_estimate(self.devices[device], prompt_tokens, steps, batch, work)

    def _batch_finished(self, b: RefBatch, d: RefDevice) -> None:
        took = self.now - b.dispatched_at
        if d.service.known():
            d.service.learn(float(b.prompt), float(b.steps), float(b.size), took * d.clock_scale)
        target = self.cfg["latency_target"]
        if self.cfg["dynamic_batching"] and target > 0.0:
            top = float(self.max_batch_size)
            d.batch_limit = max(1.0, math.floor(d.batch_limit / 2.0)) if took > target \
                else min(top, d.batch_limit + 1.0)

    def _hold_batches(self, now: float) -> None:
        """docs/batching.md, wait or go."""
        c = self.cfg
        delay = c["max_queue_delay"]
        if self._continuous or not c["dynamic_batching"] or delay <= 0.0:
            return
        budget = c["max_batch_tokens"]
        for bid, di in self._step_batches:
            b = self.batches.get(bid)
            if b is None or b.migrant or b.solo or b.size == 0:
                continue
            d = self.devices[di]
            if b.size >= self.batch_limit(d) or (budget > 0 and b.tokens >= budget):
                continue
            members = [m for m in self._step_members if m[0] == bid and m[3]]
            oldest = min(self.requests[m[1]].arrival for m in members)
            due = min(self.requests[m[1]].deadline for m in members)
            go_at = oldest + delay
            if now >= go_at:
                continue
            est = self.service_estimate(d, float(b.prompt), float(b.max_new), float(b.size), b.work)
            latest = due - est
            if now >= latest:
                continue
            keep = 0
            for p in c["preferred_batch_sizes"]:
                if p <= b.size:
                    keep = p
            if keep > 0:
                if keep == b.size:
                    continue
                extra = b.size - keep
                for m in reversed(self._step_members):
                    if extra == 0:
                        break
                    if m[0] == bid and m[3]:
                        self._undispatch(m, now)
                        self.counters["trimmed"] += 1
                        extra -= 1
                continue
            for m in members:
                self._undispatch(m, now)
            self.counters["held"] += 1
            self.last_held += 1
            self.last_next_step_at = min(self.last_next_step_at, min(go_at, latest))

    def _preempt(self, now: float) -> None:
        """docs/batching.md, preemption (continuous mode)."""
        for _ in range(len(self.devices)):
            dl, strict = self.deadline_order(), self._strict_order()
            if dl or strict:
                u = dl[0] if dl else strict[0]
            else:
                u = self.normal_head(now)
            if u is None:
                return
            ur = self.requests[u]
            if not ur.batchable:
                return
            need = ur.kv_tokens
            victim: Optional[RefRequest] = None
            vdev = -1
            for di, d in enumerate(self.devices):
                if ur.sched_class == "deadline":
                    if di != ur.dl_device:
                        continue
                elif not self.eligible(d, ur.tenant, ur.pool, ur.fallback_pool):
                    continue
                if di in self._step_solo or d.breaker != "closed" or self._slots[di] < 0:
                    continue  # (slots -1: a device the server did not report)
                if self._kv[di] >= 0:
                    kv_left = self._kv[di]
                elif d.kv_budget is None:
                    kv_left = 2 ** 62
                else:
                    kv_left = d.kv_budget - d.kv_used
                joiners = self._step_batch.get(di)
                budget = self.cfg["max_batch_tokens"]
                if budget > 0 and joiners is not None and \
                        self.batches[joiners].tokens + need > budget:
                    continue  # the token budget holds it back: no eviction helps
                for v in self.requests.values():
                    if v.state != "in_flight" or self.batches[v.batch].device != di:
                        continue
                    bg = v.sched_class == "background"
                    online_head = ur.sched_class == "normal"  # may evict background work only
                    if (not bg and (online_head or v.sched_class != "normal")) or v.batch == joiners:
                        continue
                    if self._slots[di] + 1 <= 0 or kv_left + v.kv_tokens < need:
                        continue
                    if victim is not None:
                        w = victim
                        wbg = w.sched_class == "background"
                        if bg != wbg:
                            better = bg
                        elif v.priority != w.priority:
                            better = v.priority < w.priority
                        elif v.dispatched_at != w.dispatched_at:
                            better = v.dispatched_at > w.dispatched_at
                        else:
                            better = v.id > w.id
                        if not better:
                            continue
                    victim, vdev = v, di
            if victim is None:
                return
            v = victim
            d = self.devices[vdev]
            self.last_preempted.append((v.id, vdev))
            self.counters["preempted"] += 1
            d.preempted_requests += 1
            v.progress += now - v.dispatched_at
            v.preemptions += 1
            self.batches[v.batch].clean = False
            self._leave_batch(v)
            self._enqueue(v)
            self._slots[vdev] += 1
            if self._kv[vdev] >= 0:
                self._kv[vdev] += v.kv_tokens
            if not self.has_room(vdev, ur):
                return
            bid = self._batch_for(vdev)
            util = ur.dl_bw if ur.sched_class == "deadline" else self.request_util(ur, now)
            self._dispatch(ur, bid, util, now, 0)

    def _place_background(self, now: float) -> None:
        """Background class: only when no online request is left queued; (arrival, id)
        order; each on choose_device's pick if it fits there, else the class stops."""
        if any(r.state == "queued" and r.sched_class != "background" for r in self.requests.values()):
            return
        bg = sorted((r for r in self.requests.values()
                     if r.state == "queued" and r.sched_class == "background"),
                    key=lambda r: (r.arrival, r.id))
        for r in bg:
            u = self.request_util(r, now)
            di, fitted = self.choose_device(r, u, None, 0.0)
            if di is None or not fitted:
                return
            bid = self._batch_for(di)
            if not r.batchable:
                self._step_solo.add(di)
            self._dispatch(r, bid, u, now, 0)

    def _strict_order(self) -> List[int]:
        strict = [r for r in self.requests.values()
                  if r.state == "queued" and r.sched_class == "strict"]
        strict.sort(key=lambda r: (self.strict_key(r), r.id))
        return [r.id for r in strict]

    def _leave_batch(self, r: RefRequest) -> None:
        b = self.batches[r.batch]
        dev = self.devices[b.device]
        self._touch(dev, self.now)  # the time so far counts at the old occupancy
        self._class_leave(r, dev, self.now)
        dev.placed_util -= r.util
        if dev.placed_util < 1e-9:
            dev.placed_util = 0.0  # rounding left over when it empties
        dev.kv_used -= r.kv_tokens
        b.members.discard(r.id)
        dev.inflight_requests -= 1
        if not b.members:
            if b.counted:
                dev.inflight_batches -= 1
            if b.clean and b.counted:
                self._batch_finished(b, dev)
            if b.probe and dev.breaker == "half_open":
                dev.probe_out = False  # ended without a verdict: probe again
            del self.batches[r.batch]
        r.batch = None

    def _end(self, r: RefRequest, state: str) -> None:
        """Count an ending and release a deadline-class reservation."""
        r.state = state
        self.counters[state] += 1
        if r.sched_class == "deadline" and r.dl_device is not None:
            d = self.devices[r.dl_device]
            d.dl_bw -= r.dl_bw
            if d.dl_bw < 1e-9:
                d.dl_bw = 0.0

    def _cascade(self, root: RefRequest) -> List[Tuple[int, str]]:
        """End the waiting dependents of `root` (which ended not-completed) as failed,
        recursively (depth first, dependents in submission order)."""
        out: List[Tuple[int, str]] = []

        def visit(x: RefRequest) -> None:
            for did in x.dependents:
                d = self.requests[did]
                if d.state != "waiting":
                    continue  # already ended (a waiting request cannot be anything else)
                self._end(d, "failed")
                out.append((d.id, f"dependency {x.id} {x.state}"))
                visit(d)

        visit(root)
        return out

    def _get(self, rid: int) -> RefRequest:
        r = self.requests.get(rid)
        if r is None:
            raise RefUnknownRequest(f"unknown request id {rid}")
        return r

    def admit(self, u: float, tenant: Optional[str], pool: Optional[str] = None,
              fallback: Optional[str] = None, deadline: float = INF) -> int:
        """Deadline-class admission: worst fit over the devices open to the tenant,
        room = dl_bandwidth_limit x capacity - dl_bw - u >= 0; ties in device order. A
        device whose breaker is open until the deadline or later is no candidate."""
        best, best_room = None, -INF
        for di in self.device_order:
            d = self.devices[di]
            if not self.eligible(d, tenant, pool, fallback):
                continue
            if d.breaker == "open" and d.open_until >= deadline:
                continue
            room = self.cfg["dl_bandwidth_limit"] * d.capacity - d.dl_bw - u
            if room >= 0.0 and room > best_room:
                best, best_room = di, room
        if best is None:
            raise RefAdmissionError(f"cannot admit: it needs a bandwidth of {u}")
        return best

    # --- public API ----------------------------------------------------------------

    def no_device_open(self, tenant: Optional[str] = None, pool: Optional[str] = None,
                       fallback_pool: Optional[str] = None) -> bool:
        """No device is open to the request (its tenant's devices, in its pool or fallback
        pool): submit refuses it, as it would wait for ever."""
        return not [x for x in self.devices
                    if (tenant in x.tenants if tenant in self.pinned else not x.tenants)
                    and (pool is None or x.pool == pool or (fallback_pool is not None and x.pool == fallback_pool))]

    def never_fits(self, prompt_tokens: int, max_new_tokens: int, tenant: Optional[str] = None,
                   pool: Optional[str] = None, fallback_pool: Optional[str] = None) -> bool:
        """No device open to the request could ever hold it in KV memory (submit refuses
        it: it would block its placement group for good)."""
        open_to = [x for x in self.devices
                   if (tenant in x.tenants if tenant in self.pinned else not x.tenants)
                   and (pool is None or x.pool in (pool, fallback_pool))]
        budgets = [x.kv_budget for x in open_to]
        return bool(budgets) and None not in budgets and \
            int(prompt_tokens) + int(max_new_tokens) > max(b for b in budgets if b is not None)

    def submit(self, prompt_tokens: int, max_new_tokens: int, priority: float,
               timeout: Optional[float], deadline: Optional[float], now: float,
               depends_on: Iterable[int] = (), batchable: bool = True, *,
               tenant: Optional[str] = None, request_class: Optional[str] = None,
               sched_class: str = "normal", uclamp_min: float = 0.0,
               uclamp_max: float = 1.0, pool: Optional[str] = None,
               fallback_pool: Optional[str] = None) -> int:
        now = self._clamp(now)
        deps = list(depends_on)
        # Validate everything before changing anything.
        if timeout is not None and deadline is not None:
            raise RefInvalidRequest("timeout and deadline are exclusive")
        if timeout is not None:
            if not (timeout > 0 and math.isfinite(timeout)):
                raise RefInvalidRequest("timeout must be > 0")
            d = now + float(timeout)
            if not d > now:
                raise RefInvalidRequest("timeout too small to put the deadline after now")
        elif deadline is not None:
            if not (math.isfinite(deadline) and deadline > now):
                raise RefInvalidRequest("deadline must be after now")
            d = float(deadline)
        else:
            d = INF
        if (pool is not None and pool not in self.pools) or (fallback_pool is not None and (
                pool is None or fallback_pool == pool or fallback_pool not in self.pools)):
            raise RefInvalidRequest("bad pool or fallback pool")
        if not (0.0 <= uclamp_min <= uclamp_max <= 1.0):
            raise RefInvalidRequest("bad uclamp")
        if sched_class not in SCHED_CLASSES:
            raise RefInvalidRequest(f"unknown scheduling class {sched_class!r}")
        if sched_class == "deadline" and math.isinf(d):
            raise RefInvalidRequest("a deadline-class request needs a timeout or a deadline")
        if self.no_device_open(tenant, pool, fallback_pool):
            raise RefInvalidRequest("no device is open to the request's tenant (in its pool)")
        if self.never_fits(prompt_tokens, max_new_tokens, tenant, pool, fallback_pool):
            raise RefInvalidRequest("more KV tokens than any device open to it holds")
        if len(set(deps)) != len(deps):
            raise RefDependencyError("depends_on lists an id twice")
        for dep in deps:
            r = self.requests.get(dep)
            if r is None:
                raise RefDependencyError(f"depends_on names unknown request {dep}")
            if r.state in ("failed", "expired", "cancelled"):
                raise RefDependencyError(f"dependency {dep} ended as {r.state}")
            # Fan-out bound: the live requests already waiting on a live dependency.
            if r.state in LIVE_STATES and sum(
                    1 for d in r.dependents if self.requests[d].state == "waiting") >= int(self.cfg["max_dependents"]):
                raise RefDependencyError(f"dependency {dep} already has max_dependents requests waiting on it")
        self.check_room(tenant, 1)
        tokens = float(prompt_tokens) + float(max_new_tokens)
        dl_device, dl_bw = None, 0.0
        if sched_class == "deadline":
            dl_bw = self.util_of(request_class, tokens, d, uclamp_min, uclamp_max, now)
            dl_device = self.admit(dl_bw, tenant, pool, fallback_pool, d)  # raises RefAdmissionError
        live = {dep for dep in deps if self.requests[dep].state in LIVE_STATES}
        if not live:
            self._lift(tenant, sched_class)
        rid = self.next_id
        self.next_id += 1
        self.now = now
        r = RefRequest(id=rid, arrival=now, deadline=d, priority=float(priority),
                       prompt_tokens=int(prompt_tokens), max_new_tokens=int(max_new_tokens),
                       batchable=bool(batchable), state="waiting" if live else "queued",
                       deps=live, tenant=tenant, request_class=request_class,
                       sched_class=sched_class, uclamp_min=float(uclamp_min),
                       uclamp_max=float(uclamp_max), dl_device=dl_device, dl_bw=dl_bw,
                       pool=pool, fallback_pool=fallback_pool)
        if dl_device is not None:
            self.devices[dl_device].dl_bw += dl_bw
        for dep in sorted(live):
            self.requests[dep].dependents.append(rid)
        self.requests[rid] = r
        self.counters["accepted"] += 1
        return rid

    def step_continuous(self, now: float, free_slots: Sequence[int],
                        free_kv: Optional[Sequence[int]] = None):
        """Continuous mode: free_slots[d] requests may join device d; free_kv[d] (< 0 or
        None: not reported) bounds their tokens. Same results as step()."""
        now_c = self._clamp(now)
        if any(int(x) < -1 for x in free_slots):
            raise RefInvalidArgument("free_slots must be >= 0 (or -1: not reported)")
        self._slots = [int(x) for x in free_slots]
        self._kv = [-1] * len(self.devices) if free_kv is None else \
            [int(k) if int(k) >= 0 else -1 for k in free_kv]
        self._continuous = True
        try:
            return self.step(now_c, _continuous=True)
        finally:
            self._continuous = False

    def step(self, now: float, _continuous: bool = False):
        """Returns (batches: [(device_index, [ids])], expired: [ids], failed: [(id, reason)]);
        the step's migrations are in ``last_migrated``, preemptions in ``last_preempted``,
        ``last_next_step_at`` and ``last_held`` as StepResult's."""
        now = self._clamp(now)
        self.now = now
        self._continuous = _continuous
        self.last_preempted = []
        self.last_next_step_at = INF
        self.last_held = 0
        # (1) expire every waiting/queued request due at now, in (deadline, id) order ...
        due = [r for r in self.requests.values()
               if r.state in ("waiting", "queued", "retrying") and r.deadline <= now]
        due.sort(key=lambda r: (r.deadline, r.id))
        # docs/policies.md: "every queued or dependency-waiting request with d <= now ends
        # as expired" -- all of them, a due dependent of a due request included ...
        for r in due:
            self._end(r, "expired")
        expired = [r.id for r in due]
        # ... then the (still waiting) dependents of the expired fail.
        expiry_failed: List[Tuple[int, str]] = []
        for r in due:
            expiry_failed.extend(self._cascade(r))
        # Retries whose backoff has ended are queued again.
        for r in self.requests.values():
            if r.state == "retrying" and r.retry_at <= now:
                self._enqueue(r)
        # (3) placement: PELT up to date, misfits, deadline class, then the rest.
        for d in self.devices:
            self._touch(d, now)
            if d.breaker == "open" and now >= d.open_until:
                d.breaker = "half_open"  # its cool-down ended: one probe
                d.probe_out = False
        self.pool_down = {p: all(d.breaker == "open" for d in self.devices if d.pool == p)
                          for p in self.pools}
        self._step_batch = {}
        self._step_solo = set()
        self._step_batches = []
        self._step_members = []
        vtime_before = self.vtime
        self.last_migrated = self._migrate_misfits(now)
        self._place_deadline(now)
        # (2) key every ready request at now.
        order = self._fair_placement_order(now) if self.fair else self.placement_order(now)
        self._place_by_fitness(order, now)
        # Background work only when no online request is left queued: in batch mode after
        # the online batches are held or trimmed; then its own batches may wait too.
        if not self._continuous:
            self._hold_batches(now)
        self._place_background(now)
        if self._continuous and self.cfg["preemption"]:
            self._preempt(now)
        if not self._continuous:
            self._hold_batches(now)
        if self.fair and any(m[4] is not None and not m[3] for m in self._step_members):
            # Held or trimmed members were given their charge back: V is the largest
            # counter a kept dispatch started from.
            self.vtime = max([vtime_before] + [m[4] for m in self._step_members if m[3] and m[4] is not None])
        retry_ats = [r.retry_at for r in self.requests.values() if r.state == "retrying"]
        if retry_ats:
            self.last_next_step_at = min(self.last_next_step_at, min(retry_ats))
        # The batches in the order they were opened (held ones left out), members in
        # placement order.
        batches: List[Tuple[int, List[int]]] = []
        for bid, dev in self._step_batches:
            ids = [m[1] for m in self._step_members if m[0] == bid and m[3]]
            if ids:
                batches.append((dev, ids))
        # (4) failures since the last step, then this step's.
        groups = self.pending_failed
        if expiry_failed:
            groups = groups + [expiry_failed]
        self.pending_failed = []
        self.last_failed_groups = groups
        failed = [x for g in groups for x in g]
        return batches, expired, failed

    def _migrate_misfits(self, now: float) -> List[Tuple[int, int]]:
        """docs/placement.md, Misfit: devices whose capacity dropped, in index order, each
        device's in-flight requests from the most recently dispatched; a request with
        not (u x fit_margin < capacity) moves to the best device with a strictly larger
        usable capacity that is a candidate and that it fits, if any."""
        moved: List[Tuple[int, int]] = []
        margin = self.cfg["fit_margin"]
        for di, d in enumerate(self.devices):
            if not d.misfit_check:
                continue
            d.misfit_check = False
            self._readmit_deadline(di)
            on_it = [r for r in self.requests.values()
                     if r.state == "in_flight" and self.batches[r.batch].device == di]
            on_it.sort(key=lambda r: -r.seq)
            for r in on_it:
                if r.util * margin < d.capacity:
                    continue
                self.counters["misfits"] += 1
                to, fitted = self.choose_device(r, r.util, bigger_than=d.capacity)
                if to is None or not fitted:
                    continue
                self.batches[r.batch].clean = False
                self._leave_batch(r)
                if r.sched_class == "deadline":  # its reserved bandwidth moves with it
                    d.dl_bw -= r.dl_bw
                    if d.dl_bw < 1e-9:
                        d.dl_bw = 0.0
                    self.devices[to].dl_bw += r.dl_bw
                    r.dl_device = to
                bid = self._batch_for(to)
                if not r.batchable:
                    self._step_solo.add(to)
                self._dispatch(r, bid, r.util, now, 2)
                self.counters["migrated"] += 1
                moved.append((r.id, di))
        return moved

    def _readmit_deadline(self, di: int) -> None:
        """docs/placement.md, Misfit: while a device's admitted deadline bandwidth exceeds
        dl_bandwidth_limit x its (reduced) capacity, its queued deadline-class requests,
        latest deadline first (ties: highest id first), move to the device open to their
        tenant with the most bandwidth left that can take them (device order on ties)."""
        d = self.devices[di]
        lim = self.cfg["dl_bandwidth_limit"]
        if d.dl_bw <= lim * d.capacity:
            return
        queued = [r for r in self.requests.values() if r.state == "queued"
                  and r.sched_class == "deadline" and r.dl_device == di]
        queued.sort(key=lambda r: (-r.deadline, -r.id))
        for r in queued:
            if d.dl_bw <= lim * d.capacity:
                break
            self.counters["misfits"] += 1
            best, best_room = None, -INF
            for to in self.device_order:
                e = self.devices[to]
                if to == di or not self.eligible(e, r.tenant, r.pool, r.fallback_pool):
                    continue
                room = lim * e.capacity - e.dl_bw - r.dl_bw
                if room >= 0.0 and room > best_room:
                    best, best_room = to, room
            if best is None:
                continue
            d.dl_bw -= r.dl_bw
            if d.dl_bw < 1e-9:
                d.dl_bw = 0.0
            self.devices[best].dl_bw += r.dl_bw
            r.dl_device = best
            self.counters["readmitted"] += 1

    def _place_deadline(self, now: float) -> None:
        """Deadline class: EDF (ties by id), each on its admitting device with its
        reserved bandwidth; one that cannot go there waits, and so do those behind it."""
        for rid in self.deadline_order():
            r = self.requests[rid]
            if not self.has_room(r.dl_device, r):
                break
            bid = self._batch_for(r.dl_device)
            if not r.batchable:
                self._step_solo.add(r.dl_device)
            self._dispatch(r, bid, r.dl_bw, now, 0)

    def _place_by_fitness(self, order: Iterable[int], now: float) -> None:
        """Each request in order: in a symmetric group, the first device of its group
        (strongest first) with room; otherwise choose_device's pick, strict ones first
        among devices with capacity >= 1024 x uclamp_min (any device if none is a
        candidate). A request with no device closes its group for the step: nothing of
        that group overtakes it, other groups go on."""
        symmetric = {g: self.symmetric(g) for g in {self.group_key(r.tenant) for r in self.requests.values()}}
        blocked: set = set()
        margin = self.cfg["fit_margin"]
        for rid in order:
            r = self.requests[rid]
            g = self.group_key(r.tenant)
            if g in blocked:
                continue
            u = self.request_util(r, now)

            def general() -> Tuple[Optional[int], bool]:
                if r.sched_class == "strict":
                    di, fitted = self.choose_device(r, u, None, r.uclamp_min * CAPACITY_SCALE, True)
                    if di is None and not self._wait:
                        di, fitted = self.choose_device(r, u, None, 0.0, True)
                    return di, fitted
                return self.choose_device(r, u, None, 0.0, True)

            self._wait = False
            if symmetric[g]:
                # the first device with room; in continuous mode only if r fits it, else
                # the general rule
                di = next((x for x in self.group_devices(r.tenant) if self.has_room(x, r)), None)
                fitted = di is not None and u * margin < self.spare(self.devices[di])
                if di is not None and not fitted and self._continuous:
                    di, fitted = general()
            else:
                di, fitted = general()
            if di is None and self._wait:
                self.counters["deferred"] += 1  # waits for a device that is in time
                continue
            if di is None and r.pool is not None:
                continue  # its pool is full: it waits, holding back no one
            if di is None:
                blocked.add(g)  # its group is full: nothing of it overtakes r
                continue
            bid = self._batch_for(di)
            if not r.batchable:
                self._step_solo.add(di)
            self._dispatch(r, bid, u, now, 0 if fitted else 1)
            if self.fair and r.sched_class == "normal":
                self._step_members[-1][4] = self.vtc.get(r.tenant, 0.0)
                self._fair_charge(r)

    def complete(self, rid: int, now: float, output_tokens: Optional[int] = None) -> None:
        r = self._get(rid)
        if r.state != "in_flight":
            raise RefRequestState(f"request {rid} is {r.state}, not in flight")
        now = self._clamp(now)
        self.now = now
        b = self.batches[r.batch]
        dev = self.devices[b.device]
        dev.completed_requests += 1
        self._device_outcome(dev, False, now)
        out_steps = r.max_new_tokens if output_tokens is None else int(output_tokens)
        b.steps = max(b.steps, out_steps)
        if not b.counted and dev.service.known():  # continuous mode: learn per request
            dev.service.learn(float(r.prompt_tokens), float(out_steps), float(dev.inflight_requests),
                              (now - r.dispatched_at) * dev.clock_scale)
        # util_est sample: its share of the batch's device time, frequency- and
        # capacity-invariant, per token.
        service = now - r.dispatched_at
        sharers = float(b.size) if b.counted else float(dev.inflight_requests)
        work = service * dev.clock_scale * (dev.capacity_orig / CAPACITY_SCALE) / sharers
        self.classes.setdefault(r.request_class, RefUtilEst()).sample(work / r.tokens)
        if self.fair and r.sched_class == "normal" and output_tokens is not None and \
                int(output_tokens) < r.max_new_tokens:  # give back the unused output's charge
            w = self.tenant_weights.get(r.tenant, 1.0)
            self.vtc[r.tenant] = self.vtc.get(r.tenant, 0.0) - \
                self.cfg["fair_output_weight"] * float(r.max_new_tokens - int(output_tokens)) / w
        self._leave_batch(r)
        self._end(r, "completed")
        for did in r.dependents:
            d = self.requests[did]
            if d.state != "waiting":
                continue
            d.deps.discard(rid)
            if not d.deps:
                self._enqueue(d)

    def fail(self, rid: int, now: float, retryable: bool = False, error: str = "") -> bool:
        r = self._get(rid)
        if r.state != "in_flight":
            raise RefRequestState(f"request {rid} is {r.state}, not in flight")
        now = self._clamp(now)
        self.now = now
        self.batches[r.batch].clean = False
        self._device_outcome(self.devices[self.batches[r.batch].device], True, now)
        self._leave_batch(r)
        if retryable and r.retries < self.max_retries:
            at = now + self.retry_delay(r.retries + 1)
            if at < r.deadline:
                r.retries += 1
                self.counters["retried"] += 1
                if at <= now:
                    self._enqueue(r)
                else:
                    r.state = "retrying"
                    r.retry_at = at
                return True
        self._end(r, "failed")
        ev = self._cascade(r)
        if ev:
            self.pending_failed.append(ev)
        return False

    def _device_outcome(self, d: RefDevice, failed: bool, now: float) -> None:
        """Failure-rate EWMA (1/8) and the circuit breaker."""
        d.fail_rate += ((1.0 if failed else 0.0) - d.fail_rate) / 8.0
        if self.cfg["breaker_degrade"]:
            d.refresh_capacity()  # steers new work only: no misfit check
        if not failed:
            d.consecutive_failures = 0
            if d.breaker == "half_open":
                d.breaker = "closed"
            return
        d.consecutive_failures += 1
        threshold = int(self.cfg["breaker_failures"])
        if threshold == 0:
            return
        if d.breaker == "half_open" or (d.breaker == "closed" and d.consecutive_failures >= threshold):
            d.breaker = "open"
            d.open_until = now + float(self.cfg["breaker_cooldown"])
            d.probe_out = False
            d.breaker_trips += 1
            self.counters["breaker_trips"] += 1

    def check_room(self, tenant: Optional[str], n: int) -> None:
        """Back-pressure: waiting + queued + retrying, in all and of the tenant."""
        pending = [r for r in self.requests.values() if r.state in ("waiting", "queued", "retrying")]
        cap, per = int(self.cfg["max_queued"]), int(self.cfg["max_queued_per_tenant"])
        if cap > 0 and len(pending) + n > cap:
            raise RefQueueFull(f"queue full: {len(pending)} + {n} > {cap}")
        mine = sum(1 for r in pending if r.tenant == tenant)
        if per > 0 and mine + n > per:
            raise RefQueueFull(f"tenant queue full: {mine} + {n} > {per}")

    def next_uniform(self) -> float:
        """splitmix64, top 53 bits as a double in [0, 1)."""
        mask = (1 << 64) - 1
        self._rng = (self._rng + 0x9E3779B97F4A7C15) & mask
        z = self._rng
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        z ^= z >> 31
        return float(z >> 11) * 2.0 ** -53

    def retry_delay(self, k: int) -> float:
        """Backoff before the k-th retry: min(cap, base x 2^(k-1)) x (1 + u) / 2."""
        base = float(self.cfg["retry_base"])
        if base <= 0.0:
            return 0.0
        capped = min(float(self.cfg["retry_cap"]), base * 2.0 ** (k - 1))
        return capped * (1.0 + self.next_uniform()) / 2.0

    def cancel(self, rid: int) -> bool:
        r = self._get(rid)
        if r.state in ENDED_STATES:
            return False
        if r.state == "in_flight":
            self.batches[r.batch].clean = False
            self._leave_batch(r)
        self._end(r, "cancelled")
        ev = self._cascade(r)
        if ev:
            self.pending_failed.append(ev)
        return True

    def set_clock(self, device: int, clock: float, max_clock: Optional[float], now: float) -> None:
        """Usable capacity scales with clock / max clock; PELT counts the time so far at
        the old clock; a capacity drop marks the device for the misfit check."""
        now = self._clamp(now)
        d = self.devices[device]
        if max_clock is None and not d.clock_known:
            # The facade (capsched.Scheduler.set_clock): "max_clock_mhz defaults to the
            # one known"; a device never given a max clock has none to default to.
            raise RefInvalidArgument(f"device {device} has no known max clock")
        m = d.max_clock if max_clock is None else float(max_clock)
        if not (math.isfinite(m) and m > 0.0):
            raise RefInvalidArgument(f"max clock must be a finite number > 0, got {m!r}")
        clock = float(clock)
        if not (clock > 0.0 and clock <= m):
            raise RefInvalidArgument(f"current clock must be in (0, {m}], got {clock!r}")
        self.now = now
        self._touch(d, now)
        # The in-flight requests' class contributions change with the clock (the core
        # walks its in-flight list: the most recently dispatched first).
        on_it = sorted((r for r in self.requests.values() if r.state == "in_flight"
                        and self.batches[r.batch].device == device), key=lambda r: -r.seq)
        for r in on_it:
            self._class_leave(r, d, now)
        d.clock_known = True
        d.max_clock = m
        d.clock_scale = clock / m
        for r in on_it:
            self._class_enter(r, d, now)
        before = d.capacity
        d.refresh_capacity()
        if d.capacity < before:
            d.misfit_check = True

    def set_pressure(self, device: int, pressure: float, now: float) -> None:
        now = self._clamp(now)
        d = self.devices[device]
        pressure = float(pressure)
        if not (pressure >= 0.0 and pressure < 1.0):
            raise RefInvalidArgument(f"pressure must be in [0, 1), got {pressure!r}")
        self.now = now
        self._touch(d, now)
        d.pressure = pressure
        before = d.capacity
        d.refresh_capacity()
        if d.capacity < before:
            d.misfit_check = True

    def status(self, rid: int) -> str:
        return self._get(rid).state

    def preemptions(self, rid: int) -> Tuple[int, float]:
        r = self._get(rid)
        if r.state not in LIVE_STATES:
            raise RefRequestState(f"request {rid} already ended")
        return r.preemptions, r.progress

    def class_estimate(self, request_class: Optional[str] = None) -> Optional[Dict[str, float]]:
        est = self.classes.get(request_class)
        return None if est is None else est.as_dict()

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
                   retrying=c["retrying"],
                   now=self.now, policy=self.policy)
        out["conservation_ok"] = self.conservation_ok()
        out["devices"] = [
            dict(capacity=d.capacity, capacity_orig=d.capacity_orig,
                 clock_scale=d.clock_scale, pressure=d.pressure,
                 util_avg=d.pelt.util_avg, placed_util=d.placed_util, dl_bw=d.dl_bw,
                 kv_budget=-1 if d.kv_budget is None else d.kv_budget, kv_used=d.kv_used,
                 max_inflight_batches=d.max_inflight_batches,
                 inflight_batches=d.inflight_batches, inflight_requests=d.inflight_requests,
                 dispatched_requests=d.dispatched_requests,
                 dispatched_batches=d.dispatched_batches,
                 completed_requests=d.completed_requests,
                 preempted_requests=d.preempted_requests, batch_limit=d.batch_limit,
                 service_samples=d.service.samples, breaker=d.breaker,
                 consecutive_failures=d.consecutive_failures, fail_rate=d.fail_rate,
                 breaker_trips=d.breaker_trips,
                 service_multipliers=tuple(d.service.m))
            for d in self.devices
        ]
        return out

    def conservation_ok(self) -> bool:
        c = self.counts()
        k = self.counters
        return (k["accepted"] == len(self.requests)
                and k["accepted"] == k["completed"] + k["failed"] + k["expired"]
                + k["cancelled"] + c["waiting"] + c["queued"] + c["in_flight"] + c["retrying"]
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
            counted = [b for b in bs if b.counted]  # continuous-mode batches are not
            if dev.inflight_batches != len(counted) or dev.inflight_batches > dev.max_inflight_batches:
                return False
            if dev.inflight_requests != sum(len(b.members) for b in bs):
                return False
            members = [self.requests[m] for b in bs for m in b.members]
            if dev.kv_used != sum(r.kv_tokens for r in members):
                return False
            # (kv_used may exceed kv_budget: in continuous mode the free KV the server
            # reports governs, not the budget the device was described with.)
            util = sum(r.util for r in members)
            if abs(util - dev.placed_util) > 1e-6 * (1.0 + util):
                return False
            dl = sum(r.dl_bw for r in self.requests.values()
                     if r.sched_class == "deadline" and r.dl_device == di
                     and r.state in LIVE_STATES)
            if abs(dl - dev.dl_bw) > 1e-6 * (1.0 + dl):
                return False
            if not dev.capacity == dev.capacity_orig * dev.clock_scale * (1.0 - dev.pressure) * \
                    (1.0 - dev.degrade()):
                return False
        for bid, b in self.batches.items():
            if not b.members or b.size < len(b.members):
                return False
            for m in b.members:
                if self.requests[m].batch != bid or self.requests[m].state != "in_flight":
                    return False
        return True
