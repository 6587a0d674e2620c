"""The scheduler facade: validation, names and clocks around the C++ core."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import os
import secrets
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional, TypeVar, Union

import numpy as np
import numpy.typing as npt

from . import _core
from . import config as _limits
from .config import POLICIES, Config
from .config import _brief as _brief_size
from .devices import Device, parse_devices
from .errors import (
    AdmissionError,
    CapschedError,
    ConfigError,
    DependencyError,
    DuplicateRequestError,
    InvalidArgumentError,
    InvalidRequestError,
    RequestTypeError,
    UnknownRequestError,
    QueueFullError,
    CheckpointError,
    JournalError,
)
from .request import _SCHED_CODES, MAX_TOKENS, InferenceRequest, _checked
from .tokens import estimate_tokens

if TYPE_CHECKING:
    from .journal import JournalCore

__all__ = ["Scheduler", "OpenAutoGLMScheduler", "StepResult", "StepArrays", "Batch", "PerDevice"]

_NAN = float("nan")
_STATUS = ("waiting", "queued", "in_flight", "completed", "failed", "expired", "cancelled", "retrying")
_SUBMITTING = "this InferenceRequest was already submitted (by another thread, just now); create a new one"


def _submitted(rid: int) -> str:
    return f"this InferenceRequest was already submitted (id {rid}); create a new one"


def _claim_failed(request: InferenceRequest) -> DuplicateRequestError:
    """The error for a submit that found the object's claim taken (``InferenceRequest._claim``).
    A submit takes the claim with one atomic ``pop()``, gives it back if the request was not
    accepted, and keeps it once it was: the object is then spent, and its ``id`` is set."""
    rid = request.id
    return DuplicateRequestError(_SUBMITTING if rid is None else _submitted(rid))


@dataclasses.dataclass(frozen=True)
class Batch:
    """Requests that a step sends to one device to run together.

    Attributes:
        device: the device's name.
        device_index: its position in the scheduler's device list.
        request_ids: ids in dispatch order (the policy's order).
    """

    device: str
    device_index: int
    request_ids: list[int]

    def __len__(self) -> int:
        return len(self.request_ids)


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one :meth:`Scheduler.step` decided.

    Attributes:
        batches: batches to run, in dispatch order; flattening them gives the policy's
            order at ``now``.
        expired: ids of queued or waiting requests that passed their deadline.
        failed: ``(id, reason)`` of requests that failed outside the server's own
            :meth:`Scheduler.fail` calls since the previous step (a dependency failed,
            expired or was cancelled).
        now: the time the step ran at (seconds on the scheduler's clock): its ``now``,
            or the latest time the scheduler had seen if that was later (time never runs
            backwards inside the scheduler).
        migrated: ``(id, old_device)`` of in-flight requests that no longer fitted their
            device (its clock or capacity dropped) and were moved to a bigger one: stop
            each on its old device; it is listed in its new device's batch above.
        preempted: continuous mode: ``(id, device)`` of running requests to evict from
            that device to make room for more urgent work (deadline or strict class).
            They are queued again (their progress recorded, see
            :meth:`Scheduler.preemptions`); free their sequence slot and KV.
        next_step_at: when batches were held back to fill (``max_queue_delay``), the
            latest time to call :meth:`Scheduler.step` again so that none waits past its
            delay or its slack; ``math.inf`` when nothing was held.
        held: how many batches were held back in this step (their requests stay queued).
    """

    batches: list[Batch]
    expired: list[int]
    failed: list[tuple[int, str]]
    now: float
    migrated: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    preempted: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    next_step_at: float = math.inf
    held: int = 0

    @property
    def dispatched(self) -> list[int]:
        """All dispatched ids, batch after batch."""
        return [i for b in self.batches for i in b.request_ids]

    def __bool__(self) -> bool:
        return bool(self.batches or self.expired or self.failed or self.migrated or self.preempted)


@dataclasses.dataclass(frozen=True)
class StepArrays:
    """What one :meth:`Scheduler.step_many` decided: the same as :class:`StepResult`,
    with the dispatched and expired ids as numpy arrays (no Python object per id), for
    servers that hand them on in bulk (:meth:`Scheduler.complete_many` takes
    ``request_ids`` as it is).

    Attributes:
        request_ids: every dispatched id, batch after batch (``uint64``); batch ``b`` is
            ``request_ids[batch_offsets[b]:batch_offsets[b + 1]]``.
        batch_offsets: ``uint64``, one more than there are batches (``[0]`` when none).
        batch_device: ``uint32``, the index of each batch's device.
        devices: the name of each batch's device.
        expired: ids that passed their deadline (``uint64``).
        failed, now, migrated, preempted, next_step_at, held: as :class:`StepResult`.
    """

    request_ids: npt.NDArray[np.uint64]
    batch_offsets: npt.NDArray[np.uint64]
    batch_device: npt.NDArray[np.uint32]
    devices: list[str]
    expired: npt.NDArray[np.uint64]
    failed: list[tuple[int, str]]
    now: float
    migrated: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    preempted: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    next_step_at: float = math.inf
    held: int = 0

    @property
    def dispatched(self) -> npt.NDArray[np.uint64]:
        """All dispatched ids, batch after batch (``request_ids``)."""
        return self.request_ids

    def batches(self) -> list[Batch]:
        """The batches as :class:`Batch` objects (ids as Python ints), as :meth:`Scheduler.step` gives them."""
        ids = self.request_ids.tolist()
        offs = self.batch_offsets.tolist()
        return [
            _batch(name, d, ids[offs[i] : offs[i + 1]])
            for i, (name, d) in enumerate(zip(self.devices, self.batch_device.tolist()))
        ]

    def __bool__(self) -> bool:
        return bool(len(self.request_ids) or len(self.expired) or self.failed or self.migrated or self.preempted)


# Fast constructors for the two frozen dataclasses above, for step(): the same objects
# their generated __init__ makes (no __post_init__, every field given), filled through
# the instance dict instead of one object.__setattr__ call per field.
def _batch(device: str, device_index: int, request_ids: list[int]) -> Batch:
    b = _new(Batch)
    d = b.__dict__
    d["device"] = device
    d["device_index"] = device_index
    d["request_ids"] = request_ids
    return b


def _step_result(
    batches: list[Batch],
    expired: list[int],
    failed: list[tuple[int, str]],
    now: float,
    migrated: list[tuple[int, str]],
    preempted: list[tuple[int, str]],
    next_step_at: float,
    held: int,
) -> StepResult:
    r = _new(StepResult)
    d = r.__dict__
    d["batches"] = batches
    d["expired"] = expired
    d["failed"] = failed
    d["now"] = now
    d["migrated"] = migrated
    d["preempted"] = preempted
    d["next_step_at"] = next_step_at
    d["held"] = held
    return r


_new = object.__new__


def _bound(hi: int) -> str:
    """A per-device value's upper bound as messages write it."""
    return "2**62" if hi == 2**62 else str(hi)


#: What ``Scheduler.step``'s ``free_slots`` / ``free_kv_tokens`` take: ``{device name:
#: n}``, or one integer per device in the scheduler's device order (a numpy integer array,
#: a list or a tuple; -1: not reported, as a device the mapping does not name).
PerDevice = Union[Mapping[str, int], "list[int]", "tuple[int, ...]", "npt.NDArray[np.integer[Any]]"]


def _check_names_used(requests: Any, tenants: int, classes: int) -> None:
    """A checkpoint's requests name only tenants and classes its tables hold (the core
    sizes per-tenant arrays by the largest index: a forged one asked for gigabytes)."""
    if isinstance(requests, dict):  # (format 2: numpy columns, checked by capsched.checkpoint)
        for column, limit, what in (("tenant", tenants, "tenant"), ("request_class", classes, "class")):
            values = requests.get(column)
            if isinstance(values, np.ndarray) and values.size and int(values.max()) >= limit:
                at = int(np.argmax(values >= limit))
                raise CheckpointError(
                    f"request {int(requests['id'][at])!r} names {what} number {int(values[at])}; "
                    f"the {what} table has {limit}"
                )
        return
    if not isinstance(requests, list):
        return  # (the core refuses it)
    for q in requests:
        if not isinstance(q, dict):
            continue
        t, c = q.get("tenant"), q.get("request_class")
        if type(t) is int and not 0 <= t < tenants:
            raise CheckpointError(f"request {q.get('id')!r} names tenant number {t}; the tenant table has {tenants}")
        if type(c) is int and not 0 <= c < classes:
            raise CheckpointError(f"request {q.get('id')!r} names class number {c}; the class table has {classes}")


class Scheduler:
    """A capacity-aware scheduler for LLM inference requests.

    A server submits requests, calls :meth:`step` to learn which batch runs on which
    device, runs them, and reports each request's end with :meth:`complete` or
    :meth:`fail`. Every accepted request ends exactly once: completed, failed, expired
    or cancelled (``stats()['conservation_ok']`` checks the books).

    Args:
        devices: non-empty list of device names (equal capacity), :class:`Device`
            objects, or dicts with Device's fields; or ``"auto"``: the GPUs
            :func:`capsched.discover` finds (ConfigError where it finds none). A bare
            string other than ``"auto"`` is refused (it is not a list of names).
        policy: ``"fcfs"``, ``"priority"``, ``"edf"``, ``"srtf"`` or ``"weighted"``
            (default; the seed's score). ``docs/policies.md`` gives each exact order.
        max_batch_size: requests per batch (1..65536, default 32).
        enable_dynamic_batching: whether batches may wait to fill
            (``Config.max_queue_delay``, ``preferred_batch_sizes``) and the batch size
            limit adapts to observed latency (``Config.latency_target``, AIMD). Off: a
            fixed ``max_batch_size`` and immediate dispatch. ``docs/batching.md``.
        config: a :class:`Config` (or a dict of its fields) with the policy's tunables.
        clock: callable returning seconds; used whenever a ``now`` argument is omitted
            (default ``time.monotonic``). Pass virtual time as ``now=`` to simulate.

    Thread safety: any number of threads may call any method; the core serialises them
    behind one mutex and releases the GIL while it works, except in :meth:`submit` and
    :meth:`complete`, whose core work is shorter than releasing and re-acquiring it.

    Errors: bad input raises a subclass of :class:`capsched.errors.CapschedError` naming
    the bad value, and the scheduler is left unchanged.
    """

    def __init__(
        self,
        devices: Sequence[Union[str, Device, Mapping[str, Any]]],
        *,
        policy: str = "weighted",
        max_batch_size: int = 32,
        enable_dynamic_batching: bool = True,
        config: Optional[Union[Config, Mapping[str, Any]]] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(policy, str) or policy not in POLICIES:
            raise ConfigError(f"unknown policy {policy!r}: expected one of {', '.join(map(repr, POLICIES))}")
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, numbers.Integral):
            raise ConfigError(f"max_batch_size must be an integer, got {max_batch_size!r}")
        if not 1 <= int(max_batch_size) <= _core.MAX_BATCH_SIZE:
            raise ConfigError(f"max_batch_size must be in 1..{_core.MAX_BATCH_SIZE}, got {max_batch_size!r}")
        if not isinstance(enable_dynamic_batching, bool):
            raise ConfigError(f"enable_dynamic_batching must be a bool, got {enable_dynamic_batching!r}")
        if config is None:
            config = Config()
        elif isinstance(config, Mapping):
            config = Config.from_dict(config)
        elif not isinstance(config, Config):
            raise ConfigError(f"config must be a capsched.Config or a dict, got {type(config).__name__}")
        if not callable(clock):
            raise ConfigError(f"clock must be callable (returning seconds), got {clock!r}")
        self._devices: tuple[Device, ...] = parse_devices(devices)
        pinned = {t for d in self._devices for t in d.tenants} - {None}
        if len(pinned) + 1 > _limits.MAX_TENANTS:  # (+1: tenant None is always numbered)
            raise ConfigError(
                f"the devices' tenants= lists name {len(pinned)} distinct tenants in all; with tenant None that is "
                f"{len(pinned) + 1}, over the limit of {_limits.MAX_TENANTS} tenants"
            )
        self._policy: str = policy
        self._config: Config = config
        self._max_batch_size: int = int(max_batch_size)
        self._dynamic_batching: bool = enable_dynamic_batching
        self._clock: Callable[[], float] = clock
        self._count_tokens: Callable[[str], int] = config.tokenizer or estimate_tokens
        self._names: list[str] = [d.name for d in self._devices]
        self._tenants: dict[Optional[str], int] = {None: 0}
        self._classes: dict[Optional[str], int] = {None: 0}
        # Names set_clock/set_pressure accept: each device, and each parent of slices
        # (reaching all of its slices).
        self._index: dict[str, list[int]] = {}
        for i, d in enumerate(self._devices):
            if d.parent is not None and d.parent not in self._names:
                self._index.setdefault(d.parent, []).append(i)
        self._index.update({name: [i] for i, name in enumerate(self._names)})
        self._clocked: list[bool] = [False] * len(self._devices)  # set_clock has given it a max clock
        # Each device's max clock as the core has it (None: none known yet), so that
        # set_clock can check every slice of a split device before changing any.
        self._max_clock: list[Optional[float]] = [
            None if d.max_clock_mhz is None else float(d.max_clock_mhz) for d in self._devices
        ]
        self._pools: dict[str, int] = {}  # pool name -> id (1, 2, ... in device order)
        for d in self._devices:
            if d.pool is not None and d.pool not in self._pools:
                self._pools[d.pool] = len(self._pools) + 1
        self._journal_seq: int = 0  # the last journal entry reflected in this state
        # Names this scheduler's history: kept in its checkpoints and in the first line of
        # each journal it opens, so that a journal replays only on its own checkpoints
        # (None: restored from a checkpoint written before lineages).
        self._lineage: Optional[str] = secrets.token_hex(16)
        # (path, seq) of the journal it closed last: reopening it continues it.
        self._closed_journal: Optional[tuple[str, int]] = None
        self._rejected: int = 0  # submits refused by back-pressure or admission (stats()['rejected'])
        self._lock: threading.Lock = threading.Lock()  # guards the tenant and class tables and the rejected count
        self._owner_token: object = object()  # marks the InferenceRequest objects this scheduler accepted
        # One checkpoint at a time, state taken to file renamed: of checkpoints made from
        # several threads, the last taken is the last renamed (the file holds the latest).
        self._checkpoint_lock: threading.Lock = threading.Lock()

        cc = _core.CoreConfig()
        cc.policy = policy
        for f in dataclasses.fields(Config):
            if f.name not in ("tokenizer", "tenant_weights"):
                setattr(cc, f.name, getattr(config, f.name))
        cc.max_batch_size = self._max_batch_size
        cc.dynamic_batching = enable_dynamic_batching
        self._core: Union[_core.Core, JournalCore] = _core.Core(cc, [self._device_spec(d) for d in self._devices])
        self._direct: Optional[_core.Core] = self._core  # the core itself; None while a journal wraps it
        self._apply_tenant_weights()

    def _device_spec(self, d: Device) -> Any:
        spec = _core.DeviceSpec()
        spec.capacity = d.effective_capacity
        spec.max_inflight_batches = int(d.max_inflight_batches)
        max_clock, cur_clock = d.max_clock_mhz, d.clock_mhz
        if max_clock is not None:
            spec.max_clock = float(max_clock)
            spec.cur_clock = float(max_clock if cur_clock is None else cur_clock)
        kv = d.kv_tokens
        spec.kv_tokens = _core.UNLIMITED_TOKENS if kv is None else int(kv)
        power = d.power_w
        # Energy per unit of work: watts over relative capacity (J per token up to a
        # constant that is the same for every device, which is all a comparison needs).
        spec.energy_per_token = 0.0 if power is None else float(power) / spec.capacity
        spec.tenants = [self._tenant_id(t) for t in d.tenants]
        spec.pool = 0 if d.pool is None else self._pools[d.pool]
        spec.prefill_s_per_token = float(d.prefill_s_per_token or 0.0)
        spec.decode_step_s = float(d.decode_step_s or 0.0)
        spec.decode_s_per_seq = float(d.decode_s_per_seq or 0.0)
        return spec

    def _tenant_id(self, tenant: Optional[str]) -> int:
        t = self._tenants.get(tenant)
        if t is None:
            t = self._tenants[tenant] = len(self._tenants)
        return t

    def _apply_tenant_weights(self) -> None:
        """Give the core the fair-share weight (Config.tenant_weights) of every tenant
        numbered so far. Weights are configuration, not state: re-applying is harmless."""
        if self._config.tenant_weights:
            for name, idx in list(self._tenants.items()):
                self._weigh_tenant(name, idx)

    def _weigh_tenant(self, name: Optional[str], idx: int) -> None:
        """Give the core tenant idx's configured fair-share weight, if it has one."""
        w = self._config.tenant_weights.get(name)
        if w is not None:
            self._core.set_tenant_weight(idx, w)

    # ------------------------------------------------------------------ properties

    @property
    def devices(self) -> tuple[Device, ...]:
        """The devices, in the order given."""
        return self._devices

    @property
    def policy(self) -> str:
        """The ordering policy of normal-class requests (one of ``POLICIES``)."""
        return self._policy

    @property
    def config(self) -> Config:
        """The tunables the scheduler was built with."""
        return self._config

    @property
    def max_batch_size(self) -> int:
        """Most requests per batch."""
        return self._max_batch_size

    def __repr__(self) -> str:
        return (
            f"Scheduler(devices={self._names!r}, policy={self._policy!r}, "
            f"max_batch_size={self._max_batch_size})"
        )

    # ------------------------------------------------------------------ submission

    def submit(self, request: InferenceRequest, *, now: Optional[float] = None) -> int:
        """Accept one request; returns its id (1, 2, 3, ... in submission order).

        ``now`` defaults to ``clock()``; a timeout counts from it.

        Raises:
            DuplicateRequestError: this object was submitted before.
            InvalidRequestError: a field is out of range (the message names it).
            RequestTypeError: a field has the wrong type. A field set after
                construction is checked here as the constructor checks it, before
                anything changes.
            DependencyError: ``depends_on`` names an unknown request or one that ended
                without completing, lists one twice, or names one that already has
                ``Config.max_dependents`` requests waiting on it.
            AdmissionError: a deadline-class request needs more bandwidth than any device
                has free.
            QueueFullError: ``Config.max_queued`` or ``max_queued_per_tenant`` would be
                exceeded (nothing was accepted).
        """
        # Fast path: an InferenceRequest whose fields are as validated at construction
        # (``_spec``; None once one is set again, or with dependencies or pools) goes to
        # the core as that tuple. Everything else, and any journaled scheduler, takes
        # _submit(), which checks and converts each field here.
        spec = request._spec if type(request) is InferenceRequest else None
        core = self._direct
        if spec is None or core is None:
            return self._submit(request, now)
        t = now if type(now) is float else self._time(now)
        tokens = request._prompt_tokens
        if tokens is None:
            tokens = self._estimate(request._prompt)
        claim = request._claim
        try:
            claim.pop()  # atomic: one call at a time holds the object (see _claim_failed)
        except IndexError:
            raise _claim_failed(request) from None
        try:
            if request.id is not None:  # (an id set by hand)
                raise DuplicateRequestError(_submitted(request.id))
            name, class_name = request._tenant, request._request_class
            tenant: Optional[int]
            rclass: Optional[int]
            if name is None and class_name is None:  # both tables number None 0
                tenant = rclass = 0
            else:
                tenant = self._tenants.get(name)
                rclass = self._classes.get(class_name)
            try:
                if tenant is None or rclass is None:  # (a name to number: only if the core accepts)
                    rid, tenant = self._submit_naming(
                        core, name, class_name, "submit_spec", lambda ti, ci: (tokens, spec, ti, ci, t)
                    )
                else:
                    rid = core.submit_spec(tokens, spec, tenant, rclass, t)
            except (QueueFullError, AdmissionError) as exc:
                raise self._refused(exc, name, tenant) from None
            except InvalidRequestError as exc:
                raise _tenant_named(exc, name, tenant) from None
        except BaseException:
            claim.append(None)  # not submitted: the object can be submitted again
            raise
        request.id = rid  # (the claim stays taken: the object is spent)
        request._owner = self._owner_token
        return rid

    def _submit(self, request: InferenceRequest, now: Optional[float]) -> int:
        """submit() for any request: each field checked and converted here."""
        if type(request) is not InferenceRequest and not isinstance(request, InferenceRequest):
            raise RequestTypeError(f"submit() takes an InferenceRequest, got {type(request).__name__}")
        t = self._time(now)
        # The fields as they are now, through the constructor's checks: one set after
        # construction (stored as given) is refused here as the constructor refuses it,
        # before anything changes (a new tenant name is numbered only further down).
        fields = _checked(request)
        tokens = fields.prompt_tokens
        if tokens is None:
            tokens = self._estimate(fields.prompt)
        deps = _dependency_ids(fields.depends_on, self._owner_token) if fields.depends_on else None
        pool = fallback = 0
        if fields.pool is not None or fields.fallback_pool is not None:
            for name in (fields.pool, fields.fallback_pool):
                if name is not None and name not in self._pools:
                    raise InvalidRequestError(
                        f"pool {name!r} has no device; pools: {sorted(self._pools) or 'none'}"
                    )
            pool = self._pools[fields.pool] if fields.pool is not None else 0
            fallback = self._pools[fields.fallback_pool] if fields.fallback_pool is not None else 0
        claim = request._claim
        try:
            claim.pop()
        except IndexError:
            raise _claim_failed(request) from None
        try:
            if request.id is not None:
                raise DuplicateRequestError(_submitted(request.id))
            tenant = self._tenants.get(fields.tenant)
            rclass = self._classes.get(fields.request_class)
            timeout = fields.timeout
            deadline = fields.deadline

            def args(ti: int, ci: int) -> tuple[Any, ...]:
                return (
                    tokens,
                    fields.max_new_tokens,
                    fields.priority,
                    _NAN if timeout is None else timeout,
                    _NAN if deadline is None else deadline,
                    ti,
                    ci,
                    _SCHED_CODES[fields.sched_class],
                    fields.batchable,
                    fields.uclamp_min,
                    fields.uclamp_max,
                    pool,
                    fallback,
                    deps,
                    t,
                )

            try:
                if tenant is None or rclass is None:  # (a name to number: only if the core accepts)
                    rid, tenant = self._submit_naming(None, fields.tenant, fields.request_class, "submit", args)
                else:
                    rid = self._core.submit(*args(tenant, rclass))
            except (QueueFullError, AdmissionError) as exc:
                raise self._refused(exc, fields.tenant, tenant) from None
            except InvalidRequestError as exc:
                raise _tenant_named(exc, fields.tenant, tenant) from None
        except BaseException:
            claim.append(None)  # not submitted: the object can be submitted again
            raise
        request.id = rid  # (the claim stays taken: the object is spent)
        request._owner = self._owner_token
        return rid

    def _refused(self, exc: Exception, tenant: Optional[str], tenant_id: Optional[int]) -> Exception:
        """Counts a submit refused by back-pressure or admission; the error to raise (a
        QueueFullError names the tenant as the caller knows it)."""
        self._count_rejected(1)
        return _tenant_named(exc, tenant, tenant_id)

    def _submit_naming(
        self,
        core: Any,
        tenant: Optional[str],
        request_class: Optional[str],
        op: str,
        make_args: Callable[[int, int], tuple[Any, ...]],
    ) -> tuple[int, int]:
        """(id, tenant number) of a submit, ``core.<op>(*make_args(tenant number, class
        number))``, whose tenant or request class name is not numbered yet: the new names
        are numbered (weighed and journaled) only once the core has accepted the request,
        so that a refused submit leaves no name behind (nothing else changes either: the
        tenant table cannot fill up with names of requests that were never accepted).

        The call runs under self._lock, so that no other thread numbers a name
        meanwhile: the numbers handed to the core are the ones the names get. ``core``
        is the core to call (None: self._core, read under the lock). With a journal
        open, the names line is written before the submit's line, as a replay needs
        them, and neither is written if the core refuses."""
        from .journal import JournalCore, _plain

        with self._lock:
            t = self._tenants.get(tenant)
            c = self._classes.get(request_class)
            new_t, new_c = t is None, c is None
            if new_t and len(self._tenants) >= _limits.MAX_TENANTS:
                raise InvalidRequestError(
                    f"tenant {tenant!r} would be tenant number {len(self._tenants) + 1}, over the limit of "
                    f"{_limits.MAX_TENANTS} tenants"
                )
            if new_c and len(self._classes) >= _limits.MAX_REQUEST_CLASSES:
                raise InvalidRequestError(
                    f"request_class {request_class!r} would be class number {len(self._classes) + 1}, over "
                    f"the limit of {_limits.MAX_REQUEST_CLASSES} classes"
                )
            if t is None:
                t = len(self._tenants)
            if c is None:
                c = len(self._classes)
            args = make_args(t, c)
            if core is None:
                core = self._core

            def call(target: Any) -> int:
                try:
                    return int(getattr(target, op)(*args))
                except CapschedError as exc:  # (named as the caller knows the tenant: it has no number)
                    raise _tenant_named(exc, tenant, t) from None

            if not (new_t or new_c):  # (another thread numbered them meanwhile)
                return call(core), t
            if not isinstance(core, JournalCore):
                rid = call(core)
                self._number_names(tenant, t, new_t, request_class, c, new_c)
                return rid, t
            with core.lock:
                if core.closed:  # (closed since this call read it: the core unjournaled)
                    rid = call(core)
                    self._number_names(tenant, t, new_t, request_class, c, new_c)
                    return rid, t
                core.refuse_if_failed()
                journal = core.journal
                # Both lines encoded before any change (as JournalCore does): the names,
                # then the call one seq after them.
                names = journal.encode(
                    "names",
                    tenants=[[k, v] for k, v in self._tenants.items()] + ([[tenant, t]] if new_t else []),
                    classes=[[k, v] for k, v in self._classes.items()] + ([[request_class, c]] if new_c else []),
                )
                journal.seq += 1
                try:
                    body = journal.encode(op, args=_plain(list(args)))
                finally:
                    journal.seq -= 1
                rid = call(core._inner)  # (refused: nothing numbered, nothing written)
                self._number_names(tenant, t, new_t, request_class, c, new_c)
                core.write(names, rid)
                core.write(body, rid)
                return rid, t

    def _number_names(
        self, tenant: Optional[str], t: int, new_t: bool, request_class: Optional[str], c: int, new_c: bool
    ) -> None:
        """Number a tenant and a class name (new_t, new_c: each is new), under self._lock."""
        if new_t:
            self._tenants[tenant] = t
            self._weigh_tenant(tenant, t)
        if new_c:
            self._classes[request_class] = c

    def submit_many(
        self,
        prompt_tokens: npt.ArrayLike,
        *,
        max_new_tokens: npt.ArrayLike = 256,
        priority: npt.ArrayLike = 0.5,
        timeout: Optional[npt.ArrayLike] = None,
        deadline: Optional[npt.ArrayLike] = None,
        now: Optional[float] = None,
    ) -> npt.NDArray[np.uint64]:
        """Accept many requests at once: the fast path.

        Each argument is an array-like of one value per request, or a scalar for all;
        NaN (or None as a scalar) in ``timeout``/``deadline`` means none. Validation
        covers every element before any is accepted: all are accepted or none.

        Returns:
            ``numpy.ndarray`` of ``uint64`` ids, in the order given.

        Raises:
            InvalidRequestError: an array of the wrong shape or length, or a value out of
                range (the message names the argument and the first bad element);
                nothing is accepted.
            RequestTypeError: an array of the wrong type: not numbers, booleans, or a
                list holding a bool among numbers (named by its index); nothing is
                accepted.
            InvalidArgumentError: ``now`` is not a number.
            QueueFullError: accepting them all would exceed ``Config.max_queued``;
                nothing is accepted.
        """
        t = self._time(now)
        p = _int_array("prompt_tokens", prompt_tokens, None)
        n = p.shape[0]
        q = _int_array("max_new_tokens", max_new_tokens, n)
        pr = _float_array("priority", priority, n)
        to = _float_array("timeout", _NAN if timeout is None else timeout, n, none_is_nan=True)
        dl = _float_array("deadline", _NAN if deadline is None else deadline, n, none_is_nan=True)
        try:
            return self._core.submit_many(p, q, pr, to, dl, t)
        except QueueFullError as exc:  # (its requests are tenant None's, number 0)
            self._count_rejected(int(n))
            raise _tenant_named(exc, None, 0) from None
        except InvalidRequestError as exc:
            raise _tenant_named(exc, None, 0) from None

    def _count_rejected(self, n: int) -> None:
        from .journal import JournalCore

        with self._lock:
            self._rejected += n
            core = self._core
            if isinstance(core, JournalCore) and core.failed is None:  # (a refused call writes no line of its own)
                with core.lock:
                    try:
                        core.write(core.journal.encode("rejected", n=n))
                    except JournalError:
                        pass  # (marked failed: the next change reports it; this call reports its refusal)

    # ------------------------------------------------------------------ the loop

    def step(
        self,
        now: Optional[float] = None,
        *,
        free_slots: Optional[PerDevice] = None,
        free_kv_tokens: Optional[PerDevice] = None,
    ) -> StepResult:
        """Expire, order and dispatch; ``docs/policies.md``, ``docs/placement.md`` and
        ``docs/batching.md`` give the exact rules.

        Batch mode (``free_slots`` not given): each device with fewer than its
        ``max_inflight_batches`` in flight may get one new batch of up to
        ``max_batch_size`` requests (and ``Config.max_batch_tokens`` tokens).

        Continuous mode (iteration-level scheduling, as vLLM and Orca run): give each
        device's free sequence slots in ``free_slots`` (``{name: n}``; devices not named
        take nothing) and, optionally, its free KV-cache tokens in ``free_kv_tokens``
        (``{name: tokens}``; a device not named uses its own ``kv_tokens`` budget). Either
        may instead be one integer per device in :attr:`devices` order (a numpy integer
        array, a list or a tuple: :data:`PerDevice`), -1 standing for a device not named: on a large fleet that
        changes little between steps, keep such an array and update it in place. Each
        device takes at most that many new requests, whose prompt + max new tokens fit
        its free KV; the step returns one batch per device of the requests joining it.
        Preemption (``Config.preemption``) applies in this mode: see
        :attr:`StepResult.preempted`.

        Returns the batches to run (strongest device first), the ids that expired,
        dependency failures since the last step, migrations and preemptions.

        Raises:
            InvalidArgumentError: an unknown device name, a slot count outside
                0..65536, a KV figure that is not an integer or outside 0..2**62; in the
                per-device form, another length than the number of devices, values that
                are not integers, or one outside -1..65536 (slots) or -1..2**62 (KV); a
                masked array.
            JournalError: with a journal open, its line could not be written: the step
                WAS made, and the error's ``result`` is this StepResult (run its
                batches); later changes are refused until :meth:`close_journal`.
        """
        return self._journaled_step(self._step_result, now, free_slots, free_kv_tokens, arrays=False)

    def _step_result(self, raw: Any) -> StepResult:
        """The StepResult of a core step's lists: batch b is ids[offsets[b]:offsets[b + 1]]
        on device devs[b]."""
        devs, offsets, ids, expired, failed, reasons, t, moved, moved_from, pre, pre_from, next_at, held = raw
        names = self._names
        batches = [_batch(names[d], d, ids[offsets[i] : offsets[i + 1]]) for i, d in enumerate(devs)]
        return _step_result(
            batches,
            expired,
            list(zip(failed, reasons)) if failed else [],
            t,
            self._on_devices(moved, moved_from),
            self._on_devices(pre, pre_from),
            next_at,
            held,
        )

    def step_many(
        self,
        now: Optional[float] = None,
        *,
        free_slots: Optional[PerDevice] = None,
        free_kv_tokens: Optional[PerDevice] = None,
    ) -> StepArrays:
        """:meth:`step` for the bulk path: the same decisions, with the dispatched and
        expired ids as numpy arrays (:class:`StepArrays`) instead of a Python int each,
        so a server that submits with :meth:`submit_many` and completes with
        :meth:`complete_many` never builds one object per request. One step, the same
        arguments, errors and effects as :meth:`step` (journaled the same way).

        Raises:
            InvalidArgumentError, JournalError: as :meth:`step` (``result``: this
                StepArrays).
        """
        return self._journaled_step(self._step_arrays, now, free_slots, free_kv_tokens, arrays=True)

    def _step_arrays(self, raw: Any) -> StepArrays:
        """The StepArrays of a core step's arrays."""
        devs, offsets, ids, expired, failed, reasons, t, moved, moved_from, pre, pre_from, next_at, held = raw
        names = self._names
        r = _new(StepArrays)
        d = r.__dict__
        d["request_ids"] = ids
        d["batch_offsets"] = offsets
        d["batch_device"] = devs
        d["devices"] = [names[i] for i in devs.tolist()]
        d["expired"] = expired
        d["failed"] = list(zip(failed, reasons)) if failed else []
        d["now"] = t
        d["migrated"] = self._on_devices(moved, moved_from)
        d["preempted"] = self._on_devices(pre, pre_from)
        d["next_step_at"] = next_at
        d["held"] = held
        return r

    def _journaled_step(
        self,
        convert: Callable[[Any], _R],
        now: Optional[float],
        free_slots: Optional[PerDevice],
        free_kv_tokens: Optional[PerDevice],
        *,
        arrays: bool,
    ) -> _R:
        """convert(the core's step); a JournalError (the step was made, its line not
        written) carries the converted result, so the batches it dispatched can be run."""
        try:
            raw = self._core_step(now, free_slots, free_kv_tokens, arrays=arrays)
        except JournalError as exc:
            if exc.result is not None:
                exc.result = convert(exc.result)
            raise
        return convert(raw)

    def _on_devices(self, ids: list[int], devices: list[int]) -> list[tuple[int, str]]:
        """(id, device name) pairs from the core's parallel id and device-index lists."""
        names = self._names
        return [(i, names[d]) for i, d in zip(ids, devices)] if ids else []

    def _core_step(
        self,
        now: Optional[float],
        free_slots: Optional[PerDevice],
        free_kv_tokens: Optional[PerDevice],
        *,
        arrays: bool,
    ) -> Any:
        t = self._time(now)
        if free_slots is None:
            if free_kv_tokens is not None:
                raise InvalidArgumentError("free_kv_tokens is only used with free_slots (continuous mode)")
            return self._core.step_arrays(t) if arrays else self._core.step(t)
        slots = self._per_device("free_slots", free_slots, -1)  # -1: not reported
        kv = self._per_device("free_kv_tokens", {} if free_kv_tokens is None else free_kv_tokens, -1)
        if arrays:
            return self._core.step_continuous_arrays(t, slots, kv)
        return self._core.step_continuous(t, slots, kv)

    def _per_device(self, what: str, values: object, default: int) -> np.ndarray:
        hi = _core.MAX_BATCH_SIZE if what == "free_slots" else 2**62
        if not isinstance(values, Mapping):
            return self._per_device_array(what, values, hi)
        # (a simulator or server names every free device at every step: plain ints take
        # the short way, and the array is filled in one go)
        index, names = self._index, self._names
        at: list[int] = []
        got: list[int] = []
        for name, v in values.items():
            idx = index.get(name) if isinstance(name, str) else None
            if idx is None or len(idx) != 1 or names[idx[0]] != name:
                raise InvalidArgumentError(f"{what}: unknown device {name!r}; devices: {names}")
            n = v
            if type(v) is not int:
                if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                    raise InvalidArgumentError(f"{what}[{name!r}] must be an integer, got {v!r}")
                n = int(v)
            if not 0 <= n <= hi:
                raise InvalidArgumentError(f"{what}[{name!r}] must be in 0..{_bound(hi)}, got {v!r}")
            at.append(idx[0])
            got.append(n)
        out = np.full(len(names), default, dtype=np.int64)
        if at:
            out[at] = got
        return out

    def _per_device_array(self, what: str, values: object, hi: int) -> np.ndarray:
        """``values`` as one int64 per device, in device order, each in -1..hi (-1: not
        reported). Checked on a copy, which is what the core gets: the caller's array may
        change under another thread while the core (without the GIL) reads this one."""
        n = len(self._names)
        kind = "a mapping of device names to integers, or one integer per device in device order"
        if isinstance(values, np.ma.MaskedArray):
            raise InvalidArgumentError(f"{what} must not be a masked array (give every device a value; -1: not reported)")
        if isinstance(values, np.ndarray):
            arr = np.array(values, copy=True, subok=False)  # (checked below, then handed on)
        elif isinstance(values, (list, tuple)):
            if len(values) != n:
                raise InvalidArgumentError(f"{what} must have one value per device ({n}), got {len(values)}")
            for i, v in enumerate(values):
                if type(v) is bool or not isinstance(v, numbers.Integral):
                    raise InvalidArgumentError(f"{what} must hold integers, got {_brief(v)} at {i}")
                if not -(2**63) <= int(v) < 2**63:
                    raise InvalidArgumentError(f"{what}[{i}] (device {self._names[i]!r}) must be in -1..{_bound(hi)} "
                                               f"(-1: not reported), got {int(v)}")
            arr = np.array([int(v) for v in values], dtype=np.int64)
        else:
            raise InvalidArgumentError(f"{what} must be {kind}, got {_brief(values)}")
        if arr.dtype.kind not in "iu" or arr.ndim != 1:
            raise InvalidArgumentError(
                f"{what} must be {kind}: a one-dimensional integer array, got dtype {arr.dtype} and shape {arr.shape}"
            )
        if arr.shape[0] != n:
            raise InvalidArgumentError(f"{what} must have one value per device ({n}), got {arr.shape[0]}")
        if n and (int(arr.min()) < -1 or int(arr.max()) > hi):
            at = int(np.argmax((arr < -1) | (arr > hi)))
            raise InvalidArgumentError(
                f"{what}[{at}] (device {self._names[at]!r}) must be in -1..{_bound(hi)} (-1: not reported), "
                f"got {int(arr[at])}"
            )
        return arr.astype(np.int64, copy=False)

    def complete(
        self, request_id: int, now: Optional[float] = None, *, output_tokens: Optional[int] = None
    ) -> None:
        """Report that an in-flight request finished successfully.

        Args:
            request_id: the id ``submit`` returned.
            now: the time it finished (default: the scheduler's clock).
            output_tokens: tokens it generated, if known (0..1e7). The device's
                service-time model learns from it instead of ``max_new_tokens``.

        Raises:
            UnknownRequestError: the id was never issued.
            RequestStateError: the request is not in flight (queued, or already ended).
            InvalidArgumentError: a bad ``output_tokens``.
        """
        # Fast path: an int id, a float time and no output_tokens go to the core as they are
        # (complete_plain returns NotImplemented, having done nothing, for anything else).
        if now is None:
            now = self._clock()
        core = self._direct
        if core is not None and core.complete_plain(request_id, now, output_tokens) is None:
            return
        out = -1
        if output_tokens is not None:
            if isinstance(output_tokens, bool) or not isinstance(output_tokens, numbers.Integral) or output_tokens < 0:
                raise InvalidArgumentError(f"output_tokens must be an integer >= 0 (or None), got {output_tokens!r}")
            if output_tokens > MAX_TOKENS:
                raise InvalidArgumentError(f"output_tokens must be in 0..{MAX_TOKENS} (or omitted), got {output_tokens!r}")
            out = int(output_tokens)
        self._core.complete(_request_id(request_id), self._time(now), out)

    def estimate_service(self, device: str, prompt_tokens: float, steps: float, batch: float = 1) -> float:
        """Estimated seconds for a batch on a device at its current clock: ``prompt_tokens``
        of prefill in all, ``steps`` decode steps, ``batch`` sequences. From the device's
        service model (seeded by its ``prefill_s_per_token``/``decode_step_s``/
        ``decode_s_per_seq`` and learned from completions), else from the default work
        per token on its capacity (``docs/batching.md``)."""
        if not isinstance(device, str) or device not in self._names:
            raise InvalidArgumentError(f"unknown device {device!r}; devices: {self._names}")
        idx = self._names.index(device)
        return float(
            self._core.estimate_service(
                idx, _real_arg("prompt_tokens", prompt_tokens), _real_arg("steps", steps), _real_arg("batch", batch)
            )
        )

    def preemptions(self, request_id: int) -> tuple[int, float]:
        """``(times evicted, seconds it ran before those evictions)`` of a live request.

        Raises:
            UnknownRequestError: never issued. RequestStateError: it already ended.
        """
        n, progress = self._core.preemption_info(_request_id(request_id))
        return int(n), float(progress)

    def complete_many(self, request_ids: Iterable[int], now: Optional[float] = None) -> None:
        """Report many completions in one call (coalesced, as interrupt coalescing does).

        All or none: if any id is not in flight, or one is listed twice, nothing is
        completed and the error names the first bad element.

        Raises:
            UnknownRequestError: an id was never issued (or is < 1).
            RequestStateError: an id is not in flight, or is listed twice.
            RequestTypeError: an element is not an integer id (a bool included), or an
                array is not of integers.
            InvalidArgumentError: an array that is not 1-d, or ``now`` not a number.
        """
        ids = _id_array(request_ids)
        self._core.complete_many(ids, self._time(now))

    def fail(
        self,
        request_id: int,
        now: Optional[float] = None,
        *,
        retryable: bool = False,
        error: str = "",
    ) -> bool:
        """Report that an in-flight request failed.

        With ``retryable=True`` and tries left (``Config.max_retries``) the request waits
        out a backoff (status ``'retrying'``; ``Config.retry_base``/``retry_cap``,
        exponential with jitter) and is then queued again at a step, keeping its place by
        arrival time; ``StepResult.next_step_at`` includes the next backoff's end. If the
        retry could not start before its deadline, it ends as failed at once with that
        reason. Otherwise it ends as failed, and requests that depend on it fail with a
        reason naming it and ``error``.

        ``error`` is kept to ``capsched.config.MAX_ERROR_CHARS`` (4,096) characters: a
        longer text is cut to its first 4,096 characters followed by
        `` [... cut: N characters in all]`` (not refused, so a failing worker's report
        is never lost; each dependent's reason holds its own copy of the text).

        Returns:
            True if it was re-queued, False if it ended as failed.

        Raises:
            UnknownRequestError: the id was never issued.
            RequestStateError: the request is not in flight.
            InvalidArgumentError: ``retryable`` is not a bool or ``error`` not a str.
        """
        if not isinstance(retryable, bool):
            raise InvalidArgumentError(f"retryable must be a bool, got {retryable!r}")
        if not isinstance(error, str):
            raise InvalidArgumentError(f"error must be a str, got {type(error).__name__}")
        error = _error_text(error)
        return self._core.fail(_request_id(request_id), self._time(now), retryable, error)

    def cancel(self, request_id: int) -> bool:
        """Cancel a waiting, queued or in-flight request.

        Returns False if the request had already ended (nothing changes). Requests that
        depend on it fail. A cancelled in-flight request frees its place in the batch;
        the server should stop running it.

        Raises:
            UnknownRequestError: the id was never issued.
        """
        return self._core.cancel(_request_id(request_id))

    # ------------------------------------------------------------------ devices

    def set_clock(
        self, device: str, clock_mhz: float, max_clock_mhz: Optional[float] = None, *, now: Optional[float] = None
    ) -> None:
        """Tell the scheduler a device's clock (frequency invariance, thermal pressure).

        ``clock_mhz`` is the clock the device can run at now (0 < clock <= max), for
        example NVML's SM clock while it is busy, or the throttled ceiling; the device's
        usable capacity scales with ``clock / max``, and utilization it accumulates from
        ``now`` on is scaled the same way. ``max_clock_mhz`` defaults to the one known.

        ``device`` may name a device that was split into slices: every slice is set. Each
        slice is checked first (a max clock known or given, ``0 < clock <= max``), so a
        refused call changes none of them.

        Raises:
            InvalidArgumentError: an unknown device; ``clock_mhz``, ``max_clock_mhz`` or
                ``now`` not a number; ``max_clock_mhz`` not finite or not > 0; no max
                clock known for the device (or one of its slices) and none given;
                ``clock_mhz`` not in (0, max clock] (the message names the slice).
        """
        indices = self._device_indices(device)
        mx: Optional[float] = None
        if max_clock_mhz is not None:
            mx = _real_arg("max_clock_mhz", max_clock_mhz)
            if not (math.isfinite(mx) and mx > 0.0):
                raise InvalidArgumentError(
                    f"max_clock_mhz must be a finite number > 0 (the max clock in MHz), got {_brief(max_clock_mhz)}"
                )
        cur, t = _real_arg("clock_mhz", clock_mhz), self._time(now)
        for idx in indices:  # every slice checked before any changes
            name = self._names[idx]
            what = f"device {name!r}" if name == device else f"device {device!r}: its slice {name!r}"
            m = mx if mx is not None else self._max_clock[idx]
            if m is None:
                raise InvalidArgumentError(
                    f"{what} has no known max clock: pass max_clock_mhz (or describe the device "
                    "with max_clock_mhz or a model)"
                )
            if not (cur > 0.0 and cur <= m):
                raise InvalidArgumentError(f"{what}: current clock must be in (0, max clock {m:g}], got {_brief(clock_mhz)}")
            if not math.isfinite(cur / m) or cur / m < sys.float_info.min:
                raise InvalidArgumentError(
                    f"{what}: current clock {cur:g} is too small against max clock {m:g}: their ratio underflows to 0"
                )
        for idx in indices:
            self._core.set_clock(idx, cur, _NAN if mx is None else mx, t)
            self._clocked[idx] = True
            if mx is not None:
                self._max_clock[idx] = mx

    def set_pressure(self, device: str, pressure: float, *, now: Optional[float] = None) -> None:
        """Share of a device's capacity taken by work this scheduler does not place
        (foreign processes on the GPU), in [0, 1). Usable capacity =
        original capacity x clock scale x (1 - pressure), as Linux subtracts RT, IRQ and
        thermal pressure.

        ``device`` may name a device that was split into slices: every slice is set (or,
        when the call is refused, none).

        Raises:
            InvalidArgumentError: an unknown device; ``pressure`` or ``now`` not a
                number; ``pressure`` not in [0, 1).
        """
        indices = self._device_indices(device)
        p, t = _real_arg("pressure", pressure), self._time(now)
        if not 0.0 <= p < 1.0:  # (checked here too: refused before any slice changes)
            raise InvalidArgumentError(f"pressure must be in [0, 1), got {_brief(pressure)}")
        for idx in indices:
            self._core.set_pressure(idx, p, t)

    def class_estimate(self, request_class: Optional[str] = None) -> Optional[dict[str, float]]:
        """util_est of a request class: ``{'ewma', 'last', 'estimate'}`` in invariant
        seconds of work per token (seconds on the strongest device at full clock), or
        None if no request of the class has completed yet."""
        if request_class is not None and not isinstance(request_class, str):
            raise InvalidArgumentError(f"request_class must be a str or None, got {request_class!r}")
        idx = self._classes.get(request_class)
        if idx is None:
            return None
        seen, ewma, last, estimate = self._core.class_estimate(idx)
        return {"ewma": ewma, "last": last, "estimate": estimate} if seen else None

    def class_util(self, request_class: Optional[str] = None) -> float:
        """PELT utilization of a request class at the latest time seen: the device
        capacity its in-flight requests have occupied (1024 = the strongest device kept
        full), summed over devices and decayed like a device's ``util_avg`` (half-life
        32 PELT periods). Each in-flight request counts ``capacity_orig x clock_scale /
        (max_batch_size x max_inflight_batches)`` of its device, so the classes' signals
        add up to the devices'. 0.0 for a class never seen."""
        if request_class is not None and not isinstance(request_class, str):
            raise InvalidArgumentError(f"request_class must be a str or None, got {request_class!r}")
        idx = self._classes.get(request_class)
        return 0.0 if idx is None else float(self._core.class_util(idx))

    def fair_share(self) -> dict[str, Any]:
        """The state of the fair share between tenants (``Config.fair_share``):
        ``{"enabled": bool, "virtual_time": float, "tenants": {name: {"weight": float,
        "counter": float}}}``. A tenant's counter is the service it has been given
        (``fair_input_weight x prompt tokens + fair_output_weight x max_new_tokens`` per
        dispatch, less unused output reported at completion, over its weight); the
        virtual time is where a tenant whose backlog starts again resumes from
        (docs/policies.md). Counters are not checkpointed: a restored scheduler starts
        every tenant at 0."""
        with self._lock:
            tenants = list(self._tenants.items())
        core = self._core
        return {
            "enabled": bool(self._config.fair_share),
            "virtual_time": float(core.fair_virtual_time()),
            "tenants": {
                name: {"weight": float(core.tenant_weight(idx)), "counter": float(core.tenant_counter(idx))}
                for name, idx in tenants
            },
        }

    def _device_indices(self, device: object) -> list[int]:
        if isinstance(device, str):
            indices = self._index.get(device)
            if indices is None:
                raise InvalidArgumentError(f"unknown device {device!r}; devices: {self._names}")
            return indices
        raise InvalidArgumentError(f"device must be a device name (str), got {device!r}")

    # ------------------------------------------------------------------ queries

    def status(self, request_id: int) -> str:
        """``'waiting'`` (on dependencies), ``'queued'``, ``'in_flight'``, ``'retrying'``
        (failed retryably, waiting out its backoff), ``'completed'``, ``'failed'``,
        ``'expired'`` or ``'cancelled'``.

        Raises:
            RequestTypeError: ``request_id`` is not an int (a bool included).
            UnknownRequestError: the id was never issued (or is < 1).
        """
        return _STATUS[self._core.status(_request_id(request_id))]

    def stats(self) -> dict[str, Any]:
        """Counters and gauges.

        Keys: ``accepted``, ``completed``, ``failed``, ``expired``, ``cancelled``,
        ``retried``, ``dispatched`` (dispatches, retries included), ``batches``,
        ``waiting``, ``queued``, ``in_flight``, ``now`` (latest time seen, None before
        any), ``policy``, ``max_batch_size``, ``dynamic_batching``, ``conservation_ok``
        (accepted == ended + live), and ``devices``: one dict per device with ``name``,
        ``capacity`` (normalised, strongest = 1024), ``max_inflight_batches``,
        ``inflight_batches``, ``inflight_requests``, ``dispatched_requests``,
        ``dispatched_batches``, ``completed_requests``, ``capacity_orig`` (before
        clock and pressure), ``clock_scale``, ``pressure``, ``util_avg`` (PELT),
        ``placed_util`` (sum of in-flight requests' utilization), ``kv_budget`` (-1 =
        unlimited) and ``kv_used``. ``placed_fitting`` and ``placed_fallback`` count
        placements on a device the request fitted and fallbacks to the largest spare
        capacity when none did; ``misfits`` counts in-flight requests found not to fit
        their device after its capacity dropped (and queued deadline-class requests its
        reduced capacity can no longer hold), ``migrated`` the in-flight ones moved to a
        bigger device, ``readmitted`` the queued deadline-class ones whose reserved
        bandwidth moved to another device.

        Also: ``rejected`` (submits refused by back-pressure or deadline admission;
        the only thing a refused call changes), ``retrying`` (waiting out a retry backoff), ``queued_deadline``,
        ``queued_strict``, ``queued_normal``, ``queued_background`` (queued requests by
        scheduling class), ``held`` and ``trimmed`` (batches held back to fill, requests
        cut by a preferred size), ``preempted``, ``deferred`` (placements passed over
        for a device in time), ``breaker_trips``; and per device ``breaker``
        (``'closed'``, ``'open'``, ``'half_open'``), ``consecutive_failures``,
        ``fail_rate``, ``breaker_trips``, ``batch_limit`` (adaptive batch size limit),
        ``preempted_requests``, ``service_samples`` and ``service_multipliers`` (the
        service-time model, docs/batching.md), ``dl_bw`` (admitted deadline bandwidth).
        """
        s = self._core.stats()
        for name, d in zip(self._names, s["devices"]):
            d["name"] = name
        if not math.isfinite(s["now"]):
            s["now"] = None
        s["policy"] = self._policy
        with self._lock:
            s["rejected"] = self._rejected
        s["max_batch_size"] = self._max_batch_size
        s["dynamic_batching"] = self._dynamic_batching
        ended = s["completed"] + s["failed"] + s["expired"] + s["cancelled"]
        s["conservation_ok"] = s["accepted"] == ended + s["waiting"] + s["queued"] + s["in_flight"] + s["retrying"]
        return s

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Write the whole state to ``path`` atomically (temporary file, fsync, rename):
        queues, in-flight requests and their batches, dependency edges, retry timers,
        utilization signals, service models, breakers, counters. Versioned and
        checksummed; ``docs/operations.md`` gives the format. The previous file at
        ``path`` stays intact until the new one is complete. Checkpoints of one scheduler
        from several threads are made one at a time, so the file holds the latest state
        taken (other calls go on meanwhile: a checkpoint holds the scheduler's lock only
        while it takes the state).

        Raises:
            CheckpointError: the file cannot be written.
        """
        from .checkpoint import save_checkpoint

        with self._checkpoint_lock:
            save_checkpoint(self, path)

    @classmethod
    def restore(
        cls,
        path: Union[str, "os.PathLike[str]"],
        *,
        clock: Optional[Callable[[], float]] = None,
        journal: Optional[Union[str, "os.PathLike[str]"]] = None,
        sync: bool = True,
    ) -> "Scheduler":
        """Build a scheduler from a checkpoint written by :meth:`checkpoint`. What was in
        flight is queued again (the server lost it: run it again, keeping its arrival);
        everything else continues as it was.

        ``clock`` is the restored scheduler's clock (default ``time.monotonic``), as for
        the constructor: a checkpoint does not keep it.

        With ``journal``: the journal's changes after the checkpoint are replayed, what was
        in flight is queued again, a fresh checkpoint is written over ``path``, the
        journal is started afresh and stays open (:meth:`open_journal`).

        Raises:
            CheckpointError: unreadable, truncated, corrupt, from a newer version, or
                inconsistent (the message says which); a damaged journal line, a journal
                of another scheduler's history, or a journal path that is not a regular
                file or is the checkpoint itself (nothing is written then).
            InvalidArgumentError: ``sync`` is not a bool (nothing is read or written).
        """
        from .checkpoint import _check_journal_beside, _checked_path, _fsync_dir, load_checkpoint
        from .journal import replay_journal

        if not isinstance(sync, bool):  # (before the checkpoint and journal are rewritten)
            raise InvalidArgumentError(f"sync must be a bool, got {_brief(sync)}")
        if journal is not None:  # (an int would be read as a file descriptor)
            journal = _checked_path(journal, "journal")
            _check_journal_beside(path, journal)  # (before anything is read or written)
        s: Scheduler = load_checkpoint(path, clock=clock)
        if journal is not None and os.path.exists(journal):
            replay_journal(s, journal)
        st = s._core.stats()
        if st["in_flight"]:
            s._core.requeue_in_flight(st["now"])  # the server lost them: run them again
        if journal is None:
            return s
        if s._lineage is None:  # (a checkpoint from before lineages: its history starts one)
            s._lineage = secrets.token_hex(16)
        s.checkpoint(path)
        # The journal starts afresh: an empty file renamed over it, then the directory
        # fsynced, so that a crash leaves the old journal (whose lines the new checkpoint
        # already holds: replaying it is skipped by seq) or the empty one.
        tmp = f"{os.fspath(journal)}.new"
        with open(tmp, "w", encoding="utf-8") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, journal)
        _fsync_dir(journal)
        s.open_journal(journal, sync=sync)
        return s

    def open_journal(self, path: Union[str, "os.PathLike[str]"], *, sync: bool = True) -> None:
        """Append every accepted change to ``path`` from now on (``capsched.journal``):
        with a checkpoint, ``Scheduler.restore(checkpoint, journal=path)`` recovers
        everything accepted up to a crash. ``sync=True`` fsyncs each line before the call
        returns. While a journal is open the scheduler's calls are serialised. Open it
        (after a checkpoint) while no other thread is calling the scheduler: a call that
        another thread makes between the two is in neither.

        If a write to the journal fails later (disk full, I/O error), the call that wrote
        it raises :class:`~capsched.errors.JournalError`: its change was made but is not
        durable (``result`` holds the core call's result), and every later change is
        refused with JournalError, changing nothing, until :meth:`close_journal`; then
        take a checkpoint (``Scheduler.restore`` requeues what was in flight) and open a
        new journal.

        The file must be new or empty, or be the journal this scheduler closed last (its
        lines then go on): a file holding another history's entries is refused
        (``Scheduler.restore(checkpoint, journal=path)`` goes on from an old journal).
        Its first line carries the scheduler's lineage, so that it replays only on this
        scheduler's checkpoints.

        Raises:
            CheckpointError: the file cannot be opened or written (no journal is open).
            InvalidArgumentError: a journal is already open, ``sync`` is not a bool, or
                the file already holds entries this scheduler did not just write."""
        from .checkpoint import _checked_path
        from .journal import Journal, JournalCore

        path = _checked_path(path, "journal")
        if not isinstance(sync, bool):
            raise InvalidArgumentError(f"sync must be a bool, got {_brief(sync)}")
        # Under self._lock: two threads opening at once must not both succeed (one
        # journal would be dropped, its file left open and empty).
        with self._lock:
            if isinstance(self._core, JournalCore):
                raise InvalidArgumentError("a journal is already open; close_journal() first")
            self._check_new_journal(path)
            inner = self._core
            core = JournalCore(inner, Journal(path, sync=sync, first_seq=self._journal_seq + 1))
            self._core = core
            self._direct = None
            try:
                self._journal_names(all_names=True)
            except JournalError as exc:  # (its first line could not be written: no journal is open)
                self._core = inner
                self._direct = inner
                core.closed = True
                core.journal.close()
                raise CheckpointError(f"cannot write journal {str(core.journal.path)!r}: {exc.__cause__}") from None

    def close_journal(self) -> None:
        """Stop journaling (the file stays as it is)."""
        from .journal import JournalCore

        core = self._core
        if isinstance(core, JournalCore):
            # (under the journal's lock: a call in progress in another thread has changed
            # the core and still writes its line; closing the file under it would fail
            # that call after its change was made, and lose its line. A call that took
            # the wrapper before this and reaches its lock after goes through to the core
            # unjournaled: JournalCore.closed.)
            with self._lock, core.lock:
                self._journal_seq = core.journal.seq
                core.closed = True
                core.journal.close()
                self._closed_journal = (os.path.realpath(core.journal.path), core.journal.seq)
                inner: _core.Core = core._inner
                self._core = inner
                self._direct = inner

    def _check_new_journal(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """InvalidArgumentError for a journal path that holds entries this scheduler did
        not just write: appending would number its lines anew after another history's,
        and the next restore would refuse the file. A journal it closed can be reopened
        (the lines go on from its seq)."""
        try:
            st = os.stat(path)
        except OSError:
            return  # (a path that cannot be opened is Journal's error to report)
        if not stat.S_ISREG(st.st_mode):
            return  # (a device or FIFO holds no entries to number after)
        if st.st_size == 0 or self._closed_journal == (os.path.realpath(path), self._journal_seq):
            return
        raise InvalidArgumentError(
            f"journal {os.fspath(path)!r} already holds entries ({st.st_size} bytes) that this scheduler did not "
            "just write: Scheduler.restore(checkpoint, journal=path) replays them; else move the file away"
        )

    def _journal_names(self, all_names: bool = False) -> None:
        from .journal import JournalCore

        core = self._core
        if isinstance(core, JournalCore):
            with core.lock:
                core.refuse_if_failed()
                extra = {"lineage": self._lineage} if all_names and self._lineage is not None else {}
                core.write(
                    core.journal.encode(
                        "names",
                        tenants=[[k, v] for k, v in self._tenants.items()],
                        classes=[[k, v] for k, v in self._classes.items()],
                        **extra,
                    )
                )

    def _checkpoint_payload(self) -> dict[str, Any]:
        from .checkpoint import _device_dicts

        cfg = {f.name: getattr(self._config, f.name) for f in dataclasses.fields(Config) if f.name != "tokenizer"}
        cfg["preferred_batch_sizes"] = list(cfg["preferred_batch_sizes"])
        cfg["tenant_weights"] = [[k, v] for k, v in cfg["tenant_weights"].items()]  # (None is no JSON key)
        from .journal import JournalCore

        core = self._core
        # One consistent cut. With a journal open, its lock is held from before the
        # journal's seq is read until the core's state is exported: a journaled call
        # changes the core first and writes its line (the seq) after, so without it a
        # checkpoint could hold a call its seq says is still to replay. (Lock order:
        # self._lock, then the journal's, as _submit_naming takes them.)
        with self._lock, (core.lock if isinstance(core, JournalCore) else contextlib.nullcontext()):
            tenants = [[k, v] for k, v in self._tenants.items()]
            classes = [[k, v] for k, v in self._classes.items()]
            seq = core.journal.seq if isinstance(core, JournalCore) else self._journal_seq
            state = core.export_state(columnar=True)  # (version 2: the requests by column)
            rejected = self._rejected
        return {
            "devices": _device_dicts(self._devices),
            "policy": self._policy,
            "max_batch_size": self._max_batch_size,
            "dynamic_batching": self._dynamic_batching,
            "config": cfg,
            "tenants": tenants,
            "classes": classes,
            "clocked": list(self._clocked),
            "journal_seq": seq,
            "rejected": rejected,
            **({"lineage": self._lineage} if self._lineage is not None else {}),
            "core": state,
        }

    @classmethod
    def _from_checkpoint_payload(
        cls, payload: dict[str, Any], *, clock: Optional[Callable[[], float]] = None
    ) -> "Scheduler":
        cfg = dict(payload["config"])
        cfg["preferred_batch_sizes"] = tuple(cfg.get("preferred_batch_sizes", ()))
        weights = cfg.get("tenant_weights", [])
        if not isinstance(weights, list) or not all(isinstance(p, list) and len(p) == 2 for p in weights):
            raise CheckpointError(f"config.tenant_weights must be a list of [tenant, weight] pairs, got {weights!r}")
        cfg["tenant_weights"] = {k: v for k, v in weights}
        devices = [Device(**{**d, "tenants": tuple(d.get("tenants") or ())}) for d in payload["devices"]]
        s = cls(
            devices,
            policy=payload["policy"],
            max_batch_size=payload["max_batch_size"],
            enable_dynamic_batching=payload["dynamic_batching"],
            config=Config(**cfg),
            clock=clock if clock is not None else time.monotonic,
        )
        tenants = {k: int(v) for k, v in payload["tenants"]}
        classes = {k: int(v) for k, v in payload["classes"]}
        if tenants.get(None) != 0 or classes.get(None) != 0:
            raise CheckpointError("the tenant and class tables must map None to 0")
        if sorted(tenants.values()) != list(range(len(tenants))) or sorted(classes.values()) != list(
            range(len(classes))
        ):
            raise CheckpointError("the tenant and class tables must number their names 0, 1, 2, ...")
        for name, idx in s._tenants.items():  # the devices' tenants, numbered as before
            if tenants.get(name) != idx:
                raise CheckpointError(f"tenant {name!r} is numbered differently from its devices")
        clocked = payload["clocked"]
        if len(clocked) != len(devices):
            raise CheckpointError("'clocked' needs one flag per device")
        s._tenants = tenants
        s._classes = classes
        s._apply_tenant_weights()
        s._clocked = [bool(c) for c in clocked]
        state = payload["core"]
        version = state.get("version")
        if type(version) is not int or version not in (1, 2):
            raise CheckpointError(f"the core state has an unknown version {version!r}")
        # (1: the requests as a list of objects; 2: by column, numpy arrays, as
        # capsched.checkpoint decodes them)
        requests = state.get("requests")
        if version == 1 and not isinstance(requests, list):
            raise CheckpointError(f"a version 1 core state lists its requests, got {type(requests).__name__}")
        if version == 2 and not (isinstance(requests, dict) and all(isinstance(v, np.ndarray) for v in requests.values())):
            raise CheckpointError("a version 2 core state holds its requests as columns (numpy arrays)")
        _check_names_used(state.get("requests"), len(tenants), len(classes))
        s._core.import_state(state)
        for i, dev in enumerate(state.get("devices") or ()):  # (the max clocks set_clock gave)
            if i < len(s._max_clock) and (s._clocked[i] or s._max_clock[i] is not None):
                s._max_clock[i] = float(dev["max_clock"])
        seq = payload.get("journal_seq", 0)
        if not isinstance(seq, int) or seq < 0:
            raise CheckpointError(f"journal_seq must be an integer >= 0, got {seq!r}")
        s._journal_seq = seq
        lineage = payload.get("lineage")
        if lineage is not None and not (isinstance(lineage, str) and 0 < len(lineage) <= 64 and lineage.isalnum()):
            raise CheckpointError(f"lineage must be a string of 1..64 letters and digits, got {lineage!r}")
        s._lineage = lineage
        rejected = payload.get("rejected", 0)
        if not isinstance(rejected, int) or rejected < 0:
            raise CheckpointError(f"rejected must be an integer >= 0, got {rejected!r}")
        s._rejected = rejected
        return s

    def _replay(self, entries: Any) -> int:
        """Apply journal entries after this scheduler's journal_seq; returns the last seq."""
        last = self._journal_seq
        for e in entries:
            theirs = e.get("lineage") if e["op"] == "names" else None
            if theirs is not None and self._lineage is not None and theirs != self._lineage:
                raise CheckpointError(
                    f"journal seq {e['seq']} belongs to another scheduler's history (lineage {_brief(theirs)}, "
                    f"the checkpoint's {self._lineage!r}): it was not written after this checkpoint"
                )
            if e["seq"] <= last:
                continue
            if e["seq"] != last + 1:
                raise CheckpointError(f"the journal skips from seq {last} to {e['seq']}: entries are missing")
            if e["op"] == "names":
                tenants = {k: int(v) for k, v in e["tenants"]}
                classes = {k: int(v) for k, v in e["classes"]}
                for what, new, old in (("tenant", tenants, self._tenants), ("class", classes, self._classes)):
                    if sorted(new.values()) != list(range(len(new))) or any(new.get(k) != v for k, v in old.items()):
                        raise CheckpointError(
                            f"journal seq {e['seq']}: the {what} table must keep every name's number and number "
                            "new names on from there"
                        )
                self._tenants = tenants
                self._classes = classes
                self._apply_tenant_weights()
            elif e["op"] == "rejected":
                n = e.get("n")
                if type(n) is not int or n < 1:
                    raise CheckpointError(f"journal seq {e['seq']}: 'rejected' needs a count n >= 1, got {n!r}")
                self._rejected += n
            else:
                from .journal import MUTATING_CALLS

                if e["op"] not in MUTATING_CALLS:
                    raise CheckpointError(f"journal seq {e['seq']}: unknown call {e['op']!r}")
                getattr(self._core, e["op"])(*e["args"])
                if e["op"] == "set_clock":
                    idx = int(e["args"][0])
                    self._clocked[idx] = True
                    mx = float(e["args"][2])
                    if not math.isnan(mx):
                        self._max_clock[idx] = mx
            last = e["seq"]
        self._journal_seq = last
        return last

    def check_invariants(self) -> bool:
        """Full O(n) consistency check of the core's structures (for tests)."""
        return bool(self._core.check_invariants())

    def reserve(self, n: int) -> None:
        """Pre-size storage for ``n`` live requests so that submitting does not allocate.

        Raises:
            InvalidArgumentError: ``n`` is not an integer in 0..MAX_RESERVE.
            MemoryError: the machine cannot hold that much (about 125 bytes a request);
                what was already accepted is unchanged, and the scheduler still works."""
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise InvalidArgumentError(f"reserve() takes a count >= 0, got {n!r}")
        if n > _limits.MAX_RESERVE:
            raise InvalidArgumentError(f"reserve() takes a count up to {_limits.MAX_RESERVE}, got {n!r}")
        self._core.reserve(int(n))

    # ------------------------------------------------------------------ helpers

    def _time(self, now: Optional[float]) -> float:
        if now is None:
            now = self._clock()
        if type(now) is float:  # fast path
            return now
        return _real_arg("now", now, "a number of seconds")

    def _estimate(self, prompt: Optional[str]) -> int:
        if prompt is None:
            raise InvalidRequestError("give a prompt or prompt_tokens")
        if len(prompt) > _limits.MAX_PROMPT_CHARS:
            raise InvalidRequestError(
                f"prompt has {len(prompt)} characters, over the limit of {_limits.MAX_PROMPT_CHARS}"
            )
        n = self._count_tokens(prompt)
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise InvalidRequestError(f"the tokenizer returned {n!r} for a prompt; expected an int >= 0")
        if n > MAX_TOKENS:
            raise InvalidRequestError(
                f"prompt_tokens must be in 0..{MAX_TOKENS}, got {int(n)} (the tokenizer's count for the prompt)"
            )
        return int(n)


#: The seed's name for :class:`Scheduler` (same class).
OpenAutoGLMScheduler = Scheduler


_E = TypeVar("_E", bound=Exception)
_R = TypeVar("_R")


def _tenant_named(exc: _E, tenant: Optional[str], tenant_id: Optional[int]) -> _E:
    """The core's error with the tenant named as the caller knows it, not by its number:
    "for tenant N:" (QueueFullError) and "no device is open to tenant N" (tenant_id None:
    as it is)."""
    text = str(exc)
    if tenant_id is None:
        return exc
    for form in ("for tenant {}:", "no device is open to tenant {}"):
        core = form.format(tenant_id)
        if core in text:
            return type(exc)(text.replace(core, form.format(repr(tenant)), 1))
    return exc


def _error_text(error: str) -> str:
    """fail()'s ``error`` as the core takes it: at most MAX_ERROR_CHARS characters (a
    longer text cut and marked), lone surrogates escaped (they cannot cross as UTF-8)."""
    limit = _limits.MAX_ERROR_CHARS
    n = len(error)
    cut = n > limit
    if cut:
        error = error[:limit]
    if not error.isascii():  # lone surrogates (from decoding with surrogateescape) cannot cross as UTF-8
        error = error.encode("utf-8", "backslashreplace").decode("utf-8")
        if len(error) > limit:  # (escapes lengthen it)
            error, cut = error[:limit], True
    return f"{error} [... cut: {n} characters in all]" if cut else error


def _brief(value: object) -> str:
    """``repr(value)`` for a message, cut to 80 characters; an integer too long for repr
    (over 4,300 digits: Python refuses) is named by its size."""
    try:
        r = repr(value)
    except ValueError:
        return _brief_size(value)
    return r if len(r) <= 80 else r[:77] + "..."


def _real_arg(name: str, value: object, what: str = "a number") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(f"{name} must be {what}, got {_brief(value)}")
    try:
        return float(value)
    except OverflowError:  # an int beyond any float
        raise InvalidArgumentError(f"{name} must be {what} within the range of a float, got {_brief(value)}") from None


def _request_id(x: object) -> int:
    if type(x) is int and 0 < x < 18446744073709551616:  # fast path
        return x
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise RequestTypeError(f"request ids are ints, got {x!r}")
    v = int(x)
    if not 1 <= v < 2**64:
        raise UnknownRequestError(f"unknown request {_brief(v)}: ids start at 1")
    return v


def _id_array(ids: Iterable[int]) -> np.ndarray:
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1:
            raise InvalidArgumentError(f"request ids must be a 1-d array, got shape {ids.shape}")
        if ids.dtype.kind not in "iu":
            raise RequestTypeError(f"request ids must be integers, got an array of {ids.dtype}")
        if ids.dtype.kind == "i" and ids.size and ids.min() < 1:
            raise UnknownRequestError(f"unknown request {int(ids.min())}: ids start at 1")
        return np.ascontiguousarray(ids, dtype=np.uint64)
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise RequestTypeError(f"request ids must be an iterable of ints, got {ids!r}")
    return np.fromiter((_request_id(i) for i in ids), dtype=np.uint64)


def _dependency_ids(deps: tuple[Any, ...], owner: object) -> np.ndarray:
    out = []
    for i, d in enumerate(deps):
        if isinstance(d, InferenceRequest):
            rid = d.id
            if rid is None:
                raise DependencyError(f"depends_on names an InferenceRequest that was not submitted: {d!r}")
            # (its public id can be set by hand: checked as a plain id is)
            if isinstance(rid, (bool, np.bool_)) or not isinstance(rid, numbers.Integral) or int(rid) < 1:
                raise RequestTypeError(
                    f"depends_on[{i}] is an InferenceRequest whose id is {_brief(rid)}, not a request id "
                    "(an int >= 1)"
                )
            if d._owner is not None and d._owner is not owner:
                raise DependencyError(
                    f"depends_on names an InferenceRequest that another Scheduler object accepted (id {rid} there; "
                    "one restored from a checkpoint is another object too): give the id instead"
                )
            d = rid
        v = int(d)
        if not 1 <= v < 2**64:  # numpy would raise a bare OverflowError
            raise DependencyError(f"depends_on names request {_brief(v)}, which this scheduler never issued")
        out.append(v)
    return np.array(out, dtype=np.uint64)


def _asarray(name: str, value: Any) -> np.ndarray:
    if isinstance(value, (list, tuple)) and value:
        # numpy makes [1, True] an int array and [0.5, True] a float one: a bool among
        # numbers is refused, as an array of bools is (one of bools alone is refused below).
        kinds = set(map(type, value))
        if (bool in kinds or np.bool_ in kinds) and not kinds <= {bool, np.bool_}:
            i, v = next((i, v) for i, v in enumerate(value) if isinstance(v, (bool, np.bool_)))
            raise RequestTypeError(f"{name}[{i}] is {v!r}, a bool: {name} must be numbers")
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:  # (ragged nesting, say)
        raise InvalidRequestError(f"{name} must be a scalar or a 1-d array: {exc}") from None


def _int_array(name: str, value: Any, n: Optional[int]) -> np.ndarray:
    a = _asarray(name, value)
    if a.dtype == object and a.size and all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in a.flat
    ):  # ints (numpy keeps Python ints beyond int64 as objects)
        big = next((v for v in a.flat if not -(2**63) <= v < 2**63), None)
        if big is not None:
            raise InvalidRequestError(f"{name} holds {int(big)}, beyond any token limit")
        a = a.astype(np.int64)
    if a.dtype.kind == "f":
        a = a.astype(np.float64, copy=False)  # (float16: comparing with 2**63 would overflow a cast)
        finite = np.isfinite(a)
        if not finite.all() or (a != np.floor(a)).any():
            bad = a[~finite | (a != np.floor(np.where(finite, a, 0)))].flat[0]
            raise InvalidRequestError(f"{name} must hold whole numbers, got {bad!r}")
        if a.size and np.abs(a).max() >= 2.0**63:  # (the cast to int64 would wrap)
            raise InvalidRequestError(f"{name} holds {float(a.flat[np.argmax(np.abs(a))])!r}, beyond any token limit")
    elif a.dtype.kind not in "iub":
        raise RequestTypeError(f"{name} must be integers, got an array of {a.dtype}")
    if a.dtype.kind == "b":
        raise RequestTypeError(f"{name} must be integers, got booleans")
    return _shape(name, a.astype(np.int64, copy=False) if a.dtype.kind != "u" else _from_unsigned(name, a), n)


def _from_unsigned(name: str, a: np.ndarray) -> np.ndarray:
    if a.size and a.max() > np.iinfo(np.int64).max:
        raise InvalidRequestError(f"{name} holds {int(a.max())}, beyond any token limit")
    return a.astype(np.int64)


def _float_array(name: str, value: Any, n: int, *, none_is_nan: bool = False) -> np.ndarray:
    a = _asarray(name, value)
    if a.dtype == object:
        if not none_is_nan and any(v is None for v in a.flat):
            raise RequestTypeError(f"{name} must be numbers, got None")
        # (elements replaced in place of the array's shape: a 2-d array stays 2-d, refused below)
        a = _asarray(name, [_NAN if v is None else v for v in a.flat]).reshape(a.shape)
    if a.dtype.kind not in "fiu":
        raise RequestTypeError(f"{name} must be numbers, got an array of {a.dtype}")
    return _shape(name, a.astype(np.float64, copy=False), n)


def _shape(name: str, a: np.ndarray, n: Optional[int]) -> np.ndarray:
    if a.ndim == 0:
        if n is None:
            a = a.reshape(1)
        else:
            return np.full(n, a, dtype=a.dtype)
    if a.ndim != 1:
        raise InvalidRequestError(f"{name} must be a scalar or a 1-d array, got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise InvalidRequestError(f"{name} has {a.shape[0]} values but prompt_tokens has {n}")
    return np.ascontiguousarray(a)
