"""Checkpoints: a scheduler's whole state in one file, written atomically.

Format (``docs/operations.md``): a JSON object ``{"format": "capsched-checkpoint",
"version": 2, "sha256": <hex>, "payload": {...}}`` where ``sha256`` is the SHA-256 of the
payload serialised canonically (sorted keys, no spaces). Non-finite numbers (the clock of
a scheduler that was never called is -inf) are written as ``{"float": "-inf"}``, so the
file is strict JSON. The live requests are stored by column (format 2; format 1, one JSON object per
request, is still read): ``payload.core.requests`` is ``{"count": n, "columns": {name:
{"dtype": ..., "base64": ...}}}``, each column the base64 of a little-endian array of n
values (:data:`REQUEST_COLUMNS` gives the names and types), and ``payload.core.outcomes``
one such array too. A million queued requests make a file of about 200 MB, written in
about half a second with about 100 MB of memory beyond the scheduler's own (format 1:
400 MB, 20 s and 4 GB).
The payload holds the scheduler's construction (devices, policy, batch size,
dynamic batching, every :class:`capsched.Config` field but the tokenizer), the names it
learned (tenants, request classes) and the core's state (:meth:`capsched._core.Core.export_state`):
queues, dependency edges, retry timers, utilization signals, service models, breakers,
counters and the outcome of every id ever issued. Requests in flight are saved with their
batches, so that a journal replays exactly on the saved state; :meth:`Scheduler.restore`
then queues them again (the server lost them), so nothing accepted is lost.

Writing goes to a temporary file in the same directory, is flushed and fsynced, and then
renamed over the target (and the directory fsynced), so a crash leaves either the old
checkpoint or the new one, never a torn file. Each call has its own temporary file
(``.<name>.tmp.<pid>.<thread>.<random>``, created exclusively), so checkpoints taken from
several threads or processes to the same path never tear one another: the last rename
wins. A target that exists keeps its permission bits; a new one gets the usual
``0o666 & ~umask``. Reading refuses a path that is not a regular file (a FIFO, a device)
and never reads more than :data:`MAX_CHECKPOINT_BYTES`. Reading is parsing data only (``json``;
never pickle or eval) and checks format, version and checksum before anything is built.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import secrets
import stat
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Union

import numpy as np

from .errors import CheckpointError, CapschedError

if TYPE_CHECKING:  # (annotations only: scheduler imports this module)
    from .scheduler import Scheduler

__all__ = ["FORMAT", "VERSION", "save_checkpoint", "load_checkpoint", "MAX_CHECKPOINT_BYTES", "DOCUMENT_KEYS", "PAYLOAD_KEYS",
           "REQUEST_COLUMNS"]

FORMAT = "capsched-checkpoint"
#: The version this capsched writes (2: requests by column); a file with a higher one is
#: refused, and format 1 files are still read.
VERSION = 2
#: Largest checkpoint file read (bytes): 16 GiB.
MAX_CHECKPOINT_BYTES = 16 * 2**30
#: The keys of the file's top-level object (any other is refused).
DOCUMENT_KEYS = frozenset({"format", "version", "sha256", "payload"})
#: The payload's keys and the JSON type each must have (any other key is refused;
#: ``journal_seq`` and ``rejected`` may be missing, in files written before they were
#: added: 0; so may ``lineage``: such a checkpoint replays any journal).
PAYLOAD_KEYS: dict[str, tuple[type, ...]] = {
    "devices": (list,),
    "policy": (str,),
    "max_batch_size": (int,),
    "dynamic_batching": (bool,),
    "config": (dict,),
    "tenants": (list,),
    "classes": (list,),
    "clocked": (list,),
    "journal_seq": (int,),
    "rejected": (int,),
    "lineage": (str,),
    "core": (dict,),
}
_OPTIONAL_KEYS = frozenset({"journal_seq", "rejected", "lineage"})
#: Format 2's request columns: each name and the numpy type of its array in the file
#: (little-endian). ``waits_on`` holds every request's live dependencies one after the
#: other, ``waits_on_count`` of them per request; ``batchable`` is 0 or 1; ``batch``,
#: ``dl_device`` are 4294967295 where a request has none.
REQUEST_COLUMNS: dict[str, str] = {
    "id": "<u8",
    "state": "|u1",
    "arrival": "<f8",
    "deadline": "<f8",
    "priority": "<f8",
    "prompt_tokens": "<u4",
    "max_new_tokens": "<u4",
    "uclamp_min": "<f8",
    "uclamp_max": "<f8",
    "tenant": "<u4",
    "request_class": "<u4",
    "sched_class": "|u1",
    "batchable": "|u1",
    "retries": "<u4",
    "preemptions": "<u4",
    "progress": "<f8",
    "retry_at": "<f8",
    "dl_device": "<u4",
    "dl_bw": "<f8",
    "pool": "<u4",
    "fallback_pool": "<u4",
    "batch": "<u4",
    "util": "<f8",
    "dispatched_at": "<f8",
    "waits_on_count": "<u4",
    "waits_on": "<u8",
}
_OUTCOMES_DTYPE = "<u8"  # (2 bits per id ever issued, 32 ids a word)
_ARRAY_KEYS = frozenset({"dtype", "base64"})
_MAX_INT_DIGITS = 4300  # Python's int conversion limit (sys.get_int_max_str_digits() default)
_JSON_KIND = {dict: "an object", list: "a list", str: "a string", int: "an integer", bool: "a boolean"}


def _encode(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return {"float": "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")}
    if isinstance(x, dict):
        return {k: _encode(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_encode(v) for v in x]
    return x


def _encode_in_place(x: Any) -> None:
    """_encode for a tree of fresh dicts and lists that nothing else holds (the core's
    exported state): non-finite floats are replaced where they stand, tuples by lists,
    so that the state is not copied whole."""
    items = x.items() if isinstance(x, dict) else enumerate(x)
    for k, v in items:
        if isinstance(v, float):
            if not math.isfinite(v):
                x[k] = _encode(v)
        elif isinstance(v, (dict, list)):
            _encode_in_place(v)
        elif isinstance(v, tuple):
            x[k] = v = list(v)
            _encode_in_place(v)


def _decode(x: Any) -> Any:
    if isinstance(x, dict):
        if len(x) == 1 and "float" in x and x["float"] in ("inf", "-inf", "nan"):
            return float(x["float"])
        return {k: _decode(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_decode(v) for v in x]
    return x


class _NonFiniteLiteral(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    """json.loads parse_constant: NaN, Infinity and -Infinity are not JSON."""
    raise _NonFiniteLiteral(name)


def _canonical(payload: Any) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _decode_object(x: dict[str, Any]) -> Any:
    """json.loads object_hook: _decode for one object whose members are decoded already."""
    if len(x) == 1 and x.get("float") in ("inf", "-inf", "nan"):
        return float(x["float"])
    return x


def _payload_pieces(payload: dict[str, Any]) -> Iterator[bytes]:
    """The canonical bytes of ``payload`` (as :func:`_canonical` would give them once its
    arrays are written as base64 strings), in pieces: the JSON around the arrays, then each
    array's base64, so that a million requests' columns are never one string. ``payload``
    is :meth:`Scheduler._checkpoint_payload`'s (the core state's ``requests`` a dict of
    numpy columns, ``outcomes`` an array) and is changed in place. Raises TypeError or
    ValueError (from ``json``) for a value JSON cannot hold, before the first piece."""
    core = payload.pop("core")  # (fresh from the core: encoded where it stands, not copied)
    arrays: list[Any] = []
    nonce = secrets.token_hex(16)  # (the placeholders' prefix: no other string holds it)

    def park(values: Any, dtype: str) -> dict[str, str]:
        arrays.append(np.ascontiguousarray(values, dtype=np.dtype(dtype)))
        return {"base64": f"{nonce}:{len(arrays) - 1}", "dtype": dtype}

    if core.get("version") == 2:
        columns = core["requests"]
        core["requests"] = {
            "count": len(columns["id"]),
            "columns": {name: park(columns[name], dtype) for name, dtype in REQUEST_COLUMNS.items()},
        }
        core["outcomes"] = park(core["outcomes"], _OUTCOMES_DTYPE)
    _encode_in_place(core)
    payload = _encode(payload)
    payload["core"] = core
    parts = re.split(b'"' + nonce.encode() + rb':([0-9]+)"', _canonical(payload))
    del payload, core
    order = [int(i) for i in parts[1::2]]  # (the arrays in the order the sorted keys put them)
    if sorted(order) != list(range(len(arrays))):
        raise ValueError("the checkpoint's array placeholders were not found once each")  # (cannot happen)
    yield parts[0]
    for k, at in enumerate(order):
        yield b'"' + base64.b64encode(arrays[at]) + b'"'
        arrays[at] = None  # (the request columns share one buffer, freed with the last of them)
        yield parts[2 * k + 2]


def _array_from(where: str, name: str, obj: Any, dtype: str, count: Optional[int]) -> Any:
    """A format 2 array (``{"dtype": ..., "base64": ...}``) as a read-only numpy array of
    ``count`` values (any number if None), or CheckpointError naming the array."""
    what = f"checkpoint {where!r} is malformed: {name}"
    if not isinstance(obj, dict) or set(obj) != _ARRAY_KEYS:
        raise CheckpointError(f"{what} must be an object with keys 'base64' and 'dtype', got {_short(obj)}")
    if obj["dtype"] != dtype:
        raise CheckpointError(f"{what} must have dtype {dtype!r}, got {_short(obj['dtype'])}")
    text = obj["base64"]
    if not isinstance(text, str):
        raise CheckpointError(f"{what}'s base64 must be a string, got {_short(text)}")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CheckpointError(f"{what} is not valid base64 ({exc})") from None
    size = np.dtype(dtype).itemsize
    if len(raw) % size or (count is not None and len(raw) != count * size):
        want = f"{count * size} ({count} x {size}-byte values)" if count is not None else f"a multiple of {size}"
        raise CheckpointError(f"{what} holds {len(raw)} bytes, not {want}")
    return np.frombuffer(raw, dtype=np.dtype(dtype))


def _decode_core(where: str, core: Any) -> Any:
    """A format 2 core state as read from the file, its arrays decoded (numpy arrays in
    place of the base64 objects: what :meth:`Scheduler._from_checkpoint_payload` takes);
    a format 1 one (requests as a list of objects) as it is. CheckpointError for a column
    missing, unknown, of another type or length, or not base64."""
    if not isinstance(core, dict) or type(core.get("version")) is not int or core.get("version") != 2:
        return core  # (format 1, or not a core state: _from_checkpoint_payload reports it)
    requests = core.get("requests")
    if not isinstance(requests, dict) or set(requests) != {"count", "columns"}:
        raise CheckpointError(
            f"checkpoint {where!r} is malformed: core.requests must be an object with keys 'columns' and 'count', "
            f"got {_short(requests)}"
        )
    count, columns = requests["count"], requests["columns"]
    if type(count) is not int or not 0 <= count < 2**32:  # (the core holds fewer live requests)
        raise CheckpointError(
            f"checkpoint {where!r} is malformed: core.requests.count must be an integer in 0..2**32-1, "
            f"got {_short(count) if type(count) is not int or abs(count) < 2**64 else f'an integer of {count.bit_length()} bits'}"
        )
    if not isinstance(columns, dict):
        raise CheckpointError(f"checkpoint {where!r} is malformed: core.requests.columns must be an object, got {_short(columns)}")
    unknown, missing = sorted(set(columns) - set(REQUEST_COLUMNS)), sorted(set(REQUEST_COLUMNS) - set(columns))
    if unknown or missing:
        raise CheckpointError(
            f"checkpoint {where!r} is malformed: core.requests.columns "
            + (f"has unknown column(s) {unknown}" if unknown else f"lacks column(s) {missing}")
        )
    out: dict[str, Any] = {}
    for name, dtype in REQUEST_COLUMNS.items():
        if name == "waits_on":
            edges = int(out["waits_on_count"].sum(dtype=np.uint64))
            out[name] = _array_from(where, f"column {name!r}", columns.pop(name), dtype, edges)
        else:
            out[name] = _array_from(where, f"column {name!r}", columns.pop(name), dtype, count)
    if out["batchable"].size and int(out["batchable"].max()) > 1:
        raise CheckpointError(f"checkpoint {where!r} is malformed: column 'batchable' must hold 0 or 1")
    core["requests"] = out
    core["outcomes"] = _array_from(where, "core.outcomes", core.get("outcomes"), _OUTCOMES_DTYPE, None)
    return core


# The document as save_checkpoint writes it (canonical: sorted keys, no spaces): the
# payload's canonical bytes stand between these, so its checksum is taken on the file's
# own bytes, without serialising the parsed payload again.
_HEAD = b'{"format":' + json.dumps(FORMAT).encode() + b',"payload":'
_TAIL = re.compile(rb',"sha256":"([0-9a-f]{64})","version":(0|[1-9][0-9]{0,8})\}\Z')


def _checked_path(path: Any, what: str = "checkpoint") -> str:
    """``path`` as a file name: a ``str`` or ``os.PathLike`` naming a file (never an
    integer, which ``open`` would take for a file descriptor), not empty, without NUL.
    ``what`` names the file in the message (a checkpoint, a journal)."""
    if isinstance(path, (str, os.PathLike)) and not isinstance(path, bytes):
        try:
            name = os.fspath(path)
        except TypeError:
            name = None
        if isinstance(name, str):
            if not name:
                raise CheckpointError(f"{what} path must be a non-empty file name, got ''")
            if "\0" in name:
                raise CheckpointError(f"{what} path must not contain a NUL character, got {_short(name)}")
            return name
    raise CheckpointError(f"{what} path must be a str or os.PathLike file name, got {type(path).__name__} {_short(path)}")


def save_checkpoint(scheduler: Any, path: Union[str, "os.PathLike[str]"]) -> None:
    """Write ``scheduler``'s state to ``path`` atomically (see the module docstring).

    Raises:
        CheckpointError: ``path`` is not a file name, the file cannot be written, or a
            value of the state has no JSON form (say a device field holding a numpy
            float32: the message names the field); nothing is written then.
    """
    target = Path(_checked_path(path))
    payload = scheduler._checkpoint_payload()
    settings = {k: v for k, v in payload.items() if k != "core"}  # (for the message below)
    pieces = _payload_pieces(payload)
    try:
        first = next(pieces)  # (everything but the arrays is serialised here)
    except (TypeError, ValueError) as exc:  # (json: an object it cannot write, a non-finite float)
        where = _unencodable(_encode(settings))
        raise CheckpointError(
            f"cannot write checkpoint {str(target)!r}: "
            + (f"{where}" if where is not None else f"the state cannot be encoded ({exc})")
            + "; nothing was written"
        ) from None
    del payload, settings
    # A name of its own per call: a shared one lets one thread truncate the file another
    # is renaming into place.
    tmp = target.with_name(f".{target.name}.tmp.{os.getpid()}.{threading.get_ident()}.{secrets.token_hex(8)}")
    created = False
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        created = True
        with open(fd, "wb") as fh:
            try:
                st = os.stat(target)
            except OSError:
                st = None  # no target yet: the umask's mode, as open() gives
            if st is not None and stat.S_ISREG(st.st_mode):
                os.fchmod(fh.fileno(), st.st_mode & 0o777)  # keep the target's permission bits
            # The payload is checksummed as it is written; the checksum comes after it.
            digest = hashlib.sha256()
            fh.write(_HEAD)
            for piece in itertools.chain((first,), pieces):
                digest.update(piece)
                fh.write(piece)
            fh.write(f',"sha256":"{digest.hexdigest()}","version":{VERSION}}}'.encode())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        created = False
        _fsync_dir(target)
    except OSError as exc:
        if created:
            try:
                tmp.unlink()
            except OSError:
                pass
        raise CheckpointError(f"cannot write checkpoint {str(target)!r}: {exc.strerror or exc}") from exc


def _unencodable(x: Any, where: str = "") -> Optional[str]:
    """Where in an (encoded) payload the first value JSON cannot hold is, and what it is
    ("devices[0].capacity is float32(2.0), not a JSON number..."), or None."""
    if isinstance(x, dict):
        for k, v in x.items():
            if not isinstance(k, str):
                return f"{where or 'the payload'} has a key {_short(k)} ({type(k).__name__}), not a string"
            found = _unencodable(v, f"{where}.{k}" if where else k)
            if found is not None:
                return found
        return None
    if isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            found = _unencodable(v, f"{where}[{i}]")
            if found is not None:
                return found
        return None
    if x is None or type(x) in (str, int, bool):
        return None
    if type(x) is float:
        return None if math.isfinite(x) else f"{where} is {x!r}, not a finite number"
    return (
        f"{where} is {_short(x)} of type {type(x).__module__}.{type(x).__qualname__}, which has no JSON form "
        "(give plain int, float and str values)"
    )


def _fsync_dir(path: Union[str, "os.PathLike[str]"]) -> None:
    """fsync the directory holding ``path`` (so a rename into it survives a crash);
    best effort: where directories cannot be opened or synced, nothing happens."""
    parent = os.path.dirname(os.path.abspath(os.fspath(path)))
    try:
        dfd = os.open(parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _check_journal_beside(checkpoint: Union[str, "os.PathLike[str]"], journal: Union[str, "os.PathLike[str]"]) -> None:
    """CheckpointError, before anything is read or written, for a journal path that
    restore(journal=) must not replay and then empty: one that exists and is not a
    regular file (a device, a FIFO), or the checkpoint's own file."""
    where = os.fspath(journal)
    try:
        st = os.stat(journal)
    except OSError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"journal {where!r} is not a regular file: it is never replayed or emptied")
    same = os.path.realpath(checkpoint) == os.path.realpath(journal)
    if not same and st is not None:
        try:
            same = os.path.samefile(checkpoint, journal)
        except OSError:
            pass
    if same:
        raise CheckpointError(f"journal {where!r} is the checkpoint's own file: give the journal a path of its own")


def load_checkpoint(
    path: Union[str, "os.PathLike[str]"], *, clock: Optional[Callable[[], float]] = None
) -> "Scheduler":
    """Read a checkpoint and build the scheduler it describes (a new
    :class:`capsched.Scheduler`); ``clock`` replaces the default ``time.monotonic``.

    Raises:
        CheckpointError: ``path`` is not a file name (an integer, empty, with a NUL) or not
            a regular file, the file cannot be read, is not a capsched checkpoint, is
            truncated or corrupt (its checksum does not match), was written by a newer
            version, or is inconsistent. Nothing is changed.
    """
    from .scheduler import Scheduler

    where = _checked_path(path)
    limit = MAX_CHECKPOINT_BYTES
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below).
        fd = os.open(where, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CheckpointError(f"cannot read checkpoint {where!r}: not a regular file")
            if st.st_size > limit:
                raise CheckpointError(f"checkpoint {where!r} is {st.st_size} bytes, over the limit of {limit}")
        except BaseException:
            os.close(fd)
            raise
        with open(fd, "rb") as fh:
            raw = fh.read(limit + 1)  # bounded even if the size stated was wrong
            if len(raw) > limit:
                raise CheckpointError(f"checkpoint {where!r} is over {limit} bytes, the limit")
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {where!r}: {exc}") from exc
    # A file in the canonical form save_checkpoint writes: the checksum is checked on the
    # payload's bytes as they stand, and the payload decoded while it is parsed (one copy
    # of it in memory instead of three). Any other form (a hand-edited file) takes the
    # general path: parse, serialise canonically, check, decode.
    tail = _TAIL.search(raw, max(0, len(raw) - 120)) if raw.startswith(_HEAD) else None
    try:
        if tail:
            doc = json.loads(raw, object_hook=_decode_object, parse_constant=_refuse_constant)
        else:
            doc = json.loads(raw, parse_constant=_refuse_constant)
    except _NonFiniteLiteral as exc:
        raise CheckpointError(
            f"checkpoint {where!r} is not strict JSON: it holds the literal {exc} (non-finite numbers are written "
            '{"float": "nan"}, {"float": "inf"})'
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {where!r} is not valid JSON (truncated or corrupt?): {exc}") from None
    except ValueError:  # Python refuses to convert an integer of more than 4300 digits
        raise CheckpointError(
            f"checkpoint {where!r} is not valid JSON (truncated or corrupt?): an integer of more than "
            f"{_MAX_INT_DIGITS} digits"
        ) from None
    except RecursionError:
        raise CheckpointError(f"checkpoint {where!r} is not a capsched checkpoint: JSON nested too deeply") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{where!r} is not a capsched checkpoint (no 'format': {FORMAT!r})")
    extra = sorted(set(doc) - DOCUMENT_KEYS)
    if extra:
        raise CheckpointError(f"checkpoint {where!r} has unknown top-level key(s) {extra}; expected {sorted(DOCUMENT_KEYS)}")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"checkpoint {where!r} has no integer 'version'")
    if version > VERSION:
        raise CheckpointError(
            f"checkpoint {where!r} was written by a newer capsched (format version {version}; this one reads "
            f"up to {VERSION}); upgrade capsched to read it"
        )
    if version < 1:
        raise CheckpointError(f"checkpoint {where!r} has an unknown format version {version}")
    payload = doc.get("payload")
    digest = doc.get("sha256")
    if not isinstance(payload, dict) or not isinstance(digest, str):
        raise CheckpointError(f"checkpoint {where!r} lacks its payload or checksum")
    try:  # (a value nested almost as deep as json.loads allows is too deep for _encode/_decode)
        if tail is not None:
            actual = hashlib.sha256(memoryview(raw)[len(_HEAD) : tail.start()]).hexdigest()
            if actual != digest and not raw.isascii():
                # Laid out canonically but not byte for byte: non-ASCII characters written
                # as they are (ensure_ascii=False). The canonical dump decides.
                actual = hashlib.sha256(_canonical(_encode(payload))).hexdigest()
        else:
            try:
                actual = hashlib.sha256(_canonical(payload)).hexdigest()
            except ValueError as exc:
                raise CheckpointError(f"checkpoint {where!r} holds numbers JSON cannot state: {exc}") from None
        if actual != digest:
            raise CheckpointError(f"checkpoint {where!r} is corrupt: its checksum does not match its contents")
        del raw
        _check_payload(where, payload)
        if tail is None:
            payload = _decode(payload)
    except RecursionError:
        raise CheckpointError(f"checkpoint {where!r} is not a capsched checkpoint: JSON nested too deeply") from None
    core_version = payload["core"].get("version")
    if type(core_version) is int and core_version in (1, 2) and core_version != version:
        raise CheckpointError(
            f"checkpoint {where!r} is malformed: a format {version} file holds a version {core_version} core state"
        )
    try:
        payload["core"] = _decode_core(where, payload["core"])
        return Scheduler._from_checkpoint_payload(payload, clock=clock)
    except CheckpointError as exc:
        if where in str(exc):
            raise
        raise CheckpointError(f"checkpoint {where!r} cannot be restored: {exc}") from None
    except CapschedError as exc:
        raise CheckpointError(f"checkpoint {where!r} cannot be restored: {exc}") from None
    except (KeyError, TypeError, ValueError, IndexError, OverflowError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint {where!r} is malformed: {type(exc).__name__}: {exc}") from None
    except (RuntimeError, MemoryError):
        # pybind11 reports a value the core cannot hold (wrong type, negative or too
        # large for an unsigned field) as a RuntimeError; a hostile size as MemoryError.
        raise CheckpointError(
            f"checkpoint {where!r} is malformed: its core state holds a value of the wrong type, or out of "
            "range (negative or too large) for the core"
        ) from None


def _check_payload(where: str, payload: dict[str, Any]) -> None:
    """The payload's keys and their JSON types (the core state is checked by the core)."""
    unknown = sorted(set(payload) - set(PAYLOAD_KEYS))
    if unknown:
        raise CheckpointError(
            f"checkpoint {where!r} is malformed: unknown payload key(s) {unknown}; expected {sorted(PAYLOAD_KEYS)}"
        )
    for key, kinds in PAYLOAD_KEYS.items():
        if key not in payload:
            if key in _OPTIONAL_KEYS:
                continue
            raise CheckpointError(f"checkpoint {where!r} is malformed: it lacks payload key {key!r}")
        value = payload[key]
        ok = isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
        if not ok:
            want = " or ".join(_JSON_KIND[k] for k in kinds)
            raise CheckpointError(
                f"checkpoint {where!r} is malformed: payload key {key!r} must be {want}, got {type(value).__name__} {_short(value)}"
            )


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."


def _device_dicts(devices: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for d in devices:
        dd = dataclasses.asdict(d)
        dd["tenants"] = list(dd.get("tenants") or ())
        out.append(dd)
    return out
