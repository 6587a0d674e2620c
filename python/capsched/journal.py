"""An append-only journal of a scheduler's accepted changes, between checkpoints.

With a journal, every call that changes the scheduler (submit, submit_many, step,
complete, complete_many, fail, cancel, set_clock, set_pressure) appends one line once the
core has accepted it: ``<json>\\t<sha256 of the json, 16 hex digits>\\n``, where the json
is ``{"seq": n, "op": name, "args": [...]}`` (and ``{"seq": n, "op": "names", ...}`` when
the scheduler learns a new tenant or request class name). With ``sync=True`` (the default)
each line is fsynced before the call returns, so an accepted request survives a crash.
Calls are serialised while a journal is open, so the lines are in the order the core ran
them.

Recovery (:meth:`capsched.Scheduler.restore` with ``journal=``) loads the checkpoint,
replays the lines with a ``seq`` above the one the checkpoint recorded, in order, through
the same core calls (the core is deterministic given its inputs, ``now`` included), queues
again what was in flight, writes a fresh checkpoint and starts the journal afresh. A torn
last line (a crash while writing it) is dropped; any other damaged line is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np

from .errors import CheckpointError

__all__ = ["Journal", "JournalCore", "read_journal", "MUTATING_CALLS"]

#: Core calls that change state, and so are journaled.
MUTATING_CALLS = frozenset(
    {"submit", "submit_many", "step", "step_continuous", "complete", "complete_many", "fail", "cancel",
     "set_clock", "set_pressure"}
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
            return np.array(_unplain(x["values"]), dtype=np.dtype(x["array"]))
        if set(x) == {"float"}:
            return float(x["float"])
        raise CheckpointError(f"journal: unexpected object {x!r}")
    if isinstance(x, list):
        return [_unplain(v) for v in x]
    return x


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
        """Close the file."""
        self._fh.close()


class JournalCore:
    """Stands in for the core: journals each successful mutating call, in order."""

    def __init__(self, core: Any, journal: Journal) -> None:
        self._inner = core
        self.journal = journal
        self.lock = threading.RLock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in MUTATING_CALLS:
            return attr

        def call(*args: Any) -> Any:
            with self.lock:
                body = self.journal.encode(name, args=_plain(list(args)))  # before any change
                out = attr(*args)
                self.journal.write(body)
                return out

        return call


def read_journal(path: Union[str, "os.PathLike[str]"]) -> Iterator[dict[str, Any]]:
    """The journal's entries in order (``args`` decoded). A torn last line is skipped;
    a damaged line before the last raises :class:`CheckpointError` naming it."""
    where = str(path)
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().split("\n")
    except OSError as exc:
        raise CheckpointError(f"cannot read journal {where!r}: {exc}") from exc
    if lines and lines[-1] == "":
        lines.pop()
    last_seq: Optional[int] = None
    for n, line in enumerate(lines, 1):
        body, _, digest = line.rpartition("\t")
        ok = bool(body) and _digest(body) == digest
        if ok:
            try:
                entry = json.loads(body)
            except ValueError:
                ok = False
        if not ok:
            if n == len(lines):
                return  # torn by a crash while writing: the call it logs had not returned
            raise CheckpointError(f"journal {where!r} line {n} is damaged (checksum or JSON)")
        if not isinstance(entry, dict) or not isinstance(entry.get("seq"), int) or not isinstance(entry.get("op"), str):
            raise CheckpointError(f"journal {where!r} line {n} lacks 'seq' or 'op'")
        if last_seq is not None and entry["seq"] != last_seq + 1:
            raise CheckpointError(f"journal {where!r} line {n}: seq {entry['seq']} does not follow {last_seq}")
        last_seq = entry["seq"]
        if "args" in entry:
            entry["args"] = _unplain(entry["args"])
        yield entry
