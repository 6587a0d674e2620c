"""Offline jobs: files of tasks with dependencies, not-before times and deadlines.

A **job file** is JSON (a list of task objects, or ``{"tasks": [...]}``) or JSONL (one
task object per line; blank lines are skipped). A file whose name ends in ``.jsonl`` or
``.ndjson`` is read as JSONL (lines end at ``\n`` only), any other as JSON. Each task object has these fields (any
other field is an error):

============================  ==========================================================
``task_id`` (str, required)   unique in the file; 1..256 characters, no ``#`` (shard ids
                              use it), encodable as UTF-8 (no lone surrogate)
``prompt`` (str)              the prompt; its tokens are counted by the scheduler's
                              tokenizer at submit
``payload`` (any JSON)        structured input instead of a prompt; its tokens are
                              estimated from its compact JSON text with
                              :func:`capsched.estimate_tokens`
``prompt_tokens`` (int)       0..10,000,000; overrides the estimate. One of ``prompt``,
                              ``payload`` and ``prompt_tokens`` is required; ``prompt``
                              and ``payload`` exclude each other
``max_new_tokens`` (int)      1..10,000,000, default 256
``priority`` (number)         0..1, default 0.5
``schedule_time`` (number)    not before this time (seconds on the scheduler's clock,
                              0..1e12, well inside the clock's 1e15 so that a run
                              from it stays inside too); default: at once
``depends_on`` (list of str)  task_ids that must complete first (at most 1,024, after
                              shard expansion; no duplicates, not itself)
``deadline`` (number)         absolute latest finish (seconds on the scheduler's clock,
                              0..1e15)
``duration_estimate`` (num.)  expected seconds to run (0..1e15, default 0), for deadline
                              propagation
``shards`` (int)              1..1,024, default 1: run as that many parallel sub-tasks
``tenant``, ``request_class`` passed to :class:`capsched.InferenceRequest`
(str)
============================  ==========================================================

Numbers must be finite (``NaN``/``Infinity`` are refused) and booleans are not numbers. A
file holds at most :data:`MAX_TASKS` tasks after shard expansion. Files are parsed as
data only (the ``json`` module; nothing is evaluated). Every error is a
:class:`JobFileError` naming the file, the line (JSONL: the line; JSON: the line where the
element starts, and its index) and the field.

**Shards.** A task with ``shards: n`` becomes ``n`` tasks ``task_id#0`` .. ``task_id#n-1``
with the task's fields (each shard is one request; the server tells them apart by
:attr:`Task.shard`); a task depending on a sharded task depends on every shard.

**Deadline propagation** (:func:`propagate_deadlines`). A task's *latest finish* is the
smallest of its own ``deadline``, the job's deadline and, for every task depending on it,
that task's latest finish minus its ``duration_estimate``: the critical path of what
depends on it. :class:`JobRunner` submits each task with ``deadline`` = its latest finish
when that is finite, so the EDF and weighted policies order by it and a task that can no
longer finish in time expires (and its dependents fail) instead of using capacity.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import json
import math
import numbers
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional, Union

from .config import MAX_REQUEST_CLASSES, MAX_TENANTS
from .errors import AdmissionError, ConfigError, DependencyError, InvalidRequestError, QueueFullError
from .request import MAX_DEPENDENCIES, MAX_TOKENS, SCHED_CLASSES, InferenceRequest
from .tokens import estimate_tokens

if TYPE_CHECKING:  # (for annotations only: the scheduler module is not needed to read jobs)
    from .scheduler import Scheduler

__all__ = [
    "Task",
    "JobFileError",
    "JobCycleError",
    "JobRunner",
    "load_job",
    "read_job",
    "parse_tasks",
    "expand_shards",
    "topological_order",
    "propagate_deadlines",
    "MAX_TASKS",
    "MAX_TIME",
    "MAX_SCHEDULE_TIME",
    "MAX_JOB_FILE_BYTES",
    "MAX_SHARDS",
    "MAX_TASK_ID_LENGTH",
    "TASK_FIELDS",
    "simulate_job",
    "JobRun",
    "TaskRun",
]

#: Largest job file :func:`read_job` reads (bytes): 256 MiB (a million tasks of about
#: 250 bytes each; a file this size cannot list more than about 50 million dependency
#: edges, the fan-out bound of a job).
MAX_JOB_FILE_BYTES = 256 * 2**20
#: Most tasks in one job, after shard expansion.
MAX_TASKS = 1_000_000
#: The largest ``deadline`` and ``duration_estimate`` (and a job's ``--deadline``): the
#: scheduler's clock takes times within +-1e15 s, so a later one could pass validation and
#: then fail the submit.
MAX_TIME = 1e15
#: The largest ``schedule_time``: smaller than :data:`MAX_TIME`, since the clock runs on
#: from it while the task runs (a task due at 1e15 would complete beyond the clock's range).
MAX_SCHEDULE_TIME = 1e12
#: Most shards of one task.
MAX_SHARDS = 1024
#: Longest task_id.
MAX_TASK_ID_LENGTH = 256
#: The fields a task object may have.
TASK_FIELDS = (
    "task_id",
    "prompt",
    "payload",
    "prompt_tokens",
    "max_new_tokens",
    "priority",
    "schedule_time",
    "depends_on",
    "deadline",
    "duration_estimate",
    "shards",
    "tenant",
    "request_class",
)
_FIELD_SET = frozenset(TASK_FIELDS)


class JobFileError(ConfigError):
    """A job file (or task list) cannot be used. ``path``: the file (``"<data>"`` for a
    list given in Python); ``line``: 1-based line where the task starts (None when not
    known); ``field``: the field at fault (None for a whole-task or whole-file problem);
    ``index``: the task's 0-based position in the file (None when not known)."""

    def __init__(
        self,
        message: str,
        *,
        path: Optional[str] = None,
        line: Optional[int] = None,
        field: Optional[str] = None,
        index: Optional[int] = None,
    ) -> None:
        self.path = path
        self.line = line
        self.field = field
        self.index = index
        where = path if path is not None else "<data>"
        if line is not None:
            where += f", line {line}"
        if index is not None:
            where += f" (task {index})"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}")


class JobCycleError(DependencyError):
    """The tasks' dependencies form a cycle. ``cycle`` lists it (first task repeated at
    the end), each task depending on the next; ``path`` and ``line`` say where the first
    task of the cycle is, when it came from a file (else None)."""

    def __init__(self, cycle: Sequence[str], *, path: Optional[str] = None, line: Optional[int] = None) -> None:
        self.cycle = list(cycle)
        self.path = path
        self.line = line
        self.field = "depends_on"
        where = ""
        if path is not None:
            where = f"{path}, line {line}: " if line is not None else f"{path}: "
        super().__init__(
            where + "dependency cycle: " + " -> ".join(self.cycle) + " (each task depends on the next)"
        )


@dataclasses.dataclass(frozen=True)
class Task:
    """One task of an offline job (see the module docstring for each field).

    ``shard`` is ``(k, n)`` for the k-th of n shards after :func:`expand_shards`, else
    None. ``line`` and ``index`` say where the task came from (for messages).
    """

    task_id: str
    prompt: Optional[str] = None
    prompt_tokens: Optional[int] = None
    max_new_tokens: int = 256
    priority: float = 0.5
    schedule_time: Optional[float] = None
    depends_on: tuple[str, ...] = ()
    deadline: Optional[float] = None
    duration_estimate: float = 0.0
    shards: int = 1
    tenant: Optional[str] = None
    request_class: Optional[str] = None
    payload: Any = None
    shard: Optional[tuple[int, int]] = None
    line: Optional[int] = dataclasses.field(default=None, compare=False, repr=False)
    index: Optional[int] = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # A Task built in Python is checked as a task of a file is (same ranges, same
        # messages): a JobFileError naming the task and the field. depends_on is stored
        # as a tuple; a payload without prompt_tokens gets its estimate, as in a file.
        try:
            _check_task(self)
        except _FieldError as exc:
            tid = self.task_id
            who = f"task {tid!r}: " if isinstance(tid, str) and exc.field != "task_id" else ""
            raise JobFileError(who + exc.message, line=self.line, field=exc.field, index=self.index) from None

    def to_request(
        self, *, deadline: Optional[float] = None, depends_on: Iterable[Any] = (), sched_class: str = "normal"
    ) -> InferenceRequest:
        """The :class:`InferenceRequest` for this task (``depends_on``: scheduler ids or
        submitted requests)."""
        return InferenceRequest(
            self.prompt,
            prompt_tokens=self.prompt_tokens,
            max_new_tokens=self.max_new_tokens,
            priority=self.priority,
            deadline=deadline,
            tenant=self.tenant,
            depends_on=tuple(depends_on),
            request_class=self.request_class,
            sched_class=sched_class,
        )


# --------------------------------------------------------------------------- parsing


class _FieldError(Exception):
    def __init__(self, field: Optional[str], message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _constant(name: str) -> float:
    # NaN, Infinity, -Infinity: kept as floats so that the field check names the field.
    return float(name.replace("Infinity", "inf"))


class _JObj(dict[str, Any]):
    """A JSON object; ``dup`` is the first key it had twice (the last value is kept)."""

    __slots__ = ("dup",)
    dup: Optional[str]


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = _JObj()
    out.dup = None
    for k, v in pairs:
        if k in out and out.dup is None:
            out.dup = k
        out[k] = v
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_constant)
_WS = re.compile(r"[ \t\n\r]*")


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _int_field(d: Mapping[str, Any], name: str, lo: int, hi: int, default: Optional[int]) -> Optional[int]:
    if name not in d:
        return default
    v = d[name]
    if isinstance(v, float) and v.is_integer() and math.isfinite(v):
        v = int(v)  # 256.0 is 256
    if isinstance(v, bool) or not isinstance(v, int):
        raise _FieldError(name, f"must be an integer, got {_kind(v)} {_short(v)}")
    if not lo <= v <= hi:
        raise _FieldError(name, f"must be in {lo}..{hi:,}, got {_short(v)}")
    return v


def _real_field(
    d: Mapping[str, Any], name: str, lo: float, hi: float, default: Optional[float]
) -> Optional[float]:
    if name not in d:
        return default
    v = d[name]
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise _FieldError(name, f"must be a number, got {_kind(v)} {_short(v)}")
    try:
        x = float(v)
    except (OverflowError, ValueError):  # an integer beyond any float
        raise _FieldError(name, f"must be a number within the range of a float, got {_short(v)}") from None
    if not math.isfinite(x):
        raise _FieldError(name, f"must be a finite number, got {_short(v)}")
    if not lo <= x <= hi:
        rng = f"be >= {lo:g}" if hi == math.inf else f"be in [{lo:g}, {hi:g}]"
        raise _FieldError(name, f"must {rng}, got {_short(v)}")
    return x


def _str_field(d: Mapping[str, Any], name: str) -> Optional[str]:
    if name not in d:
        return None
    v = d[name]
    if not isinstance(v, str):
        raise _FieldError(name, f"must be a string, got {_kind(v)} {_short(v)}")
    return v


def _check_task_id(v: Any, field: str = "task_id") -> str:
    if not isinstance(v, str):
        raise _FieldError(field, f"a task_id must be a string, got {_kind(v)} {_short(v)}")
    if not v or len(v) > MAX_TASK_ID_LENGTH:
        raise _FieldError(field, f"a task_id must have 1..{MAX_TASK_ID_LENGTH} characters, got {_short(v)}")
    if "#" in v:
        raise _FieldError(field, f"a task_id may not contain '#' (shard ids use it), got {_short(v)}")
    if not v.isascii():
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate ("\\ud800" is valid JSON): it could not be printed or sent
            raise _FieldError(field, f"a task_id must be encodable as UTF-8 (no lone surrogate), got {ascii(v)}") from None
    return v


def _payload_tokens(payload: Any) -> int:
    """The estimated tokens of a payload's compact JSON text; _FieldError('payload')
    when it is not JSON data (a set, bytes, a circular or too deeply nested list)."""
    try:
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:
        if "ircular" in str(exc):
            raise _FieldError("payload", "holds a circular reference (it contains itself)") from None
        raise _FieldError("payload", "holds a number that is not finite (NaN or Infinity)") from None
    except TypeError as exc:  # "Object of type set is not JSON serializable"; a non-str key
        raise _FieldError("payload", f"must be JSON data (objects, lists, strings, numbers, booleans, null): {exc}") from None
    except RecursionError:
        raise _FieldError("payload", "nested too deeply to write as JSON") from None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _FieldError("payload", "holds a string that is not encodable as UTF-8 (a lone surrogate)") from None
    n = estimate_tokens(text)
    if n > MAX_TOKENS:
        raise _FieldError("payload", f"is about {n:,} tokens (limit {MAX_TOKENS:,})")
    return n


def _check_task(t: Task) -> None:
    """Checks a Task's fields as a file's task is checked (_FieldError on the first bad
    one); normalizes depends_on to a tuple and integral numbers to int."""
    f = vars(t)
    set_ = object.__setattr__
    tid = f["task_id"]
    if t.shard is not None and isinstance(tid, str) and "#" in tid:  # (a shard of expand_shards)
        if len(tid) > MAX_TASK_ID_LENGTH + 5:
            raise _FieldError("task_id", f"a shard's task_id must have at most {MAX_TASK_ID_LENGTH + 5} characters")
    else:
        _check_task_id(tid)
    for name in ("prompt", "tenant", "request_class"):
        if f[name] is not None:
            _str_field(f, name)
    for name, lo, hi, dflt in (
        ("prompt_tokens", 0, MAX_TOKENS, None), ("max_new_tokens", 1, MAX_TOKENS, 256), ("shards", 1, MAX_SHARDS, 1)
    ):
        v = f[name]
        if v is None and dflt is None:
            continue
        if type(v) is not int and isinstance(v, numbers.Integral) and not isinstance(v, bool):
            v = int(v)  # (a numpy integer)
            set_(t, name, v)
        w = _int_field(f, name, lo, hi, dflt)
        if w is not v:  # (256.0 is 256)
            set_(t, name, w)
    for name, rlo, rhi, optional in (
        ("priority", 0.0, 1.0, False), ("schedule_time", 0.0, MAX_SCHEDULE_TIME, True),
        ("deadline", 0.0, MAX_TIME, True), ("duration_estimate", 0.0, MAX_TIME, False),
    ):
        if f[name] is None and optional:
            continue
        _real_field(f, name, rlo, rhi, None)
    raw = f["depends_on"]
    if raw:
        if isinstance(raw, (str, bytes)) or not isinstance(raw, (tuple, list)):
            raise _FieldError("depends_on", f"must be a tuple or list of task_ids, got {_kind(raw)} {_short(raw)}")
        if len(raw) > MAX_DEPENDENCIES:
            raise _FieldError("depends_on", f"lists {len(raw):,} tasks (limit {MAX_DEPENDENCIES})")
        seen: set[str] = set()
        for x in raw:
            if not isinstance(x, str) or not x:
                raise _FieldError("depends_on", f"a task_id must be a non-empty string, got {_kind(x)} {_short(x)}")
            if x in seen:
                raise _FieldError("depends_on", f"lists {x!r} twice")
            if x == tid:
                raise _FieldError("depends_on", f"task {tid!r} depends on itself")
            seen.add(x)
        if type(raw) is not tuple:
            set_(t, "depends_on", tuple(raw))
    elif type(raw) is not tuple:
        if isinstance(raw, (str, bytes)) or not isinstance(raw, (tuple, list)):
            raise _FieldError("depends_on", f"must be a tuple or list of task_ids, got {_kind(raw)} {_short(raw)}")
        set_(t, "depends_on", ())
    payload = f["payload"]
    if payload is not None:
        if f["prompt"] is not None:
            raise _FieldError("payload", "give prompt or payload, not both")
        if f["prompt_tokens"] is None:
            set_(t, "prompt_tokens", _payload_tokens(payload))
    elif f["prompt"] is None and f["prompt_tokens"] is None:
        raise _FieldError("prompt", "missing: give prompt, payload or prompt_tokens")


def _task_from_dict(d: Any, line: Optional[int], index: Optional[int]) -> Task:
    if not isinstance(d, dict):
        raise _FieldError(None, f"a task must be a JSON object, got {_kind(d)} {_short(d)}")
    dup = getattr(d, "dup", None)
    if dup is not None:
        raise _FieldError(dup, "given twice in one task")
    unknown = [k for k in d if k not in _FIELD_SET]
    if unknown:
        raise _FieldError(unknown[0], f"unknown field {unknown[0]!r}; a task's fields are {', '.join(TASK_FIELDS)}")
    if "task_id" not in d:
        raise _FieldError("task_id", "missing: every task needs a task_id")
    task_id = _check_task_id(d["task_id"])
    prompt = _str_field(d, "prompt")
    prompt_tokens = _int_field(d, "prompt_tokens", 0, MAX_TOKENS, None)
    has_payload = "payload" in d
    payload = d.get("payload")
    if prompt is not None and has_payload:
        raise _FieldError("payload", "give prompt or payload, not both")
    if prompt is None and not has_payload and prompt_tokens is None:
        raise _FieldError("prompt", "missing: give prompt, payload or prompt_tokens")
    if has_payload and prompt_tokens is None:
        prompt_tokens = _payload_tokens(payload)
    max_new = _int_field(d, "max_new_tokens", 1, MAX_TOKENS, 256)
    priority = _real_field(d, "priority", 0.0, 1.0, 0.5)
    schedule_time = _real_field(d, "schedule_time", 0.0, MAX_SCHEDULE_TIME, None)
    deadline = _real_field(d, "deadline", 0.0, MAX_TIME, None)
    duration = _real_field(d, "duration_estimate", 0.0, MAX_TIME, 0.0)
    shards = _int_field(d, "shards", 1, MAX_SHARDS, 1)
    deps: tuple[str, ...] = ()
    if "depends_on" in d:
        raw = d["depends_on"]
        if not isinstance(raw, list):
            raise _FieldError("depends_on", f"must be a list of task_ids, got {_kind(raw)} {_short(raw)}")
        if len(raw) > MAX_DEPENDENCIES:
            raise _FieldError("depends_on", f"lists {len(raw):,} tasks (limit {MAX_DEPENDENCIES})")
        seen: set[str] = set()
        for x in raw:
            _check_task_id(x, "depends_on")
            if x in seen:
                raise _FieldError("depends_on", f"lists {x!r} twice")
            if x == task_id:
                raise _FieldError("depends_on", f"task {task_id!r} depends on itself")
            seen.add(x)
        deps = tuple(raw)
    return Task(
        task_id=task_id,
        prompt=prompt,
        prompt_tokens=prompt_tokens,
        max_new_tokens=max_new,  # type: ignore[arg-type]
        priority=priority,  # type: ignore[arg-type]
        schedule_time=schedule_time,
        depends_on=deps,
        deadline=deadline,
        duration_estimate=duration,  # type: ignore[arg-type]
        shards=shards,  # type: ignore[arg-type]
        tenant=_str_field(d, "tenant"),
        request_class=_str_field(d, "request_class"),
        payload=payload,
        line=line,
        index=index,
    )


def _error(path: str, exc: _FieldError, line: Optional[int], index: Optional[int]) -> JobFileError:
    return JobFileError(exc.message, path=path, line=line, field=exc.field, index=index)


def _finish(path: str, tasks: list[Task]) -> list[Task]:
    """Whole-job checks: duplicates, unknown dependencies, size after expansion."""
    first: dict[str, Task] = {}
    total = 0
    for t in tasks:
        prev = first.get(t.task_id)
        if prev is not None:
            at = f"line {prev.line}" if prev.line is not None else f"task {prev.index}"
            raise JobFileError(
                f"duplicate task_id {t.task_id!r} (first at {at})", path=path, line=t.line, field="task_id", index=t.index
            )
        first[t.task_id] = t
        total += t.shards
        if total > MAX_TASKS:
            raise JobFileError(
                f"the job has more than {MAX_TASKS:,} tasks (after shard expansion)",
                path=path, line=t.line, field="shards" if t.shards > 1 else None, index=t.index,
            )
    for t in tasks:
        n = 0
        for dep in t.depends_on:
            u = first.get(dep)
            if u is None:
                raise JobFileError(
                    f"unknown dependency {dep!r}: no task has that task_id", path=path, line=t.line,
                    field="depends_on", index=t.index,
                )
            n += u.shards
        if n > MAX_DEPENDENCIES:
            raise JobFileError(
                f"depends on {n:,} tasks after shard expansion (limit {MAX_DEPENDENCIES})",
                path=path, line=t.line, field="depends_on", index=t.index,
            )
    return tasks


def parse_tasks(data: Any, *, path: str = "<data>", lines: Optional[Sequence[Optional[int]]] = None) -> list[Task]:
    """Validate tasks given as Python data: a list of task dicts, or ``{"tasks": [...]}``
    (what ``json.load`` gives for a JSON job file). Shards are not expanded.

    Raises:
        JobFileError: a bad task or job (the message names the task's position and field).
    """
    if isinstance(data, dict):
        dup = getattr(data, "dup", None)
        if dup is not None:
            raise JobFileError("given twice", path=path, line=1 if lines is not None else None, field=dup)
        extra = [k for k in data if k != "tasks"]
        if extra or "tasks" not in data:
            raise JobFileError(
                f"a job object has exactly one field, 'tasks' (a list of tasks); got {sorted(data)!r}",
                path=path, line=1 if lines is not None else None, field=extra[0] if extra else "tasks",
            )
        data = data["tasks"]
    if not isinstance(data, list):
        raise JobFileError(
            f"a job is a list of tasks or {{\"tasks\": [...]}}, got {_kind(data)}",
            path=path, line=1 if lines is not None else None, field="tasks" if lines is None else None,
        )
    if len(data) > MAX_TASKS:
        raise JobFileError(f"the job has {len(data):,} tasks (limit {MAX_TASKS:,})", path=path)
    out = []
    for i, d in enumerate(data):
        line = lines[i] if lines is not None and i < len(lines) else None
        try:
            out.append(_task_from_dict(d, line, i))
        except _FieldError as exc:
            raise _error(path, exc, line, i) from None
    return _finish(path, out)


def _element_lines(text: str) -> list[Optional[int]]:
    """The 1-based line where each task element starts, for a JSON text already known
    to parse: a list, or an object whose 'tasks' is a list."""
    dec = json.JSONDecoder()

    def ws(i: int) -> int:
        return _WS.match(text, i).end()  # type: ignore[union-attr]

    # Elements come in increasing offsets: count newlines only since the last one
    # (counting from the start each time was quadratic: 100,000 tasks on a line, 82 s).
    at = [0, 1]  # offset, line there

    def line_of(i: int) -> int:
        at[1] += text.count("\n", at[0], i)
        at[0] = i
        return at[1]

    def array(i: int) -> list[Optional[int]]:
        out: list[Optional[int]] = []
        i = ws(i + 1)
        if text[i] == "]":
            return out
        while True:
            i = ws(i)
            out.append(line_of(i))
            _, i = dec.raw_decode(text, i)
            i = ws(i)
            if text[i] == "]":
                return out
            i += 1  # ','

    try:
        i = ws(1 if text.startswith("\ufeff") else 0)
        if text[i] == "[":
            return array(i)
        if text[i] == "{":
            i = ws(i + 1)
            while text[i] != "}":
                key, i = dec.raw_decode(text, i)
                i = ws(ws(i) + 1)  # ':'
                if key == "tasks" and text[i] == "[":
                    return array(i)
                _, i = dec.raw_decode(text, i)
                i = ws(i)
                if text[i] == ",":
                    i = ws(i + 1)
    except (ValueError, IndexError, RecursionError):
        pass
    return []


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JOB_FILE_BYTES + 1)
    except OSError as exc:
        raise JobFileError(f"cannot read the file: {exc.strerror or exc}", path=path) from None
    if len(raw) > MAX_JOB_FILE_BYTES:
        raise JobFileError(f"the file is over the limit of {MAX_JOB_FILE_BYTES:,} bytes", path=path)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise JobFileError(f"not UTF-8 text (byte {exc.start})", path=path, line=line) from None


def read_job(path: Union[str, "os.PathLike[str]"], *, format: Optional[str] = None) -> list[Task]:
    """Read and validate a job file; shards are not expanded (see :func:`load_job`).

    ``format``: ``"json"`` or ``"jsonl"``; default from the name (``.jsonl``/``.ndjson``:
    JSONL, else JSON).

    Raises:
        JobFileError: unreadable, not JSON, or a bad task (file, line and field named).
    """
    p = os.fspath(path)
    if format is None:
        format = "jsonl" if p.lower().endswith((".jsonl", ".ndjson")) else "json"
    if format not in ("json", "jsonl"):
        raise JobFileError(f"format must be 'json' or 'jsonl', got {format!r}", path=p)
    text = _read_text(p)
    if format == "json":
        try:
            data = _DECODER.decode(text)
        except json.JSONDecodeError as exc:
            raise JobFileError(f"not valid JSON: {exc.msg} (column {exc.colno})", path=p, line=exc.lineno) from None
        except ValueError:  # an integer of more digits than Python converts
            raise JobFileError("not valid JSON: an integer of more than 4300 digits", path=p) from None
        except RecursionError:
            raise JobFileError("JSON nested too deeply", path=p) from None
        return parse_tasks(data, path=p, lines=_element_lines(text))
    tasks: list[Task] = []
    total = 0
    # Lines end at "\n" only (a trailing "\r" is dropped): str.splitlines() also breaks at
    # U+2028, U+2029, U+0085, \x1c-\x1e, \v and \f, which a JSON string may hold as they are.
    for lineno, line in enumerate(text.split("\n"), 1):
        if line.endswith("\r"):
            line = line[:-1]
        if not line.strip():
            continue
        index = len(tasks)
        try:
            d = _DECODER.decode(line)
        except json.JSONDecodeError as exc:
            raise JobFileError(f"not valid JSON: {exc.msg} (column {exc.colno})", path=p, line=lineno) from None
        except ValueError:  # an integer of more digits than Python converts
            raise JobFileError("not valid JSON: an integer of more than 4300 digits", path=p, line=lineno) from None
        except RecursionError:
            raise JobFileError("JSON nested too deeply", path=p, line=lineno) from None
        try:
            t = _task_from_dict(d, lineno, index)
        except _FieldError as exc:
            raise _error(p, exc, lineno, index) from None
        total += t.shards
        if total > MAX_TASKS:
            raise JobFileError(f"the job has more than {MAX_TASKS:,} tasks (after shard expansion)", path=p, line=lineno)
        tasks.append(t)
    return _finish(p, tasks)


def load_job(path: Union[str, "os.PathLike[str]"], *, format: Optional[str] = None) -> list[Task]:
    """:func:`read_job` then :func:`expand_shards`, checking for cycles
    (:class:`JobCycleError`).

    Raises:
        JobFileError: as :func:`read_job`, and for a file that holds no task (a job of
            nothing is a mistake: an empty list, object or file).
    """
    tasks = read_job(path, format=format)
    if not tasks:
        raise JobFileError("the job has no tasks", path=os.fspath(path))
    try:
        topological_order(tasks)
    except JobCycleError as exc:
        first = next((t for t in tasks if t.task_id == exc.cycle[0]), None)
        raise JobCycleError(exc.cycle, path=os.fspath(path), line=first.line if first else None) from None
    return expand_shards(tasks)


def expand_shards(tasks: Sequence[Task]) -> list[Task]:
    """Each task with ``shards = n > 1`` becomes ``task_id#0`` .. ``task_id#n-1`` (in
    place, in file order), each with the task's fields and ``shard = (k, n)``; every
    ``depends_on`` naming a sharded task names all its shards instead. Tasks with one
    shard are kept as they are, so expanding twice changes nothing."""
    _all_tasks(tasks)
    sharded = {t.task_id: t.shards for t in tasks if t.shards > 1}
    if not sharded:
        return list(tasks)

    def deps(t: Task) -> tuple[str, ...]:
        out: list[str] = []
        for d in t.depends_on:
            n = sharded.get(d)
            if n is None:
                out.append(d)
            else:
                out.extend(f"{d}#{k}" for k in range(n))
        return tuple(out)

    out: list[Task] = []
    for t in tasks:
        dd = deps(t)
        if t.shards > 1:
            for k in range(t.shards):
                out.append(dataclasses.replace(t, task_id=f"{t.task_id}#{k}", depends_on=dd, shards=1, shard=(k, t.shards)))
        else:
            out.append(t if dd == t.depends_on else dataclasses.replace(t, depends_on=dd))
    return out


# --------------------------------------------------------------------------- graph


def _all_tasks(tasks: Sequence[Any]) -> None:
    for i, t in enumerate(tasks):
        if not isinstance(t, Task):
            raise JobFileError(
                f"tasks must be Task objects (parse_tasks makes them from dicts), got {_kind(t)} {_short(t)}", index=i
            )


def _graph(tasks: Sequence[Task]) -> tuple[dict[str, int], list[list[int]], list[int]]:
    """ids -> position, dependents lists, in-degrees. Raises DependencyError on a
    duplicate or unknown task_id."""
    pos: dict[str, int] = {}
    _all_tasks(tasks)
    for i, t in enumerate(tasks):
        if t.task_id in pos:
            raise DependencyError(f"duplicate task_id {t.task_id!r}")
        pos[t.task_id] = i
    dependents: list[list[int]] = [[] for _ in tasks]
    indeg = [0] * len(tasks)
    for i, t in enumerate(tasks):
        for d in t.depends_on:
            j = pos.get(d)
            if j is None:
                raise DependencyError(f"task {t.task_id!r} depends on unknown task {d!r}")
            dependents[j].append(i)
            indeg[i] += 1
    return pos, dependents, indeg


def topological_order(tasks: Sequence[Task]) -> list[str]:
    """The task_ids in an order where every task comes after its dependencies (Kahn's
    algorithm, O(tasks + edges)). Stable: of the tasks ready at once, the one first in
    ``tasks`` comes first, so a list already in dependency order is returned as it is.

    Raises:
        JobCycleError: the dependencies form a cycle (the message lists it).
        DependencyError: a duplicate task_id or an unknown dependency.
    """
    pos, dependents, indeg = _graph(tasks)
    ready = [i for i, n in enumerate(indeg) if n == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in dependents[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                heapq.heappush(ready, j)
    if len(order) < len(tasks):
        raise JobCycleError(_find_cycle(tasks, pos, indeg))
    return [tasks[i].task_id for i in order]


def _find_cycle(tasks: Sequence[Task], pos: dict[str, int], indeg: list[int]) -> list[str]:
    # Every task left with indeg > 0 has a dependency also left: follow those edges
    # from the first such task until one repeats.
    start = next(i for i, n in enumerate(indeg) if n > 0)
    seen: dict[int, int] = {}
    path: list[int] = []
    i = start
    while i not in seen:
        seen[i] = len(path)
        path.append(i)
        i = next(pos[d] for d in tasks[i].depends_on if indeg[pos[d]] > 0)
    cyc = path[seen[i] :] + [i]
    return [tasks[k].task_id for k in cyc]


def propagate_deadlines(tasks: Sequence[Task], deadline: Optional[float] = None) -> dict[str, float]:
    """Each task's latest finish time (``math.inf`` when unconstrained)::

        latest_finish(t) = min(t.deadline, deadline,
                               min over tasks u depending on t of
                                   latest_finish(u) - u.duration_estimate)

    computed in reverse topological order, O(tasks + edges). Its latest start is
    ``latest_finish(t) - t.duration_estimate``.

    Raises:
        JobCycleError, DependencyError: as :func:`topological_order`.
        InvalidArgumentError: ``deadline`` is not a finite number.
    """
    if deadline is not None:
        try:  # (math.isfinite of an integer beyond any float raises OverflowError)
            ok = not isinstance(deadline, bool) and isinstance(deadline, numbers.Real) and math.isfinite(deadline)
        except OverflowError:
            ok = False
        if not ok:
            from .errors import InvalidArgumentError

            raise InvalidArgumentError(f"the job deadline must be a finite number of seconds, got {_short(deadline)}")
    job = math.inf if deadline is None else float(deadline)
    order = topological_order(tasks)
    by_id = {t.task_id: t for t in tasks}
    lf: dict[str, float] = {}
    for tid in order:
        t = by_id[tid]
        lf[tid] = min(job, math.inf if t.deadline is None else t.deadline)
    for tid in reversed(order):  # every dependent is final before its dependencies
        u = by_id[tid]
        start = lf[tid] - u.duration_estimate
        for d in u.depends_on:
            if start < lf[d]:
                lf[d] = start
    return {tid: lf[tid] for tid in order}


# --------------------------------------------------------------------------- running


def _check_now(now: Any) -> float:
    """``now`` as a float: InvalidArgumentError unless a finite number within the
    clock's +-1e15 (math.inf would skip every task as past its latest finish)."""
    from .errors import InvalidArgumentError

    ok = False
    if not isinstance(now, bool) and isinstance(now, numbers.Real):
        try:
            x = float(now)
            ok = math.isfinite(x) and -MAX_TIME <= x <= MAX_TIME
        except (OverflowError, ValueError):
            pass
    if not ok:
        raise InvalidArgumentError(f"now must be a finite number of seconds within +-1e15, got {_short(now)}")
    return x


class JobRunner:
    """Submits a job's tasks to a :class:`capsched.Scheduler` as they become due.

    Args:
        scheduler: the scheduler.
        tasks: :class:`Task` objects (from :func:`read_job`/:func:`load_job`/
            :func:`parse_tasks`) or task dicts; shards are expanded here.
        job_deadline: a deadline for the whole job (absolute, scheduler clock).
        sched_class: the tasks' scheduling class: ``"background"`` (the default, offline
            work) fills capacity that online traffic leaves idle; ``"normal"`` competes
            with online work; ``"deadline"`` needs every task to have a finite latest
            finish.

    :meth:`poll` submits every task whose ``schedule_time`` has come and whose
    dependencies were all submitted (so its ``depends_on`` can name their scheduler ids;
    the scheduler then holds it until they complete), in topological order, with
    ``deadline`` = its propagated latest finish when finite. A task is not submitted but
    *skipped* (the reason in :attr:`skipped`) when one of its dependencies has already
    failed, expired or been cancelled, or was itself skipped, or when its latest finish
    has passed by the time it could be submitted. A poll checks beforehand every refusal
    the scheduler's state lets it predict, so an invalid task submits nothing, and a full
    queue takes the tasks that fit and leaves the rest pending (see :meth:`poll`).

    A poll costs time in proportion to the tasks it could change (those due, those
    whose dependencies were all submitted, and the dependents of requests that failed),
    not to the size of the job: each pending task counts its dependencies not yet
    submitted, and only a task whose count is 0 waits in a queue ordered by
    ``schedule_time``.

    The runner is thread-safe: :meth:`poll`, :meth:`status`, :meth:`done`,
    :meth:`submitted_all`, :meth:`next_poll_at` and :meth:`task_of` hold one lock, so
    polls from several threads submit each task once. Read the attributes below (which
    only a poll changes) from other threads with care: a concurrent poll may be
    changing them.

    Attributes:
        ids: task_id -> scheduler id of every submitted task.
        submission_order: the submitted task_ids, in submission order.
        latest_finish: task_id -> propagated latest finish (``math.inf``: none).
        skipped: task_id -> reason, for tasks never submitted (see above).
    """

    def __init__(
        self,
        scheduler: Scheduler,
        tasks: Iterable[Union[Task, Mapping[str, Any]]],
        *,
        job_deadline: Optional[float] = None,
        sched_class: str = "background",
    ) -> None:
        given = list(tasks)
        checked: list[Task] = [t for t in given if isinstance(t, Task)]
        if len(checked) != len(given):
            dicts = [t for t in given if isinstance(t, Mapping)]
            if len(dicts) != len(given):
                raise JobFileError("tasks must all be Task objects or all task dicts")
            checked = parse_tasks([dict(t) for t in dicts])
        if sched_class not in SCHED_CLASSES:
            raise ConfigError(f"sched_class must be one of {SCHED_CLASSES}, got {sched_class!r}")
        self._tasks = expand_shards(checked)
        if len(self._tasks) > MAX_TASKS:
            raise JobFileError(f"the job has {len(self._tasks):,} tasks (limit {MAX_TASKS:,})")
        self.latest_finish = propagate_deadlines(self._tasks, job_deadline)  # also checks the graph
        self._by_id = {t.task_id: t for t in self._tasks}
        if sched_class == "deadline":
            for t in self._tasks:
                if not math.isfinite(self.latest_finish[t.task_id]):
                    raise ConfigError(
                        f"sched_class 'deadline' needs a deadline on every task; task {t.task_id!r} has none "
                        "(give it, a dependent, or the job a deadline)"
                    )
        self.scheduler = scheduler
        self.sched_class = sched_class
        self.ids: dict[str, int] = {}
        self.submission_order: list[str] = []
        self.skipped: dict[str, str] = {}
        self._task_of: dict[int, str] = {}
        # The submitted requests not yet seen ended, in submission order. A request ends
        # in the scheduler (complete, fail, expiry in a step, cancel: from any caller),
        # which tells the runner nothing, so done() looks at the oldest one only: while
        # it is live the job is not done; once ended it is dropped for good (ended is
        # final) and the next one is looked at. Each request is dropped once, so done()
        # costs O(1) amortized: one status() a call plus one per request dropped.
        self._live: deque[int] = deque()
        self._lock = threading.RLock()
        # The pending tasks (neither submitted nor skipped) and, per task, its index in
        # topological order (submission order within a poll), its dependents, the
        # number of its dependencies not yet submitted, and the number of its
        # dependents still pending.
        order = list(self.latest_finish)  # topological order
        self._pending: set[str] = set(order)
        self._topo: dict[str, int] = {tid: i for i, tid in enumerate(order)}
        self._dependents: dict[str, list[str]] = {tid: [] for tid in order}
        for tid in order:
            for d in self._by_id[tid].depends_on:
                self._dependents[d].append(tid)
        self._unsubmitted_deps: dict[str, int] = {tid: len(self._by_id[tid].depends_on) for tid in order}
        self._open_dependents: dict[str, int] = {tid: len(ds) for tid, ds in self._dependents.items()}
        # Pending tasks whose dependencies were all submitted, by (schedule_time, index);
        # an entry whose task is no longer pending is dropped when met.
        self._ready: list[tuple[float, int, str]] = [
            (self._start_key(tid), self._topo[tid], tid) for tid in order if not self._unsubmitted_deps[tid]
        ]
        heapq.heapify(self._ready)
        # Submitted tasks with a pending dependent whose request has not been seen
        # completed: a poll asks the scheduler their status (a failure skips dependents).
        self._watch: set[str] = set()
        # next_poll_at: the schedule_times, sorted, and "next pending at or after i"
        # links (path-halving union-find over positions; len = one past the end).
        timed = sorted((t.schedule_time, self._topo[t.task_id], t.task_id) for t in self._tasks
                       if t.schedule_time is not None)
        self._st_keys: list[float] = [float(x[0]) for x in timed]
        self._st_pos: dict[str, int] = {x[2]: i for i, x in enumerate(timed)}
        self._st_next: list[int] = list(range(len(timed) + 1))

    def _start_key(self, tid: str) -> float:
        st = self._by_id[tid].schedule_time
        return -math.inf if st is None else float(st)

    @property
    def tasks(self) -> list[Task]:
        """The tasks after shard expansion, in the order given."""
        return list(self._tasks)

    def task(self, task_id: str) -> Task:
        """The task with this task_id (a shard is ``task_id#k``); KeyError if there is none."""
        return self._by_id[task_id]

    def task_of(self, request_id: int) -> Optional[str]:
        """The task_id a scheduler id was submitted for (None if not one of this job's)."""
        with self._lock:
            return self._task_of.get(request_id)

    def _next_pending_at(self, i: int) -> int:
        nxt = self._st_next
        while nxt[i] != i:
            nxt[i] = nxt[nxt[i]]
            i = nxt[i]
        return i

    def next_poll_at(self, after: float = -math.inf) -> float:
        """The earliest ``schedule_time`` later than ``after`` of a task not yet
        submitted (``math.inf`` if none): when a poll may next submit something that
        is not waiting on a dependency."""
        with self._lock:
            j = self._next_pending_at(bisect.bisect_right(self._st_keys, after))
            return self._st_keys[j] if j < len(self._st_keys) else math.inf

    def _leave(self, tid: str) -> None:
        """Task tid is no longer pending (submitted or skipped)."""
        self._pending.discard(tid)
        pos = self._st_pos.get(tid)
        if pos is not None:
            self._st_next[pos] = pos + 1
        for d in self._by_id[tid].depends_on:
            self._open_dependents[d] -= 1
            if not self._open_dependents[d]:
                self._watch.discard(d)

    def poll(self, now: Optional[float] = None) -> list[tuple[str, int]]:
        """Submit what is due at ``now`` (default: the scheduler's clock); returns the
        ``(task_id, id)`` pairs submitted, in submission order.

        Every request of the poll is built and checked before the first is submitted,
        against each refusal the scheduler's state lets the runner predict: a request
        needing more KV tokens than any device open to its tenant (and pool) holds, a
        prompt the scheduler's tokenizer refuses, no device open to the task's tenant
        (or pool), a tenant or request class beyond the scheduler's limits, or a deadline
        not after the scheduler's clock (which may be ahead of ``now``). Such a refusal
        raises ``InvalidRequestError`` with the task_id and "(nothing was submitted)" in
        its message, and the poll changes nothing: no task is submitted or skipped.

        Back-pressure is predicted as well: ``Config.max_queued`` (from ``stats()``: the
        requests waiting, queued or retrying plus this poll's) and
        ``Config.max_queued_per_tenant`` among this poll's own tasks. The tasks that fit
        are submitted, in order, and then ``QueueFullError`` names the first task that did
        not fit and those submitted (or says "(nothing was submitted)" when none fit);
        the rest stay pending for a later poll, so a job larger than the queue goes in
        as the queue drains.

        What cannot be predicted from outside the scheduler's core is left to the
        submit: ``Config.max_queued_per_tenant`` counting the tenant's requests from
        outside the job (the core does not expose a tenant's queued count),
        deadline-class admission (``AdmissionError``), a dependency's
        ``Config.max_dependents``, and anything another thread submits, fails or
        cancels meanwhile. Such a refusal leaves the tasks before it in this
        poll submitted and recorded (with this poll's skips) and the rest pending for a
        later poll; an ``InvalidRequestError`` then names the tasks already submitted.

        Raises:
            InvalidArgumentError: ``now`` is not a finite number of seconds within
                +-1e15 (nothing changes).
            InvalidRequestError, QueueFullError, AdmissionError: as above.
        """
        with self._lock:
            return self._poll(now)

    def _poll(self, now: Optional[float]) -> list[tuple[str, int]]:
        s = self.scheduler
        if now is None:
            now = getattr(s, "_clock", time.monotonic)()
        now = _check_now(now)
        by_id, pending, topo = self._by_id, self._pending, self._topo
        # Submitted dependencies that failed, expired or were cancelled since (a request
        # seen completed stays completed: it is not asked again).
        failed: dict[str, str] = {}
        for d in list(self._watch):
            st = s.status(self.ids[d])
            if st in ("failed", "expired", "cancelled"):
                failed[d] = st
            elif st == "completed":
                self._watch.discard(d)
        # Walk, in topological order, what this poll can change: the ready tasks now
        # due, the dependents of failed requests, and whatever those lead to.
        work: list[tuple[int, str]] = []
        popped: list[tuple[float, int, str]] = []
        for d in failed:
            for u in self._dependents[d]:
                if u in pending:
                    work.append((topo[u], u))
        ready = self._ready
        while ready and ready[0][0] <= now:
            e = heapq.heappop(ready)
            if e[2] in pending:
                popped.append(e)
                work.append((e[1], e[2]))
        heapq.heapify(work)
        try:
            skip: dict[str, str] = {}
            due: list[str] = []
            decided: set[str] = set()
            newly: dict[str, int] = {}  # dependencies due in this poll, per dependent
            while work:
                _, tid = heapq.heappop(work)
                if tid in decided:
                    continue
                decided.add(tid)
                t = by_id[tid]
                reason = None
                for d in t.depends_on:
                    if d in self.skipped or d in skip:
                        reason = f"dependency {d!r} was not run ({(self.skipped.get(d) or skip[d])})"
                        break
                    how = failed.get(d)
                    if how is not None:
                        reason = f"dependency {d!r} (request {self.ids[d]}) {how}"
                        break
                if reason is None:
                    if self._unsubmitted_deps[tid] - newly.get(tid, 0) or (
                        t.schedule_time is not None and t.schedule_time > now
                    ):
                        continue  # stays pending
                    lf = self.latest_finish[tid]
                    if lf <= now:
                        reason = f"its latest finish {lf:g} passed before it could be submitted (now {now:g})"
                if reason is not None:
                    skip[tid] = reason
                    for u in self._dependents[tid]:
                        if u in pending:
                            heapq.heappush(work, (topo[u], u))
                    continue
                due.append(tid)
                for u in self._dependents[tid]:
                    if u in pending:
                        n = newly[u] = newly.get(u, 0) + 1
                        if n == self._unsubmitted_deps[u]:
                            heapq.heappush(work, (topo[u], u))
            # (work pops in topological order, so due is in it too)
            reqs: dict[str, InferenceRequest] = {}
            built: list[tuple[str, InferenceRequest]] = []
            for tid in due:
                t = by_id[tid]
                lf = self.latest_finish[tid]
                deps = [self.ids[d] if d in self.ids else reqs[d] for d in t.depends_on]
                req = t.to_request(deadline=lf if math.isfinite(lf) else None, depends_on=deps,
                                   sched_class=self.sched_class)
                reqs[tid] = req
                built.append((tid, req))
            full = self._precheck(built, now)
            if full is not None and full[0] == 0:
                raise QueueFullError(f"{full[1]} (nothing was submitted)")
        except BaseException:
            for e in popped:
                heapq.heappush(ready, e)
            raise
        # Everything is built and valid: record the skips, then submit in order.
        self.skipped.update(skip)
        for tid in skip:
            self._leave(tid)
        submitted: list[tuple[str, int]] = []
        if full is not None:  # back-pressure: what fits goes in, the rest waits
            built = built[: full[0]]
        try:
            for tid, req in built:
                try:
                    rid = s.submit(req, now=now)
                except InvalidRequestError as exc:  # (e.g. another thread took the last tenant number)
                    done_ = ", ".join(repr(x) for x, _ in submitted[:10]) + (" ..." if len(submitted) > 10 else "")
                    also = (f" (this poll already submitted {len(submitted)} task(s): {done_})" if submitted
                            else " (nothing was submitted)")
                    raise InvalidRequestError(f"task {tid!r}: {exc}{also}") from None
                self.ids[tid] = rid
                self.submission_order.append(tid)
                self._task_of[rid] = tid
                self._live.append(rid)
                submitted.append((tid, rid))
                self._leave(tid)
                if self._open_dependents[tid]:
                    self._watch.add(tid)
                for u in self._dependents[tid]:
                    if u in pending:
                        self._unsubmitted_deps[u] -= 1
                        if not self._unsubmitted_deps[u]:
                            heapq.heappush(ready, (self._start_key(u), topo[u], u))
        finally:
            # A task that was ready before this poll and not submitted waits again.
            for e in popped:
                if e[2] in pending:
                    heapq.heappush(ready, e)
        if full is not None:
            done_ = ", ".join(repr(x) for x, _ in submitted[:10]) + (" ..." if len(submitted) > 10 else "")
            raise QueueFullError(f"{full[1]} (this poll submitted the {len(submitted)} task(s) before it: {done_}; "
                                 "the rest stay pending)")
        return submitted

    def _precheck(self, due: list[tuple[str, InferenceRequest]], now: float) -> Optional[tuple[int, str]]:
        """The refusals the scheduler would make at submit that its state predicts
        (see :meth:`poll`), in submission order, before anything is submitted: raises
        for an invalid request; returns (index, message) of the first request that
        would find the queue full (back-pressure: those before it fit), or None."""
        full: Optional[tuple[int, str]] = None
        if not due:
            return full
        s = self.scheduler

        def refuse(exc_type: type[Exception], tid: str, message: str) -> None:
            raise exc_type(f"task {tid!r}: {message} (nothing was submitted)")

        devices = getattr(s, "devices", None)
        pools = getattr(s, "_pools", None)
        tenants = getattr(s, "_tenants", None)
        classes = getattr(s, "_classes", None)
        estimate = getattr(s, "_estimate", None)
        config = getattr(s, "config", None)
        max_queued = int(getattr(config, "max_queued", 0) or 0)
        per_tenant = int(getattr(config, "max_queued_per_tenant", 0) or 0)
        # stats() is read for two things only: the core's clock, which only a deadline
        # is checked against, and the queued count, which only max_queued limits. It
        # builds a dict of counters per device (O(devices) a call), so a poll
        # whose requests have no deadline under no max_queued does not ask for it.
        need_stats = max_queued > 0 or any(req.deadline is not None for _, req in due)
        stats = s.stats() if need_stats and hasattr(s, "stats") else None
        clock = stats.get("now") if stats else None
        core_now = max(now, clock) if isinstance(clock, float) else now
        queued = None
        if stats and all(k in stats for k in ("waiting", "queued", "retrying")):
            queued = int(stats["waiting"]) + int(stats["queued"]) + int(stats["retrying"])
        new_tenants: set[Optional[str]] = set()
        new_classes: set[Optional[str]] = set()
        mine: dict[Optional[str], int] = {}
        open_cache: dict[tuple[Optional[str], Optional[str], Optional[str]], Optional[list[Any]]] = {}
        for i, (tid, req) in enumerate(due):
            pool, fallback = getattr(req, "pool", None), getattr(req, "fallback_pool", None)
            p = req.prompt_tokens
            if p is None and estimate is not None:
                try:
                    p = estimate(req.prompt)
                except InvalidRequestError as exc:
                    refuse(InvalidRequestError, tid, str(exc))
            if pools is not None:
                for name in (pool, fallback):
                    if name is not None and name not in pools:
                        refuse(InvalidRequestError, tid, f"pool {name!r} has no device; pools: {sorted(pools) or 'none'}")
            if tenants is not None and req.tenant not in tenants and req.tenant not in new_tenants:
                if len(tenants) + len(new_tenants) >= MAX_TENANTS:
                    refuse(InvalidRequestError, tid, f"tenant {req.tenant!r} would be tenant number "
                           f"{len(tenants) + len(new_tenants) + 1}, over the limit of {MAX_TENANTS} tenants")
                new_tenants.add(req.tenant)
            if classes is not None and req.request_class not in classes and req.request_class not in new_classes:
                if len(classes) + len(new_classes) >= MAX_REQUEST_CLASSES:
                    refuse(InvalidRequestError, tid, f"request_class {req.request_class!r} would be class number "
                           f"{len(classes) + len(new_classes) + 1}, over the limit of {MAX_REQUEST_CLASSES} classes")
                new_classes.add(req.request_class)
            if req.deadline is not None and not req.deadline > core_now:
                refuse(InvalidRequestError, tid, f"deadline {req.deadline:g} is not after the scheduler's clock "
                       f"({core_now:g})")
            if devices:
                key = (req.tenant, pool, fallback)
                if key not in open_cache:
                    open_cache[key] = _open_devices(devices, req.tenant, pool, fallback)
                members = open_cache[key]
                if not members:
                    where = " (no device is shared, and none lists it)" if pool is None else \
                        " in the request's pool or fallback pool"
                    refuse(InvalidRequestError, tid, f"no device is open to tenant {req.tenant!r}{where}")
                budgets = [getattr(d, "kv_tokens", None) for d in members or ()]
                if p is not None and budgets and all(b is not None for b in budgets):
                    largest = max(int(b) for b in budgets if b is not None)
                    need = p + req.max_new_tokens
                    if need > largest:
                        refuse(InvalidRequestError, tid,
                               f"the request needs {need} KV tokens (prompt_tokens + max_new_tokens), more than any "
                               f"device open to it holds (the largest kv_tokens is {largest})")
            if full is None:
                n = mine[req.tenant] = mine.get(req.tenant, 0) + 1
                if queued is not None and max_queued > 0 and queued + i + 1 > max_queued:
                    full = (i, f"task {tid!r}: queue full: {queued} requests are waiting, queued or retrying and "
                               f"this poll's {i + 1} would exceed max_queued = {max_queued}")
                elif per_tenant > 0 and n > per_tenant:
                    full = (i, f"task {tid!r}: queue full for tenant {req.tenant!r}: this poll's {n} would exceed "
                               f"max_queued_per_tenant = {per_tenant}")
        return full

    def status(self, task_id: str) -> str:
        """``'pending'`` (not yet submitted), ``'skipped'`` (never submitted: see
        :attr:`skipped`), or the scheduler's status of its request; KeyError if no task
        has this task_id (as :meth:`task`)."""
        with self._lock:
            if task_id not in self._by_id:
                raise KeyError(task_id)
            if task_id in self.skipped:
                return "skipped"
            rid = self.ids.get(task_id)
            return "pending" if rid is None else self.scheduler.status(rid)

    def submitted_all(self) -> bool:
        """Every task has been submitted or skipped."""
        with self._lock:
            return not self._pending

    def done(self) -> bool:
        """Every task has been submitted and has ended (completed, failed, expired or
        cancelled), or was skipped. Amortized O(1): it asks the scheduler the status of
        the oldest request not yet seen ended, and of the next only once that one has."""
        with self._lock:
            if self._pending:
                return False
            live, status = self._live, self.scheduler.status
            while live and status(live[0]) in _ENDED:
                live.popleft()
            return not live


_ENDED = frozenset(("completed", "failed", "expired", "cancelled"))


def _open_devices(devices: Sequence[Any], tenant: Optional[str], pool: Optional[str],
                  fallback: Optional[str]) -> list[Any]:
    """The devices a request of this tenant and pool may run on, as the scheduler's core
    places it: a tenant some device lists goes only to the devices listing it, any other
    to the shared devices (those listing no tenant); with a pool, only those in it or in
    the fallback pool."""
    pinned = [d for d in devices if tenant is not None and tenant in (getattr(d, "tenants", ()) or ())]
    members = pinned or [d for d in devices if not getattr(d, "tenants", ())]
    if pool is None:
        return members
    return [d for d in members
            if getattr(d, "pool", None) == pool or (fallback is not None and getattr(d, "pool", None) == fallback)]


# --------------------------------------------------------------------------- simulation


@dataclasses.dataclass
class TaskRun:
    """One task's life in :func:`simulate_job` (times in seconds of virtual time)."""

    task_id: str
    status: str
    request_id: Optional[int] = None
    device: Optional[str] = None
    submitted: Optional[float] = None
    start: Optional[float] = None
    end: Optional[float] = None
    latest_finish: float = math.inf
    reason: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (an infinite latest finish as None)."""
        d = dataclasses.asdict(self)
        d["latest_finish"] = None if not math.isfinite(self.latest_finish) else self.latest_finish
        return d


@dataclasses.dataclass
class JobRun:
    """What :func:`simulate_job` did: one :class:`TaskRun` per task (topological order),
    the makespan (last end; 0 when nothing ran), the fleet and the scheduler's stats."""

    tasks: list[TaskRun]
    makespan: float
    fleet: str
    stats: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: fleet, makespan, task counts by status, tasks and stats."""
        counts: dict[str, int] = {}
        for t in self.tasks:
            counts[t.status] = counts.get(t.status, 0) + 1
        return {
            "fleet": self.fleet,
            "makespan": self.makespan,
            "counts": counts,
            "tasks": [t.to_dict() for t in self.tasks],
            "stats": {k: v for k, v in self.stats.items() if k != "devices"},
        }


def simulate_job(
    tasks: Sequence[Task],
    *,
    fleet: Any = None,
    policy: str = "edf",
    sched_class: str = "background",
    job_deadline: Optional[float] = None,
    max_batch_size: int = 32,
    max_events: int = 10_000_000,
) -> JobRun:
    """Run a job on a simulated fleet in virtual time, from time 0.

    The devices are ``fleet`` (a :class:`capsched.sim.fleet.Fleet`; default
    :data:`~capsched.sim.fleet.DEFAULT_FLEET`) built for the job's mean prompt and output
    lengths and described to a :class:`capsched.Scheduler` with
    :meth:`~capsched.sim.fleet.Fleet.capsched_devices` (one batch at a time per
    device). A :class:`JobRunner` submits the tasks; each dispatched batch of ``n``
    requests runs for the device cost model's ``service_time(P, O, batch=n)`` with ``P``
    and ``O`` its longest prompt (``estimate_tokens`` for a prompt text) and
    ``max_new_tokens``, then completes.
    """
    from .scheduler import Scheduler
    from .sim.fleet import DEFAULT_FLEET, Fleet

    tasks = expand_shards(tasks)
    fleet = DEFAULT_FLEET if fleet is None else fleet
    prompt_len = {
        t.task_id: max(1, t.prompt_tokens if t.prompt_tokens is not None else estimate_tokens(t.prompt or ""))
        for t in tasks
    }
    n = max(1, len(tasks))
    mean_p = sum(prompt_len.values()) / n if tasks else 512.0
    mean_o = sum(t.max_new_tokens for t in tasks) / n if tasks else 256.0
    sim_devices = fleet.build(mean_p, mean_o)
    sched = Scheduler(
        Fleet.capsched_devices(sim_devices, max_inflight_batches=1),
        policy=policy,
        max_batch_size=max_batch_size,
        enable_dynamic_batching=False,
    )
    runner = JobRunner(sched, tasks, job_deadline=job_deadline, sched_class=sched_class)
    runs = {tid: TaskRun(tid, "pending", latest_finish=lf) for tid, lf in runner.latest_finish.items()}
    events: list[tuple[float, int, int, list[int]]] = []
    seq = 0
    t = 0.0
    seen = 0
    for _ in range(max_events):
        try:
            runner.poll(t)
        except (AdmissionError, QueueFullError):
            pass  # the rest stay pending: polled again after the next completion
        for tid in runner.submission_order[seen:]:
            runs[tid].request_id, runs[tid].submitted = runner.ids[tid], t
        seen = len(runner.submission_order)
        res = sched.step(t)
        for b in res.batches:
            dev = sim_devices[b.device_index]
            members = [runner.task_of(rid) for rid in b.request_ids]
            p = max(prompt_len[m] for m in members if m is not None)
            o = max(runner.task(m).max_new_tokens for m in members if m is not None)
            dur = float(dev.cost.service_time(p, o, len(b.request_ids)))
            for m in members:
                if m is not None:
                    runs[m].device, runs[m].start = b.device, t
            heapq.heappush(events, (t + dur, seq, b.device_index, list(b.request_ids)))
            seq += 1
        for rid, reason in res.failed:
            m = runner.task_of(rid)
            if m is not None:
                runs[m].reason, runs[m].end = reason, t
        for rid in res.expired:
            m = runner.task_of(rid)
            if m is not None:
                runs[m].end = t
        if runner.done():
            break
        nxt = min(events[0][0] if events else math.inf, runner.next_poll_at(t), res.next_step_at)
        if not math.isfinite(nxt):
            # Nothing will run: queued requests that no device takes wait for their
            # deadlines, where the next step expires them.
            nxt = min(
                (r.latest_finish for r in runs.values()
                 if r.request_id is not None and r.end is None and r.latest_finish > t),
                default=math.inf,
            )
        if not math.isfinite(nxt):
            # Nothing more will happen; a last poll skips tasks whose dependencies ended
            # in this step. Anything left pending or queued is stuck and shown as such.
            try:
                runner.poll(t)
            except (AdmissionError, QueueFullError):
                pass
            break
        t = max(t, nxt)
        while events and events[0][0] <= t:
            _, _, _, ids = heapq.heappop(events)
            for rid in ids:
                if sched.status(rid) == "in_flight":
                    sched.complete(rid, t)
                    m = runner.task_of(rid)
                    if m is not None:
                        runs[m].end = t
    for tid, r in runs.items():
        r.status = runner.status(tid)
        if r.status == "skipped":
            r.reason = runner.skipped.get(tid)
    ends = [r.end for r in runs.values() if r.end is not None and r.status == "completed"]
    return JobRun(list(runs.values()), max(ends) if ends else 0.0, str(fleet), sched.stats())
