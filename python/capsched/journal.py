"""An append-only journal of a scheduler's accepted changes, between checkpoints.

With a journal, every call that changes the scheduler (submit, submit_many, step,
complete, complete_many, fail, cancel, set_clock, set_pressure) appends one line once the
core has accepted it: ``<json>\\t<sha256 of the json, 16 hex digits>\\n``, where the json
is ``{"seq": n, "op": name, "args": [...]}`` (and ``{"seq": n, "op": "names", ...}`` when
the scheduler learns a new tenant or request class name, ``{"seq": n, "op": "rejected",
"n": k}`` when it refuses k submits). With ``sync=True`` (the default)
each line is fsynced before the call returns, so an accepted request survives a crash.
Calls are serialised while a journal is open, so the lines are in the order the core ran
them.

Recovery (:meth:`capsched.Scheduler.restore` with ``journal=``) loads the checkpoint,
replays the lines with a ``seq`` above the one the checkpoint recorded, in order, through
the same core calls (the core is deterministic given its inputs, ``now`` included), queues
again what was in flight, writes a fresh checkpoint and starts the journal afresh. A torn
last line (a crash while writing it) is dropped; any other damaged line is an error.

Reading is parsing data only (``json``; never pickle or eval): arrays are rebuilt only
with numeric numpy dtypes (:data:`ARRAY_DTYPES`), a line is at most
:data:`MAX_JOURNAL_LINE_BYTES` bytes and a file at most :data:`MAX_JOURNAL_BYTES`, and a
line the core refuses on replay is a :class:`CheckpointError` naming the file and the
line's ``seq`` (``docs/formats.md``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np

from .errors import CapschedError, CheckpointError, JournalError

log = logging.getLogger("capsched.journal")

__all__ = [
    "Journal",
    "JournalCore",
    "read_journal",
    "replay_journal",
    "MUTATING_CALLS",
    "ARRAY_DTYPES",
    "MAX_JOURNAL_BYTES",
    "MAX_JOURNAL_LINE_BYTES",
]

#: Largest journal file read (bytes): 16 GiB, as a checkpoint.
MAX_JOURNAL_BYTES = 16 * 2**30
#: Longest journal line read (bytes, newline excluded): 1 GiB (a ``submit_many`` of
#: 10 million requests is about 0.4 GiB).
MAX_JOURNAL_LINE_BYTES = 2**30
#: The numpy dtypes an ``{"array": dtype, "values": [...]}`` argument may name.
ARRAY_DTYPES = frozenset({"<i8", "<u8", "<f8", "<i4", "<u4", "<f4", "|b1", "|u1", "|i1"})

#: Core calls that change state, and so are journaled.
MUTATING_CALLS = frozenset(
    {"submit", "submit_many", "step", "step_continuous", "step_arrays", "step_continuous_arrays", "complete",
     "complete_many", "fail", "cancel", "set_clock", "set_pressure"}
)


def _plain(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return {"array": x.dtype.str, "values": _plain(x.tolist())}
    if isinstance(x, float) and x != x:
        return {"float": "nan"}
    if isinstance(x, float) and x in (float("inf"), float("-inf")):
        return {"float": "inf" if x > 0 else "-inf"}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return _plain(float(x))
    return x


def _unplain(x: Any) -> Any:
    if isinstance(x, dict):
        if set(x) == {"array", "values"}:
            dtype, values = x["array"], x["values"]
            if dtype not in ARRAY_DTYPES:
                raise ValueError(f"an array of dtype {_short(dtype)} (allowed: {', '.join(sorted(ARRAY_DTYPES))})")
            if not isinstance(values, list) or any(
                isinstance(v, list) or (isinstance(v, dict) and set(v) != {"float"}) for v in values
            ):
                raise ValueError(f"an array's values must be a flat list of numbers, got {_short(values)}")
            try:
                return np.array([_unplain(v) for v in values], dtype=np.dtype(dtype))
            except (TypeError, OverflowError) as exc:
                raise ValueError(f"array values that do not fit dtype {dtype}: {exc}") from None
        if set(x) == {"float"}:
            if x["float"] not in ("nan", "inf", "-inf"):
                raise ValueError(f"a float that is not nan, inf or -inf: {_short(x['float'])}")
            return float(x["float"])
        raise ValueError(f"unexpected object {_short(x)}")
    if isinstance(x, list):
        return [_unplain(v) for v in x]
    return x


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Journal:
    """The append side: one open file, lines numbered from ``first_seq``."""

    def __init__(self, path: Union[str, "os.PathLike[str]"], *, sync: bool = True, first_seq: int = 1) -> None:
        self.path = Path(path)
        self.sync = bool(sync)
        self.seq = first_seq - 1
        try:
            self._fh = open(self.path, "a", encoding="utf-8")
        except OSError as exc:
            raise CheckpointError(f"cannot open journal {str(self.path)!r}: {exc}") from exc

    def encode(self, op: str, **fields: Any) -> str:
        """The line the next append would write (raises before anything changes)."""
        return json.dumps({"seq": self.seq + 1, "op": op, **fields}, separators=(",", ":"), allow_nan=False)

    def append(self, op: str, **fields: Any) -> None:
        """Write the line for ``op`` with ``fields`` (see :meth:`encode`)."""
        self.write(self.encode(op, **fields))

    def write(self, body: str) -> None:
        """Append an encoded line with its checksum, flushed (and fsynced with ``sync``)."""
        self.seq += 1
        self._fh.write(f"{body}\t{_digest(body)}\n")
        self._fh.flush()
        if self.sync:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Close the file (after a failed write too: what could not be written is dropped)."""
        try:
            self._fh.close()
        except OSError:
            pass  # (the failed write was reported when it happened)


class JournalCore:
    """Stands in for the core: journals each successful mutating call, in order.

    If a write fails (OSError), the call's change has been made but is not durable: it
    raises :class:`JournalError` carrying the call's result, and from then on refuses
    every mutating call, changing nothing, until the journal is closed."""

    def __init__(self, core: Any, journal: Journal) -> None:
        self._inner = core
        self.journal = journal
        self.lock = threading.RLock()
        self.failed: Optional[str] = None  # why a write failed, once one has
        # Set (under lock) when the journal is closed: a call that fetched this wrapper
        # before close_journal() and runs after it goes to the core unjournaled, as a
        # call made after the close would (its file is closed: a write would fail after
        # the change was made).
        self.closed = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in MUTATING_CALLS:
            return attr

        def call(*args: Any) -> Any:
            with self.lock:
                if self.closed:
                    return attr(*args)
                self.refuse_if_failed()
                body = self.journal.encode(name, args=_plain(list(args)))  # before any change
                out = attr(*args)
                self.write(body, out)
                return out

        return call

    def refuse_if_failed(self) -> None:
        """Raise JournalError (nothing changed) once a write has failed (while open)."""
        if self.failed is not None and not self.closed:
            raise JournalError(
                f"nothing was changed: writing the journal {str(self.journal.path)!r} failed earlier "
                f"({self.failed}); close_journal(), take a checkpoint and open a new journal"
            )

    def write(self, body: str, result: Any = None) -> None:
        """Write a line; on failure mark the journal failed and raise JournalError. After
        the journal is closed it writes nothing (the call went through unjournaled)."""
        if self.closed:
            return
        try:
            self.journal.write(body)
        except OSError as exc:
            self.failed = str(exc)
            raise JournalError(
                f"the change was made but is not durable: writing it to the journal "
                f"{str(self.journal.path)!r} failed ({exc}); further changes are refused until close_journal()",
                result,
            ) from exc


def read_journal(path: Union[str, "os.PathLike[str]"]) -> Iterator[dict[str, Any]]:
    """The journal's entries in order (``args`` decoded). A torn last line is skipped;
    a damaged line before the last raises :class:`CheckpointError` naming it.

    The file is read line by line (never whole); a file over :data:`MAX_JOURNAL_BYTES`
    or a line over :data:`MAX_JOURNAL_LINE_BYTES` is refused before it is parsed."""
    where = str(path)
    try:
        size = os.path.getsize(path)
        fh = open(path, "rb")
    except OSError as exc:
        raise CheckpointError(f"cannot read journal {where!r}: {exc}") from exc
    if size > MAX_JOURNAL_BYTES:
        fh.close()
        raise CheckpointError(f"journal {where!r} is {size} bytes, over the limit of {MAX_JOURNAL_BYTES}")
    with fh:
        yield from _entries(where, fh)


def _entries(where: str, fh: Any) -> Iterator[dict[str, Any]]:
    last_seq: Optional[int] = None
    n = 0
    pending: Optional[bytes] = None  # the previous line: known not to be the last only once another is read
    while True:
        raw = fh.readline(MAX_JOURNAL_LINE_BYTES + 2)
        if pending is not None:
            if not raw:  # pending was the last line (no newline after it, or empty rest)
                entry = _parse_line(where, n, pending, last=True)
                if entry is not None:
                    _check_seq(where, n, entry, last_seq)
                    yield entry
                else:
                    log.warning("journal %r: its last line (line %d, %d bytes) is torn and was dropped "
                                "(a crash while it was written: the call it logs had not returned)",
                                where, n, len(pending))
                return
            entry = _parse_line(where, n, pending, last=False)
            assert entry is not None
            last_seq = _check_seq(where, n, entry, last_seq)
            yield entry
            pending = None
        if not raw:
            return
        n += 1
        line = raw[:-1] if raw.endswith(b"\n") else raw
        if len(line) > MAX_JOURNAL_LINE_BYTES:
            raise CheckpointError(
                f"journal {where!r} line {n} is longer than the limit of {MAX_JOURNAL_LINE_BYTES} bytes"
            )
        pending = line


def _check_seq(where: str, n: int, entry: dict[str, Any], last_seq: Optional[int]) -> int:
    if last_seq is not None and entry["seq"] != last_seq + 1:
        raise CheckpointError(f"journal {where!r} line {n}: seq {entry['seq']} does not follow {last_seq}")
    seq: int = entry["seq"]
    return seq


def _parse_line(where: str, n: int, raw: bytes, *, last: bool) -> Optional[dict[str, Any]]:
    """One line's entry; None for a torn last line."""
    entry: Any = None
    try:
        line = raw.decode("utf-8")
        body, _, digest = line.rpartition("\t")
        ok = bool(body) and _digest(body) == digest
        if ok:
            entry = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        ok = False
    if not ok:
        if last:
            return None  # torn by a crash while writing: the call it logs had not returned
        raise CheckpointError(f"journal {where!r} line {n} is damaged (checksum or JSON)")
    if not isinstance(entry, dict) or type(entry.get("seq")) is not int or not isinstance(entry.get("op"), str):
        raise CheckpointError(f"journal {where!r} line {n} lacks 'seq' (an integer) or 'op' (a string)")
    if "args" in entry:
        if not isinstance(entry["args"], list):
            raise CheckpointError(f"journal {where!r} line {n}: 'args' must be a list, got {_short(entry['args'])}")
        try:
            entry["args"] = _unplain(entry["args"])
        except (ValueError, RecursionError) as exc:
            raise CheckpointError(f"journal {where!r} line {n} (seq {entry['seq']}): {exc}") from None
    return dict(entry)


def replay_journal(scheduler: Any, path: Union[str, "os.PathLike[str]"]) -> int:
    """Apply the journal at ``path`` to ``scheduler`` (restored from the checkpoint the
    journal follows); returns the last ``seq`` applied.

    Raises:
        CheckpointError: the journal is damaged, skips entries, or holds a call the core
            refuses or with arguments of the wrong kind (the message names the file and
            the entry's ``seq``). The scheduler is then partly replayed: discard it.
    """
    where = str(path)
    current: list[dict[str, Any]] = []

    def tracked() -> Iterator[dict[str, Any]]:
        for e in read_journal(path):
            current[:] = [e]
            yield e

    replay: Callable[[Any], int] = scheduler._replay
    try:
        return replay(tracked())
    except CheckpointError as exc:
        if where in str(exc):
            raise
        raise CheckpointError(f"journal {where!r}: {exc}") from None
    except (CapschedError, TypeError, ValueError, KeyError, IndexError, OverflowError, RuntimeError,
            AttributeError, MemoryError) as exc:
        entry = current[0] if current else {}
        head = f"journal {where!r} seq {entry.get('seq')}: cannot replay {entry.get('op')!r}"
        if isinstance(exc, CapschedError):
            raise CheckpointError(f"{head}: {type(exc).__name__}: {exc}") from None
        # The bindings' own words (a signature listing) say less than the arguments.
        raise CheckpointError(
            f"{head}: the core cannot take its arguments {_short(entry.get('args'))} ({type(exc).__name__})"
        ) from None
