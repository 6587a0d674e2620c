"""Behaviour of the scheduler through the public API: order, expiry, retries, cancel,
dependencies, devices and batches. (The randomized comparison against the reference
model is in test_reference_properties.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from capsched import Config, Device, InferenceRequest, Scheduler
from capsched.errors import ConfigError


def req(tokens: int = 10, **kw) -> InferenceRequest:
    return InferenceRequest(prompt_tokens=tokens, **kw)


def one_device(policy: str, batch: int = 64, **cfg) -> Scheduler:
    return Scheduler(["gpu"], policy=policy, max_batch_size=batch, config=Config(**cfg))


def test_fcfs_dispatches_in_arrival_order() -> None:
    s = one_device("fcfs")
    ids = [s.submit(req(priority=p), now=t) for t, p in [(0.0, 0.1), (1.0, 0.9), (2.0, 0.5)]]
    assert s.step(now=3.0).dispatched == ids


def test_priority_orders_by_priority_then_submission() -> None:
    s = one_device("priority")
    a = s.submit(req(priority=0.2), now=0.0)
    b = s.submit(req(priority=0.9), now=0.0)
    c = s.submit(req(priority=0.9), now=0.0)  # ties go to the earlier id
    assert s.step(now=0.0).dispatched == [b, c, a]


def test_priority_aging_lets_an_old_request_overtake() -> None:
    s = one_device("priority", aging_priority=0.01)
    old = s.submit(req(priority=0.0), now=0.0)
    # 1 priority unit = 100 s of waiting: a top-priority request 101 s later loses.
    new = s.submit(req(priority=1.0), now=101.0)
    assert s.step(now=101.0).dispatched == [old, new]
    s2 = one_device("priority", aging_priority=0.01)
    old = s2.submit(req(priority=0.0), now=0.0)
    new = s2.submit(req(priority=1.0), now=99.0)
    assert s2.step(now=99.0).dispatched == [new, old]


def test_edf_orders_by_deadline_and_bounds_requests_without_one() -> None:
    s = one_device("edf", no_deadline_horizon=10.0)
    none = s.submit(req(), now=0.0)  # treated as due at 10 s
    late = s.submit(req(timeout=20.0), now=0.0)
    soon = s.submit(req(timeout=5.0), now=0.0)
    assert s.step(now=0.0).dispatched == [soon, none, late]


def test_srtf_prefers_fewest_tokens_with_aging() -> None:
    s = one_device("srtf", aging_srtf=64.0)
    long = s.submit(req(1000, max_new_tokens=24), now=0.0)  # 1024 tokens
    short = s.submit(req(10, max_new_tokens=6), now=0.0)  # 16 tokens
    assert s.step(now=0.0).dispatched == [short, long]
    s2 = one_device("srtf", aging_srtf=64.0)
    long = s2.submit(req(1000, max_new_tokens=24), now=0.0)
    # (1024 - 16) / 64 = 15.75 s of waiting makes up the difference.
    short = s2.submit(req(10, max_new_tokens=6), now=16.0)
    assert s2.step(now=16.0).dispatched == [long, short]


def test_weighted_deadline_term_promotes_at_the_level_times() -> None:
    # Only the deadline term differs: equal priority and size, no aging.
    s = one_device("weighted", aging_weighted=0.0, deadline_levels=4)
    relaxed = s.submit(req(), now=0.0)  # no deadline: proximity 0
    urgent = s.submit(req(deadline=10.0), now=0.0)
    # Level 1 of 4 starts at c_1 = d + 1 - 4/1 = 7 s.
    assert s.step(now=6.999).dispatched == [relaxed, urgent]
    s = one_device("weighted", aging_weighted=0.0, deadline_levels=4)
    relaxed = s.submit(req(), now=0.0)
    urgent = s.submit(req(deadline=10.0), now=0.0)
    assert s.step(now=7.0).dispatched == [urgent, relaxed]


def test_weighted_score_uses_the_seed_weights() -> None:
    s = one_device("weighted", aging_weighted=0.0)
    # priority 1.0 big request: 0.5*1 + 0.3*(0.1/1.1) = 0.527
    # priority 0.6 tiny request: 0.5*0.6 + 0.3*(0.1/(~0)+0.1)~ 0.3 + 0.3*0.9757 = 0.593
    big = s.submit(req(4000, max_new_tokens=96, priority=1.0), now=0.0)
    tiny = s.submit(req(1, max_new_tokens=9, priority=0.6), now=0.0)
    assert s.step(now=0.0).dispatched == [tiny, big]


def test_expiry_at_the_next_step_and_dependents_fail_with_reason() -> None:
    s = one_device("fcfs", batch=1)
    blocker = s.submit(req(), now=0.0)
    s.step(now=0.0)  # device busy with the blocker
    doomed = s.submit(req(timeout=1.0), now=0.0)
    child = s.submit(req(depends_on=[doomed]), now=0.0)
    grandchild = s.submit(req(depends_on=[child]), now=0.0)
    assert s.step(now=0.999).expired == []
    r = s.step(now=1.0)  # deadline <= now: expired
    assert r.expired == [doomed]
    assert [i for i, _ in r.failed] == [child, grandchild]
    assert r.failed[0][1] == f"dependency {doomed} expired"
    assert f"request {doomed} expired" in r.failed[1][1]
    assert [s.status(i) for i in (doomed, child, grandchild)] == ["expired", "failed", "failed"]
    s.complete(blocker, now=1.0)
    st = s.stats()
    assert (st["expired"], st["failed"], st["completed"], st["conservation_ok"]) == (1, 2, 1, True)


def test_dependents_are_released_when_dependencies_complete() -> None:
    s = one_device("fcfs")
    a = s.submit(req(), now=0.0)
    b = s.submit(req(), now=0.0)
    c = s.submit(req(depends_on=[a, b]), now=0.0)
    assert s.status(c) == "waiting"
    assert s.step(now=0.0).dispatched == [a, b]
    s.complete(a, now=1.0)
    assert s.status(c) == "waiting"
    s.complete(b, now=1.0)
    assert s.status(c) == "queued"
    assert s.step(now=1.0).dispatched == [c]
    # A dependency that already completed counts as satisfied.
    d = s.submit(req(depends_on=[a]), now=1.0)
    assert s.status(d) == "queued"


def test_failure_cascades_with_the_error_text() -> None:
    s = one_device("fcfs")
    a = s.submit(req(), now=0.0)
    b = s.submit(req(depends_on=[a]), now=0.0)
    s.step(now=0.0)
    assert s.fail(a, now=0.5, error="CUDA out of memory") is False
    r = s.step(now=0.5)
    assert r.failed == [(b, f"dependency {a} failed: CUDA out of memory")]


def _splitmix64_uniforms(seed: int):
    """The core's jitter stream, written from its definition (docs/policies.md)."""
    mask = (1 << 64) - 1
    state = seed
    while True:
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        z ^= z >> 31
        yield (z >> 11) * 2.0**-53


def test_retryable_failures_back_off_then_requeue_until_tries_run_out() -> None:
    s = Scheduler(["gpu"], max_batch_size=4, config=Config(max_retries=2, retry_base=0.5, retry_seed=7))
    u = _splitmix64_uniforms(7)
    a = s.submit(req(), now=0.0)
    t = 0.0
    for k in (1, 2):
        assert s.step(now=t).dispatched == [a]
        assert s.fail(a, now=t, retryable=True, error="flaky") is True
        assert s.status(a) == "retrying"
        # Backoff before the k-th retry: min(cap, 0.5 x 2^(k-1)) x (1 + u) / 2.
        delay = min(10.0, 0.5 * 2 ** (k - 1)) * (1.0 + next(u)) / 2.0
        r = s.step(now=t)  # still backing off: nothing to run, and when to come back
        assert r.dispatched == [] and r.next_step_at == t + delay
        assert s.stats()["retrying"] == 1 and s.stats()["conservation_ok"]
        t = r.next_step_at
    assert s.step(now=t).dispatched == [a]
    assert s.fail(a, now=t, retryable=True) is False  # third failure: out of tries
    assert s.status(a) == "failed"
    st = s.stats()
    assert (st["retried"], st["dispatched"], st["failed"], st["retrying"]) == (2, 3, 1, 0)
    # retry_base=0: straight back to the queue.
    s0 = Scheduler(["gpu"], config=Config(retry_base=0.0))
    b = s0.submit(req(), now=0.0)
    s0.step(now=0.0)
    assert s0.fail(b, now=0.0, retryable=True) is True and s0.status(b) == "queued"


def test_retry_after_the_deadline_fails_instead() -> None:
    s = one_device("fcfs")
    a = s.submit(req(timeout=1.0), now=0.0)
    s.step(now=0.0)
    assert s.fail(a, now=2.0, retryable=True) is False
    assert s.status(a) == "failed"


def test_a_retry_that_could_not_start_before_the_deadline_fails_at_once() -> None:
    # Backoff of the first retry is at least retry_base / 2 = 5 s; 1 s is left.
    s = Scheduler(["gpu"], policy="fcfs", config=Config(retry_base=10.0))
    a = s.submit(req(timeout=2.0), now=0.0)
    dep = s.submit(req(depends_on=(a,)), now=0.0)
    s.step(now=1.0)
    assert s.fail(a, now=1.0, retryable=True, error="flaky") is False
    assert s.status(a) == "failed"
    r = s.step(now=1.0)
    assert r.failed == [(dep, f"dependency {a} failed: flaky; its retry could not start before its deadline")]


def test_a_retrying_request_can_expire_or_be_cancelled() -> None:
    s = Scheduler(["gpu"], policy="fcfs", config=Config(retry_base=1.0))
    a = s.submit(req(timeout=1.5), now=0.0)
    b = s.submit(req(), now=0.0)
    s.step(now=0.0)
    assert s.fail(a, now=0.1, retryable=True) is True  # back at 0.6 .. 1.1
    assert s.fail(b, now=0.1, retryable=True) is True
    assert s.cancel(b) is True and s.status(b) == "cancelled"
    r = s.step(now=1.5)  # a's deadline came before it ran again
    assert r.expired == [a] and s.status(a) == "expired"
    assert s.check_invariants() and s.stats()["conservation_ok"]


def test_cancel_queued_waiting_and_in_flight() -> None:
    s = Scheduler(["gpu"], max_batch_size=2)
    a = s.submit(req(), now=0.0)
    b = s.submit(req(), now=0.0)
    s.step(now=0.0)
    q = s.submit(req(), now=0.0)
    w = s.submit(req(depends_on=[q]), now=0.0)
    assert s.cancel(a) is True  # in flight
    assert s.cancel(a) is False  # already ended
    assert s.cancel(w) is True
    assert s.cancel(q) is True
    assert [s.status(i) for i in (a, b, q, w)] == ["cancelled", "in_flight", "cancelled", "cancelled"]
    assert s.stats()["devices"][0]["inflight_batches"] == 1
    s.complete(b, now=1.0)
    assert s.stats()["devices"][0]["inflight_batches"] == 0  # the batch is done


def test_strongest_free_device_first_one_batch_each_and_inflight_limit() -> None:
    s = Scheduler(
        [Device("small", 1.0), Device("big", 4.0, max_inflight_batches=2), Device("mid", 2.0)], max_batch_size=2
    )
    ids = list(s.submit_many(np.full(12, 5), now=0.0))
    r = s.step(now=0.0)
    assert [(b.device, b.request_ids) for b in r.batches] == [
        ("big", ids[0:2]),
        ("mid", ids[2:4]),
        ("small", ids[4:6]),
    ]
    r = s.step(now=0.0)  # only big has a free slot
    assert [(b.device, b.request_ids) for b in r.batches] == [("big", ids[6:8])]
    assert s.step(now=0.0).batches == []
    caps = {d["name"]: d["capacity"] for d in s.stats()["devices"]}
    assert caps == {"small": 256.0, "big": 1024.0, "mid": 512.0}


def test_non_batchable_requests_run_alone() -> None:
    s = Scheduler(["a", "b", "c"], policy="fcfs", max_batch_size=8)
    x = s.submit(req(), now=0.0)
    solo = s.submit(req(batchable=False), now=0.0)
    y = s.submit(req(), now=0.0)
    r = s.step(now=0.0)
    # The solo request takes the next device alone; y still joins x's batch on a.
    assert [(b.device, b.request_ids) for b in r.batches] == [("a", [x, y]), ("b", [solo])]
    # With one device the solo request waits for the next free slot, alone, and
    # nothing behind it overtakes it.
    s1 = Scheduler(["a"], policy="fcfs", max_batch_size=8)
    x, solo, y = (s1.submit(req(batchable=bool(i != 1)), now=0.0) for i in range(3))
    assert [b.request_ids for b in s1.step(now=0.0).batches] == [[x]]
    s1.complete(x, now=1.0)
    assert [b.request_ids for b in s1.step(now=1.0).batches] == [[solo]]
    s1.complete(solo, now=2.0)
    assert [b.request_ids for b in s1.step(now=2.0).batches] == [[y]]


def test_time_never_runs_backwards() -> None:
    s = one_device("fcfs")
    a = s.submit(req(timeout=1.0), now=10.0)
    # An earlier now (a thread that read the clock before another) counts as 10.0.
    r = s.step(now=5.0)
    assert r.now == 10.0 and r.dispatched == [a]
    assert s.stats()["now"] == 10.0


def test_submit_many_is_all_or_nothing_and_ids_are_sequential() -> None:
    s = one_device("priority")
    ids = s.submit_many([5, 6, 7], priority=[0.1, 0.9, 0.5], timeout=[1.0, float("nan"), 2.0], now=0.0)
    assert ids.dtype == np.uint64 and ids.tolist() == [1, 2, 3]
    with pytest.raises(Exception):
        s.submit_many([5, 6], priority=[0.5, 7.0], now=0.0)
    assert s.stats()["accepted"] == 3
    assert s.step(now=0.0).dispatched == [2, 3, 1]
    s.complete_many(ids, now=0.5)
    assert s.stats()["completed"] == 3


def test_clock_is_used_when_now_is_omitted() -> None:
    t = [100.0]
    s = Scheduler(["gpu"], clock=lambda: t[0])
    a = s.submit(req(timeout=2.0))
    t[0] = 101.0
    assert s.step().dispatched == [a]
    assert s.stats()["now"] == 101.0
    b = s.submit(req(timeout=2.0))  # deadline 103
    s.complete(a)
    t[0] = 103.0
    assert s.step().expired == [b]


def test_back_pressure_bounds_the_queue_in_all_and_per_tenant() -> None:
    from capsched import QueueFullError

    s = Scheduler(["gpu"], policy="fcfs", max_batch_size=1,
                  config=Config(max_queued=4, max_queued_per_tenant=2, retry_base=0.0))
    a1 = s.submit(req(tenant="alice"), now=0.0)
    s.submit(req(tenant="alice"), now=0.0)
    before = s.stats()
    with pytest.raises(QueueFullError, match="tenant 'alice'.*max_queued_per_tenant = 2"):
        s.submit(req(tenant="alice"), now=0.0)
    after = s.stats()
    assert after.pop("rejected") == 1 and {**after, "rejected": 0} == before  # nothing accepted, no id used
    s.submit(req(tenant="bob"), now=0.0)
    with pytest.raises(QueueFullError, match="max_queued = 4"):
        s.submit_many([10, 10], now=0.0)  # all or none: 3 + 2 > 4
    assert s.stats()["accepted"] == 3 and s.stats()["rejected"] == 3
    s.submit_many([10], now=0.0)  # 4 of 4
    # In flight does not count: dispatching one frees a place, and a retry that comes
    # back is never refused, even over the bound.
    assert s.step(now=0.0).dispatched == [a1]
    s.submit(req(tenant="bob"), now=0.0)
    assert s.fail(a1, now=0.0, retryable=True) is True
    st = s.stats()
    assert st["queued"] == 5 and st["conservation_ok"] and s.check_invariants()
    with pytest.raises(ConfigError, match="max_queued"):
        Config(max_queued=-1)


def test_queue_depth_by_scheduling_class() -> None:
    s = Scheduler(["gpu"], max_batch_size=1)
    for cls, n in (("normal", 3), ("strict", 2), ("deadline", 1), ("background", 4)):
        for _ in range(n):
            s.submit(req(sched_class=cls, timeout=50.0), now=0.0)
    st = s.stats()
    assert (st["queued_deadline"], st["queued_strict"], st["queued_normal"], st["queued_background"]) == (1, 2, 3, 4)
    s.step(now=0.0)  # the deadline-class one goes first
    st = s.stats()
    assert st["queued_deadline"] == 0 and st["queued"] == 9 == sum(
        st[f"queued_{c}"] for c in ("deadline", "strict", "normal", "background"))
