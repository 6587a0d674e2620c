"""End-to-end tests of capsched's OpenAI-compatible server (capsched.server).

Each test starts uvicorn on 127.0.0.1 (an ephemeral port, a background thread) over a
FleetEngine of time-scaled SimulatedWorkers, and talks to it with the official ``openai``
client (raw httpx only where the client cannot send the request: malformed JSON, no key).
No assertion depends on timing beyond generous orderings on a single device.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, Callable, Optional

import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from capsched.errors import ConfigError  # noqa: E402
from capsched.server import (  # noqa: E402
    APIError,
    FleetEngine,
    JobSpec,
    ServerConfig,
    SimulatedWorker,
    create_app,
    simulated_engine,
)
from capsched.server.protocol import (  # noqa: E402
    DoneEvent,
    ErrorEvent,
    TokenEvent,
    event_from_dict,
    parse_chat,
    render_chat_prompt,
)
from capsched.server.workers import GenerationRequest, WorkerFinished, WorkerToken, simulated_text  # noqa: E402
from capsched.sim.cost import CostModel  # noqa: E402

MODEL = "capsched-simulated"


def expected(prompt: str, n: int) -> str:
    """What the simulated worker generates for ``prompt`` in ``n`` tokens."""
    return "".join(simulated_text(prompt, i) for i in range(n))


class Served:
    def __init__(self, engine: FleetEngine, port: int) -> None:
        self.engine = engine
        self.base = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.base, timeout=30)  # one client: building one costs ~0.1 s

    def client(self, api_key: str = "none", **kw: Any) -> Any:
        return openai.OpenAI(base_url=self.base + "/v1", api_key=api_key, max_retries=0, timeout=60, **kw)

    def stats(self, api_key: Optional[str] = None) -> dict[str, Any]:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        r = self.http.get("/stats", headers=headers)
        assert r.status_code == 200, r.text
        return r.json()

    def wait_for(self, what: Callable[[dict[str, Any]], bool], api_key: Optional[str] = None) -> dict[str, Any]:
        """Poll /stats until ``what`` holds (up to 30 s: a bound for a hung test, not a timing claim)."""
        end = time.monotonic() + 30
        while True:
            s = self.stats(api_key)
            if what(s):
                return s
            if time.monotonic() > end:
                raise AssertionError(f"the server never reached the expected state: {s}")
            time.sleep(0.005)


def run_in_thread(server: Any, sock: socket.socket) -> threading.Thread:
    """Runs a uvicorn.Server on ``sock`` in a daemon thread; returns once it has started."""
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < end, "uvicorn did not start"
        time.sleep(0.005)
    return thread


@contextlib.contextmanager
def serving(engine: FleetEngine, config: Optional[ServerConfig] = None) -> Iterator[Served]:
    app = create_app(engine, config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", ws="none", lifespan="on"))
    thread = run_in_thread(server, sock)
    served = Served(engine, port)
    try:
        yield served
    finally:
        served.http.close()
        server.should_exit = True
        thread.join(30)
        sock.close()


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except Exception as exc:  # reported by the test
            out["error"] = exc
        out["done_at"] = time.monotonic()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


class Gated:
    """Test helper: wraps a worker so that each batch waits for ``gate`` to open before it
    runs. Holding a device busy this way makes backlogs deterministic (no sleeps)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.gate = threading.Event()
        self.prompts: list[str] = []  # of each request, in the order the device ran them

    async def generate(self, batch: Any) -> Any:
        self.prompts.extend(r.prompt for r in batch)
        while not self.gate.is_set():
            await asyncio.sleep(0.002)
        async for ev in self.inner.generate(batch):
            yield ev

    def stats(self) -> dict[str, Any]:
        return dict(self.inner.stats())


def gated(engine: FleetEngine) -> tuple[FleetEngine, threading.Event]:
    """``engine`` with its (single) device's worker gated; the gate starts closed."""
    (name,) = engine.workers
    g = Gated(engine.workers[name])
    engine.workers[name] = g
    return engine, g.gate


def run_order(engine: FleetEngine) -> list[str]:
    (worker,) = engine.workers.values()
    assert isinstance(worker, Gated)
    return list(worker.prompts)


# ---------------------------------------------------------------- answers


@pytest.fixture(scope="module")
def server() -> Iterator[Served]:
    with serving(simulated_engine("H100-SXM:1,L4:1", time_scale=0.05)) as s:
        yield s


def test_completion(server: Served) -> None:
    with server.client() as c:
        r = c.completions.create(model=MODEL, prompt="Say something", max_tokens=7)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.model == MODEL
    assert r.choices[0].text == expected("Say something", 7)
    assert r.choices[0].finish_reason == "length" and r.choices[0].index == 0
    assert r.usage is not None and r.usage.completion_tokens == 7
    assert r.usage.prompt_tokens >= 1 and r.usage.total_tokens == r.usage.prompt_tokens + 7


def test_completion_default_max_tokens_and_list_prompt(server: Served) -> None:
    with server.client() as c:
        r = c.completions.create(model=MODEL, prompt=["one prompt"])
    assert r.choices[0].text == expected("one prompt", 16)  # OpenAI's default max_tokens


def test_chat(server: Served) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "生成一段技术文档"}]
    with server.client() as c:
        r = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=5)  # type: ignore[arg-type]
    prompt = render_chat_prompt([("system", "Be brief."), ("user", "生成一段技术文档")])
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == expected(prompt, 5)
    assert r.usage is not None and r.usage.completion_tokens == 5


def test_stream_completion(server: Served) -> None:
    with server.client() as c:
        chunks = list(c.completions.create(model=MODEL, prompt="stream me", max_tokens=6, stream=True))
    texts = [ch.choices[0].text for ch in chunks]
    assert "".join(texts) == expected("stream me", 6)
    assert sum(1 for t in texts if t) == 6  # one chunk per token
    assert [ch.choices[0].finish_reason for ch in chunks][-1] == "length"
    assert all(ch.choices[0].finish_reason is None for ch in chunks[:-1])
    assert len({ch.id for ch in chunks}) == 1


def test_stream_chat_with_usage(server: Served) -> None:
    with server.client() as c:
        chunks = list(c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True,
            stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert content == expected(render_chat_prompt([("user", "hi")]), 4)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)


def test_models_healthz_and_stats(server: Served) -> None:
    with server.client() as c:
        assert [m.id for m in c.models.list()] == [MODEL]
    assert server.http.get("/healthz").json() == {"status": "ok"}
    s = server.stats()
    assert s["capsched"]["conservation_ok"] is True
    assert s["overlapping_runs"] == 0 and s["duplicate_completions"] == 0
    assert set(s["devices"]) == {"H100-SXM-0", "L4-0"}


# ---------------------------------------------------------------- bad input


def post(server: Served, path: str, content: bytes, headers: Optional[dict[str, str]] = None) -> Any:
    return server.http.post(path, content=content, headers=headers or {})


def error_of(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


@pytest.mark.parametrize("raw", [b"{not json", b'{"model": "capsched-simulated", "prompt": "x",}', b"\xff\xfe",
                                 b'{"model": "capsched-simulated", "prompt": "x", "max_tokens": NaN}', b""])
def test_malformed_json_is_400(server: Served, raw: bytes) -> None:
    e = error_of(post(server, "/v1/completions", raw, {"content-type": "application/json"}), 400)
    assert e["code"] == "invalid_json" and e["param"] == "body" and e["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "path, body, param, fragment",
    [
        ("/v1/completions", [1, 2], "body", "JSON object"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": -3}, "max_tokens", "-3"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 0}, "max_tokens", "0"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": "ten"}, "max_tokens", "'ten'"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 2.5}, "max_tokens", "2.5"),
        ("/v1/completions", {"model": MODEL, "prompt": 42}, "prompt", "int"),
        ("/v1/completions", {"model": MODEL, "prompt": [1, 2, 3]}, "prompt", "[1, 2, 3]"),
        ("/v1/completions", {"model": MODEL}, "prompt", "prompt"),
        ("/v1/completions", {"prompt": "x"}, "model", "model"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "priority": 1.5}, "priority", "1.5"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "priority": "high"}, "priority", "'high'"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "timeout": 0}, "timeout", "0"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "timeout": -1}, "timeout", "-1"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "stream": "yes"}, "stream", "'yes'"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "n": 2}, "n", "2"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "stop": ["\n"]}, "stop", "not supported"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "temperature": "hot"}, "temperature", "'hot'"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "temperature": -5}, "temperature", ">= 0, got -5"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "top_p": 0}, "top_p", "(0, 1], got 0"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "presence_penalty": 2.5}, "presence_penalty", "2.5"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "seed": 1.5}, "seed", "integer, got 1.5"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "frobnicate": 1}, "frobnicate", "frobnicate"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "stream_options": {"include_usage": True}},
         "stream_options", "stream"),
        ("/v1/chat/completions", {"model": MODEL, "messages": []}, "messages", "non-empty"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user"}]}, "messages[0].content", "None"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
         "messages[0].role", "'wizard'"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                                  "max_completion_tokens": -1}, "max_completion_tokens", "-1"),
    ],
)
def test_bad_fields_are_400_naming_the_field(server: Served, path: str, body: Any, param: str, fragment: str) -> None:
    import json

    before = server.stats()["submitted"]
    e = error_of(post(server, path, json.dumps(body).encode()), 400)
    assert e["param"] == param and fragment in e["message"], e
    assert server.stats()["submitted"] == before  # nothing was scheduled


def test_bad_field_through_the_openai_client(server: Served) -> None:
    with server.client() as c, pytest.raises(openai.BadRequestError) as info:
        c.completions.create(model=MODEL, prompt="x", max_tokens=-1)
    assert info.value.status_code == 400
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "max_tokens"


def test_unknown_model_is_404(server: Served) -> None:
    with server.client() as c, pytest.raises(openai.NotFoundError) as info:
        c.completions.create(model="gpt-9", prompt="x")
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "model_not_found"
    assert "gpt-9" in info.value.body["message"]


def test_unknown_route_and_method_have_the_error_shape(server: Served) -> None:
    assert error_of(server.http.get("/v1/nothing"), 404)["code"] == "not_found"
    assert error_of(server.http.get("/v1/completions"), 405)["code"] == "method_not_allowed"


def test_oversized_body_is_413() -> None:
    with serving(simulated_engine("H100-SXM:1", time_scale=0.05), ServerConfig(max_body_bytes=2048)) as s:
        with s.client() as c, pytest.raises(openai.APIStatusError) as info:
            c.completions.create(model=MODEL, prompt="x" * 10_000, max_tokens=2)
        assert info.value.status_code == 413
        assert isinstance(info.value.body, dict) and info.value.body["code"] == "request_too_large"
        assert "2048" in info.value.body["message"]

        # Without Content-Length (chunked): counted while read.
        def chunks() -> Iterator[bytes]:
            yield b'{"model": "capsched-simulated", "prompt": "'
            for _ in range(10):
                yield b"y" * 1000
            yield b'"}'

        e = error_of(s.http.post("/v1/completions", content=chunks()), 413)
        assert e["code"] == "request_too_large"
        # Just under the limit is fine.
        with s.client() as c:
            r = c.completions.create(model=MODEL, prompt="z" * 1500, max_tokens=2)
        assert r.choices[0].text == expected("z" * 1500, 2)
        assert s.stats()["submitted"] == 1


# ---------------------------------------------------------------- auth and tenants


def test_api_keys_and_tenants() -> None:
    cfg = ServerConfig(api_keys={"sk-alice-123456": "alice", "sk-bob-654321": "bob"})
    # One (gated) device, batches of one, and at most one queued request per tenant
    # (capsched's back-pressure): shows the key's tenant reaching the capsched request.
    engine, gate = gated(simulated_engine("H100-SXM:1", time_scale=0.05, max_batch_size=1,
                                          config={"max_queued_per_tenant": 1}))
    with serving(engine, cfg) as s:
        e = error_of(s.http.post("/v1/completions", json={"model": MODEL, "prompt": "x"}), 401)
        assert e["code"] == "missing_api_key"
        e = error_of(s.http.get("/v1/models", headers={"authorization": "Basic abc"}), 401)
        assert e["code"] == "invalid_api_key"
        assert s.http.get("/stats").status_code == 401
        assert s.http.get("/healthz").status_code == 200  # health checks need no key
        with s.client("sk-wrong-000000") as c, pytest.raises(openai.AuthenticationError) as info:
            c.completions.create(model=MODEL, prompt="x")
        assert isinstance(info.value.body, dict) and info.value.body["code"] == "invalid_api_key"
        assert "sk-wrong-000000" not in info.value.body["message"]  # the key is not echoed in full

        key = "sk-alice-123456"
        alice = s.client(key)
        bob = s.client("sk-bob-654321")
        # alice: one running (held by the gate), one queued; a third is refused (her
        # tenant's bound); bob's is accepted.
        t1, r1 = in_thread(lambda: alice.completions.create(model=MODEL, prompt="a1", max_tokens=4))
        s.wait_for(lambda st: st["capsched"]["in_flight"] == 1, key)
        t2, r2 = in_thread(lambda: alice.completions.create(model=MODEL, prompt="a2", max_tokens=4))
        s.wait_for(lambda st: st["capsched"]["queued"] == 1, key)
        with pytest.raises(openai.RateLimitError) as info:
            alice.completions.create(model=MODEL, prompt="a3", max_tokens=4)
        assert isinstance(info.value.body, dict) and info.value.body["code"] == "queue_full"
        assert "alice" in info.value.body["message"]
        assert info.value.response.headers["retry-after"] == "1"  # a hint for clients that honour it
        t3, r3 = in_thread(lambda: bob.completions.create(model=MODEL, prompt="b1", max_tokens=3))
        s.wait_for(lambda st: st["capsched"]["queued"] == 2, key)
        gate.set()
        for t in (t1, t2, t3):
            t.join(60)
        assert r1["value"].choices[0].text == expected("a1", 4)
        assert r2["value"].choices[0].text == expected("a2", 4)
        assert r3["value"].choices[0].text == expected("b1", 3)
        st = s.stats(key)
        assert st["rejected"] == 1 and st["completed"] == 3 and st["capsched"]["conservation_ok"]
        alice.close()
        bob.close()


# ---------------------------------------------------------------- scheduling


def single_device(time_scale: float = 0.2) -> tuple[FleetEngine, threading.Event]:
    return gated(simulated_engine("H100-SXM:1", time_scale=time_scale, max_batch_size=1, policy="priority"))


def test_priority_jumps_the_backlog() -> None:
    engine, gate = single_device(time_scale=1.0)  # ~0.2 s per request: margins for the ordering below
    with serving(engine) as s, s.client() as c:
        lows = [in_thread(lambda i=i: c.completions.create(model=MODEL, prompt=f"low {i}", max_tokens=24,
                                                             extra_body={"priority": 0.1}))
                for i in range(6)]
        # All six accepted: one running (held at the gate), five queued behind it.
        s.wait_for(lambda st: st["submitted"] == 6 and st["capsched"]["queued"] == 5)
        high = in_thread(lambda: c.completions.create(model=MODEL, prompt="urgent", max_tokens=24,
                                                        extra_body={"priority": 0.9}))
        s.wait_for(lambda st: st["capsched"]["queued"] == 6)
        gate.set()
        for t, _ in lows + [high]:
            t.join(60)
        for i, (_, out) in enumerate(lows):
            assert out["value"].choices[0].text == expected(f"low {i}", 24)
        assert high[1]["value"].choices[0].text == expected("urgent", 24)
        # The device runs one request at a time in priority order: the urgent request,
        # submitted last, ran right after the one already running, before the five
        # low-priority requests queued before it ...
        order = run_order(engine)
        assert len(order) == 7 and order[1] == "urgent" and order[0].startswith("low"), order
        # ... and so its client had its answer before theirs (each request runs ~0.2 s,
        # so the third of them ends ~0.6 s after it: a generous margin).
        finished_after = [out["done_at"] for _, out in lows if out["done_at"] > high[1]["done_at"]]
        assert len(finished_after) >= 3, (high[1]["done_at"], [out["done_at"] for _, out in lows])


def test_timeout_that_cannot_be_met_gets_408() -> None:
    engine, gate = single_device()
    with serving(engine) as s, s.client() as c:
        busy = in_thread(lambda: c.completions.create(model=MODEL, prompt="long", max_tokens=8))
        s.wait_for(lambda st: st["capsched"]["in_flight"] == 1)
        # The device is held busy: a 50 ms timeout cannot be met.
        with pytest.raises(openai.APIStatusError) as info:
            c.completions.create(model=MODEL, prompt="hurry", max_tokens=4, extra_body={"timeout": 0.05})
        assert info.value.status_code == 408
        body = info.value.body
        assert isinstance(body, dict) and body["code"] == "deadline_exceeded" and body["param"] == "timeout"
        assert body["type"] == "timeout_error" and "0.05" in body["message"]
        # Streaming too: the error comes before any token, so as an HTTP status.
        with pytest.raises(openai.APIStatusError) as info:
            c.completions.create(model=MODEL, prompt="hurry", max_tokens=4, stream=True,
                                 extra_body={"timeout": 0.05})
        assert info.value.status_code == 408
        # A timeout that can be met is met.
        patient = in_thread(lambda: c.completions.create(model=MODEL, prompt="patient", max_tokens=3,
                                                          extra_body={"timeout": 60}))
        s.wait_for(lambda st: st["capsched"]["queued"] == 1)
        gate.set()
        busy[0].join(60)
        patient[0].join(60)
        assert busy[1]["value"].choices[0].text == expected("long", 8)
        assert patient[1]["value"].choices[0].text == expected("patient", 3)
        st = s.stats()
        assert st["expired"] == 2 and st["capsched"]["expired"] == 2 and st["completed"] == 2


# ---------------------------------------------------------------- failing workers


def dying_fleet(**config: Any) -> FleetEngine:
    # Two identical devices: placement fills the first (H100-SXM-0) before the second.
    cfg = {"breaker_failures": 1, "retry_base": 0.001, "retry_cap": 0.01, **config}
    return simulated_engine("H100-SXM:2", time_scale=0.2, die_after_tokens={"H100-SXM-0": 3}, config=cfg)


@pytest.mark.parametrize("stream", [False, True])
def test_worker_dies_mid_run_and_the_request_completes_elsewhere(stream: bool) -> None:
    with serving(dying_fleet()) as s, s.client() as c:
        if stream:
            chunks = list(c.completions.create(model=MODEL, prompt="survive", max_tokens=10, stream=True))
            text = "".join(ch.choices[0].text for ch in chunks)
            assert chunks[-1].choices[0].finish_reason == "length"
        else:
            r = c.completions.create(model=MODEL, prompt="survive", max_tokens=10)
            text = r.choices[0].text
            assert r.usage is not None and r.usage.completion_tokens == 10
        # The retry resumed after the 3 tokens the dead worker produced: nothing lost,
        # nothing repeated.
        assert text == expected("survive", 10)
        st = s.stats()
        dead, alive = st["devices"]["H100-SXM-0"], st["devices"]["H100-SXM-1"]
        assert dead["worker"]["dead"] and dead["failed_runs"] == 1 and dead["worker"]["tokens"] == 3
        assert alive["worker"]["tokens"] == 7 and alive["failed_runs"] == 0
        assert st["retried"] == 1 and st["completed"] == 1 and st["capsched"]["breaker_trips"] >= 1
        # Later requests avoid the dead device (its breaker is open).
        r2 = c.completions.create(model=MODEL, prompt="after", max_tokens=4)
        assert r2.choices[0].text == expected("after", 4)
        assert s.stats()["devices"]["H100-SXM-0"]["worker"]["batches"] == 1
        assert s.stats()["capsched"]["conservation_ok"]


def test_retries_exhausted_is_a_clean_503() -> None:
    # One device that dies, no breaker, one retry: the retry fails too.
    engine = simulated_engine("H100-SXM:1", time_scale=0.2, die_after_tokens={"H100-SXM-0": 2},
                              config={"breaker_failures": 0, "max_retries": 1, "retry_base": 0.001})
    with serving(engine) as s, s.client() as c:
        with pytest.raises(openai.InternalServerError) as info:
            c.completions.create(model=MODEL, prompt="doomed", max_tokens=10)
        assert info.value.status_code == 503
        body = info.value.body
        assert isinstance(body, dict) and body["code"] == "worker_failed" and "2 run(s)" in body["message"]
        # Streaming: tokens were already sent, so the error arrives in the stream.
        with pytest.raises(openai.APIError) as info2:
            for _ in c.completions.create(model=MODEL, prompt="doomed too", max_tokens=10, stream=True):
                pass
        assert "failed" in str(info2.value)
        st = s.stats()
        assert st["failed"] == 2 and st["retried"] == 2 and st["capsched"]["failed"] == 2
        assert st["capsched"]["conservation_ok"] and st["open_jobs"] == 0


def test_client_going_away_cancels_its_request() -> None:
    engine, gate = single_device()
    gate.set()
    with serving(engine) as s, s.client() as c:
        stream = c.completions.create(model=MODEL, prompt="bye", max_tokens=2000, stream=True)
        it = iter(stream)
        assert next(it).choices[0].text == simulated_text("bye", 0)
        stream.close()
        # The books add up at every moment: the job is counted cancelled as it leaves
        # open_jobs, not only once its worker's run returns.
        st = s.wait_for(lambda st: st["open_jobs"] == 0)
        assert st["submitted"] == st["completed"] + st["failed"] + st["expired"] + st["cancelled"] + st["open_jobs"]
        assert st["cancelled"] == 1
        st = s.wait_for(lambda st: st["cancelled"] == 1 and st["devices"]["H100-SXM-0"]["running_batches"] == 0)
        assert st["completed"] == 0 and st["capsched"]["cancelled"] == 1 and st["capsched"]["conservation_ok"]
        assert st["devices"]["H100-SXM-0"]["worker"]["tokens"] < 2000
        # The device is free again.
        assert c.completions.create(model=MODEL, prompt="next", max_tokens=2).choices[0].text == expected("next", 2)


def test_client_giving_up_on_a_plain_request_cancels_it() -> None:
    engine, gate = single_device()
    gate.set()
    with serving(engine) as s:
        with httpx.Client(base_url=s.base, timeout=httpx.Timeout(30, read=0.3)) as h:
            with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
                h.post("/v1/completions", json={"model": MODEL, "prompt": "slow", "max_tokens": 5000})
        st = s.wait_for(lambda st: st["cancelled"] == 1 and st["open_jobs"] == 0
                        and st["devices"]["H100-SXM-0"]["running_batches"] == 0)
        assert st["completed"] == 0 and st["capsched"]["cancelled"] == 1 and st["capsched"]["conservation_ok"]


def test_engine_refuses_an_unknown_model_from_a_raw_peer() -> None:
    async def go() -> None:
        async with simulated_engine("L4:1", time_scale=0.01) as engine:
            with pytest.raises(APIError) as info:
                engine.submit(JobSpec("p", 2, "other-model"))
            assert info.value.status == 404 and info.value.param == "model"
            assert engine.stats()["submitted"] == 0

    asyncio.run(go())


# ---------------------------------------------------------------- units


def test_simulated_worker_follows_the_cost_model(monkeypatch: pytest.MonkeyPatch) -> None:
    cost = CostModel("L4", "Llama-3-8B")
    w = SimulatedWorker("L4-0", cost, time_scale=0.0)
    slept: list[float] = []

    async def record(model_seconds: float) -> None:
        slept.append(model_seconds)

    monkeypatch.setattr(w, "_sleep", record)
    batch = [GenerationRequest(1, "a", 10, 3), GenerationRequest(2, "b", 20, 2, resume_tokens=(" x",))]

    async def run() -> list[Any]:
        return [ev async for ev in w.generate(batch)]

    events = asyncio.run(run())
    tokens = [(e.request_id, e.text) for e in events if isinstance(e, WorkerToken)]
    assert tokens == [(1, simulated_text("a", 0)), (2, simulated_text("b", 1)), (1, simulated_text("a", 1)),
                      (1, simulated_text("a", 2))]
    assert [(e.request_id, e.finish_reason) for e in events if isinstance(e, WorkerFinished)] == [
        (2, "length"), (1, "length")]
    # One prefill of both prompts (the resumed token recomputed), then decode steps.
    assert slept[0] == pytest.approx(cost.step_time([10, 21]))
    assert slept[1] == pytest.approx(float(cost.decode_step_time(1, 11)))
    assert slept[2] == pytest.approx(float(cost.decode_step_time(1, 12)))
    assert len(slept) == 3 and w.tokens == 4 and w.max_active_batches == 1 and w.active_batches == 0


def test_simulated_worker_rejects_bad_settings() -> None:
    cost = CostModel("L4", "Llama-3-8B")
    with pytest.raises(ConfigError, match="time_scale"):
        SimulatedWorker("x", cost, time_scale=-1)
    with pytest.raises(ConfigError, match="die_after_tokens"):
        SimulatedWorker("x", cost, die_after_tokens=-2)
    with pytest.raises(ConfigError, match="unknown device"):
        simulated_engine("L4:1", die_after_tokens={"L4-7": 1})
    with pytest.raises(ConfigError, match="time_scale"):
        simulated_engine("L4:1", time_scale=0)
    with pytest.raises(ConfigError, match="no worker"):
        FleetEngine(["a", "b"], {"a": SimulatedWorker("a", cost)})
    with pytest.raises(ConfigError, match="API key"):
        ServerConfig(api_keys={"": "t"})
    with pytest.raises(ConfigError, match="max_body_bytes"):
        ServerConfig(max_body_bytes=0)


def test_vllm_worker_names_the_extra_when_vllm_is_missing() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:  # pragma: no cover
        pytest.skip("vllm is installed")
    from capsched.server import VLLMWorker

    with pytest.raises(ImportError, match=r"capsched\[vllm\]"):
        VLLMWorker("gpu0", model="any")


def test_jobspec_and_events_round_trip_and_validate() -> None:
    spec = JobSpec("p", 5, MODEL, priority=0.7, timeout=2.0, tenant="t", sampling={"temperature": 0.5})
    assert JobSpec.from_dict(spec.to_dict()) == spec
    for bad, param in [({"prompt": "p", "max_tokens": 5}, "model"),
                       ({**spec.to_dict(), "extra": 1}, "extra"),
                       ({**spec.to_dict(), "sampling": {"mirostat": 1}}, "mirostat"),
                       ({**spec.to_dict(), "tenant": 5}, "tenant"),
                       ("nope", "job")]:
        with pytest.raises(APIError) as info:
            JobSpec.from_dict(bad)
        assert info.value.status == 400 and info.value.param == param
    for ev in (TokenEvent(" a"), DoneEvent("length", 3, 4, "d", 1),
               ErrorEvent(APIError(408, "late", type="timeout_error", param="timeout", code="deadline_exceeded"))):
        back = event_from_dict(ev.to_dict())
        if isinstance(ev, ErrorEvent):
            assert isinstance(back, ErrorEvent) and back.error.to_dict() == ev.error.to_dict()
        else:
            assert back == ev
    with pytest.raises(ValueError, match="malformed event"):
        event_from_dict({"event": "done", "finish_reason": "length"})


def test_chat_content_parts() -> None:
    p = parse_chat({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                              {"type": "text", "text": "b"}]}]},
                   models=(MODEL,))
    assert p.job.prompt == render_chat_prompt([("user", "ab")])
    with pytest.raises(APIError) as info:
        parse_chat({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
                   models=(MODEL,))
    assert info.value.param == "messages[0].content[0]"


def test_serve_cli_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from capsched.cli import main

    for argv, fragment in [(["serve", "--api-key", "nokey"], "KEY=TENANT"),
                           (["serve", "--fleet", "Z9000:1"], "Z9000"),
                           (["serve", "--port", "70000"], "--port"),
                           (["serve", "--daemon", "/tmp/x.sock", "--remote", "/tmp/x.sock"], "not allowed"),
                           (["serve", "--remote", "/tmp/x.sock", "--fleet", "L4:1"], "--fleet cannot be used with --remote"),
                           (["serve", "--daemon", "/tmp/x.sock", "--api-key", "k=t"],
                            "--api-key cannot be used with --daemon")]:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        assert fragment in capsys.readouterr().err


def test_serve_cli_refuses_unusable_daemon_sockets_in_one_line(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    # Each was a traceback: bind() of a socket in a missing directory or with a path over
    # AF_UNIX's limit, and a front end whose daemon is not there (uvicorn's failed startup).
    import os

    from capsched.cli import main
    from capsched.server.daemon import MAX_SOCKET_PATH, RemoteFleet

    missing = str(tmp_path / "no-such-dir" / "fleet.sock")
    long_path = str(tmp_path / ("s" * (MAX_SOCKET_PATH + 1 - len(str(tmp_path)))))
    stale = str(tmp_path / "stale.sock")
    plain = str(tmp_path / "plain.txt")
    with open(plain, "w") as fh:
        fh.write("not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(stale)  # a socket file nobody listens on
        cases = [(["serve", "--daemon", missing], [repr(missing), "does not exist"]),
                 (["serve", "--daemon", long_path], [repr(long_path), f"at most {MAX_SOCKET_PATH} bytes"]),
                 (["serve", "--remote", missing, "--port", "0"], [repr(missing), "does not answer", "no such socket"]),
                 (["serve", "--remote", stale, "--port", "0"], [repr(stale), "does not answer", "connection refused"]),
                 (["serve", "--remote", plain, "--port", "0"], [repr(plain), "is not a socket"]),
                 (["serve", "--remote", long_path, "--port", "0"], [repr(long_path), "bytes long"])]
        for argv, fragments in cases:
            with pytest.raises(SystemExit) as info:
                main(argv)
            assert info.value.code == 2, argv
            err = capsys.readouterr().err
            assert "Traceback" not in err
            last = err.strip().splitlines()[-1]
            assert last.startswith("capsched serve: error: "), err
            for fragment in fragments:
                assert fragment in last, (argv, last)
    assert not os.path.exists(os.path.dirname(missing))
    with pytest.raises(ConfigError, match="bytes long"):
        RemoteFleet(long_path)


def _formats_toml_blocks() -> list[tuple[str, str]]:
    """``(the paragraph before it, code)`` of each ```toml block of docs/formats.md."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "formats.md").read_text(encoding="utf-8")
    return [(m.group(1), m.group(2)) for m in re.finditer(r"((?:[^\n]+\n)+)\n```toml\n(.*?)```", text, re.S)]


def test_serve_scheduler_config_loads_the_docs_example(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    # docs/formats.md: the SchedulerConfig example (policy, max_batch_size, devices) was
    # refused by capsched serve with "unknown config key(s)" and nothing said why; its
    # serve example (Config keys under [scheduler], or at the top level) loads.
    from capsched.cli import build_parser, main
    from capsched.config import SchedulerConfig
    from capsched.server.cli import _engine

    blocks = _formats_toml_blocks()
    serve = [code for before, code in blocks if "capsched serve --scheduler-config" in before]
    general = [code for before, code in blocks if "[[scheduler.devices]]" in code]
    assert len(serve) == 1 and len(general) == 1
    example = tmp_path / "serve.toml"
    example.write_text(serve[0])
    top_level = tmp_path / "top.toml"
    top_level.write_text(serve[0].replace("[scheduler]\n", ""))
    for path in (example, top_level):
        args = build_parser().parse_args(["serve", "--scheduler-config", str(path)])
        config = _engine(args).scheduler.config
        assert (config.max_retries, config.max_queued, config.max_queued_per_tenant) == (5, 10000, 2000)

    sched_file = tmp_path / "sched.toml"
    sched_file.write_text(general[0])
    assert SchedulerConfig.from_toml(sched_file).policy == "edf"  # the general example is a SchedulerConfig
    with pytest.raises(SystemExit) as info:
        main(["serve", "--scheduler-config", str(sched_file)])
    assert info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert repr(str(sched_file)) in last
    assert "['devices', 'max_batch_size', 'policy']" in last
    for flag in ("--fleet", "--max-batch-size", "--policy"):
        assert flag in last
    bad = tmp_path / "bad.toml"
    bad.write_text("[scheduler]\nmax_retries = -1\n")
    with pytest.raises(SystemExit):
        main(["serve", "--scheduler-config", str(bad)])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert repr(str(bad)) in last and "max_retries" in last and "-1" in last


def _fake_vllm(monkeypatch: pytest.MonkeyPatch, finish: str = "length") -> Any:
    """A stand-in for the part of vLLM's API VLLMWorker uses: SamplingParams (refusing
    max_tokens < 1, as vLLM does) and an engine emitting one character per output."""
    import types

    class SamplingParams:
        def __init__(self, max_tokens: int = 16, seed: Optional[int] = None) -> None:  # (unknown ones: TypeError)
            if max_tokens < 1:
                raise ValueError(f"max_tokens must be at least 1, got {max_tokens}.")
            self.max_tokens, self.seed = max_tokens, seed

    class Engine:
        def __init__(self) -> None:
            self.seeds: list[Any] = []

        async def generate(self, prompt: str, params: Any, request_id: str) -> Any:
            self.seeds.append(params.seed)
            for n in range(1, params.max_tokens + 1):
                done = n == params.max_tokens
                yield types.SimpleNamespace(outputs=[types.SimpleNamespace(text="t" * n, finish_reason=finish if done else None)],
                                            finished=done, prompt_token_ids=[0] * len(prompt))

        async def abort(self, request_id: str) -> None:
            pass

    module = types.ModuleType("vllm")
    module.SamplingParams = SamplingParams  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)
    return Engine()


def test_vllm_worker_never_leaves_a_batch_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    # SamplingParams was built outside the request task's try: a refusal (here max_tokens
    # = 0 for a resumed request that had sent everything) killed the task silently and the
    # batch waited for its events for ever. vLLM's own 'abort' finish was passed on as a
    # normal completion, and a seed reached vLLM as a float.
    from capsched.server import VLLMWorker
    from capsched.server.workers import GenerationRequest, WorkerDied

    async def run(worker: Any, batch: list[GenerationRequest]) -> list[Any]:
        return [ev async for ev in worker.generate(batch)]

    engine = _fake_vllm(monkeypatch)
    w = VLLMWorker("gpu0", engine=engine)
    done = GenerationRequest(1, "hi", 1, 3, ("a", "b", "c"))
    fresh = GenerationRequest(2, "hi", 1, 2, sampling={"seed": 7.0})
    evs = asyncio.run(asyncio.wait_for(run(w, [done, fresh]), 10))
    assert [e for e in evs if isinstance(e, WorkerFinished)][0] == WorkerFinished(1, "length")
    assert sum(isinstance(e, WorkerToken) for e in evs) == 2 and engine.seeds == [7] and type(engine.seeds[0]) is int
    with pytest.raises(WorkerDied):  # a refused SamplingParams fails the run (retried), never hangs
        asyncio.run(asyncio.wait_for(run(w, [GenerationRequest(3, "hi", 1, 2, sampling={"nonsense": 1})]), 10))
    w = VLLMWorker("gpu0", engine=_fake_vllm(monkeypatch, finish="abort"))
    with pytest.raises(WorkerDied, match="aborted"):
        asyncio.run(asyncio.wait_for(run(w, [GenerationRequest(4, "hi", 1, 2)]), 10))
