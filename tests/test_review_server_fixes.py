"""Regression tests for defects a review of capsched's OpenAI-compatible server found.

Each test drives the ASGI app in-process (httpx's ASGITransport, no sockets) over a
FleetEngine of time-scaled SimulatedWorkers, unless it needs a real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any, Optional

import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")

from capsched.server import FleetEngine, ServerConfig, create_app, simulated_engine  # noqa: E402

MODEL = "capsched-simulated"


@contextlib.asynccontextmanager
async def asgi(engine: Any, config: Optional[ServerConfig] = None) -> AsyncIterator[Any]:
    """An httpx client on the app over ``engine`` (started and closed here: ASGITransport
    runs no lifespan)."""
    app = create_app(engine, config)
    await engine.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://capsched",
                                     timeout=30) as c:
            yield c
    finally:
        await engine.close()


def err(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert set(e) == {"message", "type", "param", "code"}
    return e


def fleet(**config: Any) -> FleetEngine:
    return simulated_engine("H100-SXM:1,L4:1", time_scale=0.01, config={"breaker_failures": 1, **config})


# ---------------------------------------------------------------- 1: lone surrogates


@pytest.mark.parametrize(
    "path,raw,param",
    [
        ("/v1/completions", '{"model":"%s","prompt":"a\\ud800b","max_tokens":2}', "prompt"),
        ("/v1/completions", '{"model":"%s","prompt":["\\udfff"],"max_tokens":2}', "prompt"),
        ("/v1/chat/completions",
         '{"model":"%s","messages":[{"role":"user","content":"ok"},{"role":"user","content":"\\ud800"}]}',
         "messages[1].content"),
        ("/v1/chat/completions",
         '{"model":"%s","messages":[{"role":"user","content":[{"type":"text","text":"\\ud800"}]}]}',
         "messages[0].content[0]"),
    ],
)
def test_a_lone_surrogate_is_a_400_before_anything_is_scheduled(path: str, raw: str, param: str) -> None:
    async def main() -> None:
        engine = fleet()
        async with asgi(engine) as c:
            for _ in range(3):  # three used to open every breaker of the fleet
                # (the old code retried it as a worker crash: no answer within seconds)
                e = err(await asyncio.wait_for(c.post(path, content=raw % MODEL), 10), 400)
                assert e["param"] == param and e["code"] == "invalid_value" and "surrogate" in e["message"]
            st = engine.stats()
            assert st["submitted"] == 0 and st["capsched"]["breaker_trips"] == 0
            r = await c.post("/v1/completions", json={"model": MODEL, "prompt": "fine", "max_tokens": 2})
            assert r.status_code == 200, r.text

    asyncio.run(main())


def test_an_unknown_field_named_with_a_lone_surrogate_is_a_400_not_a_500() -> None:
    async def main() -> None:
        async with asgi(fleet()) as c:
            raw = '{"model":"%s","prompt":"x","\\ud800":1}' % MODEL
            e = err(await c.post("/v1/completions", content=raw), 400)
            assert e["code"] == "unknown_parameter" and e["param"] == "\ud800"

    asyncio.run(main())


def test_jobspec_refuses_a_lone_surrogate_from_a_raw_peer() -> None:
    from capsched.server import APIError, JobSpec

    with pytest.raises(APIError) as info:
        JobSpec.from_dict({"prompt": "\ud800", "max_tokens": 2, "model": MODEL})
    assert info.value.status == 400 and info.value.param == "prompt"


# ---------------------------------------------------------------- 2: breaker cool-down wakes the loop


class FailsFirst:
    """Wraps a worker: its first ``n`` batches fail at once, later ones run."""

    def __init__(self, inner: Any, n: int = 1) -> None:
        self.inner = inner
        self.name = inner.name
        self.left = n

    async def generate(self, batch: Any) -> Any:
        if self.left > 0:
            self.left -= 1
            raise RuntimeError("injected failure")
        async for ev in self.inner.generate(batch):
            yield ev


def test_a_queued_request_runs_when_the_breaker_cools_down_without_new_traffic() -> None:
    cooldown = 0.4

    async def main() -> None:
        engine = simulated_engine("H100-SXM:1", time_scale=0.01, config={
            "breaker_failures": 1, "breaker_cooldown": cooldown, "retry_base": 0.001, "retry_cap": 0.01})
        (name,) = engine.workers
        engine.workers[name] = FailsFirst(engine.workers[name])
        async with asgi(engine) as c:
            t0 = time.monotonic()
            # Its first run fails and opens the only device's breaker; its retry waits in
            # the queue, and no other request arrives to wake the loop.
            r = await asyncio.wait_for(
                c.post("/v1/completions", json={"model": MODEL, "prompt": "patient", "max_tokens": 2}), 10)
            took = time.monotonic() - t0
            assert r.status_code == 200, r.text
            assert r.headers["x-capsched-retries"] == "1"
            assert cooldown * 0.9 <= took < cooldown + 3  # ran about when the cool-down ended
            assert engine.stats()["capsched"]["breaker_trips"] == 1

    asyncio.run(main())


# ---------------------------------------------------------------- 3: /v1/models without the daemon


def test_models_is_503_fleet_unavailable_when_the_daemon_is_unreachable(tmp_path: Any) -> None:
    from capsched.server.daemon import RemoteFleet

    async def main() -> None:
        app = create_app(RemoteFleet(str(tmp_path / "no-daemon.sock")))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://capsched") as c:
            for path in ("/v1/models", "/stats"):
                e = err(await c.get(path), 503)
                assert e["code"] == "fleet_unavailable" and e["type"] == "server_error"
            e = err(await c.post("/v1/completions", json={"model": MODEL, "prompt": "x"}), 503)
            assert e["code"] == "fleet_unavailable"

    asyncio.run(main())


# ---------------------------------------------------------------- 4: max_tokens beyond every device's KV


@pytest.mark.parametrize(
    "path,body,param",
    [
        ("/v1/completions", {"prompt": "x", "max_tokens": 9_000_000}, "max_tokens"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 9_000_000},
         "max_tokens"),
        ("/v1/chat/completions",
         {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 9_000_000}, "max_completion_tokens"),
    ],
)
def test_max_tokens_beyond_every_devices_kv_names_the_field(path: str, body: dict[str, Any], param: str) -> None:
    async def main() -> None:
        async with asgi(fleet()) as c:
            e = err(await c.post(path, json={"model": MODEL, **body}), 400)
            assert e["code"] == "invalid_value" and e["param"] == param and "KV tokens" in e["message"]

    asyncio.run(main())


# ---------------------------------------------------------------- 5: chat checks both max_tokens fields


@pytest.mark.parametrize(
    "fields,param,code",
    [
        ({"max_completion_tokens": 3, "max_tokens": "bad"}, "max_tokens", "invalid_type"),
        ({"max_completion_tokens": 3, "max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"max_completion_tokens": True, "max_tokens": 3}, "max_completion_tokens", "invalid_type"),
    ],
)
def test_chat_checks_max_tokens_even_beside_max_completion_tokens(fields: dict[str, Any], param: str,
                                                                  code: str) -> None:
    async def main() -> None:
        engine = fleet()
        async with asgi(engine) as c:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], **fields}
            e = err(await c.post("/v1/chat/completions", json=body), 400)
            assert e["param"] == param and e["code"] == code
            assert engine.stats()["submitted"] == 0
            # Both valid: max_completion_tokens wins.
            body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                    "max_completion_tokens": 3, "max_tokens": 5}
            r = await c.post("/v1/chat/completions", json=body)
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3

    asyncio.run(main())


# ---------------------------------------------------------------- 6: a client gone while its body is read


def test_a_client_disconnecting_mid_body_is_handled_quietly(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        engine = fleet()
        app = create_app(engine)
        await engine.start()
        try:
            incoming = [{"type": "http.request", "body": b'{"model": "', "more_body": True},
                        {"type": "http.disconnect"}]

            async def receive() -> dict[str, Any]:
                return incoming.pop(0) if incoming else {"type": "http.disconnect"}

            sent: list[dict[str, Any]] = []

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                     "scheme": "http", "path": "/v1/completions", "raw_path": b"/v1/completions",
                     "query_string": b"", "root_path": "", "server": ("capsched", 80), "client": ("c", 1),
                     "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")]}
            await app(scope, receive, send)  # used to raise starlette.requests.ClientDisconnect
            assert engine.stats()["submitted"] == 0
        finally:
            await engine.close()

    with caplog.at_level("INFO"):
        asyncio.run(main())
    assert not any(r.exc_info for r in caplog.records)
    assert sum("disconnected" in r.getMessage() for r in caplog.records) <= 1
