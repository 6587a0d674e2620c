"""The fleet daemon: one process owns the fleet; front ends reach it over a Unix socket.

Several HTTP front-end processes (for more cores, or rolling restarts) must not each run
a capsched scheduler over the same GPUs: each would think it owns every device and they
would double-book them. Instead one **fleet daemon** (:class:`FleetDaemon`) owns the
:class:`~capsched.server.engine.FleetEngine` (the only Scheduler and the workers), and
each front end's app uses a :class:`RemoteFleet` backend that forwards jobs to it.

**Protocol** (version 1): newline-delimited JSON over a ``SOCK_STREAM`` Unix socket, one
UTF-8 object per line, at most :data:`MAX_LINE` bytes. No pickle: every message is
validated on arrival. Client to daemon::

    {"op": "hello", "version": 1}
    {"op": "submit", "tag": 7, "job": {"prompt": ..., "max_tokens": ..., "model": ...,
                                       "priority": ..., "timeout": ..., "tenant": ...,
                                       "sampling": {...}}}
    {"op": "cancel", "tag": 7}
    {"op": "stats", "tag": 8}

Daemon to client (``tag`` is the client's, unique among its open requests)::

    {"op": "hello", "version": 1, "models": ["capsched-simulated"]}
    {"tag": 7, "event": "token", "text": " alpha"}              (zero or more)
    {"tag": 7, "event": "done", "finish_reason": "length", "prompt_tokens": 5,
     "completion_tokens": 16, "device": "H100-SXM-0", "retries": 0}
    {"tag": 7, "event": "error", "error": {"status": 408, "message": ..., "type": ...,
                                           "param": ..., "code": ...}}
    {"tag": 8, "event": "stats", "stats": {...}}
    {"tag": null, "event": "error", "error": {...}}            (a line it could not read)

A job ends with exactly one ``done`` or ``error``. When a client disconnects, the daemon
cancels its open jobs. **Access**: the socket file is created mode 0600, so only the
daemon's user (and root) can connect; put it in a directory only that user can write.
The tenant in a job is trusted: the front ends check API keys, the daemon trusts its
socket's peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import socket
import stat
import sys
from collections.abc import AsyncIterator
from typing import Any, Optional

from ..errors import ConfigError
from .engine import FleetEngine, JobStream
from .errors import APIError
from .protocol import ErrorEvent, Event, JobSpec, TokenEvent, event_from_dict

__all__ = ["FleetDaemon", "RemoteFleet", "RemoteStream", "PROTOCOL_VERSION", "MAX_LINE", "MAX_SOCKET_PATH",
           "check_daemon"]

log = logging.getLogger("capsched.server.daemon")

PROTOCOL_VERSION = 1
#: Longest line either side accepts (bytes); a longer one closes the connection.
MAX_LINE = 16 << 20


#: Longest Unix socket path (bytes): ``sun_path`` less its terminating NUL (107 on Linux,
#: 103 on macOS and the BSDs).
MAX_SOCKET_PATH = 107 if sys.platform.startswith("linux") else 103


def _check_path_length(path: str) -> None:
    n = len(os.fsencode(path))
    if n > MAX_SOCKET_PATH:
        raise ConfigError(f"socket path {path!r} is {n} bytes long; a Unix socket's path can be at most "
                          f"{MAX_SOCKET_PATH} bytes")


def check_daemon(path: str) -> None:
    """Check that a fleet daemon listens on the Unix socket ``path`` (a front end calls
    this before it starts, so that a missing daemon is one clear error).

    Raises:
        ConfigError: the path is too long, nothing is there, or nothing listens there
            (the message names the path).
    """
    if not isinstance(path, str) or not path:
        raise ConfigError(f"the daemon's socket path must be a non-empty str, got {path!r}")
    _check_path_length(path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except FileNotFoundError:
        raise ConfigError(f"the fleet daemon at {path!r} does not answer: no such socket "
                          f"(start one with: capsched serve --daemon {path})") from None
    except ConnectionRefusedError:
        if not _is_socket(path):
            raise ConfigError(f"the fleet daemon at {path!r} does not answer: {path!r} is not a socket "
                              f"(start one with: capsched serve --daemon SOCKET)") from None
        raise ConfigError(f"the fleet daemon at {path!r} does not answer: connection refused "
                          "(a stale socket of a daemon that is gone?)") from None
    except OSError as exc:
        raise ConfigError(f"the fleet daemon at {path!r} does not answer: {exc.strerror or exc}") from None
    finally:
        probe.close()


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _line(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode() + b"\n"


def _error_line(tag: Optional[int], e: APIError) -> bytes:
    return _line({"tag": tag, **ErrorEvent(e).to_dict()})


class FleetDaemon:
    """Serves a :class:`FleetEngine` on a Unix socket (the module docstring gives the
    protocol).

    Args:
        engine: the fleet; the daemon starts and closes it.
        path: the socket's path. A stale socket file left by a dead daemon is replaced;
            one a live daemon answers on raises :class:`ConfigError`.
    """

    def __init__(self, engine: FleetEngine, path: str) -> None:
        if not isinstance(path, str) or not path:
            raise ConfigError(f"the daemon's socket path must be a non-empty str, got {path!r}")
        self.engine = engine
        self.path = path
        self._server: Optional[asyncio.AbstractServer] = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start the engine and listen on the socket (mode 0600).

        Raises:
            ConfigError: the path is longer than :data:`MAX_SOCKET_PATH` bytes, its
                directory does not exist, it is not a socket, a live daemon listens there,
                or the socket cannot be created (the message names the path).
        """
        _check_path_length(self.path)
        parent = os.path.dirname(self.path) or "."
        if not os.path.isdir(parent):
            raise ConfigError(f"cannot listen on {self.path!r}: directory {parent!r} does not exist")
        if os.path.exists(self.path):
            if not stat.S_ISSOCK(os.stat(self.path).st_mode):
                raise ConfigError(f"{self.path!r} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(self.path)
            except OSError:
                os.unlink(self.path)  # stale: nobody listens
            else:
                raise ConfigError(f"a fleet daemon already listens on {self.path!r}")
            finally:
                probe.close()
        await self.engine.start()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, self.path, limit=MAX_LINE)
        except OSError as exc:
            await self.engine.close()
            raise ConfigError(f"cannot listen on {self.path!r}: {exc.strerror or exc}") from None
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        """Stop listening, drop the connections, close the engine, remove the socket."""
        if self._server is not None:
            self._server.close()
            for t in list(self._connections):
                t.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        await self.engine.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def serve_forever(self) -> None:
        """:meth:`start`, then serve until cancelled; :meth:`close` on the way out."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        streams: dict[int, JobStream] = {}
        forwarders: set[asyncio.Task[None]] = set()
        draining = asyncio.Lock()  # one drain() at a time (Python < 3.10 asserts so)

        async def drain() -> None:
            async with draining:
                await writer.drain()

        async def forward(tag: int, stream: JobStream) -> None:
            try:
                async for ev in stream:
                    writer.write(_line({"tag": tag, **ev.to_dict()}))
                    await drain()
            except (ConnectionError, OSError):
                stream.cancel()
            finally:
                streams.pop(tag, None)

        try:
            while True:
                try:
                    raw = await reader.readline()
                except ValueError:  # longer than MAX_LINE
                    writer.write(_error_line(None, APIError(413, f"a protocol line exceeds {MAX_LINE} bytes",
                                                            code="line_too_long")))
                    break
                if not raw:
                    break
                tag: Optional[int] = None
                try:
                    msg = json.loads(raw)
                    if not isinstance(msg, dict):
                        raise APIError(400, f"a protocol message must be a JSON object, got {raw[:80]!r}",
                                       code="bad_message")
                    op = msg.get("op")
                    t = msg.get("tag")
                    if op in ("submit", "cancel", "stats"):
                        if isinstance(t, bool) or not isinstance(t, int):
                            raise APIError(400, f"{op}: tag must be an integer, got {t!r}", param="tag",
                                           code="bad_message")
                        tag = t
                    if op == "hello":
                        v = msg.get("version")
                        if v != PROTOCOL_VERSION:
                            raise APIError(400, f"protocol version {v!r} is not supported (this daemon speaks "
                                           f"{PROTOCOL_VERSION})", param="version", code="bad_version")
                        writer.write(_line({"op": "hello", "version": PROTOCOL_VERSION,
                                            "models": list(self.engine.models)}))
                    elif op == "submit":
                        assert tag is not None
                        if tag in streams:
                            raise APIError(400, f"tag {tag} is already open on this connection", param="tag",
                                           code="duplicate_tag")
                        spec = JobSpec.from_dict(msg.get("job"))
                        stream = self.engine.submit(spec)
                        streams[tag] = stream
                        f = asyncio.get_running_loop().create_task(forward(tag, stream))
                        forwarders.add(f)
                        f.add_done_callback(forwarders.discard)
                    elif op == "cancel":
                        assert tag is not None
                        s = streams.get(tag)
                        if s is not None:
                            s.cancel()
                    elif op == "stats":
                        writer.write(_line({"tag": tag, "event": "stats", "stats": self.engine.stats()}))
                    else:
                        raise APIError(400, f"unknown op {op!r}", param="op", code="bad_message")
                except APIError as e:
                    writer.write(_error_line(tag, e))
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    writer.write(_error_line(None, APIError(400, f"a protocol line is not JSON: {exc}",
                                                            code="bad_message")))
                except RecursionError:
                    writer.write(_error_line(None, APIError(400, "a protocol line is not JSON: nested too deeply",
                                                            code="bad_message")))
                except ValueError:  # json: an integer of more than 4,300 digits (Python's limit)
                    writer.write(_error_line(None, APIError(400, "a protocol line is not JSON: an integer of more "
                                                            "than 4,300 digits", code="bad_message")))
                await drain()
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            # close() drops the connection. Ending normally: on Python 3.11 asyncio's
            # start_unix_server callback logs a connection task that ends cancelled.
            pass
        finally:
            for s in list(streams.values()):
                s.cancel()
            for f in list(forwarders):
                f.cancel()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._connections.discard(task)


class RemoteStream:
    """One job's events from the daemon (the :class:`~capsched.server.app.EventStream`
    of :class:`RemoteFleet`)."""

    def __init__(self, fleet: RemoteFleet, tag: int, queue: asyncio.Queue[Event]) -> None:
        self._fleet = fleet
        self._tag = tag
        self._queue = queue
        self._finished = False

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        if self._finished:
            raise StopAsyncIteration
        ev = await self._queue.get()
        if not isinstance(ev, TokenEvent):
            self._finished = True
        return ev

    def cancel(self) -> None:
        """Ask the daemon to cancel the job (if it has not ended)."""
        if not self._finished:
            self._fleet._cancel(self._tag)


class RemoteFleet:
    """A front end's backend: forwards jobs to a :class:`FleetDaemon` over its Unix socket
    (one connection per front-end process, shared by all its requests; reconnected on the
    next request if it drops, the jobs open on it ending with a 503).

    Args:
        path: the daemon's socket.

    Raises:
        ConfigError: ``path`` is not a non-empty str or is longer than
            :data:`MAX_SOCKET_PATH` bytes.
    """

    def __init__(self, path: str) -> None:
        if not isinstance(path, str) or not path:
            raise ConfigError(f"the daemon's socket path must be a non-empty str, got {path!r}")
        _check_path_length(path)
        self.path = path
        self._reader: Optional[asyncio.StreamReader] = None
        self._writer: Optional[asyncio.StreamWriter] = None
        self._read_task: Optional[asyncio.Task[None]] = None
        self._lock: Optional[asyncio.Lock] = None
        self._draining: Optional[asyncio.Lock] = None  # one drain() at a time (Python < 3.10 asserts so)
        self._tags = itertools.count(1)
        self._queues: dict[int, asyncio.Queue[Event]] = {}
        self._stats: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._models: tuple[str, ...] = ()

    async def start(self) -> None:
        """Connect to the daemon (raises :class:`APIError` 503 if it does not answer)."""
        await self._connected()

    async def _connected(self) -> asyncio.StreamWriter:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            try:
                reader, writer = await asyncio.open_unix_connection(self.path, limit=MAX_LINE)
                writer.write(_line({"op": "hello", "version": PROTOCOL_VERSION}))
                await writer.drain()
                hello = json.loads(await reader.readline())
            except (OSError, ValueError) as exc:
                raise APIError(503, f"the fleet daemon at {self.path} does not answer: {exc}", type="server_error",
                               code="fleet_unavailable") from None
            models = hello.get("models") if isinstance(hello, dict) else None
            if not (isinstance(hello, dict) and hello.get("op") == "hello" and isinstance(models, list)
                    and all(isinstance(m, str) for m in models)):
                writer.close()
                raise APIError(502, f"the fleet daemon at {self.path} answered hello with {hello!r:.200}",
                               type="server_error", code="bad_gateway")
            self._models = tuple(models)
            self._reader, self._writer = reader, writer
            self._read_task = asyncio.get_running_loop().create_task(self._read(reader))
            return writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                raw = await reader.readline()
                if not raw:
                    break
                try:
                    msg = json.loads(raw)
                    t = msg.get("tag") if isinstance(msg, dict) else None
                    tag = t if isinstance(t, int) and not isinstance(t, bool) else -1
                    if msg.get("event") == "stats":
                        fut = self._stats.pop(tag, None)
                        if fut is not None and not fut.done():
                            fut.set_result(msg.get("stats"))
                        continue
                    ev = event_from_dict(msg)
                except (ValueError, AttributeError) as exc:
                    log.error("unreadable line from the fleet daemon: %r (%s)", raw[:200], exc)
                    continue
                q = self._queues.get(tag)
                if q is None:
                    if isinstance(ev, ErrorEvent):
                        log.error("fleet daemon error: %s", ev.error.message)
                    continue
                if not isinstance(ev, TokenEvent):
                    del self._queues[tag]
                q.put_nowait(ev)
        except (ConnectionError, OSError, ValueError):
            pass
        finally:
            self._lost()

    def _lost(self) -> None:
        err = APIError(503, f"lost the connection to the fleet daemon at {self.path}", type="server_error",
                       code="fleet_unavailable")
        for q in self._queues.values():
            q.put_nowait(ErrorEvent(err))
        self._queues.clear()
        for fut in self._stats.values():
            if not fut.done():
                fut.set_exception(err)
        self._stats.clear()
        if self._writer is not None:
            self._writer.close()
        self._writer = None

    async def close(self) -> None:
        """Close the connection (the daemon cancels the jobs still open on it)."""
        if self._writer is not None:
            self._writer.close()
        if self._read_task is not None:
            self._read_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._read_task
            self._read_task = None

    async def open(self, spec: JobSpec) -> RemoteStream:
        """Send a job to the daemon; its events (or its refusal) come through the stream."""
        writer = await self._connected()
        tag = next(self._tags)
        q: asyncio.Queue[Event] = asyncio.Queue()
        self._queues[tag] = q
        await self._send(writer, {"op": "submit", "tag": tag, "job": spec.to_dict()})
        return RemoteStream(self, tag, q)

    async def _send(self, writer: asyncio.StreamWriter, obj: Any) -> None:
        writer.write(_line(obj))
        if self._draining is None:
            self._draining = asyncio.Lock()
        async with self._draining:
            await writer.drain()

    def _cancel(self, tag: int) -> None:
        if tag in self._queues and self._writer is not None and not self._writer.is_closing():
            self._writer.write(_line({"op": "cancel", "tag": tag}))

    async def model_names(self) -> tuple[str, ...]:
        """The daemon's models (from its hello)."""
        await self._connected()
        return self._models

    async def status(self) -> dict[str, Any]:
        """The daemon's engine stats."""
        writer = await self._connected()
        tag = next(self._tags)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._stats[tag] = fut
        await self._send(writer, {"op": "stats", "tag": tag})
        return await fut
