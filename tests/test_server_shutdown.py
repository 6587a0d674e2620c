"""The bounded drain of ``capsched serve`` on SIGTERM/SIGINT (docs/server.md, "Shutdown").

When the shutdown begins, requests still queued in capsched and new ones get a 503
``shutting_down`` at once; running ones may finish until ``--shutdown-timeout``, then are
cut (a last ``shutting_down`` error event of their stream), and the app's lifespan
shutdown still closes the engine. Time bounds here are generous: a bound for a hung test,
not a timing claim.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from capsched.errors import ConfigError  # noqa: E402
from capsched.server import create_app, simulated_engine  # noqa: E402
from capsched.server.app import begin_drain  # noqa: E402
from capsched.server.cli import draining_server  # noqa: E402

from test_server import run_in_thread  # noqa: E402
from test_server_multiproc import ready_line  # noqa: E402

MODEL = "capsched-simulated"
#: One H100 running one request at a time, ~7 ms a token: a second request waits queued.
ONE_AT_A_TIME = ["--fleet", "H100-SXM:1", "--max-batch-size", "1", "--inflight-batches", "1"]


def _post(base: str, body: dict[str, Any], out: dict[str, Any]) -> None:
    with httpx.Client(base_url=base, timeout=60) as h:
        r = h.post("/v1/completions", json=body)
        out["status"], out["body"], out["at"] = r.status_code, r.json(), time.monotonic()


def _wait_open_jobs(h: Any, n: int) -> None:
    end = time.monotonic() + 30
    while h.get("/stats").json()["open_jobs"] != n:
        assert time.monotonic() < end, h.get("/stats").json()
        time.sleep(0.01)


def _events(lines: Iterator[str]) -> Iterator[str]:
    for line in lines:
        if line.startswith("data: "):
            yield line[len("data: "):]


class _Serve:
    """``capsched serve`` one request at a time in a subprocess (``base``: its URL); on
    exit it is killed if still running, and ``rc`` and ``stderr`` are what it left."""

    def __init__(self, tmp_path: Any, timeout: float) -> None:
        self.log = tmp_path / "serve.log"
        self.args = ["--port", "0", *ONE_AT_A_TIME, "--shutdown-timeout", str(timeout)]

    def __enter__(self) -> "_Serve":
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "capsched", "serve", *self.args],
                                         stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            self.base = ready_line(self.proc).rsplit(" ", 1)[-1]
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc.poll() is None:  # pragma: no cover - a hung shutdown: fail, but leave nothing behind
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.stderr = self.log.read_text()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_queued_requests_at_once_and_cuts_running_ones_at_the_timeout(sig: int, tmp_path: Any) -> None:
    timeout = 2.0
    with _Serve(tmp_path, timeout) as served:
        base, proc = served.base, served.proc
        with httpx.Client(base_url=base, timeout=60) as h, \
                h.stream("POST", "/v1/completions",
                         json={"model": MODEL, "prompt": "long", "max_tokens": 100_000, "stream": True}) as running:
            assert running.status_code == 200
            events = _events(running.iter_lines())
            assert json.loads(next(events))["choices"][0]["text"]  # it runs
            queued: dict[str, Any] = {}
            t = threading.Thread(target=_post, args=(base, {"model": MODEL, "prompt": "q", "max_tokens": 4}, queued))
            t.start()
            _wait_open_jobs(h, 2)
            sent = time.monotonic()
            proc.send_signal(sig)
            t.join(30)
            assert queued["status"] == 503 and queued["body"]["error"]["code"] == "shutting_down", queued
            assert queued["at"] - sent < timeout + 10  # at once, in fact: not after the drain
            rest = list(events)  # the running one streams on until the timeout cuts it
        assert rest and "[DONE]" not in rest
        assert json.loads(rest[-1])["error"]["code"] == "shutting_down", rest[-1]
        rc = proc.wait(timeout + 15)
    assert "Traceback" not in served.stderr, served.stderr
    # uvicorn re-raises the signal once it has shut down: SIGTERM kills the process with
    # it, SIGINT is a KeyboardInterrupt that capsched serve turns into status 130.
    assert rc == (-signal.SIGTERM if sig == signal.SIGTERM else 130), (rc, served.stderr)


def _serve_in_thread(engine: Any, timeout: float) -> tuple[Any, Any, threading.Thread, str, socket.socket]:
    app = create_app(engine)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = draining_server(app, timeout, log_level="warning", ws="none")
    thread = run_in_thread(server, sock)
    return app, server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}", sock


def test_running_requests_finish_within_the_timeout_and_the_engine_is_closed() -> None:
    engine = simulated_engine("H100-SXM:1", max_batch_size=1, time_scale=1.0)
    _app, server, thread, base, sock = _serve_in_thread(engine, 30.0)
    try:
        with httpx.Client(base_url=base, timeout=60) as h, \
                h.stream("POST", "/v1/completions",
                         json={"model": MODEL, "prompt": "p", "max_tokens": 100, "stream": True}) as running:
            events = _events(running.iter_lines())
            next(events)
            queued: dict[str, Any] = {}
            t = threading.Thread(target=_post, args=(base, {"model": MODEL, "prompt": "q", "max_tokens": 4}, queued))
            t.start()
            _wait_open_jobs(h, 2)
            server.should_exit = True  # what SIGTERM sets
            t.join(30)
            assert queued["status"] == 503 and queued["body"]["error"]["code"] == "shutting_down", queued
            rest = list(events)
        assert rest[-1] == "[DONE]"
        assert json.loads(rest[-2])["choices"][0]["finish_reason"] == "length"
        thread.join(25)  # well before the 30 s timeout: nothing is left to wait for
        assert not thread.is_alive()
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
    st = engine.stats()
    assert st["completed"] == 1 and st["drained"] == 1 and st["open_jobs"] == 0
    assert st["capsched"]["conservation_ok"]
    with pytest.raises(Exception, match="not running"):  # closed by the lifespan shutdown
        engine.submit(None)  # type: ignore[arg-type]


def test_requests_after_the_drain_began_get_503_and_begin_drain_needs_a_capsched_app() -> None:
    engine = simulated_engine("L4:1", time_scale=0.01)
    app, server, thread, base, sock = _serve_in_thread(engine, 5.0)
    try:
        with httpx.Client(base_url=base, timeout=30) as h:
            assert h.post("/v1/completions", json={"model": MODEL, "prompt": "a", "max_tokens": 2}).status_code == 200
            done = threading.Event()

            async def drain() -> None:  # on the app's loop, as the server's shutdown does
                begin_drain(app)
                done.set()

            import asyncio

            asyncio.run_coroutine_threadsafe(drain(), server_loop(server, thread)).result(10)
            assert done.is_set() and engine.draining
            r = h.post("/v1/completions", json={"model": MODEL, "prompt": "b", "max_tokens": 2})
            assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
            assert r.headers["connection"] == "close"
            assert h.get("/healthz").status_code == 200
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
    from starlette.applications import Starlette

    with pytest.raises(ConfigError, match="create_app"):
        begin_drain(Starlette())


def server_loop(server: Any, thread: threading.Thread) -> Any:
    """The event loop ``server`` runs on (found from its listening servers)."""
    for s in server.servers:
        return s.get_loop()
    raise AssertionError("no listening server")


@pytest.mark.parametrize("value", ["abc", "nan", "inf", "-1", "-0.5", "3601", "1e9"])
def test_bad_shutdown_timeouts_are_usage_errors_naming_the_value(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    from capsched.cli import main

    with pytest.raises(SystemExit) as info:
        main(["serve", "--port", "0", "--shutdown-timeout", value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("capsched serve: error: ") and "--shutdown-timeout" in last and "Traceback" not in err
    assert value in last or repr(float(value)) in last, last


def test_shutdown_timeout_is_refused_with_daemon(capsys: pytest.CaptureFixture[str]) -> None:
    from capsched.cli import main

    with pytest.raises(SystemExit) as info:
        main(["serve", "--daemon", "/tmp/capsched-unused.sock", "--shutdown-timeout", "5"])
    assert info.value.code == 2
    assert "--shutdown-timeout cannot be used with --daemon" in capsys.readouterr().err


def test_a_second_sigint_exits_at_once_without_a_traceback(tmp_path: Any) -> None:
    # uvicorn skips the app's shutdown on a second SIGINT; its lifespan task, cancelled as
    # the loop ended, was logged as a KeyboardInterrupt/CancelledError traceback.
    with _Serve(tmp_path, 60) as served:
        with httpx.Client(base_url=served.base, timeout=60) as h, \
                h.stream("POST", "/v1/completions",
                         json={"model": MODEL, "prompt": "long", "max_tokens": 100_000, "stream": True}) as running:
            assert json.loads(next(_events(running.iter_lines())))["choices"][0]["text"]  # it runs
            sent = time.monotonic()
            served.proc.send_signal(signal.SIGINT)
            time.sleep(0.5)
            served.proc.send_signal(signal.SIGINT)
            rc = served.proc.wait(30)
        assert time.monotonic() - sent < 30  # not the 60 s drain
    assert "Traceback" not in served.stderr, served.stderr
    assert rc == 130, (rc, served.stderr)
