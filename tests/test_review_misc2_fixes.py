"""Fixes from a review: JobRunner.done()'s cost and poll's stats() reads, and the Ray
router's ranking and logging of replicas whose routing stats fail (one streak for a
flapping replica); typing.get_type_hints on names imported only under TYPE_CHECKING."""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest

from capsched import Config, Scheduler
from capsched.errors import QueueFullError
from capsched.jobs import JobRunner, Task

ENDED = ("completed", "failed", "expired", "cancelled")


class CountingScheduler(Scheduler):
    """A Scheduler that counts the status() and stats() calls made on it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.status_calls = 0
        self.stats_calls = 0

    def status(self, request_id: int) -> str:
        self.status_calls += 1
        return super().status(request_id)

    def stats(self) -> dict[str, Any]:
        self.stats_calls += 1
        return super().stats()


def _reference_done(r: JobRunner, s: Scheduler) -> bool:
    """done() by its definition: every task skipped, or submitted and ended."""
    return all(
        t.task_id in r.skipped or (t.task_id in r.ids and Scheduler.status(s, r.ids[t.task_id]) in ENDED)
        for t in r.tasks
    )


# --------------------------------------------------------------------------- JobRunner.done()


def test_done_follows_every_state_change():
    # pending, waiting, queued, in flight, retrying, cancelled, completed, failed (and a
    # dependent failed with it), expired, skipped: done() agrees with its definition
    # after each, also when requests end out of submission order.
    s = Scheduler(["g0"], policy="fcfs", max_batch_size=1, enable_dynamic_batching=False,
                  config=Config(max_retries=3))
    tasks = [
        Task("a", prompt_tokens=1),
        Task("b", prompt_tokens=1),
        Task("c", prompt_tokens=1),
        Task("d", prompt_tokens=1, deadline=5.0),
        Task("e", prompt_tokens=1, depends_on=("c",)),
        Task("f", prompt_tokens=1, schedule_time=20.0),
        Task("g", prompt_tokens=1, depends_on=("e",), schedule_time=20.0),
    ]
    r = JobRunner(s, tasks, sched_class="normal")

    def status():
        return {t: s.status(i) for t, i in r.ids.items()}

    def dispatch(now):
        return [x for b in s.step(now=now).batches for x in b.request_ids]

    def done(label):
        got = r.done()
        assert got == _reference_done(r, s), (label, status(), r.skipped)
        return got

    assert not done("nothing submitted")
    r.poll(0.0)
    assert status() == {"a": "queued", "b": "queued", "c": "queued", "d": "queued", "e": "waiting"}
    assert not done("queued and waiting")
    assert dispatch(0.0) == [r.ids["a"]] and not done("a in flight")
    s.fail(r.ids["a"], now=0.0, retryable=True, error="flaky")
    assert status()["a"] == "retrying" and not done("a retrying")
    s.cancel(r.ids["b"])  # a later request ends while the oldest is live
    assert status()["b"] == "cancelled" and not done("b cancelled, a live")
    assert dispatch(0.1) == [r.ids["a"]] and not done("a in flight again")
    s.complete(r.ids["a"], now=0.2)
    assert status()["a"] == "completed" and not done("a completed, c live")
    assert dispatch(0.3) == [r.ids["c"]] and not done("c in flight")
    s.fail(r.ids["c"], now=0.3, retryable=False, error="broken")
    assert status()["c"] == status()["e"] == "failed" and not done("c and e failed, d live")
    assert dispatch(10.0) == [] and status()["d"] == "expired"
    assert not done("d expired, f and g pending")
    assert r.poll(10.0) == [] and "g" in r.skipped  # its dependency e failed
    assert not done("g skipped, f pending")
    assert [t for t, _ in r.poll(20.0)] == ["f"] and not done("f queued")
    assert dispatch(20.0) == [r.ids["f"]] and not done("f in flight")
    s.complete(r.ids["f"], now=21.0)
    assert done("all ended") and done("asked again")


@pytest.mark.parametrize("seed", range(40))
def test_done_matches_its_definition_under_random_operations(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 14)
    tasks = []
    for i in range(n):
        deps = tuple(f"t{j}" for j in range(i) if rng.random() < 0.15)
        tasks.append(Task(
            f"t{i}", prompt_tokens=1,
            depends_on=deps,
            schedule_time=rng.choice([None, None, float(rng.randint(0, 6))]),
            deadline=rng.choice([None, None, None, float(rng.randint(3, 12))]),
        ))
    s = Scheduler(["g0", "g1"], max_batch_size=2, config=Config(max_retries=1))
    r = JobRunner(s, tasks, sched_class="normal")
    now = 0.0
    for _ in range(60):
        op = rng.random()
        live = [rid for rid in r.ids.values() if s.status(rid) not in ENDED]
        if op < 0.3:
            r.poll(now)
        elif op < 0.5:
            s.step(now=now)
        elif live and op < 0.8:
            rid = rng.choice(live)
            if s.status(rid) == "in_flight":
                how = rng.choice(["complete", "complete", "fail", "retry"])
                if how == "complete":
                    s.complete(rid, now=now)
                else:
                    s.fail(rid, now=now, retryable=how == "retry", error="x")
            else:
                s.cancel(rid)
        else:
            now += rng.choice([0.5, 1.0, 3.0])
        assert r.done() == _reference_done(r, s)
    # drain: everything ends, and done() says so
    for _ in range(200):
        r.poll(now)
        res = s.step(now=now)
        for b in res.batches:
            for rid in b.request_ids:
                s.complete(rid, now=now)
        assert r.done() == _reference_done(r, s)
        if r.done():
            break
        now += 1.0
    assert r.done() and r.submitted_all()


def test_done_asks_about_one_request_per_call_while_the_oldest_is_live():
    n = 200
    s = CountingScheduler(["g0"], max_batch_size=1, enable_dynamic_batching=False)
    r = JobRunner(s, [Task(f"t{i}", prompt_tokens=1) for i in range(n)], sched_class="normal")
    r.poll(0.0)
    ids = [r.ids[f"t{i}"] for i in range(n)]
    for rid in ids[1:]:  # every request but the oldest ends
        s.cancel(rid)
    s.status_calls = 0
    for _ in range(50):
        assert not r.done()
    # before: every call asked about every request not yet seen ended (n per call)
    assert s.status_calls == 50
    s.cancel(ids[0])
    s.status_calls = 0
    assert r.done()
    assert s.status_calls == n  # each request is dropped once ...
    s.status_calls = 0
    assert r.done() and r.done()
    assert s.status_calls == 0  # ... and never asked about again


# --------------------------------------------------------------------------- poll's stats()


def test_poll_reads_stats_only_when_a_check_needs_it():
    # stats() gives the core's clock (for deadlines) and the queued count (for
    # max_queued); with neither in play a poll does not ask for it. (The default
    # max_queued, 2**24, is in play: its prediction needs the live count.)
    s = CountingScheduler(["g0"], config=Config(max_queued=0))
    r = JobRunner(s, [Task(f"t{i}", prompt_tokens=1, schedule_time=float(i)) for i in range(5)])
    for now in range(5):
        assert len(r.poll(float(now))) == 1
    assert s.stats_calls == 0 and len(r.ids) == 5
    s2 = CountingScheduler(["g0"])
    r2 = JobRunner(s2, [Task(f"t{i}", prompt_tokens=1) for i in range(5)])
    assert r2.poll(0.0) and s2.stats_calls == 1  # once per poll, not per task
    assert r2.poll(1.0) == [] and s2.stats_calls == 1  # nothing due: not asked


def test_poll_still_checks_a_deadline_against_the_schedulers_clock():
    s = CountingScheduler(["g0"])
    s.step(now=50.0)  # the scheduler's clock is at 50
    r = JobRunner(s, [Task("a", prompt_tokens=1, deadline=40.0)])
    with pytest.raises(Exception, match="not after the scheduler's clock"):
        r.poll(30.0)  # (40 > 30, but not > 50)
    assert s.stats_calls == 1 and r.ids == {}


def test_poll_still_predicts_max_queued():
    s = CountingScheduler(["g0"], config=Config(max_queued=3))
    r = JobRunner(s, [Task(f"t{i}", prompt_tokens=1) for i in range(5)])
    with pytest.raises(QueueFullError, match="max_queued = 3"):
        r.poll(0.0)
    assert s.stats_calls == 1 and len(r.ids) == 3


# --------------------------------------------------------------------------- Ray router

from capsched import ConfigError  # noqa: E402
from capsched.integrations import ray_serve  # noqa: E402
from capsched.integrations.ray_serve import (  # noqa: E402
    STATS_KEY,
    CapacityReporter,
    ReplicaStats,
    ReplicaView,
    parse_replica_stats,
    rank_replicas,
)


class _Replica:
    """A RunningReplica as the router sees it; ``stats`` may be an exception to raise."""

    def __init__(self, name: str, stats: Any, max_ongoing: int = 4) -> None:
        self.replica_id = name
        self.stats = stats
        self.max_ongoing_requests = max_ongoing

    @property
    def routing_stats(self) -> Any:
        if isinstance(self.stats, BaseException):
            raise self.stats
        return self.stats


def _router() -> Any:
    from test_ray_serve import _bare_router  # (the router as a handle builds it, or a skip without Ray)

    return _bare_router()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_failed_report_is_an_error_not_an_unreported_replica():
    with pytest.raises(ConfigError, match=r"replica 'r7': its record_routing_stats failed: OSError: gone"):
        parse_replica_stats("r7", {STATS_KEY: {"capacity": 2.0, "error": "OSError: gone"}})
    with pytest.raises(ConfigError, match="r7"):
        rank_replicas([ReplicaView("ok", {STATS_KEY: {"capacity": 1.0}}), ReplicaView("r7", {STATS_KEY: {"error": "x"}})])
    assert not parse_replica_stats("new", {}).reported  # not reported yet: still the mean rule


def test_capacity_reporter_reports_a_failure_instead_of_raising():
    boom = {"on": False}

    def clock() -> float:
        if boom["on"]:
            raise RuntimeError("clock broke")
        return 0.0

    class Replica(CapacityReporter):
        def __init__(self) -> None:
            self.capsched = ReplicaStats(capacity=3.0, clock=clock)

    rep = Replica()
    with rep.capsched.track():
        pass
    boom["on"] = True
    # Before, the exception went to Ray, which logs it and keeps handing the router the
    # stats it had before (none: the replica ranked at the mean capacity).
    stats = rep.record_routing_stats()
    assert stats == {STATS_KEY: {"error": "RuntimeError: clock broke"}}
    with pytest.raises(ConfigError, match="clock broke"):
        parse_replica_stats("r", stats)
    boom["on"] = False
    assert rep.record_routing_stats()[STATS_KEY]["capacity"] == 3.0


@pytest.mark.parametrize("failure", [
    {STATS_KEY: {"error": "RuntimeError: clock broke"}},  # what CapacityReporter reports
    {STATS_KEY: {"capacity": "fast"}},                    # invalid stats
    KeyError("routing_stats"),                             # reading them raises
    RuntimeError("replica actor died"),
])
def test_router_ranks_a_failing_replica_after_unreported_ones(failure, caplog):
    router = _router()
    fast = _Replica("fast", {STATS_KEY: {"capacity": 4.0}})
    slow = _Replica("slow", {STATS_KEY: {"capacity": 1.0}})
    new = _Replica("new", {})  # not reported yet: the mean capacity (2.5)
    broken = _Replica("broken", failure)
    with caplog.at_level(logging.INFO, logger=ray_serve.__name__):
        for _ in range(5):
            assert router.rank([broken, slow, new, fast]) == [[fast], [new], [slow], [broken]]
    warned = _warnings(caplog)
    assert len(warned) == 1 and "broken" in warned[0]  # once for the streak, not per request


def test_router_logs_once_per_replica_per_streak_and_ranks_a_recovered_replica_normally(caplog):
    router = _router()
    slow = _Replica("slow", {STATS_KEY: {"capacity": 1.0}})
    flaky = _Replica("flaky", {STATS_KEY: {"error": "E: 1"}})
    other = _Replica("other", {STATS_KEY: {"utilization": 2.0}})
    with caplog.at_level(logging.INFO, logger=ray_serve.__name__):
        assert router.rank([flaky, slow, other]) == [[slow], [flaky, other]]
        # the problem's text changes every period: still one warning for the streak
        for i in range(2, 6):
            flaky.stats = {STATS_KEY: {"error": f"E: {i}"}}
            assert router.rank([flaky, slow, other]) == [[slow], [flaky, other]]
        assert len(_warnings(caplog)) == 2  # one per replica
        flaky.stats = {STATS_KEY: {"capacity": 4.0}}  # recovered: ranked by its capacity again
        for _ in range(3):  # (the streak ends after 3 valid reads in a row)
            assert router.rank([flaky, slow, other]) == [[flaky], [slow], [other]]
        assert any("flaky" in r.getMessage() and "valid again" in r.getMessage() for r in caplog.records)
        caplog.clear()
        flaky.stats = {STATS_KEY: {"error": "E: 1"}}  # a new streak: logged again, ranked last again
        assert router.rank([flaky, slow, other]) == [[slow], [flaky, other]]
        assert router.rank([flaky, slow, other]) == [[slow], [flaky, other]]
    warned = _warnings(caplog)
    assert len(warned) == 1 and "flaky" in warned[0] and "E: 1" in warned[0]


def test_a_flapping_replica_logs_once_and_is_ranked_per_read(caplog):
    # Stats alternating failing / valid: before, a warning and a "valid again" line on every
    # flap. Now one streak (one warning) until 3 valid reads in a row; ranking follows each read.
    router = _router()
    slow = _Replica("slow", {STATS_KEY: {"capacity": 1.0}})
    flap = _Replica("flap", {STATS_KEY: {"capacity": 4.0}})
    with caplog.at_level(logging.INFO, logger=ray_serve.__name__):
        for i in range(100):
            failing = i % 2 == 1
            flap.stats = {STATS_KEY: {"error": "RuntimeError: nvml"}} if failing else {STATS_KEY: {"capacity": 4.0}}
            expected = [[slow], [flap]] if failing else [[flap], [slow]]
            assert router.rank([slow, flap]) == expected  # a failing read ranks last at once
        assert len(caplog.records) == 1 and caplog.records[0].levelno == logging.WARNING  # (was 99 lines)
        # Two valid reads after a failing one do not end the streak; a third does.
        flap.stats = {STATS_KEY: {"error": "E"}}
        router.rank([slow, flap])
        flap.stats = {STATS_KEY: {"capacity": 4.0}}
        router.rank([slow, flap])
        router.rank([slow, flap])
        assert not any("valid again" in r.getMessage() for r in caplog.records)
        assert router.rank([slow, flap]) == [[flap], [slow]]
        assert [r.getMessage() for r in caplog.records if "valid again" in r.getMessage()] != []
        caplog.clear()
        flap.stats = {STATS_KEY: {"error": "E"}}  # after a recovery: a new streak, a new warning
        router.rank([slow, flap])
    assert len(_warnings(caplog)) == 1


def _annotated_public_objects():
    """Every class, function and method defined in a top-level capsched module
    (python/capsched/*.py), public or not: their annotations may name classes imported
    only under TYPE_CHECKING."""
    import importlib
    import inspect
    import pkgutil

    import capsched

    for info in pkgutil.iter_modules(capsched.__path__):
        if info.ispkg or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"capsched.{info.name}")
        for name, obj in vars(module).items():
            if name.startswith("__") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj):
                yield f"{module.__name__}.{name}", obj
            elif inspect.isclass(obj):
                yield f"{module.__name__}.{name}", obj
                for attr, value in vars(obj).items():
                    f = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
                    if inspect.isfunction(f):
                        yield f"{module.__name__}.{name}.{attr}", f


def test_get_type_hints_resolves_the_type_checking_only_names():
    # Device and Scheduler are imported only under TYPE_CHECKING in config, jobs,
    # checkpoint and discovery (real imports would be cycles): get_type_hints raised
    # NameError on these. capsched/__init__ binds the names once every module is loaded.
    import typing

    import capsched
    from capsched.checkpoint import load_checkpoint
    from capsched.config import SchedulerConfig
    from capsched.discovery import DiscoveredDevice

    hints = typing.get_type_hints(SchedulerConfig)
    assert "capsched.devices.Device" in str(hints["devices"])
    assert typing.get_type_hints(SchedulerConfig.build_scheduler)["return"] is capsched.Scheduler
    assert typing.get_type_hints(JobRunner.__init__)["scheduler"] is capsched.Scheduler
    assert "Scheduler" in str(typing.get_type_hints(load_checkpoint))
    assert typing.get_type_hints(DiscoveredDevice.to_device)["return"] is capsched.Device
    failures = []
    for name, obj in _annotated_public_objects():
        try:
            typing.get_type_hints(obj)
        except Exception as exc:  # noqa: BLE001 - collected for one message
            failures.append(f"{name}: {exc!r}")
    assert failures == []
