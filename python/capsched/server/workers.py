"""Workers: what runs a batch that capsched dispatched to a device.

A worker implements :class:`Worker`: ``generate(batch)`` is an async iterator over
:class:`WorkerToken` and :class:`WorkerFinished` events for the requests of the batch;
raising from it means the worker failed (the engine reports every unfinished request of
the batch to capsched as a retryable failure). Two are provided:

* :class:`SimulatedWorker`: no GPU. It sleeps for the time capsched's GPU cost model
  (:class:`capsched.sim.cost.CostModel`) gives for each step of the batch, times a
  ``time_scale``, and emits deterministic fake tokens. It can be told to die after a
  number of tokens (``die_after_tokens``) to exercise failure handling.
* :class:`VLLMWorker`: a thin adapter over a vLLM ``AsyncLLMEngine`` (``pip install
  "capsched[vllm]"``, needs a GPU; tested here against a fake engine only).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Optional, Protocol, Union, runtime_checkable

from ..errors import ConfigError
from ..sim.cost import CostModel

__all__ = [
    "GenerationRequest",
    "WorkerToken",
    "WorkerFinished",
    "WorkerEvent",
    "Worker",
    "WorkerDied",
    "SimulatedWorker",
    "VLLMWorker",
    "simulated_text",
]


@dataclasses.dataclass
class GenerationRequest:
    """One request of a batch, as a worker sees it.

    Attributes:
        request_id: capsched's id (events name it).
        prompt: the prompt text.
        prompt_tokens: capsched's estimate of the prompt's tokens.
        max_tokens: total tokens to generate, counting ``resume_tokens``.
        resume_tokens: text of tokens already generated (and already sent to the
            client) by an earlier run that failed; the worker continues after them and
            emits only the remaining ``max_tokens - len(resume_tokens)``.
        sampling: sampling parameters (temperature, top_p, seed, ...).
        cancelled: set when the client went away: stop generating it and finish it
            with reason ``"cancelled"``.
        resume_token_count: how many tokens ``resume_tokens`` hold in all (an entry
            is one event's text, which from a worker like :class:`VLLMWorker` may be
            several tokens, or none); ``None``: one token per entry.
    """

    request_id: int
    prompt: str
    prompt_tokens: int
    max_tokens: int
    resume_tokens: tuple[str, ...] = ()
    sampling: Mapping[str, float] = dataclasses.field(default_factory=dict)
    cancelled: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    resume_token_count: Optional[int] = None

    @property
    def resumed(self) -> int:
        """Tokens already generated: ``resume_token_count``, else ``len(resume_tokens)``."""
        return len(self.resume_tokens) if self.resume_token_count is None else self.resume_token_count


@dataclasses.dataclass(frozen=True)
class WorkerToken:
    """Request ``request_id`` produced ``text``, which is ``tokens`` tokens (default one;
    a detokenized delta may hold several, or none when its text completes a character
    whose bytes came with earlier tokens)."""

    request_id: int
    text: str
    tokens: int = 1


@dataclasses.dataclass(frozen=True)
class WorkerFinished:
    """Request ``request_id`` is done.

    Attributes:
        finish_reason: ``"length"``, ``"stop"``, ``"cancelled"``, or ``"error"``: the
            worker refused this request alone (a sampling value or a prompt its engine
            cannot take); ``error`` says why, and the client gets a 400 while the rest of
            the batch goes on. A failure of the run itself is an exception instead.
        prompt_tokens: the engine's own count of the original prompt (not counting
            resumed tokens), when it has one.
        completion_tokens: tokens this run generated (not counting ``resume_tokens``),
            when the engine counts them (vLLM's token ids); ``None``: the sum of the
            run's :class:`WorkerToken` ``tokens``.
        error: with ``finish_reason="error"``, the refusal's message.
    """

    request_id: int
    finish_reason: str
    prompt_tokens: Optional[int] = None
    completion_tokens: Optional[int] = None
    error: Optional[str] = None


WorkerEvent = Union[WorkerToken, WorkerFinished]


@runtime_checkable
class Worker(Protocol):
    """Runs batches on one device.

    ``generate`` yields events for the batch's requests, each request's tokens in order
    and then exactly one :class:`WorkerFinished` for it; it returns once every request of
    the batch is finished. Raising any exception means the run failed: the engine fails
    the unfinished requests (retryable) and capsched retries them elsewhere or gives up.
    A request the worker refuses on its own finishes with reason ``"error"`` instead.
    """

    name: str

    def generate(self, batch: Sequence[GenerationRequest]) -> AsyncIterator[WorkerEvent]:
        """Run ``batch``; see the class docstring."""
        ...


class WorkerDied(RuntimeError):
    """A worker process died (or, for :class:`SimulatedWorker`, pretends to)."""


# 64 plain words: the simulated worker's vocabulary.
_VOCAB = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi "
    "rho sigma tau upsilon phi chi psi omega red orange yellow green blue indigo violet "
    "black white grey north south east west spring summer autumn winter river lake sea "
    "ocean hill valley mountain forest desert island harbour bridge tower castle garden "
    "meadow field road path"
).split()


def simulated_text(prompt: str, index: int) -> str:
    """Token ``index`` (0-based) of :class:`SimulatedWorker`'s output for ``prompt``:
    ``" "`` + a word chosen by a hash of the prompt and the index (deterministic, so a
    retried run continues exactly where the failed one stopped)."""
    h = hashlib.blake2b(f"{index}\x00{prompt}".encode(), digest_size=2).digest()
    return " " + _VOCAB[h[0] % len(_VOCAB)]


class SimulatedWorker:
    """A simulated worker (no GPU): sleeps per capsched's GPU cost model and emits
    deterministic fake tokens (:func:`simulated_text`).

    A batch first pays one prefill step for all its prompts (plus any resumed tokens,
    recomputed as a real engine would), which yields each request's first token, then one
    decode step per further token for the requests still running
    (``CostModel.decode_step_time(active, mean context)``); each step sleeps
    ``model time x time_scale`` real seconds.

    Args:
        name: the device name.
        cost: the device's cost model (accelerator and served model).
        time_scale: real seconds per modelled second (``0.1``: ten times faster).
        die_after_tokens: the worker "dies" after emitting this many tokens in all
            (raising :class:`WorkerDied` mid-batch) and stays dead, every later batch
            failing at once, until :meth:`revive`. ``None``: never.

    Attributes (counters, for tests and ``/healthz``): ``batches``, ``tokens``,
    ``active_batches`` (running now), ``max_active_batches`` (most at once), ``dead``.
    """

    def __init__(
        self, name: str, cost: CostModel, *, time_scale: float = 1.0, die_after_tokens: Optional[int] = None
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"SimulatedWorker name must be a non-empty str, got {name!r}")
        if not isinstance(cost, CostModel):
            raise ConfigError(f"SimulatedWorker cost must be a capsched.sim.cost.CostModel, got {cost!r}")
        if isinstance(time_scale, bool) or not isinstance(time_scale, (int, float)) or not (
            math.isfinite(time_scale) and time_scale >= 0
        ):
            raise ConfigError(f"SimulatedWorker time_scale must be a finite number >= 0, got {time_scale!r}")
        if die_after_tokens is not None and (
            isinstance(die_after_tokens, bool) or not isinstance(die_after_tokens, int) or die_after_tokens < 0
        ):
            raise ConfigError(f"SimulatedWorker die_after_tokens must be an integer >= 0 or None, got {die_after_tokens!r}")
        self.name = name
        self.cost = cost
        self.time_scale = float(time_scale)
        self.die_after_tokens = die_after_tokens
        self.dead = False
        self.batches = 0
        self.tokens = 0
        self.active_batches = 0
        self.max_active_batches = 0

    def revive(self) -> None:
        """Bring a dead worker back (and stop it dying again)."""
        self.dead = False
        self.die_after_tokens = None

    def stats(self) -> dict[str, Any]:
        """The counters as a dict."""
        return {
            "kind": "simulated",
            "batches": self.batches,
            "tokens": self.tokens,
            "active_batches": self.active_batches,
            "max_active_batches": self.max_active_batches,
            "dead": self.dead,
        }

    async def _sleep(self, model_seconds: float) -> None:
        await asyncio.sleep(model_seconds * self.time_scale)

    def _emit(self) -> None:
        if self.dead:
            raise WorkerDied(f"simulated worker {self.name} is dead")
        if self.die_after_tokens is not None and self.tokens >= self.die_after_tokens:
            self.dead = True
            raise WorkerDied(f"simulated worker {self.name} died after {self.tokens} tokens")
        self.tokens += 1

    async def generate(self, batch: Sequence[GenerationRequest]) -> AsyncIterator[WorkerEvent]:
        """Run ``batch`` in simulated time (see the class docstring)."""
        self.batches += 1
        self.active_batches += 1
        self.max_active_batches = max(self.max_active_batches, self.active_batches)
        try:
            if self.dead:
                await asyncio.sleep(0)
                raise WorkerDied(f"simulated worker {self.name} is dead")
            done = {r.request_id: len(r.resume_tokens) for r in batch}
            context = {r.request_id: max(1, r.prompt_tokens) + len(r.resume_tokens) for r in batch}
            active = [r for r in batch]
            for r in list(active):
                if r.cancelled.is_set() or done[r.request_id] >= r.max_tokens:
                    active.remove(r)
                    yield WorkerFinished(r.request_id, "cancelled" if r.cancelled.is_set() else "length", r.prompt_tokens)
            if active:
                await self._sleep(self.cost.step_time([context[r.request_id] for r in active]))
            while active:
                for r in list(active):
                    rid = r.request_id
                    if r.cancelled.is_set():
                        active.remove(r)
                        yield WorkerFinished(rid, "cancelled", r.prompt_tokens)
                        continue
                    self._emit()
                    yield WorkerToken(rid, simulated_text(r.prompt, done[rid]))
                    done[rid] += 1
                    context[rid] += 1
                    if done[rid] >= r.max_tokens:
                        active.remove(r)
                        yield WorkerFinished(rid, "length", r.prompt_tokens)
                if active:
                    mean_ctx = sum(context[r.request_id] for r in active) / len(active)
                    await self._sleep(float(self.cost.decode_step_time(len(active), mean_ctx)))
        finally:
            self.active_batches -= 1


class VLLMWorker:
    """A worker backed by a vLLM ``AsyncLLMEngine`` on one GPU (``pip install
    "capsched[vllm]"``).

    Thin by design: each request of the batch becomes one ``engine.generate`` call with
    ``SamplingParams(max_tokens=..., **sampling)``, run concurrently (vLLM batches them
    itself, continuously), and its text deltas are streamed back, each
    :class:`WorkerToken` counting the new token ids (``outputs[0].token_ids``) that came
    with it; the :class:`WorkerFinished` carries the run's token count and vLLM's prompt
    count. A resumed request's already-sent text is appended to its prompt; its reported
    ``prompt_tokens`` is vLLM's count of that prompt less the resumed tokens (exact unless
    re-tokenizing the joined text merged tokens across the joint).

    A request vLLM refuses on its own (``SamplingParams`` or the generator raising
    ``ValueError`` before its first output: a bad value, a prompt longer than the model
    takes) finishes with reason ``"error"`` and the rest of the batch goes on; any other
    error (a ``TypeError`` too: an adapter/vLLM mismatch or a bug, not the client's), or
    one after output started, fails the run. A
    cancelled request is aborted in vLLM at once, even while vLLM is still producing
    nothing for it (a long prefill). Tested here against a fake engine only (no GPU);
    vLLM's Python API changes between releases, so check it against yours.

    Args:
        name: the device name.
        engine: an ``AsyncLLMEngine`` (or anything with its ``generate(prompt,
            sampling_params, request_id)`` async-iterator method and async
            ``abort(request_id)``); if None, ``engine_args`` build one.
        engine_args: keyword arguments of ``vllm.AsyncEngineArgs`` (``model=...``).

    Raises:
        ImportError: vllm is not installed (the message names the ``vllm`` extra).
    """

    def __init__(self, name: str, engine: Any = None, **engine_args: Any) -> None:
        try:
            import vllm  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ImportError(
                "VLLMWorker needs vLLM and a GPU: pip install \"capsched[vllm]\" "
                f"(original error: {exc})"
            ) from exc
        self.name = name
        self._vllm: Any = vllm
        self._engine: Any = (
            engine if engine is not None else vllm.AsyncLLMEngine.from_engine_args(vllm.AsyncEngineArgs(**engine_args))
        )

    async def generate(self, batch: Sequence[GenerationRequest]) -> AsyncIterator[WorkerEvent]:
        """Run each request through the engine concurrently; yield text deltas as they come
        (see the class docstring)."""
        queue: asyncio.Queue[Union[WorkerEvent, BaseException]] = asyncio.Queue()

        async def one(r: GenerationRequest) -> None:
            rid = r.request_id
            vid = f"capsched-{rid}-{len(r.resume_tokens)}"
            resumed = r.resumed
            try:
                left = r.max_tokens - resumed
                if left <= 0:  # (a resumed request that had sent all its tokens: nothing to run)
                    queue.put_nowait(WorkerFinished(rid, "length"))
                    return
                if r.cancelled.is_set():
                    queue.put_nowait(WorkerFinished(rid, "cancelled"))
                    return
                sampling = dict(r.sampling)
                if "seed" in sampling:  # (the protocol checked it is integral; vLLM wants an int)
                    sampling["seed"] = int(sampling["seed"])
                try:
                    params = self._vllm.SamplingParams(max_tokens=left, **sampling)
                except ValueError as exc:  # this request's values: its client's error, not the run's
                    queue.put_nowait(WorkerFinished(rid, "error", error=f"vLLM refused its sampling parameters: {exc}"))
                    return
                # (a TypeError here, an argument this vLLM does not know, is the adapter's
                # mismatch with the installed vLLM: it fails the run, as any other error)
                try:
                    stream = self._engine.generate(r.prompt + "".join(r.resume_tokens), params, vid)
                except ValueError as exc:  # (an engine that checks the request in the call itself)
                    queue.put_nowait(WorkerFinished(rid, "error", error=f"vLLM refused the request: {exc}"))
                    return
                await self._stream(r, vid, resumed, stream, queue)
            except BaseException as exc:  # reported to the consumer below
                queue.put_nowait(exc)

        tasks = [asyncio.ensure_future(one(r)) for r in batch]
        try:
            left = len(batch)
            while left:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise WorkerDied(f"vLLM worker {self.name} failed: {item!r}") from item
                if isinstance(item, WorkerFinished):
                    left -= 1
                yield item
        finally:
            for t in tasks:
                t.cancel()

    async def _stream(
        self,
        r: GenerationRequest,
        vid: str,
        resumed: int,
        stream: Any,
        queue: asyncio.Queue[Union[WorkerEvent, BaseException]],
    ) -> None:
        """Stream one request's outputs into ``queue``, ending with its
        :class:`WorkerFinished`; raise if the run must fail."""
        rid = r.request_id
        sent = 0  # characters of text sent
        ids = 0  # token ids seen
        pending = 0  # ids seen whose text has not been sent yet
        counted = True  # whether every output had token_ids
        reason = "length"
        prompt_tokens: Optional[int] = None
        started = False
        it = stream.__aiter__()
        cancel = asyncio.ensure_future(r.cancelled.wait())
        nxt: Optional[asyncio.Future[Any]] = None
        try:
            while True:
                # Race vLLM's next output against the cancel, so that a cancel during a
                # long prefill (no output for a while) aborts the request at once.
                nxt = asyncio.ensure_future(it.__anext__())
                await asyncio.wait({nxt, cancel}, return_when=asyncio.FIRST_COMPLETED)
                if not nxt.done() or r.cancelled.is_set():
                    if not nxt.done():
                        nxt.cancel()
                        await asyncio.wait({nxt})
                    if not nxt.cancelled():
                        nxt.exception()  # (retrieved: what it raised no longer matters)
                    await self._engine.abort(vid)
                    reason = "cancelled"
                    break
                try:
                    out = nxt.result()
                except StopAsyncIteration:
                    break
                except ValueError as exc:
                    if started:  # after output: the run failed
                        raise
                    # vLLM refused this request before producing anything (a value, a
                    # prompt longer than the model takes): its client's error, not the run's.
                    # (Only ValueError: a TypeError is an adapter/vLLM mismatch or a bug, the
                    # same for every request, so it fails the run and charges the device.)
                    queue.put_nowait(WorkerFinished(rid, "error", error=f"vLLM refused the request: {exc}"))
                    return
                started = True
                o = out.outputs[0]
                token_ids = getattr(o, "token_ids", None)
                if token_ids is None:
                    counted = False
                else:
                    n = len(token_ids)
                    pending += max(0, n - ids)
                    ids = max(ids, n)
                text = o.text
                if len(text) > sent:
                    queue.put_nowait(WorkerToken(rid, text[sent:], pending if counted else 1))
                    sent = len(text)
                    pending = 0
                if out.finished:
                    reason = o.finish_reason or "stop"
                    if reason == "abort":  # vLLM aborted it (not our cancel): the run failed
                        raise RuntimeError(f"vLLM aborted request {rid}")
                    prompt_ids = getattr(out, "prompt_token_ids", None)
                    if prompt_ids is not None:
                        # vLLM's prompt is the original one plus the resumed text: report
                        # the original's count.
                        prompt_tokens = max(0, len(prompt_ids) - resumed)
        finally:
            cancel.cancel()
            if nxt is not None and not nxt.done():  # (this task was cancelled: the batch ended)
                nxt.cancel()
            elif nxt is not None and not nxt.cancelled():
                nxt.exception()
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()
        queue.put_nowait(WorkerFinished(rid, reason, prompt_tokens, ids if counted and started else None))
