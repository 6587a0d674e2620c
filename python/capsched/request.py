"""The request a server submits."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Optional, Union

from .errors import InvalidRequestError, RequestTypeError

__all__ = ["InferenceRequest", "MAX_TOKENS", "MAX_DEPENDENCIES", "SCHED_CLASSES"]

#: Scheduling classes, served in this order within a step (docs/placement.md).
SCHED_CLASSES = ("deadline", "strict", "normal", "background")

#: Largest prompt or output length one request may declare (tokens). Larger values are
#: rejected rather than allowed to exhaust the scheduler's arithmetic or a device's memory.
MAX_TOKENS = 10_000_000
#: Most requests one request may depend on.
MAX_DEPENDENCIES = 1024


class InferenceRequest:
    """One LLM inference request.

    Args:
        prompt: the prompt text. Its token count is estimated at submit time by the
            scheduler's tokenizer (``Config.tokenizer``, default
            :func:`capsched.estimate_tokens`) unless ``prompt_tokens`` is given.
        prompt_tokens: prompt length in tokens (0..MAX_TOKENS); overrides the estimate.
        max_new_tokens: most tokens to generate (1..MAX_TOKENS, default 256).
        priority: 0 (lowest) .. 1 (highest), default 0.5.
        timeout: seconds from submission until the request is useless (> 0, finite);
            a queued request past it expires at the next step.
        deadline: the same as an absolute time on the scheduler's clock (give one of
            ``timeout`` and ``deadline``, not both).
        tenant: who the request belongs to (any string), for accounting and isolation.
        batchable: ``False`` makes it run alone, in a batch of its own.
        depends_on: requests (ids or submitted InferenceRequest objects) that must
            complete before this one becomes ready; if one of them fails, expires or is
            cancelled, this one fails with that reason.
        uclamp_min, uclamp_max: utilization clamps in [0, 1] (Linux uclamp) for
            capacity-aware placement: the request's utilization (its work over the time it
            has left, as a share of the strongest device) is clamped into this range.
        request_class: requests of the same class (for example one per model or prompt
            template) share a util_est history: how much work per token the class took
            when it last finished. ``None`` is the default class.
        sched_class: ``"normal"`` (the scheduler's policy), ``"strict"`` (RT-like: served
            before normal requests by priority, placed on a device whose capacity is at
            least ``uclamp_min`` when one has room, else on any) or ``"deadline"`` (DL-like:
            needs a timeout or deadline; served first, earliest deadline first, on the
            device that admitted its bandwidth at submit; if none can, submit raises
            :class:`~capsched.errors.AdmissionError`) or ``"background"`` (offline
            work, like Linux's SCHED_IDLE: first come first served, placed only when no
            online request is left queued and only on a device it fits; in continuous
            mode any queued online request may evict it).
        pool: the device pool (``Device(pool=...)``, a device class such as ``"h100"``)
            it must run in; ``None`` (the default): any device.
        fallback_pool: the pool it may use instead while every device of ``pool`` has an
            open circuit breaker (needs ``pool``).

    Invalid values raise :class:`~capsched.errors.InvalidRequestError` (wrong types:
    :class:`~capsched.errors.RequestTypeError`, also a ``TypeError``) naming the field.
    After :meth:`capsched.Scheduler.submit`, ``id`` holds the scheduler's id; an object
    can be submitted once.
    """

    __slots__ = (
        "prompt",
        "prompt_tokens",
        "max_new_tokens",
        "priority",
        "timeout",
        "deadline",
        "tenant",
        "batchable",
        "depends_on",
        "uclamp_min",
        "uclamp_max",
        "request_class",
        "sched_class",
        "pool",
        "fallback_pool",
        "id",
    )

    def __init__(
        self,
        prompt: Optional[str] = None,
        *,
        prompt_tokens: Optional[int] = None,
        max_new_tokens: int = 256,
        priority: float = 0.5,
        timeout: Optional[float] = None,
        deadline: Optional[float] = None,
        tenant: Optional[str] = None,
        batchable: bool = True,
        depends_on: Iterable[Union[int, "InferenceRequest"]] = (),
        uclamp_min: float = 0.0,
        uclamp_max: float = 1.0,
        request_class: Optional[str] = None,
        sched_class: str = "normal",
        pool: Optional[str] = None,
        fallback_pool: Optional[str] = None,
    ) -> None:
        if prompt is not None and type(prompt) is not str and not isinstance(prompt, str):
            raise RequestTypeError(f"prompt must be a str or None, got {type(prompt).__name__}")
        if prompt is None and prompt_tokens is None:
            raise InvalidRequestError("give a prompt or prompt_tokens")
        self.prompt = prompt
        self.prompt_tokens = (
            None if prompt_tokens is None else _int("prompt_tokens", prompt_tokens, 0, MAX_TOKENS)
        )
        self.max_new_tokens = _int("max_new_tokens", max_new_tokens, 1, MAX_TOKENS)
        self.priority = _real("priority", priority, 0.0, 1.0)
        if timeout is not None and deadline is not None:
            raise InvalidRequestError(
                f"give timeout or deadline, not both (timeout {timeout!r}, deadline {deadline!r})"
            )
        self.timeout = None if timeout is None else _positive("timeout", timeout)
        self.deadline = None if deadline is None else _finite("deadline", deadline)
        if tenant is not None and type(tenant) is not str and not isinstance(tenant, str):
            raise RequestTypeError(f"tenant must be a str or None, got {type(tenant).__name__}")
        self.tenant = tenant
        if batchable is not True and batchable is not False:
            raise RequestTypeError(f"batchable must be a bool, got {type(batchable).__name__}")
        self.batchable = batchable
        self.depends_on = _dependencies(depends_on)
        self.uclamp_min = _real("uclamp_min", uclamp_min, 0.0, 1.0)
        self.uclamp_max = _real("uclamp_max", uclamp_max, 0.0, 1.0)
        if self.uclamp_min > self.uclamp_max:  # both already in [0, 1]
            raise InvalidRequestError(
                f"uclamp_min {uclamp_min!r} exceeds uclamp_max {uclamp_max!r}"
            )
        if request_class is not None and type(request_class) is not str and not isinstance(request_class, str):
            raise RequestTypeError(f"request_class must be a str or None, got {type(request_class).__name__}")
        self.request_class = request_class
        if sched_class not in SCHED_CLASSES:
            raise InvalidRequestError(f"sched_class must be one of {SCHED_CLASSES}, got {sched_class!r}")
        if sched_class == "deadline" and timeout is None and deadline is None:
            raise InvalidRequestError("a deadline-class request needs a timeout or a deadline")
        self.sched_class = sched_class
        for name, value in (("pool", pool), ("fallback_pool", fallback_pool)):
            if value is not None and (type(value) is not str and not isinstance(value, str) or not value):
                raise RequestTypeError(f"{name} must be a non-empty str or None, got {value!r}")
        if fallback_pool is not None and (pool is None or fallback_pool == pool):
            raise InvalidRequestError(
                f"fallback_pool {fallback_pool!r} needs a pool of its own, other than it (pool {pool!r})"
            )
        self.pool = pool
        self.fallback_pool = fallback_pool
        self.id: Optional[int] = None

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in self.__slots__
            if getattr(self, name) not in (None, ())
        )
        return f"InferenceRequest({fields})"


def _int(name: str, value: object, lo: int, hi: int) -> int:
    if type(value) is int and lo <= value <= hi:  # fast path for the common case
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise RequestTypeError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if not lo <= v <= hi:
        raise InvalidRequestError(f"{name} must be in {lo}..{hi}, got {v}")
    return v


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise RequestTypeError(f"{name} must be a number, got {value!r}")
    return float(value)


def _real(name: str, value: object, lo: float, hi: float) -> float:
    if type(value) is float and lo <= value <= hi:  # fast path (NaN fails the comparison)
        return value
    v = _number(name, value)
    if not lo <= v <= hi:  # also rejects NaN
        raise InvalidRequestError(f"{name} must be in [{lo:g}, {hi:g}], got {value!r}")
    return v


def _positive(name: str, value: object) -> float:
    if type(value) is float and 0.0 < value < math.inf:  # fast path
        return value
    v = _number(name, value)
    if not (math.isfinite(v) and v > 0.0):
        raise InvalidRequestError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return v


def _finite(name: str, value: object) -> float:
    v = _number(name, value)
    if not math.isfinite(v):
        raise InvalidRequestError(f"{name} must be a finite time in seconds, got {value!r}")
    return v


def _dependencies(deps: object) -> tuple:
    if deps == ():
        return ()
    if isinstance(deps, (str, bytes)) or not isinstance(deps, Iterable):
        raise RequestTypeError(f"depends_on must be an iterable of request ids, got {deps!r}")
    out = tuple(deps)
    if len(out) > MAX_DEPENDENCIES:
        raise InvalidRequestError(
            f"depends_on lists {len(out)} requests (limit {MAX_DEPENDENCIES})"
        )
    for d in out:
        if isinstance(d, InferenceRequest):
            continue
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or int(d) < 1:
            raise RequestTypeError(
                f"depends_on entries must be request ids (ints >= 1) or InferenceRequest objects, got {d!r}"
            )
    return out
