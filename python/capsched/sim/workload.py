"""Request workloads for the simulator: synthetic arrivals and real traces.

A :class:`Workload` is a batch of requests held as numpy arrays (arrival time in seconds,
prompt tokens, output tokens), sorted by arrival. It comes from

* a generator: :func:`poisson` (exponential inter-arrival times) or
  :func:`gamma_bursty` (gamma inter-arrival times with a chosen coefficient of variation:
  > 1 is burstier than Poisson), with lengths drawn from a :class:`LengthDistribution`
  (:class:`LognormalLengths`, :class:`EmpiricalLengths` from a trace,
  :class:`FixedLengths`);
* a trace file: :func:`load_azure_csv` (the Azure LLM inference traces),
  :func:`load_mooncake_jsonl` (the Mooncake traces), or :func:`load_trace` which picks by
  name or extension;
* a trace embedded in the package: :func:`builtin_trace` (``"azure-conv"``,
  ``"azure-code"``).

:meth:`Workload.scale_to_rate` rescales time to reach a target mean arrival rate (the
offered load of a simulation); :meth:`Workload.head` keeps the first requests.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import functools
import gzip
import io
import json
import math
import numbers
import os
import re
import zlib
from collections.abc import Iterator
from importlib import resources
from typing import IO, Optional, Protocol, Union, overload, runtime_checkable

import numpy as np

from ..errors import ConfigError, InvalidArgumentError
from ..request import MAX_TOKENS

__all__ = [
    "TraceRequest",
    "Workload",
    "LengthDistribution",
    "FixedLengths",
    "LognormalLengths",
    "EmpiricalLengths",
    "TraceFormatError",
    "poisson",
    "gamma_bursty",
    "load_azure_csv",
    "load_mooncake_jsonl",
    "load_trace",
    "builtin_trace",
    "BUILTIN_TRACES",
    "scale_to_rate",
    "GAMMA_CV_RANGE",
    "MAX_LENGTH_CV",
]

#: The coefficients of variation :func:`gamma_bursty` takes, inclusive: the gamma shape
#: ``1 / cv^2`` stays between 1e-8 and 1e12, where numpy draws finite, meaningful gaps
#: (a smaller CV is a regular clock, a larger one puts nearly every arrival at one instant).
GAMMA_CV_RANGE: tuple[float, float] = (1e-6, 1e4)
#: The largest CV :class:`LognormalLengths` takes (``ln(1 + cv^2)`` stays finite).
MAX_LENGTH_CV = 1e6

PathLike = Union[str, "os.PathLike[str]"]
Seed = Union[int, np.random.Generator, None]


class TraceFormatError(ConfigError):
    """A trace file cannot be read: the message gives the file, line and field.

    Attributes:
        path: the file.
        line: 1-based line number (``None`` for a whole-file problem).
        field: the column or key at fault (``None`` if the whole line is).
    """

    def __init__(self, path: str, line: Optional[int], field: Optional[str], message: str) -> None:
        self.path = path
        self.line = line
        self.field = field
        where = path if line is None else f"{path}:{line}"
        what = f" field {field!r}" if field is not None else ""
        super().__init__(f"{where}:{what} {message}" if what else f"{where}: {message}")


@dataclasses.dataclass(frozen=True)
class TraceRequest:
    """One request of a workload."""

    arrival_s: float
    prompt_tokens: int
    output_tokens: int


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_real(name: str, value: object, *, minimum: float = 0.0, strict: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < minimum or (strict and v == minimum):
        raise InvalidArgumentError(f"{name} must be a finite number {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return v


def _int_array(name: str, value: object) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise InvalidArgumentError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InvalidArgumentError(f"{name} must hold integers, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr) | (arr != np.floor(arr))
        if bad.any():
            i = int(np.argmax(bad))
            raise InvalidArgumentError(f"{name}[{i}] must be a whole number, got {arr[i]:g}")
    out = arr.astype(np.int64, copy=True)
    bad = out < 1
    if bad.any():
        i = int(np.argmax(bad))
        raise InvalidArgumentError(f"{name}[{i}] must be >= 1, got {int(out[i])}")
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class Workload:
    """Requests sorted by arrival, as three equal-length numpy arrays.

    Attributes:
        arrival_s: arrival times in seconds, finite, >= 0, non-decreasing (float64).
        prompt_tokens: prompt (context) tokens of each request, >= 1 (int64).
        output_tokens: tokens each request generates, >= 1 (int64).
        name: a label (the trace or generator it came from).

    The arrays are copied and made read-only, so a Workload never changes.

    Raises:
        InvalidArgumentError: arrays of different lengths or out of range (the message
            names the array and the first bad index).
    """

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    name: str = "workload"

    def __post_init__(self) -> None:
        arr = np.array(self.arrival_s, dtype=np.float64, copy=True)
        if arr.ndim != 1:
            raise InvalidArgumentError(f"arrival_s must be one-dimensional, got shape {arr.shape}")
        bad = ~np.isfinite(arr) | (arr < 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise InvalidArgumentError(f"arrival_s[{i}] must be a finite number >= 0, got {arr[i]:g}")
        if arr.size > 1:
            back = np.diff(arr) < 0
            if back.any():
                i = int(np.argmax(back)) + 1
                raise InvalidArgumentError(
                    f"arrival_s must be non-decreasing: arrival_s[{i}] = {arr[i]:g} < arrival_s[{i - 1}] = {arr[i - 1]:g}"
                )
        prompt = _int_array("prompt_tokens", self.prompt_tokens)
        output = _int_array("output_tokens", self.output_tokens)
        if not (arr.size == prompt.size == output.size):
            raise InvalidArgumentError(
                f"arrival_s, prompt_tokens and output_tokens must have the same length, "
                f"got {arr.size}, {prompt.size} and {output.size}"
            )
        if not isinstance(self.name, str):
            raise InvalidArgumentError(f"name must be a str, got {self.name!r}")
        for a in (arr, prompt, output):  # fresh copies (_int_array's astype copies)
            a.setflags(write=False)
        object.__setattr__(self, "arrival_s", arr)
        object.__setattr__(self, "prompt_tokens", prompt)
        object.__setattr__(self, "output_tokens", output)

    # -- sequence protocol ----------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.arrival_s.size)

    def __iter__(self) -> Iterator[TraceRequest]:
        for t, p, o in zip(self.arrival_s.tolist(), self.prompt_tokens.tolist(), self.output_tokens.tolist()):
            yield TraceRequest(t, p, o)

    @overload
    def __getitem__(self, index: int) -> TraceRequest: ...
    @overload
    def __getitem__(self, index: slice) -> Workload: ...

    def __getitem__(self, index: Union[int, slice]) -> Union[TraceRequest, Workload]:
        """A request by position, or a Workload of a slice (steps must be positive)."""
        if isinstance(index, slice):
            if index.step is not None and index.step < 1:
                raise InvalidArgumentError(f"a Workload slice needs a positive step, got {index.step!r}")
            return Workload(self.arrival_s[index], self.prompt_tokens[index], self.output_tokens[index], self.name)
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            raise InvalidArgumentError(f"a Workload index must be an int or a slice, got {index!r}")
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"request index {index} out of range for a workload of {n}")
        i = int(index)
        return TraceRequest(float(self.arrival_s[i]), int(self.prompt_tokens[i]), int(self.output_tokens[i]))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Workload):
            return NotImplemented
        return (
            self.name == other.name
            and np.array_equal(self.arrival_s, other.arrival_s)
            and np.array_equal(self.prompt_tokens, other.prompt_tokens)
            and np.array_equal(self.output_tokens, other.output_tokens)
        )

    __hash__ = None  # type: ignore[assignment]  # holds arrays

    def __repr__(self) -> str:
        if len(self) < 2:
            return f"Workload({self.name!r}, {len(self)} requests)"
        return f"Workload({self.name!r}, {len(self)} requests over {self.duration_s:.1f} s)"

    # -- statistics -------------------------------------------------------------------------

    @property
    def duration_s(self) -> float:
        """Time from the first arrival to the last (0 for fewer than two requests)."""
        return float(self.arrival_s[-1] - self.arrival_s[0]) if len(self) > 1 else 0.0

    @property
    def mean_rate(self) -> float:
        """Mean arrival rate in requests per second: ``(n - 1) / duration_s``, the
        reciprocal of the mean inter-arrival time.

        Raises:
            InvalidArgumentError: fewer than two requests, or all at the same instant.
        """
        if len(self) < 2 or self.duration_s <= 0:
            raise InvalidArgumentError(
                f"workload {self.name!r} has no arrival rate: {len(self)} request(s) spanning {self.duration_s:g} s"
            )
        return (len(self) - 1) / self.duration_s

    @property
    def interarrival_cv(self) -> float:
        """Coefficient of variation (std / mean) of the inter-arrival times; 1 for Poisson.

        Raises:
            InvalidArgumentError: as :attr:`mean_rate`.
        """
        rate = self.mean_rate
        gaps = np.diff(self.arrival_s)
        return float(np.std(gaps) * rate)

    def summary(self) -> dict[str, float]:
        """Counts and moments: requests, duration, rate, inter-arrival CV, prompt and output
        token mean and p99 (rate and CV are NaN with fewer than two distinct arrivals)."""
        try:
            rate, cv = self.mean_rate, self.interarrival_cv
        except InvalidArgumentError:
            rate = cv = math.nan
        empty = len(self) == 0
        return {
            "requests": float(len(self)),
            "duration_s": self.duration_s,
            "mean_rate": rate,
            "interarrival_cv": cv,
            "prompt_mean": math.nan if empty else float(self.prompt_tokens.mean()),
            "prompt_p99": math.nan if empty else float(np.percentile(self.prompt_tokens, 99)),
            "output_mean": math.nan if empty else float(self.output_tokens.mean()),
            "output_p99": math.nan if empty else float(np.percentile(self.output_tokens, 99)),
        }

    # -- transformations --------------------------------------------------------------------

    def head(self, n: int) -> Workload:
        """The first ``n`` requests (all of them if there are fewer).

        Raises:
            InvalidArgumentError: ``n`` not an integer >= 0.
        """
        return self[: _check_int("n", n, 0)]

    def scale_time(self, factor: float) -> Workload:
        """Arrival times multiplied by ``factor`` (> 1 stretches: a lower rate).

        Raises:
            InvalidArgumentError: ``factor`` not a finite number > 0.
        """
        f = _check_real("factor", factor)
        return Workload(self.arrival_s * f, self.prompt_tokens, self.output_tokens, self.name)

    def scale_to_rate(self, target_rate: float) -> Workload:
        """Time rescaled so that :attr:`mean_rate` is ``target_rate`` requests per second;
        the order, the relative gaps (hence the burstiness) and the lengths are kept.

        Raises:
            InvalidArgumentError: ``target_rate`` not a finite number > 0, or this
                workload has no rate (see :attr:`mean_rate`).
        """
        target = _check_real("target_rate", target_rate)
        return self.scale_time(self.mean_rate / target)

    def shift_to_zero(self) -> Workload:
        """Arrival times shifted so that the first request arrives at 0."""
        if len(self) == 0:
            return self
        return Workload(self.arrival_s - self.arrival_s[0], self.prompt_tokens, self.output_tokens, self.name)

    def clip_lengths(self, max_prompt: Optional[int] = None, max_output: Optional[int] = None) -> Workload:
        """Prompt and output lengths capped (for example at a device's context limit).

        Raises:
            InvalidArgumentError: a cap not an integer >= 1.
        """
        prompt, output = self.prompt_tokens, self.output_tokens
        if max_prompt is not None:
            prompt = np.minimum(prompt, _check_int("max_prompt", max_prompt, 1))
        if max_output is not None:
            output = np.minimum(output, _check_int("max_output", max_output, 1))
        return Workload(self.arrival_s, prompt, output, self.name)

    def with_name(self, name: str) -> Workload:
        """The same requests under another name."""
        return Workload(self.arrival_s, self.prompt_tokens, self.output_tokens, name)


def scale_to_rate(workload: Workload, target_rate: float) -> Workload:
    """``workload`` with time rescaled to a mean arrival rate of ``target_rate`` requests
    per second (:meth:`Workload.scale_to_rate`)."""
    if not isinstance(workload, Workload):
        raise InvalidArgumentError(f"scale_to_rate takes a Workload, got {type(workload).__name__}")
    return workload.scale_to_rate(target_rate)


# -- length distributions -------------------------------------------------------------------


@runtime_checkable
class LengthDistribution(Protocol):
    """Draws (prompt tokens, output tokens) pairs: two int64 arrays of ``n`` values >= 1."""

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` prompt lengths and ``n`` output lengths."""
        ...


@dataclasses.dataclass(frozen=True)
class FixedLengths:
    """Every request has the same prompt and output length.

    Raises:
        InvalidArgumentError: a length not an integer >= 1.
    """

    prompt_tokens: int
    output_tokens: int

    def __post_init__(self) -> None:
        _check_int("prompt_tokens", self.prompt_tokens, 1)
        _check_int("output_tokens", self.output_tokens, 1)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` copies of the two lengths."""
        return np.full(n, self.prompt_tokens, np.int64), np.full(n, self.output_tokens, np.int64)


@dataclasses.dataclass(frozen=True)
class LognormalLengths:
    """Independent lognormal prompt and output lengths with the given means and
    coefficients of variation, rounded to whole tokens (at least 1) and capped.

    A lognormal with mean ``m`` and CV ``c`` has ``sigma^2 = ln(1 + c^2)`` and
    ``mu = ln(m) - sigma^2 / 2``. The defaults approximate the Azure conversation trace
    (prompt mean 1,155, output mean 211). A draw is never above
    :data:`capsched.MAX_TOKENS` (the most tokens a request may have), with or without a
    cap (``None``).

    Raises:
        InvalidArgumentError: a mean not in ``[1, MAX_TOKENS]``, a cap not in
            ``1..MAX_TOKENS``, a CV not in ``[0, MAX_LENGTH_CV]``.
    """

    prompt_mean: float = 1155.0
    prompt_cv: float = 0.9
    output_mean: float = 211.0
    output_cv: float = 0.75
    max_prompt: Optional[int] = 16384
    max_output: Optional[int] = 4096

    def __post_init__(self) -> None:
        for name in ("prompt_mean", "output_mean"):
            m = _check_real(name, getattr(self, name), minimum=1.0, strict=False)
            if m > MAX_TOKENS:
                raise InvalidArgumentError(f"{name} must be at most MAX_TOKENS ({MAX_TOKENS:,}), got {m!r}")
        for name in ("prompt_cv", "output_cv"):
            c = _check_real(name, getattr(self, name), strict=False)
            if c > MAX_LENGTH_CV:
                raise InvalidArgumentError(f"{name} must be in [0, {MAX_LENGTH_CV:g}], got {c!r}")
        for name in ("max_prompt", "max_output"):
            cap = getattr(self, name)
            if cap is not None and _check_int(name, cap, 1) > MAX_TOKENS:
                raise InvalidArgumentError(f"{name} must be in 1..MAX_TOKENS ({MAX_TOKENS:,}) or None, got {cap!r}")

    @staticmethod
    def _draw(rng: np.random.Generator, n: int, mean: float, cv: float, cap: Optional[int]) -> np.ndarray:
        sigma2 = math.log1p(cv * cv)
        x = rng.lognormal(math.log(mean) - sigma2 / 2.0, math.sqrt(sigma2), n)
        # Capped as floats, before the conversion: a draw beyond int64 (or inf) would
        # wrap to a negative count.
        x = np.clip(np.rint(x), 1, MAX_TOKENS if cap is None else min(cap, MAX_TOKENS))
        return x.astype(np.int64)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` independent (prompt, output) draws."""
        return (
            self._draw(rng, n, self.prompt_mean, self.prompt_cv, self.max_prompt),
            self._draw(rng, n, self.output_mean, self.output_cv, self.max_output),
        )


@dataclasses.dataclass(frozen=True, eq=False)
class EmpiricalLengths:
    """(prompt, output) pairs resampled with replacement from observed ones (a trace's),
    keeping the correlation between the two.

    Raises:
        InvalidArgumentError: empty or mismatched arrays, or a length < 1.
    """

    prompt_tokens: np.ndarray
    output_tokens: np.ndarray

    def __post_init__(self) -> None:
        p = _int_array("prompt_tokens", self.prompt_tokens)
        o = _int_array("output_tokens", self.output_tokens)
        if p.size == 0 or p.size != o.size:
            raise InvalidArgumentError(
                f"EmpiricalLengths needs equal, non-zero numbers of prompt and output lengths, got {p.size} and {o.size}"
            )
        object.__setattr__(self, "prompt_tokens", p)
        object.__setattr__(self, "output_tokens", o)

    @classmethod
    def from_workload(cls, workload: Workload) -> EmpiricalLengths:
        """The length pairs of a workload (a trace)."""
        return cls(workload.prompt_tokens, workload.output_tokens)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` pairs drawn uniformly with replacement."""
        idx = rng.integers(0, self.prompt_tokens.size, n)
        return self.prompt_tokens[idx], self.output_tokens[idx]


# -- generators -----------------------------------------------------------------------------


def _rng(seed: Seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        return np.random.default_rng(0)
    return np.random.default_rng(_check_int("seed", seed, 0))


def _arrivals(
    rng: np.random.Generator, rate: float, cv: float, n: Optional[int], duration_s: Optional[float], start_s: float
) -> np.ndarray:
    if (n is None) == (duration_s is None):
        raise InvalidArgumentError("give exactly one of n (a request count) and duration_s")
    if cv == 1.0:
        mean_gap = 1.0 / rate
        if not (math.isfinite(mean_gap) and mean_gap > 0):
            raise InvalidArgumentError(f"rate {rate!r} is too small: the mean gap 1 / rate is not a finite number")

        def gaps(k: int) -> np.ndarray:
            return rng.exponential(mean_gap, k)
    else:
        lo, hi = GAMMA_CV_RANGE
        if not lo <= cv <= hi:
            raise InvalidArgumentError(f"cv must be in [{lo:g}, {hi:g}] (the gamma shape 1 / cv^2 over- or underflows beyond), got {cv!r}")
        shape = 1.0 / (cv * cv)
        scale = 1.0 / (rate * shape)
        if not (math.isfinite(scale) and scale > 0):
            raise InvalidArgumentError(
                f"rate {rate!r} with cv {cv!r}: the gamma scale cv^2 / rate is not a finite number > 0"
            )

        def gaps(k: int) -> np.ndarray:
            return rng.gamma(shape, scale, k)

    if n is not None:
        return start_s + np.cumsum(gaps(n))
    assert duration_s is not None
    end = start_s + duration_s
    times: list[np.ndarray] = []
    last = start_s
    expected = rate * duration_s
    while True:
        chunk = last + np.cumsum(gaps(int(expected * 1.1 + 16 * max(cv, 1.0) * math.sqrt(expected + 1) + 16)))
        times.append(chunk)
        last = float(chunk[-1])
        if last >= end:
            break
    out = np.concatenate(times)
    return out[out < end]


def _generate(
    name: str,
    rate: float,
    cv: float,
    n: Optional[int],
    duration_s: Optional[float],
    lengths: Optional[LengthDistribution],
    seed: Seed,
    start_s: float,
) -> Workload:
    r = _check_real("rate", rate)
    if n is not None:
        _check_int("n", n, 0)
    if duration_s is not None:
        _check_real("duration_s", duration_s)
    start = _check_real("start_s", start_s, strict=False)
    dist: LengthDistribution = _default_lengths() if lengths is None else lengths
    if not isinstance(dist, LengthDistribution):
        raise InvalidArgumentError(f"lengths must have a sample(n, rng) method, got {type(lengths).__name__}")
    rng = _rng(seed)
    arrival = _arrivals(rng, r, cv, n, duration_s, start)
    prompt, output = dist.sample(arrival.size, rng)
    return Workload(arrival, prompt, output, name)


def poisson(
    rate: float,
    *,
    n: Optional[int] = None,
    duration_s: Optional[float] = None,
    lengths: Optional[LengthDistribution] = None,
    seed: Seed = 0,
    start_s: float = 0.0,
) -> Workload:
    """Poisson arrivals: exponential inter-arrival times of mean ``1 / rate``.

    Args:
        rate: mean arrivals per second (> 0).
        n: how many requests; or
        duration_s: keep the arrivals in ``[start_s, start_s + duration_s)``.
        lengths: the (prompt, output) length distribution; default: resampled from the
            Azure conversation trace (:class:`EmpiricalLengths`).
        seed: an int >= 0 or a ``numpy.random.Generator``: the same seed gives the same
            workload.
        start_s: time origin; the first request arrives one gap after it.

    Raises:
        InvalidArgumentError: a value out of range (named in the message; a ``rate`` so
            small that ``1 / rate`` overflows), or both or neither of ``n`` and
            ``duration_s``.
    """
    return _generate(f"poisson(rate={rate:g})", rate, 1.0, n, duration_s, lengths, seed, start_s)


def gamma_bursty(
    rate: float,
    cv: float,
    *,
    n: Optional[int] = None,
    duration_s: Optional[float] = None,
    lengths: Optional[LengthDistribution] = None,
    seed: Seed = 0,
    start_s: float = 0.0,
) -> Workload:
    """Bursty arrivals: gamma inter-arrival times of mean ``1 / rate`` and coefficient of
    variation ``cv`` (shape ``1 / cv^2``). ``cv = 1`` is Poisson; ``cv > 1`` clusters
    arrivals in bursts separated by long gaps; ``cv < 1`` is more regular.

    Arguments as :func:`poisson`, plus ``cv`` (in :data:`GAMMA_CV_RANGE`, 1e-6 to 1e4).

    Raises:
        InvalidArgumentError: as :func:`poisson`, ``cv`` not a finite number in
            :data:`GAMMA_CV_RANGE`, or a ``rate`` and ``cv`` whose gamma scale
            ``cv^2 / rate`` is not a finite number > 0.
    """
    c = _check_real("cv", cv)
    return _generate(f"gamma(rate={rate:g}, cv={c:g})", rate, c, n, duration_s, lengths, seed, start_s)


# -- trace loaders --------------------------------------------------------------------------

_AZURE_HEADER = ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]
_TIMESTAMP = re.compile(r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(\.\d+)?")


def _open_text(path: PathLike) -> IO[str]:
    p = os.fspath(path)
    if p.lower().endswith(".gz"):  # (as load_trace picks the format: case-insensitively)
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8", newline="")
    return open(p, encoding="utf-8", newline="")


@contextlib.contextmanager
def _readable(path: str) -> Iterator[None]:
    """Bytes that are not UTF-8 (or not gzip, for a .gz name) are a TraceFormatError
    naming the file, not a bare UnicodeDecodeError."""
    try:
        yield
    except UnicodeDecodeError as exc:
        raise TraceFormatError(path, None, None, f"is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except csv.Error as exc:  # (e.g. a field over the csv module's size limit)
        raise TraceFormatError(path, None, None, f"is not a readable CSV file ({exc})") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise TraceFormatError(path, None, None, f"is not a complete gzip file ({exc})") from None


def _cut(value: object) -> str:
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."


def _parse_token_count(value: str, path: str, line: int, field: str) -> int:
    s = value.strip()
    if not (s.isascii() and s.isdigit()):
        raise TraceFormatError(path, line, field, f"must be a whole number of tokens, got {_cut(value)}")
    if len(s) > 18:  # (within int64)
        raise TraceFormatError(path, line, field, f"must be below 10**18 tokens, got {_cut(value)}")
    v = int(s)
    if v > MAX_TOKENS:  # (the core's limit per request: such a run would fail half-way)
        raise TraceFormatError(path, line, field, f"must be at most {MAX_TOKENS:,} tokens (capsched.MAX_TOKENS), got {v}")
    if v < 1:
        raise TraceFormatError(path, line, field, f"must be >= 1, got {v}")
    return v


def _finish(path: str, lines: list[int], times: list[float], prompt: list[int], output: list[int], name: str) -> Workload:
    if not times:
        raise TraceFormatError(path, None, None, "holds no requests")
    for k in range(1, len(times)):
        if times[k] < times[k - 1]:
            raise TraceFormatError(
                path, lines[k], None, f"arrivals must be in time order: this one is {times[k - 1] - times[k]:g} s before line {lines[k - 1]}'s"
            )
    t = np.asarray(times, dtype=np.float64)
    return Workload(t - t[0], np.asarray(prompt, np.int64), np.asarray(output, np.int64), name)


def _load_azure_stream(stream: IO[str], path: str, name: str, limit: Optional[int]) -> Workload:

    reader = csv.reader(stream)
    header = next(reader, None)
    if header is None:
        raise TraceFormatError(path, None, None, "is empty (expected the header TIMESTAMP,ContextTokens,GeneratedTokens)")
    header = [h.strip().lstrip("\ufeff") for h in header]
    if header != _AZURE_HEADER:
        raise TraceFormatError(path, 1, None, f"expected the header {','.join(_AZURE_HEADER)}, got {','.join(header)}")
    lines: list[int] = []
    times: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    day0: Optional[int] = None
    for row in reader:
        line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != 3:
            raise TraceFormatError(path, line, None, f"expected 3 fields, got {len(row)}: {','.join(row)!r}")
        m = _TIMESTAMP.fullmatch(row[0].strip())
        if m is None:
            raise TraceFormatError(path, line, "TIMESTAMP", f"must look like 2023-11-16 18:15:46.68059, got {row[0]!r}")
        y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
        try:
            day = datetime.date(y, mo, d).toordinal()
            datetime.time(h, mi, s)
        except ValueError as exc:
            raise TraceFormatError(path, line, "TIMESTAMP", f"is not a valid time ({exc}): {row[0]!r}") from None
        if day0 is None:
            day0 = day
        frac = float(m.group(7)) if m.group(7) else 0.0
        times.append((day - day0) * 86400.0 + h * 3600.0 + mi * 60.0 + s + frac)
        prompt.append(_parse_token_count(row[1], path, line, "ContextTokens"))
        output.append(_parse_token_count(row[2], path, line, "GeneratedTokens"))
        lines.append(line)
        if limit is not None and len(times) >= limit:
            break
    return _finish(path, lines, times, prompt, output, name)


def load_azure_csv(path: PathLike, *, limit: Optional[int] = None, name: Optional[str] = None) -> Workload:
    """Load an Azure LLM inference trace (``TIMESTAMP,ContextTokens,GeneratedTokens``;
    gzip-compressed if the name ends in ``.gz``, in any case).

    Arrival times are seconds after the first request's. ``limit`` keeps the first rows.

    Raises:
        TraceFormatError: (a :class:`~capsched.errors.ConfigError`) a bad header, row,
            timestamp or token count (a count must be in 1..:data:`capsched.MAX_TOKENS`),
            or rows out of time order: the message gives the file, line and field.
        InvalidArgumentError: ``limit`` not an integer >= 1.
        OSError: the file cannot be read.
    """
    if limit is not None:
        _check_int("limit", limit, 1)
    p = os.fspath(path)
    with _readable(p), _open_text(p) as f:
        return _load_azure_stream(f, p, name or _stem(p), limit)


def load_mooncake_jsonl(path: PathLike, *, limit: Optional[int] = None, name: Optional[str] = None) -> Workload:
    """Load a Mooncake trace: one JSON object per line with ``timestamp`` (milliseconds),
    ``input_length`` and ``output_length`` (``hash_ids``, the prefix-cache blocks, is not
    used). Gzip-compressed if the name ends in ``.gz`` (in any case).

    Arrival times are seconds after the first request's. ``limit`` keeps the first rows.

    Raises:
        TraceFormatError: a line that is not a JSON object, a missing or bad field (a
            length must be in 1..:data:`capsched.MAX_TOKENS`), or rows out of time
            order: the message gives the file, line and field.
        InvalidArgumentError: ``limit`` not an integer >= 1.
        OSError: the file cannot be read.
    """
    if limit is not None:
        _check_int("limit", limit, 1)
    p = os.fspath(path)
    lines: list[int] = []
    times: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    with _readable(p), _open_text(p) as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            text = text.rstrip("\r\n")  # (a truncated line's error would be at "column 1" of the next)
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise TraceFormatError(p, line, None, f"is not valid JSON: {exc.msg} at column {exc.pos + 1}") from None
            except RecursionError:
                raise TraceFormatError(p, line, None, "is not valid JSON: nested too deeply") from None
            except ValueError:  # an integer of more digits than Python converts
                raise TraceFormatError(p, line, None, "is not valid JSON: an integer of more than 4300 digits") from None
            if not isinstance(obj, dict):
                raise TraceFormatError(p, line, None, f"must be a JSON object, got {type(obj).__name__}")
            ts = obj.get("timestamp")
            if ts is None:
                raise TraceFormatError(p, line, "timestamp", "is missing")
            if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not 0 <= ts <= 1e18:
                raise TraceFormatError(p, line, "timestamp", f"must be a number of milliseconds >= 0, got {ts!r}")
            counts = []
            for key in ("input_length", "output_length"):
                v = obj.get(key)
                if v is None:
                    raise TraceFormatError(p, line, key, "is missing")
                if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v < 10**18:
                    raise TraceFormatError(p, line, key, f"must be an integer >= 1, got {_cut(v)}")
                if v > MAX_TOKENS:
                    raise TraceFormatError(
                        p, line, key, f"must be at most {MAX_TOKENS:,} tokens (capsched.MAX_TOKENS), got {v}"
                    )
                counts.append(v)
            times.append(ts / 1000.0)
            prompt.append(counts[0])
            output.append(counts[1])
            lines.append(line)
            if limit is not None and len(times) >= limit:
                break
    return _finish(p, lines, times, prompt, output, name or _stem(p))


def _stem(path: str) -> str:
    base = os.path.basename(path)
    for ext in (".gz", ".csv", ".jsonl", ".json"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    return base


#: The traces embedded in the package: name -> (file in ``capsched/sim/data``, what).
BUILTIN_TRACES: dict[str, tuple[str, str]] = {
    "azure-conv": (
        "azure_conv_2023.csv.gz",
        "Azure LLM inference trace 2023, conversation: 19,366 requests in ~1 h (CC-BY 4.0, Splitwise, ISCA 2024)",
    ),
    "azure-code": (
        "azure_code_2023.csv.gz",
        "Azure LLM inference trace 2023, code completion: 8,819 requests in ~1 h, very bursty (CC-BY 4.0)",
    ),
}


@functools.lru_cache(maxsize=None)
def _load_builtin(name: str) -> Workload:
    filename = BUILTIN_TRACES[name][0]
    data = resources.files("capsched.sim").joinpath("data", filename).read_bytes()
    with io.TextIOWrapper(io.BytesIO(gzip.decompress(data)), encoding="utf-8", newline="") as f:
        return _load_azure_stream(f, f"capsched/sim/data/{filename}", name, None)


def builtin_trace(name: str = "azure-conv") -> Workload:
    """A trace embedded in the package (no data files needed): ``"azure-conv"`` (the
    default) or ``"azure-code"``; see :data:`BUILTIN_TRACES`. Loaded once, then shared
    (a Workload is immutable).

    Raises:
        ConfigError: an unknown name (the message lists the known ones).
    """
    if not isinstance(name, str) or name not in BUILTIN_TRACES:
        raise ConfigError(f"unknown built-in trace {name!r} (known: {', '.join(BUILTIN_TRACES)})")
    return _load_builtin(name)


def load_trace(source: PathLike, *, limit: Optional[int] = None) -> Workload:
    """A trace by built-in name (:data:`BUILTIN_TRACES`) or by file path: ``.csv`` /
    ``.csv.gz`` are read as Azure traces, ``.jsonl`` / ``.jsonl.gz`` as Mooncake traces.

    Raises:
        ConfigError: an unknown name or extension (or a :class:`TraceFormatError`).
        InvalidArgumentError: ``limit`` not an integer >= 1.
        OSError: the file cannot be read.
    """
    s = os.fspath(source)
    if s in BUILTIN_TRACES:
        w = builtin_trace(s)
        return w if limit is None else w.head(_check_int("limit", limit, 1))
    low = s.lower()
    if low.endswith((".csv", ".csv.gz")):
        return load_azure_csv(s, limit=limit)
    if low.endswith((".jsonl", ".jsonl.gz")):
        return load_mooncake_jsonl(s, limit=limit)
    raise ConfigError(
        f"cannot tell the format of trace {s!r}: give a built-in name ({', '.join(BUILTIN_TRACES)}), "
        "an Azure .csv[.gz] or a Mooncake .jsonl[.gz] file"
    )


@functools.lru_cache(maxsize=1)
def _default_lengths() -> EmpiricalLengths:
    return EmpiricalLengths.from_workload(builtin_trace("azure-conv"))
