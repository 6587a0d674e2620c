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

import logging
import operator
import threading
from collections import OrderedDict
from typing import Any, Callable, Optional

__all__ = ["RequestTracer"]

log = logging.getLogger("capsched.tracing")

#: How many recently ended ids a tracer remembers, so that a ``submitted`` that comes
#: after another thread's ``stepped``/``ended`` already ended the request opens nothing.
_ENDED_MEMORY = 65536


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
    those first (attribute ``capsched.superseded``), so that none leaks.

    Best effort also means that an exception from OpenTelemetry (a span processor or an
    exporter that raises) never reaches the caller: each span call is guarded, the first
    failure is logged as a warning on the ``capsched.tracing`` logger (later ones at
    debug), and the other spans and ids go on (a request's root span is ended even when
    its child's end fails). Spans are started and ended outside the tracer's lock, so a
    span processor may call back into the tracer (``open_requests``, say).

    With threads, the API thread's ``submitted(id)`` can come after the loop thread's
    ``stepped``/``ended`` already ended that request (it expired, or it ran and completed,
    between ``submit`` and ``submitted``). The tracer remembers the last
    65,536 ended ids, and a ``submitted`` for one of them is a no-op, so no
    span stays open for it. Ids are those of one scheduler (unique): a tracer shared by
    schedulers whose ids overlap would drop the second one's requests."""

    def __init__(self, tracer: Optional[Any] = None) -> None:
        self._trace = _trace_api()
        self._tracer = tracer if tracer is not None else self._trace.get_tracer("capsched")
        self._lock = threading.Lock()
        self._open: dict[int, list[Any]] = {}  # id -> [root span, current child span or None]
        self._ended: OrderedDict[int, None] = OrderedDict()  # recently ended ids (bounded)
        self._warned = False

    def _guard(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, or None if it raised (logged: a trace must never break
        the server)."""
        try:
            return fn(*args, **kwargs)
        except Exception:
            if not self._warned:
                self._warned = True
                log.warning("capsched tracing: %s failed; the trace goes on without it "
                            "(later failures are logged at debug level)", what, exc_info=True)
            else:
                log.debug("capsched tracing: %s failed", what, exc_info=True)
            return None

    def _child(self, root: Any, name: str, **attributes: Any) -> Any:
        ctx = self._trace.set_span_in_context(root)
        return self._tracer.start_span(name, context=ctx, attributes=attributes or None)

    def _end(self, span: Any, what: str, status: Any = None, **attributes: Any) -> None:
        """Set ``attributes`` and ``status`` on ``span`` and end it, each call guarded."""
        if span is None:
            return
        for k, v in attributes.items():
            self._guard(f"{what}: set_attribute", span.set_attribute, k, v)
        if status is not None:
            self._guard(f"{what}: set_status", span.set_status, status)
        self._guard(f"{what}: end", span.end)

    def _remember_ended(self, rid: int) -> None:
        # (under self._lock)
        self._ended[rid] = None
        self._ended.move_to_end(rid)
        while len(self._ended) > _ENDED_MEMORY:
            self._ended.popitem(last=False)

    def submitted(self, request_id: int, **attributes: Any) -> None:
        """A request was accepted: its root span and its queue span start (nothing if
        the request already ended: see the class's note on threads)."""
        rid = _rid(request_id)
        if rid is None:
            return
        with self._lock:
            if rid in self._ended:
                return
        attrs = {"capsched.request_id": rid}
        attrs.update({f"capsched.{k}": v for k, v in attributes.items() if v is not None})
        root = self._guard("start the request span", self._tracer.start_span, "capsched.request", attributes=attrs)
        if root is None:
            return
        child = self._guard("start the queue span", self._child, root, "capsched.queue")
        late = False
        with self._lock:
            if rid in self._ended:  # another thread ended it while the spans started
                late, old = True, None
            else:
                old = self._open.get(rid)
                self._open[rid] = [root, child]
        if late:
            self._end(child, "end the queue span", **{"capsched.ended_before_submitted": True})
            self._end(root, "end the request span", **{"capsched.ended_before_submitted": True})
        if old is not None:  # the same id submitted again: close the earlier spans
            self._end(old[1], "end a superseded span", **{"capsched.superseded": True})
            self._end(old[0], "end a superseded span", **{"capsched.superseded": True})

    def _next_child(self, request_id: Any, name: str, what: str, attributes: dict[str, Any],
                    requeued: Optional[str] = None) -> None:
        """End the current child span of ``request_id`` and start ``name`` under its
        root, the span calls outside the lock."""
        rid = _rid(request_id)
        if rid is None:
            return
        with self._lock:
            spans = self._open.get(rid)
            if spans is None:
                return
            root, old = spans
            spans[1] = None
        if requeued is None:
            self._end(old, "end the queue span")
        else:
            self._end(old, "end the run span", **{"capsched.requeued": requeued})
        new = self._guard(what, self._child, root, name, **attributes)
        if new is None:
            return
        with self._lock:  # still open, and no other thread gave it a child meanwhile?
            kept = self._open.get(rid) is spans and spans[1] is None
            if kept:
                spans[1] = new
        if not kept:
            self._end(new, what)

    def dispatched(self, request_id: int, device: str) -> None:
        """It was placed on ``device``: the queue span ends, a run span starts."""
        self._next_child(request_id, "capsched.run", "start the run span", {"capsched.device": device})

    def requeued(self, request_id: int, reason: str) -> None:
        """A retry or an eviction: the run span ends (with the reason), a queue span starts."""
        self._next_child(request_id, "capsched.queue", "start the queue span", {}, requeued=reason)

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
        """It ended: completed (``error=None``), or failed, expired or cancelled. The id is
        remembered, so that a late ``submitted`` for it opens nothing."""
        rid = _rid(request_id)
        if rid is None:
            return
        with self._lock:
            spans = self._open.pop(rid, None)
            self._remember_ended(rid)
        if spans is None:
            return
        status = self._guard(
            "make a span status",
            self._trace.Status,
            self._trace.StatusCode.OK if error is None else self._trace.StatusCode.ERROR,
            None if error is None else error,
        )
        self._end(spans[1], "end a request's child span", status)
        self._end(spans[0], "end the request span", status)

    @property
    def open_requests(self) -> int:
        """Requests with spans still open."""
        with self._lock:
            return len(self._open)
