"""Regression tests for review findings in specs, the Ray router and tracing."""
import re

import pytest

import capsched
from capsched.specs import UnknownAcceleratorError, lookup


@pytest.mark.parametrize("name", ["NVIDIA A100 80GB", "NVIDIA L40 48GB", "A1000 8GB", "A1080GB"])
def test_lookup_does_not_read_model_digits_as_a_memory_size(name):
    # "a10" + "080gb" used to match the A10 row; "l4" + "048gb" the L4 row.
    with pytest.raises(UnknownAcceleratorError):
        lookup(name)


def test_lookup_ambiguous_a100_80gb_suggests_both_rows():
    with pytest.raises(UnknownAcceleratorError) as info:
        lookup("NVIDIA A100 80GB")
    assert "A100-SXM-80GB" in info.value.suggestions and "A100-PCIe" in info.value.suggestions


@pytest.mark.parametrize("name, expected", [("NVIDIA L4 24GB", "L4"), ("A10 24GB", "A10"),
                                            ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", "A100-40GB")])
def test_lookup_separate_decorations_still_match(name, expected):
    assert lookup(name).name == expected


def test_device_model_a100_80gb_is_not_an_a10():
    with pytest.raises(capsched.ConfigError, match="A100 80GB"):
        capsched.Device("g", model="A100 80GB")


# --------------------------------------------------------------------------- Ray router

import logging  # noqa: E402

from capsched.integrations import ray_serve  # noqa: E402
from test_ray_serve import _bare_router  # noqa: E402  (the router as a handle builds it, or a skip)
from capsched.integrations.ray_serve import (  # noqa: E402
    STATS_KEY,
    ReplicaStats,
    ReplicaView,
    parse_replica_stats,
    rank_replicas,
    request_router_config,
)

HUGE = 10**400


@pytest.mark.parametrize(
    "fields, word",
    [
        ({"pressure": HUGE}, "'pressure'"),
        ({"utilization": HUGE}, "'utilization'"),
        ({"capacity": 1, "ongoing": HUGE}, "'ongoing'"),
        ({"capacity": 1, "ongoing": 2**53 + 1}, "'ongoing'"),
        ({"capacity": 1e-300}, "capacity 1e-300"),
        ({"capacity": 1e300}, "capacity 1e+300"),
    ],
)
def test_out_of_range_stats_are_config_errors(fields, word):
    with pytest.raises(capsched.ConfigError, match=re.escape(word)) as info:
        parse_replica_stats("r1", {STATS_KEY: fields})
    assert "r1" in str(info.value) and "\n" not in str(info.value) and len(str(info.value)) < 300


def test_a_huge_live_queue_length_does_not_overflow_the_load():
    cap = parse_replica_stats("r", {STATS_KEY: {"capacity": 1.0}})
    assert ray_serve._load(ReplicaView("r", ongoing=HUGE, max_ongoing=4), cap) == ray_serve.MAX_PRESSURE
    order = rank_replicas([ReplicaView("a", {STATS_KEY: {"capacity": 1.0}}, ongoing=HUGE, max_ongoing=4),
                           ReplicaView("b", {STATS_KEY: {"capacity": 1.0}})])
    assert order == [1, 0]


def test_extreme_but_accepted_capacity_ratio_still_ranks():
    views = [ReplicaView("a", {STATS_KEY: {"capacity": 1e-100}}), ReplicaView("b", {STATS_KEY: {"capacity": 1e100}})]
    assert rank_replicas(views) == [1, 0]


def test_replica_side_refuses_overflowing_values():
    with pytest.raises(capsched.ConfigError, match="pressure"):
        ReplicaStats(capacity=1).set_pressure(HUGE)
    with pytest.raises(capsched.ConfigError, match="stats_period_s"):
        request_router_config(stats_period_s=HUGE)
    for bad in ("x", float("nan"), None):
        with pytest.raises(capsched.ConfigError, match="clock must return"):
            ReplicaStats(capacity=1, clock=lambda bad=bad: bad)


class _FakeReplica:
    def __init__(self, name, stats, max_ongoing=4):
        self.replica_id = name
        self.routing_stats = stats
        self.max_ongoing_requests = max_ongoing


def test_router_ranks_replicas_with_overflowing_stats_last(caplog):
    router = _bare_router()
    good = _FakeReplica("good", {STATS_KEY: {"capacity": 1.0}})
    bads = [
        _FakeReplica("p", {STATS_KEY: {"pressure": HUGE}}),
        _FakeReplica("o", {STATS_KEY: {"capacity": 1, "ongoing": HUGE}}),
        _FakeReplica("tiny", {STATS_KEY: {"capacity": 1e-300}}),
        _FakeReplica("big", {STATS_KEY: {"capacity": 1e300}}),
    ]
    with caplog.at_level(logging.WARNING, logger=ray_serve.__name__):
        assert router.rank([*bads, good]) == [[good], bads]
    assert len(caplog.records) == 4


def test_router_keeps_routing_when_the_ranking_fails(monkeypatch, caplog):
    router = _bare_router()
    a, b = _FakeReplica("a", {STATS_KEY: {"capacity": 1.0}}), _FakeReplica("b", {STATS_KEY: {"capacity": 2.0}})

    def boom(*args, **kwargs):
        raise capsched.ConfigError("boom")

    monkeypatch.setattr(ray_serve._Ranker, "rank", boom)
    with caplog.at_level(logging.WARNING, logger=ray_serve.__name__):
        assert router.rank([a, b]) == [[a], [b]]
    assert any("boom" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- specs numbers

from capsched.specs import SPECS, capacity, kv_bytes_per_token, kv_cache_tokens  # noqa: E402


@pytest.mark.parametrize(
    "call, word",
    [
        (lambda: capacity(SPECS["H100-SXM"], HUGE), "clock_mhz"),
        (lambda: capacity(SPECS["H100-SXM"], 1e306), "clock_mhz"),
        (lambda: kv_bytes_per_token(HUGE, 1, 1), "layers"),
        (lambda: kv_bytes_per_token(10**200, 10**200, 1), "KV bytes per token"),
        (lambda: kv_cache_tokens(80, 10, 1e-300), "too many tokens"),
        (lambda: kv_cache_tokens(1e300, 0, 1), "too many tokens"),
        (lambda: kv_cache_tokens(HUGE, 0, 1), "memory_gib"),
        (lambda: kv_cache_tokens(80, 0, 1, reserve_fraction=HUGE), "reserve_fraction"),
    ],
)
def test_specs_overflow_is_a_config_error(call, word):
    with pytest.raises(capsched.ConfigError, match=word) as info:
        call()
    assert len(str(info.value)) < 300


def test_specs_numbers_still_right():
    assert kv_bytes_per_token(32, 32, 128) == 524288.0
    assert kv_cache_tokens(80, 14, kv_bytes_per_token(32, 32, 128)) == 118784


# --------------------------------------------------------------------------- tracing


def _tracer():
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from capsched.tracing import RequestTracer

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return RequestTracer(provider.get_tracer("test")), exporter


def test_tracer_ignores_ids_that_are_not_integers():
    tracer, exporter = _tracer()
    for bad in ("abc", None, 1.5, True, object()):
        tracer.submitted(bad)
        tracer.dispatched(bad, "g")
        tracer.requeued(bad, "retry")
        tracer.ended(bad)
    assert tracer.open_requests == 0 and exporter.get_finished_spans() == ()


def test_tracer_takes_step_many_arrays():
    import numpy as np

    tracer, exporter = _tracer()
    s = capsched.Scheduler(["gpu0"], policy="fcfs", max_batch_size=3)
    ids = s.submit_many(np.array([5, 5, 5]), max_new_tokens=1, now=0.0)
    for rid in ids.tolist():
        tracer.submitted(rid)
    tracer.submitted(int(s.submit(capsched.InferenceRequest(prompt_tokens=5, timeout=1.0), now=0.0)))
    tracer.stepped(s.step_many(now=0.0))
    for rid in ids:  # numpy ids
        tracer.ended(rid)
    assert tracer.open_requests == 1
    s.complete_many(ids, now=0.1)
    res = s.step_many(now=5.0)  # the last one expires in the queue
    assert len(res.expired) == 1
    tracer.stepped(res)
    assert tracer.open_requests == 0
    runs = [sp for sp in exporter.get_finished_spans() if sp.name == "capsched.run"]
    assert len(runs) == 3 and all(sp.attributes["capsched.device"] == "gpu0" for sp in runs)


def test_tracer_submitted_twice_ends_the_earlier_spans():
    tracer, exporter = _tracer()
    tracer.submitted(7)
    tracer.submitted(7)
    assert tracer.open_requests == 1
    done = exporter.get_finished_spans()
    assert sorted(sp.name for sp in done) == ["capsched.queue", "capsched.request"]
    assert all(sp.attributes["capsched.superseded"] for sp in done)
    tracer.ended(7)
    assert tracer.open_requests == 0 and len(exporter.get_finished_spans()) == 4
