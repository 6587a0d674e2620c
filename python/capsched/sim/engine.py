"""The discrete-event engine: iteration-level continuous batching in virtual time.

Every device runs **iterations**, as vLLM does: an iteration prefills the prompts of the
sequences that join in it (whole prompts) and generates one token for every sequence
already running; it takes :meth:`CostModel.step_time` of those tokens. A sequence's
prefill iteration yields its first token (TTFT); it then needs ``output_tokens - 1``
decode iterations and leaves at the end of the iteration that produced its last token.
Each device has the same limits under every policy: at most ``max_num_seqs`` sequences,
and a KV-cache budget: a running sequence reserves ``prompt + output`` tokens (the
simulator knows each request's output length; a real server reserves up to its
``max_new_tokens`` or grows the reservation and preempts).

Policies (:mod:`capsched.sim.policies`):

* the baselines bind each request to a device queue at arrival, among the devices whose
  KV budget can hold it (one no device can hold fails at arrival: :func:`unservable`); a
  device pulls its queue first come, first served into free slots at each iteration
  boundary (head-of-line: a request whose KV does not fit waits, and the ones behind it
  too);
* ``capsched`` submits each request to one real :class:`capsched.Scheduler` (deadline =
  the request's SLO deadline, ``max_new_tokens`` = its output length) and calls
  :meth:`Scheduler.step` at every device iteration boundary and on arrivals while a
  device is idle; what a step returns joins the named device at its next iteration
  boundary. Completions go to :meth:`Scheduler.complete`, failures to
  :meth:`Scheduler.fail` (``retryable=True``), expired requests are dropped, migrated
  and preempted ones are stopped where they ran.

Faults (:class:`Fault`): a device goes down for an interval; its running and queued
requests fail and are retried (baselines: re-bound by the same policy, up to
``max_retries`` times; capsched: ``Scheduler.fail(retryable=True)``). Slowdowns
(:class:`Slowdown`): a device's clock drops to a share of its max for an interval
(:meth:`CostModel.with_clock_scale`; capsched is told with :meth:`Scheduler.set_clock`);
an iteration in progress when the clock changes does the rest of its work at the new
clock.

Events at the same instant: fault and slowdown starts and ends first, then arrivals,
then the rest in the order they were queued.
"""

from __future__ import annotations

import dataclasses
import heapq
import inspect
import math
import numbers
import re
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from ..errors import AdmissionError, CapschedError, ConfigError, QueueFullError
from ..request import MAX_TOKENS
from .cost import CostModel
from .fleet import Fleet, SimDevice
from .policies import POLICIES, make_policy
from .workload import Workload

if TYPE_CHECKING:
    from ..scheduler import Scheduler

__all__ = [
    "Fault",
    "Slowdown",
    "SimResult",
    "Simulation",
    "simulate",
    "deadlines_for",
    "parse_fault",
    "parse_slowdown",
    "unservable",
    "DEADLINE_FACTOR",
    "MAX_SIM_TIME",
    "MIN_CLOCK_SCALE",
    "DONE",
    "FAILED",
    "EXPIRED",
    "PENDING",
    "PROGRESS_STEPS",
]

#: A run's ``progress`` callback is called each time another 1/PROGRESS_STEPS of its
#: requests have ended.
PROGRESS_STEPS = 10

#: Deadline = arrival + DEADLINE_FACTOR x the request's unloaded service time on the
#: fastest card of the fleet.
DEADLINE_FACTOR = 5.0

#: The latest time (seconds) of an arrival, or of a fault's or slowdown's end or a
#: restart: 1e9 s (about 32 years), so that a run stays well inside the Scheduler clock's
#: +-1e15 s and float64 times keep sub-microsecond resolution. Later ones are refused
#: before anything runs (they would fail half-way through a run).
MAX_SIM_TIME = 1e9

#: The lowest clock share a :class:`Slowdown` may give (1 %: an iteration takes at most
#: about 100 x its time at the max clock). A lower one is refused: a clock near 0 would
#: stretch the iterations it runs past any time the simulator can represent.
MIN_CLOCK_SCALE = 0.01

# Request outcomes.
PENDING, DONE, FAILED, EXPIRED = 0, 1, 2, 3

#: Pressure given to the Scheduler for a device that is down (its capacity x 0.001).
_DOWN_PRESSURE = 0.999

_ARRIVAL, _ITER_END, _FAULT_START, _FAULT_END, _SLOW_START, _SLOW_END, _WAKE, _RESTART = range(8)
#: Handled before an arrival at the same instant.
_DEVICE_EVENTS = frozenset((_FAULT_START, _FAULT_END, _SLOW_START, _SLOW_END))


def _interval_problem(start: object, duration: object, scale: object = 1.0) -> Optional[str]:
    """What is wrong with a fault's or slowdown's numbers (None: nothing)."""
    for name, v in (("START", start), ("DURATION", duration), ("CLOCK_SCALE", scale)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            return f"{name} must be a number, got {v!r}"
    assert isinstance(start, numbers.Real) and isinstance(duration, numbers.Real) and isinstance(scale, numbers.Real)
    s, d, c = float(start), float(duration), float(scale)
    if not (math.isfinite(s) and s >= 0 and math.isfinite(d) and d > 0):
        return "START must be >= 0 and DURATION > 0 (seconds)"
    if not math.isfinite(s + d):
        return "START + DURATION must be a finite time"
    if s + d > MAX_SIM_TIME:
        return f"START + DURATION must be at most {MAX_SIM_TIME:g} s (the simulator's time range)"
    if not (MIN_CLOCK_SCALE <= c <= 1):
        return f"CLOCK_SCALE must be in (0, 1] and at least {MIN_CLOCK_SCALE:g} (a share of the max clock), got {c!r}"
    return None


def _check_event(ev: object, kind: type) -> None:
    if not isinstance(ev, kind):
        raise ConfigError(f"a {kind.__name__.lower()} must be a {kind.__name__}, got {ev!r}")
    device = getattr(ev, "device")
    if not isinstance(device, str) or not device:
        raise ConfigError(f"bad {kind.__name__.lower()} {ev!r}: device must be a device name, got {device!r}")
    why = _interval_problem(getattr(ev, "start_s"), getattr(ev, "duration_s"), getattr(ev, "clock_scale", 1.0))
    if why is not None:
        raise ConfigError(f"bad {kind.__name__.lower()} {ev!r}: {why}")


@dataclasses.dataclass(frozen=True)
class Fault:
    """Device ``device`` is down from ``start_s`` for ``duration_s`` seconds. Faults on
    one device may overlap: it is down until the last of them ends.

    Raises:
        ConfigError: an empty device name, ``start_s`` not a finite number >= 0,
            ``duration_s`` not a finite number > 0, or an end (``start_s +
            duration_s``) after :data:`MAX_SIM_TIME`.
    """

    device: str
    start_s: float
    duration_s: float

    def __post_init__(self) -> None:
        _check_event(self, Fault)


@dataclasses.dataclass(frozen=True)
class Slowdown:
    """Device ``device`` runs at ``clock_scale`` of its max clock from ``start_s`` for
    ``duration_s`` seconds (thermal throttling). While slowdowns on one device overlap,
    the lowest ``clock_scale`` in progress holds. An iteration in progress when the clock
    changes finishes its remaining share of work at the new clock.

    Raises:
        ConfigError: as :class:`Fault`, or ``clock_scale`` not in
            :data:`MIN_CLOCK_SCALE`..1.
    """

    device: str
    start_s: float
    duration_s: float
    clock_scale: float

    def __post_init__(self) -> None:
        _check_event(self, Slowdown)


_INTERVAL = re.compile(r"^\s*([^@]+?)\s*@\s*([0-9.eE+-]+?)\s*\+\s*([0-9.eE+-]+?)\s*(?::\s*([0-9.eE+-]+)\s*)?$")


def _parse_interval(text: str, what: str, scale: bool) -> tuple[str, float, float, Optional[float]]:
    m = _INTERVAL.match(text)
    form = "DEVICE@START+DURATION" + (":CLOCK_SCALE" if scale else "")
    if not m or (m.group(4) is not None) != scale:
        raise ConfigError(f"bad {what} {text!r}: expected {form}, e.g. 'H100-SXM-0@30+60" + (":0.5'" if scale else "'"))
    try:
        start, dur = float(m.group(2)), float(m.group(3))
        s = float(m.group(4)) if scale else None
    except ValueError:
        raise ConfigError(f"bad {what} {text!r}: expected {form} with numbers") from None
    why = _interval_problem(start, dur, 1.0 if s is None else s)
    if why is not None:
        raise ConfigError(f"bad {what} {text!r}: {why}")
    return m.group(1), start, dur, s


# -- checks shared by Simulation, simulate and SimConfig ----------------------------------


def check_seed(seed: object) -> int:
    """``seed`` as an int; raises :class:`ConfigError` unless it is an integer >= 0."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or int(seed) < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    return int(seed)


def check_max_retries(value: object) -> int:
    """``max_retries`` as an int; raises :class:`ConfigError` unless it is an integer in
    0..1000 (``Config.max_retries``'s range)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= int(value) <= 1000:
        raise ConfigError(f"max_retries must be an integer in 0..1000, got {value!r}")
    return int(value)


def check_events(faults: object, slowdowns: object) -> tuple[list[Fault], list[Slowdown]]:
    """The faults and slowdowns as lists, each checked (:class:`Fault`, :class:`Slowdown`)."""
    out: list[list[Any]] = []
    for what, kind, value in (("faults", Fault, faults), ("slowdowns", Slowdown, slowdowns)):
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (Sequence, set, frozenset)):
            raise ConfigError(f"{what} must be a sequence of {kind.__name__}, got {value!r}")
        items = list(value)
        for ev in items:
            _check_event(ev, kind)
        out.append(items)
    return out[0], out[1]


def check_restart_at(restart_at: object) -> Optional[float]:
    """``restart_at``: None or a time in seconds in 0..:data:`MAX_SIM_TIME`."""
    if restart_at is not None and not (
        isinstance(restart_at, numbers.Real) and not isinstance(restart_at, bool)
        and 0 <= float(restart_at) <= MAX_SIM_TIME
    ):
        raise ConfigError(f"restart_at must be a time in seconds in 0..{MAX_SIM_TIME:g}, got {restart_at!r}")
    return None if restart_at is None else float(restart_at)


def check_chain(chain: object) -> int:
    """``chain``: an integer in 1..1000."""
    if isinstance(chain, bool) or not isinstance(chain, numbers.Integral) or not 1 <= int(chain) <= 1000:
        raise ConfigError(f"chain must be an integer in 1..1000, got {chain!r}")
    return int(chain)


#: InferenceRequest fields the engine sets itself for every request.
_ENGINE_REQUEST_FIELDS = ("prompt", "prompt_tokens", "max_new_tokens", "deadline", "timeout", "depends_on")


def check_capsched_options(
    policy: object, config: object, request: object
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The capsched policy, ``Config`` fields and ``InferenceRequest`` fields, checked
    here (they would otherwise fail only when the capsched run starts, after the
    baselines): a policy of ``capsched.config.POLICIES``, fields that ``Config`` and
    ``InferenceRequest`` take (not those the engine sets per request), values in range."""
    from ..config import POLICIES as SCHED_POLICIES, Config
    from ..request import InferenceRequest

    if not isinstance(policy, str) or policy not in SCHED_POLICIES:
        raise ConfigError(f"unknown capsched_policy {policy!r}: expected one of {', '.join(map(repr, SCHED_POLICIES))}")
    dicts: list[dict[str, Any]] = []
    for what, value in (("capsched_config", config), ("capsched_request", request)):
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{what} must be a dict of field names to values, got {value!r}")
        for k in value:
            if not isinstance(k, str):
                raise ConfigError(f"{what}: field names must be str, got {k!r}")
        dicts.append(dict(value))
    cfg, req = dicts
    try:
        Config(**{"wait_for_fit": True, **cfg})
    except (TypeError, CapschedError) as exc:  # (TypeError: a field Config does not have)
        raise ConfigError(f"capsched_config: {exc}") from None
    for k in req:
        if k in _ENGINE_REQUEST_FIELDS:
            raise ConfigError(f"capsched_request: {k!r} is set by the simulator for each request")
    try:
        InferenceRequest(prompt_tokens=1, max_new_tokens=1, deadline=1.0, **req)
    except (TypeError, CapschedError) as exc:
        raise ConfigError(f"capsched_request: {exc}") from None
    return policy, cfg, req


def _check_workload_devices(workload: object, devices: object) -> list[SimDevice]:
    if not isinstance(workload, Workload):
        raise ConfigError(f"workload must be a Workload, got {type(workload).__name__}")
    if isinstance(devices, (str, bytes, Mapping)) or not isinstance(devices, Sequence):
        raise ConfigError(f"devices must be a sequence of SimDevice (Fleet.build), got {devices!r}")
    out = list(devices)
    if not out:
        raise ConfigError("the fleet has no device")
    for d in out:
        if not isinstance(d, SimDevice):
            raise ConfigError(f"devices must be SimDevice objects (Fleet.build), got {d!r}")
    return out


def unservable(workload: Workload, devices: Sequence[SimDevice]) -> np.ndarray:
    """Per request, True when no device can ever run it: its ``prompt + output`` tokens
    exceed every device's KV budget, or a length exceeds :data:`capsched.MAX_TOKENS`.
    Every policy fails such a request at its arrival (or, in a chain, when it would be
    released), so that it counts the same under each (status ``FAILED``)."""
    p = workload.prompt_tokens.astype(np.float64)
    o = workload.output_tokens.astype(np.float64)
    cap = max((d.kv_tokens for d in devices), default=0)
    return (p + o > cap) | (p > MAX_TOKENS) | (o > MAX_TOKENS)


def parse_fault(text: str) -> Fault:
    """``"H100-SXM-0@30+60"``: that device is down from t = 30 s for 60 s."""
    name, start, dur, _ = _parse_interval(text, "fault", False)
    return Fault(name, start, dur)


def parse_slowdown(text: str) -> Slowdown:
    """``"H100-SXM-0@30+60:0.5"``: that device runs at half its max clock from t = 30 s
    for 60 s."""
    name, start, dur, s = _parse_interval(text, "slowdown", True)
    assert s is not None
    return Slowdown(name, start, dur, s)


def deadlines_for(workload: Workload, devices: Sequence[SimDevice], factor: float = DEADLINE_FACTOR) -> np.ndarray:
    """Absolute deadlines: ``arrival + factor x`` the request's unloaded service time on
    the fastest device of the fleet (the smallest service time among its accelerators).

    Raises:
        ConfigError: ``workload`` not a Workload, no device or one not a
            :class:`SimDevice`, ``factor`` not a finite number > 0.
    """
    devices = _check_workload_devices(workload, devices)
    if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not (math.isfinite(factor) and factor > 0):
        raise ConfigError(f"factor must be a finite number > 0, got {factor!r}")
    seen: dict[str, CostModel] = {}
    for d in devices:
        seen.setdefault(d.accelerator, d.cost)
    if len(workload) == 0:
        return np.zeros(0)
    best = None
    for cm in seen.values():
        t = np.asarray(cm.service_time(workload.prompt_tokens, workload.output_tokens), dtype=np.float64)
        best = t if best is None else np.minimum(best, t)
    assert best is not None
    return workload.arrival_s + factor * best


@dataclasses.dataclass
class SimResult:
    """Raw outcome of one simulation (turned into metrics by :mod:`capsched.sim.metrics`).

    Per request (arrays in workload order): ``status`` (DONE, FAILED, EXPIRED), ``finish_s``
    (completion time; NaN if it did not complete), ``first_token_s`` (end of its last
    prefill; NaN if none), ``device`` (index of the device that completed it, -1),
    ``tries`` (times it was started). Per device: ``busy_s`` (time in iterations),
    ``busy_intervals`` (merged ``(start, end)`` pairs) and names. ``unservable``: the
    requests no device can hold (:func:`unservable`), failed at arrival.
    """

    policy: str
    arrival_s: np.ndarray
    deadline_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    status: np.ndarray
    finish_s: np.ndarray
    first_token_s: np.ndarray
    device: np.ndarray
    tries: np.ndarray
    device_names: list[str]
    busy_s: list[float]
    busy_intervals: list[list[tuple[float, float]]]
    end_s: float
    iterations: int
    retries: int
    scheduler_stats: Optional[dict[str, Any]] = None
    continuous_api: Optional[bool] = None
    preempted: int = 0
    migrated: int = 0
    restarts: int = 0  # scheduler restarts from a checkpoint (restart_at)
    unservable: int = 0  # requests no device can hold, failed at arrival (every policy)


class _Dev:
    __slots__ = (
        "idx", "name", "base", "cm", "kv_budget", "max_seqs", "up", "busy", "epoch", "it",
        "running", "fin", "ctx_sum", "kv_used", "joiners", "queue", "pending", "busy_s",
        "intervals", "iter_start", "n_dec", "outstanding", "kvb", "attn4", "spec", "faults", "slows",
        "iter_end", "iter_len", "step_args",
    )

    def __init__(self, idx: int, d: SimDevice) -> None:
        self.idx = idx
        self.name = d.name
        self.base = d.cost
        self.cm = d.cost
        self.spec = d.cost.spec
        self.kv_budget = d.kv_tokens
        self.max_seqs = d.max_num_seqs
        self.up = True
        self.faults = 0  # faults in progress: overlapping ones keep it down until the last ends
        self.slows: dict[int, float] = {}  # slowdowns in progress (index -> clock scale)
        self.busy = False
        self.epoch = 0
        self.it = 0
        self.running: dict[int, int] = {}  # rid -> join iteration
        self.fin: list[tuple[int, int]] = []  # (finish iteration, rid)
        self.ctx_sum = 0  # tokens in the KV cache of the running sequences
        self.kv_used = 0  # reserved (prompt + output) of running, joining and pending
        self.joiners: list[int] = []  # prefilling in the current iteration
        self.queue: deque[int] = deque()  # baselines: bound, waiting
        self.pending: list[int] = []  # capsched: dispatched, joins at the next boundary
        self.busy_s = 0.0
        self.intervals: list[list[float]] = []
        self.iter_start = 0.0
        self.iter_end = 0.0  # when the iteration in progress ends
        self.iter_len = 0.0  # its length at the clock it runs at
        self.step_args: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0)  # (CostModel._step1)
        self.n_dec = 0
        self.outstanding = 0
        m = d.cost.model
        self.kvb = m.kv_bytes_per_token
        self.attn4 = 4.0 * m.hidden * m.layers


def _check_deadlines(deadlines: object, workload: Workload) -> np.ndarray:
    n = len(workload)
    try:
        dl = np.array(deadlines, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"deadlines must be {n} numbers (seconds), got {_cut(deadlines)}") from None
    if dl.shape != (n,):
        raise ConfigError(f"deadlines has shape {dl.shape}, the workload {n} requests")
    bad = np.flatnonzero(~np.isfinite(dl) | (dl < workload.arrival_s))
    if bad.size:
        i = int(bad[0])
        raise ConfigError(
            f"deadlines[{i}] must be a finite time >= the request's arrival ({float(workload.arrival_s[i]):g} s), "
            f"got {dl[i]:g}"
        )
    dl.setflags(write=False)
    return dl


def _cut(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Simulation:
    """One policy on one fleet and workload.

    Args:
        devices: the fleet's devices (:meth:`Fleet.build`).
        workload: the requests.
        policy: one of :data:`capsched.sim.policies.POLICIES`.
        deadlines: absolute deadlines per request (default :func:`deadlines_for`).
        seed: seeds the random baselines.
        faults, slowdowns: injected events.
        max_retries: tries after the first for a failed request (baselines; capsched uses
            ``Config.max_retries``, the same default 3).
        capsched_policy: the Scheduler's ordering policy (``"weighted"``, ``"edf"``, ...).
        capsched_config: extra :class:`capsched.Config` fields (``wait_for_fit``
            defaults to True here: placement as admission control).
        capsched_request: extra :class:`capsched.InferenceRequest` fields for every
            request (``priority``, ``uclamp_max``, ``request_class``...).
        continuous: use ``Scheduler.step(now, free_slots=..., free_kv_tokens=...)``
            (``None``: when the installed Scheduler has it).
        tenants: a tenant name (or None) per request, in workload order, passed to
            capsched as ``InferenceRequest.tenant`` (for ``Config(fair_share=True)``);
            the baselines ignore it.
        progress: called as ``progress(ended, total)`` while the run goes on, each time
            the requests that have ended (completed, failed or expired) reach another
            tenth of the workload (:data:`PROGRESS_STEPS` calls at most); it must not
            change the simulation.

    A request that no device can ever hold (:func:`unservable`) fails at its arrival
    under every policy (``SimResult.unservable`` counts them).

    Raises:
        ConfigError: at construction, before anything runs: an unknown policy, a
            workload or device of the wrong type, duplicate device names, deadlines not
            one finite time >= arrival per request, an arrival after
            :data:`MAX_SIM_TIME`, a fault or slowdown that is not a
            :class:`Fault` / :class:`Slowdown` with valid numbers or names no device,
            ``seed`` not an integer >= 0, ``max_retries`` not in 0..1000, a
            ``capsched_policy`` the Scheduler does not know, ``capsched_config`` fields
            ``Config`` refuses, ``capsched_request`` fields ``InferenceRequest`` refuses
            (or ones the engine sets: prompt, prompt_tokens, max_new_tokens, deadline,
            timeout, depends_on), a bad ``continuous``, ``restart_at``, ``chain`` or
            ``tenants``, a ``progress`` that is not callable.
    """

    def __init__(
        self,
        devices: Sequence[SimDevice],
        workload: Workload,
        policy: str,
        *,
        deadlines: Optional[np.ndarray] = None,
        seed: int = 0,
        faults: Sequence[Fault] = (),
        slowdowns: Sequence[Slowdown] = (),
        max_retries: int = 3,
        capsched_policy: str = "edf",
        capsched_config: Optional[dict[str, Any]] = None,
        capsched_request: Optional[dict[str, Any]] = None,
        continuous: Optional[bool] = None,
        restart_at: Optional[float] = None,
        chain: int = 1,
        tenants: Optional[Sequence[Optional[str]]] = None,
        progress: Optional[Callable[[int, int], None]] = None,
    ) -> None:
        if not isinstance(policy, str) or policy not in POLICIES:
            raise ConfigError(f"unknown policy {policy!r} (known: {', '.join(POLICIES)})")
        devices = _check_workload_devices(workload, devices)
        names = [d.name for d in devices]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ConfigError(f"two devices are named {dup!r}: device names must be unique")
        if len(workload) and float(workload.arrival_s[-1]) > MAX_SIM_TIME:
            raise ConfigError(
                f"the workload's last arrival is at {float(workload.arrival_s[-1]):g} s, after the simulator's "
                f"time range ({MAX_SIM_TIME:g} s): scale it to a higher rate (Workload.scale_to_rate)"
            )
        self.policy = policy
        self.sim_devices = devices
        self.workload = workload
        if deadlines is None:
            self.deadlines = deadlines_for(workload, devices)
        else:
            self.deadlines = _check_deadlines(deadlines, workload)
        self._by_name = {n: i for i, n in enumerate(names)}
        faults, slowdowns = check_events(faults, slowdowns)
        for ev in list(faults) + list(slowdowns):
            if ev.device not in self._by_name:
                raise ConfigError(f"unknown device {ev.device!r} in a fault or slowdown (devices: {', '.join(names)})")
        self.faults = faults
        self.slowdowns = slowdowns
        self.max_retries = check_max_retries(max_retries)
        self.seed = check_seed(seed)
        self.capsched_policy, self.capsched_config, self.capsched_request = check_capsched_options(
            capsched_policy, capsched_config, capsched_request
        )
        if tenants is not None and "tenant" in self.capsched_request:
            raise ConfigError("give tenants or capsched_request['tenant'], not both")
        if continuous is not None and not isinstance(continuous, bool):
            raise ConfigError(f"continuous must be True, False or None, got {continuous!r}")
        self.continuous = continuous
        self.restart_at = check_restart_at(restart_at)
        self.chain = check_chain(chain)
        if tenants is not None:
            tenants = list(tenants)
            if len(tenants) != len(workload):
                raise ConfigError(f"tenants has {len(tenants)} names, the workload {len(workload)} requests")
            for i, t in enumerate(tenants):
                if t is not None and not isinstance(t, str):
                    raise ConfigError(f"tenants[{i}] must be a str or None, got {t!r}")
        self.tenants = tenants
        if progress is not None and not callable(progress):
            raise ConfigError(f"progress must be a callable (ended, total) or None, got {progress!r}")
        self.progress = progress

    # ------------------------------------------------------------------ setup

    def _setup(self) -> None:
        w = self.workload
        n = len(w)
        self.P = w.prompt_tokens.tolist()
        self.O = w.output_tokens.tolist()
        self.T = [p + o for p, o in zip(self.P, self.O)]
        self.unservable = unservable(w, self.sim_devices).tolist()
        self.arr = w.arrival_s.tolist()
        self.dl = self.deadlines.tolist()
        # Agent-style chains (chain > 1): consecutive requests form chains of `chain` steps;
        # a chain arrives with its first step, step j runs after step j-1 has completed,
        # and step j's deadline is the chain's arrival plus the sum of the steps' budgets
        # (deadline - arrival) up to j.
        K = self.chain
        self.arr_eff = list(self.arr)
        if K > 1:
            dl = list(self.dl)
            for r in range(n):
                s0 = r - r % K
                self.arr_eff[r] = self.arr[s0]
                budget = dl[r] - self.arr[r]
                self.dl[r] = (self.dl[r - 1] if r > s0 else self.arr[s0]) + budget
        self.status = [PENDING] * n
        self.finish = [math.nan] * n
        self.first = [math.nan] * n
        self.where = [-1] * n  # device index it is on (queued, pending or running), -1
        self.done_on = [-1] * n
        self.tries = [0] * n
        self.retries = 0
        self.iterations = 0
        self.preempted = 0
        self.migrated = 0
        self.rejected = 0
        self.devs = [_Dev(i, d) for i, d in enumerate(self.sim_devices)]
        # Fleet-size independent bookkeeping (capsched): each change to a device's up,
        # busy, outstanding or kv_used marks it dirty; _refresh brings the free slots and
        # KV (what Scheduler.step is given) and the idle set up to date for the dirty
        # devices only, so that an event costs what it changes, not the fleet's size.
        self._dirty: set[int] = set(range(len(self.devs)))
        # Per device, in device order, what Scheduler.step is given: free slots of an up
        # device with some free, and its free KV tokens; -1 for the others (not reported:
        # they take nothing). Updated in place for the dirty devices.
        self._free_slots = np.full(len(self.devs), -1, dtype=np.int64)
        self._free_kv = np.full(len(self.devs), -1, dtype=np.int64)
        self._idle: set[int] = set()  # up, not in an iteration, a slot free
        self._pend: set[int] = set()  # devices given pending requests (may be stale)
        self._ended = 0  # requests ended (progress)
        self._next_report = self._report_at(1)
        self._min_kv = min(d.kv_budget for d in self.devs)
        self.events: list[tuple[float, int, int, int, int]] = []
        self._seq = 0
        self._wake_at = math.inf  # the earliest wake-up event pending (capsched)
        pid = POLICIES.index(self.policy)
        self.rng = np.random.default_rng([self.seed, pid])
        self.sched: Optional[Scheduler] = None
        if self.policy == "capsched":
            self._setup_capsched()
        else:
            self.binder = make_policy(self.policy, self.rng)
        for k, f in enumerate(self.faults):
            self._push(f.start_s, _FAULT_START, self._by_name[f.device], k)
            self._push(f.start_s + f.duration_s, _FAULT_END, self._by_name[f.device], k)
        for k, s in enumerate(self.slowdowns):
            self._push(s.start_s, _SLOW_START, self._by_name[s.device], k)
            self._push(s.start_s + s.duration_s, _SLOW_END, self._by_name[s.device], k)
        self.restarts = 0
        self.requeued_on_restart = 0
        if self.restart_at is not None and self.sched is not None:
            self._push(float(self.restart_at), _RESTART, 0, 0)

    def _setup_capsched(self) -> None:
        from ..config import Config
        from ..request import InferenceRequest
        from ..scheduler import Scheduler

        params = inspect.signature(Scheduler.step).parameters
        has_continuous = "free_slots" in params
        if self.continuous is None:
            self.continuous = has_continuous
        elif self.continuous and not has_continuous:
            raise ConfigError("this capsched has no continuous mode (Scheduler.step(free_slots=...))")
        max_seqs = max(d.max_num_seqs for d in self.sim_devices)
        devices = Fleet.capsched_devices(self.sim_devices)
        # Placement as admission control: a request that fits no device with room waits
        # in the queue (or expires) rather than overcommitting one (docs/simulator.md).
        cfg = Config(**{"wait_for_fit": True, **self.capsched_config})
        # Without continuous mode, one request is one "batch": a device takes a new one
        # while it runs fewer than max_num_seqs (max_inflight_batches), and the engine
        # steps until nothing more is dispatched.
        self.sched = Scheduler(
            devices,
            policy=self.capsched_policy,
            max_batch_size=max_seqs if self.continuous else 1,
            config=cfg,
            clock=lambda: 0.0,
        )
        self._Request = InferenceRequest
        self.sid_of: list[int] = [0] * len(self.P)
        self.rid_of: dict[int, int] = {}

    def _report_at(self, k: int) -> int:
        """The count of ended requests at which the k-th progress report is due."""
        if self.progress is None or k > PROGRESS_STEPS:
            return -1
        return max(1, -(-k * len(self.P) // PROGRESS_STEPS))

    def _refresh(self) -> None:
        """Bring _free_slots, _free_kv and _idle up to date for the dirty devices."""
        if not self._dirty:
            return
        devs = self.devs
        slots, kv, idle = self._free_slots, self._free_kv, self._idle
        for i in self._dirty:
            d = devs[i]
            free = d.max_seqs - d.outstanding
            if d.up and free > 0:
                slots[i] = free
                kv[i] = max(0, d.kv_budget - d.kv_used)
                if d.busy:
                    idle.discard(i)
                else:
                    idle.add(i)
            else:
                slots[i] = -1
                kv[i] = -1
                idle.discard(i)
        self._dirty.clear()

    def _start_pending(self, now: float) -> None:
        """_maybe_start, in device order, each device given pending requests (the others
        have nothing to start: an idle device that is up has no running sequence)."""
        pend = self._pend
        if not pend:
            return
        devs = self.devs
        for i in sorted(pend):
            d = devs[i]
            if d.pending:
                self._maybe_start(d, now)
        for i in [i for i in pend if not devs[i].pending]:
            pend.discard(i)

    def _push(self, t: float, kind: int, a: int, b: int) -> None:
        self._seq += 1
        heapq.heappush(self.events, (t, self._seq, kind, a, b))

    # ------------------------------------------------------------------ device mechanics

    def _step_time(self, d: _Dev, joiners: list[int]) -> float:
        """CostModel.step_time of whole-prompt joiners plus d.n_dec decoding sequences
        with d.ctx_sum tokens of context (the scalar fast path)."""
        P = self.P
        ptok = 0
        pflops = 0.0
        for j in joiners:
            c = P[j]
            ptok += c
            pflops += d.attn4 * (c * (c + 1) / 2.0)
        nd = d.n_dec
        d.step_args = (float(ptok + nd), pflops, d.kvb * ptok, d.attn4 * (d.ctx_sum + nd), d.kvb * d.ctx_sum)
        return d.cm._step1(*d.step_args)

    def _maybe_start(self, d: _Dev, now: float) -> None:
        """Start an iteration on an idle device that is up and has work."""
        if d.busy or not d.up:
            return
        self._dirty.add(d.idx)
        joiners: list[int] = []
        if self.sched is None:
            q = d.queue
            room = d.max_seqs - len(d.running)
            T = self.T
            while q and room > 0:
                r = q[0]
                if d.kv_used + T[r] > d.kv_budget:
                    if d.kv_used == 0:  # can never fit this device (cannot happen: _bind)
                        q.popleft()
                        d.outstanding -= 1
                        self._end(r, FAILED, now)
                        continue
                    break
                q.popleft()
                d.kv_used += T[r]
                joiners.append(r)
                room -= 1
        else:
            joiners = d.pending
            d.pending = []
        if not joiners and not d.running:
            return
        for r in joiners:
            self.tries[r] += 1
        d.joiners = joiners
        d.n_dec = len(d.running)
        dt = self._step_time(d, joiners)
        d.busy = True
        d.iter_start = now
        d.iter_end = now + dt
        d.iter_len = dt
        self.iterations += 1
        self._push(now + dt, _ITER_END, d.idx, d.epoch)

    def _retime(self, d: _Dev, now: float) -> None:
        """The clock of d changed (d.cm): the iteration in progress does the share of its
        work still left at the new clock (its old end event is made stale)."""
        if not d.busy or d.iter_end <= now or d.iter_len <= 0:
            return
        new_len = d.cm._step1(*d.step_args)
        left = (d.iter_end - now) / d.iter_len  # share of the work still to do
        d.iter_len = new_len
        d.iter_end = now + left * new_len
        d.epoch += 1  # (the ITER_END already queued is stale)
        self._push(d.iter_end, _ITER_END, d.idx, d.epoch)

    def _record_busy(self, d: _Dev, start: float, end: float) -> None:
        d.busy_s += end - start
        iv = d.intervals
        if iv and iv[-1][1] >= start - 1e-12:
            iv[-1][1] = end
        else:
            iv.append([start, end])

    def _iter_end(self, d: _Dev, now: float) -> None:
        d.busy = False
        self._dirty.add(d.idx)
        self._record_busy(d, d.iter_start, now)
        it = d.it
        d.ctx_sum += d.n_dec
        P, O = self.P, self.O
        for r in d.joiners:
            d.ctx_sum += P[r] + 1
            self.first[r] = now
            d.running[r] = it
            heapq.heappush(d.fin, (it + O[r] - 1, r))
        d.joiners = []
        fin = d.fin
        finished = []
        while fin and fin[0][0] <= it:
            _, r = heapq.heappop(fin)
            if d.running.get(r) is None:
                continue  # stale (preempted or migrated)
            del d.running[r]
            d.ctx_sum -= P[r] + O[r]
            d.kv_used -= P[r] + O[r]
            d.outstanding -= 1
            finished.append(r)
        d.it = it + 1
        for r in finished:
            self.done_on[r] = d.idx
            self._end(r, DONE, now)
            if self.sched is not None:
                self.sched.complete(self.sid_of[r], now)

    def _end(self, r: int, status: int, now: float) -> None:
        K = self.chain
        n = len(self.P)
        while True:  # (a loop, not recursion: a failed step fails up to 999 after it)
            self.status[r] = status
            self._ended += 1
            if self._ended == self._next_report:
                assert self.progress is not None
                self.progress(min(self._ended, len(self.P)), len(self.P))
                k = self._ended * PROGRESS_STEPS // max(1, len(self.P)) + 1
                while 0 <= self._report_at(k) <= self._ended:
                    k += 1
                self._next_report = self._report_at(k)
            self.where[r] = -1
            if status == DONE:
                self.finish[r] = now
            nxt = r + 1
            if not (K > 1 and self.sched is None and nxt % K != 0 and nxt < n and self.status[nxt] == PENDING):
                return
            # Baselines: the simulator's front end releases the chain's next step, or
            # fails the rest of the chain (capsched does both itself, through depends_on).
            if status == DONE:
                self._bind(nxt, now)
                return
            r, status = nxt, FAILED

    def _stop(self, r: int) -> None:
        """Take request r off the device it is on (pending, prefilling or running)."""
        di = self.where[r]
        if di < 0:
            return
        d = self.devs[di]
        self._dirty.add(di)
        T = self.T
        if r in d.running:
            join = d.running.pop(r)
            d.ctx_sum -= self.P[r] + (d.it - join)
            d.kv_used -= T[r]
            d.outstanding -= 1
        elif r in d.joiners:
            d.joiners.remove(r)  # its prefill in this iteration is wasted
            d.kv_used -= T[r]
            d.outstanding -= 1
        elif r in d.pending:
            d.pending.remove(r)
            d.kv_used -= T[r]
            d.outstanding -= 1
        elif r in d.queue:
            d.queue.remove(r)
            d.outstanding -= 1
        self.where[r] = -1
        self.first[r] = math.nan

    # ------------------------------------------------------------------ baselines

    def _bind(self, r: int, now: float) -> None:
        if self.unservable[r]:
            self._end(r, FAILED, now)
            return
        devs = self.devs
        # Only among the devices whose KV cache can hold it (not unservable: one can).
        eligible = None if self.T[r] <= self._min_kv else [self.T[r] <= d.kv_budget for d in devs]
        i = self.binder.choose([d.outstanding for d in devs], [d.up for d in devs], eligible)
        d = devs[i]
        self._dirty.add(i)
        d.queue.append(r)
        d.outstanding += 1
        self.where[r] = i
        self._maybe_start(d, now)

    # ------------------------------------------------------------------ capsched

    def _dispatch(self, now: float) -> None:
        sched = self.sched
        assert sched is not None
        devs = self.devs
        T = self.T
        rounds = 0
        while True:
            if self.continuous:
                # The up devices with free slots and their free KV, kept up to date, one
                # value per device (-1: takes nothing), as Scheduler.step takes them.
                self._refresh()
                res = sched.step(now, free_slots=self._free_slots, free_kv_tokens=self._free_kv)
            else:
                res = sched.step(now)
            rounds += 1
            # A retry backing off (or a batch held to fill) wants a step by next_step_at.
            wake = res.next_step_at
            if now < wake < self._wake_at:
                self._wake_at = wake
                self._push(wake, _WAKE, 0, 0)
            for sid in res.expired:
                r = self.rid_of[sid]
                self._stop(r)
                self._end(r, EXPIRED, now)
            for sid, _reason in res.failed:
                r = self.rid_of[sid]
                self._stop(r)
                self._end(r, FAILED, now)
            for sid, _old in res.migrated:
                self.migrated += 1
                self._stop(self.rid_of[sid])
            for sid, _dev in getattr(res, "preempted", ()):
                self.preempted += 1
                self._stop(self.rid_of[sid])
            n = 0
            for b in res.batches:
                d = devs[b.device_index]
                for sid in b.request_ids:
                    r = self.rid_of[sid]
                    if not d.up:  # legacy mode only: the scheduler cannot be told
                        self._fail_capsched(r, now, "device down")
                        continue
                    d.pending.append(r)
                    d.kv_used += T[r]
                    d.outstanding += 1
                    self.where[r] = d.idx
                    self._dirty.add(d.idx)
                    self._pend.add(d.idx)
                    n += 1
            if self.continuous or n == 0 or rounds > 100000:
                break
        self._start_pending(now)

    def _restart(self, now: float) -> None:
        """The scheduler process dies and comes back: checkpoint, restore from the file
        (what was in flight is queued again), and stop on the devices everything the old
        scheduler had placed, since the restored one will place it again."""
        import os
        import tempfile

        from ..scheduler import Scheduler

        assert self.sched is not None
        fd, path = tempfile.mkstemp(suffix=".json", prefix="capsched-sim-")
        os.close(fd)
        try:
            self.sched.checkpoint(path)
            restored = Scheduler.restore(path, clock=lambda: 0.0)
        finally:
            os.unlink(path)
        placed = [r for r in range(len(self.P)) if self.where[r] >= 0]
        for r in placed:
            self._stop(r)
        self.requeued_on_restart += len(placed)
        self.restarts += 1
        self.sched = restored
        self._dispatch(now)
        for d in self.devs:
            self._maybe_start(d, now)

    def _fail_capsched(self, r: int, now: float, error: str) -> None:
        assert self.sched is not None
        requeued = self.sched.fail(self.sid_of[r], now, retryable=True, error=error)
        if requeued:
            self.retries += 1
        else:
            self._end(r, FAILED, now)

    def _any_idle(self) -> bool:
        """Whether a device is up, between iterations and has a free slot."""
        self._refresh()
        return bool(self._idle)

    # ------------------------------------------------------------------ faults

    def _fault(self, d: _Dev, now: float) -> None:
        if not d.up:
            return
        if d.busy:
            self._record_busy(d, d.iter_start, now)
        d.up = False
        d.busy = False
        self._dirty.add(d.idx)
        d.epoch += 1
        victims = list(d.running) + list(d.joiners) + list(d.pending) + list(d.queue)
        for r in victims:
            self._stop(r)
        d.running.clear()
        d.fin.clear()
        d.ctx_sum = 0
        d.kv_used = 0
        d.outstanding = 0
        if self.sched is not None:
            # The scheduler has no "device down" call: its capacity is taken away (pressure)
            # until it comes back, so that placement avoids it.
            self.sched.set_pressure(d.name, _DOWN_PRESSURE, now=now)
        for r in victims:
            if self.sched is not None:
                self._fail_capsched(r, now, f"device {d.name} failed")
            elif self.tries[r] <= self.max_retries:
                self.retries += 1
                self._bind(r, now)
            else:
                self._end(r, FAILED, now)

    # ------------------------------------------------------------------ main loop

    def run(self) -> SimResult:
        """Run to the end: every request completed, failed or expired."""
        self._setup()
        ev = self.events
        arr = self.arr
        n = len(arr)
        k = 0  # next arrival
        sched = self.sched
        devs = self.devs
        now = 0.0
        while True:
            # Same instant: faults and slowdowns (start or end) first, then arrivals, then
            # the rest. (They were queued first, so at one time they lead the heap.)
            if k < n and (not ev or arr[k] < ev[0][0] or (arr[k] == ev[0][0] and ev[0][2] not in _DEVICE_EVENTS)):
                now = arr[k]
                r = k
                k += 1
                K = self.chain
                if K > 1 and r % K != 0:
                    continue  # a later step of a chain: released by its predecessor
                if sched is None:
                    self._bind(r, now)
                else:
                    steps = range(r, min(r + K, n)) if K > 1 else (r,)
                    prev_sid = None
                    for x in steps:  # a chain: each step depends on the one before
                        if self.unservable[x]:  # as the baselines: it and the rest of its chain fail
                            for y in range(x, steps[-1] + 1):
                                self._end(y, FAILED, now)
                            break
                        extra = self.capsched_request
                        if self.tenants is not None:
                            extra = {**extra, "tenant": self.tenants[x]}
                        req = self._Request(
                            prompt_tokens=self.P[x], max_new_tokens=self.O[x], deadline=self.dl[x],
                            depends_on=() if prev_sid is None else (prev_sid,), **extra
                        )
                        try:
                            sid = sched.submit(req, now=now)
                        except (AdmissionError, QueueFullError):
                            # Refused at submit: deadline admission (no device can admit
                            # it) or a full queue (Config.max_queued): a drop, as a server
                            # would answer 429/503.
                            self.rejected += 1
                            for y in range(x, steps[-1] + 1):
                                self._end(y, EXPIRED if y == x else FAILED, now)
                            break
                        self.sid_of[x] = sid
                        self.rid_of[sid] = x
                        prev_sid = sid
                    if self._any_idle():
                        self._dispatch(now)
                continue
            if not ev:
                break
            now, _, kind, a, b = heapq.heappop(ev)
            d = devs[a]
            if kind == _RESTART:
                self._restart(now)
                sched = self.sched  # the restored one from now on
            elif kind == _WAKE:
                if now >= self._wake_at:
                    self._wake_at = math.inf
                if sched is not None:
                    self._dispatch(now)
                    self._start_pending(now)
            elif kind == _ITER_END:
                if b != d.epoch:
                    continue  # the device failed during this iteration
                self._iter_end(d, now)
                if sched is not None:
                    self._dispatch(now)
                self._maybe_start(d, now)
            elif kind == _FAULT_START:
                d.faults += 1
                if d.faults == 1:
                    self._fault(d, now)
                    if sched is not None:
                        self._dispatch(now)
            elif kind == _FAULT_END:
                d.faults -= 1
                if d.faults == 0:  # (the last of overlapping faults on it has ended)
                    d.up = True
                    self._dirty.add(d.idx)
                    if sched is not None:
                        sched.set_pressure(d.name, 0.0, now=now)
                        self._dispatch(now)
                    self._maybe_start(d, now)
            elif kind in (_SLOW_START, _SLOW_END):
                if kind == _SLOW_START:
                    d.slows[b] = self.slowdowns[b].clock_scale
                else:
                    del d.slows[b]
                # Overlapping slowdowns: the deepest in progress holds the clock.
                s = min(d.slows.values()) if d.slows else 1.0
                d.cm = d.base if s == 1.0 else d.base.with_clock_scale(s)
                self._retime(d, now)
                if sched is not None:
                    mx = d.spec.max_clock_mhz or 1000.0
                    sched.set_clock(d.name, s * mx, mx, now=now)
                    self._dispatch(now)
            if sched is not None and not ev and k >= n:
                # Nothing runs and nothing arrives: queued requests can only expire.
                if any(s == PENDING for s in self.status):
                    later = [self.dl[r] for r in range(n) if self.status[r] == PENDING]
                    t = max(later) + 1e-9 if later else now
                    self._dispatch(max(now, t))
        stats = None
        if sched is not None:
            stats = sched.stats()
        for r in range(n):  # cannot happen, but never leave a request unaccounted
            if self.status[r] == PENDING:
                self.status[r] = FAILED
        return SimResult(
            policy=self.policy,
            arrival_s=np.array(self.arr_eff, dtype=np.float64),
            deadline_s=np.array(self.dl, dtype=np.float64),
            prompt_tokens=self.workload.prompt_tokens,
            output_tokens=self.workload.output_tokens,
            status=np.array(self.status, dtype=np.int8),
            finish_s=np.array(self.finish),
            first_token_s=np.array(self.first),
            device=np.array(self.done_on, dtype=np.int32),
            tries=np.array(self.tries, dtype=np.int32),
            device_names=[d.name for d in devs],
            busy_s=[d.busy_s for d in devs],
            busy_intervals=[[(a, b) for a, b in d.intervals] for d in devs],
            end_s=now,
            iterations=self.iterations,
            retries=self.retries,
            scheduler_stats=stats,
            continuous_api=self.continuous if sched is not None else None,
            preempted=self.preempted,
            migrated=self.migrated,
            restarts=self.restarts,
            unservable=sum(self.unservable),
        )


def simulate(devices: Sequence[SimDevice], workload: Workload, policy: str, **kwargs: Any) -> SimResult:
    """Run one :class:`Simulation` (keyword arguments as its constructor's).

    Raises:
        ConfigError: as :class:`Simulation`, before anything runs (an unknown keyword
            argument too).
    """
    params = inspect.signature(Simulation.__init__).parameters
    for k in kwargs:
        if k not in params or params[k].kind is not inspect.Parameter.KEYWORD_ONLY:
            raise ConfigError(f"simulate() got an unknown keyword argument {k!r}")
    return Simulation(devices, workload, policy, **kwargs).run()
