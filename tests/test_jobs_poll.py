"""JobRunner.poll: the incremental poll against the old rescanning algorithm, the
pre-check of predictable refusals, a long chain, and polls from several threads."""

from __future__ import annotations

import math
import random
import sys
import threading
import time
from typing import Any, Optional

import pytest

import capsched
from capsched import Device, InferenceRequest, Scheduler
from capsched.errors import InvalidRequestError, QueueFullError
from capsched.jobs import JobRunner, Task

ENDED = ("completed", "failed", "expired", "cancelled")


class FakeScheduler:
    """Ids and statuses only: a test sets any status; an ended one stays."""

    def __init__(self) -> None:
        self.statuses: dict[int, str] = {}
        self.requests: dict[int, InferenceRequest] = {}

    def submit(self, req: InferenceRequest, *, now: Optional[float] = None) -> int:
        rid = len(self.statuses) + 1
        self.statuses[rid] = "waiting" if req.depends_on else "queued"
        self.requests[rid] = req
        return rid

    def status(self, rid: int) -> str:
        return self.statuses[rid]

    def set(self, rid: int, status: str) -> None:
        if self.statuses[rid] not in ENDED:
            self.statuses[rid] = status


class OldRunner:
    """JobRunner.poll before the incremental rewrite (capsched 9f37bd1^), less its
    pre-checks: rescans every pending task and asks the status of every dependency."""

    def __init__(self, scheduler: Any, runner: JobRunner) -> None:
        self.s = scheduler
        self._by_id = {t.task_id: t for t in runner.tasks}
        self.latest_finish = dict(runner.latest_finish)
        self.sched_class = runner.sched_class
        self.ids: dict[str, int] = {}
        self.submission_order: list[str] = []
        self.skipped: dict[str, str] = {}
        self._pending: list[str] = list(self.latest_finish)

    def next_poll_at(self, after: float = -math.inf) -> float:
        t = math.inf
        for tid in self._pending:
            st = self._by_id[tid].schedule_time
            if st is not None and after < st < t:
                t = st
        return t

    def status(self, task_id: str) -> str:
        if task_id in self.skipped:
            return "skipped"
        rid = self.ids.get(task_id)
        return "pending" if rid is None else self.s.status(rid)

    def poll(self, now: float) -> list[tuple[str, int]]:
        s = self.s
        due: list[tuple[str, InferenceRequest]] = []
        reqs: dict[str, InferenceRequest] = {}
        skip: dict[str, str] = {}
        for tid in self._pending:
            t = self._by_id[tid]
            reason = None
            ready = True
            for d in t.depends_on:
                if d in self.skipped or d in skip:
                    reason = f"dependency {d!r} was not run ({(self.skipped.get(d) or skip[d])})"
                    break
                rid = self.ids.get(d)
                if rid is not None:
                    st = s.status(rid)
                    if st in ("failed", "expired", "cancelled"):
                        reason = f"dependency {d!r} (request {rid}) {st}"
                        break
                elif d not in reqs:
                    ready = False
            if reason is not None:
                skip[tid] = reason
                continue
            if not ready or (t.schedule_time is not None and t.schedule_time > now):
                continue
            lf = self.latest_finish[tid]
            if lf <= now:
                skip[tid] = f"its latest finish {lf:g} passed before it could be submitted (now {now:g})"
                continue
            deps = [self.ids[d] if d in self.ids else reqs[d] for d in t.depends_on]
            req = t.to_request(deadline=lf if math.isfinite(lf) else None, depends_on=deps,
                               sched_class=self.sched_class)
            reqs[tid] = req
            due.append((tid, req))
        self.skipped.update(skip)
        submitted = []
        for tid, req in due:
            rid = s.submit(req, now=now)
            self.ids[tid] = rid
            self.submission_order.append(tid)
            submitted.append((tid, rid))
        done = {tid for tid, _ in submitted}
        self._pending = [tid for tid in self._pending if tid not in done and tid not in skip]
        return submitted


def _random_job(rng: random.Random) -> list[Task]:
    n = rng.randint(1, 30)
    names = [f"t{i}" for i in range(n)]
    tasks = []
    for i, name in enumerate(names):
        k = rng.choice([0, 0, 1, 1, 2, 3])
        deps = tuple(rng.sample(names[:i], min(k, i)))
        tasks.append(Task(
            name,
            prompt_tokens=rng.randint(1, 50),
            schedule_time=rng.choice([None, None, float(rng.randint(0, 12))]),
            depends_on=deps,
            deadline=rng.choice([None, None, None, float(rng.randint(1, 25))]),
            duration_estimate=float(rng.choice([0, 0, 1, 2])),
            shards=rng.choice([1, 1, 1, 1, 2, 3]),
        ))
    rng.shuffle(tasks)  # (a shuffled list is not in topological order)
    return tasks


@pytest.mark.parametrize("seed", range(300))
def test_poll_matches_the_old_rescanning_poll(seed):
    rng = random.Random(seed)
    tasks = _random_job(rng)
    job_deadline = rng.choice([None, float(rng.randint(5, 30))])
    new_s, old_s = FakeScheduler(), FakeScheduler()
    runner = JobRunner(new_s, tasks, job_deadline=job_deadline)
    ref = OldRunner(old_s, runner)
    now = float(rng.randint(-2, 3))
    for _ in range(rng.randint(1, 25)):
        got, want = runner.poll(now), ref.poll(now)
        assert got == want
        assert list(runner.skipped.items()) == list(ref.skipped.items())
        assert runner.ids == ref.ids and runner.submission_order == ref.submission_order
        for tid in ref.latest_finish:
            assert runner.status(tid) == ref.status(tid), tid
        for after in (-math.inf, now, now - 1.5, now + 2.5):
            assert runner.next_poll_at(after) == ref.next_poll_at(after)
        assert runner.submitted_all() == (not ref._pending)
        # the scheduler moves on: requests end (the same ones in both)
        for rid, st in list(old_s.statuses.items()):
            if st not in ENDED and rng.random() < 0.3:
                how = rng.choice(["completed", "completed", "completed", "failed", "expired", "cancelled", "in_flight"])
                old_s.set(rid, how)
                new_s.set(rid, how)
        now += rng.choice([0.0, 0.5, 1.0, 2.0, 3.0, -1.0])
    for _ in range(2):
        for rid in list(old_s.statuses):
            old_s.set(rid, "completed")
            new_s.set(rid, "completed")
        now += 30.0
        assert runner.poll(now) == ref.poll(now)
    for rid in list(old_s.statuses):
        new_s.set(rid, "completed")
    assert list(runner.skipped.items()) == list(ref.skipped.items())
    assert runner.submitted_all() and not ref._pending and runner.done()


def test_a_dependency_failure_skips_a_task_before_its_schedule_time():
    s = FakeScheduler()
    r = JobRunner(s, [Task("a", prompt_tokens=1), Task("b", prompt_tokens=1, depends_on=("a",), schedule_time=50.0),
                      Task("c", prompt_tokens=1, depends_on=("b",))])
    assert [t for t, _ in r.poll(0.0)] == ["a"]
    s.set(r.ids["a"], "failed")
    assert r.poll(1.0) == []
    assert r.skipped == {"b": "dependency 'a' (request 1) failed", "c": "dependency 'b' was not run "
                         "(dependency 'a' (request 1) failed)"}
    assert r.submitted_all() and r.next_poll_at() == math.inf


def test_a_long_chain_polled_once_per_task_is_linear():
    """A 20,000-task chain, task i due at time i, polled and completed one task at a time
    on a real scheduler. Before the incremental poll each poll rescanned the pending
    tasks: 10,000 tasks took about 11 s (quadratic); now 20,000 take about 1 s."""
    n = 20_000
    tasks = [Task(f"t{i}", prompt_tokens=1, max_new_tokens=1, schedule_time=float(i),
                  depends_on=(f"t{i - 1}",) if i else ()) for i in range(n)]
    s = Scheduler(["g0"], enable_dynamic_batching=False)
    r = JobRunner(s, tasks, sched_class="normal")
    t0 = time.perf_counter()
    for i in range(n):
        now = float(i)
        assert [tid for tid, _ in r.poll(now)] == [f"t{i}"]
        assert r.next_poll_at(now) == (now + 1 if i + 1 < n else math.inf)
        (batch,) = s.step(now).batches
        s.complete(batch.request_ids[0], now)
    assert r.done() and len(r.ids) == n
    elapsed = time.perf_counter() - t0
    print(f"{n} polls: {elapsed:.2f} s")


def test_polls_from_eight_threads_submit_each_task_once():
    rng = random.Random(7)
    n = 400
    tasks = []
    for i in range(n):
        deps = tuple(rng.sample([f"t{j}" for j in range(max(0, i - 20), i)], min(i, rng.randint(0, 2))))
        tasks.append(Task(f"t{i}", prompt_tokens=1, max_new_tokens=1, depends_on=deps,
                          schedule_time=float(rng.randint(0, 40))))
    clock = [0.0]
    lock = threading.Lock()
    s = Scheduler(["g0", "g1"], max_batch_size=8, clock=lambda: clock[0])
    r = JobRunner(s, tasks, sched_class="normal")
    pairs: list[tuple[str, int]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def poller() -> None:
        try:
            while not stop.is_set():
                got = r.poll()
                with lock:
                    pairs.extend(got)
                r.status("t0"), r.submitted_all(), r.next_poll_at(), r.task_of(1)
        except BaseException as exc:  # pragma: no cover (reported below)
            errors.append(exc)

    def completer() -> None:
        try:
            deadline = time.monotonic() + 60
            while not r.done() and time.monotonic() < deadline:
                clock[0] += 0.5
                for b in s.step(clock[0]).batches:
                    for rid in b.request_ids:
                        s.complete(rid, clock[0])
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)
        finally:
            stop.set()

    threads = [threading.Thread(target=poller) for _ in range(8)] + [threading.Thread(target=completer)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: races show (without the lock, tasks went in twice)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors
    assert r.done() and r.submitted_all() and not r.skipped
    assert sorted(tid for tid, _ in pairs) == sorted(t.task_id for t in tasks)
    assert len({rid for _, rid in pairs}) == n and r.ids == dict(pairs)
    assert sorted(r.submission_order) == sorted(r.ids) and len(r.submission_order) == n
    assert all(r.status(t.task_id) == "completed" for t in tasks)


# --------------------------------------------------------------------------- pre-check


def test_no_device_open_to_a_tenant_submits_nothing():
    s = Scheduler([Device("g0", tenants=["a"]), Device("g1", tenants=["b"])])
    r = JobRunner(s, [Task("x", prompt_tokens=1, tenant="a"), Task("y", prompt_tokens=1, tenant="c")])
    with pytest.raises(InvalidRequestError, match=r"task 'y': no device is open to tenant 'c'.*nothing was submitted"):
        r.poll(0.0)
    assert r.ids == {} and r.skipped == {} and s.stats()["accepted"] == 0 and r.status("x") == "pending"


def test_the_kv_check_counts_only_the_devices_open_to_the_tenant():
    s = Scheduler([Device("big", kv_tokens=10_000), Device("small", kv_tokens=100, tenants=["t"])])
    r = JobRunner(s, [Task("x", prompt_tokens=1), Task("y", prompt_tokens=500, tenant="t")])
    with pytest.raises(InvalidRequestError, match=r"task 'y': .*largest kv_tokens is 100\).*nothing was submitted"):
        r.poll(0.0)
    assert s.stats()["accepted"] == 0


def test_a_failed_precheck_records_no_skips_and_a_later_poll_redoes_them():
    s = Scheduler(["g0"], config={"max_queued": 1})
    s.submit(capsched.InferenceRequest(prompt_tokens=1), now=0.0)  # the queue is full
    tasks = [Task("late", prompt_tokens=1, deadline=1.0, schedule_time=2.0),
             Task("after", prompt_tokens=1, depends_on=("late",)),
             Task("x", prompt_tokens=1), Task("y", prompt_tokens=1)]
    r = JobRunner(s, tasks)
    with pytest.raises(QueueFullError, match="task 'x'.*nothing was submitted"):
        r.poll(5.0)
    assert r.skipped == {} and r.ids == {} and r.status("late") == "pending" and r.next_poll_at() == 2.0
    s2 = Scheduler(["g0"])
    r.scheduler = s2
    assert [t for t, _ in r.poll(5.0)] == ["x", "y"]
    assert set(r.skipped) == {"late", "after"}


def test_a_deadline_not_after_the_scheduler_clock_submits_nothing():
    s = Scheduler(["g0"])
    s.step(10.0)  # the scheduler's clock is at 10
    r = JobRunner(s, [Task("a", prompt_tokens=1), Task("b", prompt_tokens=1, deadline=8.0)])
    with pytest.raises(InvalidRequestError, match="task 'b': deadline 8 is not after.*nothing was submitted"):
        r.poll(5.0)
    assert s.stats()["accepted"] == 0


def test_a_tenant_over_max_queued_per_tenant_in_one_poll_submits_what_fits():
    s = Scheduler(["g0"], config={"max_queued_per_tenant": 2})
    r = JobRunner(s, [Task(f"t{i}", prompt_tokens=1, tenant="a") for i in range(3)])
    with pytest.raises(QueueFullError, match="task 't2'.*max_queued_per_tenant = 2.*submitted the 2 task"):
        r.poll(0.0)
    assert s.stats()["accepted"] == 2 and list(r.ids) == ["t0", "t1"] and r.status("t2") == "pending"


def test_poll_docstring_describes_the_precheck():
    doc = JobRunner.poll.__doc__ or ""
    assert "nothing\n        was submitted" in doc or "nothing was submitted" in doc.replace("\n        ", " ")
    assert capsched.JobRunner is JobRunner
