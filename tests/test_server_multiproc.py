"""Several front-end processes sharing one fleet through the fleet daemon.

One ``capsched serve --daemon SOCKET`` process owns the only capsched Scheduler and the
(simulated) workers; three ``capsched serve --remote SOCKET`` processes serve HTTP and
forward every job to it over the Unix socket. Concurrent clients of all three must get
their own, complete answers, and the daemon's books must show that no device ever ran
more than its capacity at once and no request ran or completed twice.
"""

from __future__ import annotations

import contextlib
import json
import threading
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from capsched.server.workers import simulated_text  # noqa: E402

MODEL = "capsched-simulated"
FLEET = ["--fleet", "H100-SXM:1,L4:1", "--time-scale", "0.5", "--max-batch-size", "4"]


def expected(prompt: str, n: int) -> str:
    return "".join(simulated_text(prompt, i) for i in range(n))


def ready_line(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    """The process's first stdout line (its ready message), waiting up to ``timeout``
    (a bound for a hung start, not a timing claim)."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            raise AssertionError(f"{proc.args} printed nothing in {timeout} s")
        line = proc.stdout.readline()
    finally:
        sel.close()
    if not line:
        raise AssertionError(f"{proc.args} exited with {proc.wait()} before it was ready")
    return line.strip()


def spawn(args: list[str], log: str) -> subprocess.Popen[str]:
    with open(log, "w") as err:
        return subprocess.Popen([sys.executable, "-m", "capsched", "serve", *args], stdout=subprocess.PIPE,
                                stderr=err, text=True)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


class Fleet:
    def __init__(self, tmp: str, front_ends: int) -> None:
        self.tmp = tmp
        self.sock = os.path.join(tmp, "fleet.sock")  # short: AF_UNIX paths are limited to ~108 bytes
        self.daemon = spawn(["--daemon", self.sock, *FLEET], os.path.join(tmp, "daemon.log"))
        self.fronts: list[subprocess.Popen[str]] = []
        self.urls: list[str] = []
        try:
            assert ready_line(self.daemon) == f"capsched serve: fleet daemon listening on {self.sock}"
            for i in range(front_ends):
                self.start_front(i)
        except BaseException:
            self.close()
            raise

    def start_front(self, i: int) -> str:
        p = spawn(["--remote", self.sock, "--port", "0", "--api-key", f"sk-front-{i}=tenant{i}"],
                  os.path.join(self.tmp, f"front{i}.log"))
        self.fronts.append(p)
        line = ready_line(p)
        assert line.startswith("capsched serve: listening on http://127.0.0.1:"), line
        url = line.rsplit(" ", 1)[1]
        self.urls.append(url)
        return url

    def stats(self, i: int = 0) -> dict[str, Any]:
        r = httpx.get(self.urls[i] + "/stats", headers={"authorization": f"Bearer sk-front-{i}"}, timeout=30)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def close(self) -> None:
        for p in self.fronts:
            stop(p)
        stop(self.daemon)


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    tmp = tempfile.mkdtemp(prefix="capsched-")
    f = Fleet(tmp, 3)
    try:
        yield f
        f.close()
        for name in sorted(os.listdir(tmp)):
            if name.endswith(".log"):
                with open(os.path.join(tmp, name)) as log:
                    assert "Traceback" not in log.read(), f"{name} logged an exception"
    finally:
        f.close()
        shutil.rmtree(tmp, ignore_errors=True)


def client(url: str, key: str) -> Any:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)


def ask(url: str, key: str, i: int, c: Any = None, n: Optional[int] = None) -> tuple[str, str, int]:
    prompt = f"request {i} via {url}"
    n = 4 + i % 9 if n is None else n
    with (client(url, key) if c is None else contextlib.nullcontext(c)) as c:
        if i % 3 == 0:
            text = "".join(ch.choices[0].text for ch in c.completions.create(
                model=MODEL, prompt=prompt, max_tokens=n, stream=True, extra_body={"priority": (i % 5) / 4}))
        elif i % 3 == 1:
            text = c.completions.create(model=MODEL, prompt=prompt, max_tokens=n).choices[0].text
        else:
            r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=n)
            text = r.choices[0].message.content or ""
            prompt = f"user: {prompt}\nassistant:"
    return prompt, text, n


def test_three_front_ends_share_one_fleet_without_double_booking(fleet: Fleet) -> None:
    before = fleet.stats()
    jobs = 36
    clients = [client(fleet.urls[i % 3], f"sk-front-{i % 3}") for i in range(12)]
    start = threading.Barrier(12)

    def one(i: int) -> tuple[str, str, int]:
        if i < 12:
            start.wait(60)  # the first twelve at once, so that they queue together
        # 20..36 tokens: ~0.1 s on the H100 and ~1 s on the L4 at this time scale.
        return ask(fleet.urls[i % 3], f"sk-front-{i % 3}", i, clients[i % 12], 20 + 2 * (i % 9))

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(jobs)))
    for c in clients:
        c.close()
    for prompt, text, n in results:
        assert text == expected(prompt, n)  # each client got its own answer, whole
    # Every front end sees the same fleet: the daemon's books.
    stats = [fleet.stats(i) for i in range(3)]
    st = stats[0]
    assert all(s["submitted"] == st["submitted"] for s in stats)
    assert st["submitted"] - before["submitted"] == jobs
    assert st["completed"] - before["completed"] == jobs
    assert st["overlapping_runs"] == 0 and st["duplicate_completions"] == 0
    assert st["open_jobs"] == 0 and st["capsched"]["conservation_ok"] is True
    assert st["capsched"]["in_flight"] == 0 and st["capsched"]["queued"] == 0
    for name, d in st["devices"].items():
        assert d["max_batches_at_once"] <= d["limit_batches"] == 1, name
        assert d["max_requests_at_once"] <= d["limit_requests"] == 4, name
        assert d["worker"]["max_active_batches"] <= 1, name
    # The front ends' requests really were scheduled together: batches mixed them.
    assert max(d["max_requests_at_once"] for d in st["devices"].values()) >= 2
    assert sum(d["runs"] for d in st["devices"].values()) - sum(
        d["runs"] for d in before["devices"].values()) < jobs


def test_a_front_end_dying_cancels_its_requests_only(fleet: Fleet) -> None:
    url = fleet.start_front(3)
    victim = fleet.fronts[-1]
    before = fleet.stats()
    with openai.OpenAI(base_url=url + "/v1", api_key="sk-front-3", max_retries=0, timeout=60) as c:
        stream = c.completions.create(model=MODEL, prompt="long", max_tokens=5000, stream=True)
        first = next(iter(stream))
        assert first.choices[0].text == simulated_text("long", 0)
        victim.kill()  # SIGKILL: no goodbye; the daemon sees the connection drop
        victim.wait()
        with pytest.raises(openai.APIError):
            for _ in stream:
                pass
    end = time.monotonic() + 60
    while True:
        st = fleet.stats()
        if st["cancelled"] > before["cancelled"]:
            break
        assert time.monotonic() < end, st
        time.sleep(0.05)
    assert st["completed"] == before["completed"] and st["capsched"]["conservation_ok"]
    # The fleet serves the other front ends as before.
    prompt, text, n = ask(fleet.urls[1], "sk-front-1", 1)
    assert text == expected(prompt, n)


class Raw:
    """A raw client of the daemon's socket protocol."""

    def __init__(self, path: str) -> None:
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(60)
        self.s.connect(path)
        self.f = self.s.makefile("rb")

    def send(self, obj: Any) -> None:
        self.s.sendall(obj if isinstance(obj, bytes) else json.dumps(obj).encode() + b"\n")

    def recv(self) -> Any:
        line = self.f.readline()
        assert line, "the daemon closed the connection"
        return json.loads(line)

    def close(self) -> None:
        self.f.close()
        self.s.close()


def test_daemon_protocol_refuses_bad_messages_and_keeps_serving(fleet: Fleet) -> None:
    assert (os.stat(fleet.sock).st_mode & 0o777) == 0o600
    r = Raw(fleet.sock)
    try:
        r.send(b"this is not json\n")
        m = r.recv()
        assert m["tag"] is None and m["event"] == "error" and m["error"]["status"] == 400
        r.send({"op": "hello", "version": 99})
        m = r.recv()
        assert m["error"]["param"] == "version" and "99" in m["error"]["message"]
        r.send({"op": "hello", "version": 1})
        assert r.recv() == {"op": "hello", "version": 1, "models": [MODEL]}
        r.send({"op": "submit", "tag": "x", "job": {}})
        assert r.recv()["error"]["param"] == "tag"
        r.send({"op": "submit", "tag": 1, "job": {"prompt": "p", "max_tokens": -5, "model": MODEL}})
        m = r.recv()
        assert m["tag"] == 1 and m["error"]["param"] == "max_tokens" and "-5" in m["error"]["message"]
        r.send({"op": "submit", "tag": 2, "job": {"prompt": "p", "max_tokens": 3, "model": MODEL, "pickle": "x"}})
        assert r.recv()["error"]["param"] == "pickle"
        r.send({"op": "launch"})
        assert r.recv()["error"]["param"] == "op"
        # Still serving on the same connection.
        r.send({"op": "submit", "tag": 3, "job": {"prompt": "raw", "max_tokens": 3, "model": MODEL,
                                                  "tenant": "raw"}})
        got = [r.recv() for _ in range(4)]
        assert [g["event"] for g in got] == ["token", "token", "token", "done"]
        assert all(g["tag"] == 3 for g in got)
        assert "".join(g["text"] for g in got[:3]) == expected("raw", 3)
        assert got[3]["completion_tokens"] == 3 and got[3]["finish_reason"] == "length"
        r.send({"op": "stats", "tag": 4})
        m = r.recv()
        assert m["tag"] == 4 and m["event"] == "stats" and m["stats"]["capsched"]["conservation_ok"]
    finally:
        r.close()


def test_a_second_daemon_on_the_same_socket_is_refused(fleet: Fleet) -> None:
    p = spawn(["--daemon", fleet.sock, *FLEET], os.path.join(fleet.tmp, "daemon2.log"))
    try:
        assert p.wait(120) == 2
    finally:
        stop(p)
    with open(os.path.join(fleet.tmp, "daemon2.log")) as f:
        assert "already listens" in f.read()
    # The first daemon is untouched.
    prompt, text, n = ask(fleet.urls[0], "sk-front-0", 0)
    assert text == expected(prompt, n)


def test_front_end_without_a_daemon_fails_to_start(tmp_path: Any) -> None:
    sock = os.path.join(tempfile.mkdtemp(prefix="capsched-"), "nobody.sock")
    p = spawn(["--remote", sock, "--port", "0"], str(tmp_path / "front.log"))
    try:
        code: Optional[int] = p.wait(120)
    finally:
        stop(p)
        shutil.rmtree(os.path.dirname(sock), ignore_errors=True)
    assert code != 0
    assert "does not answer" in (tmp_path / "front.log").read_text()


def test_a_daemon_stopped_with_a_front_end_connected_logs_no_traceback() -> None:
    # close() cancelled each connection's task; on Python 3.11 asyncio's
    # start_unix_server callback then logged the CancelledError with a traceback.
    f = Fleet(tempfile.mkdtemp(prefix="capsched-"), 1)
    try:
        r = httpx.get(f.urls[0] + "/v1/models", headers={"authorization": "Bearer sk-front-0"}, timeout=30)
        assert r.status_code == 200  # the front end is connected to the daemon
        f.daemon.send_signal(signal.SIGTERM)
        rc = f.daemon.wait(30)
        with open(os.path.join(f.tmp, "daemon.log")) as log:
            text = log.read()
        assert "Traceback" not in text and rc == 0, (rc, text)
    finally:
        f.close()
        shutil.rmtree(f.tmp, ignore_errors=True)
