"""Scheduler configuration: every tunable with its default, unit and reason."""

from __future__ import annotations

import dataclasses
import math
import numbers
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Optional

from .errors import ConfigError

__all__ = ["Config", "POLICIES"]

POLICIES = ("fcfs", "priority", "edf", "srtf", "weighted")


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
        ):
            _check_real(name, getattr(self, name), minimum=0.0, inclusive=True)
        for name in ("resource_scale_tokens", "no_deadline_horizon"):
            _check_real(name, getattr(self, name), minimum=0.0, inclusive=False)
        _check_int("deadline_levels", self.deadline_levels, 1, 1024)
        _check_int("max_retries", self.max_retries, 0, 1000)
        if self.tokenizer is not None and not callable(self.tokenizer):
            raise ConfigError(f"tokenizer must be callable (str -> int), got {self.tokenizer!r}")

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
    def from_toml(cls, path: "str | Path") -> "Config":
        """Read the ``[scheduler]`` table of a TOML file (or the whole file if it has none)."""
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - exercised on Python < 3.11 only
            try:
                import tomli as tomllib
            except ImportError as exc:
                raise ConfigError("reading TOML on Python < 3.11 needs 'pip install tomli'") from exc
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {str(path)!r}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from exc
        table = data.get("scheduler", data)
        return cls.from_dict(table)


def _check_real(name: str, value: object, *, minimum: float, inclusive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    v = float(value)
    ok = math.isfinite(v) and (v >= minimum if inclusive else v > minimum)
    if not ok:
        op = ">=" if inclusive else ">"
        raise ConfigError(f"{name} must be a finite number {op} {minimum:g}, got {value!r}")


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if not lo <= int(value) <= hi:
        raise ConfigError(f"{name} must be in {lo}..{hi}, got {value!r}")
