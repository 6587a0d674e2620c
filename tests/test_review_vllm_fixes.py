"""Regression tests for defects a review of ``VLLMWorker`` and the engine around it found.

vLLM is not installed here: a fake ``vllm`` module (``SamplingParams``) goes into
``sys.modules`` and a fake engine stands in for ``AsyncLLMEngine``, as in
``tests/test_server.py``. The fake engine tokenizes one id per character and emits two
token ids per output; its second output's text lags (its ids complete no character yet),
as vLLM's detokenizer does at a multi-byte character.

1. a request vLLM refuses alone ends with a 400 for it, the rest of the batch completes,
   and the device's breaker is not charged (it was a WorkerDied: a retry, then a 503);
2. tokens are counted by vLLM's token ids, not by text deltas;
3. a resumed request's prompt_tokens is the original prompt's count;
4. a cancel during a long prefill (no output yet) aborts the request at once.

A later review: a TypeError from vLLM's generator before its first output fails the run
(it was a client 400); a refused resumed run is a 503 ``resume_refused`` (it was a 400);
a chat that gave ``max_completion_tokens`` sees that param on a refusal that arrives as
an ErrorEvent too (it was ``max_tokens``).
"""

from __future__ import annotations

import asyncio
import sys
import types
from collections.abc import AsyncIterator
from typing import Any, Optional

import pytest

from capsched.server import FleetEngine, VLLMWorker
from capsched.server.protocol import DoneEvent, ErrorEvent, JobSpec, TokenEvent
from capsched.server.workers import GenerationRequest, WorkerDied, WorkerFinished, WorkerToken

MODEL = "served"


class FakeEngine:
    """The part of vLLM's AsyncLLMEngine VLLMWorker uses. Prompts steer it:
    ``REFUSE``: ValueError before any output; ``BROKEN``: RuntimeError before any output;
    ``LATE``: ValueError after the first output; ``FLAKY``: RuntimeError after the first
    output of its first run only; ``SLOW``: no output until ``release`` is set (prefill);
    ``MISMATCH``: TypeError before any output (an adapter/vLLM mismatch); ``KVLIMIT``:
    ValueError naming max_tokens before any output; ``DENYRESUME``: as ``FLAKY``, and
    its resumed run is refused (ValueError) before any output."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str]] = []  # (prompt, max_tokens, request id)
        self.aborted: list[str] = []
        self.closed_early: list[str] = []
        self.release = asyncio.Event()

    async def generate(self, prompt: str, params: Any, request_id: str) -> AsyncIterator[Any]:
        self.calls.append((prompt, params.max_tokens, request_id))
        if "REFUSE" in prompt:
            raise ValueError(f"The decoder prompt (length {len(prompt)}) is longer than the maximum model length")
        if "BROKEN" in prompt:
            raise RuntimeError("engine loop is dead")
        if "MISMATCH" in prompt:  # (vLLM's own code, an internal signature changed between releases)
            raise TypeError("preprocess() got an unexpected keyword argument 'prompt_adapter_request'")
        if "KVLIMIT" in prompt:
            raise ValueError(f"max_tokens={params.max_tokens} plus the prompt exceeds max_model_len")
        if "DENYRESUME" in prompt and not request_id.endswith("-0"):  # (a resumed run: a longer prompt)
            raise ValueError(f"The decoder prompt (length {len(prompt)}) is longer than the maximum model length")
        try:
            if "SLOW" in prompt:
                await self.release.wait()
            n, k = params.max_tokens, 0
            while True:
                k += 1
                ids = min(2 * k, n)
                shown = 2 if k == 2 and ids < n else ids  # the second output's text lags
                done = ids == n
                yield types.SimpleNamespace(
                    outputs=[types.SimpleNamespace(text="y" * shown, token_ids=list(range(ids)),
                                                   finish_reason="length" if done else None)],
                    finished=done, prompt_token_ids=[0] * len(prompt))
                if "LATE" in prompt:
                    raise ValueError("something odd in the middle")
                if ("FLAKY" in prompt or "DENYRESUME" in prompt) and request_id.endswith("-0"):
                    raise RuntimeError("CUDA error: device lost")
                if done:
                    return
        except asyncio.CancelledError:
            self.closed_early.append(request_id)
            raise

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    class SamplingParams:
        def __init__(self, max_tokens: int = 16, seed: Optional[int] = None, temperature: float = 1.0) -> None:
            if max_tokens < 1:
                raise ValueError(f"max_tokens must be at least 1, got {max_tokens}.")
            if temperature > 1.5:
                raise ValueError(f"temperature must be at most 1.5, got {temperature}.")
            self.max_tokens, self.seed, self.temperature = max_tokens, seed, temperature

    module = types.ModuleType("vllm")
    module.SamplingParams = SamplingParams  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", module)


async def collect(worker: VLLMWorker, batch: list[GenerationRequest]) -> list[Any]:
    return [ev async for ev in worker.generate(batch)]


def run(coro: Any, timeout: float = 10) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def fleet(engine: FakeEngine, **config: Any) -> FleetEngine:
    return FleetEngine(["gpu0"], {"gpu0": VLLMWorker("gpu0", engine=engine)}, models=(MODEL,),
                       config={"retry_base": 0.001, "retry_cap": 0.002, **config})


async def drain(stream: Any) -> tuple[list[str], Any]:
    texts: list[str] = []
    async for ev in stream:
        if isinstance(ev, TokenEvent):
            texts.append(ev.text)
        else:
            return texts, ev
    raise AssertionError("the stream ended without a final event")  # pragma: no cover


async def settled(engine: FleetEngine) -> dict[str, Any]:
    for _ in range(500):
        st = engine.stats()
        if st["devices"]["gpu0"]["running_batches"] == 0 and st["open_jobs"] == 0:
            return st
        await asyncio.sleep(0.01)
    raise AssertionError(f"the engine did not settle: {engine.stats()}")  # pragma: no cover


# ---------------------------------------------------------------- 1: per-request refusals


@pytest.mark.usefixtures("fake_vllm")
def test_a_refusal_ends_only_its_request_in_the_worker() -> None:
    async def main() -> None:
        w = VLLMWorker("gpu0", engine=FakeEngine())
        batch = [GenerationRequest(1, "ok", 2, 4), GenerationRequest(2, "hot", 3, 4, sampling={"temperature": 1.9}),
                 GenerationRequest(3, "REFUSE me", 3, 4)]
        evs = await collect(w, batch)  # (was: WorkerDied for the whole batch)
        fins = {e.request_id: e for e in evs if isinstance(e, WorkerFinished)}
        assert fins[2].finish_reason == "error" and "temperature" in (fins[2].error or "")
        assert fins[3].finish_reason == "error" and "maximum model length" in (fins[3].error or "")
        assert fins[1].finish_reason == "length" and fins[1].error is None
        assert "".join(e.text for e in evs if isinstance(e, WorkerToken) and e.request_id == 1) == "yyyy"

    run(main())


@pytest.mark.usefixtures("fake_vllm")
def test_engine_level_errors_and_errors_after_output_still_fail_the_run() -> None:
    w = VLLMWorker("gpu0", engine=FakeEngine())
    with pytest.raises(WorkerDied, match="engine loop is dead"):
        run(collect(w, [GenerationRequest(1, "ok", 2, 4), GenerationRequest(2, "BROKEN", 2, 4)]))
    with pytest.raises(WorkerDied, match="something odd"):
        run(collect(w, [GenerationRequest(3, "LATE", 2, 4)]))
    with pytest.raises(WorkerDied):  # an argument this vLLM does not know: the adapter's fault
        run(collect(w, [GenerationRequest(4, "ok", 2, 4, sampling={"mirostat": 1.0})]))


@pytest.mark.usefixtures("fake_vllm")
def test_the_engine_answers_a_refusal_with_a_400_and_spares_the_breaker() -> None:
    async def main() -> None:
        fake = FakeEngine()
        engine = fleet(fake, breaker_failures=1)
        async with engine:
            good = engine.submit(JobSpec("fine", 4, MODEL))
            hot = engine.submit(JobSpec("hot", 4, MODEL, sampling={"temperature": 1.9}))
            long = engine.submit(JobSpec("REFUSE", 4, MODEL))
            texts, end = await asyncio.wait_for(drain(good), 10)
            assert isinstance(end, DoneEvent) and "".join(texts) == "yyyy"
            for stream, param in ((hot, "temperature"), (long, None)):
                _, end = await asyncio.wait_for(drain(stream), 10)
                assert isinstance(end, ErrorEvent), end
                e = end.error
                assert (e.status, e.type, e.code, e.param) == (400, "invalid_request_error", "invalid_value", param)
            st = await settled(engine)
            assert st["refused"] == 2 and st["completed"] == 1 and st["retried"] == 0 and st["failed"] == 0
            assert st["devices"]["gpu0"]["failed_runs"] == 0
            cs = st["capsched"]
            assert cs["breaker_trips"] == 0 and cs["cancelled"] == 2 and cs["failed"] == 0 and cs["conservation_ok"]
            # (the breaker, at one failure, would have opened: the device still takes work at once)
            _, end = await asyncio.wait_for(drain(engine.submit(JobSpec("again", 2, MODEL))), 10)
            assert isinstance(end, DoneEvent)

    run(main(), 20)


@pytest.mark.usefixtures("fake_vllm")
def test_http_gets_the_400_streaming_or_not() -> None:
    pytest.importorskip("starlette")
    from test_review_server_fixes import asgi  # (an httpx client on a started engine's app)

    async def main() -> None:
        async with asgi(fleet(FakeEngine())) as c:
            for stream in (False, True):
                r = await c.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 3,
                                                          "temperature": 1.9, "stream": stream})
                assert r.status_code == 400, r.text  # (was 503 after the retries)
                e = r.json()["error"]
                assert e["param"] == "temperature" and e["code"] == "invalid_value"
                assert "temperature must be at most 1.5" in e["message"]
            r = await c.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 5})
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5

    run(main(), 20)


@pytest.mark.usefixtures("fake_vllm")
def test_a_typeerror_from_the_generator_fails_the_run_not_the_client() -> None:
    # A TypeError before the first output is an adapter/vLLM mismatch or a bug, the same for
    # every request: it fails the run (WorkerDied: retries, breaker), as one from
    # SamplingParams does; only ValueError is the request's own refusal.
    with pytest.raises(WorkerDied, match="prompt_adapter_request"):  # (was: a refusal, reason "error")
        run(collect(VLLMWorker("gpu0", engine=FakeEngine()), [GenerationRequest(1, "MISMATCH", 2, 4)]))

    async def main() -> None:
        async with fleet(FakeEngine(), breaker_failures=2, max_retries=1) as engine:
            _, end = await asyncio.wait_for(drain(engine.submit(JobSpec("MISMATCH", 4, MODEL))), 10)
            assert isinstance(end, ErrorEvent) and end.error.status == 503, end  # (was a 400)
            assert end.error.code == "worker_failed"
            st = await settled(engine)
            assert st["refused"] == 0 and st["failed"] == 1 and st["devices"]["gpu0"]["failed_runs"] == 2
            assert st["capsched"]["breaker_trips"] == 1 and st["capsched"]["conservation_ok"]

    run(main(), 20)


@pytest.mark.usefixtures("fake_vllm")
def test_a_refused_resumed_run_is_a_5xx_not_the_clients_400() -> None:
    # The resumed run's prompt is the client's plus the text already sent: the server made
    # it. Its refusal is no 400 (the client streamed tokens and did nothing wrong); still
    # reported with cancel (no breaker charge for the refusal itself).
    async def main() -> None:
        fake = FakeEngine()
        async with fleet(fake, breaker_failures=5) as engine:
            texts, end = await asyncio.wait_for(drain(engine.submit(JobSpec("DENYRESUME", 6, MODEL))), 10)
            assert "".join(texts) == "yy" and isinstance(end, ErrorEvent), end
            e = end.error
            assert (e.status, e.type, e.code, e.param) == (503, "server_error", "resume_refused", None), e.body()
            assert "maximum model length" in e.message
            st = await settled(engine)
            assert st["refused"] == 1 and st["retried"] == 1 and st["failed"] == 0
            assert st["devices"]["gpu0"]["failed_runs"] == 1  # (the first run's crash only)
            cs = st["capsched"]
            assert cs["cancelled"] == 1 and cs["failed"] == 0 and cs["conservation_ok"]
            # A first run's refusal is still the client's 400.
            _, end = await asyncio.wait_for(drain(engine.submit(JobSpec("REFUSE", 4, MODEL))), 10)
            assert isinstance(end, ErrorEvent) and end.error.status == 400

    run(main(), 20)


@pytest.mark.usefixtures("fake_vllm")
def test_http_resumed_refusal_and_max_completion_tokens_param() -> None:
    pytest.importorskip("starlette")
    from test_review_server_fixes import asgi  # (an httpx client on a started engine's app)

    async def main() -> None:
        async with asgi(fleet(FakeEngine())) as c:
            for stream in (False, True):
                # A refusal naming max_tokens, arriving as an ErrorEvent (not from open()):
                # the chat gave max_completion_tokens, so that is the param.
                r = await c.post("/v1/chat/completions", json={
                    "model": MODEL, "messages": [{"role": "user", "content": "KVLIMIT"}],
                    "max_completion_tokens": 3, "stream": stream})
                assert r.status_code == 400, r.text
                assert r.json()["error"]["param"] == "max_completion_tokens", r.text  # (was max_tokens)
                r = await c.post("/v1/chat/completions", json={
                    "model": MODEL, "messages": [{"role": "user", "content": "KVLIMIT"}],
                    "max_tokens": 3, "stream": stream})
                assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens", r.text
            r = await c.post("/v1/completions", json={"model": MODEL, "prompt": "DENYRESUME", "max_tokens": 6})
            assert r.status_code == 503 and r.json()["error"]["code"] == "resume_refused", r.text  # (was 400)
            r = await c.post("/v1/completions", json={"model": MODEL, "prompt": "DENYRESUME", "max_tokens": 6,
                                                      "stream": True})
            assert r.status_code == 200  # tokens went out first: the error is the stream's last event
            assert '"code":"resume_refused"' in r.text.replace(" ", ""), r.text
            assert "[DONE]" not in r.text

    run(main(), 20)


# ---------------------------------------------------------------- 2: tokens by token ids


@pytest.mark.usefixtures("fake_vllm")
def test_tokens_are_counted_by_token_ids() -> None:
    evs = run(collect(VLLMWorker("gpu0", engine=FakeEngine()), [GenerationRequest(1, "p", 1, 7)]))
    toks = [e for e in evs if isinstance(e, WorkerToken)]
    # Outputs: ids 2 "yy", ids 4 "yy" (lagging: no delta), ids 6 "yyyyyy", ids 7 "yyyyyyy".
    assert [(t.text, t.tokens) for t in toks] == [("yy", 2), ("yyyy", 4), ("y", 1)]
    assert evs[-1] == WorkerFinished(1, "length", 1, 7)

    async def main() -> None:
        async with fleet(FakeEngine()) as engine:
            texts, end = await asyncio.wait_for(drain(engine.submit(JobSpec("p", 7, MODEL))), 10)
            assert len(texts) == 3 and isinstance(end, DoneEvent)
            assert end.completion_tokens == 7  # (was 3: one per text delta)

    run(main())


# ---------------------------------------------------------------- 3: a resumed prompt's tokens


@pytest.mark.usefixtures("fake_vllm")
def test_a_resumed_request_reports_its_original_prompt_tokens() -> None:
    fake = FakeEngine()
    w = VLLMWorker("gpu0", engine=fake)
    r = GenerationRequest(1, "hello", 2, 8, ("yy", "yyy"), resume_token_count=5)
    evs = run(collect(w, [r]))
    assert fake.calls == [("helloyyyyy", 3, "capsched-1-2")]  # max_tokens: 8 less the 5 resumed tokens
    fin = evs[-1]
    assert fin.prompt_tokens == 5 and fin.completion_tokens == 3  # (was 10: the resumed text counted)

    async def main() -> None:
        # The first run dies after one output (two tokens, "yy"); the retry resumes.
        fake = FakeEngine()
        async with fleet(fake) as engine:
            texts, end = await asyncio.wait_for(drain(engine.submit(JobSpec("FLAKY", 6, MODEL))), 10)
            assert isinstance(end, DoneEvent) and end.retries == 1, end
            assert [(p, n) for p, n, _ in fake.calls] == [("FLAKY", 6), ("FLAKYyy", 4)]
            assert "".join(texts) == "y" * 6
            assert end.prompt_tokens == 5 and end.completion_tokens == 6

    run(main())


# ---------------------------------------------------------------- 4: cancel during a prefill


@pytest.mark.usefixtures("fake_vllm")
def test_a_cancel_during_a_long_prefill_aborts_at_once() -> None:
    async def main() -> None:
        fake = FakeEngine()
        w = VLLMWorker("gpu0", engine=fake)
        slow, other = GenerationRequest(1, "SLOW", 2, 4), GenerationRequest(2, "ok", 2, 4)
        task = asyncio.ensure_future(collect(w, [slow, other]))
        await asyncio.sleep(0.05)
        assert not task.done()
        slow.cancelled.set()  # vLLM has produced nothing for it (and never will, unreleased)
        evs = await asyncio.wait_for(task, 2)  # (was: waited for vLLM's next output)
        assert WorkerFinished(1, "cancelled") in evs
        assert [e for e in evs if isinstance(e, WorkerFinished) and e.request_id == 2][0].finish_reason == "length"
        assert fake.aborted == ["capsched-1-0"] and fake.closed_early == ["capsched-1-0"]

    run(main())

    async def through_the_engine() -> None:
        fake = FakeEngine()
        async with fleet(fake) as engine:
            stream = engine.submit(JobSpec("SLOW", 4, MODEL))
            for _ in range(200):
                if fake.calls:
                    break
                await asyncio.sleep(0.01)
            stream.cancel()
            st = await settled(engine)
            assert fake.aborted == [f"capsched-{stream.request_id}-0"]
            assert st["cancelled"] == 1 and st["capsched"]["cancelled"] == 1 and st["capsched"]["conservation_ok"]
            assert st["devices"]["gpu0"]["failed_runs"] == 0

    run(through_the_engine())


@pytest.mark.usefixtures("fake_vllm")
def test_a_request_cancelled_before_it_starts_never_reaches_vllm() -> None:
    fake = FakeEngine()
    r = GenerationRequest(1, "ok", 2, 4)
    r.cancelled.set()
    evs = run(collect(VLLMWorker("gpu0", engine=fake), [r]))
    assert evs == [WorkerFinished(1, "cancelled")] and fake.calls == []

