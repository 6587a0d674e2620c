"""capsched.metrics: the Prometheus collector over Scheduler.stats(), the timer histograms,
the HTTP endpoint, and the message when prometheus-client is missing."""

from __future__ import annotations

import builtins
import importlib
import math
import sys
import urllib.request

import pytest

import capsched
from capsched import ConfigError, Device, InferenceRequest, Scheduler

try:
    import prometheus_client  # noqa: F401
except ModuleNotFoundError:  # the `metrics` extra is not installed: only the last test runs
    HAVE_PROMETHEUS = False
else:
    HAVE_PROMETHEUS = True
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from capsched import metrics

needs_prometheus = pytest.mark.skipif(not HAVE_PROMETHEUS, reason='needs prometheus-client (pip install "capsched[metrics]")')


def _scrape(registry):
    """{(sample name, frozenset(labels.items())): value} and {family name: type}."""
    text = generate_latest(registry).decode()
    samples, types = {}, {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, types, text


def _v(samples, name, **labels):
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def busy():
    """Two devices, five requests: three completed, one failed, one queued."""
    s = Scheduler(
        [Device("big", capacity=2.0, kv_tokens=100_000), Device("small", capacity=1.0)],
        policy="fcfs",
        max_batch_size=2,
        enable_dynamic_batching=False,
    )
    ids = [s.submit(InferenceRequest(prompt_tokens=10, max_new_tokens=5), now=0.0) for _ in range(5)]
    res = s.step(0.0)
    dispatched = res.dispatched
    assert len(dispatched) == 4
    s.complete(dispatched[0], 1.0)
    s.complete(dispatched[1], 1.0)
    s.complete(dispatched[2], 1.5)
    s.fail(dispatched[3], 1.5, error="boom")
    return s, ids, res


@needs_prometheus
def test_scrape_counters_gauges_and_device_labels(busy):
    s, ids, res = busy
    reg = CollectorRegistry()
    metrics.register(s, reg)
    samples, types, _ = _scrape(reg)
    st = s.stats()
    # counters: every integer key that is not a level
    for key in ("accepted", "completed", "failed", "expired", "cancelled", "retried", "dispatched", "batches",
                "placed_fitting", "placed_fallback", "misfits", "migrated", "readmitted", "held", "trimmed",
                "preempted", "deferred"):
        assert types[f"capsched_{key}"] == "counter", key
        assert _v(samples, f"capsched_{key}_total") == st[key], key
    assert _v(samples, "capsched_accepted_total") == 5
    assert _v(samples, "capsched_completed_total") == 3
    assert _v(samples, "capsched_failed_total") == 1
    # gauges: levels
    for key in ("waiting", "queued", "in_flight"):
        assert types[f"capsched_{key}"] == "gauge"
        assert _v(samples, f"capsched_{key}") == st[key]
    assert _v(samples, "capsched_queued") == 1
    assert _v(samples, "capsched_in_flight") == 0
    assert _v(samples, "capsched_conservation_ok") == 1
    assert _v(samples, "capsched_clock_seconds") == 1.5
    assert _v(samples, "capsched_scheduler_info", policy="fcfs", dynamic_batching="False") == 1
    # per device
    for d in st["devices"]:
        name = d["name"]
        for key in ("capacity", "capacity_orig", "clock_scale", "pressure", "util_avg", "placed_util", "dl_bw",
                    "kv_used", "inflight_batches", "inflight_requests", "batch_limit"):
            assert types[f"capsched_device_{key}"] == "gauge", key
            assert _v(samples, f"capsched_device_{key}", device=name) == pytest.approx(d[key]), key
        for key in ("dispatched_requests", "completed_requests", "preempted_requests", "dispatched_batches"):
            assert types[f"capsched_device_{key}"] == "counter", key
            assert _v(samples, f"capsched_device_{key}_total", device=name) == d[key], key
    assert _v(samples, "capsched_device_capacity_orig", device="big") == 1024
    assert _v(samples, "capsched_device_capacity_orig", device="small") == 512
    assert _v(samples, "capsched_device_kv_budget", device="big") == 100_000
    assert _v(samples, "capsched_device_kv_budget", device="small") == math.inf  # -1: unlimited
    total = sum(_v(samples, "capsched_device_dispatched_requests_total", device=n) for n in ("big", "small"))
    assert total == 4
    done = sum(_v(samples, "capsched_device_completed_requests_total", device=n) for n in ("big", "small"))
    assert done == 3


@needs_prometheus
def test_breaker_state_is_a_state_gauge():
    s = Scheduler(["a", "b"], config={"breaker_failures": 1, "breaker_cooldown": 100.0}, max_batch_size=1)
    reg = CollectorRegistry()
    metrics.register(s, reg)
    samples, _, _ = _scrape(reg)
    for dev in ("a", "b"):
        assert _v(samples, "capsched_device_breaker_state", device=dev, state="closed") == 1
        assert _v(samples, "capsched_device_breaker_state", device=dev, state="open") == 0
        assert _v(samples, "capsched_device_breaker_state", device=dev, state="half_open") == 0
    rid = s.submit(InferenceRequest(prompt_tokens=5), now=0.0)
    (batch,) = s.step(0.0).batches
    s.fail(rid, 1.0, error="xid 79")
    samples, _, _ = _scrape(reg)
    states = {d["name"]: d["breaker"] for d in s.stats()["devices"]}
    assert states[batch.device] == "open"
    assert _v(samples, "capsched_device_breaker_state", device=batch.device, state="open") == 1
    assert _v(samples, "capsched_device_breaker_state", device=batch.device, state="closed") == 0
    assert _v(samples, "capsched_device_breaker_trips_total", device=batch.device) == 1
    assert _v(samples, "capsched_breaker_trips_total") == 1


class _FakeScheduler:
    """stats() with keys the current core does not have: the naming rule applies."""

    def __init__(self):
        self.mode = "fast"

    def stats(self):
        return {
            "accepted": 7,
            "new_counter": 3,
            "queued": 2,
            "some_ratio": 0.25,
            "flag": True,
            "policy": "edf",
            "now": None,
            "devices": [
                {"name": "g0", "capacity": 1024.0, "dispatched_widgets": 4, "inflight_widgets": 2,
                 "mode": self.mode, "multipliers": (1.0, 2.0), "healthy": False, "kv_budget": 10},
            ],
        }


@needs_prometheus
def test_new_keys_follow_the_naming_rule():
    fake = _FakeScheduler()
    reg = CollectorRegistry()
    metrics.register(fake, reg, prefix="x", labels={"scheduler": "east"})
    samples, types, _ = _scrape(reg)
    assert types["x_new_counter"] == "counter" and _v(samples, "x_new_counter_total", scheduler="east") == 3
    assert types["x_queued"] == "gauge" and _v(samples, "x_queued", scheduler="east") == 2
    assert types["x_some_ratio"] == "gauge" and _v(samples, "x_some_ratio", scheduler="east") == 0.25
    assert _v(samples, "x_flag", scheduler="east") == 1
    assert ("x_clock_seconds", frozenset({("scheduler", "east")})) not in samples  # now is None
    assert types["x_device_dispatched_widgets"] == "counter"
    assert _v(samples, "x_device_dispatched_widgets_total", scheduler="east", device="g0") == 4
    assert types["x_device_inflight_widgets"] == "gauge"
    assert _v(samples, "x_device_multipliers", scheduler="east", device="g0", index="1") == 2.0
    assert _v(samples, "x_device_healthy", scheduler="east", device="g0") == 0
    assert _v(samples, "x_device_kv_budget", scheduler="east", device="g0") == 10
    assert _v(samples, "x_device_mode_state", scheduler="east", device="g0", state="fast") == 1
    fake.mode = "slow"  # a state seen before stays exported, at 0
    samples, _, _ = _scrape(reg)
    assert _v(samples, "x_device_mode_state", scheduler="east", device="g0", state="slow") == 1
    assert _v(samples, "x_device_mode_state", scheduler="east", device="g0", state="fast") == 0


@needs_prometheus
def test_two_schedulers_in_one_registry_with_constant_labels():
    reg = CollectorRegistry()
    a, b = Scheduler(["g0"]), Scheduler(["g0", "g1"])
    a.submit(InferenceRequest(prompt_tokens=3), now=0.0)
    metrics.register(a, reg, labels={"scheduler": "a"})
    metrics.register(b, reg, labels={"scheduler": "b"})
    samples, _, _ = _scrape(reg)
    assert _v(samples, "capsched_accepted_total", scheduler="a") == 1
    assert _v(samples, "capsched_accepted_total", scheduler="b") == 0
    assert _v(samples, "capsched_device_capacity", scheduler="b", device="g1") == 1024
    # Each family once (the text format allows a name once; two collectors of the same
    # names gave every family twice, which Prometheus refuses).
    text = generate_latest(reg).decode()
    types = [line for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types)) > 20
    assert text.count("# TYPE capsched_device_capacity gauge") == 1


@needs_prometheus
def test_registering_a_clash_is_refused_and_changes_nothing():
    reg = CollectorRegistry()
    a, b, c = Scheduler(["g0"]), Scheduler(["g0"]), Scheduler(["g0"])
    first = metrics.register(a, reg)
    before = generate_latest(reg)
    with pytest.raises(ConfigError, match="already registered"):
        metrics.register(a, reg)
    with pytest.raises(ConfigError, match=r"labels \{\} are already those of another registered scheduler"):
        metrics.register(b, reg)  # a second scheduler without labels
    with pytest.raises(ConfigError, match="same label names"):
        metrics.register(b, reg, labels={"scheduler": "b"})  # the first has none
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        reg.register(metrics.SchedulerCollector(c))  # describe() names its metrics
    assert generate_latest(reg) == before
    reg.unregister(first)
    metrics.register(b, reg)  # the name is free again
    other = CollectorRegistry()
    other.register(metrics.SchedulerCollector(a))  # not through register(): cannot join
    with pytest.raises(ConfigError, match=r"already holds metrics of these names \(capsched_\w+, .* more\)"):
        metrics.register(b, other)


@needs_prometheus
def test_labelled_schedulers_need_distinct_values():
    reg = CollectorRegistry()
    a, b = Scheduler(["g0"]), Scheduler(["g1"])
    metrics.register(a, reg, labels={"scheduler": "east"})
    with pytest.raises(ConfigError, match="already those of another"):
        metrics.register(b, reg, labels={"scheduler": "east"})
    with pytest.raises(ConfigError, match="same label names"):
        metrics.register(b, reg, labels={"region": "west"})
    assert metrics.register(b, reg, labels={"scheduler": "west"}) is not None


@needs_prometheus
def test_bad_arguments():
    s = Scheduler(["g0"])
    with pytest.raises(ValueError, match="prefix"):
        metrics.SchedulerCollector(s, prefix="bad-prefix")
    with pytest.raises(ValueError, match="label"):
        metrics.SchedulerCollector(s, labels={"device": "x"})
    with pytest.raises(TypeError, match="stats"):
        metrics.SchedulerCollector(object())


@needs_prometheus
def test_request_timer_histograms():
    s = Scheduler(["g0"], policy="fcfs", max_batch_size=4, enable_dynamic_batching=False)
    reg = CollectorRegistry()
    timer = metrics.RequestTimer(reg)
    ids = []
    for t in (0.0, 0.5):
        rid = s.submit(InferenceRequest(prompt_tokens=5), now=t)
        timer.submitted(rid, t)
        ids.append(rid)
    res = s.step(1.0)
    timer.stepped(res)
    for rid in ids:
        s.complete(rid, 3.0)
        timer.ended(rid, 3.0)
    samples, types, _ = _scrape(reg)
    assert types["capsched_queue_wait_seconds"] == "histogram"
    assert _v(samples, "capsched_queue_wait_seconds_count") == 2
    assert _v(samples, "capsched_queue_wait_seconds_sum") == pytest.approx(1.0 + 0.5)
    assert _v(samples, "capsched_latency_seconds_count") == 2
    assert _v(samples, "capsched_latency_seconds_sum") == pytest.approx(3.0 + 2.5)
    assert _v(samples, "capsched_batch_size_count") == 1
    assert _v(samples, "capsched_batch_size_sum") == 2
    assert _v(samples, "capsched_batch_size_bucket", le="2.0") == 1


@needs_prometheus
def test_request_timer_takes_the_step_arrays_of_step_many():
    # StepArrays.batches is a method: stepped() raised TypeError ('method' object is not
    # iterable) and recorded nothing.
    s = Scheduler(["g0"], policy="fcfs", max_batch_size=4, enable_dynamic_batching=False)
    reg = CollectorRegistry()
    timer = metrics.RequestTimer(reg)
    ids = s.submit_many([5, 6, 7], now=0.0)
    for rid in ids.tolist():
        timer.submitted(rid, 0.0)
    timer.stepped(s.step_many(1.0))
    samples, _, _ = _scrape(reg)
    assert _v(samples, "capsched_queue_wait_seconds_count") == 3
    assert _v(samples, "capsched_queue_wait_seconds_sum") == pytest.approx(3.0)
    assert _v(samples, "capsched_batch_size_sum") == 3


@needs_prometheus
def test_http_server_serves_metrics():
    s = Scheduler(["g0"])
    s.submit(InferenceRequest(prompt_tokens=3), now=0.0)
    try:
        started = metrics.start_http_server(s, 0)
    except TypeError:  # pragma: no cover - prometheus-client too old to return the server
        pytest.skip("prometheus-client does not return the server")
    if not isinstance(started, tuple):  # pragma: no cover - old prometheus-client returns None
        pytest.skip("prometheus-client does not return the server")
    server, thread = started
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            body = r.read().decode()
        assert "capsched_accepted_total 1.0" in body
        assert 'capsched_device_capacity{device="g0"} 1024.0' in body
        assert "python_gc" not in body  # a fresh registry: only the scheduler's metrics
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_missing_extra_names_the_install_command(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "prometheus_client" or name.startswith("prometheus_client."):
            raise ImportError("No module named 'prometheus_client'")
        return real_import(name, *args, **kwargs)

    saved = sys.modules.pop("capsched.metrics", None)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    try:
        with pytest.raises(ImportError, match=r'pip install "capsched\[metrics\]"'):
            importlib.import_module("capsched.metrics")
    finally:
        monkeypatch.setattr(builtins, "__import__", real_import)
        if saved is not None:
            sys.modules["capsched.metrics"] = saved
            capsched.metrics = saved
        else:
            sys.modules.pop("capsched.metrics", None)


@needs_prometheus
def test_example_script_runs_a_job_and_prints_a_scrape():
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "jobs_with_metrics.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "report           completed" in out
    assert "capsched_completed_total 9.0" in out
    assert "capsched_latency_seconds_count 9.0" in out
