"""Optional OpenTelemetry spans for each request's life (``pip install "capsched[tracing]"``).

The scheduler itself reads no clock and calls no tracer; a server that wants traces keeps a
:class:`RequestTracer` beside its scheduler and tells it what happened:

    tracer = RequestTracer()                     # opentelemetry.trace.get_tracer("capsched")
    rid = scheduler.submit(request); tracer.submitted(rid, tenant="alice")
    result = scheduler.step(); tracer.stepped(result)   # queue spans end, run spans start
    scheduler.complete(rid); tracer.ended(rid)           # or tracer.ended(rid, error="...")

Each request gets a span ``capsched.request`` with two children: ``capsched.queue`` (from
submit to its dispatch) and ``capsched.run`` (from dispatch to its end, attribute
``capsched.device``); a retry or an eviction closes the run span and opens a new queue
span. Span times are the tracer's own (wall clock), as OpenTelemetry wants.
"""

from __future__ import annotations

import operator
import threading
from typing import Any, Optional

__all__ = ["RequestTracer"]


def _trace_api() -> Any:
    try:
        from opentelemetry import trace
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "capsched.tracing needs the OpenTelemetry API: pip install \"capsched[tracing]\" "
            "(or pip install opentelemetry-api)"
        ) from exc
    return trace


def _rid(request_id: Any) -> Optional[int]:
    """The id as an int (Python or numpy integer), or None for anything else."""
    if isinstance(request_id, bool):
        return None
    try:
        return operator.index(request_id)
    except TypeError:
        return None


class RequestTracer:
    """Spans per request. Thread-safe; unknown or already-ended ids, and values that are
    not integer ids (``None``, ``"abc"``), are ignored (a trace is best effort and must
    never break the server). ``submitted`` again for an id whose spans are open ends
    those first (attribute ``capsched.superseded``), so that none leaks."""

    def __init__(self, tracer: Optional[Any] = None) -> None:
        self._trace = _trace_api()
        self._tracer = tracer if tracer is not None else self._trace.get_tracer("capsched")
        self._lock = threading.Lock()
        self._open: dict[int, list[Any]] = {}  # id -> [root span, current child span]

    def _child(self, root: Any, name: str, **attributes: Any) -> Any:
        ctx = self._trace.set_span_in_context(root)
        return self._tracer.start_span(name, context=ctx, attributes=attributes or None)

    def submitted(self, request_id: int, **attributes: Any) -> None:
        """A request was accepted: its root span and its queue span start."""
        rid = _rid(request_id)
        if rid is None:
            return
        attrs = {"capsched.request_id": rid}
        attrs.update({f"capsched.{k}": v for k, v in attributes.items() if v is not None})
        root = self._tracer.start_span("capsched.request", attributes=attrs)
        with self._lock:
            old = self._open.get(rid)
            self._open[rid] = [root, self._child(root, "capsched.queue")]
        if old is not None:  # the same id submitted again: close the earlier spans
            for span in (old[1], old[0]):
                span.set_attribute("capsched.superseded", True)
                span.end()

    def dispatched(self, request_id: int, device: str) -> None:
        """It was placed on ``device``: the queue span ends, a run span starts."""
        with self._lock:
            spans = self._open.get(_rid(request_id))  # type: ignore[arg-type]
            if spans is None:
                return
            spans[1].end()
            spans[1] = self._child(spans[0], "capsched.run", **{"capsched.device": device})

    def requeued(self, request_id: int, reason: str) -> None:
        """A retry or an eviction: the run span ends (with the reason), a queue span starts."""
        with self._lock:
            spans = self._open.get(_rid(request_id))  # type: ignore[arg-type]
            if spans is None:
                return
            spans[1].set_attribute("capsched.requeued", reason)
            spans[1].end()
            spans[1] = self._child(spans[0], "capsched.queue")

    def stepped(self, result: Any) -> None:
        """Everything a :class:`capsched.StepResult` (or a :class:`capsched.StepArrays`,
        from ``step_many``) says: dispatches, preemptions, expiries and dependency
        failures."""
        for rid, _device in getattr(result, "preempted", ()):
            self.requeued(rid, "preempted")
        batches = getattr(result, "batches", ())
        if callable(batches):  # StepArrays.batches() is a method
            batches = batches()
        for batch in batches:
            for rid in batch.request_ids:
                self.dispatched(rid, batch.device)
        expired = getattr(result, "expired", ())
        for rid in expired.tolist() if hasattr(expired, "tolist") else expired:
            self.ended(rid, error="expired")
        for rid, reason in getattr(result, "failed", ()):
            self.ended(rid, error=reason)

    def ended(self, request_id: int, *, error: Optional[str] = None) -> None:
        """It ended: completed (``error=None``), or failed, expired or cancelled."""
        with self._lock:
            spans = self._open.pop(_rid(request_id), None)  # type: ignore[arg-type]
        if spans is None:
            return
        status = self._trace.Status(self._trace.StatusCode.OK if error is None else self._trace.StatusCode.ERROR,
                                    None if error is None else error)
        for span in (spans[1], spans[0]):
            span.set_status(status)
            span.end()

    @property
    def open_requests(self) -> int:
        """Requests with spans still open."""
        with self._lock:
            return len(self._open)
