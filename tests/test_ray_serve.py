"""The Ray Serve integration: capsched ranks a deployment's replicas.

The ranking, the stats parsing and the replica-side helper need no Ray and always run.
The router's own tests need Ray Serve (``pip install "capsched[ray]"``) and skip without
it; the last test starts a local Ray cluster (auth off, a temporary HOME and temp dir),
deploys three simulated replicas of which one is 4x faster, and routes through
:class:`CapschedRequestRouter`.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import logging
import random
import re
import sys
import tempfile
import time
import warnings
from typing import Any

import pytest

from capsched import ConfigError, InvalidArgumentError
from capsched.integrations import ray_serve
from capsched.integrations.ray_serve import (
    MAX_PRESSURE,
    STATS_KEY,
    CapacityReporter,
    ReplicaStats,
    ReplicaView,
    parse_replica_stats,
    rank_replicas,
)
from capsched.integrations.ray_simulated import simulated_service_s


def _view(name: str, ongoing: Any = None, max_ongoing: int = 4, **fields: Any) -> ReplicaView:
    return ReplicaView(name, {STATS_KEY: fields}, ongoing, max_ongoing)


# --------------------------------------------------------------------------- ranking


def test_idle_replicas_rank_by_capacity() -> None:
    views = [_view("slow", capacity=1.0), _view("fast", capacity=4.0), _view("mid", capacity=2.0)]
    assert rank_replicas(views, rng=random.Random(0)) == [1, 2, 0]


def test_accelerator_models_rank_by_the_spec_table() -> None:
    views = [_view("l4", model="L4"), _view("h100", model="H100-SXM"), _view("a100", model="A100-SXM-80GB")]
    assert rank_replicas(views, rng=random.Random(0)) == [1, 2, 0]


def test_a_loaded_fast_replica_yields_to_an_idle_slow_one_at_capsched_spare() -> None:
    # spare = capacity x (1 - ongoing / max_ongoing): 4 x (1 - 5/8) = 1.5 beats the idle
    # slow replica's 1.0, 4 x (1 - 7/8) = 0.5 loses to it.
    slow = _view("slow", capacity=1.0)
    fast5 = _view("fast", capacity=4.0, ongoing=5, max_ongoing=8)
    assert rank_replicas([slow, fast5], rng=random.Random(0)) == [1, 0]
    fast7 = _view("fast", capacity=4.0, ongoing=7, max_ongoing=8)
    assert rank_replicas([slow, fast7], rng=random.Random(0)) == [0, 1]
    # 4 x (1 - 3/4) = 1.0 ties it exactly: either order
    fast6 = _view("fast", capacity=4.0, ongoing=6, max_ongoing=8)
    firsts = {rank_replicas([slow, fast6], rng=random.Random(seed))[0] for seed in range(40)}
    assert firsts == {0, 1}


def test_load_is_pressure_plus_the_larger_of_observed_and_committed() -> None:
    # The router's count wins over the one the replica reported; the measured
    # utilization counts when it is larger; foreign pressure adds.
    slow = _view("slow", capacity=1.0)
    assert rank_replicas([slow, _view("fast", capacity=4.0, ongoing=1, max_ongoing=4)]) == [1, 0]
    by_router = ReplicaView("fast", {STATS_KEY: {"capacity": 4.0, "ongoing": 4}}, 1, 4)
    assert rank_replicas([slow, by_router]) == [1, 0]
    by_report = ReplicaView("fast", {STATS_KEY: {"capacity": 4.0, "ongoing": 4}}, None, 4)
    assert rank_replicas([slow, by_report]) == [0, 1]
    busy = _view("fast", capacity=4.0, utilization=0.9)
    assert rank_replicas([slow, busy]) == [0, 1]
    pressured = _view("fast", capacity=4.0, pressure=0.5, ongoing=2, max_ongoing=4)  # 4 x (1 - 1.0)
    assert rank_replicas([slow, pressured]) == [0, 1]


def test_full_replicas_still_rank_by_capacity() -> None:
    full = [_view(f"r{c}", capacity=float(c), ongoing=4, max_ongoing=4) for c in (1, 3, 2)]
    assert rank_replicas(full, rng=random.Random(0)) == [1, 2, 0]


def test_a_lower_clock_lowers_the_rank() -> None:
    throttled = _view("a", capacity=2.0, clock_mhz=600.0, max_clock_mhz=1800.0)  # 2/3 usable
    assert rank_replicas([throttled, _view("b", capacity=1.0)], rng=random.Random(0)) == [1, 0]


def test_equal_replicas_come_in_a_random_order() -> None:
    views = [_view(f"r{i}", capacity=1.0) for i in range(4)]
    firsts = collections.Counter(rank_replicas(views, rng=random.Random(s))[0] for s in range(200))
    assert set(firsts) == {0, 1, 2, 3}
    assert min(firsts.values()) > 20  # about 50 each
    again = [rank_replicas(views, rng=random.Random(7)) for _ in range(2)]
    assert again[0] == again[1] and sorted(again[0]) == [0, 1, 2, 3]


def test_a_kept_ranker_follows_changes_and_rebuilds(monkeypatch: pytest.MonkeyPatch) -> None:
    ranker = ray_serve._Ranker()
    monkeypatch.setattr(ray_serve._Ranker, "REBUILD_AFTER", 3)
    rng = random.Random(0)

    def rank(*views: ReplicaView) -> list[int]:
        return ranker.rank(views, [parse_replica_stats(v.name, v.stats) for v in views], rng)

    slow, fast = _view("slow", capacity=1.0), _view("fast", capacity=4.0)
    built = []  # (the schedulers themselves: an id() of a collected one can be reused)
    for _ in range(7):  # the same devices: kept, rebuilt after 3 rankings
        assert rank(slow, fast) == [1, 0]
        built.append(ranker._sched)
    assert len({id(s) for s in built}) == 3
    assert rank(slow, _view("fast", capacity=4.0, ongoing=4, max_ongoing=4)) == [0, 1]  # load: same devices
    assert rank(slow, _view("fast", capacity=0.5)) == [0, 1]  # capacity changed: a new scheduler
    assert rank(slow, fast, _view("mid", capacity=2.0)) == [1, 2, 0]  # a replica more
    assert ranker._sched is not None and ranker._sched.check_invariants()
    stats = ranker._sched.stats()
    assert stats["conservation_ok"] and all(d["inflight_requests"] == 0 for d in stats["devices"])


def test_unreported_replicas_get_the_mean_reported_capacity() -> None:
    # mean of 4 and 1 is 2.5: above the slow one, below the fast one
    views = [ReplicaView("new", {}), _view("fast", capacity=4.0), _view("slow", capacity=1.0)]
    assert rank_replicas(views, rng=random.Random(0)) == [1, 0, 2]
    assert sorted(rank_replicas([ReplicaView("a"), ReplicaView("b", None)])) == [0, 1]
    assert rank_replicas([]) == []


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("stats", "words"),
    [
        ([1, 2], ["routing stats must be a dict", "[1, 2]"]),
        ({STATS_KEY: 4.0}, ["'capsched' must be a dict", "4.0"]),
        ({STATS_KEY: {"capcity": 4.0}}, ["unknown routing stat", "'capcity'"]),
        ({STATS_KEY: {"capacity": -1.0}}, ["capacity", "-1.0"]),
        ({STATS_KEY: {"capacity": float("nan")}}, ["capacity", "nan"]),
        ({STATS_KEY: {"model": "Z9000"}}, ["model", "Z9000"]),
        ({STATS_KEY: {"utilization": 1.5}}, ["'utilization'", "1.5"]),
        ({STATS_KEY: {"utilization": True}}, ["'utilization'", "True"]),
        ({STATS_KEY: {"pressure": 1.0}}, ["'pressure'", "[0, 1)", "1.0"]),
        ({STATS_KEY: {"ongoing": -2}}, ["'ongoing'", "-2"]),
        ({STATS_KEY: {"ongoing": 1.5}}, ["'ongoing'", "1.5"]),
        ({STATS_KEY: {"capacity": 1.0, "clock_mhz": 900.0}}, ["clock_mhz", "max_clock_mhz"]),
    ],
)
def test_bad_stats_raise_naming_the_replica_and_value(stats: Any, words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_replica_stats("replica-7", stats)
    message = str(info.value)
    assert "replica-7" in message
    for w in words:
        assert w in message
    with pytest.raises(ConfigError):
        rank_replicas([_view("ok", capacity=1.0), ReplicaView("replica-7", stats)])


def test_other_stats_next_to_capscheds_are_ignored() -> None:
    cap = parse_replica_stats("r", {"kv_cache_free": 0.3, STATS_KEY: {"capacity": 2.0, "ongoing": 1}})
    assert cap.device.effective_capacity == 2.0 and cap.reported and cap.ongoing == 1
    assert cap.utilization is None and cap.pressure == 0.0
    assert not parse_replica_stats("r", None).reported


@pytest.mark.parametrize(("kw", "word"), [({"max_ongoing": 0}, "max_ongoing"), ({"ongoing": -1}, "ongoing")])
def test_bad_views_raise(kw: dict[str, Any], word: str) -> None:
    with pytest.raises(InvalidArgumentError, match=word):
        ReplicaView("r", {}, **kw)


# --------------------------------------------------------------------------- replica side


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_replica_stats_measure_time_averaged_slot_use() -> None:
    clock = _Clock()
    stats = ReplicaStats(capacity=4.0, slots=2, clock=clock)
    assert stats.routing_stats() == {STATS_KEY: {"capacity": 4.0, "pressure": 0.0}}  # nothing tracked yet
    with stats.track():
        clock.t += 1.0  # one of two slots for 1 s
        with stats.track():
            assert stats.ongoing == 2
            clock.t += 1.0  # both for 1 s
    clock.t += 2.0  # idle for 2 s
    reported = stats.routing_stats()[STATS_KEY]
    assert reported["utilization"] == pytest.approx((0.5 + 1.0) / 4.0)
    assert reported["ongoing"] == 0
    with stats.track():
        clock.t += 1.0
        assert stats.utilization() == pytest.approx(0.5)  # a new window
    stats.set_pressure(0.25)
    stats.set_clock(900.0, 1800.0)
    fields = stats.routing_stats()[STATS_KEY]
    assert fields["pressure"] == 0.25 and fields["clock_mhz"] == 900.0
    assert parse_replica_stats("r", stats.routing_stats()).device.max_clock_mhz == 1800.0


def test_replica_stats_refuse_bad_values_and_keep_the_old_ones() -> None:
    with pytest.raises(ConfigError, match="slots.*0"):
        ReplicaStats(capacity=1.0, slots=0)
    with pytest.raises(ConfigError, match="capacity.*-3"):
        ReplicaStats(capacity=-3)
    with pytest.raises(ConfigError, match="Z9000"):
        ReplicaStats(model="Z9000")
    stats = ReplicaStats(model="L4")
    with pytest.raises(ConfigError, match="pressure.*1.2"):
        stats.set_pressure(1.2)
    with pytest.raises(ConfigError, match="clock_mhz"):
        stats.set_clock(99999.0)  # above the L4's max clock
    assert stats.routing_stats() == {STATS_KEY: {"model": "L4", "pressure": 0.0}}


def test_capacity_reporter_mixin() -> None:
    class Replica(CapacityReporter):
        def __init__(self) -> None:
            self.capsched = ReplicaStats(capacity=3.0)

    assert Replica().record_routing_stats() == {STATS_KEY: {"capacity": 3.0, "pressure": 0.0}}

    class Forgot(CapacityReporter):
        pass

    with pytest.raises(ConfigError, match="self.capsched"):
        Forgot().record_routing_stats()


def test_simulated_service_time() -> None:
    assert simulated_service_s(0.2, 4.0, 1, 4, 0.5) == pytest.approx(0.05)
    assert simulated_service_s(0.2, 1.0, 4, 4, 0.5) == pytest.approx(0.3)
    assert simulated_service_s(0.2, 1.0, 9, 4, 0.5) == pytest.approx(0.3)
    assert simulated_service_s(0.2, 2.0, 1, 1, 0.5) == pytest.approx(0.1)


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray.serve.request_router", None)  # import fails
    monkeypatch.setattr(ray_serve, "_router_class", None)
    with pytest.raises(ImportError, match=r'pip install "capsched\[ray\]"'):
        ray_serve.CapschedRequestRouter  # noqa: B018
    with pytest.raises(ImportError, match=r"capsched\[ray\]"):
        ray_serve.request_router_config()
    with pytest.raises(AttributeError, match="NoSuchThing"):
        ray_serve.NoSuchThing  # noqa: B018


def test_request_router_config_checks_its_fields_before_importing_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    # Checked without Ray: a bad value or an unknown field is a ConfigError naming it
    # (an unknown field was dropped by Ray's RequestRouterConfig, a str seed accepted).
    def no_ray() -> None:
        raise AssertionError("Ray imported before the fields were checked")

    monkeypatch.setattr(ray_serve, "_import_ray", no_ray)
    with pytest.raises(ConfigError, match=r"seed must be an int or None, got 'x'"):
        ray_serve.request_router_config(seed="x")
    with pytest.raises(ConfigError, match=r"seed must be an int or None, got True"):
        ray_serve.request_router_config(seed=True)
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['backof_multiplier', 'request_router_kwargs'\]"):
        ray_serve.request_router_config(backof_multiplier=2.0, request_router_kwargs={})
    for bad in (0, -1.0, float("nan"), float("inf"), "1", True, None):
        with pytest.raises(ConfigError, match=rf"stats_period_s must be a finite number > 0, got {re.escape(repr(bad))}"):
            ray_serve.request_router_config(stats_period_s=bad)
    with pytest.raises(ConfigError, match=r"max_backoff_s must be a finite number > 0, got '0.5'"):
        ray_serve.request_router_config(max_backoff_s="0.5")


# --------------------------------------------------------------------------- with Ray


def _ray_or_skip() -> Any:
    try:
        with warnings.catch_warnings():
            # Ray's import defines pydantic fields the old way (PydanticDeprecatedSince20,
            # a DeprecationWarning); that is Ray's business, not this test's.
            warnings.simplefilter("ignore", DeprecationWarning)
            for name in ("ray", "ray.serve", "ray.serve.config", "ray.serve._private.request_router.common"):
                importlib.import_module(name)
            return importlib.import_module("ray.serve.request_router")
    except ImportError:
        pytest.skip('Ray Serve is not installed (pip install "capsched[ray]"); the router tests need it')


class _FakeReplica:
    def __init__(self, name: str, stats: Any, max_ongoing: int = 4) -> None:
        self.replica_id = name
        self.routing_stats = stats
        self.max_ongoing_requests = max_ongoing


def _bare_router() -> Any:
    """The router as a handle builds it, without a running Serve (no replicas yet)."""
    _ray_or_skip()
    from ray.serve._private.common import DeploymentHandleSource, DeploymentID

    router = ray_serve.CapschedRequestRouter(
        deployment_id=DeploymentID(name="d", app_name="app"),
        handle_source=DeploymentHandleSource.UNKNOWN,
        use_replica_queue_len_cache=True,
    )
    router.initialize_state(seed=3)
    return router


def test_router_ranks_one_replica_per_rank_with_rays_queue_lengths() -> None:
    router = _bare_router()
    slow, fast = _FakeReplica("slow", {STATS_KEY: {"capacity": 1.0}}), _FakeReplica("fast", {STATS_KEY: {"capacity": 4.0}})
    assert router.rank([slow, fast]) == [[fast], [slow]]
    router.replica_queue_len_cache.update("fast", 4)  # full, as Ray's cache says
    assert router.rank([slow, fast]) == [[slow], [fast]]
    router.replica_queue_len_cache.update("fast", 0)
    assert router.rank([slow, fast]) == [[fast], [slow]]
    fast.routing_stats = {STATS_KEY: {"capacity": 0.5}}  # new stats from Serve: read again
    assert router.rank([slow, fast]) == [[slow], [fast]]


def test_router_ranks_replicas_with_bad_stats_last_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    router = _bare_router()
    good = _FakeReplica("good", {STATS_KEY: {"capacity": 1.0}})
    bad1 = _FakeReplica("bad1", {STATS_KEY: {"capacity": "fast"}})
    bad2 = _FakeReplica("bad2", {STATS_KEY: {"utilisation": 0.5}})
    with caplog.at_level(logging.WARNING, logger=ray_serve.__name__):
        assert router.rank([bad1, good, bad2]) == [[good], [bad1, bad2]]
        router.rank([bad1, good, bad2])
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2  # once per distinct problem
    assert any("bad1" in m and "'fast'" in m for m in messages)
    assert any("bad2" in m and "'utilisation'" in m for m in messages)


def test_router_kwargs_are_checked() -> None:
    router = _bare_router()
    with pytest.raises(ConfigError, match="unknown request_router_kwargs.*'sed'"):
        router.initialize_state(sed=1)
    with pytest.raises(ConfigError, match="seed.*'1'"):
        router.initialize_state(seed="1")
    config = ray_serve.request_router_config(seed=5, stats_period_s=0.5)
    # Ray keeps the class as its import path; the path leads back to the class.
    module, _, name = config.request_router_class.rpartition(".")
    assert getattr(importlib.import_module(module), name) is ray_serve.CapschedRequestRouter
    assert config.request_router_kwargs == {"seed": 5} and config.request_routing_stats_period_s == 0.5


@pytest.fixture(scope="module")
def ray_cluster() -> Any:
    """A local Ray cluster with Serve (no dashboard, no HTTP proxy), shut down after."""
    _ray_or_skip()
    import ray
    from ray import serve

    with pytest.MonkeyPatch.context() as mp, tempfile.TemporaryDirectory(prefix="capsched-ray-") as tmp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.setenv("HOME", tmp)
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.delenv("RAY_ADDRESS", raising=False)
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=100 * 2**20,
            log_to_driver=False,
            _temp_dir=f"{tmp}/ray",
        )
        try:
            serve.start(proxy_location="Disabled")
            yield serve
        finally:
            serve.shutdown()
            ray.shutdown()


def test_router_sends_more_work_to_the_faster_simulated_replica(ray_cluster: Any) -> None:
    serve = ray_cluster
    from capsched.integrations.ray_simulated import SimulatedReplica

    slots = 4
    deployment = serve.deployment(
        num_replicas=3,
        max_ongoing_requests=slots,
        ray_actor_options={"num_cpus": 0},
        request_router_config=ray_serve.request_router_config(seed=0, stats_period_s=0.2),
    )(SimulatedReplica)
    # rank 0 is 4x faster: 0.05 s a request against 0.2 s (simulated: the replicas sleep)
    handle = serve.run(deployment.bind([4.0, 1.0, 1.0], 0.2, slots), name="capsched-sim", route_prefix=None)
    try:

        async def one() -> int:
            return int((await handle.remote(None))["rank"])

        # Until the router has the replicas' routing stats it cannot tell them apart;
        # once it has, a request sent to idle replicas goes to the fastest. Wait for 8
        # in a row (a random router does that with probability 3^-8).
        streak, deadline = 0, time.monotonic() + 30.0
        while streak < 8:
            assert time.monotonic() < deadline, "the replicas' capacities never reached the router"
            streak = streak + 1 if asyncio.run(one()) == 0 else 0

        async def waves() -> list[int]:
            ranks: list[int] = []
            for _ in range(8):  # 8 bursts of 6 requests: more than the fast replica's 4 slots
                ranks += await asyncio.gather(*(one() for _ in range(6)))
            return ranks

        ranks = asyncio.run(waves())
    finally:
        serve.delete("capsched-sim")
    counts = collections.Counter(ranks)
    assert len(ranks) == 48 and set(counts) <= {0, 1, 2}  # every request completed
    # capsched fills the fast replica's slots first: 4 of each burst of 6 (Ray's default
    # router sends it about a third). The slow ones share the rest.
    assert counts[0] >= 0.55 * len(ranks), counts
    assert counts[0] > 2 * max(counts[1], counts[2]), counts
