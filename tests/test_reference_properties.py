"""Property tests: the real capsched.Scheduler against the brute-force reference model.

Random operation sequences (submits with random sizes, priorities, timeouts, deadlines,
dependencies, batchability, request classes, tenants, scheduling classes and uclamps;
small time steps including zero, identical and backwards timestamps; steps; completes;
retryable and final failures; cancels; device clock and pressure changes; calls that must
be refused) drive both the real scheduler and tests/reference/model.py for every policy
on random small fleets (random capacities, some with KV budgets, clocks, power figures
and pinned tenants; placement tunables varied), and every observable result must agree:
each step's batches (device and id order), migrations, expired ids (in order), failed ids
(the order of the events that caused them; the order inside one dependency cascade is
unspecified, so compared as a set), every status, the stats() counters (placement
counters included), the devices' counters and gauges (capacity, clock, pressure, PELT
util_avg, placed utilization, deadline bandwidth, KV memory), every class's util_est,
check_invariants() and conservation. Floats are compared to rel 1e-9 (they are computed
with the same operations as the core, so they agree exactly in practice); decisions are
compared exactly. Refused calls must raise the matching capsched.errors class and change
nothing.

Size: CAPSCHED_PROPERTY_SCALE (float, default 1.0) multiplies every test's number of
examples; e.g. CAPSCHED_PROPERTY_SCALE=0.2 for a quick CI run, 10 for a soak.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from typing import Any, Dict, List, Optional

import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis.control import currently_in_test_context
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference.model import (  # noqa: E402
    CONFIG_DEFAULTS,
    PLACEMENT_KEYS,
    POLICIES,
    RefAdmissionError,
    RefDependencyError,
    RefDeviceSpec,
    RefError,
    RefInvalidArgument,
    RefInvalidRequest,
    RefRequestState,
    ReferenceScheduler,
    RefUnknownRequest,
    weighted_level,
    weighted_level_bruteforce,
)

try:
    import capsched  # noqa: F401
    from capsched import errors as cerrors

    HAVE_CAPSCHED = True
except ImportError:  # pragma: no cover - the package is not built yet
    capsched = None
    cerrors = None
    HAVE_CAPSCHED = False

needs_capsched = pytest.mark.skipif(not HAVE_CAPSCHED, reason="capsched is not built")

# What the Python API offers right now (colleagues are adding fields): the tests use every
# placement tunable and device field that exists and leave the others at their defaults.
REAL_CONFIG_FIELDS = ({f.name for f in dataclasses.fields(capsched.Config)}
                      if HAVE_CAPSCHED else set(CONFIG_DEFAULTS))
REAL_DEVICE_FIELDS = ({f.name for f in dataclasses.fields(capsched.Device)}
                      if HAVE_CAPSCHED else set())

SCALE = float(os.environ.get("CAPSCHED_PROPERTY_SCALE", "1.0"))


def examples(n: int) -> int:
    return max(1, int(n * SCALE))


def prop_settings(n: int):
    return settings(
        max_examples=examples(n),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much],
    )


# --- strategies ------------------------------------------------------------------------

# Time advances: mostly small, often zero (identical timestamps), sometimes backwards
# (the scheduler must clamp to the latest time it has seen).
dts = st.one_of(
    st.sampled_from([0.0, 0.0, 0.05, 0.25, 0.5, 1.0, 1.0, 2.0, 5.0]),
    st.floats(min_value=0.0, max_value=10.0, allow_nan=False),
    st.sampled_from([-0.5, -2.0]),
)
prompt_tokens = st.one_of(st.sampled_from([0, 1, 16, 100, 1000, 4000]),
                          st.integers(min_value=0, max_value=20000))
max_new_tokens = st.one_of(st.sampled_from([1, 16, 96, 256]),
                           st.integers(min_value=1, max_value=5000))
priorities = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]),
                       st.floats(min_value=0.0, max_value=1.0, allow_nan=False))
timings = st.one_of(
    st.none(),
    st.tuples(st.just("timeout"),
              st.one_of(st.sampled_from([0.1, 0.5, 1.0, 2.0, 5.0, 20.0]),
                        st.floats(min_value=0.01, max_value=100.0))),
    st.tuples(st.just("deadline"),
              st.one_of(st.sampled_from([0.5, 1.0, 3.0, 16.0]),
                        st.floats(min_value=0.01, max_value=100.0))),
)
# A dependency: ("id", k) -> the k-th issued id (mod the number issued);
# ("unknown", k) -> an id not issued yet.
dep_refs = st.lists(
    st.one_of(st.tuples(st.just("id"), st.integers(0, 1000)),
              st.tuples(st.just("id"), st.integers(0, 1000)),
              st.tuples(st.just("id"), st.integers(0, 1000)),
              st.tuples(st.just("unknown"), st.integers(0, 3))),
    max_size=3,
)
batchables = st.sampled_from([True, True, True, False])
picks = st.integers(min_value=0, max_value=1000)

op_submit = st.tuples(st.just("submit"), dts, prompt_tokens, max_new_tokens, priorities,
                      timings, st.one_of(st.just([]), dep_refs), batchables)
op_submit_many = st.tuples(
    st.just("submit_many"), dts,
    st.lists(st.tuples(prompt_tokens, max_new_tokens, priorities,
                       st.one_of(st.none(), st.sampled_from([0.5, 1.0, 3.0]))),
             min_size=1, max_size=4))
op_step = st.tuples(st.just("step"), dts)
op_complete = st.tuples(st.just("complete"), dts, picks)
op_complete_many = st.tuples(st.just("complete_many"), dts, st.lists(picks, min_size=1,
                                                                      max_size=3))
op_fail = st.tuples(st.just("fail"), dts, picks, st.booleans())
op_cancel = st.tuples(st.just("cancel"), picks, st.booleans())
op_bad = st.tuples(st.just("bad_call"), st.sampled_from(["complete", "fail"]), picks)

operations = st.one_of(
    op_submit, op_submit, op_submit, op_submit, op_submit_many,
    op_step, op_step, op_step, op_step,
    op_complete, op_complete, op_complete, op_complete_many,
    op_fail, op_fail,
    op_cancel,
    op_bad,
)

CAPACITIES = [0.25, 0.5, 1.0, 1.0, 2.0, 4.0]


@st.composite
def fleets(draw):
    n = draw(st.integers(min_value=1, max_value=4))
    caps = [draw(st.sampled_from(CAPACITIES)) for _ in range(n)]
    inflight = [draw(st.integers(min_value=1, max_value=3)) for _ in range(n)]
    return caps, inflight


@st.composite
def configs(draw):
    """Config kwargs: mostly the defaults, sometimes perturbed (ties, big Q, no aging)."""
    cfg: Dict[str, Any] = {}
    if draw(st.booleans()):
        return cfg
    if draw(st.booleans()):
        cfg["weight_urgency"] = draw(st.sampled_from([0.0, 0.5, 1.0, 0.37]))
        cfg["weight_resource"] = draw(st.sampled_from([0.0, 0.3, 1.0]))
        cfg["weight_deadline"] = draw(st.sampled_from([0.0, 0.2, 1.0, 5.0]))
    if draw(st.booleans()):
        cfg["resource_scale_tokens"] = draw(st.sampled_from([4096.0, 100.0, 1e5, 1.0]))
    if draw(st.booleans()):
        cfg["deadline_levels"] = draw(st.sampled_from([1, 2, 3, 16, 255, 256, 300, 1024]))
    for name, alts in (("aging_priority", [0.0, 0.01, 1.0]),
                       ("aging_weighted", [0.0, 0.01, 0.5]),
                       ("aging_srtf", [0.0, 64.0, 1000.0]),
                       ("aging_edf", [0.0, 0.5, 1.0])):
        if draw(st.integers(0, 3)) == 0:
            cfg[name] = draw(st.sampled_from(alts))
    if draw(st.booleans()):
        cfg["no_deadline_horizon"] = draw(st.sampled_from([60.0, 1.0, 0.5, 7.25]))
    return cfg


scenarios = st.fixed_dictionaries({
    "policy": st.sampled_from(POLICIES),
    "fleet": fleets(),
    "max_batch_size": st.integers(min_value=1, max_value=8),
    "config": configs(),
    "max_retries": st.sampled_from([0, 1, 3]),
    "t0": st.sampled_from([0.0, 0.0, 1000.0, -50.0, 1e6 + 0.3]),
    "ops": st.lists(operations, min_size=8, max_size=80),
})


# --- the harness -----------------------------------------------------------------------

ERROR_MAP = {
    RefDependencyError: "DependencyError",
    RefInvalidRequest: "InvalidRequestError",
    RefUnknownRequest: "UnknownRequestError",
    RefRequestState: "RequestStateError",
}

COUNTER_KEYS = ("accepted", "completed", "failed", "expired", "cancelled", "retried",
                "dispatched", "batches", "waiting", "queued", "in_flight")
DEVICE_KEYS = ("max_inflight_batches", "inflight_batches", "inflight_requests",
               "dispatched_requests", "dispatched_batches", "completed_requests")


class Harness:
    """Drives the reference and (when given) the real scheduler in lockstep."""

    def __init__(self, sc: Dict[str, Any], real: bool) -> None:
        caps, inflight = sc["fleet"]
        self.cfg_kwargs = dict(sc["config"])
        self.cfg_kwargs["max_retries"] = sc["max_retries"]
        self.ref = ReferenceScheduler(caps, inflight, sc["policy"], sc["max_batch_size"],
                                      self.cfg_kwargs, sc["max_retries"])
        self.real = None
        if real:
            devices = [capsched.Device(f"dev{i}", c, m)
                       for i, (c, m) in enumerate(zip(caps, inflight))]
            self.real = capsched.Scheduler(devices, policy=sc["policy"],
                                           max_batch_size=sc["max_batch_size"],
                                           config=capsched.Config(**self.cfg_kwargs))
        self.t = sc["t0"]  # the time the caller passes (may run backwards)
        self.issued: List[int] = []
        self.log: List[str] = []

    # -- helpers --

    def now_clamped(self) -> float:
        return self.t if self.t > self.ref.now else self.ref.now

    def advance(self, dt: float) -> float:
        self.t = self.t + dt
        return self.t

    def record(self, line: str) -> None:
        self.log.append(line)
        if currently_in_test_context():
            note(line)

    def event(self, what: str) -> None:
        """Coverage labels (pytest --hypothesis-show-statistics)."""
        if currently_in_test_context():
            event(what)

    def expect_same_error(self, ref_exc: RefError, fn) -> None:
        """The real call must raise the mapped capsched error and change nothing."""
        if self.real is None:
            return
        before = self.real.stats()
        expected = getattr(cerrors, ERROR_MAP[type(ref_exc)])
        with pytest.raises(expected):
            fn()
        after = self.real.stats()
        assert before == after, f"a refused call changed the scheduler: {before} -> {after}"

    def live_ids(self, states) -> List[int]:
        return [i for i in self.issued if self.ref.requests[i].state in states]

    # -- operations --

    def submit(self, dt, pt, mnt, prio, timing, deps_spec, batchable) -> None:
        t = self.advance(dt)
        timeout = deadline = None
        if timing is not None:
            kind, v = timing
            if kind == "timeout":
                timeout = v
            else:
                deadline = self.now_clamped() + v  # strictly after the clamped now
        deps: List[int] = []
        for kind, k in deps_spec:
            if kind == "id" and self.issued:
                # Mostly recent ids (more likely still live), sometimes any.
                n = len(self.issued)
                dep = self.issued[-1 - k % min(n, 4)] if k % 3 else self.issued[k % n]
            elif kind == "unknown":
                dep = self.ref.next_id + k
            else:
                continue
            if dep not in deps:
                deps.append(dep)
        self.record(f"submit(pt={pt}, mnt={mnt}, p={prio!r}, timeout={timeout!r}, "
                    f"deadline={deadline!r}, deps={deps}, batchable={batchable}, now={t!r})")
        try:
            rid = self.ref.submit(pt, mnt, prio, timeout, deadline, t, deps, batchable)
        except RefError as exc:
            self.record(f"  -> ref raises {type(exc).__name__}: {exc}")
            self.event(f"refused submit: {type(exc).__name__}")

            req = None
            if self.real is not None:
                req = capsched.InferenceRequest(
                    prompt_tokens=pt, max_new_tokens=mnt, priority=prio, timeout=timeout,
                    deadline=deadline, depends_on=tuple(deps), batchable=batchable)
            self.expect_same_error(exc, lambda: self.real.submit(req, now=t))
            if req is not None:
                assert req.id is None, "a refused request must stay unsubmitted"
            return
        self.issued.append(rid)
        self.record(f"  -> id {rid} ({self.ref.status(rid)})")
        if self.real is not None:
            req = capsched.InferenceRequest(
                prompt_tokens=pt, max_new_tokens=mnt, priority=prio, timeout=timeout,
                deadline=deadline, depends_on=tuple(deps), batchable=batchable)
            got = self.real.submit(req, now=t)
            assert got == rid, f"submit returned id {got}, reference issued {rid}"
            assert req.id == rid

    def submit_many(self, dt, items) -> None:
        t = self.advance(dt)
        self.record(f"submit_many({items!r}, now={t!r})")
        ids = [self.ref.submit(pt, mnt, p, to, None, t) for pt, mnt, p, to in items]
        self.issued.extend(ids)
        if self.real is not None:
            import numpy as np

            got = self.real.submit_many(
                np.array([x[0] for x in items], dtype=np.int64),
                max_new_tokens=np.array([x[1] for x in items], dtype=np.int64),
                priority=np.array([x[2] for x in items], dtype=np.float64),
                timeout=np.array([math.nan if x[3] is None else x[3] for x in items],
                                 dtype=np.float64),
                now=t)
            assert [int(x) for x in got] == ids

    def step(self, dt) -> None:
        t = self.advance(dt)
        batches, expired, failed = self.ref.step(t)
        groups = self.ref.last_failed_groups
        self.record(f"step(now={t!r}) -> batches={batches} expired={expired} "
                    f"failed={[i for i, _ in failed]}")
        if expired:
            self.event("step expired some")
        if failed:
            self.event("step reported dependency failures")
        if len(batches) > 1:
            self.event("step dispatched on several devices")
        if any(len(ids) == 1 and not self.ref.requests[ids[0]].batchable
               for _, ids in batches):
            self.event("non-batchable request dispatched alone")
        if self.real is None:
            return
        res = self.real.step(now=t)
        got_batches = [(int(b.device_index), [int(i) for i in b.request_ids])
                       for b in res.batches]
        assert got_batches == batches, (
            f"step(now={t!r}) batches differ:\n real {got_batches}\n  ref {batches}\n"
            f"  ref ready order was computed at now={self.ref.now!r}")
        for b in res.batches:
            assert b.device == f"dev{b.device_index}"
        assert [int(i) for i in res.dispatched] == [i for _, ids in batches for i in ids]
        assert [int(i) for i in res.expired] == expired, (
            f"step(now={t!r}) expired differ: real {list(res.expired)} ref {expired}")
        got_failed = [(int(i), r) for i, r in res.failed]
        assert len(got_failed) == len(failed), (
            f"step(now={t!r}) failed differ: real {got_failed} ref {failed}")
        # The order of the dependency-failure events is specified ("in the order they
        # happened"); the order inside one cascade is not, so compare each event's ids
        # as a set, in event order.
        pos = 0
        for g in groups:
            real_ids = {i for i, _ in got_failed[pos:pos + len(g)]}
            assert real_ids == {i for i, _ in g}, (
                f"step(now={t!r}) failed differ: real {got_failed} ref groups {groups}")
            pos += len(g)
        for _, reason in got_failed:
            assert isinstance(reason, str) and reason
        # StepResult.now: the time the step ran at, i.e. clamped to the latest seen.
        assert res.now == self.ref.now, f"StepResult.now is {res.now!r}, ref {self.ref.now!r}"

    def complete(self, dt, pick) -> None:
        cands = self.live_ids(("in_flight",))
        if not cands:
            return
        rid = cands[pick % len(cands)]
        t = self.advance(dt)
        self.record(f"complete({rid}, now={t!r})")
        self.ref.complete(rid, t)
        if self.real is not None:
            self.real.complete(rid, now=t)

    def complete_many(self, dt, pick_list) -> None:
        cands = self.live_ids(("in_flight",))
        if not cands:
            return
        ids: List[int] = []
        for p in pick_list:
            rid = cands[p % len(cands)]
            if rid not in ids:
                ids.append(rid)
        t = self.advance(dt)
        self.record(f"complete_many({ids}, now={t!r})")
        for rid in ids:
            self.ref.complete(rid, t)
        if self.real is not None:
            self.real.complete_many(ids, now=t)

    def fail(self, dt, pick, retryable) -> None:
        cands = self.live_ids(("in_flight",))
        if not cands:
            return
        rid = cands[pick % len(cands)]
        t = self.advance(dt)
        self.record(f"fail({rid}, now={t!r}, retryable={retryable})")
        requeued = self.ref.fail(rid, t, retryable, "boom")
        self.event(f"fail: retryable={retryable} requeued={requeued}")
        self.record(f"  -> {requeued}")
        if self.real is not None:
            got = self.real.fail(rid, now=t, retryable=retryable, error="boom")
            assert bool(got) == requeued, f"fail({rid}) returned {got}, reference {requeued}"

    def cancel(self, pick, unknown) -> None:
        if unknown or not self.issued:
            rid = self.ref.next_id + pick % 3
            self.record(f"cancel({rid})  # never issued")
            try:
                self.ref.cancel(rid)
            except RefUnknownRequest as exc:
                self.expect_same_error(exc, lambda: self.real.cancel(rid))
                if self.real is not None:
                    with pytest.raises(cerrors.UnknownRequestError):
                        self.real.status(rid)
                return
            raise AssertionError("reference cancelled an unknown id")
        rid = self.issued[pick % len(self.issued)]
        self.record(f"cancel({rid})  # was {self.ref.status(rid)}")
        ok = self.ref.cancel(rid)
        if self.real is not None:
            got = self.real.cancel(rid)
            assert bool(got) == ok, f"cancel({rid}) returned {got}, reference {ok}"

    def bad_call(self, which, pick) -> None:
        """complete()/fail() on an id that is not in flight must be refused."""
        cands = [i for i in self.issued if self.ref.requests[i].state != "in_flight"]
        if not cands or not math.isfinite(self.ref.now):
            return
        rid = cands[pick % len(cands)]
        now = self.ref.now  # no clock advance, so a refused call has nothing to undo
        self.record(f"{which}({rid}, now={now!r})  # refused: {self.ref.status(rid)}")
        try:
            if which == "complete":
                self.ref.complete(rid, now)
            else:
                self.ref.fail(rid, now, True, "x")
        except RefRequestState as exc:
            if which == "complete":
                self.expect_same_error(exc, lambda: self.real.complete(rid, now=now))
            else:
                self.expect_same_error(
                    exc, lambda: self.real.fail(rid, now=now, retryable=True, error="x"))
            return
        raise AssertionError("reference accepted a call on a request not in flight")

    def apply(self, op) -> None:
        getattr(self, op[0])(*op[1:])

    # -- comparison after every operation --

    def check(self) -> None:
        ref = self.ref
        assert ref.check_invariants(), "the reference model broke its own invariants"
        if self.real is None:
            return
        real = self.real
        assert real.check_invariants() is True
        for rid in self.issued:
            got, want = real.status(rid), ref.status(rid)
            assert got == want, f"status({rid}) is {got!r}, reference says {want!r}"
        st_real = real.stats()
        st_ref = ref.stats()
        for k in COUNTER_KEYS:
            assert st_real[k] == st_ref[k], (
                f"stats()[{k!r}] is {st_real[k]}, reference {st_ref[k]}\n"
                f"real {st_real}\nref  {st_ref}")
        assert st_real["policy"] == ref.policy
        assert st_real["conservation_ok"] is True
        if math.isfinite(ref.now):
            assert st_real["now"] == ref.now
        # Conservation, recomputed from the real counters.
        assert st_real["accepted"] == sum(
            st_real[k] for k in ("completed", "failed", "expired", "cancelled", "waiting",
                                 "queued", "in_flight"))
        devs = st_real.get("devices")
        if isinstance(devs, list) and devs and isinstance(devs[0], dict):
            assert len(devs) == len(st_ref["devices"])
            for i, (dr, dm) in enumerate(zip(devs, st_ref["devices"])):
                for k in DEVICE_KEYS:
                    if k in dr:
                        assert dr[k] == dm[k], (
                            f"stats()['devices'][{i}][{k!r}] is {dr[k]}, reference {dm[k]}")
                if "capacity" in dr:
                    assert math.isclose(dr["capacity"], dm["capacity"], rel_tol=1e-12)


def run_scenario(sc: Dict[str, Any], real: bool) -> Harness:
    h = Harness(sc, real)
    h.record(f"scenario: policy={sc['policy']} fleet={sc['fleet']} "
             f"max_batch_size={sc['max_batch_size']} config={h.cfg_kwargs} t0={sc['t0']}")
    h.check()
    h.event(f"ops: {min(len(sc['ops']) // 20 * 20, 60)}+")
    for op in sc["ops"]:
        h.apply(op)
        h.check()
    # Drain: a final step must agree too (it reports pending dependency failures).
    h.step(1.0)
    h.check()
    return h


# --- the properties --------------------------------------------------------------------


@needs_capsched
@prop_settings(300)
@given(sc=scenarios)
def test_real_scheduler_matches_reference(sc):
    run_scenario(sc, real=True)


@needs_capsched
@pytest.mark.parametrize("policy", POLICIES)
@prop_settings(40)
@given(sc=scenarios)
def test_real_scheduler_matches_reference_per_policy(policy, sc):
    """The same, with every policy guaranteed its share of examples."""
    sc = dict(sc, policy=policy)
    run_scenario(sc, real=True)


@needs_capsched
@prop_settings(60)
@given(
    policy=st.sampled_from(POLICIES),
    n=st.integers(min_value=2, max_value=40),
    prio=priorities,
    tokens=prompt_tokens,
    timing=timings,
    fleet=fleets(),
    mbs=st.integers(min_value=1, max_value=8),
    t0=st.sampled_from([0.0, 1e6 + 0.3]),
    dt=st.sampled_from([0.0, 1.0]),
)
def test_ties_break_by_id(policy, n, prio, tokens, timing, fleet, mbs, t0, dt):
    """Identical requests submitted at one instant dispatch in id order, across devices."""
    ops = [("submit", 0.0, tokens, 16, prio, timing, [], True) for _ in range(n)]
    ops.append(("step", dt))
    sc = dict(policy=policy, fleet=fleet, max_batch_size=mbs, config={}, max_retries=3,
              t0=t0, ops=ops)
    h = run_scenario(sc, real=True)
    dispatched = [i for i in h.issued if h.ref.status(i) == "in_flight"]
    assert dispatched == sorted(dispatched)


@needs_capsched
@prop_settings(80)
@given(
    q=st.sampled_from([1, 2, 3, 16, 16, 16, 300, 1024]),
    aging=st.sampled_from([0.0, 0.0, 0.01]),
    w_d=st.sampled_from([0.2, 1.0]),
    t0=st.sampled_from([0.0, 1e6 + 0.3]),
    reqs=st.lists(
        st.tuples(st.sampled_from([0.0, 0.0, 0.5, 1.0]),           # arrival offset
                  st.one_of(st.none(),
                            st.sampled_from([0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 17.0, 30.0]),
                            st.floats(min_value=0.05, max_value=40.0)),  # timeout
                  st.sampled_from([0.5, 0.5, 0.75])),                 # priority
        min_size=2, max_size=25),
    ticks=st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.0, 3.0]), min_size=1,
                   max_size=40),
)
def test_weighted_deadline_levels_order(q, aging, w_d, t0, reqs, ticks):
    """Weighted with tied static scores: the order is decided by the deadline level
    L(now) (and aging), so each one-request step checks the level of every ready request
    at that now -- ticks land exactly on the level-change instants c_k = d + 1 - Q/k."""
    # Arrivals on a small grid, as time advances between submits; T = 64 tokens for all.
    ops = []
    last = 0.0
    for off, timeout, p in sorted(reqs, key=lambda x: x[0]):
        ops.append(("submit", off - last, 0, 63, p,
                    None if timeout is None else ("timeout", timeout), [], True))
        last = off
    for dt in ticks:
        ops.append(("step", dt))
        ops.append(("complete", 0.0, 0))
    sc = dict(policy="weighted", fleet=([1.0], [1]), max_batch_size=1,
              config={"deadline_levels": q, "aging_weighted": aging, "weight_deadline": w_d},
              max_retries=3, t0=t0, ops=ops)
    run_scenario(sc, real=True)


@needs_capsched
def test_refused_dependency_submit_changes_nothing():
    """A worked example of the dependency rules (the property test covers them broadly)."""
    ops = [
        ("submit", 0.0, 10, 10, 0.5, None, [], True),                  # 1
        ("submit", 0.0, 10, 10, 0.5, ("timeout", 1.0), [], True),      # 2
        ("submit", 0.0, 10, 10, 0.5, None, [("id", 0)], True),          # 3 waits on 1
        ("step", 2.0),                                                 # 2 expires
        ("submit", 0.0, 10, 10, 0.5, None, [("id", 1)], True),          # refused: 2 expired
        ("submit", 0.0, 10, 10, 0.5, None, [("unknown", 0)], True),     # refused: unknown
        ("submit", 0.0, 10, 10, 0.5, None, [("id", 2)], True),          # 4 waits on 3
        ("cancel", 0, False),                                          # 1 cancelled: 3, 4 fail
        ("submit", 0.0, 10, 10, 0.5, None, [("id", 3)], True),          # refused: 4 failed
        ("step", 0.0),
    ]
    sc = dict(policy="fcfs", fleet=([1.0], [1]), max_batch_size=4, config={},
              max_retries=3, t0=0.0, ops=ops)
    h = run_scenario(sc, real=True)
    assert h.issued == [1, 2, 3, 4]
    assert [h.ref.status(i) for i in h.issued] == ["cancelled", "expired", "failed", "failed"]


@needs_capsched
def test_step_result_now_is_clamped():
    """Time never runs backwards: a step called with an earlier `now` runs at the latest
    time seen, and StepResult.now says so (as stats()['now'] does)."""
    s = capsched.Scheduler(["gpu0"], policy="fcfs")
    s.submit(capsched.InferenceRequest(prompt_tokens=1, max_new_tokens=1), now=10.0)
    res = s.step(now=5.0)
    assert s.stats()["now"] == 10.0
    assert res.now == 10.0


# --- reference-only properties (run even before the package is built) ------------------


@prop_settings(60)
@given(sc=scenarios)
def test_reference_model_is_self_consistent(sc):
    run_scenario(sc, real=False)


@prop_settings(300)
@given(
    d=st.one_of(st.sampled_from([0.0, 10.0, 1e6 + 0.3, -50.0]),
                st.floats(min_value=-1e7, max_value=1e7)),
    q=st.one_of(st.sampled_from([1, 2, 3, 16, 255, 256, 1024]), st.integers(1, 1024)),
    off=st.one_of(st.floats(min_value=-1100.0, max_value=5.0),
                  st.sampled_from([0.0, -1.0, 1.0, -3.0])),
    tiny=st.sampled_from([0.0, 1e-9, -1e-9, 1e-12]),
)
def test_level_bisection_matches_bruteforce(d, q, off, tiny):
    now = d + off + tiny
    assert weighted_level(d, now, q) == weighted_level_bruteforce(d, now, q)


# --- no starvation ---------------------------------------------------------------------


def starvation_bound(policy: str, low_tokens: int) -> float:
    c = CONFIG_DEFAULTS
    if policy == "priority":
        return 1.0 / c["aging_priority"]
    if policy == "weighted":
        return (c["weight_urgency"] + c["weight_resource"] + c["weight_deadline"]) / \
            c["aging_weighted"]
    if policy == "srtf":
        return (low_tokens - 1) / c["aging_srtf"]
    raise ValueError(policy)


class _RefDriver:
    """The reference behind the small interface the starvation scenario uses."""

    def __init__(self, policy: str, mbs: int) -> None:
        self.s = ReferenceScheduler([1.0], [1], policy, mbs, {}, 3)

    def submit(self, pt, mnt, p, timeout, now):
        return self.s.submit(pt, mnt, p, timeout, None, now)

    def step(self, now):
        batches, _, _ = self.s.step(now)
        return [i for _, ids in batches for i in ids]

    def complete(self, rid, now):
        self.s.complete(rid, now)


class _RealDriver:
    def __init__(self, policy: str, mbs: int) -> None:
        self.s = capsched.Scheduler([capsched.Device("gpu0", 1.0, 1)], policy=policy,
                                    max_batch_size=mbs, config=capsched.Config())

    def submit(self, pt, mnt, p, timeout, now):
        return self.s.submit(capsched.InferenceRequest(
            prompt_tokens=pt, max_new_tokens=mnt, priority=p, timeout=timeout), now=now)

    def step(self, now):
        return [int(i) for i in self.s.step(now=now).dispatched]

    def complete(self, rid, now):
        self.s.complete(rid, now=now)


def starvation_scenario(driver, policy, t0, mbs, rnd, backlog):
    """One device, fed continuously (more arrivals per tick than it serves) with requests
    that all beat the low one on their static key. The low request, submitted at t0, must
    be dispatched before any request submitted after t0 + bound."""
    low_tokens = 4096 + 4000  # T >= resource_scale_tokens: the worst resource term
    bound = starvation_bound(policy, low_tokens)
    tick = 1.0  # arrivals on a 1 s grid: "after t0 + bound" has a clear margin
    arrival: Dict[int, float] = {}
    now = t0 - backlog * tick
    # A backlog of strong requests before t0.
    while now < t0:
        for _ in range(rnd.randint(1, 3)):
            rid = driver.submit(rnd.randint(0, 32), rnd.randint(1, 32), 1.0, None, now)
            arrival[rid] = now
        now += tick
    now = t0
    low = driver.submit(low_tokens - 4000, 4000, 0.0, None, now)
    arrival[low] = now
    in_flight: List[int] = []
    order: List[int] = []
    horizon = t0 + 6 * bound + 100
    while low not in order:
        assert now <= horizon, "the low-priority request was never dispatched"
        # Serve: complete what is in flight, then feed more than one batch of arrivals.
        for rid in in_flight:
            driver.complete(rid, now)
        for _ in range(mbs + rnd.randint(0, 2)):
            p = rnd.choice([1.0, 1.0, 0.9, rnd.uniform(0.5, 1.0)])
            timeout = rnd.choice([None, None, 2.0, 20.0]) if policy == "weighted" else None
            rid = driver.submit(rnd.randint(0, 32), rnd.randint(1, 32), p, timeout, now)
            arrival[rid] = now
        in_flight = driver.step(now)
        order.extend(in_flight)
        now += tick
    before_low = order[:order.index(low)]
    late = [r for r in before_low if arrival[r] > t0 + bound]
    assert not late, (
        f"{policy}: low request {low} (arrived {t0}) dispatched after requests that "
        f"arrived more than {bound} s later: {[(r, arrival[r]) for r in late[:5]]}")
    return len(before_low)


starvation_args = dict(
    policy=st.sampled_from(["priority", "weighted", "srtf"]),
    t0=st.sampled_from([0.0, 1000.0, 1e6]),
    mbs=st.integers(min_value=1, max_value=3),
    rnd=st.randoms(use_true_random=False),
    backlog=st.integers(min_value=0, max_value=20),
)


@needs_capsched
@prop_settings(8)
@given(**starvation_args)
def test_no_starvation_real(policy, t0, mbs, rnd, backlog):
    starvation_scenario(_RealDriver(policy, mbs), policy, t0, mbs, rnd, backlog)


@prop_settings(2)
@given(**starvation_args)
def test_no_starvation_reference(policy, t0, mbs, rnd, backlog):
    starvation_scenario(_RefDriver(policy, mbs), policy, t0, mbs, rnd, backlog)
