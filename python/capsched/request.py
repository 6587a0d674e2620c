"""The request a server submits."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Optional, Union

from .config import _brief
from .errors import InvalidRequestError, RequestTypeError

__all__ = ["InferenceRequest", "MAX_TOKENS", "MAX_DEPENDENCIES", "SCHED_CLASSES"]

#: Scheduling classes, served in this order within a step (docs/placement.md).
SCHED_CLASSES = ("deadline", "strict", "normal", "background")

#: Largest prompt or output length one request may declare (tokens). Larger values are
#: rejected rather than allowed to exhaust the scheduler's arithmetic or a device's memory.
MAX_TOKENS = 10_000_000
#: Most requests one request may depend on.
MAX_DEPENDENCIES = 1024

# The fields, in repr order (id follows them).
_FIELDS = (
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
)
# Scheduling classes as the core numbers them (capsched::SchedClass).
_SCHED_CODES = {"normal": 0, "strict": 1, "deadline": 2, "background": 3}
_NAN = float("nan")


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
            cancelled, this one fails with that reason. An object must have been
            accepted by the same Scheduler object (else DependencyError: give its id).
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

    # Each field lives in a private slot behind a property (below the class), so that
    # setting one after construction can drop ``_spec``: the validated values the
    # scheduler's fast path passes to the core as they are. ``_claim`` holds one item
    # while no submit call holds the object and it was never accepted: a call takes it
    # with one atomic pop(), puts it back if the request was not accepted and keeps it if
    # it was (the object is then spent), so two threads cannot both pass the ``id`` check.
    # ``_owner``: a token of the scheduler that accepted it (None before, and in copies),
    # so that ``depends_on`` can refuse an object another scheduler accepted.
    __slots__ = tuple(f"_{name}" for name in _FIELDS) + ("_spec", "_claim", "_owner", "id")

    if TYPE_CHECKING:  # the properties' types
        prompt: Optional[str]
        prompt_tokens: Optional[int]
        max_new_tokens: int
        priority: float
        timeout: Optional[float]
        deadline: Optional[float]
        tenant: Optional[str]
        batchable: bool
        depends_on: tuple[Union[int, "InferenceRequest"], ...]
        uclamp_min: float
        uclamp_max: float
        request_class: Optional[str]
        sched_class: str
        pool: Optional[str]
        fallback_pool: Optional[str]

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
        self._prompt = prompt
        # Each check below inlines its helper's fast path (the common exact types in
        # range) and calls the helper for everything else.
        if prompt_tokens is not None and not (type(prompt_tokens) is int and 0 <= prompt_tokens <= MAX_TOKENS):
            prompt_tokens = _int("prompt_tokens", prompt_tokens, 0, MAX_TOKENS)
        self._prompt_tokens = prompt_tokens
        if not (type(max_new_tokens) is int and 1 <= max_new_tokens <= MAX_TOKENS):
            max_new_tokens = _int("max_new_tokens", max_new_tokens, 1, MAX_TOKENS)
        self._max_new_tokens = max_new_tokens
        if not (type(priority) is float and 0.0 <= priority <= 1.0):
            priority = _real("priority", priority, 0.0, 1.0)
        self._priority = priority
        if timeout is not None and deadline is not None:
            raise InvalidRequestError(
                f"give timeout or deadline, not both (timeout {timeout!r}, deadline {deadline!r})"
            )
        if timeout is not None and not (type(timeout) is float and 0.0 < timeout < math.inf):
            timeout = _positive("timeout", timeout)
        self._timeout = timeout
        self._deadline = deadline = None if deadline is None else _finite("deadline", deadline)
        if tenant is not None and type(tenant) is not str and not isinstance(tenant, str):
            raise RequestTypeError(f"tenant must be a str or None, got {type(tenant).__name__}")
        self._tenant = tenant
        if batchable is not True and batchable is not False:
            kind = type(batchable)
            where = "" if kind.__module__ == "builtins" else f"{kind.__module__}."
            raise RequestTypeError(f"batchable must be a bool, got {_brief(batchable)} ({where}{kind.__qualname__})")
        self._batchable = batchable
        if not (type(depends_on) is tuple and not depends_on):  # (the default, ())
            depends_on = _dependencies(depends_on)
        self._depends_on = depends_on
        lo, hi = uclamp_min, uclamp_max
        if not (type(lo) is float and 0.0 <= lo <= 1.0):
            lo = _real("uclamp_min", uclamp_min, 0.0, 1.0)
        if not (type(hi) is float and 0.0 <= hi <= 1.0):
            hi = _real("uclamp_max", uclamp_max, 0.0, 1.0)
        self._uclamp_min = lo
        self._uclamp_max = hi
        if lo > hi:  # both already in [0, 1]
            raise InvalidRequestError(
                f"uclamp_min {uclamp_min!r} exceeds uclamp_max {uclamp_max!r}"
            )
        if request_class is not None and type(request_class) is not str and not isinstance(request_class, str):
            raise RequestTypeError(f"request_class must be a str or None, got {type(request_class).__name__}")
        self._request_class = request_class
        code = _SCHED_CODES.get(sched_class) if type(sched_class) is str or isinstance(sched_class, str) else None
        if code is None:
            raise InvalidRequestError(f"sched_class must be one of {SCHED_CLASSES}, got {sched_class!r}")
        if code == 2 and timeout is None and deadline is None:
            raise InvalidRequestError("a deadline-class request needs a timeout or a deadline")
        self._sched_class = sched_class
        if pool is not None or fallback_pool is not None:
            for name, value in (("pool", pool), ("fallback_pool", fallback_pool)):
                if value is not None and (type(value) is not str and not isinstance(value, str) or not value):
                    raise RequestTypeError(f"{name} must be a non-empty str or None, got {value!r}")
            if fallback_pool is not None and (pool is None or fallback_pool == pool):
                raise InvalidRequestError(
                    f"fallback_pool {fallback_pool!r} needs a pool of its own, other than it (pool {pool!r})"
                )
        self._pool = pool
        self._fallback_pool = fallback_pool
        self.id: Optional[int] = None
        # What Scheduler.submit passes to the core for a request without dependencies or
        # pools (those name other requests and devices, resolved at submit): the values
        # validated above, in the core's terms. None once a field is set again.
        self._spec: Optional[tuple[Any, ...]] = (
            (max_new_tokens, priority, _NAN if timeout is None else timeout, _NAN if deadline is None else deadline,
             code, batchable, lo, hi)
            if not depends_on and pool is None
            else None
        )
        self._claim = [None]
        self._owner: object = None

    def __setstate__(self, state: object) -> None:
        """Copies and unpickled objects keep the fields, ``_spec`` and ``id``, and get a
        claim of their own. ``state`` is what pickle's default gives: ``(instance dict or
        None, slots)``; slots named by the public fields (pickles from before they were
        properties) go through the properties, which drop ``_spec``."""
        parts = state if isinstance(state, tuple) else (state,)
        self._spec = None
        for part in parts:
            for name, value in (part or {}).items():
                setattr(self, name, value)
        self._claim = [None]
        self._owner = None  # (a copy's origin is not known)

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in _FIELDS + ("id",)
            if getattr(self, name) not in (None, ())
        )
        return f"InferenceRequest({fields})"


def _field(name: str) -> property:
    """The property of a field: reads its slot; setting or deleting it drops ``_spec``."""
    slot = getattr(InferenceRequest, f"_{name}")
    store, drop = slot.__set__, slot.__delete__
    clear = getattr(InferenceRequest, "_spec").__set__

    def set_(self: InferenceRequest, value: object) -> None:
        store(self, value)
        clear(self, None)

    def del_(self: InferenceRequest) -> None:
        drop(self)
        clear(self, None)

    return property(attrgetter(f"_{name}"), set_, del_, f"The request's {name} (see the class).")


for _name in _FIELDS:
    setattr(InferenceRequest, _name, _field(_name))
del _name


def _checked(request: InferenceRequest) -> InferenceRequest:
    """A new InferenceRequest from ``request``'s fields as they are now: the
    constructor's checks and conversions, for fields set after construction (which the
    properties store as given). Raises what the constructor raises."""
    return InferenceRequest(
        request.prompt,
        prompt_tokens=request.prompt_tokens,
        max_new_tokens=request.max_new_tokens,
        priority=request.priority,
        timeout=request.timeout,
        deadline=request.deadline,
        tenant=request.tenant,
        batchable=request.batchable,
        depends_on=request.depends_on,
        uclamp_min=request.uclamp_min,
        uclamp_max=request.uclamp_max,
        request_class=request.request_class,
        sched_class=request.sched_class,
        pool=request.pool,
        fallback_pool=request.fallback_pool,
    )


def _int(name: str, value: object, lo: int, hi: int) -> int:
    if type(value) is int and lo <= value <= hi:  # fast path for the common case
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise RequestTypeError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if not lo <= v <= hi:
        raise InvalidRequestError(f"{name} must be in {lo}..{hi}, got {_brief(v)}")
    return v


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise RequestTypeError(f"{name} must be a number, got {_brief(value)}")
    try:
        return float(value)
    except (OverflowError, ValueError):  # an integer beyond any float
        raise InvalidRequestError(
            f"{name} must be a number within the range of a float, got {_brief(value)}"
        ) from None


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


def _dependencies(deps: object) -> tuple[Any, ...]:
    if type(deps) is tuple and not deps:  # (not ``deps == ()``: a numpy array compares elementwise)
        return ()
    if isinstance(deps, (str, bytes)) or not isinstance(deps, Iterable):
        raise RequestTypeError(f"depends_on must be an iterable of request ids, got {deps!r}")
    try:
        out = tuple(deps)
    except TypeError:  # an Iterable that cannot be iterated: a 0-d numpy array
        raise RequestTypeError(f"depends_on must be an iterable of request ids, got {_brief(deps)}") from None
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
