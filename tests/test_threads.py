"""Many threads on one Scheduler: the books must balance and nothing may run twice.

Submitter threads submit (one InferenceRequest at a time, and with submit_many, some with
timeouts and dependencies), one thread steps, worker threads complete / fail (retryable
or not) / cancel the ids the steps hand them, and one more thread cancels arbitrary ids.
Every thread does a bounded number of operations. Afterwards the main thread drains the
scheduler (step + complete until nothing is live) and checks that

* every accepted id ended exactly once, and its final status() matches how it ended;
* no id was dispatched while it was still in flight: a dispatch is only repeated after a
  retryable fail() re-queued it (checked at the moment of each dispatch, and in total:
  dispatches == re-queues + [ended from in flight]);
* the stats() counters equal what the threads observed, conservation holds, and
  check_invariants() is True.
"""

from __future__ import annotations

import itertools
import queue
import random
import threading
import time
from collections import Counter
from typing import Callable, Dict, List, Optional

import numpy as np
import pytest

from capsched import Config, Device, InferenceRequest, Scheduler
from capsched.errors import DependencyError, DuplicateRequestError, RequestStateError

N_SUBMITTERS = 3
N_WORKERS = 3
SUBMIT_ROUNDS = 500  # per submitter thread
STRIPES = 64


class Run:
    """Shared state of one concurrent run; each list/Counter is written by one thread
    (or appended to, which is atomic), and merged after the threads are joined."""

    def __init__(self, sched: Scheduler, now: Callable[[], Optional[float]]) -> None:
        self.s = sched
        self.now = now
        self.errors: List[BaseException] = []
        self.accepted: List[List[int]] = [[] for _ in range(N_SUBMITTERS)]
        self.pool: List[int] = []  # every accepted id, for dependencies and the canceller
        # Written by the stepper only.
        self.dispatches: Counter = Counter()
        self.expired: List[int] = []
        self.dep_failed: List[int] = []
        # Per worker / canceller.
        self.requeued = [Counter() for _ in range(N_WORKERS)]
        self.ended: List[List[tuple]] = [[] for _ in range(N_WORKERS + 1)]  # (id, outcome)
        # Ids in flight as far as the test knows; guarded by striped locks so that a
        # worker's fail()/complete() and the test's bookkeeping are one step for the
        # stepper's check.
        self.locks = [threading.Lock() for _ in range(STRIPES)]
        self.in_flight: set = set()
        self.work: "queue.Queue[Optional[List[int]]]" = queue.Queue()
        self.submitters_done = threading.Event()
        self.stepper_done = threading.Event()

    def lock(self, rid: int) -> threading.Lock:
        return self.locks[rid % STRIPES]

    def guard(self, fn: Callable, *args) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.errors.append(exc)
            self.submitters_done.set()
            self.stepper_done.set()


def submitter(run: Run, k: int, seed: int) -> None:
    rnd = random.Random(seed)
    mine = run.accepted[k]
    for _ in range(SUBMIT_ROUNDS):
        timeout = rnd.choice([None, None, None, 0.02, 0.2, 2.0])
        if rnd.random() < 0.5:
            deps = ()
            if run.pool and rnd.random() < 0.2:
                deps = (rnd.choice(run.pool),)
            req = InferenceRequest(
                prompt_tokens=rnd.randrange(0, 5000),
                max_new_tokens=rnd.randrange(1, 512),
                priority=rnd.random(),
                timeout=timeout,
                depends_on=deps,
                batchable=rnd.random() < 0.9,
                tenant=rnd.choice([None, "a", "b"]),
            )
            try:
                rid = run.s.submit(req, now=run.now())
            except DependencyError:
                # The dependency ended without completing in the meantime: refused, and
                # the object is left unsubmitted.
                assert req.id is None
                continue
            assert req.id == rid
            mine.append(rid)
            run.pool.append(rid)
        else:
            n = rnd.randrange(1, 12)
            ids = run.s.submit_many(
                np.array([rnd.randrange(0, 5000) for _ in range(n)]),
                max_new_tokens=rnd.randrange(1, 512),
                priority=np.array([rnd.random() for _ in range(n)]),
                timeout=np.nan if timeout is None else timeout,
                now=run.now(),
            )
            assert ids.dtype == np.uint64 and len(ids) == n
            got = [int(i) for i in ids]
            assert got == list(range(got[0], got[0] + n)), "submit_many ids are consecutive"
            mine.extend(got)
            run.pool.extend(got)
        if rnd.random() < 0.3:
            time.sleep(0)  # let the others in


def stepper(run: Run) -> None:
    extra = 0
    while not run.stepper_done.is_set():
        res = run.s.step(run.now())
        seen = set()
        for b in res.batches:
            assert 1 <= len(b.request_ids) <= run.s.max_batch_size
            for rid in b.request_ids:
                assert rid not in seen, f"id {rid} twice in one step"
                seen.add(rid)
                with run.lock(rid):
                    assert rid not in run.in_flight, f"id {rid} dispatched while still in flight"
                    run.in_flight.add(rid)
                run.dispatches[rid] += 1
            run.work.put(list(b.request_ids))
        run.expired.extend(res.expired)
        run.dep_failed.extend(i for i, _ in res.failed)
        if run.submitters_done.is_set():
            extra += 1
            if extra > 20:
                break
        elif not res:
            time.sleep(0)
    run.stepper_done.set()


def worker(run: Run, k: int, seed: int) -> None:
    rnd = random.Random(seed)
    s = run.s
    ended = run.ended[k]
    requeued = run.requeued[k]
    while True:
        try:
            batch = run.work.get(timeout=0.01)
        except queue.Empty:
            if run.stepper_done.is_set() and run.work.empty():
                return
            continue
        if len(batch) > 1 and rnd.random() < 0.3:
            # All or none: fails if the canceller got one of them first.
            locks = sorted({id(run.lock(r)): run.lock(r) for r in batch}.items())
            for _, lk in locks:
                lk.acquire()
            try:
                try:
                    s.complete_many(batch, run.now())
                except RequestStateError:
                    pass  # handled one by one below
                else:
                    for rid in batch:
                        run.in_flight.discard(rid)
                        ended.append((rid, "completed"))
                    continue
            finally:
                for _, lk in reversed(locks):
                    lk.release()
        for rid in batch:
            action = rnd.random()
            with run.lock(rid):
                try:
                    if action < 0.55:
                        s.complete(rid, run.now())
                        ended.append((rid, "completed"))
                    elif action < 0.8:
                        if s.fail(rid, run.now(), retryable=True, error="transient"):
                            requeued[rid] += 1
                        else:  # out of retries
                            ended.append((rid, "failed"))
                    elif action < 0.9:
                        assert s.fail(rid, run.now(), retryable=False, error="fatal") is False
                        ended.append((rid, "failed"))
                    else:
                        if s.cancel(rid):
                            ended.append((rid, "cancelled"))
                except RequestStateError:
                    # Only the canceller can end an in-flight request behind our back.
                    assert s.status(rid) == "cancelled", s.status(rid)
                run.in_flight.discard(rid)


def canceller(run: Run, seed: int) -> None:
    rnd = random.Random(seed)
    ended = run.ended[N_WORKERS]
    for _ in range(150):
        if run.pool:
            rid = rnd.choice(run.pool)
            if run.s.cancel(rid):
                ended.append((rid, "cancelled"))
        if rnd.random() < 0.5:
            time.sleep(0)


def drain(run: Run) -> None:
    s = run.s
    for _ in range(100_000):
        st = s.stats()
        if st["waiting"] + st["queued"] + st["in_flight"] + st["retrying"] == 0:
            return
        res = s.step(run.now())
        run.expired.extend(res.expired)
        run.dep_failed.extend(i for i, _ in res.failed)
        for rid in res.dispatched:
            assert rid not in run.in_flight, f"id {rid} dispatched while still in flight"
            run.dispatches[rid] += 1
        if res.dispatched:
            s.complete_many(res.dispatched, run.now())
            run.ended[0].extend((rid, "completed") for rid in res.dispatched)
        elif not res and st["in_flight"]:
            pytest.fail(f"drain is stuck: {st['in_flight']} in flight that no thread holds")
    pytest.fail("drain did not finish")


def run_concurrently(sched: Scheduler, now: Callable[[], Optional[float]], seed: int) -> None:
    run = Run(sched, now)
    threads = [threading.Thread(target=run.guard, args=(stepper, run))]
    threads += [threading.Thread(target=run.guard, args=(worker, run, k, seed * 100 + k)) for k in range(N_WORKERS)]
    threads += [threading.Thread(target=run.guard, args=(canceller, run, seed * 100 + 50))]
    subs = [threading.Thread(target=run.guard, args=(submitter, run, k, seed * 100 + 10 + k)) for k in range(N_SUBMITTERS)]
    for t in threads + subs:
        t.start()
    for t in subs:
        t.join(timeout=60)
    run.submitters_done.set()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads + subs), "a thread hung"
    if run.errors:
        raise run.errors[0]
    assert run.work.empty()

    drain(run)

    s = sched
    accepted = [rid for lst in run.accepted for rid in lst]
    assert len(accepted) == len(set(accepted)), "an id was issued twice"
    st = s.stats()
    assert st["accepted"] == len(accepted)
    assert sorted(accepted) == list(range(1, len(accepted) + 1)), "ids are 1..n"

    # Every accepted id ended exactly once, in the way its status says.
    outcomes: Dict[int, List[str]] = {}
    for lst in run.ended:
        for rid, how in lst:
            outcomes.setdefault(rid, []).append(how)
    for rid in run.expired:
        outcomes.setdefault(rid, []).append("expired")
    for rid in run.dep_failed:
        outcomes.setdefault(rid, []).append("failed (dependency)")
    assert set(outcomes) == set(accepted)
    multi = {rid: hows for rid, hows in outcomes.items() if len(hows) != 1}
    assert not multi, f"ids that ended more than once: {dict(list(multi.items())[:5])}"
    how_ended = {rid: hows[0] for rid, hows in outcomes.items()}
    final = {rid: how.split()[0] for rid, how in how_ended.items()}
    for rid in accepted:
        assert s.status(rid) == final[rid], rid

    # Dispatch accounting: a re-dispatch only ever follows a re-queue. A request that
    # ended in flight (completed, or failed by a worker) was dispatched once more than it
    # was re-queued; one that ended queued or waiting (expired, failed through a
    # dependency) as often as it was re-queued; a cancelled one either.
    requeued = sum(run.requeued, Counter())
    for rid in accepted:
        extra = run.dispatches[rid] - requeued[rid]
        want = {"completed": {1}, "failed": {1}, "expired": {0}, "failed (dependency)": {0},
                "cancelled": {0, 1}}[how_ended[rid]]
        assert extra in want, (rid, run.dispatches[rid], requeued[rid], how_ended[rid])
        assert requeued[rid] <= s.config.max_retries

    # The books.
    counts = Counter(final.values())
    assert st["completed"] == counts["completed"]
    assert st["failed"] == counts["failed"]
    assert st["expired"] == counts["expired"]
    assert st["cancelled"] == counts["cancelled"]
    assert st["retried"] == sum(requeued.values())
    assert st["dispatched"] == sum(run.dispatches.values())
    assert st["waiting"] == st["queued"] == st["in_flight"] == 0
    assert st["accepted"] == st["completed"] + st["failed"] + st["expired"] + st["cancelled"]
    assert st["conservation_ok"] is True
    for d in st["devices"]:
        assert d["inflight_batches"] == 0 and d["inflight_requests"] == 0
    assert sum(d["dispatched_requests"] for d in st["devices"]) == st["dispatched"]
    assert sum(d["completed_requests"] for d in st["devices"]) == st["completed"]
    assert s.check_invariants() is True
    # Something of each kind happened, or the test tested little.
    assert counts["completed"] > 0 and st["retried"] > 0 and st["dispatched"] > 0


def fleet(policy: str, clock: Callable[[], float] = time.monotonic) -> Scheduler:
    devices = [Device("a", capacity=2.0, max_inflight_batches=2), "b", {"name": "c", "capacity": 0.5}]
    # Short backoffs (2 ms base) and breaker cool-downs (1 ms) so that retries and
    # devices come back within the run.
    cfg = Config(max_retries=2, retry_base=0.002, breaker_cooldown=0.001)
    return Scheduler(devices, policy=policy, max_batch_size=4, config=cfg, clock=clock)


@pytest.mark.parametrize("policy", ["weighted", "fcfs", "edf"])
def test_threads_with_a_shared_counter_clock(policy: str) -> None:
    # Virtual time: every call takes the next tick; threads may reach the core's mutex
    # out of tick order, which the core must clamp (time never runs backwards).
    ticks = itertools.count()
    lock = threading.Lock()

    def now() -> float:
        with lock:
            return next(ticks) * 0.001

    run_concurrently(fleet(policy), now, seed=1 + ["weighted", "fcfs", "edf"].index(policy))


def test_threads_with_the_default_clock() -> None:
    run_concurrently(fleet("weighted"), lambda: None, seed=7)


def test_same_request_from_two_threads_gives_one_id() -> None:
    s = Scheduler(["gpu"])
    trials = 200
    for _ in range(trials):
        req = InferenceRequest(prompt_tokens=10, priority=0.5)
        barrier = threading.Barrier(2)
        got: List[object] = [None, None]

        def go(k: int) -> None:
            barrier.wait()
            try:
                got[k] = s.submit(req, now=0.0)
            except DuplicateRequestError as exc:
                got[k] = exc
            except BaseException as exc:  # noqa: BLE001 - checked below
                got[k] = ("unexpected", exc)

        ts = [threading.Thread(target=go, args=(k,)) for k in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(timeout=10)
        ids = [g for g in got if isinstance(g, int)]
        dups = [g for g in got if isinstance(g, DuplicateRequestError)]
        assert len(ids) == 1 and len(dups) == 1, got
        assert req.id == ids[0]
    st = s.stats()
    assert st["accepted"] == trials and st["queued"] == trials
    assert s.check_invariants()
