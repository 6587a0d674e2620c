"""OpenTelemetry spans (capsched.tracing), exported to memory by the SDK."""

from __future__ import annotations

import pytest

sdk = pytest.importorskip("opentelemetry.sdk.trace")
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from capsched import Config, InferenceRequest, Scheduler  # noqa: E402
from capsched.tracing import RequestTracer  # noqa: E402


def test_each_request_gets_queue_and_run_spans_under_one_root() -> None:
    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = RequestTracer(provider.get_tracer("test"))
    s = Scheduler(["gpu0"], policy="fcfs", max_batch_size=1, config=Config(retry_base=0.0))
    a = s.submit(InferenceRequest(prompt_tokens=5), now=0.0)
    tracer.submitted(a, tenant="alice")
    b = s.submit(InferenceRequest(prompt_tokens=5, timeout=1.0), now=0.0)
    tracer.submitted(b)
    tracer.stepped(s.step(now=0.0))  # a runs
    assert s.fail(a, now=0.1, retryable=True)
    tracer.requeued(a, "retry")
    tracer.stepped(s.step(now=0.2))  # a runs again
    s.complete(a, now=0.3)
    tracer.ended(a)
    tracer.stepped(s.step(now=2.0))  # b expired in the queue
    assert tracer.open_requests == 0
    spans = exporter.get_finished_spans()
    by_trace: dict = {}
    for sp in spans:
        by_trace.setdefault(sp.context.trace_id, []).append(sp)
    assert len(by_trace) == 2
    names_a = sorted(sp.name for sp in by_trace[next(sp for sp in spans if sp.name == "capsched.request"
                                                      and sp.attributes["capsched.request_id"] == a).context.trace_id])
    assert names_a == ["capsched.queue", "capsched.queue", "capsched.request", "capsched.run", "capsched.run"]
    runs = [sp for sp in spans if sp.name == "capsched.run"]
    assert all(sp.attributes["capsched.device"] == "gpu0" for sp in runs)
    root_b = next(sp for sp in spans if sp.name == "capsched.request" and sp.attributes["capsched.request_id"] == b)
    assert not root_b.status.is_ok and "expired" in (root_b.status.description or "")
    tracer.ended(12345)  # unknown ids are ignored
