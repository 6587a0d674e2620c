"""Scheduler configuration: every tunable with its default, unit and reason."""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import re
import sys
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

if TYPE_CHECKING:  # (imported for annotations only: scheduler and devices import this module)
    from .devices import Device
    from .scheduler import Scheduler

from .errors import ConfigError

__all__ = [
    "Config",
    "POLICIES",
    "SchedulerConfig",
    "ENV_PREFIX",
    "MAX_BATCH_SIZE",
    "MAX_CONFIG_BYTES",
    "MAX_TENANTS",
    "MAX_REQUEST_CLASSES",
    "MAX_PROMPT_CHARS",
    "MAX_ERROR_CHARS",
    "MAX_RESERVE",
    "MAX_TENANT_WEIGHT",
    "MIN_TENANT_WEIGHT",
    "MAX_FAIR_WEIGHT",
    "MIN_PELT_PERIOD",
    "MAX_PELT_PERIOD",
]

POLICIES = ("fcfs", "priority", "edf", "srtf", "weighted")
#: Largest ``max_batch_size`` (the core's ``MAX_BATCH_SIZE``).
MAX_BATCH_SIZE = 65536
#: Largest fair-share weight of a tenant (``Config.tenant_weights``).
MAX_TENANT_WEIGHT = 1e6
#: Smallest fair-share weight of a tenant: a service charge divided by less would
#: overflow the tenant's virtual counter.
MIN_TENANT_WEIGHT = 1e-6
#: Largest ``Config.fair_input_weight`` / ``fair_output_weight`` (service per token).
MAX_FAIR_WEIGHT = 1e6
#: Bounds of ``Config.pelt_period`` (seconds): a shorter period makes the decay
#: underflow (NaN utilization signals), a longer one freezes them.
MIN_PELT_PERIOD = 1e-6
MAX_PELT_PERIOD = 3600.0
#: Most tenants one scheduler numbers, the default tenant (None) included: a submit
#: naming one more new tenant raises InvalidRequestError (docs/limits.md).
MAX_TENANTS = 65536
#: Most request classes, the default class (None) included (the core's kMaxClasses).
MAX_REQUEST_CLASSES = 2**20
#: Longest prompt (characters) the scheduler counts tokens of: 10 characters for each
#: of the MAX_TOKENS tokens a request may have. Longer prompts are refused before the
#: tokenizer runs.
MAX_PROMPT_CHARS = 100_000_000
#: Longest ``error`` text ``Scheduler.fail`` keeps (characters): a longer one is cut to
#: its first MAX_ERROR_CHARS characters and marked (never refused: a failing worker's
#: report is not lost). The core copies the text into the reason of every dependent
#: that fails with it, so it must not be unbounded.
MAX_ERROR_CHARS = 4096
#: Largest ``Scheduler.reserve(n)``: 2**27 (134 million) live requests, about 16 GB.
MAX_RESERVE = 2**27
# Default back-pressure bound (``Config.max_queued``): 2^24 requests not in flight, about
# 2 GB of core records. 0 lifts it.
DEFAULT_MAX_QUEUED = 2**24
# Default and largest ``Config.max_dependents`` (fan-out of one request).
DEFAULT_MAX_DEPENDENTS = 65536
MAX_DEPENDENTS = 2**24
#: Largest config file :meth:`Config.from_toml` reads (bytes): 1 MiB.
MAX_CONFIG_BYTES = 2**20
#: Prefix of the environment variables :meth:`SchedulerConfig.from_env` reads.
ENV_PREFIX = "CAPSCHED_"


@dataclasses.dataclass(frozen=True)
class Config:
    """Tunables of the scheduler. ``docs/policies.md`` gives the exact order they define.

    Attributes:
        weight_urgency: weight of the request's priority in the weighted score
            (default 0.5, unitless, >= 0; the seed's urgency weight).
        weight_resource: weight of the resource term ``0.1 / (u + 0.1)``, where ``u`` is
            the request's tokens over ``resource_scale_tokens`` capped at 1 (default 0.3).
        weight_deadline: weight of the deadline proximity ``1 / (seconds left + 1)``,
            quantised to ``deadline_levels`` steps (default 0.2).
        resource_scale_tokens: tokens (prompt + max new) that count as a full resource
            share (default 4096 tokens, > 0).
        deadline_levels: steps of the deadline proximity term (default 16, 1..1024): each
            queued request is re-keyed at most this many times; the term is within
            ``1 / deadline_levels`` of the exact proximity.
        aging_priority: priority gained per second waited, policy ``priority``
            (default 0.01 / s: 100 s of waiting outranks any priority gap).
        aging_weighted: score gained per second waited, policy ``weighted`` (default 0.01 / s).
        aging_srtf: tokens of credit per second waited, policy ``srtf`` (default 64 tokens / s).
        aging_edf: seconds of deadline credit per second waited, policy ``edf``
            (default 0: EDF does not starve requests with deadlines).
        no_deadline_horizon: EDF treats a request without a deadline as due this long after
            arrival (default 60 s, > 0).
        max_retries: extra tries after a retryable failure (default 3, 0..1000).
        breaker_failures, breaker_cooldown: circuit breaker per device. This many
            consecutive failures (``fail()``) of requests on a device open its breaker:
            it receives nothing for ``breaker_cooldown`` seconds; then one probe batch
            (one request in continuous mode) decides: a completion closes it, a failure
            opens it again (defaults 5 and 30 s; ``breaker_failures=0``: no breaker).
            State per device in ``stats()['devices'][i]['breaker']``.
        breaker_degrade: scale a device's usable capacity by ``1 - min(0.9, fail_rate)``,
            its failure rate being an EWMA (weight 1/8) of its requests' failures, so an
            intermittently failing device gets less work rather than none (default True).
        max_queued, max_queued_per_tenant: back-pressure bounds on the requests not in
            flight (waiting, queued or retrying), in all and per tenant (1 to 1e12, or
            0 for no bound; defaults ``DEFAULT_MAX_QUEUED`` = 2^24 in all, about 2 GB of
            core records, and no bound per tenant). A submit beyond either raises
            :class:`capsched.errors.QueueFullError` and accepts nothing
            (``submit_many``: none of the batch). Re-queued requests (retries,
            preemption) are never refused.
        max_dependents: fan-out bound: the live requests that may wait on one request
            (default 65536, 1..2^24). A submit whose ``depends_on`` names a request
            that already has this many raises :class:`capsched.errors.DependencyError`
            and accepts nothing.
        retry_base, retry_cap: backoff before the k-th retry is
            ``min(retry_cap, retry_base x 2^(k-1)) x (1 + u) / 2`` seconds, ``u`` uniform in
            [0, 1) ("equal jitter"; defaults 0.1 s and 10 s, >= 0; ``retry_base=0``
            re-queues at once). Meanwhile the request's status is ``'retrying'``. A retry
            that could not start before the request's deadline fails it at once.
        retry_seed: seed of the jitter's splitmix64 stream (default 0, 0..2^64-1): the
            same seed and calls give the same delays.
        fit_margin: Linux's fits_capacity margin: a request fits a device when
            ``util x fit_margin < spare capacity`` (default 1.25 = 1280/1024, >= 1).
        score_compute, score_memory: weights of compute and KV-memory headroom in the
            device score (defaults 0.6 / 0.4, the seed's scoreNode; >= 0).
        energy_aware: among devices a request fits, prefer the lowest energy per unit of
            work (``power_w / capacity``), then the score (default False; Linux EAS).
        pelt_period: PELT period in seconds (default 1/32 s: a utilization signal's
            half-life is 32 periods = 1 s; 1e-6..3600 s, ``MIN_PELT_PERIOD``..``MAX_PELT_PERIOD``).
        default_work_per_token: invariant work per token (seconds on the strongest device
            at full clock) assumed for a request class before one of its requests has
            completed (default 1e-4 s; > 0).
        dl_bandwidth_limit: share of a device's usable capacity that admitted
            deadline-class requests may reserve (default 0.95, as Linux's RT/DL runtime
            share; (0, 1]).
        defer_late: a request with a deadline for which only too-slow devices have room
            (their service model says it would end late) waits for a device that would
            finish it in time, instead of running late (default False). In the simulator
            this cut p99 but lowered SLO attainment near saturation (docs/batching.md).
        wait_for_fit: a request with a deadline that fits no device with room waits in
            its queue (until one fits, or it expires) instead of taking the fallback to
            the largest spare capacity (default False). Placement then acts as admission
            control: in the simulator it is what keeps SLO attainment up near and past
            saturation (docs/simulator.md). A request that would fit no device it may
            use even idle does not wait for one: it runs on an idle device whose
            service model (seeded) says it ends it in time, and waits only while there
            is none.
        max_batch_tokens: token budget of one batch, the sum of its members' prompt +
            max new tokens (default 0 = none; else 1..1e9). A larger request runs alone.
            In continuous mode it bounds the tokens joining a device per step.
        preferred_batch_sizes: ascending batch sizes to cut to when waiting (as Triton's
            dynamic batcher), each <= max_batch_size (default none).
        max_queue_delay: seconds a batch may wait to fill before it goes (default 0: at
            once; >= 0). Only with dynamic batching on, in batch mode
            (``docs/batching.md``: wait or go).
        latency_target: batch latency target in seconds for the adaptive batch size limit
            (default 0 = none: the limit stays max_batch_size). With dynamic batching on
            the limit grows by one after a batch within the target and halves after one
            over it.
        preemption: continuous mode: let a queued deadline- or strict-class request with
            no room evict the lowest-priority normal request in flight (default True).
        fair_share: order the normal class by tenant with a weighted fair share (a
            virtual token counter, as VTC): the tenant with queued work that has been
            given the least service goes first, the policy's order within a tenant, so a
            tenant flooding the queue cannot starve the others (default False: the
            policy's order alone, across tenants). ``docs/policies.md`` gives the rule.
        fair_input_weight, fair_output_weight: service charged to a tenant per dispatch:
            ``fair_input_weight x prompt tokens + fair_output_weight x max_new_tokens``,
            over the tenant's weight (defaults 1 and 2, VTC's; 0..1e6, ``MAX_FAIR_WEIGHT``). A
            completion that reports its output tokens gives back the unused part.
        tenant_weights: fair-share weight of each tenant by name (default 1 for a tenant
            not listed; each in [1e-6, 1e6], ``MIN_TENANT_WEIGHT``..``MAX_TENANT_WEIGHT``): a tenant of weight 2 gets twice the service of
            a tenant of weight 1 when both have work queued. ``None`` names the requests
            without a tenant.
        tokenizer: callable ``str -> int`` counting a prompt's tokens; ``None`` uses
            :func:`capsched.estimate_tokens`.
    """

    weight_urgency: float = 0.5
    weight_resource: float = 0.3
    weight_deadline: float = 0.2
    resource_scale_tokens: float = 4096.0
    deadline_levels: int = 16
    aging_priority: float = 0.01
    aging_weighted: float = 0.01
    aging_srtf: float = 64.0
    aging_edf: float = 0.0
    no_deadline_horizon: float = 60.0
    max_retries: int = 3
    breaker_failures: int = 5
    breaker_cooldown: float = 30.0
    breaker_degrade: bool = True
    max_queued: int = DEFAULT_MAX_QUEUED
    max_queued_per_tenant: int = 0
    max_dependents: int = DEFAULT_MAX_DEPENDENTS
    retry_base: float = 0.1
    retry_cap: float = 10.0
    retry_seed: int = 0
    fit_margin: float = 1.25
    score_compute: float = 0.6
    score_memory: float = 0.4
    energy_aware: bool = False
    pelt_period: float = 1.0 / 32.0
    default_work_per_token: float = 1e-4
    dl_bandwidth_limit: float = 0.95
    defer_late: bool = False
    wait_for_fit: bool = False
    max_batch_tokens: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay: float = 0.0
    latency_target: float = 0.0
    preemption: bool = True
    fair_share: bool = False
    fair_input_weight: float = 1.0
    fair_output_weight: float = 2.0
    tenant_weights: Mapping[Optional[str], float] = dataclasses.field(default_factory=dict, hash=False)
    tokenizer: Optional[Callable[[str], int]] = None

    def __post_init__(self) -> None:
        for name in (
            "weight_urgency",
            "weight_resource",
            "weight_deadline",
            "aging_priority",
            "aging_weighted",
            "aging_srtf",
            "aging_edf",
            "score_compute",
            "score_memory",
        ):
            _check_real(name, getattr(self, name), minimum=0.0, inclusive=True)
        _check_real("fit_margin", self.fit_margin, minimum=1.0, inclusive=True)
        if not isinstance(self.energy_aware, bool):
            raise ConfigError(f"energy_aware must be a bool, got {self.energy_aware!r}")
        _check_real("dl_bandwidth_limit", self.dl_bandwidth_limit, minimum=0.0, inclusive=False)
        if _as_float("dl_bandwidth_limit", self.dl_bandwidth_limit) > 1.0:
            raise ConfigError(f"dl_bandwidth_limit must be in (0, 1], got {self.dl_bandwidth_limit!r}")
        for name in ("resource_scale_tokens", "no_deadline_horizon", "default_work_per_token"):
            _check_real(name, getattr(self, name), minimum=0.0, inclusive=False)
        # (a period near 0 makes the decay factor underflow: NaN utilization signals)
        _check_real("pelt_period", self.pelt_period, minimum=MIN_PELT_PERIOD, inclusive=True, maximum=MAX_PELT_PERIOD)
        _check_int("deadline_levels", self.deadline_levels, 1, 1024)
        _check_int("max_retries", self.max_retries, 0, 1000)
        _check_int("breaker_failures", self.breaker_failures, 0, 1_000_000)
        _check_real("breaker_cooldown", self.breaker_cooldown, minimum=0.0, inclusive=True)
        if not isinstance(self.breaker_degrade, bool):
            raise ConfigError(f"breaker_degrade must be a bool, got {self.breaker_degrade!r}")
        _check_int("max_queued", self.max_queued, 0, 10**12)
        _check_int("max_queued_per_tenant", self.max_queued_per_tenant, 0, 10**12)
        _check_int("max_dependents", self.max_dependents, 1, MAX_DEPENDENTS)
        _check_real("retry_base", self.retry_base, minimum=0.0, inclusive=True)
        _check_real("retry_cap", self.retry_cap, minimum=0.0, inclusive=True)
        _check_int("retry_seed", self.retry_seed, 0, 2**64 - 1)
        _check_int("max_batch_tokens", self.max_batch_tokens, 0, 1_000_000_000)
        for name in ("max_queue_delay", "latency_target"):
            _check_real(name, getattr(self, name), minimum=0.0, inclusive=True)
        for name in ("defer_late", "wait_for_fit"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.preemption, bool):
            raise ConfigError(f"preemption must be a bool, got {self.preemption!r}")
        if not isinstance(self.fair_share, bool):
            raise ConfigError(f"fair_share must be a bool, got {self.fair_share!r}")
        for name in ("fair_input_weight", "fair_output_weight"):
            _check_real(name, getattr(self, name), minimum=0.0, inclusive=True, maximum=MAX_FAIR_WEIGHT)
        weights = self.tenant_weights
        if not isinstance(weights, Mapping):
            raise ConfigError(f"tenant_weights must be a mapping of tenant name to weight, got {weights!r}")
        checked: dict[Optional[str], float] = {}
        for tenant, w in weights.items():
            if tenant is not None and not isinstance(tenant, str):
                raise ConfigError(f"tenant_weights: a tenant name must be a str or None, got {tenant!r}")
            _check_real(f"tenant_weights[{tenant!r}]", w, minimum=0.0, inclusive=False)
            # (a weight near 0 divides a tenant's charge into inf: NaN virtual counters)
            _check_real(
                f"tenant_weights[{tenant!r}]", w, minimum=MIN_TENANT_WEIGHT, inclusive=True, maximum=MAX_TENANT_WEIGHT
            )
            checked[tenant] = float(w)
        object.__setattr__(self, "tenant_weights", types.MappingProxyType(checked))
        sizes = self.preferred_batch_sizes
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, (list, tuple)):
            raise ConfigError(f"preferred_batch_sizes must be a list of integers, got {sizes!r}")
        for i, v in enumerate(sizes):
            _check_int(f"preferred_batch_sizes[{i}]", v, 1, MAX_BATCH_SIZE)
            if i > 0 and v <= sizes[i - 1]:
                raise ConfigError(f"preferred_batch_sizes must be strictly ascending, got {sizes[i - 1]} then {v}")
        object.__setattr__(self, "preferred_batch_sizes", tuple(int(v) for v in sizes))
        if self.tokenizer is not None and not callable(self.tokenizer):
            raise ConfigError(f"tokenizer must be callable (str -> int), got {self.tokenizer!r}")
        _plain_numbers(self, [f.name for f in dataclasses.fields(Config)])

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Config":
        """Build a Config from a mapping; unknown keys raise ConfigError naming them."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)} - {"tokenizer"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**dict(data))

    @classmethod
    def from_toml(cls, path: Union[str, bytes, "os.PathLike[str]"]) -> "Config":
        """Read the ``[scheduler]`` table of a TOML file (or the whole file if it has none).
        Beside a ``[scheduler]`` table the file may hold other tables (ignored), but no
        top-level keys: those would be ignored, so they are refused.

        The file is parsed as data (``tomllib``; nothing is evaluated), must be UTF-8 and
        at most :data:`MAX_CONFIG_BYTES` long.

        Raises:
            ConfigError: ``path`` is not a str, bytes or os.PathLike (an int would be
                taken as a file descriptor), the file cannot be read, is too large, is
                not UTF-8 or not valid TOML (the message names the file), holds a bad
                value (the message names the key), or has keys outside its
                ``[scheduler]`` table.
        """
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - exercised on Python < 3.11 only
            try:
                import tomli as tomllib
            except ImportError as exc:
                raise ConfigError("reading TOML on Python < 3.11 needs 'pip install tomli'") from exc
        if isinstance(path, bool) or not isinstance(path, (str, bytes, os.PathLike)):
            # (open() takes an int as a file descriptor: from_toml(1) would read, then
            # close, the process's stdout)
            raise ConfigError(f"path must be a str, bytes or os.PathLike, got {type(path).__name__} {path!r}")
        where = os.fsdecode(path)
        try:
            with open(path, "rb") as fh:
                raw = fh.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {where!r}: {exc}") from exc
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {where!r} is over the limit of {MAX_CONFIG_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {where!r} is not UTF-8 text (byte {exc.start})") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {where!r} is not valid TOML: {exc}") from exc
        except RecursionError:
            raise ConfigError(f"config file {where!r} is not valid TOML: nested too deeply") from None
        except ValueError:  # an integer of more than 4,300 digits (Python's int limit)
            m = _LONG_TOML_INT.search(text)
            key = f"{m.group(1)}: " if m else ""
            raise ConfigError(
                f"config file {where!r}: {key}an integer of more than {_MAX_INT_DIGITS:,} digits"
            ) from None
        if "scheduler" in data:
            # A key beside the table would be ignored: a misplaced setting or a typo.
            stray = sorted(k for k, v in data.items() if k != "scheduler" and not isinstance(v, dict))
            if stray:
                raise ConfigError(
                    f"config file {where!r}: key(s) {stray} are outside the [scheduler] table, which holds "
                    "the settings; move them into it (other tables are ignored)"
                )
        table = data.get("scheduler", data)
        return cls.from_dict(table)


_MAX_INT_DIGITS = 4300  # Python's int conversion limit (sys.get_int_max_str_digits() default)
# A TOML key set to an integer too long for int(): names the key of such an error.
_LONG_TOML_INT = re.compile(r"^[ \t]*([A-Za-z0-9_.\"'-]+)[ \t]*=[ \t]*[+-]?[0-9_]{%d,}" % (_MAX_INT_DIGITS + 1), re.M)


def _shown(raw: str) -> str:
    return raw if len(raw) <= 80 else raw[:60] + f"... ({len(raw):,} characters)"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _brief(value: object) -> str:
    """``repr(value)`` for an error message: one line, short, and safe for an integer too
    long for ``repr`` (Python refuses to print one of more than 4,300 digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 100:
        digits = int(value.bit_length() * 0.30103) + 1
        return f"{'-' if value < 0 else ''}an integer of about {digits:,} digits"
    try:
        r = repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails is still named by type
        r = f"<{type(value).__name__}>"
    return r if len(r) <= 80 else r[:77] + "..."


def _as_float(name: str, value: object) -> float:
    """``float(value)`` of a real number, a ConfigError naming ``name`` otherwise (an
    integer beyond any float included)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number, got {_brief(value)}")
    try:
        return float(value)
    except (OverflowError, ValueError):
        raise ConfigError(f"{name} must be a number within the range of a float, got {_brief(value)}") from None


def _check_real(
    name: str, value: object, *, minimum: float, inclusive: bool, maximum: Optional[float] = None
) -> None:
    v = _as_float(name, value)
    if not (math.isfinite(v) and (v >= minimum if inclusive else v > minimum)):
        op = ">=" if inclusive else ">"
        raise ConfigError(f"{name} must be a finite number {op} {minimum:g}, got {_brief(value)}")
    if maximum is not None and v > maximum:
        lo = "[" if inclusive else "("
        raise ConfigError(f"{name} must be in {lo}{minimum:g}, {maximum:g}], got {_brief(value)}")


def _plain_numbers(obj: object, names: Iterable[str]) -> None:
    """Store each numeric field of a frozen dataclass, checked already, as a plain int or
    float: a numpy scalar (np.int64, np.float32) or a Fraction is accepted as
    the number it is, but kept as given it would be written into a checkpoint as an object
    JSON cannot hold (and compare, hash and print unlike the number)."""
    for name in names:
        v = getattr(obj, name)
        if isinstance(v, bool) or type(v) in (int, float) or not isinstance(v, numbers.Real):
            continue
        object.__setattr__(obj, name, int(v) if isinstance(v, numbers.Integral) else float(v))


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, got {_brief(value)}")
    if not lo <= int(value) <= hi:
        raise ConfigError(f"{name} must be in {lo}..{hi}, got {_brief(value)}")


@dataclasses.dataclass(frozen=True)
class SchedulerConfig(Config):
    """Everything a :class:`capsched.Scheduler` takes, in one validated object.

    It is a :class:`Config` (all of Config's tunables, with the same defaults and
    checks) plus the scheduler's own arguments. Load it from a dict
    (:meth:`from_dict`), a TOML file (:meth:`from_toml`) or ``CAPSCHED_*`` environment
    variables (:meth:`from_env`); every bad value raises :class:`ConfigError` naming the
    key (or variable) and the value. Build the scheduler with
    ``Scheduler(**cfg.scheduler_kwargs())`` or :meth:`build_scheduler`.

    Attributes:
        devices: the devices: a tuple of :class:`capsched.Device` (names and dicts of
            Device's fields are converted on construction, and checked as
            :func:`capsched.devices.parse_devices` checks them), ``()`` (the default:
            none configured; give them to the scheduler yourself), or ``"auto"`` (what
            discovery finds, resolved when the scheduler is built).
        policy: one of :data:`POLICIES` (default ``"weighted"``).
        max_batch_size: requests per batch, 1..65536 (default 32).
        enable_dynamic_batching: whether batch sizes may adapt (default True).
    """

    # (what the constructor takes; the field then holds a tuple of Device, or "auto")
    devices: Union[Sequence[Union[str, Device, Mapping[str, Any]]], Literal["auto"]] = ()
    policy: str = "weighted"
    max_batch_size: int = 32
    enable_dynamic_batching: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "devices", _check_devices(self.devices))
        if not isinstance(self.policy, str) or self.policy not in POLICIES:
            raise ConfigError(
                f"policy: unknown policy {self.policy!r}: expected one of {', '.join(map(repr, POLICIES))}"
            )
        _check_int("max_batch_size", self.max_batch_size, 1, MAX_BATCH_SIZE)
        _plain_numbers(self, ("max_batch_size",))
        for i, v in enumerate(self.preferred_batch_sizes):
            if v > self.max_batch_size:
                raise ConfigError(
                    f"preferred_batch_sizes[{i}] = {v} is above max_batch_size ({self.max_batch_size}): "
                    "a batch never reaches it"
                )
        if not isinstance(self.enable_dynamic_batching, bool):
            raise ConfigError(f"enable_dynamic_batching must be a bool, got {self.enable_dynamic_batching!r}")

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SchedulerConfig":
        """Build one from a mapping of field names (all but ``tokenizer``).

        ``devices`` may be a list of names, dicts of Device's fields and Device objects,
        or ``"auto"``. Unknown keys raise ConfigError naming them and listing the known.
        """
        return super().from_dict(data)  # type: ignore[return-value]

    @classmethod
    def from_toml(cls, path: Union[str, bytes, "os.PathLike[str]"]) -> "SchedulerConfig":
        """Read the ``[scheduler]`` table of a TOML file (or the whole file if it has no
        such table; beside one, top-level keys are refused as :meth:`Config.from_toml`
        says). Devices are an array of tables or of names (or ``"auto"``)::

            [scheduler]
            policy = "edf"
            max_batch_size = 16

            [[scheduler.devices]]
            name = "gpu0"
            model = "H100-SXM"

            [[scheduler.devices]]
            name = "gpu1"
            capacity = 300.0
            kv_tokens = 200000

        Errors name the file as well as the key.
        """
        try:
            return super().from_toml(path)  # type: ignore[return-value]
        except ConfigError as exc:
            text = str(exc)
            where = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else None
            if where is None or where in text:  # not a path, unreadable or not TOML: says so already
                raise
            raise ConfigError(f"config file {where!r}: {text}") from exc

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] = os.environ,
        base: "Optional[Union[Config, Mapping[str, Any]]]" = None,
    ) -> "SchedulerConfig":
        """Read ``CAPSCHED_<FIELD>`` variables (the field's name in upper case, e.g.
        ``CAPSCHED_MAX_BATCH_SIZE=16``) over ``base`` (a Config or SchedulerConfig, or a
        dict for :meth:`from_dict`; default: the defaults).

        Values are parsed strictly: integers as decimal digits (``"16"``, not ``"16.0"``),
        numbers as decimal floats (``"0.5"``, ``"1e-3"``; not ``"nan"``), booleans as
        ``1/0``, ``true/false``, ``yes/no`` or ``on/off`` (any case), the policy as its
        name, and ``CAPSCHED_DEVICES`` as a comma-separated list of device names (equal
        capacity) or ``auto``. ``tokenizer`` cannot come from the environment (nor
        can any other field whose type is not int, float, bool or str).

        Raises:
            ConfigError: a bad value (the message names the variable and the value,
                shortened past 80 characters), a value that is not a string, or a
                ``CAPSCHED_*`` variable that names no field (the message lists the known
                ones).
        """
        if base is None:
            cfg = cls()
        elif isinstance(base, cls):
            cfg = base
        elif isinstance(base, Config):
            cfg = cls(**{f.name: getattr(base, f.name) for f in dataclasses.fields(Config)})
        elif isinstance(base, Mapping):
            cfg = cls.from_dict(base)
        else:
            raise ConfigError(f"base must be a Config, a SchedulerConfig or a dict, got {type(base).__name__}")
        if not isinstance(environ, Mapping):
            raise ConfigError(f"environ must be a mapping of variable names to values, got {type(environ).__name__}")
        known = {ENV_PREFIX + n.upper(): n for n in _FIELD_KINDS}
        ours = sorted(k for k in environ if isinstance(k, str) and k.startswith(ENV_PREFIX))
        unknown = [k for k in ours if k not in known]
        if unknown:
            raise ConfigError(
                f"unknown environment variable(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        # Each variable is parsed alone (a bad one is named), then all are applied and
        # validated together: fields that constrain each other (max_batch_size and
        # preferred_batch_sizes) may change in one go.
        values: dict[str, tuple[str, str, Any]] = {}
        for var in ours:
            raw = environ[var]
            name = known[var]
            if not isinstance(raw, str):
                raise ConfigError(f"{var}: environment values are strings, got {type(raw).__name__} {raw!r}")
            try:
                values[name] = (var, raw, _parse_env(name, raw, _FIELD_KINDS[name]))
            except ConfigError as exc:
                raise ConfigError(f"{var}={_shown(raw)!r}: {exc}") from None
        if values:
            try:
                cfg = dataclasses.replace(cfg, **{name: v for name, (_, _, v) in values.items()})
            except ConfigError as exc:
                for name, (var, raw, value) in values.items():  # name the variable at fault
                    try:
                        dataclasses.replace(cfg, **{name: value})
                    except ConfigError as alone:
                        raise ConfigError(f"{var}={_shown(raw)!r}: {alone}") from None
                given = ", ".join(f"{var}={_shown(raw)!r}" for var, raw, _ in values.values())
                raise ConfigError(f"{given}: {exc}") from None
        return cfg

    # ------------------------------------------------------------------ using

    def base_config(self) -> Config:
        """The :class:`Config` part (the policy tunables and tokenizer) alone."""
        return Config(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Config)})

    def scheduler_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`capsched.Scheduler`: ``devices``, ``policy``,
        ``max_batch_size``, ``enable_dynamic_batching`` and ``config``.

        Raises:
            ConfigError: no devices are configured (``devices=()``).
        """
        if self.devices == ():
            raise ConfigError("this SchedulerConfig has no devices: set devices (a list of names, or 'auto')")
        return {
            "devices": self.devices if isinstance(self.devices, str) else list(self.devices),
            "policy": self.policy,
            "max_batch_size": self.max_batch_size,
            "enable_dynamic_batching": self.enable_dynamic_batching,
            "config": self.base_config(),
        }

    def build_scheduler(self, **kwargs: Any) -> "Scheduler":
        """``Scheduler(**self.scheduler_kwargs(), **kwargs)``; ``kwargs`` may add
        ``clock=`` or replace any of the others."""
        from .scheduler import Scheduler

        return Scheduler(**{**self.scheduler_kwargs(), **kwargs})


def _check_devices(devices: object) -> Union[tuple[Device, ...], str]:
    from .devices import parse_devices

    if isinstance(devices, str):
        if devices == "auto":
            return devices
        raise ConfigError(f"devices must be a list of devices or 'auto', got the string {devices!r}")
    if isinstance(devices, (list, tuple)) and not devices:
        return ()
    try:
        return parse_devices(devices)
    except ConfigError as exc:
        raise ConfigError(f"devices: {exc}") from None


def _env_kind(f: "dataclasses.Field[Any]") -> Optional[str]:
    """How a field's environment variable is parsed, from its annotation (None: it
    cannot come from the environment)."""
    if f.name == "devices":
        return "devices"
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    return {"int": "int", "float": "float", "bool": "bool", "str": "str", "tuple[int, ...]": "ints"}.get(t)


# What each field's environment variable holds (fields of other types are left out).
_FIELD_KINDS = {
    f.name: k for f in dataclasses.fields(SchedulerConfig) if (k := _env_kind(f)) is not None
}

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _int_of(name: str, text: str) -> int:
    # (int() refuses more than sys.get_int_max_str_digits() digits with a ValueError; no
    # field takes a value anywhere near that long)
    if len(text.lstrip("+-")) > 30:
        raise ConfigError(f"{name} is out of range: {len(text.lstrip('+-')):,} digits")
    return int(text)


def _parse_env(name: str, raw: str, kind: str) -> Any:
    text = raw.strip()
    if kind == "int":
        if not _INT.fullmatch(text):
            raise ConfigError(f"{name} must be an integer (decimal digits)")
        return _int_of(name, text)
    if kind == "float":
        if not _FLOAT.fullmatch(text):
            raise ConfigError(f"{name} must be a decimal number such as 0.5 or 1e-3")
        return float(text)
    if kind == "bool":
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"{name} must be a boolean: one of {', '.join(_TRUE + _FALSE)}")
    if kind == "ints":
        parts = [t.strip() for t in text.split(",")] if text else []
        if any(not _INT.fullmatch(p) for p in parts):
            raise ConfigError(f"{name} must be a comma-separated list of integers such as 4,8,16")
        return tuple(_int_of(name, p) for p in parts)
    if kind == "devices":
        if text == "auto":
            return "auto"
        names = [t.strip() for t in text.split(",")]
        if not text or any(not n for n in names):
            raise ConfigError("devices must be a comma-separated list of device names (no empty names) or 'auto'")
        return tuple(names)
    return text
