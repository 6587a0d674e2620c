"""The fleet engine: one capsched :class:`~capsched.Scheduler`, one worker per device,
and an asyncio loop between them.

:class:`FleetEngine` accepts :class:`~capsched.server.protocol.JobSpec` jobs
(:meth:`FleetEngine.submit` returns a :class:`JobStream` of events) and runs the loop:

1. ``submit`` turns a job into an :class:`~capsched.InferenceRequest` (priority, timeout,
   tenant, prompt tokens estimated by the scheduler) and wakes the loop;
2. the loop calls ``step(now)`` on ``time.monotonic``; each batch goes to its device's
   worker as an asyncio task; each expired request gets a 408 error, each dependency
   failure a 503;
3. a batch task streams the worker's tokens to the jobs, reports each finished request
   with ``complete`` (the last one only after the worker's run has returned, so capsched
   never hands a device a new batch while the old one still runs), and on a worker
   exception reports the unfinished ones with ``fail(retryable=True)``: capsched retries
   them after a backoff (on another device when the breaker of this one opened) and the
   retry resumes after the tokens already sent; once retries are exhausted the job gets a
   503; a request the worker refused alone (``WorkerFinished`` reason ``"error"``) gets a
   400 (a 503 ``resume_refused`` when the refused run was a resumed one: a retry, or one
   after tokens were sent, whose prompt the server made) and is cancelled in capsched, not
   failed (no charge to the device's breaker);
4. the loop sleeps until woken (a submit, a finished run) or until the next time it has
   work to do: the earliest deadline of a queued job, ``StepResult.next_step_at``
   (held batches, retry backoffs), or the end of an open circuit breaker's cool-down
   (when its device may take a probe batch of what is queued).

Counters in :meth:`FleetEngine.stats` check the books: per device, the most batches and
requests that ever ran at once (never above ``max_inflight_batches`` and
``max_inflight_batches x max_batch_size``), and per job, runs that overlapped (0) and
completions reported twice (0).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

from ..config import Config
from ..devices import Device
from ..errors import AdmissionError, CapschedError, ConfigError, QueueFullError
from ..request import MAX_TOKENS, InferenceRequest
from ..scheduler import Batch, Scheduler
from .errors import APIError, shutting_down
from .protocol import DoneEvent, ErrorEvent, Event, JobSpec, TokenEvent
from .workers import GenerationRequest, SimulatedWorker, Worker, WorkerFinished, WorkerToken

__all__ = ["FleetEngine", "JobStream", "simulated_engine"]

log = logging.getLogger("capsched.server")


@dataclasses.dataclass
class _Job:
    rid: int
    spec: JobSpec
    prompt_tokens: int
    deadline: Optional[float]
    queue: asyncio.Queue[Event]
    cancel_event: asyncio.Event
    tokens: list[str] = dataclasses.field(default_factory=list)  # the text sent, one entry per worker event
    generated: int = 0  # tokens generated in all (an event's text may be several tokens)
    run_base: int = 0  # ``generated`` when its current run started
    running: bool = False  # a worker run holds it now
    ended: bool = False  # the job's final event was delivered
    cancelled: bool = False
    completed: bool = False  # a run completed it (a second would be a duplicate completion)
    runs: int = 0
    retries: int = 0


def _refused_param(message: str, fields: Sequence[str]) -> Optional[str]:
    """The request field a refusal's ``message`` is about: ``max_tokens`` for a refusal
    of its KV tokens (capsched's "more KV tokens than any device holds"), else the first
    of ``fields`` the message names, else None."""
    if "KV tokens" in message:
        return "max_tokens"
    for f in fields:
        if f in message:
            return f
    return None


class JobStream:
    """The events of one job: ``async for event in stream`` yields
    :class:`~capsched.server.protocol.TokenEvent` items and then one
    :class:`~capsched.server.protocol.DoneEvent` or
    :class:`~capsched.server.protocol.ErrorEvent`, and stops.

    :meth:`cancel` (the client went away) stops the job: a queued job is cancelled in
    capsched at once, a running one when its worker stops it.
    """

    def __init__(self, engine: FleetEngine, job: _Job) -> None:
        self._engine = engine
        self._job = job
        self._finished = False

    @property
    def request_id(self) -> int:
        """capsched's id of the job."""
        return self._job.rid

    @property
    def prompt_tokens(self) -> int:
        """capsched's estimate of the prompt's tokens."""
        return self._job.prompt_tokens

    def __aiter__(self) -> JobStream:
        return self

    async def __anext__(self) -> Event:
        if self._finished:
            raise StopAsyncIteration
        ev = await self._job.queue.get()
        if not isinstance(ev, TokenEvent):
            self._finished = True
        return ev

    def cancel(self) -> None:
        """Stop the job if it has not ended (idempotent)."""
        self._engine.cancel(self._job.rid)


@dataclasses.dataclass
class _DeviceBooks:
    limit_batches: int
    limit_requests: int
    batches: int = 0
    requests: int = 0
    max_batches: int = 0
    max_requests: int = 0
    runs: int = 0
    failures: int = 0


class FleetEngine:
    """A capsched :class:`~capsched.Scheduler` driving one :class:`Worker` per device.

    Args:
        devices: the fleet (:class:`~capsched.Device` objects or anything
            :class:`~capsched.Scheduler` accepts).
        workers: device name -> worker; every device needs one.
        models: the model names this fleet serves (what ``/v1/models`` lists).
        policy, max_batch_size, enable_dynamic_batching, config: as for
            :class:`~capsched.Scheduler`.

    Use it from one asyncio event loop: :meth:`start` (or ``async with``) starts the loop
    task, :meth:`close` stops it and ends every job still open with a 503.

    Raises:
        ConfigError: a device without a worker, a worker for an unknown device, no
            model name.
    """

    def __init__(
        self,
        devices: Sequence[Union[str, Device, Mapping[str, Any]]],
        workers: Mapping[str, Worker],
        *,
        models: Sequence[str] = ("capsched-simulated",),
        policy: str = "weighted",
        max_batch_size: int = 8,
        enable_dynamic_batching: bool = True,
        config: Optional[Union[Config, Mapping[str, Any]]] = None,
    ) -> None:
        self.scheduler = Scheduler(
            devices,
            policy=policy,
            max_batch_size=max_batch_size,
            enable_dynamic_batching=enable_dynamic_batching,
            config=config,
            clock=time.monotonic,
        )
        names = [d.name for d in self.scheduler.devices]
        if not isinstance(workers, Mapping):
            raise ConfigError(f"workers must be a mapping of device names to workers, got {workers!r}")
        missing = [n for n in names if n not in workers]
        if missing:
            raise ConfigError(f"no worker for device(s) {missing}; devices: {names}")
        extra = [n for n in workers if n not in names]
        if extra:
            raise ConfigError(f"workers for unknown device(s) {extra}; devices: {names}")
        for n, w in workers.items():
            if not isinstance(w, Worker):
                raise ConfigError(f"the worker of {n!r} has no generate() method: {w!r}")
        if isinstance(models, str) or not models or not all(isinstance(m, str) and m for m in models):
            raise ConfigError(f"models must be a non-empty list of model names, got {models!r}")
        self.workers: dict[str, Worker] = dict(workers)
        self.models: tuple[str, ...] = tuple(models)
        self._books = {
            d.name: _DeviceBooks(d.max_inflight_batches, d.max_inflight_batches * self.scheduler.max_batch_size)
            for d in self.scheduler.devices
        }
        self._jobs: dict[int, _Job] = {}
        self._deadlines: list[tuple[float, int]] = []  # (deadline, rid) of jobs that may still be queued
        self._wake: Optional[asyncio.Event] = None
        self._loop_task: Optional[asyncio.Task[None]] = None
        self._runs: set[asyncio.Task[None]] = set()
        # Circuit breakers: device -> trips seen, and -> when its open breaker's cool-down
        # ends (the loop must step then: nothing else may wake it to place queued work).
        self._breaker_trips: dict[str, int] = {d.name: 0 for d in self.scheduler.devices}
        self._breaker_until: dict[str, float] = {}
        self._counters = {
            "submitted": 0,
            "completed": 0,
            "expired": 0,
            "failed": 0,
            "cancelled": 0,
            "refused": 0,
            "rejected": 0,
            "retried": 0,
            "overlapping_runs": 0,
            "duplicate_completions": 0,
            "drained": 0,
        }
        self._closed = False
        self._draining = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the scheduling loop on the running event loop (idempotent)."""
        if self._loop_task is None:
            self._wake = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._loop(), name="capsched-scheduler-loop")

    async def close(self) -> None:
        """Stop the loop and the running batches; every open job ends with a 503."""
        self._closed = True
        tasks = list(self._runs) + ([self._loop_task] if self._loop_task is not None else [])
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
        for job in list(self._jobs.values()):
            self._end(job, ErrorEvent(shutting_down()))
        self._loop_task = None

    @property
    def draining(self) -> bool:
        """Whether :meth:`begin_drain` was called."""
        return self._draining

    def begin_drain(self) -> int:
        """Start a graceful shutdown: from now on :meth:`submit` refuses new jobs with a
        503 ``shutting_down``, every job still queued in capsched (not running on a
        worker) is cancelled there and ends at once with that 503, and so does a running
        job that fails later and would have been retried. Jobs already running go on
        streaming until they end or :meth:`close` stops them. Idempotent.

        Call it from the engine's event loop (as every other method): the HTTP server
        calls it when its shutdown begins.

        Returns:
            How many queued jobs it ended.
        """
        self._draining = True
        n = 0
        for job in list(self._jobs.values()):
            if job.running or job.ended:
                continue
            self.scheduler.cancel(job.rid)
            self._counters["drained"] += 1
            self._end(job, ErrorEvent(shutting_down()))
            n += 1
        if self._wake is not None:
            self._wake.set()
        if n:
            log.info("shutting down: ended %d queued request(s) with 503 shutting_down", n)
        return n

    async def __aenter__(self) -> FleetEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ jobs

    def submit(self, spec: JobSpec) -> JobStream:
        """Schedule a job; its events come through the returned :class:`JobStream`.

        Raises:
            APIError: 429 (capsched's back-pressure: ``QueueFullError``), 503 (a
                deadline-class admission refused, the engine closed or draining:
                :meth:`begin_drain`), 400 (capsched
                refused a field: the message names it).
        """
        if self._closed or self._wake is None:
            raise APIError(503, "the scheduler is not running", type="server_error", code="not_running")
        if self._draining:
            raise shutting_down()
        if spec.model not in self.models:
            raise APIError(404, f"the model {spec.model!r} does not exist; this fleet serves "
                           f"{', '.join(map(repr, self.models))}", param="model", code="model_not_found")
        now = time.monotonic()
        try:
            req = InferenceRequest(
                spec.prompt,
                max_new_tokens=spec.max_tokens,
                priority=float(spec.priority),
                timeout=None if spec.timeout is None else float(spec.timeout),
                tenant=spec.tenant,
            )
            rid = self.scheduler.submit(req, now=now)
        except QueueFullError as exc:
            self._counters["rejected"] += 1
            raise APIError(429, f"the queue is full: {exc}", type="rate_limit_exceeded", code="queue_full") from None
        except AdmissionError as exc:
            self._counters["rejected"] += 1
            raise APIError(503, f"no device can admit the request: {exc}", type="server_error",
                           code="no_capacity") from None
        except CapschedError as exc:
            # More KV tokens (prompt + max_new_tokens) than any device holds: max_tokens
            # is the field the client can lower.
            param = _refused_param(str(exc), ())
            raise APIError(400, f"capsched refused the request: {exc}", param=param, code="invalid_value") from None
        deadline = None if spec.timeout is None else now + float(spec.timeout)
        job = _Job(rid, spec, self._prompt_tokens(spec.prompt), deadline, asyncio.Queue(), asyncio.Event())
        self._jobs[rid] = job
        self._counters["submitted"] += 1
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, rid))
        self._wake.set()
        return JobStream(self, job)

    def _prompt_tokens(self, prompt: str) -> int:
        count = self.scheduler.config.tokenizer
        if count is None:
            from ..tokens import estimate_tokens

            return int(estimate_tokens(prompt))
        return int(count(prompt))

    def cancel(self, rid: int) -> None:
        """Cancel job ``rid`` if it is still open (the client went away): its stream ends
        with a 499 error at once; a queued job is cancelled in capsched at once, a running
        one is told to stop and capsched hears of it when its worker's run returns."""
        job = self._jobs.get(rid)
        if job is None or job.ended:
            return
        job.cancelled = True
        job.cancel_event.set()
        self._end(job, ErrorEvent(APIError(499, f"request {rid} was cancelled: the client closed the request",
                                           code="cancelled")))
        # Counted now, as it leaves open_jobs, so that /stats adds up at every moment; a
        # running one is cancelled in capsched when its worker's run returns.
        self._counters["cancelled"] += 1
        if not job.running:
            self.scheduler.cancel(rid)

    # The Backend interface of capsched.server.app (the remote fleet has the same).

    async def open(self, spec: JobSpec) -> JobStream:
        """:meth:`submit`, for the HTTP app."""
        return self.submit(spec)

    async def model_names(self) -> tuple[str, ...]:
        """The served model names."""
        return self.models

    async def status(self) -> dict[str, Any]:
        """:meth:`stats`, for the HTTP app."""
        return self.stats()

    def _end(self, job: _Job, ev: Event) -> None:
        if not job.ended:
            job.ended = True
            job.queue.put_nowait(ev)
        self._forget(job)

    def _forget(self, job: _Job) -> None:
        job.ended = True
        self._jobs.pop(job.rid, None)

    # ------------------------------------------------------------------ the loop

    async def _loop(self) -> None:
        assert self._wake is not None
        wake = self._wake
        while True:
            wake.clear()
            now = time.monotonic()
            try:
                res = self.scheduler.step(now)
            except CapschedError:  # pragma: no cover - the core refusing its own state
                log.exception("capsched step failed")
                await asyncio.sleep(0.01)
                continue
            for rid in res.expired:
                job = self._jobs.get(rid)
                self._counters["expired"] += 1
                if job is not None:
                    self._end(job, ErrorEvent(APIError(
                        408,
                        f"request {rid} expired in the queue: its timeout of {job.spec.timeout:g} s passed "
                        "before a device could start it",
                        type="timeout_error", param="timeout", code="deadline_exceeded")))
            for rid, reason in res.failed:
                job = self._jobs.get(rid)
                self._counters["failed"] += 1
                if job is not None:
                    self._end(job, ErrorEvent(APIError(503, f"request {rid} failed: {reason}", type="server_error",
                                                       code="request_failed")))
            for rid, _old in res.migrated:  # pragma: no cover - only after set_clock/set_pressure
                log.warning("request %d migrated off %s; its old run's output is dropped", rid, _old)
            for batch in res.batches:
                self._dispatch(batch)
            # When to step again: the earliest deadline of a job that may still be queued,
            # or capsched's own next_step_at (held batches, retry backoffs).
            wake_at = res.next_step_at
            # (a job past its deadline here is running: only a queued one expires)
            while self._deadlines and (self._deadlines[0][1] not in self._jobs or self._deadlines[0][0] < now):
                heapq.heappop(self._deadlines)
            for deadline, rid in self._deadlines[:1]:
                wake_at = min(wake_at, deadline)
            # ... and the end of an open breaker's cool-down (this step let the ended ones'
            # probes through).
            for name, until in list(self._breaker_until.items()):
                if until <= now:
                    del self._breaker_until[name]
                else:
                    wake_at = min(wake_at, until)
            if wake.is_set():
                continue
            timeout = None if math.isinf(wake_at) else max(0.0, wake_at - time.monotonic()) + 1e-4
            try:
                await asyncio.wait_for(wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass

    def _dispatch(self, batch: Batch) -> None:
        books = self._books[batch.device]
        jobs: list[_Job] = []
        for rid in batch.request_ids:
            job = self._jobs.get(rid)
            if job is None:  # pragma: no cover - cancelled jobs are cancelled in capsched too
                log.error("capsched dispatched request %d, which has no open job; cancelling it", rid)
                self.scheduler.cancel(rid)
                continue
            if job.running:
                self._counters["overlapping_runs"] += 1
            job.running = True
            job.runs += 1
            jobs.append(job)
        if not jobs:  # pragma: no cover
            return
        books.batches += 1
        books.requests += len(jobs)
        books.runs += 1
        books.max_batches = max(books.max_batches, books.batches)
        books.max_requests = max(books.max_requests, books.requests)
        task = asyncio.get_running_loop().create_task(self._run(batch.device, jobs))
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)

    async def _run(self, device: str, jobs: list[_Job]) -> None:
        worker = self.workers[device]
        books = self._books[device]
        pending = {j.rid: j for j in jobs}
        for j in jobs:
            j.run_base = j.generated
        batch = [
            GenerationRequest(j.rid, j.spec.prompt, j.prompt_tokens, j.spec.max_tokens, tuple(j.tokens),
                              dict(j.spec.sampling), j.cancel_event, j.generated)
            for j in jobs
        ]
        last: Optional[tuple[_Job, WorkerFinished]] = None
        error: Optional[BaseException] = None
        events = worker.generate(batch)
        try:
            async for ev in events:
                job = pending.get(ev.request_id)
                if job is None:
                    raise RuntimeError(f"worker {worker.name} sent an event for request {ev.request_id}, "
                                       "which is not running in its batch")
                if isinstance(ev, WorkerToken):
                    job.tokens.append(ev.text)
                    job.generated += max(0, int(ev.tokens))
                    if not job.cancelled:
                        job.queue.put_nowait(TokenEvent(ev.text))
                elif isinstance(ev, WorkerFinished):
                    del pending[ev.request_id]
                    if pending:
                        self._finish(job, ev, device)
                    else:  # reported after the run returns (see the module docstring)
                        last = (job, ev)
            if pending:
                raise RuntimeError(f"worker {worker.name} returned without finishing request(s) {sorted(pending)}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the worker failed: retry what it had not finished
            error = exc
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:  # an async generator left early: let it clean up now
                with contextlib.suppress(Exception):
                    await aclose()
        books.batches -= 1
        books.requests -= len(jobs)
        if last is not None:
            self._finish(*last, device)
        if error is not None:
            books.failures += 1
            log.warning("worker %s failed with %d request(s) unfinished: %r", device, len(pending), error)
            for job in pending.values():
                self._fail(job, device, error)
        assert self._wake is not None
        self._wake.set()

    def _finish(self, job: _Job, ev: WorkerFinished, device: str) -> None:
        job.running = False
        if job.cancelled or ev.finish_reason == "cancelled":
            self.scheduler.cancel(job.rid)
            if not job.cancelled:  # (cancel() counted it when the client went away)
                self._counters["cancelled"] += 1
            self._end(job, ErrorEvent(APIError(499, f"request {job.rid} was cancelled", code="cancelled")))
            return
        if ev.finish_reason == "error":
            # The worker refused this request alone (a sampling value, a prompt its model
            # cannot take): the client's error, a 400 (a 503 ``resume_refused`` for a
            # resumed run, below). Reported to capsched with cancel(),
            # which ends it without judging the device: fail() would count it against the
            # device's circuit breaker and failure rate (and, retryable, retry a request
            # every device refuses), complete() would teach the device's service-time
            # model a run that never ran.
            self.scheduler.cancel(job.rid)
            self._counters["refused"] += 1
            message = ev.error or "no reason given"
            if job.tokens or job.retries:
                # A resumed run: its prompt is the client's plus the text already sent, and
                # an earlier run took the same request; the server made what was refused,
                # not the client, so this is no 400 (and a 400 after streamed tokens would
                # tell the client to fix a request that was fine). A 5xx it may retry.
                self._end(job, ErrorEvent(APIError(
                    503,
                    f"request {job.rid} failed: the worker on {device} refused its resumed run "
                    f"(after {job.runs} run(s), {job.generated} token(s) already sent): {message}",
                    type="server_error", code="resume_refused")))
                return
            self._end(job, ErrorEvent(APIError(
                400, f"request {job.rid} was refused by the worker on {device}: {message}",
                param=_refused_param(message, ("max_tokens", *job.spec.sampling)), code="invalid_value")))
            return
        if job.completed:
            self._counters["duplicate_completions"] += 1
        job.completed = True
        if ev.completion_tokens is not None:  # the worker's own count of this run's tokens
            job.generated = job.run_base + max(0, int(ev.completion_tokens))
        self.scheduler.complete(job.rid, time.monotonic(), output_tokens=min(job.generated, MAX_TOKENS))
        self._counters["completed"] += 1
        prompt_tokens = ev.prompt_tokens if ev.prompt_tokens is not None else job.prompt_tokens
        self._end(job, DoneEvent(ev.finish_reason, prompt_tokens, job.generated, device, job.retries))

    def _fail(self, job: _Job, device: str, error: BaseException) -> None:
        job.running = False
        if job.cancelled:  # (counted by cancel())
            self.scheduler.cancel(job.rid)
            return
        t = time.monotonic()
        requeued = self.scheduler.fail(job.rid, t, retryable=True, error=f"{device}: {error}")
        self._note_breaker(device, t)
        if requeued and self._draining:  # no retry once the shutdown began: it would wait in the queue
            self.scheduler.cancel(job.rid)
            self._counters["drained"] += 1
            self._end(job, ErrorEvent(shutting_down()))
            return
        if requeued:
            job.retries += 1
            self._counters["retried"] += 1
            return
        self._counters["failed"] += 1
        self._end(job, ErrorEvent(APIError(
            503,
            f"request {job.rid} failed after {job.runs} run(s); the last, on {device}, with: {error}",
            type="server_error", code="worker_failed")))

    def _note_breaker(self, device: str, now: float) -> None:
        """After a failure reported on ``device`` at ``now``: if that opened its breaker,
        remember when the cool-down ends (capsched opens it until now + breaker_cooldown)."""
        for d in self.scheduler.stats()["devices"]:
            if d.get("name") == device:
                trips = int(d.get("breaker_trips", 0))
                if trips != self._breaker_trips.get(device, 0) and d.get("breaker") == "open":
                    self._breaker_until[device] = now + float(self.scheduler.config.breaker_cooldown)
                self._breaker_trips[device] = trips
                return

    # ------------------------------------------------------------------ introspection

    def stats(self) -> dict[str, Any]:
        """Counters: jobs (``submitted``, ``completed``, ``expired``, ``failed``,
        ``cancelled``, ``refused`` (a worker refused the request: a 400, or a 503
        ``resume_refused`` for a resumed run; capsched counts it as cancelled), ``rejected``, ``retried``, ``drained``: queued jobs ended by
        :meth:`begin_drain`), the books' checks
        (``overlapping_runs``, ``duplicate_completions``: both 0 when nothing ran twice),
        per device the most batches/requests that ran at once against their limits, the
        workers' own counters when they have ``stats()``, and capsched's ``stats()``
        (``conservation_ok``)."""
        devices: dict[str, Any] = {}
        for name, b in self._books.items():
            w = self.workers[name]
            wstats = getattr(w, "stats", None)
            devices[name] = {
                "limit_batches": b.limit_batches,
                "limit_requests": b.limit_requests,
                "running_batches": b.batches,
                "running_requests": b.requests,
                "max_batches_at_once": b.max_batches,
                "max_requests_at_once": b.max_requests,
                "runs": b.runs,
                "failed_runs": b.failures,
                "worker": wstats() if callable(wstats) else {},
            }
        cs = self.scheduler.stats()
        core = {k: v for k, v in cs.items() if isinstance(v, (int, float, bool, str))}
        return {
            **self._counters,
            "open_jobs": len(self._jobs),
            "devices": devices,
            "capsched": core,
        }


def simulated_engine(
    fleet: str = "H100-SXM:1,L4:2",
    *,
    model: str = "Llama-3-8B",
    served_model: str = "capsched-simulated",
    time_scale: float = 1.0,
    inflight_batches: int = 1,
    policy: str = "weighted",
    max_batch_size: int = 8,
    config: Optional[Union[Config, Mapping[str, Any]]] = None,
    die_after_tokens: Optional[Mapping[str, int]] = None,
) -> FleetEngine:
    """A :class:`FleetEngine` over :class:`SimulatedWorker` workers (no GPU).

    Args:
        fleet: ``ACCELERATOR:COUNT,...`` (``capsched specs`` lists the names); devices
            are named ``H100-SXM-0``, ``L4-0``, ``L4-1``, ...
        model: the cost model's served model (``Llama-3-8B`` or ``Llama-2-7B``).
        served_model: the model name clients ask for.
        time_scale: real seconds per modelled second for the workers; the devices'
            service-time seeds given to capsched are scaled alike, so its deadline-aware
            placement sees the same (scaled) times.
        inflight_batches: batches each device runs at once.
        die_after_tokens: device name -> tokens after which its worker dies (tests).

    Raises:
        ConfigError: a bad fleet, model, scale, in-flight batch count or device name.
    """
    from ..sim.fleet import Fleet, parse_fleet

    if isinstance(time_scale, bool) or not isinstance(time_scale, (int, float)) or not (
        math.isfinite(time_scale) and time_scale > 0
    ):
        raise ConfigError(f"time_scale must be a finite number > 0, got {time_scale!r}")
    if isinstance(inflight_batches, bool) or not isinstance(inflight_batches, int) or inflight_batches < 1:
        raise ConfigError(f"inflight_batches must be an integer >= 1, got {inflight_batches!r}")
    f = parse_fleet(fleet, model)
    sim = f.build(512, 128)
    devices = [
        dataclasses.replace(
            d,
            prefill_s_per_token=(d.prefill_s_per_token or 0.0) * time_scale,
            decode_step_s=(d.decode_step_s or 0.0) * time_scale,
            decode_s_per_seq=(d.decode_s_per_seq or 0.0) * time_scale,
        )
        for d in Fleet.capsched_devices(sim, max_inflight_batches=inflight_batches)
    ]
    dies = dict(die_after_tokens or {})
    unknown = [n for n in dies if n not in {d.name for d in sim}]
    if unknown:
        raise ConfigError(f"die_after_tokens names unknown device(s) {unknown}; devices: {[d.name for d in sim]}")
    workers: dict[str, Worker] = {
        d.name: SimulatedWorker(d.name, d.cost, time_scale=time_scale, die_after_tokens=dies.get(d.name))
        for d in sim
    }
    return FleetEngine(devices, workers, models=(served_model,), policy=policy, max_batch_size=max_batch_size,
                       config=config)

