"""Concurrency stress: 8 submitters, 1 stepper, workers, a canceller and a chaos thread.

Every thread does a bounded, seeded number of operations on one shared
:class:`capsched.Scheduler` (the interleaving is up to the OS; the operations are not):

* 8 submitter threads submit single requests (random sizes, priorities, timeouts,
  tenants, dependencies on earlier ids), bulk ``submit_many`` calls, and bad requests
  that must be refused with a precise error and change nothing; a ``max_queued`` bound
  makes some submits meet back-pressure (``QueueFullError``, counted as ``rejected``);
* one stepper thread calls ``step()`` and hands each batch to the workers; it checks, at
  the moment of each dispatch, that no id is handed out while an earlier dispatch of it
  is still live (only a retryable ``fail()`` re-queue or a migration may re-dispatch);
* 3 worker threads complete (singly or with ``complete_many``), fail (retryable or
  not) or cancel what they are handed;
* a canceller thread cancels random ids (and unknown ones, which must raise);
* a chaos thread changes devices' pressure and clock (so in-flight work migrates),
  reads ``stats()`` and checks conservation on every snapshot.

Afterwards the main thread drains the scheduler and checks that every accepted request
ended exactly once, in the way its ``status()`` says, that dispatches are accounted for,
that every counter of ``stats()`` equals what the threads saw, and ``check_invariants()``.
Joins have timeouts: a hung thread fails the test with the names of the threads still
alive instead of hanging CI.

tools/sanitize.sh runs this file under AddressSanitizer + UBSan and ThreadSanitizer.
"""

from __future__ import annotations

import itertools
import queue
import random
import threading
from collections import Counter
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import pytest

from capsched import Config, Device, InferenceRequest, Scheduler
from capsched.errors import (
    DependencyError,
    InvalidArgumentError,
    QueueFullError,
    RequestStateError,
    UnknownRequestError,
)

N_SUBMITTERS = 8
N_WORKERS = 3
SUBMITS_PER_THREAD = 300
CANCELS = 400
CHAOS_OPS = 300
JOIN_TIMEOUT = 120.0  # seconds; generous for a sanitizer build on a loaded 2-core machine
DEVICES = ("big", "mid", "small")


class Stress:
    """State shared by the threads of one run. Each list/Counter has one writer thread
    (or is only appended to, which is atomic); the main thread merges them after join."""

    def __init__(self, sched: Scheduler, now: Callable[[], float], seed: int) -> None:
        self.s = sched
        self.now = now
        self.seed = seed
        self.errors: List[Tuple[str, BaseException]] = []
        self.accepted: List[List[int]] = [[] for _ in range(N_SUBMITTERS)]
        self.pool: List[int] = []  # every accepted id (appended by submitters)
        self.queue_full = [0] * N_SUBMITTERS  # QueueFullError seen, in requests
        self.bad_refused = [0] * N_SUBMITTERS
        # Stepper only.
        self.dispatches: Counter = Counter()
        self.migrations: Counter = Counter()
        self.expired: List[int] = []
        self.dep_failed: List[int] = []
        self.steps = 0
        # Workers and canceller: (id, outcome); the last slot is the canceller's, slot 0
        # is shared with the main thread's drain (after the workers are joined).
        self.ended: List[List[Tuple[int, str]]] = [[] for _ in range(N_WORKERS + 1)]
        self.requeued = [Counter() for _ in range(N_WORKERS)]
        self.snapshots = 0
        # The live dispatch of each in-flight id: its dispatch number. Guarded by striped
        # locks, so a worker's call and this bookkeeping are one step for the stepper.
        self.locks = [threading.Lock() for _ in range(64)]
        self.live: Dict[int, int] = {}
        self.work: "queue.Queue[List[Tuple[int, int]]]" = queue.Queue()
        self.submitters_done = threading.Event()
        self.stepper_done = threading.Event()
        self.abort = threading.Event()

    def lock(self, rid: int) -> threading.Lock:
        return self.locks[rid % len(self.locks)]

    def guard(self, name: str, fn: Callable[..., None], *args: Any) -> threading.Thread:
        def body() -> None:
            try:
                fn(self, *args)
            except BaseException as exc:  # noqa: BLE001 - re-raised by the main thread
                self.errors.append((name, exc))
                self.abort.set()
                self.submitters_done.set()
                self.stepper_done.set()

        return threading.Thread(target=body, name=name, daemon=True)


def submitter(st: Stress, k: int) -> None:
    rnd = random.Random(st.seed * 1000 + k)
    mine = st.accepted[k]
    for i in range(SUBMITS_PER_THREAD):
        if st.abort.is_set():
            return
        roll = rnd.random()
        if roll < 0.06:
            # Bad input: refused with a precise error; nothing accepted, no id used.
            before = st.s.stats()["accepted"]
            bad = rnd.choice(["dep", "now", "tokens"])
            try:
                if bad == "dep":
                    st.s.submit(InferenceRequest(prompt_tokens=5, depends_on=(10**12,)), now=st.now())
                elif bad == "now":
                    st.s.submit(InferenceRequest(prompt_tokens=5), now=float("nan"))
                else:
                    st.s.submit_many(np.array([1, -3, 2]), now=st.now())
            except DependencyError as exc:
                assert bad == "dep" and str(10**12) in str(exc), exc
            except InvalidArgumentError as exc:
                assert bad in ("now", "tokens"), (bad, exc)
                assert ("nan" in str(exc).lower()) if bad == "now" else ("-3" in str(exc)), exc
            else:
                raise AssertionError(f"bad submit ({bad}) was accepted")
            st.bad_refused[k] += 1
            assert st.s.stats()["accepted"] >= before
            continue
        timeout = rnd.choice([None, None, None, 0.05, 0.3, 3.0])
        try:
            if roll < 0.85:
                deps: Tuple[int, ...] = ()
                if st.pool and rnd.random() < 0.15:
                    deps = (rnd.choice(st.pool),)
                req = InferenceRequest(
                    prompt_tokens=rnd.randrange(0, 4000),
                    max_new_tokens=rnd.randrange(1, 400),
                    priority=rnd.random(),
                    timeout=timeout,
                    depends_on=deps,
                    batchable=rnd.random() < 0.9,
                    tenant=rnd.choice([None, "t1", "t2", f"s{k}"]),
                    request_class=rnd.choice([None, "chat", "code"]),
                )
                try:
                    rid = st.s.submit(req, now=st.now())
                except DependencyError as exc:
                    # The dependency ended without completing meanwhile: refused.
                    assert req.id is None and str(deps[0]) in str(exc), exc
                    continue
                assert req.id == rid
                mine.append(rid)
                st.pool.append(rid)
            else:
                n = rnd.randrange(1, 10)
                ids = st.s.submit_many(
                    np.array([rnd.randrange(0, 4000) for _ in range(n)]),
                    max_new_tokens=rnd.randrange(1, 400),
                    priority=np.array([rnd.random() for _ in range(n)]),
                    timeout=np.nan if timeout is None else timeout,
                    now=st.now(),
                )
                got = [int(x) for x in ids]
                assert got == list(range(got[0], got[0] + n)), f"submit_many ids not consecutive: {got}"
                mine.extend(got)
                st.pool.extend(got)
        except QueueFullError:
            st.queue_full[k] += 1 if roll < 0.85 else n


def stepper(st: Stress) -> None:
    tail = 0
    while not st.stepper_done.is_set():
        res = st.s.step(st.now())
        st.steps += 1
        moved = {rid for rid, _ in res.migrated}
        for rid in moved:
            st.migrations[rid] += 1
        seen = set()
        for b in res.batches:
            assert 1 <= len(b.request_ids) <= st.s.max_batch_size, b
            handed: List[Tuple[int, int]] = []
            for rid in b.request_ids:
                assert rid not in seen, f"id {rid} twice in one step"
                seen.add(rid)
                st.dispatches[rid] += 1
                gen = st.dispatches[rid]
                with st.lock(rid):
                    if rid in moved:
                        if rid not in st.live:
                            # Its old holder ended it between the step's migration and
                            # now (as a server may, before it hears of the move).
                            continue
                    elif rid in st.live:
                        raise AssertionError(f"id {rid} handed out again while still in flight")
                    st.live[rid] = gen  # a migrated id's old dispatch is now stale
                handed.append((rid, gen))
            if handed:
                st.work.put(handed)
        st.expired.extend(res.expired)
        st.dep_failed.extend(rid for rid, _ in res.failed)
        if st.submitters_done.is_set():
            tail += 1
            if tail > 30:
                break
    st.stepper_done.set()


def _end(st: Stress, k: int, rid: int, gen: int, rnd: random.Random) -> None:
    """One worker action on a dispatched id, under its lock."""
    s = st.s
    with st.lock(rid):
        if st.live.get(rid) != gen:
            return  # cancelled and handled, or migrated: a newer dispatch owns it
        action = rnd.random()
        try:
            if action < 0.55:
                s.complete(rid, st.now(), output_tokens=rnd.choice([None, rnd.randrange(0, 400)]))
                st.ended[k].append((rid, "completed"))
            elif action < 0.8:
                if s.fail(rid, st.now(), retryable=True, error="transient"):
                    st.requeued[k][rid] += 1
                else:
                    st.ended[k].append((rid, "failed"))
            elif action < 0.9:
                assert s.fail(rid, st.now(), retryable=False, error="fatal") is False
                st.ended[k].append((rid, "failed"))
            elif s.cancel(rid):
                st.ended[k].append((rid, "cancelled"))
        except RequestStateError:
            # Only the canceller may end an in-flight request behind the worker's back.
            assert s.status(rid) == "cancelled", (rid, s.status(rid))
        del st.live[rid]


def worker(st: Stress, k: int) -> None:
    rnd = random.Random(st.seed * 1000 + 100 + k)
    while True:
        try:
            batch = st.work.get(timeout=0.01)
        except queue.Empty:
            if st.stepper_done.is_set() and st.work.empty():
                return
            continue
        if len(batch) > 1 and rnd.random() < 0.25:
            # complete_many is all or none; fall back to one by one if it refuses.
            locks = sorted({id(st.lock(r)): st.lock(r) for r, _ in batch}.items())
            for _, lk in locks:
                lk.acquire()
            try:
                if all(st.live.get(r) == g for r, g in batch):
                    try:
                        st.s.complete_many([r for r, _ in batch], st.now())
                    except RequestStateError:
                        pass
                    else:
                        for r, _ in batch:
                            del st.live[r]
                            st.ended[k].append((r, "completed"))
                        continue
            finally:
                for _, lk in reversed(locks):
                    lk.release()
        for rid, gen in batch:
            _end(st, k, rid, gen, rnd)


def canceller(st: Stress) -> None:
    rnd = random.Random(st.seed * 1000 + 200)
    for _ in range(CANCELS):
        if st.abort.is_set():
            return
        if rnd.random() < 0.05:
            with pytest.raises(UnknownRequestError, match="123456789"):
                st.s.cancel(123456789)
            continue
        if st.pool:
            rid = rnd.choice(st.pool)
            with st.lock(rid):
                if st.s.cancel(rid):
                    st.ended[N_WORKERS].append((rid, "cancelled"))
                    st.live.pop(rid, None)


def chaos(st: Stress) -> None:
    rnd = random.Random(st.seed * 1000 + 300)
    for _ in range(CHAOS_OPS):
        if st.abort.is_set():
            return
        dev = rnd.choice(DEVICES)
        op = rnd.random()
        if op < 0.35:
            st.s.set_pressure(dev, rnd.choice([0.0, 0.0, 0.3, 0.6, 0.9]), now=st.now())
        elif op < 0.6:
            st.s.set_clock(dev, rnd.choice([600.0, 1200.0, 1800.0]), now=st.now())
        elif op < 0.65:
            with pytest.raises(InvalidArgumentError, match="1.5"):
                st.s.set_pressure(dev, 1.5, now=st.now())
        else:
            snap = st.s.stats()
            assert snap["conservation_ok"], {k: snap[k] for k in ("accepted", "completed", "in_flight")}
            st.snapshots += 1


def drain(st: Stress) -> None:
    s = st.s
    for dev in DEVICES:  # full capacity back, so that nothing keeps migrating
        s.set_pressure(dev, 0.0, now=st.now())
        s.set_clock(dev, 1800.0, now=st.now())
    for _ in range(100_000):
        # Step before looking: a step reports the dependency failures that the workers'
        # last calls caused (stats() counts them at once, StepResult.failed at the next step).
        res = s.step(st.now())
        st.expired.extend(res.expired)
        st.dep_failed.extend(rid for rid, _ in res.failed)
        for rid, _ in res.migrated:
            st.migrations[rid] += 1
        for rid in res.dispatched:
            st.dispatches[rid] += 1
        if res.dispatched:
            s.complete_many(res.dispatched, st.now())
            st.ended[0].extend((rid, "completed") for rid in res.dispatched)
            continue
        snap = s.stats()
        if snap["waiting"] + snap["queued"] + snap["in_flight"] + snap["retrying"] == 0:
            return
        if not res and snap["in_flight"] and not snap["retrying"] and not snap["queued"]:
            pytest.fail(f"drain is stuck: {snap['in_flight']} in flight that no thread holds")
    pytest.fail("drain did not finish")


def run_stress(sched: Scheduler, now: Callable[[], float], seed: int) -> Stress:
    st = Stress(sched, now, seed)
    background = [st.guard("stepper", stepper)]
    background += [st.guard(f"worker-{k}", worker, k) for k in range(N_WORKERS)]
    others = [st.guard("canceller", canceller), st.guard("chaos", chaos)]
    subs = [st.guard(f"submitter-{k}", submitter, k) for k in range(N_SUBMITTERS)]
    for t in background + others + subs:
        t.start()
    for t in subs + others:
        t.join(timeout=JOIN_TIMEOUT)
    st.submitters_done.set()
    for t in background:
        t.join(timeout=JOIN_TIMEOUT)
    hung = [t.name for t in background + others + subs if t.is_alive()]
    assert not hung, f"threads still running after {JOIN_TIMEOUT:.0f} s (deadlock?): {hung}"
    if st.errors:
        name, exc = st.errors[0]
        raise AssertionError(f"thread {name} failed: {exc!r}") from exc
    assert st.work.empty()
    assert not st.live, f"ids left in flight by the workers: {sorted(st.live)[:10]}"
    drain(st)
    check_books(st)
    return st


def check_books(st: Stress) -> None:
    s = st.s
    snap = s.stats()
    accepted = [rid for lst in st.accepted for rid in lst]
    assert len(accepted) == len(set(accepted)), "an id was issued twice"
    assert sorted(accepted) == list(range(1, len(accepted) + 1)), "ids are not 1..n"
    assert snap["accepted"] == len(accepted)
    assert snap["rejected"] == sum(st.queue_full)

    outcomes: Dict[int, List[str]] = {}
    for lst in st.ended:
        for rid, how in lst:
            outcomes.setdefault(rid, []).append(how)
    for rid in st.expired:
        outcomes.setdefault(rid, []).append("expired")
    for rid in st.dep_failed:
        outcomes.setdefault(rid, []).append("failed-dependency")
    never = set(accepted) - set(outcomes)
    assert not never, f"accepted ids that never ended: {sorted(never)[:10]}"
    assert set(outcomes) == set(accepted), "an unaccepted id ended"
    twice = {rid: hows for rid, hows in outcomes.items() if len(hows) != 1}
    assert not twice, f"ids that ended more than once: {dict(list(twice.items())[:5])}"
    how = {rid: hows[0] for rid, hows in outcomes.items()}
    final = {rid: h.split("-")[0] for rid, h in how.items()}
    for rid in accepted:
        assert s.status(rid) == final[rid], (rid, s.status(rid), how[rid])

    # A re-dispatch only follows a re-queue or a migration; a request that ended in
    # flight was dispatched once more than that, one that ended queued or waiting as
    # often, a cancelled one either.
    requeued = sum(st.requeued, Counter())
    for rid in accepted:
        extra = st.dispatches[rid] - requeued[rid] - st.migrations[rid]
        want = {"completed": {1}, "failed": {1}, "expired": {0}, "failed-dependency": {0}, "cancelled": {0, 1}}
        assert extra in want[how[rid]], (rid, st.dispatches[rid], requeued[rid], st.migrations[rid], how[rid])
        assert requeued[rid] <= s.config.max_retries

    counts = Counter(final.values())
    assert snap["completed"] == counts["completed"]
    assert snap["failed"] == counts["failed"]
    assert snap["expired"] == counts["expired"]
    assert snap["cancelled"] == counts["cancelled"]
    assert snap["retried"] == sum(requeued.values())
    assert snap["dispatched"] == sum(st.dispatches.values())
    assert snap["migrated"] == sum(st.migrations.values())
    assert snap["waiting"] == snap["queued"] == snap["in_flight"] == snap["retrying"] == 0
    assert snap["accepted"] == snap["completed"] + snap["failed"] + snap["expired"] + snap["cancelled"]
    assert snap["conservation_ok"] is True
    for d in snap["devices"]:
        assert d["inflight_batches"] == 0 and d["inflight_requests"] == 0, d["name"]
    assert sum(d["dispatched_requests"] for d in snap["devices"]) == snap["dispatched"]
    assert s.check_invariants() is True
    # Each kind of event happened, or the run tested little.
    assert counts["completed"] and counts["failed"] and counts["cancelled"] and snap["retried"]
    assert sum(st.bad_refused) > 0 and st.snapshots > 0


def make_scheduler(policy: str, clock: Callable[[], float]) -> Scheduler:
    devices = [
        Device("big", capacity=4.0, max_inflight_batches=2, max_clock_mhz=1800.0),
        Device("mid", capacity=2.0, max_inflight_batches=2, max_clock_mhz=1800.0),
        Device("small", capacity=1.0, max_clock_mhz=1800.0),
    ]
    # Short backoffs and breaker cool-downs (virtual seconds) so that retries and devices
    # come back within the run; a queue bound so that back-pressure happens.
    cfg = Config(max_retries=2, retry_base=0.002, breaker_cooldown=0.002, max_queued=300)
    return Scheduler(devices, policy=policy, max_batch_size=6, config=cfg, clock=clock)


def tick_clock() -> Callable[[], float]:
    """Virtual time: every call takes the next millisecond. Threads may reach the core
    out of tick order; the core must clamp (time never runs backwards inside it)."""
    ticks = itertools.count()
    lock = threading.Lock()

    def now() -> float:
        with lock:
            return next(ticks) * 0.001

    return now


@pytest.mark.parametrize("policy,seed", [("weighted", 1), ("edf", 2), ("fcfs", 3)])
def test_stress_every_request_ends_exactly_once(policy: str, seed: int) -> None:
    clock = tick_clock()
    run_stress(make_scheduler(policy, clock), clock, seed)


def test_stress_is_not_vacuous() -> None:
    # The oracle must be able to fail: a scheduler whose books are off by one request
    # (one accepted request ended twice in the threads' view) is caught.
    clock = tick_clock()
    st = run_stress(make_scheduler("weighted", clock), clock, 4)
    rid, _ = st.ended[0][0] if st.ended[0] else st.ended[1][0]
    st.ended[N_WORKERS].append((rid, "cancelled"))
    with pytest.raises(AssertionError, match="more than once"):
        check_books(st)
