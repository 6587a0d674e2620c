"""``capsched serve``: run the OpenAI-compatible server, a fleet daemon, or a front end.

Three modes (``docs/server.md``):

* ``capsched serve``: one process, the HTTP server and the fleet (simulated workers);
* ``capsched serve --daemon SOCKET``: the fleet daemon alone (no HTTP), on a Unix socket;
* ``capsched serve --remote SOCKET``: an HTTP front end of that daemon (run several).

The process prints one line once it is ready (``capsched serve: listening on
http://HOST:PORT`` or ``capsched serve: fleet daemon listening on SOCKET``), so that
``--port 0`` (any free port) can be used by scripts.

On SIGTERM or SIGINT the HTTP server drains for at most ``--shutdown-timeout`` seconds
(``docs/server.md``, "Shutdown"): queued requests and new ones get a 503
``shutting_down`` at once, running ones may finish until the timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import signal
import socket
import sys
from typing import Any, Optional, TextIO

from ..errors import ConfigError

__all__ = ["add_serve_arguments", "draining_server", "run_serve", "MAX_SHUTDOWN_TIMEOUT"]

#: The largest ``--shutdown-timeout`` (seconds).
MAX_SHUTDOWN_TIMEOUT = 3600.0


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """The ``serve`` subcommand's arguments."""
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--daemon", metavar="SOCKET", default=None,
                      help="run only the fleet daemon, on this Unix socket (front ends use --remote)")
    mode.add_argument("--remote", metavar="SOCKET", default=None,
                      help="run an HTTP front end of the fleet daemon on this Unix socket")
    p.add_argument("--host", default="127.0.0.1", help="HTTP address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000; 0: any free port, printed)")
    fleet = p.add_argument_group("fleet (not with --remote)")
    fleet.add_argument("--fleet", default="H100-SXM:1,L4:2",
                       help="simulated devices, ACCELERATOR:COUNT,... (default H100-SXM:1,L4:2)")
    fleet.add_argument("--model", default="Llama-3-8B", help="the cost model's model: Llama-3-8B or Llama-2-7B")
    fleet.add_argument("--served-model", default="capsched-simulated",
                       help="the model name clients ask for (default capsched-simulated)")
    fleet.add_argument("--time-scale", type=float, default=1.0,
                       help="real seconds per modelled second of the simulated workers (default 1.0)")
    fleet.add_argument("--policy", default="weighted", help="capsched policy (default weighted)")
    fleet.add_argument("--max-batch-size", type=int, default=8, help="requests per batch (default 8)")
    fleet.add_argument("--inflight-batches", type=int, default=1, help="batches each device runs at once (default 1)")
    fleet.add_argument("--scheduler-config", metavar="TOML", default=None,
                       help="capsched Config tunables: the [scheduler] table of a TOML file, or its top-level "
                            "keys (not policy, max_batch_size or devices: --policy, --max-batch-size, --fleet)")
    http = p.add_argument_group("HTTP (not with --daemon)")
    http.add_argument("--api-key", action="append", default=[], metavar="KEY=TENANT",
                      help="accept this API key, for this tenant (repeatable); none: no key needed")
    http.add_argument("--api-keys-file", metavar="JSON", default=None,
                      help="a JSON object of API key -> tenant")
    http.add_argument("--max-body-bytes", type=int, default=1 << 20, help="larger bodies get 413 (default 1 MiB)")
    http.add_argument("--shutdown-timeout", type=float, default=30.0, metavar="SECONDS",
                      help="on SIGTERM/SIGINT, queued and new requests get 503 shutting_down at once and running "
                           "ones may finish for at most this long before they are cut (default 30; 0..3600)")
    p.add_argument("--log-level", default="warning", type=str.lower,
                   choices=("critical", "error", "warning", "info", "debug", "trace"),
                   help="uvicorn's log level (default warning)")


def _api_keys(args: argparse.Namespace) -> dict[str, str]:
    keys: dict[str, str] = {}
    if args.api_keys_file is not None:
        try:
            with open(args.api_keys_file, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--api-keys-file {args.api_keys_file!r}: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise ConfigError(f"--api-keys-file {args.api_keys_file!r} must hold a JSON object of key -> tenant strings")
        keys.update(data)
    for item in args.api_key:
        key, sep, tenant = item.partition("=")
        if not sep or not key or not tenant:
            raise ConfigError(f"--api-key {item!r}: expected KEY=TENANT")
        keys[key] = tenant
    return keys


#: SchedulerConfig keys that capsched serve takes from its flags, not --scheduler-config.
_FLAG_KEYS = {
    "policy": "set it with --policy",
    "max_batch_size": "set it with --max-batch-size",
    "devices": "the fleet is --fleet",
    "enable_dynamic_batching": "capsched serve always batches dynamically",
}


def _scheduler_config(path: str) -> Any:
    """``Config.from_toml(path)``; a file that sets one of :data:`_FLAG_KEYS` (a
    ``SchedulerConfig`` file) is refused naming the key and the flag to use instead."""
    from ..config import Config

    try:
        return Config.from_toml(path)
    except ConfigError as exc:
        error = exc
    table: Any = None
    try:  # only to name the flag: the file did not load, so anything may be wrong with it
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - exercised on Python < 3.11 only
            import tomli as tomllib
        with open(path, "rb") as f:
            data = tomllib.load(f)
        table = data.get("scheduler", data)
    except Exception:  # noqa: BLE001 - the error from Config.from_toml is reported
        pass
    keys = sorted(k for k in table if k in _FLAG_KEYS) if isinstance(table, dict) else []
    if keys:
        why = "; ".join(f"{k}: {_FLAG_KEYS[k]}" for k in keys)
        raise ConfigError(f"--scheduler-config {path!r} sets {keys!r}, which capsched serve does not take from "
                          f"the file ({why}); the file holds only Config tunables") from None
    raise ConfigError(str(error) if path in str(error) else f"--scheduler-config {path!r}: {error}") from None


def _engine(args: argparse.Namespace) -> Any:
    from .engine import simulated_engine

    config = None if args.scheduler_config is None else _scheduler_config(args.scheduler_config)
    return simulated_engine(
        args.fleet, model=args.model, served_model=args.served_model, time_scale=args.time_scale,
        inflight_batches=args.inflight_batches, policy=args.policy, max_batch_size=args.max_batch_size,
        config=config,
    )


async def _run_daemon(args: argparse.Namespace, out: TextIO) -> None:
    from .daemon import FleetDaemon

    daemon = FleetDaemon(_engine(args), args.daemon)
    await daemon.start()
    print(f"capsched serve: fleet daemon listening on {args.daemon}", file=out, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await daemon.close()


def draining_server(app: Any, shutdown_timeout: float, **config: Any) -> Any:
    """A ``uvicorn.Server`` of ``app`` (made by
    :func:`~capsched.server.app.create_app`) that drains on shutdown: when its shutdown
    begins (SIGTERM, SIGINT, ``should_exit``) it calls
    :func:`~capsched.server.app.begin_drain` on the event loop, then waits at most
    ``shutdown_timeout`` seconds for open requests (uvicorn's
    ``timeout_graceful_shutdown``) before it cancels them and runs the app's lifespan
    shutdown (which closes the backend). ``config``: more ``uvicorn.Config`` arguments."""
    import uvicorn

    from .app import begin_drain

    class DrainingServer(uvicorn.Server):
        async def shutdown(self, sockets: Optional[list[socket.socket]] = None) -> None:
            begin_drain(app)
            await super().shutdown(sockets=sockets)

    # uvicorn annotates the timeout as an int, but it is asyncio.wait_for's (a float).
    timeout: Any = shutdown_timeout
    return DrainingServer(uvicorn.Config(app, lifespan="on", timeout_graceful_shutdown=timeout, **config))


def run_serve(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``capsched serve`` with parsed ``args``; returns the exit status.

    Raises:
        SystemExit: a usage error (argparse's status 2), naming the bad value.
    """
    parser: Optional[argparse.ArgumentParser] = getattr(args, "_parser", None)

    def usage(msg: str) -> int:
        if parser is not None:
            parser.error(msg)
        raise SystemExit(f"capsched serve: {msg}")

    if not 0 <= args.port <= 65535:
        return usage(f"--port must be in 0..65535, got {args.port}")
    timeout = args.shutdown_timeout
    if not (math.isfinite(timeout) and 0 <= timeout <= MAX_SHUTDOWN_TIMEOUT):
        return usage(f"--shutdown-timeout must be a number of seconds in 0..{MAX_SHUTDOWN_TIMEOUT:g}, "
                     f"got {timeout!r}")
    if not args.host.strip():  # bind(('', port)) would listen on every interface
        return usage(f"--host must be an address (0.0.0.0 for every interface), got {args.host!r}")
    # Flags that the chosen mode would ignore are refused rather than ignored.
    defaults = argparse.ArgumentParser()
    add_serve_arguments(defaults)
    unused = {
        "--remote": ("fleet", "model", "served_model", "time_scale", "policy", "max_batch_size", "inflight_batches",
                     "scheduler_config"),
        "--daemon": ("host", "port", "api_key", "api_keys_file", "max_body_bytes", "shutdown_timeout"),
    }
    for flag, names in unused.items():
        if getattr(args, flag[2:]) is not None:
            given = [n for n in names if getattr(args, n) != defaults.get_default(n)]
            if given:
                return usage(f"{', '.join('--' + n.replace('_', '-') for n in given)} cannot be used with {flag}")
    try:
        if args.daemon is not None:
            _engine(args)  # validates the fleet before anything binds the socket
            asyncio.run(_run_daemon(args, out))
            return 0
        keys = _api_keys(args)
        backend: Any
        if args.remote is not None:
            from .daemon import RemoteFleet, check_daemon

            check_daemon(args.remote)  # a missing daemon is one line, not uvicorn's startup traceback
            backend = RemoteFleet(args.remote)
        else:
            backend = _engine(args)
        from .app import ServerConfig, create_app

        app = create_app(backend, ServerConfig(api_keys=keys, max_body_bytes=args.max_body_bytes))
    except (ConfigError, ImportError) as exc:  # ImportError: the message names the server extra
        return usage(str(exc))
    try:
        import uvicorn
    except ImportError:
        return usage('capsched serve needs uvicorn: pip install "capsched[server]"')
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        sock.close()
        return usage(f"cannot listen on {args.host}:{args.port}: {exc}")
    host, port = sock.getsockname()[:2]
    server = draining_server(app, timeout, log_level=args.log_level)

    async def serve() -> None:
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started:
            shown = f"[{host}]" if ":" in host else host
            print(f"capsched serve: listening on http://{shown}:{port}", file=out, flush=True)
        try:
            await task
        finally:
            if server.force_exit:
                # A second signal: uvicorn skipped the app's shutdown, and its lifespan
                # task, cancelled as the loop ends, would be logged as a traceback.
                logging.getLogger("uvicorn.error").disabled = True

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it handled, once it has shut down
        return 130
    return 0 if server.started else 1
