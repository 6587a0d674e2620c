"""The OpenAI-compatible HTTP front end: an ASGI app (Starlette).

:func:`create_app` serves, over any :class:`Backend` (a :class:`~capsched.server.engine.FleetEngine`
in this process, or a :class:`~capsched.server.daemon.RemoteFleet` reaching a fleet daemon
over a Unix socket):

* ``POST /v1/completions`` and ``POST /v1/chat/completions``: OpenAI request and response
  shapes, streamed as server-sent events with ``"stream": true`` (ending with
  ``data: [DONE]``; a usage chunk first with ``stream_options.include_usage``); the
  capsched extension fields ``priority`` (0..1) and ``timeout`` (seconds to start) in the
  body (the ``openai`` client's ``extra_body``);
* ``GET /v1/models``; ``GET /healthz`` (no key needed); ``GET /stats`` (the fleet's
  counters, as JSON).

With ``ServerConfig.api_keys`` set, every route but ``/healthz`` needs
``Authorization: Bearer <key>``, and the key's tenant goes into the capsched request.
Every error has the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``;
``docs/server.md`` lists the statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any, Optional, Protocol

from ..errors import ConfigError
from .errors import APIError, shutting_down
from .protocol import DoneEvent, ErrorEvent, Event, JobSpec, ParsedRequest, TokenEvent, parse_chat, parse_completion

try:
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - only without the extra
    raise ImportError(
        f"capsched.server needs Starlette and uvicorn: pip install \"capsched[server]\" (original error: {exc})"
    ) from exc

__all__ = ["Backend", "EventStream", "ServerConfig", "begin_drain", "create_app"]

log = logging.getLogger("capsched.server")


class EventStream(Protocol):
    """One job's events (see :class:`~capsched.server.engine.JobStream`)."""

    def __aiter__(self) -> AsyncIterator[Event]: ...

    def cancel(self) -> None:
        """Stop the job (the client went away)."""
        ...


class Backend(Protocol):
    """What the HTTP app needs from a fleet."""

    async def start(self) -> None:
        """Start (called at the app's startup)."""
        ...

    async def close(self) -> None:
        """Stop (called at the app's shutdown)."""
        ...

    async def open(self, spec: JobSpec) -> EventStream:
        """Schedule a job; raises :class:`APIError` if it is refused."""
        ...

    async def model_names(self) -> tuple[str, ...]:
        """The served model names."""
        ...

    async def status(self) -> dict[str, Any]:
        """Counters for ``/stats``."""
        ...


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """The HTTP front end's settings.

    Attributes:
        api_keys: API key -> tenant. Empty (the default): no key is needed and requests
            have no tenant.
        max_body_bytes: larger request bodies get a 413 (default 1 MiB).
        default_max_tokens: ``max_tokens`` when a request gives none (default 16, as
            OpenAI's completions).

    Raises:
        ConfigError: an empty or non-string key or tenant, a size < 1.
    """

    api_keys: Mapping[str, str] = dataclasses.field(default_factory=dict)
    max_body_bytes: int = 1 << 20
    default_max_tokens: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.api_keys, Mapping):
            raise ConfigError(f"api_keys must be a mapping of key -> tenant, got {self.api_keys!r}")
        for k, t in self.api_keys.items():
            if not isinstance(k, str) or not k or any(c.isspace() for c in k):
                raise ConfigError(f"an API key must be a non-empty string without spaces, got {k!r}")
            if not isinstance(t, str) or not t:
                raise ConfigError(f"the tenant of an API key must be a non-empty string, got {t!r}")
        for name in ("max_body_bytes", "default_max_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {v!r}")


class _ErrorResponse(JSONResponse):
    """An error body in ASCII JSON: it may quote what the client sent (an unknown field's
    name), which can hold a lone surrogate that UTF-8 cannot encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


#: Retry-After (seconds) of a 429: capsched's queue drains as batches finish, so a short
#: wait is the useful hint (clients that honour it, as the openai client does, back off
#: by it rather than by their own schedule).
RETRY_AFTER_S = 1


def _json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, inf: a mean over no runs, say) made None,
    which JSON can carry (Starlette's JSONResponse refuses them: a 500)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _error(e: APIError) -> JSONResponse:
    headers = None
    if e.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    elif e.status == 429:
        headers = {"Retry-After": str(RETRY_AFTER_S)}
    return _ErrorResponse(e.body(), status_code=e.status, headers=headers)


def _tenant(request: Request, cfg: ServerConfig) -> Optional[str]:
    if not cfg.api_keys:
        return None
    auth = request.headers.get("authorization")
    if auth is None:
        raise APIError(401, "you didn't provide an API key: send 'Authorization: Bearer <key>'",
                       code="missing_api_key")
    scheme, _, key = auth.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise APIError(401, "the Authorization header must be 'Bearer <key>'", code="invalid_api_key")
    found: Optional[str] = None
    for k, tenant in cfg.api_keys.items():  # every key compared, in constant time each
        if hmac.compare_digest(k.encode(), key.encode()):
            found = tenant
    if found is None:
        shown = key[:3] + "..." + key[-2:] if len(key) > 8 else "***"
        raise APIError(401, f"incorrect API key provided: {shown}", code="invalid_api_key")
    return found


_DRAIN_LIMIT = 64 << 20  # an oversized body is read (and dropped) up to this, so the client sees the 413


async def _read_json(request: Request, limit: int) -> Any:
    too_big = APIError(413, f"the request body exceeds the limit of {limit} bytes", param="body",
                       code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise APIError(400, f"bad Content-Length header {declared!r}", param="body", code="invalid_header") from None
        if n > limit:
            if n <= _DRAIN_LIMIT:
                async for _ in request.stream():
                    pass
            raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    raw = b"".join(chunks)

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        return json.loads(raw, parse_constant=no_constant)
    except json.JSONDecodeError as exc:
        raise APIError(400, f"malformed JSON in the request body: {exc.msg} at line {exc.lineno} column {exc.colno}",
                       param="body", code="invalid_json") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise APIError(400, f"malformed JSON in the request body: {exc}", param="body", code="invalid_json") from None


def _usage(done: DoneEvent) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def _watch_disconnect(request: Request, stream: EventStream) -> None:
    """Cancel the job if the client disconnects while a non-streaming answer is built."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            stream.cancel()
            return


class _Drain:
    """The app's shutdown state: :func:`begin_drain` sets ``draining``."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.draining = False
        self.cut = 0  # requests cut by the drain's timeout

    def begin(self) -> None:
        if self.draining:
            return
        self.draining = True
        drain = getattr(self.backend, "begin_drain", None)  # a FleetEngine's; a RemoteFleet has none
        if callable(drain):
            drain()


class _CutAtDrainTimeout:
    """ASGI middleware: when the server cancels a request's task because the drain's
    timeout passed (uvicorn's ``timeout_graceful_shutdown``), the request ends with a
    503 ``shutting_down`` instead of uvicorn's "Exception in ASGI application" traceback:
    an error response if nothing was sent yet, else (a stream) a last ``data:`` error
    event that ends the body."""

    def __init__(self, app: ASGIApp, drain: _Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = sse = done = False

        async def tracking_send(message: Message) -> None:
            nonlocal started, sse, done
            if message["type"] == "http.response.start":
                started = True
                sse = any(k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                          for k, v in message.get("headers", ()))
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                done = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            if not self.drain.draining:
                raise
            task = asyncio.current_task()
            uncancel = getattr(task, "uncancel", None)  # Python >= 3.11: the cancellation is handled here
            if uncancel is not None:
                uncancel()
            self.drain.cut += 1
            if done:
                return
            error = shutting_down("the server is shutting down: its drain timeout passed before the request ended")
            with contextlib.suppress(asyncio.CancelledError, Exception):  # the client may be gone too
                if not started:
                    body = json.dumps(error.body(), separators=(",", ":")).encode()
                    await send({"type": "http.response.start", "status": 503,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode()),
                                            (b"connection", b"close")]})
                    await send({"type": "http.response.body", "body": body})
                else:
                    await send({"type": "http.response.body", "body": _sse(error.body()) if sse else b""})


def begin_drain(app: Starlette) -> None:
    """Start the graceful shutdown of an app made by :func:`create_app` (``capsched
    serve`` calls it when uvicorn's shutdown begins, on SIGTERM or SIGINT): new requests
    get a 503 ``shutting_down``, and so do the backend's queued ones (a
    :class:`~capsched.server.engine.FleetEngine`'s
    :meth:`~capsched.server.engine.FleetEngine.begin_drain`); running requests go on. A
    request still running when the server cancels it (the drain's timeout) ends with a
    503 ``shutting_down`` too: an error response, or a last error event of a stream.
    Idempotent; call it on the app's event loop.

    Raises:
        ConfigError: ``app`` was not made by :func:`create_app`.
    """
    drain = getattr(app.state, "capsched_drain", None)
    if not isinstance(drain, _Drain):
        raise ConfigError(f"begin_drain needs an app made by capsched.server.create_app, got {app!r}")
    drain.begin()


def create_app(backend: Backend, config: Optional[ServerConfig] = None) -> Starlette:
    """The ASGI app over ``backend`` (started and closed with the app's lifespan).

    Raises:
        ConfigError: ``config`` is not a :class:`ServerConfig`.
    """
    cfg = ServerConfig() if config is None else config
    if not isinstance(cfg, ServerConfig):
        raise ConfigError(f"config must be a ServerConfig, got {cfg!r}")

    drain = _Drain(backend)

    async def completion_like(request: Request, chat: bool) -> Response:
        if drain.draining:  # a keep-alive connection's next request, after the shutdown began
            response = _error(shutting_down())
            response.headers["connection"] = "close"
            return response
        try:
            tenant = _tenant(request, cfg)
            body = await _read_json(request, cfg.max_body_bytes)
            models = await backend.model_names()
            parse = parse_chat if chat else parse_completion
            parsed = parse(body, models=models, tenant=tenant, default_max_tokens=cfg.default_max_tokens)
            # The field the request's token limit came from: an error about "max_tokens"
            # names it (a chat may give max_completion_tokens instead), whether it comes
            # from open() or later, as an ErrorEvent of the stream.
            limit_field = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else None
            try:
                stream = await backend.open(parsed.job)
            except APIError as e:
                _as_given(e, limit_field)
                raise
        except APIError as e:
            return _error(e)
        except ClientDisconnect:  # gone while its body was read: nothing was scheduled, no one to answer
            log.info("%s %s: the client disconnected before sending its whole body", request.method,
                     request.url.path)
            return Response(status_code=499)
        if parsed.stream:
            return await _streaming(request, stream, parsed, chat, limit_field)
        return await _whole(request, stream, parsed, chat, limit_field)

    def _as_given(e: APIError, limit_field: Optional[str]) -> APIError:
        """``e`` with its ``param`` "max_tokens" renamed to ``limit_field`` (the field the
        request gave its limit in) when there is one."""
        if limit_field is not None and e.param == "max_tokens":
            e.param = limit_field
        return e

    async def _whole(request: Request, stream: EventStream, parsed: ParsedRequest, chat: bool,
                     limit_field: Optional[str]) -> Response:
        watcher = asyncio.ensure_future(_watch_disconnect(request, stream))
        parts: list[str] = []
        end: Optional[Event] = None
        try:
            async for ev in stream:
                if isinstance(ev, TokenEvent):
                    parts.append(ev.text)
                else:
                    end = ev
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if isinstance(end, ErrorEvent):
            return _error(_as_given(end.error, limit_field))
        if not isinstance(end, DoneEvent):  # pragma: no cover - streams always end with one
            return _error(APIError(502, "the fleet ended the request without an answer", type="server_error"))
        text = "".join(parts)
        created = int(time.time())
        if chat:
            body: dict[str, Any] = {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": created,
                "model": parsed.job.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": end.finish_reason}],
                "usage": _usage(end),
            }
        else:
            body = {
                "id": f"cmpl-{uuid.uuid4().hex}",
                "object": "text_completion",
                "created": created,
                "model": parsed.job.model,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": end.finish_reason}],
                "usage": _usage(end),
            }
        return JSONResponse(body, headers={"x-capsched-device": end.device, "x-capsched-retries": str(end.retries)})

    async def _streaming(request: Request, stream: EventStream, parsed: ParsedRequest, chat: bool,
                         limit_field: Optional[str]) -> Response:
        it = stream.__aiter__()
        # Wait for the first event before answering, so that an error before any token
        # (expired in the queue, no worker left) gets its own HTTP status.
        watcher = asyncio.ensure_future(_watch_disconnect(request, stream))
        try:
            first = await it.__anext__()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if isinstance(first, ErrorEvent):
            return _error(_as_given(first.error, limit_field))
        cid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        model = parsed.job.model
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text: Optional[str], finish: Optional[str], role: bool = False) -> dict[str, Any]:
            if chat:
                delta: dict[str, Any] = {}
                if role:
                    delta["role"] = "assistant"
                if text is not None:
                    delta["content"] = text
                choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            c: dict[str, Any] = {"id": cid, "object": obj, "created": created, "model": model, "choices": [choice]}
            if parsed.include_usage:
                c["usage"] = None
            return c

        async def body() -> AsyncIterator[bytes]:
            try:
                if chat:
                    yield _sse(chunk("", None, role=True))
                ev: Optional[Event] = first
                while ev is not None:
                    if isinstance(ev, TokenEvent):
                        yield _sse(chunk(ev.text, None))
                    elif isinstance(ev, DoneEvent):
                        yield _sse(chunk(None if chat else "", ev.finish_reason))
                        if parsed.include_usage:
                            yield _sse({"id": cid, "object": obj, "created": created, "model": model,
                                        "choices": [], "usage": _usage(ev)})
                        yield b"data: [DONE]\n\n"
                        return
                    else:  # an error after tokens were sent: an error event ends the stream
                        yield _sse(_as_given(ev.error, limit_field).body())
                        return
                    ev = await it.__anext__()
            except StopAsyncIteration:  # pragma: no cover - streams always end with an event
                return
            finally:
                stream.cancel()  # a no-op once it ended; stops it if the client went away

        return StreamingResponse(body(), media_type="text/event-stream", headers={"cache-control": "no-cache"})

    async def completions(request: Request) -> Response:
        return await completion_like(request, chat=False)

    async def chat_completions(request: Request) -> Response:
        return await completion_like(request, chat=True)

    async def models(request: Request) -> Response:
        try:
            _tenant(request, cfg)
            names = await backend.model_names()  # a remote fleet: 503 fleet_unavailable when unreachable
        except APIError as e:
            return _error(e)
        return JSONResponse({"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "capsched"} for m in names]})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def stats(request: Request) -> Response:
        try:
            _tenant(request, cfg)
            status = await backend.status()
        except APIError as e:
            return _error(e)
        except Exception as exc:  # a worker's stats() that raises: an error body, not a traceback
            log.exception("GET /stats: the fleet's stats failed")
            return _error(APIError(500, f"the fleet's stats failed: {type(exc).__name__}: {exc}",
                                   type="server_error", code="stats_failed"))
        return JSONResponse(_json_safe(status))  # (NaN and inf, which JSON has not, become null)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return _error(APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=code))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await backend.start()
        try:
            yield
        finally:
            await backend.close()

    app = Starlette(
        routes=[
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/stats", stats, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        middleware=[Middleware(_CutAtDrainTimeout, drain=drain)],
        lifespan=lifespan,
    )
    app.state.capsched_drain = drain
    return app
