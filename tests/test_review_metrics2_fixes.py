"""Metrics, tracing and /stats defects found by the second metrics review, each with the
test that failed before its fix."""

from __future__ import annotations

import json
import logging
import math
import threading
from pathlib import Path
from typing import Any

import pytest

from capsched import Device, InferenceRequest, Scheduler, Slice
from capsched.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------ 1: UTF-8 names


def test_a_device_name_that_is_not_utf8_is_refused() -> None:
    # A name read from JSON ("\ud800" is valid JSON) or from undecodable argv bytes
    # (surrogateescape) was accepted, and then every scrape of the registry failed.
    names = json.loads('["gpu0", "gpu\\ud800"]')
    with pytest.raises(ConfigError, match=r"device name must be valid Unicode text.*'gpu\\ud800'"):
        Scheduler(names)
    with pytest.raises(ConfigError, match=r"device name must be valid Unicode text"):
        Scheduler([{"name": "x\udcff"}])
    with pytest.raises(ConfigError, match=r"device name must be valid Unicode text"):
        Device("x\udc80")
    with pytest.raises(ConfigError, match=r"slice name must be valid Unicode text"):
        Slice("a\udcff", compute=0.5, memory=0.5)
    Scheduler(["gpu0", "ünï☃"])  # (non-ASCII text is fine)


prometheus_client = pytest.importorskip("prometheus_client")


class _Surrogates:
    """A stats source whose strings hold lone surrogates (a scheduler-like object the
    collector scrapes as it is)."""

    def stats(self) -> dict[str, Any]:
        return {
            "accepted": 1,
            "policy": "p\udcff",
            "devices": [{"name": "gpu\ud800", "mode": "m\udc80", "capacity": 1.0}],
        }


def test_a_surrogate_in_stats_does_not_break_the_scrape_of_the_others() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from capsched.metrics import register

    reg = prometheus_client.CollectorRegistry()
    register(Scheduler(["ok"]), reg, labels={"scheduler": "good"})
    register(_Surrogates(), reg, labels={"scheduler": "bad"})
    text = prometheus_client.generate_latest(reg).decode("utf-8")  # was UnicodeEncodeError
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    devices = {s.labels["device"] for s in fams["capsched_device_capacity"].samples}
    assert devices == {"ok", "gpu\\ud800"}
    states = {s.labels["state"] for s in fams["capsched_device_mode_state"].samples}
    assert states == {"m\\udc80"}
    info = {s.labels["policy"] for s in fams["capsched_scheduler_info"].samples}
    assert "p\\udcff" in info


def test_a_constant_label_value_that_is_not_utf8_is_refused() -> None:
    from capsched.metrics import RequestTimer, register

    reg = prometheus_client.CollectorRegistry()
    with pytest.raises(ConfigError, match=r"constant label 'host' must be valid Unicode text"):
        register(Scheduler(["x"]), reg, labels={"host": "h\udcff"})
    with pytest.raises(ConfigError, match=r"constant label 'host' must be valid Unicode text"):
        RequestTimer(reg, labels={"host": "h\udcff"})
    prometheus_client.generate_latest(reg)  # nothing half-registered breaks it


# ------------------------------------------------------------------ 2: late submitted


def _tracer() -> tuple[Any, Any, Any]:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from capsched.tracing import RequestTracer

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return RequestTracer(provider.get_tracer("t")), exporter, provider


def test_a_submitted_after_another_thread_ended_the_request_leaves_nothing_open() -> None:
    from capsched.metrics import RequestTimer

    tracer, _, _ = _tracer()
    timer = RequestTimer(prometheus_client.CollectorRegistry())
    s = Scheduler(["g0"])
    # expired in the loop thread before the API thread's submitted()
    late = s.submit(InferenceRequest(prompt_tokens=5, timeout=0.001), now=0.0)
    res = s.step(now=1.0)
    timer.stepped(res)
    tracer.stepped(res)
    assert s.status(late) == "expired"
    timer.submitted(late, 0.0)
    tracer.submitted(late)
    # dispatched and completed before submitted()
    done = s.submit(InferenceRequest(prompt_tokens=5), now=2.0)
    res = s.step(now=2.0)
    timer.stepped(res)
    tracer.stepped(res)
    s.complete(done, now=3.0)
    timer.ended(done, 3.0)
    tracer.ended(done)
    timer.submitted(done, 2.0)
    tracer.submitted(done)
    assert len(timer._submitted) == 0 and tracer.open_requests == 0  # were 2 and 2
    # a live request is still timed and traced
    live = s.submit(InferenceRequest(prompt_tokens=5), now=4.0)
    timer.submitted(live, 4.0)
    tracer.submitted(live)
    assert len(timer._submitted) == 1 and tracer.open_requests == 1


def test_the_memory_of_ended_ids_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from capsched import metrics, tracing

    monkeypatch.setattr(metrics, "_ENDED_MEMORY", 10)
    monkeypatch.setattr(tracing, "_ENDED_MEMORY", 10)
    tracer, _, _ = _tracer()
    timer = metrics.RequestTimer(prometheus_client.CollectorRegistry())
    for rid in range(100):
        timer.ended(rid, 1.0)
        tracer.ended(rid)
    assert len(timer._ended) == 10 and len(tracer._ended) == 10
    timer.submitted(0, 0.0)  # forgotten long ago: recorded again
    tracer.submitted(0)
    assert len(timer._submitted) == 1 and tracer.open_requests == 1


def test_threads_submitting_and_stepping_leak_nothing() -> None:
    import time

    from capsched.metrics import RequestTimer

    tracer, _, _ = _tracer()
    timer = RequestTimer(prometheus_client.CollectorRegistry())
    s = Scheduler(["g0"])
    t0 = time.monotonic()
    stop = t0 + 1.0

    def api() -> None:
        while time.monotonic() < stop:
            t = time.monotonic() - t0
            rid = s.submit(InferenceRequest(prompt_tokens=5, timeout=0.0005), now=t)
            timer.submitted(rid, t)
            tracer.submitted(rid)

    def loop() -> None:
        while time.monotonic() < stop:
            res = s.step(now=time.monotonic() - t0)
            timer.stepped(res)
            tracer.stepped(res)
            for b in res.batches:
                for rid in b.request_ids:
                    t = time.monotonic() - t0
                    s.complete(rid, now=t)
                    timer.ended(rid, t)
                    tracer.ended(rid)

    threads = [threading.Thread(target=api) for _ in range(3)] + [threading.Thread(target=loop) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    res = s.step(now=time.monotonic() - t0 + 10.0)
    timer.stepped(res)
    tracer.stepped(res)
    st = s.stats()
    assert st["waiting"] + st["queued"] + st["in_flight"] + st["retrying"] == 0
    assert len(timer._submitted) == 0 and tracer.open_requests == 0


# ------------------------------------------------------------------ 3: OTel exceptions


def test_a_raising_span_processor_never_reaches_the_server(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import SpanProcessor

    tracer, exporter, provider = _tracer()

    class Boom(SpanProcessor):
        names: tuple[str, ...] = ()

        def on_end(self, span: Any) -> None:
            if span.name in Boom.names:
                raise RuntimeError("exporter bug")

    provider._active_span_processor._span_processors = (Boom(),) + tuple(
        provider._active_span_processor._span_processors
    )
    s = Scheduler(["g0"], max_batch_size=4)
    ids = [s.submit(InferenceRequest(prompt_tokens=5), now=0.0) for _ in range(3)]
    for rid in ids:
        tracer.submitted(rid)
    Boom.names = ("capsched.queue",)
    with caplog.at_level(logging.DEBUG, logger="capsched.tracing"):
        tracer.stepped(s.step(now=0.0))  # raised RuntimeError at the first id
        Boom.names = ("capsched.run",)  # a child's end fails: the root must still end
        for rid in ids:
            s.complete(rid, now=1.0)
            tracer.ended(rid)
    assert tracer.open_requests == 0
    spans = exporter.get_finished_spans()
    assert sum(sp.name == "capsched.request" for sp in spans) == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "capsched.tracing"]
    assert len(warnings) == 1  # once; the rest at debug
    assert any(r.levelno == logging.DEBUG and r.name == "capsched.tracing" for r in caplog.records)


def test_a_raising_tracer_at_submit_leaves_no_span_open() -> None:
    from capsched.tracing import RequestTracer

    pytest.importorskip("opentelemetry")

    class Broken:
        def start_span(self, *a: Any, **k: Any) -> Any:
            raise RuntimeError("no tracer")

    tracer = RequestTracer(Broken())
    tracer.submitted(1)  # raised
    tracer.ended(1)
    assert tracer.open_requests == 0


# ------------------------------------------------------------------ 4: re-entry


def test_a_span_processor_may_call_back_into_the_tracer() -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

    from capsched.tracing import RequestTracer

    seen: list[int] = []
    holder: dict[str, Any] = {}

    class Peek(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            seen.append(holder["tr"].open_requests)

        def on_end(self, span: Any) -> None:
            seen.append(holder["tr"].open_requests)

    provider = TracerProvider()
    provider.add_span_processor(Peek())
    tracer = holder["tr"] = RequestTracer(provider.get_tracer("t"))
    s = Scheduler(["g0"], config={"max_retries": 3})
    rid = s.submit(InferenceRequest(prompt_tokens=5), now=0.0)

    def run() -> None:  # (in a thread: a deadlock fails the test instead of hanging it)
        tracer.submitted(rid)  # deadlocked: the queue span started under the lock
        tracer.stepped(s.step(now=0.0))  # deadlocked: span.end under the lock
        assert s.fail(rid, now=0.5, retryable=True)
        tracer.requeued(rid, "retry")
        tracer.ended(rid)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(5.0)
    assert not th.is_alive(), "the tracer deadlocked"
    assert tracer.open_requests == 0 and seen


# ------------------------------------------------------------------ 5: remove


def test_the_collector_removes_one_scheduler_and_a_restored_one_takes_its_labels(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from capsched.metrics import register

    reg = prometheus_client.CollectorRegistry()
    east, west = Scheduler(["g0"]), Scheduler(["g1"])
    c = register(east, reg, labels={"scheduler": "east"})
    register(west, reg, labels={"scheduler": "west"})
    east.submit(InferenceRequest(prompt_tokens=5), now=0.0)
    east.checkpoint(str(tmp_path / "east.ckpt"))
    restored = Scheduler.restore(str(tmp_path / "east.ckpt"))
    c.remove(east)  # no public way before
    with pytest.raises(ConfigError, match="not one this collector scrapes"):
        c.remove(east)
    register(restored, reg, labels={"scheduler": "east"})  # was refused: labels taken
    fams = {f.name: f for f in text_string_to_metric_families(prometheus_client.generate_latest(reg).decode())}
    accepted = {s.labels["scheduler"]: s.value for s in fams["capsched_accepted"].samples}
    assert accepted == {"east": 1.0, "west": 0.0}
    # the last one removed: the collector leaves the registry, and a register starts afresh
    c.remove(west)
    c.remove(restored)
    assert "capsched_accepted" not in prometheus_client.generate_latest(reg).decode()
    c2 = register(west, reg)  # other label names: a new collector
    assert c2 is not c
    assert reg.get_sample_value("capsched_accepted_total") == 0.0


# ------------------------------------------------------------------ 6: timer labels


def test_request_timers_with_labels_share_the_histograms() -> None:
    from capsched.metrics import RequestTimer, register

    reg = prometheus_client.CollectorRegistry()
    register(Scheduler(["a"]), reg, labels={"scheduler": "east"})
    register(Scheduler(["b"]), reg, labels={"scheduler": "west"})
    east = RequestTimer(reg, labels={"scheduler": "east"})  # no labels= before
    west = RequestTimer(reg, labels={"scheduler": "west"})
    east.submitted(1, 0.0)
    east.ended(1, 1.0)
    west.submitted(1, 0.0)
    west.ended(1, 3.0)
    assert reg.get_sample_value("capsched_latency_seconds_sum", {"scheduler": "east"}) == 1.0
    assert reg.get_sample_value("capsched_latency_seconds_sum", {"scheduler": "west"}) == 3.0
    with pytest.raises(ConfigError, match=r"same label names \(\['scheduler'\]"):
        RequestTimer(reg)
    with pytest.raises(ConfigError, match=r"same label names \(\['scheduler'\]"):
        RequestTimer(reg, labels={"host": "h"})
    with pytest.raises(ConfigError, match="already holds metrics of these names.*another request timer"):
        RequestTimer(reg, labels={"scheduler": "east"})
    with pytest.raises(ConfigError, match="'le'"):
        RequestTimer(prometheus_client.CollectorRegistry(), labels={"le": "1"})
    text = prometheus_client.generate_latest(reg).decode()
    assert text.count("# TYPE capsched_latency_seconds histogram") == 1


# ------------------------------------------------------------------ minor: start_http_server


def test_start_http_server_passes_labels_and_serves_a_registered_scheduler() -> None:
    from capsched.metrics import register, start_http_server

    reg = prometheus_client.CollectorRegistry()
    s = Scheduler(["g0"])
    register(s, reg, labels={"scheduler": "east"})
    servers = []
    try:
        servers.append(start_http_server(s, 0, registry=reg))  # was: labels {} refused
        servers.append(start_http_server(s, 0, registry=reg, labels={"scheduler": "east"}))
        with pytest.raises(ConfigError, match="already registered in the registry with labels"):
            start_http_server(s, 0, registry=reg, labels={"scheduler": "west"})
        s2 = Scheduler(["g1"])
        servers.append(start_http_server(s2, 0, registry=reg, labels={"scheduler": "west"}))  # no labels= before
        assert reg.get_sample_value("capsched_accepted_total", {"scheduler": "west"}) == 0.0
    finally:
        for srv in servers:
            server = srv[0] if isinstance(srv, tuple) else srv
            server.shutdown()
            server.server_close()


# ------------------------------------------------------------------ minor: /stats


def _stats_client(monkeypatch: pytest.MonkeyPatch, stats: Any) -> Any:
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from capsched.server.app import create_app
    from capsched.server.engine import simulated_engine

    eng = simulated_engine("L4:1")
    worker = next(iter(eng.workers.values()))
    monkeypatch.setattr(type(worker), "stats", stats)
    return TestClient(create_app(eng), raise_server_exceptions=False)


def test_stats_makes_non_finite_values_null(monkeypatch: pytest.MonkeyPatch) -> None:
    with _stats_client(monkeypatch, lambda self: {"mean_latency": math.nan, "tokens_per_s": [math.inf, 1.5]}) as c:
        r = c.get("/stats")  # was a 500 (JSON has no NaN)
    assert r.status_code == 200
    (dev,) = r.json()["devices"].values()
    assert dev["worker"] == {"mean_latency": None, "tokens_per_s": [None, 1.5]}


def test_stats_answers_a_json_error_when_a_worker_stats_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: Any) -> Any:
        raise RuntimeError("worker gone")

    with _stats_client(monkeypatch, boom) as c:
        r = c.get("/stats")
    assert r.status_code == 500
    err = r.json()["error"]  # was a text/plain traceback page
    assert err["type"] == "server_error" and err["code"] == "stats_failed" and "worker gone" in err["message"]


# ------------------------------------------------------------------ minor: docs


def test_operations_md_says_requeued_is_for_a_fail_that_returned_true() -> None:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    sec = text[text.index("## Traces (OpenTelemetry)"):]
    assert "`requeued(id, reason)` after\na `fail` that returned True" in sec
    assert "SchedulerCollector.remove(scheduler)" in text
