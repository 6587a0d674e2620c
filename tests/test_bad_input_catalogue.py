"""The bad-input catalogue: every public entry point with each kind of bad value.

``CATALOGUE`` below is the single source of truth of ``docs/bad_inputs.md``: each row
names an entry point, a bad value, the exception users get and a regex its message must
match (the regex contains the bad value, or the name of the missing thing), and how the
test proves that nothing changed. ``render()`` writes the doc from the rows by running
each one (so the doc shows the real message); ``test_the_doc_is_generated_from_the_rows``
fails when the doc and the rows drift. Regenerate the doc with
``python tools/gen_bad_inputs.py``.

How "nothing changed" is proven, by the row's ``state``:

* ``scheduler``: a live scheduler with a request in every state (queued, waiting on a
  dependency, in flight, completed, cancelled) is snapshotted before and after the call:
  ``stats()`` (every counter and gauge, ``now`` included), ``status()`` of each id, and
  the bytes of a checkpoint written before and after (the whole core state: queues,
  dependency edges, timers, signals, outcome of every id). Also ``check_invariants()``.
* ``files``: a loader; the file it was given is byte-for-byte unchanged, no other file
  appeared in the directory, and the live scheduler's snapshot is unchanged too.
* ``none``: a constructor or pure parser that raises before any object exists (there is
  no state to change); the test checks it raised before returning anything.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import io
import json
import math
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
from _checkpoint_forge import request_rows, set_request_rows

from capsched import Config, Device, InferenceRequest, Scheduler
from capsched.checkpoint import REQUEST_COLUMNS, _canonical, _payload_pieces
from capsched.config import SchedulerConfig
from capsched.errors import (
    CapschedError,
    CheckpointError,
    ConfigError,
    DependencyError,
    DuplicateRequestError,
    InvalidArgumentError,
    InvalidRequestError,
    QueueFullError,
    RequestStateError,
    RequestTypeError,
    UnknownRequestError,
)
from capsched.jobs import JobCycleError, JobFileError, JobRunner, load_job, parse_tasks

DOC = Path(__file__).resolve().parent.parent / "docs" / "bad_inputs.md"
NEVER = 1_000_000  # an id no scheduler here issues


# --------------------------------------------------------------------------- the context


class Ctx:
    """What a row's call acts on: a scheduler with one request in each state, its ids,
    and a directory (the current one) holding the sample files the loader rows read."""

    def __init__(self, directory: Path, *, samples: tuple[str, ...] = ()) -> None:
        self.dir = directory
        self.s, self.ids = fleet()
        self.submitted = InferenceRequest(prompt_tokens=3)  # id 7, queued
        self.ids["again"] = self.s.submit(self.submitted, now=0.5)
        all_samples = sample_files()
        for name in samples:
            (directory / name).write_bytes(all_samples[name])

    def files(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.dir.iterdir()) if p.is_file()}


def fleet() -> tuple[Scheduler, dict[str, int]]:
    """A scheduler (tenant-bounded queue) with a request in each state."""
    s = Scheduler([Device("big", 2.0), Device("small", 1.0)], max_batch_size=2,
                  config=Config(max_queued=100, max_queued_per_tenant=3, max_dependents=1))
    ids: dict[str, int] = {}
    ids["done"] = s.submit(InferenceRequest(prompt_tokens=5), now=0.0)
    ids["flight"] = s.submit(InferenceRequest(prompt_tokens=5), now=0.0)
    s.step(now=0.0)
    s.complete(ids["done"], now=0.1)
    ids["queued"] = s.submit(InferenceRequest(prompt_tokens=5, tenant="alice"), now=0.2)
    ids["gone"] = s.submit(InferenceRequest(prompt_tokens=5), now=0.2)
    s.cancel(ids["gone"])
    ids["waiting"] = s.submit(InferenceRequest(prompt_tokens=5, depends_on=[ids["flight"]], tenant="alice"), now=0.2)
    s.submit(InferenceRequest(prompt_tokens=5, tenant="alice"), now=0.2)  # alice: 3 of 3 queued
    return s, ids


def snapshot(s: Scheduler, ids: dict[str, int], where: Path) -> tuple[Any, ...]:
    """Everything observable about ``s``: stats, statuses, and the bytes of the payload
    its checkpoint would hold (``Scheduler.checkpoint`` writes exactly these bytes,
    checksummed; taken without the file and its fsync to keep 370 snapshots cheap)."""
    payload = s._checkpoint_payload()
    rejected = payload.pop("rejected")  # (apart: rows of state "rejected" expect it to grow)
    data = b"".join(_payload_pieces(payload))
    return s.stats(), {k: s.status(v) for k, v in ids.items()}, data, rejected


def _resign(doc: dict[str, Any]) -> dict[str, Any]:
    doc["sha256"] = hashlib.sha256(_canonical(doc["payload"])).hexdigest()
    return doc


def _journal_line(seq: int, op: str, **fields: Any) -> str:
    body = json.dumps({"seq": seq, "op": op, **fields}, separators=(",", ":"))
    return f"{body}\t{hashlib.sha256(body.encode()).hexdigest()[:16]}\n"


@functools.lru_cache(maxsize=None)
def sample_files() -> dict[str, bytes]:
    """Name -> contents of every sample file (made once per process)."""
    with tempfile.TemporaryDirectory() as tmp:
        _write_samples(Path(tmp))
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir()}


def _write_samples(d: Path) -> None:
    """The sample files: one good checkpoint and journal, and the damaged ones."""
    s = Scheduler(["a", "b"])
    s.submit(InferenceRequest(prompt_tokens=5), now=0.0)
    s.checkpoint(d / "good.ckpt")
    raw = (d / "good.ckpt").read_bytes()
    doc = json.loads(raw)
    (d / "truncated.ckpt").write_bytes(raw[:40])  # within '{"format":"capsched-checkpoint","payload":'

    (d / "tampered.ckpt").write_bytes(raw.replace(b'"policy":"weighted"', b'"policy":"fcfs"'))
    (d / "future.ckpt").write_text(json.dumps(_resign({**doc, "version": 3})))
    (d / "foreign.ckpt").write_text('{"hello": "world"}')
    (d / "deep.ckpt").write_text("[" * 100_000 + "]" * 100_000)
    (d / "hugeint.ckpt").write_text('{"format": "capsched-checkpoint", "version": ' + "9" * 5000 + "}")
    (d / "nan.ckpt").write_text('{"format": "capsched-checkpoint", "version": NaN}')
    (d / "binary.ckpt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    extra = copy.deepcopy(doc)
    extra["payload"]["pickle"] = "gASVAAAAAAAAAAB9lC4="
    (d / "extra.ckpt").write_text(json.dumps(_resign(extra)))
    missing = copy.deepcopy(doc)
    del missing["payload"]["devices"]
    (d / "nodevices.ckpt").write_text(json.dumps(_resign(missing)))
    wrong = copy.deepcopy(doc)
    wrong["payload"]["config"]["weight_urgency"] = "high"
    (d / "wrongtype.ckpt").write_text(json.dumps(_resign(wrong)))
    negative = copy.deepcopy(doc)
    negative["payload"]["core"]["next_id"] = -1
    (d / "negative.ckpt").write_text(json.dumps(_resign(negative)))
    badbs = copy.deepcopy(doc)
    badbs["payload"]["max_batch_size"] = 10**30
    (d / "hugebatch.ckpt").write_text(json.dumps(_resign(badbs)))
    # (values a restore once took, after which nothing was dispatched again, or a request
    # waited forever)
    nan_util = copy.deepcopy(doc)
    nan_util["payload"]["core"]["devices"][0]["util"]["sum"] = {"float": "nan"}
    (d / "nanutil.ckpt").write_text(json.dumps(_resign(nan_util)))
    nan_open = copy.deepcopy(doc)
    nan_open["payload"]["core"]["devices"][1]["open_until"] = {"float": "nan"}
    (d / "nanopen.ckpt").write_text(json.dumps(_resign(nan_open)))
    w = Scheduler(["a", "b"])
    first = w.submit(InferenceRequest(prompt_tokens=5), now=0.0)
    for _ in range(2):
        w.submit(InferenceRequest(prompt_tokens=5, depends_on=[first]), now=0.0)
    w.checkpoint(d / "waiting.ckpt")
    cycle = json.loads((d / "waiting.ckpt").read_bytes())
    requests = request_rows(cycle["payload"]["core"])
    requests[1]["waits_on"], requests[2]["waits_on"] = [requests[2]["id"]], [requests[1]["id"]]
    set_request_rows(cycle["payload"]["core"], requests)
    (d / "waitcycle.ckpt").write_text(json.dumps(_resign(cycle)))
    # format 2's request columns (the good checkpoint holds one request)
    columns = doc["payload"]["core"]["requests"]["columns"]
    for name, edit in [
        ("coltype", lambda c: c["arrival"].update(dtype="<f4")),
        ("colshort", lambda c: c["priority"].update(base64="AAAAAAAA")),  # (4 bytes: half a float64)
        ("colbase64", lambda c: c["tenant"].update(base64="not base64!")),
        ("colmissing", lambda c: c.pop("waits_on")),
    ]:
        forged = copy.deepcopy(doc)
        edit(forged["payload"]["core"]["requests"]["columns"])
        (d / f"{name}.ckpt").write_text(json.dumps(_resign(forged)))
    assert set(columns) == set(REQUEST_COLUMNS)
    (d / "waiting.ckpt").unlink()
    # journals, each following good.ckpt (whose journal_seq is 0)
    names = _journal_line(1, "names", tenants=[[None, 0]], classes=[[None, 0]])
    (d / "damaged.journal").write_text(names + "garbage\tdeadbeefdeadbeef\n" + _journal_line(3, "cancel", args=[1]))
    (d / "gap.journal").write_text(names + _journal_line(5, "cancel", args=[1]))
    (d / "unknown-op.journal").write_text(names + _journal_line(2, "system", args=["rm -rf /"]))
    (d / "object-array.journal").write_text(
        names + _journal_line(2, "complete_many", args=[{"array": "|O", "values": [1]}, 1.0]))
    (d / "refused.journal").write_text(names + _journal_line(2, "complete", args=[NEVER, 1.0, -1]) + names)
    (d / "wrong-args.journal").write_text(names + _journal_line(2, "cancel", args=["one", "two"]))
    (d / "deep.journal").write_text(names + "[" * 100_000 + "]" * 100_000 + "\t0\n" + names)
    # job files
    (d / "cycle.json").write_text(json.dumps([
        {"task_id": "a", "prompt_tokens": 1, "depends_on": ["c"]},
        {"task_id": "b", "prompt_tokens": 1, "depends_on": ["a"]},
        {"task_id": "c", "prompt_tokens": 1, "depends_on": ["b"]},
    ], indent=1))
    (d / "self.jsonl").write_text('{"task_id": "a", "prompt_tokens": 1, "depends_on": ["a"]}\n')
    (d / "unknown-dep.jsonl").write_text('{"task_id": "a", "prompt_tokens": 1, "depends_on": ["zz"]}\n')
    (d / "dup.jsonl").write_text('{"task_id": "a", "prompt_tokens": 1}\n{"task_id": "a", "prompt_tokens": 2}\n')
    (d / "nan.jsonl").write_text('{"task_id": "a", "prompt_tokens": 1, "priority": NaN}\n')
    (d / "huge.jsonl").write_text('{"task_id": "a", "prompt_tokens": 1' + "0" * 12 + "}\n")
    (d / "hugeint.jsonl").write_text('{"task_id": "a", "prompt_tokens": ' + "9" * 5000 + "}\n")
    (d / "extra.jsonl").write_text('{"task_id": "a", "prompt_tokens": 1, "command": "rm -rf /"}\n')
    (d / "fanin.jsonl").write_text("".join(
        [json.dumps({"task_id": f"t{i}", "prompt_tokens": 1}) + "\n" for i in range(1025)]
        + [json.dumps({"task_id": "sink", "prompt_tokens": 1, "depends_on": [f"t{i}" for i in range(1025)]}) + "\n"]))
    (d / "truncated.json").write_text('[{"task_id": "a", "prompt_tokens": 1}, {"task_id": "b", "pro')
    (d / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (d / "shards.jsonl").write_text('{"task_id": "a", "prompt_tokens": 1, "shards": 5000}\n')
    # config files
    (d / "bad.toml").write_text("[scheduler\nweight_urgency = ")
    (d / "unknown.toml").write_text("[scheduler]\nweight_urgncy = 0.7\n")
    (d / "nan.toml").write_text("[scheduler]\nweight_urgency = nan\n")
    (d / "huge.toml").write_text("[scheduler]\nmax_queued = 99999999999999999999\n")
    (d / "deep.toml").write_text("a = " + "[" * 10_000 + "]" * 10_000 + "\n")
    (d / "latin1.toml").write_bytes("[scheduler]\npolicy = \"caf\xe9\"\n".encode("latin-1"))
    (d / "big.toml").write_text("#" * (2**20) + "\n")
    (d / "devices.toml").write_text('[scheduler]\ndevices = [{name = "gpu0", capacity = -1.0}]\n')


# --------------------------------------------------------------------------- helpers for rows


class CliExit(Exception):
    """The command line exited with a status other than 0; ``message``: its last line
    on stderr (argparse's ``... error: <message>``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"exit status {status}: {message}")
        self.status = status
        self.message = message


def cli(*argv: str) -> None:
    from capsched.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main(list(argv))
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
    if status != 0:
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        raise CliExit(status, lines[-1] if lines else "")


def _with_id(value: Any) -> InferenceRequest:
    """A request whose public id was set by hand (as a dependency object)."""
    r = InferenceRequest(prompt_tokens=1)
    r.id = value
    return r


def mutated(field: str, value: Any) -> InferenceRequest:
    req = InferenceRequest(prompt_tokens=5)
    setattr(req, field, value)
    return req


def run_job(ctx: Ctx, tasks: list[dict[str, Any]]) -> None:
    JobRunner(ctx.s, tasks).poll(now=1.0)


# --------------------------------------------------------------------------- the rows


@dataclasses.dataclass(frozen=True)
class Row:
    """One catalogue row.

    Attributes:
        group: the section of the doc.
        entry: the entry point, as a user calls it.
        bad: the bad value, in words.
        call: what the test runs (on a fresh :class:`Ctx`).
        exc: the exception type users get.
        match: a regex the message must match (``re.search``); it holds the bad value.
        state: how "unchanged" is proven: ``"scheduler"``, ``"files"``, ``"none"`` or
            ``"rejected"`` (back-pressure: as ``"scheduler"``, but ``stats()['rejected']``,
            the count of refused submits, went up: the one change a refusal makes).
        samples: the sample files the call reads (written to its directory first).
    """

    group: str
    entry: str
    bad: str
    call: Callable[[Ctx], Any]
    exc: type
    match: str
    state: str = "scheduler"
    samples: tuple[str, ...] = ()


def _rows() -> list[Row]:
    R = Row
    rows: list[Row] = []
    add = rows.append

    g = "Scheduler construction and Config"
    for bad, kw, exc, match in [
        ("no devices", dict(devices=[]), ConfigError, "empty"),
        ("devices as a string", dict(devices="cuda:0"), ConfigError, "'cuda:0'"),
        ("duplicate device name", dict(devices=["a", "a"]), ConfigError, "'a'.*twice"),
        ("capacity 0", dict(devices=[{"name": "a", "capacity": 0.0}]), ConfigError, r"capacity.*got 0\.0"),
        ("capacity NaN", dict(devices=[{"name": "a", "capacity": math.nan}]), ConfigError, r"capacity.*got nan"),
        ("capacity inf", dict(devices=[{"name": "a", "capacity": math.inf}]), ConfigError, r"capacity.*got inf"),
        ("capacity negative", dict(devices=[{"name": "a", "capacity": -1}]), ConfigError, r"capacity.*got -1"),
        ("capacity a string", dict(devices=[{"name": "a", "capacity": "big"}]), ConfigError, r"capacity.*'big'"),
        ("unknown device field", dict(devices=[{"name": "a", "speed": 2}]), ConfigError, "speed"),
        ("unknown accelerator model", dict(devices=[{"name": "a", "model": "H999"}]), ConfigError, "'H999'"),
        ("too many devices (65,537)", dict(devices=[f"d{i}" for i in range(65537)]), ConfigError, "65537"),
        ("negative KV budget", dict(devices=[{"name": "a", "kv_tokens": -1}]), ConfigError, r"kv_tokens.*-1"),
        ("unknown policy", dict(devices=["a"], policy="lottery"), ConfigError, "'lottery'"),
        ("max_batch_size 0", dict(devices=["a"], max_batch_size=0), ConfigError, r"max_batch_size.*got 0"),
        ("max_batch_size huge", dict(devices=["a"], max_batch_size=10**6), ConfigError, r"max_batch_size.*1000000"),
        ("max_batch_size float", dict(devices=["a"], max_batch_size=1.5), ConfigError, r"max_batch_size.*1\.5"),
        ("config NaN", dict(devices=["a"], config={"aging_weighted": math.nan}), ConfigError, r"aging_weighted.*nan"),
        ("config inf", dict(devices=["a"], config={"max_queue_delay": math.inf}), ConfigError, r"max_queue_delay.*inf"),
        ("config negative", dict(devices=["a"], config={"weight_urgency": -1}), ConfigError, r"weight_urgency.*-1"),
        ("config huge", dict(devices=["a"], config={"max_queued": 10**13}), ConfigError, r"max_queued.*10000000000000"),
        ("config wrong type", dict(devices=["a"], config={"wait_for_fit": 1}), ConfigError, r"wait_for_fit.*1"),
        ("config unknown key", dict(devices=["a"], config={"no_such_knob": 1}), ConfigError, "'no_such_knob'"),
        ("config not a mapping", dict(devices=["a"], config=42), ConfigError, "int"),
        ("clock not callable", dict(devices=["a"], clock=5), ConfigError, r"clock.*5"),
    ]:
        add(R(g, "`Scheduler(...)`", bad, lambda c, kw=kw: Scheduler(**kw), exc, match, "none"))
    add(R(g, "`Device(...)`", "name with a lone surrogate (not UTF-8)", lambda c: Device("gpu\ud800"), ConfigError,
          r"device name must be valid Unicode text.*lone surrogate", "none"))
    add(R(g, "`Scheduler(...)`", "devices' tenants= naming 70,000 tenants in all",
          lambda c: Scheduler([Device("a", tenants=tuple(f"t{i}" for i in range(70_000)))]), ConfigError,
          r"name 70000 distinct tenants in all.*over the limit of 65536", "none"))
    add(R(g, "`Device(...)`", "capacity NaN", lambda c: Device("a", math.nan), ConfigError, r"'a'.*capacity.*nan",
          "none"))
    add(R(g, "`Device(...)`", "max_inflight_batches 0", lambda c: Device("a", max_inflight_batches=0), ConfigError,
          r"max_inflight_batches.*got 0", "none"))
    add(R(g, "`Config(...)`", "deadline_levels 0", lambda c: Config(deadline_levels=0), ConfigError,
          r"deadline_levels.*got 0", "none"))
    add(R(g, "`Config(...)`", "retry_seed negative", lambda c: Config(retry_seed=-1), ConfigError,
          r"retry_seed.*-1", "none"))
    add(R(g, "`Config(...)`", "preferred_batch_sizes not ascending",
          lambda c: Config(preferred_batch_sizes=(4, 2)), ConfigError, "4 then 2", "none"))

    g = "Config loading (TOML, environment)"
    for bad, f, match in [
        ("missing file", "missing.toml", r"cannot read config file 'missing\.toml'"),
        ("not TOML", "bad.toml", r"'bad\.toml' is not valid TOML"),
        ("unknown key", "unknown.toml", r"'weight_urgncy'"),
        ("NaN", "nan.toml", r"weight_urgency.*nan"),
        ("huge integer", "huge.toml", r"max_queued.*99999999999999999999"),
        ("nested 10,000 deep", "deep.toml", r"'deep\.toml' is not valid TOML: nested too deeply"),
        ("not UTF-8", "latin1.toml", r"'latin1\.toml' is not UTF-8"),
        ("over 1 MiB", "big.toml", r"'big\.toml' is over the limit of 1048576 bytes"),
    ]:
        add(R(g, "`Config.from_toml(path)`", bad, lambda c, f=f: Config.from_toml(f), ConfigError, match, "files",
              (f,)))
    add(R(g, "`Config.from_toml(path)`", "an int (a file descriptor to open())", lambda c: Config.from_toml(1),
          ConfigError, r"path must be a str, bytes or os\.PathLike, got int 1", "none"))
    add(R(g, "`SchedulerConfig.from_toml(path)`", "negative device capacity", lambda c: SchedulerConfig.from_toml(
        "devices.toml"), ConfigError, r"'devices\.toml'.*'gpu0'.*capacity.*-1", "files", ("devices.toml",)))
    for bad, env, match in [
        ("not an integer", {"CAPSCHED_MAX_BATCH_SIZE": "16.0"}, r"CAPSCHED_MAX_BATCH_SIZE='16\.0'"),
        ("NaN", {"CAPSCHED_WEIGHT_URGENCY": "nan"}, r"CAPSCHED_WEIGHT_URGENCY='nan'"),
        ("out of range", {"CAPSCHED_MAX_BATCH_SIZE": "0"}, r"CAPSCHED_MAX_BATCH_SIZE='0'.*got 0"),
        ("not a boolean", {"CAPSCHED_WAIT_FOR_FIT": "maybe"}, r"CAPSCHED_WAIT_FOR_FIT='maybe'"),
        ("unknown variable", {"CAPSCHED_NO_SUCH": "1"}, "CAPSCHED_NO_SUCH"),
        ("unknown policy", {"CAPSCHED_POLICY": "lottery"}, r"CAPSCHED_POLICY='lottery'"),
        ("5,000 digits", {"CAPSCHED_MAX_BATCH_SIZE": "9" * 5000}, r"max_batch_size is out of range: 5,000 digits"),
        ("not a string", {"CAPSCHED_MAX_BATCH_SIZE": 16}, r"CAPSCHED_MAX_BATCH_SIZE: environment values are strings"),
        ("preferred size above max_batch_size", {"CAPSCHED_MAX_BATCH_SIZE": "8", "CAPSCHED_PREFERRED_BATCH_SIZES": "4,16"},
         r"preferred_batch_sizes\[1\] = 16 is above max_batch_size \(8\)"),
    ]:
        add(R(g, "`SchedulerConfig.from_env(environ)`", bad, lambda c, env=env: SchedulerConfig.from_env(env),
              ConfigError, match, "none"))

    g = "InferenceRequest construction"
    for bad, kw, exc, match in [
        ("priority NaN", dict(priority=math.nan), InvalidRequestError, r"priority.*nan"),
        ("priority above 1", dict(priority=1.5), InvalidRequestError, r"priority.*1\.5"),
        ("priority negative", dict(priority=-0.1), InvalidRequestError, r"priority.*-0\.1"),
        ("priority a string", dict(priority="high"), RequestTypeError, r"priority.*'high'"),
        ("priority a bool", dict(priority=True), RequestTypeError, r"priority.*True"),
        ("timeout 0", dict(timeout=0.0), InvalidRequestError, r"timeout.*0\.0"),
        ("timeout inf", dict(timeout=math.inf), InvalidRequestError, r"timeout.*inf"),
        ("deadline NaN", dict(deadline=math.nan), InvalidRequestError, r"deadline.*nan"),
        ("both timeout and deadline", dict(timeout=1.0, deadline=5.0), InvalidRequestError, r"timeout 1\.0, deadline 5\.0"),
        ("prompt_tokens negative", dict(prompt_tokens=-1), InvalidRequestError, r"prompt_tokens.*-1"),
        ("prompt_tokens over the limit", dict(prompt_tokens=10_000_001), InvalidRequestError,
         r"prompt_tokens must be in 0\.\.10000000, got 10000001"),
        ("prompt_tokens a float", dict(prompt_tokens=2.5), RequestTypeError, r"prompt_tokens.*2\.5"),
        ("max_new_tokens 0", dict(max_new_tokens=0), InvalidRequestError, r"max_new_tokens.*got 0"),
        ("max_new_tokens huge", dict(max_new_tokens=10**12), InvalidRequestError, r"max_new_tokens.*1000000000000"),
        ("uclamp_min above uclamp_max", dict(uclamp_min=0.8, uclamp_max=0.2), InvalidRequestError, r"0\.8.*0\.2"),
        ("tenant not a str", dict(tenant=7), RequestTypeError, r"tenant.*int"),
        ("depends_on a string", dict(depends_on="12"), RequestTypeError, r"depends_on.*'12'"),
        ("depends_on id 0", dict(depends_on=[0]), RequestTypeError, r"depends_on.*got 0"),
        ("1,025 dependencies", dict(depends_on=list(range(1, 1026))), InvalidRequestError, r"1025 requests \(limit 1024\)"),
        ("unknown sched_class", dict(sched_class="realtime"), InvalidRequestError, "'realtime'"),
        ("fallback_pool without pool", dict(fallback_pool="a100"), InvalidRequestError, "'a100'"),
    ]:
        kw = {"prompt_tokens": 5, **kw}
        add(R(g, "`InferenceRequest(...)`", bad, lambda c, kw=kw: InferenceRequest(**kw), exc, match, "none"))
    add(R(g, "`InferenceRequest(...)`", "neither prompt nor prompt_tokens", lambda c: InferenceRequest(),
          InvalidRequestError, "give a prompt or prompt_tokens", "none"))
    add(R(g, "`InferenceRequest(...)`", "prompt as bytes", lambda c: InferenceRequest(b"hi"), RequestTypeError,
          r"prompt.*bytes", "none"))

    g = "submit"
    for bad, field, value, match in [
        ("priority set to NaN after construction", "priority", math.nan, r"priority.*nan"),
        ("timeout set to -2 after construction", "timeout", -2.0, r"timeout.*got -2"),
        ("prompt_tokens set to -5 after construction", "prompt_tokens", -5, r"prompt_tokens.*-5"),
        ("max_new_tokens set to 10**12 after construction", "max_new_tokens", 10**12, r"max_new_tokens.*1000000000000"),
        ("deadline set to NaN after construction", "deadline", math.nan, r"deadline.*nan"),
        ("sched_class set to 'bogus' after construction", "sched_class", "bogus", r"sched_class.*'bogus'"),
    ]:
        add(R(g, "`req.<field> = v; submit(req)`", bad,
              lambda c, f=field, v=value: c.s.submit(mutated(f, v), now=1.0), InvalidRequestError, match))
    # (set after construction, a field is stored as given: submit checks it as the
    # constructor does, before a new tenant or class name is numbered)
    for bad, field, value, match in [
        ("depends_on set to a string after construction", "depends_on", "12", r"depends_on.*'12'"),
        ("depends_on set to [2.7] after construction", "depends_on", [2.7], r"depends_on.*2\.7"),
        ("depends_on set to [True] after construction", "depends_on", [True], r"depends_on.*True"),
        ("depends_on set to 5 after construction", "depends_on", 5, r"depends_on.*got 5"),
        ("priority set to True after construction", "priority", True, r"priority.*True"),
        ("batchable set to 1 after construction", "batchable", 1, r"batchable.*int"),
        ("tenant set to bytes after construction", "tenant", b"x", r"tenant.*bytes"),
        ("tenant set to a tuple after construction", "tenant", ("a",), r"tenant.*tuple"),
        ("request_class set to a list after construction", "request_class", [1], r"request_class.*list"),
        ("prompt set to bytes after construction", "prompt", b"abc", r"prompt.*bytes"),
    ]:
        add(R(g, "`req.<field> = v; submit(req)`", bad,
              lambda c, f=field, v=value: c.s.submit(mutated(f, v), now=1.0), RequestTypeError, match))
    add(R(g, "`submit(req)`", "depends_on holding a request whose id was set to 'x'",
          lambda c: c.s.submit(InferenceRequest(prompt_tokens=1, depends_on=[_with_id("x")]), now=1.0),
          RequestTypeError, r"depends_on\[0\] is an InferenceRequest whose id is 'x'"))
    add(R(g, "`submit(req)`", "not an InferenceRequest", lambda c: c.s.submit({"prompt": "x"}), RequestTypeError,
          "got dict"))
    add(R(g, "`submit(req)`", "the same object twice (duplicate)",
          lambda c: c.s.submit(c.submitted, now=1.0), DuplicateRequestError, r"already submitted \(id 7\)"))
    add(R(g, "`submit(req, now=...)`", "now NaN", lambda c: c.s.submit(InferenceRequest(prompt_tokens=1), now=math.nan),
          InvalidArgumentError, r"now.*nan"))
    add(R(g, "`submit(req, now=...)`", "now a string", lambda c: c.s.submit(InferenceRequest(prompt_tokens=1),
                                                                          now="noon"),
          InvalidArgumentError, r"now.*'noon'"))
    add(R(g, "`submit(req)`", "deadline already passed",
          lambda c: c.s.submit(InferenceRequest(prompt_tokens=1, deadline=0.1), now=1.0), InvalidRequestError,
          r"deadline 0\.1 is not after now \(1"))
    add(R(g, "`submit(req)`", "prompt over 100,000,000 characters",
          lambda c: c.s.submit(InferenceRequest("x" * 100_000_001), now=1.0), InvalidRequestError,
          r"100000001 characters, over the limit of 100000000"))
    add(R(g, "`submit(req)`", "tenant over its queue bound (max_queued_per_tenant=3)",
          lambda c: c.s.submit(InferenceRequest(prompt_tokens=1, tenant="alice"), now=1.0), QueueFullError,
          r"tenant 'alice'.*3", "rejected"))
    add(R(g, "`submit(req)`", "unknown pool", lambda c: c.s.submit(InferenceRequest(prompt_tokens=1, pool="tpu"),
                                                                     now=1.0),
          InvalidRequestError, "'tpu'"))

    g = "Dependencies"
    add(R(g, "`submit(req)`", "depends on an id never issued",
          lambda c: c.s.submit(InferenceRequest(prompt_tokens=1, depends_on=[NEVER]), now=1.0), DependencyError,
          f"{NEVER}.*never issued"))
    add(R(g, "`submit(req)`", "depends on itself (its own future id 8)",
          lambda c: c.s.submit(InferenceRequest(prompt_tokens=1, depends_on=[8]), now=1.0), DependencyError,
          "request 8, which this scheduler never issued"))
    add(R(g, "`submit(req)`", "depends on a cancelled request",
          lambda c: c.s.submit(InferenceRequest(prompt_tokens=1, depends_on=[c.ids["gone"]]), now=1.0),
          DependencyError, r"request 4.*cancelled"))
    add(R(g, "`submit(req)`", "the same dependency twice",
          lambda c: c.s.submit(InferenceRequest(prompt_tokens=1, depends_on=[c.ids["queued"]] * 2), now=1.0),
          DependencyError, "3.*twice"))
    add(R(g, "`submit(req)`", "depends on a request that already has max_dependents (1) waiting on it",
          lambda c: c.s.submit(InferenceRequest(prompt_tokens=1, depends_on=[c.ids["flight"]]), now=1.0),
          DependencyError, r"request 2, which already has 1 requests waiting on it \(max_dependents = 1\)"))
    add(R(g, "`submit(req)`", "depends on an unsubmitted request object",
          lambda c: c.s.submit(InferenceRequest(prompt_tokens=1, depends_on=[InferenceRequest(prompt_tokens=2)]),
                               now=1.0),
          DependencyError, r"not submitted: InferenceRequest\(prompt_tokens=2"))
    add(R(g, "`JobRunner(scheduler, tasks)`", "a cycle a -> b -> a", lambda c: run_job(c, [
        {"task_id": "a", "prompt_tokens": 1, "depends_on": ["b"]},
        {"task_id": "b", "prompt_tokens": 1, "depends_on": ["a"]}]), JobCycleError, "dependency cycle: (a -> b -> a|b -> a -> b)"))
    add(R(g, "`JobRunner(scheduler, tasks)`", "a task depending on itself", lambda c: run_job(c, [
        {"task_id": "a", "prompt_tokens": 1, "depends_on": ["a"]}]), JobFileError, "'a' depends on itself"))

    g = "submit_many (numpy bulk path)"
    for bad, call, exc, match in [
        ("a bool among the token counts (element 1)", lambda c: c.s.submit_many([1, True], now=1.0),
         RequestTypeError, r"prompt_tokens\[1\] is True, a bool"),
        ("NaN priority (element 1)", lambda c: c.s.submit_many([1, 2, 3], priority=[0.5, math.nan, 0.5], now=1.0),
         InvalidRequestError, r"element 1: priority.*nan"),
        ("inf timeout (element 1)", lambda c: c.s.submit_many([1, 1], timeout=[1.0, math.inf], now=1.0),
         InvalidRequestError, r"element 1: timeout.*inf"),
        ("negative tokens (element 1)", lambda c: c.s.submit_many([1, -2], now=1.0), InvalidRequestError,
         r"element 1: prompt_tokens.*-2"),
        ("tokens over the limit", lambda c: c.s.submit_many(np.array([10**12]), now=1.0), InvalidRequestError,
         r"element 0: prompt_tokens.*1000000000000"),
        ("fractional tokens", lambda c: c.s.submit_many([1.5], now=1.0), InvalidRequestError, r"whole numbers.*1\.5"),
        ("a whole float beyond int64 (1e30)", lambda c: c.s.submit_many([1.0, 1e30], now=1.0), InvalidRequestError,
         r"prompt_tokens holds 1e\+30, beyond any token limit"),
        ("a Python int beyond int64 (2**65)", lambda c: c.s.submit_many([1, 2**65], now=1.0), InvalidRequestError,
         r"prompt_tokens holds 36893488147419103232, beyond any token limit"),
        ("strings", lambda c: c.s.submit_many(["a"], now=1.0), RequestTypeError, r"integers.*<U1"),
        ("length mismatch", lambda c: c.s.submit_many([1, 2], max_new_tokens=[4, 5, 6], now=1.0),
         InvalidRequestError, "3 values but prompt_tokens has 2"),
        ("2-d array", lambda c: c.s.submit_many(np.ones((2, 2), dtype=np.int64), now=1.0), InvalidRequestError,
         r"shape \(2, 2\)"),
        ("beyond max_queued=100", lambda c: c.s.submit_many(np.ones(200, dtype=np.int64), now=1.0), QueueFullError,
         "100"),
    ]:
        add(R(g, "`submit_many(...)`", bad, call, exc, match, "rejected" if exc is QueueFullError else "scheduler"))

    g = "step"
    for bad, call, exc, match in [
        ("now NaN", lambda c: c.s.step(now=math.nan), InvalidArgumentError, r"now.*nan"),
        ("now inf", lambda c: c.s.step(now=math.inf), InvalidArgumentError, r"now.*inf"),
        ("now -inf", lambda c: c.s.step(now=-math.inf), InvalidArgumentError, r"now.*-inf"),
        ("now a string", lambda c: c.s.step(now="noon"), InvalidArgumentError, r"now.*'noon'"),
        ("now a bool", lambda c: c.s.step(now=True), InvalidArgumentError, r"now.*True"),
        ("unknown device in free_slots", lambda c: c.s.step(now=1.0, free_slots={"gpu9": 1}), InvalidArgumentError,
         "'gpu9'"),
        ("negative free_slots", lambda c: c.s.step(now=1.0, free_slots={"big": -1}), InvalidArgumentError,
         r"free_slots\['big'\].*-1"),
        ("huge free_slots", lambda c: c.s.step(now=1.0, free_slots={"big": 10**6}), InvalidArgumentError,
         r"free_slots\['big'\].*1000000"),
        ("float free_kv_tokens", lambda c: c.s.step(now=1.0, free_slots={"big": 1}, free_kv_tokens={"big": 2.5}),
         InvalidArgumentError, r"free_kv_tokens\['big'\].*2\.5"),
        ("free_kv_tokens without free_slots", lambda c: c.s.step(now=1.0, free_kv_tokens={"big": 5}),
         InvalidArgumentError, "free_kv_tokens is only used with free_slots"),
        ("free_slots an array of another length", lambda c: c.s.step(now=1.0, free_slots=np.array([1, 1, 1])),
         InvalidArgumentError, r"free_slots must have one value per device \(2\), got 3"),
        ("free_slots an array of floats", lambda c: c.s.step(now=1.0, free_slots=np.array([1.0, 2.0])),
         InvalidArgumentError, r"free_slots must be .*one-dimensional integer array, got dtype float64"),
        ("free_slots an array holding -2", lambda c: c.s.step(now=1.0, free_slots=np.array([1, -2])),
         InvalidArgumentError, r"free_slots\[1\] \(device 'small'\) must be in -1\.\.65536 \(-1: not reported\), got -2"),
        ("free_slots a list holding a bool", lambda c: c.s.step(now=1.0, free_slots=[1, True]),
         InvalidArgumentError, r"free_slots must hold integers, got True"),
        ("free_slots a string", lambda c: c.s.step(now=1.0, free_slots="big"), InvalidArgumentError,
         r"free_slots must be a mapping of device names to integers, or one integer per device"),
    ]:
        add(R(g, "`step(...)`", bad, call, exc, match))

    g = "complete, complete_many, fail, cancel"
    for entry, bad, call, exc, match in [
        ("`complete(id)`", "unknown id", lambda c: c.s.complete(NEVER, now=1.0), UnknownRequestError,
         f"{NEVER}.*never issued"),
        ("`complete(id)`", "id 0", lambda c: c.s.complete(0, now=1.0), UnknownRequestError, "unknown request 0"),
        ("`complete(id)`", "negative id", lambda c: c.s.complete(-4, now=1.0), UnknownRequestError,
         "unknown request -4"),
        ("`complete(id)`", "id as a string", lambda c: c.s.complete("3", now=1.0), RequestTypeError, "got '3'"),
        ("`complete(id)`", "a queued request", lambda c: c.s.complete(c.ids["queued"], now=1.0), RequestStateError,
         "3.*not in flight"),
        ("`complete(id)`", "already completed (duplicate completion)", lambda c: c.s.complete(c.ids["done"], now=1.0),
         RequestStateError, "1.*already ended as completed"),
        ("`complete(id)`", "a cancelled request", lambda c: c.s.complete(c.ids["gone"], now=1.0), RequestStateError,
         "4.*cancelled"),
        ("`complete(id, now=...)`", "now NaN", lambda c: c.s.complete(c.ids["flight"], now=math.nan),
         InvalidArgumentError, r"now.*nan"),
        ("`complete(id, output_tokens=...)`", "output_tokens negative",
         lambda c: c.s.complete(c.ids["flight"], now=1.0, output_tokens=-3), InvalidArgumentError,
         r"output_tokens.*-3"),
        ("`complete(id, output_tokens=...)`", "output_tokens over the limit",
         lambda c: c.s.complete(c.ids["flight"], now=1.0, output_tokens=10**9), InvalidArgumentError,
         r"output_tokens.*1000000000"),
        ("`complete(id, output_tokens=...)`", "output_tokens beyond 64 bits",
         lambda c: c.s.complete(c.ids["flight"], now=1.0, output_tokens=2**70), InvalidArgumentError,
         r"output_tokens.*1180591620717411303424"),
        ("`complete(id, now=...)`", "now an int beyond any float",
         lambda c: c.s.complete(c.ids["flight"], now=2**1100), InvalidArgumentError,
         r"now must be a number of seconds within the range of a float, got 1358"),
        ("`complete_many(ids)`", "one id, not a list of them", lambda c: c.s.complete_many(c.ids["flight"], now=1.0),
         RequestTypeError, r"iterable of ints, got 2"),
        ("`complete_many(ids)`", "a 2-d array", lambda c: c.s.complete_many(np.array([[c.ids["flight"]]]), now=1.0),
         InvalidArgumentError, r"1-d array, got shape \(1, 1\)"),
        ("`complete_many(ids)`", "one id not in flight (element 1)",
         lambda c: c.s.complete_many([c.ids["flight"], c.ids["queued"]], now=1.0), RequestStateError,
         r"element 1.*3"),
        ("`complete_many(ids)`", "the same id twice",
         lambda c: c.s.complete_many([c.ids["flight"], c.ids["flight"]], now=1.0), RequestStateError, "2.*twice"),
        ("`complete_many(ids)`", "an unknown id", lambda c: c.s.complete_many(np.array([c.ids["flight"], NEVER]),
                                                                              now=1.0),
         UnknownRequestError, f"{NEVER}.*never issued"),
        ("`complete_many(ids)`", "an array of floats", lambda c: c.s.complete_many(np.array([2.0]), now=1.0),
         RequestTypeError, "float64"),
        ("`fail(id)`", "unknown id", lambda c: c.s.fail(NEVER, now=1.0), UnknownRequestError, f"{NEVER}.*never issued"),
        ("`fail(id)`", "a queued request", lambda c: c.s.fail(c.ids["queued"], now=1.0), RequestStateError,
         "3.*not in flight"),
        ("`fail(id)`", "already ended", lambda c: c.s.fail(c.ids["done"], now=1.0), RequestStateError,
         "1.*already ended"),
        ("`fail(id, retryable=...)`", "retryable a string", lambda c: c.s.fail(c.ids["flight"], now=1.0,
                                                                                retryable="yes"),
         InvalidArgumentError, r"retryable.*'yes'"),
        ("`fail(id, error=...)`", "error not a str", lambda c: c.s.fail(c.ids["flight"], now=1.0, error=42),
         InvalidArgumentError, r"error.*int"),
        ("`cancel(id)`", "unknown id", lambda c: c.s.cancel(NEVER), UnknownRequestError, f"{NEVER}.*never issued"),
        ("`cancel(id)`", "id as a float", lambda c: c.s.cancel(2.0), RequestTypeError, r"got 2\.0"),
        ("`status(id)`", "unknown id", lambda c: c.s.status(NEVER), UnknownRequestError, f"{NEVER}.*never issued"),
        ("`preemptions(id)`", "already ended", lambda c: c.s.preemptions(c.ids["done"]), RequestStateError,
         "1.*already ended"),
    ]:
        add(R(g, entry, bad, call, exc, match))

    g = "Devices at run time"
    for entry, bad, call, exc, match in [
        ("`set_clock(device, mhz)`", "unknown device", lambda c: c.s.set_clock("gpu9", 1000.0, 2000.0, now=1.0),
         InvalidArgumentError, "'gpu9'"),
        ("`set_clock(device, mhz, max_mhz)`", "max clock NaN", lambda c: c.s.set_clock("big", 1000.0, math.nan, now=1.0),
         InvalidArgumentError, r"max_clock_mhz must be a finite number > 0.*got nan"),
        ("`set_clock(device, mhz)`", "negative clock", lambda c: c.s.set_clock("big", -1.0, 2000.0, now=1.0),
         InvalidArgumentError, "got -1"),
        ("`set_clock(device, mhz)`", "clock NaN", lambda c: c.s.set_clock("big", math.nan, 2000.0, now=1.0),
         InvalidArgumentError, "got nan"),
        ("`set_clock(device, mhz)`", "device not a str", lambda c: c.s.set_clock(0, 1000.0, 2000.0, now=1.0),
         InvalidArgumentError, "got 0"),
        ("`set_clock(device, mhz)`", "clock / max clock underflows to 0",
         lambda c: c.s.set_clock("big", 1e-300, 1e300, now=1.0), InvalidArgumentError,
         r"1e-300 is too small against max clock 1e\+300: their ratio underflows to 0"),
        ("`set_clock(device, mhz)`", "clock an int beyond any float",
         lambda c: c.s.set_clock("big", 2**1100, 2000.0, now=1.0), InvalidArgumentError,
         r"clock_mhz must be a number within the range of a float, got 1358"),
        ("`set_pressure(device, share)`", "share 1.5", lambda c: c.s.set_pressure("big", 1.5, now=1.0),
         InvalidArgumentError, r"got 1\.5"),
        ("`set_pressure(device, share)`", "share NaN", lambda c: c.s.set_pressure("big", math.nan, now=1.0),
         InvalidArgumentError, "got nan"),
        ("`set_pressure(device, share)`", "unknown device", lambda c: c.s.set_pressure("gpu9", 0.5, now=1.0),
         InvalidArgumentError, "'gpu9'"),
        ("`estimate_service(device, ...)`", "unknown device", lambda c: c.s.estimate_service("gpu9", 10, 10),
         InvalidArgumentError, "'gpu9'"),
        ("`estimate_service(device, ...)`", "steps NaN", lambda c: c.s.estimate_service("big", 10, math.nan),
         InvalidArgumentError, r"steps.*nan"),
    ]:
        add(R(g, entry, bad, call, exc, match))
    add(R(g, "`reserve(n)`", "negative", lambda c: c.s.reserve(-1), InvalidArgumentError, "got -1"))
    add(R(g, "`reserve(n)`", "huge (10**15)", lambda c: c.s.reserve(10**15), InvalidArgumentError,
          "up to 134217728, got 1000000000000000"))

    g = "Checkpoints and journals"
    for bad, f, match in [
        ("missing file", "missing.ckpt", r"cannot read checkpoint 'missing\.ckpt'"),
        ("truncated", "truncated.ckpt", r"'truncated\.ckpt' is not valid JSON \(truncated or corrupt\?\)"),
        ("corrupt (a byte changed)", "tampered.ckpt", r"'tampered\.ckpt' is corrupt: its checksum"),
        ("newer format version", "future.ckpt", r"'future\.ckpt' was written by a newer capsched \(format version 3"),
        ("not a checkpoint (other JSON)", "foreign.ckpt", r"'foreign\.ckpt' is not a capsched checkpoint"),
        ("binary garbage", "binary.ckpt", r"'binary\.ckpt' is not valid JSON"),
        ("JSON nested 100,000 deep", "deep.ckpt", r"'deep\.ckpt' is not a capsched checkpoint: JSON nested too deeply"),
        ("a 5,000-digit integer", "hugeint.ckpt", r"'hugeint\.ckpt' is not valid JSON .*more than 4300 digits"),
        ("NaN as the version", "nan.ckpt", r"'nan\.ckpt' is not strict JSON: it holds the literal NaN"),
        ("re-signed, an extra payload key", "extra.ckpt", r"'extra\.ckpt' is malformed: unknown payload key\(s\) \['pickle'\]"),
        ("re-signed, a missing payload key", "nodevices.ckpt", r"'nodevices\.ckpt' is malformed: it lacks payload key 'devices'"),
        ("re-signed, a config value of the wrong type", "wrongtype.ckpt",
         r"'wrongtype\.ckpt' cannot be restored: weight_urgency must be a number, got 'high'"),
        ("re-signed, a negative id counter", "negative.ckpt", r"'negative\.ckpt' is malformed: its core state holds a value of the wrong type, or out of range"),
        ("re-signed, a huge max_batch_size", "hugebatch.ckpt",
         r"'hugebatch\.ckpt' cannot be restored: max_batch_size .*1000000000000000000000000000000"),
        ("re-signed, a device's utilization signal NaN", "nanutil.ckpt",
         r"'nanutil\.ckpt' cannot be restored: .*device 0: bad utilization signal"),
        ("re-signed, a breaker's cool-down end NaN", "nanopen.ckpt",
         r"'nanopen\.ckpt' cannot be restored: .*device 1: its breaker's cool-down end is not a finite time"),
        ("re-signed, two requests waiting on each other", "waitcycle.ckpt",
         r"'waitcycle\.ckpt' cannot be restored: .*request [23] waits on itself through its dependencies"),
        ("re-signed, a request column of another type", "coltype.ckpt",
         r"'coltype\.ckpt' is malformed: column 'arrival' must have dtype '<f8', got '<f4'"),
        ("re-signed, a request column of the wrong length", "colshort.ckpt",
         r"'colshort\.ckpt' is malformed: column 'priority' holds 6 bytes, not 8 \(1 x 8-byte values\)"),
        ("re-signed, a request column that is not base64", "colbase64.ckpt",
         r"'colbase64\.ckpt' is malformed: column 'tenant' is not valid base64"),
        ("re-signed, a request column missing", "colmissing.ckpt",
         r"'colmissing\.ckpt' is malformed: core\.requests\.columns lacks column\(s\) \['waits_on'\]"),
    ]:
        add(R(g, "`Scheduler.restore(path)`", bad, lambda c, f=f: Scheduler.restore(f), CheckpointError, match, "files",
              (f,)))
    for bad, f, match in [
        ("a damaged line before the last", "damaged.journal", r"'damaged\.journal' line 2 is damaged"),
        ("a gap in seq", "gap.journal", r"'gap\.journal' line 2: seq 5 does not follow 1"),
        ("an unknown call", "unknown-op.journal", r"'unknown-op\.journal'.*unknown call 'system'"),
        ("an array of Python objects", "object-array.journal", r"'object-array\.journal' line 2.*dtype '\|O'"),
        ("a call the core refuses", "refused.journal",
         rf"'refused\.journal' seq 2: cannot replay 'complete'.*{NEVER}"),
        ("arguments of the wrong type", "wrong-args.journal",
         r"'wrong-args\.journal' seq 2: cannot replay 'cancel': the core cannot take its arguments \['one', 'two'\]"),
        ("JSON nested 100,000 deep", "deep.journal", r"'deep\.journal' line 2 is damaged"),
    ]:
        add(R(g, "`Scheduler.restore(ckpt, journal=path)`", bad,
              lambda c, f=f: Scheduler.restore("good.ckpt", journal=f), CheckpointError, match, "files",
              ("good.ckpt", f)))
    add(R(g, "`checkpoint(path)`", "a directory that does not exist",
          lambda c: c.s.checkpoint("no-such-dir/state.ckpt"), CheckpointError,
          r"cannot write checkpoint 'no-such-dir/state\.ckpt': No such file or directory", "files"))
    add(R(g, "`open_journal(path)`", "a directory that does not exist",
          lambda c: c.s.open_journal("no-such-dir/j.log"), CheckpointError, r"cannot open journal 'no-such-dir/j\.log'",
          "files"))

    g = "Job files"
    for bad, f, exc, match in [
        ("missing file", "missing.json", JobFileError, r"missing\.json: cannot read the file"),
        ("a dependency cycle", "cycle.json", JobCycleError, r"cycle\.json, line 2: dependency cycle: a -> c -> b -> a"),
        ("a task depending on itself", "self.jsonl", JobFileError, r"self\.jsonl, line 1 .*'a' depends on itself"),
        ("an unknown dependency", "unknown-dep.jsonl", JobFileError, r"unknown dependency 'zz'"),
        ("a duplicate task_id", "dup.jsonl", JobFileError, r"dup\.jsonl, line 2 .*duplicate task_id 'a'"),
        ("NaN priority", "nan.jsonl", JobFileError, r"field 'priority': must be a finite number, got nan"),
        ("tokens over the limit", "huge.jsonl", JobFileError, r"'prompt_tokens': must be in 0\.\.10,000,000, got 1000000000000"),
        ("a 5,000-digit integer", "hugeint.jsonl", JobFileError, r"hugeint\.jsonl, line 1: not valid JSON: an integer of more than 4300 digits"),
        ("an unknown field", "extra.jsonl", JobFileError, r"field 'command': unknown field 'command'"),
        ("1,025 dependencies (fan-in)", "fanin.jsonl", JobFileError, r"'depends_on': lists 1,025 tasks \(limit 1024\)"),
        ("5,000 shards", "shards.jsonl", JobFileError, r"'shards': must be in 1\.\.1,024, got 5000"),
        ("truncated", "truncated.json", JobFileError, r"truncated\.json, line 1: not valid JSON"),
        ("JSON nested 100,000 deep", "deep.json", JobFileError, r"deep\.json: JSON nested too deeply"),
    ]:
        add(R(g, "`load_job(path)`", bad, lambda c, f=f: load_job(f), exc, match, "files", (f,)))
    add(R(g, "`parse_tasks(data)`", "not a list", lambda c: parse_tasks("tasks"), JobFileError, "got a string",
          "none"))

    g = "Simulator (capsched.sim)"
    from capsched.sim import gamma_bursty, parse_fleet, simulate
    from capsched.sim.fleet import DEFAULT_FLEET
    from capsched.sim.workload import LognormalLengths, poisson

    for entry, bad, call, exc, match in [
        ("`parse_fleet(text)`", "100,000,000 devices", lambda: parse_fleet("L4:100000000"), ConfigError,
         r"100,000,000 devices in all \(L4:100000000\), more than the Scheduler's limit of 65,536"),
        ("`gamma_bursty(rate, cv)`", "cv 1e-200 (the gamma shape overflows)", lambda: gamma_bursty(10.0, 1e-200, n=5),
         InvalidArgumentError, r"cv must be in \[1e-06, 10000\].*got 1e-200"),
        ("`LognormalLengths(prompt_mean)`", "a mean of 1e30 tokens", lambda: LognormalLengths(1e30),
         InvalidArgumentError, r"prompt_mean must be at most MAX_TOKENS \(10,000,000\), got 1e\+30"),
        ("`simulate(devices, workload, policy, seed=)`", "seed -1",
         lambda: simulate(DEFAULT_FLEET.build(500.0, 100.0), poisson(1.0, n=2), "capsched", seed=-1), ConfigError,
         r"seed must be an integer >= 0, got -1"),
    ]:
        add(R(g, entry, bad, lambda c, call=call: call(), exc, match, "none"))

    g = "Command line"
    for bad, argv, match in [
        ("a job file with a cycle", ("jobs", "validate", "cycle.json"), r"dependency cycle: a -> c -> b -> a"),
        ("a missing job file", ("jobs", "validate", "missing.json"), r"missing\.json: cannot read the file"),
        ("a non-finite --deadline", ("jobs", "validate", "cycle.json", "--deadline", "inf"),
         "--deadline must be a time in seconds in 0..1e\\+15 \\(the clock's range\\), got inf"),
        ("an unknown --format", ("jobs", "validate", "cycle.json", "--format", "yaml"), "invalid choice: 'yaml'"),
        ("a negative --load", ("simulate", "--load", "-1"), r"--load: each load must be a number > 0.*'-1'"),
        ("--requests 1", ("simulate", "--requests", "1"), "--requests must be >= 2, got 1"),
        ("--seed not an integer", ("simulate", "--seed", "x"), "invalid int value: 'x'"),
        ("a gamma trace with cv 1e200", ("simulate", "--trace", "gamma:1e200"), r"cv must be in \[1e-06, 10000\]"),
        ("--out ''", ("simulate", "--out", ""), "--out"),
        ("an unknown subcommand", ("launch",), "invalid choice: 'launch'"),
    ]:
        add(R(g, "`capsched " + " ".join(argv[:2] if argv[0] == "jobs" else argv[:1]) + "`", bad,
              lambda c, argv=argv: cli(*argv), CliExit, match, "files", ("cycle.json",)))
    return rows


CATALOGUE = _rows()


# --------------------------------------------------------------------------- running rows


@dataclasses.dataclass
class Outcome:
    exc: Optional[BaseException]
    message: str


def run_row(row: Row, directory: Path) -> tuple[Outcome, bool, Ctx]:
    """Run ``row`` on a fresh context in ``directory`` (the current directory); returns
    what it raised, whether the state was unchanged, and the context."""
    ctx = Ctx(directory, samples=tuple(n for n in row.samples if n in sample_files()))
    before = snapshot(ctx.s, ctx.ids, directory)
    files_before = ctx.files()
    result: Any = None
    try:
        result = row.call(ctx)
    except BaseException as exc:  # noqa: BLE001 - recorded, and checked by the test
        if not isinstance(exc, Exception):
            raise
        message = exc.message if isinstance(exc, CliExit) else str(exc)
        outcome = Outcome(exc, message)
    else:
        outcome = Outcome(None, f"no exception; returned {result!r}")
    after = snapshot(ctx.s, ctx.ids, directory)
    if row.state == "rejected":
        grew = after[0]["rejected"] > before[0]["rejected"] and after[3] == after[0]["rejected"]
        before = ({**before[0], "rejected": None}, *before[1:3])
        after = ({**after[0], "rejected": None}, *after[1:3])
        unchanged = grew and after == before and ctx.s.check_invariants()
    else:
        unchanged = after == before and ctx.s.check_invariants()
    if row.state == "files":
        unchanged = unchanged and ctx.files() == files_before
    return outcome, unchanged, ctx


_STATE_TEXT = {
    "scheduler": "yes: stats, statuses, checkpoint bytes",
    "files": "yes: the files and the live scheduler",
    "none": "yes: nothing was created",
    "rejected": "yes, but for `stats()['rejected']` + n",
}


def _cell(text: str, limit: int = 220) -> str:
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text.replace("|", "\\|")


def _exc_name(exc: type) -> str:
    if exc is CliExit:
        return "exit status 2 (argparse error)"
    return f"`{exc.__name__}`"


def render(directory: Path) -> str:
    """docs/bad_inputs.md, generated by running every row in ``directory`` (which must be
    the current directory: messages name files relative to it)."""
    out = [
        "# Bad-input catalogue",
        "",
        "<!-- Generated by tools/gen_bad_inputs.py from tests/test_bad_input_catalogue.py; do not edit by hand. -->",
        "",
        "Every public entry point, each kind of bad value, the exception users get and its",
        "message (copied from running it), and whether the scheduler's state was unchanged",
        "afterwards. `tests/test_bad_input_catalogue.py` holds these rows and checks each:",
        "the exception type, a regex on the message that contains the bad value, and that",
        "nothing changed (`scheduler`: `stats()`, every id's `status()` and the bytes of a",
        "checkpoint written before and after are equal, and `check_invariants()` holds;",
        "`files`: the file given and its directory are byte-for-byte unchanged, as is the live",
        "scheduler; `none`: a constructor or parser raised before any object existed). A test",
        "fails when this file and the rows drift; regenerate it with",
        "`python tools/gen_bad_inputs.py`.",
        "",
        "Every exception is a subclass of `capsched.errors.CapschedError` (wrong types also",
        "of `TypeError`, range errors of `ValueError`, unknown ids of `KeyError`).",
        "`CheckpointError` and `JobFileError` are `ConfigError`s; `JobCycleError` is a",
        "`DependencyError`. The command line prints `capsched ...: error: <message>` on",
        "stderr and exits with status 2.",
        "",
        "The rows run against a scheduler with devices `big` (capacity 2) and `small` (1),",
        "`max_batch_size=2`, `Config(max_queued=100, max_queued_per_tenant=3, max_dependents=1)` and these",
        "requests: 1 completed, 2 in flight, 3 queued (tenant `alice`), 4 cancelled, 5",
        "waiting on 2 (tenant `alice`), 6 queued (tenant `alice`), 7 queued. File names are",
        "relative to the directory the loader ran in.",
        "",
        "Not errors, on purpose: a `step(now)` with a `now` earlier than one already seen runs",
        "at the latest time seen (`StepResult.now` says which; time never runs backwards",
        "inside the scheduler); `cancel(id)` of a request that already ended returns `False`",
        "and changes nothing. There is no call that adds or removes a device at run time:",
        "the device list is fixed at construction (rows under *Scheduler construction*),",
        "and run-time device calls name devices (rows under *Devices at run time*).",
        "Limits are in [limits.md](limits.md); file formats in [formats.md](formats.md).",
    ]
    group = None
    n = 0
    for row in CATALOGUE:
        if row.group != group:
            group = row.group
            out += ["", f"## {group}", "", "| # | entry point | bad value | exception | message | state unchanged |",
                    "|---:|---|---|---|---|---|"]
        n += 1
        outcome, unchanged, _ = run_row(row, directory)
        exc = _exc_name(type(outcome.exc)) if outcome.exc is not None else "none"
        state = _STATE_TEXT[row.state] if unchanged else "**NO**"
        out.append(f"| {n} | {_cell(row.entry)} | {_cell(row.bad)} | {exc} | {_cell(outcome.message)} | {state} |")
    out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("row", CATALOGUE, ids=[f"{r.group}: {r.entry} {r.bad}" for r in CATALOGUE])
def test_row(row: Row, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    outcome, unchanged, ctx = run_row(row, tmp_path)
    assert outcome.exc is not None, f"{row.bad}: {outcome.message}"
    assert type(outcome.exc) is row.exc, f"{row.bad}: got {type(outcome.exc).__name__}: {outcome.message}"
    if row.exc is not CliExit:
        assert isinstance(outcome.exc, CapschedError)
    else:
        assert outcome.exc.status == 2  # type: ignore[union-attr]
    assert re.search(row.match, outcome.message), f"{row.match!r} not in {outcome.message!r}"
    assert unchanged, f"{row.bad}: the state changed"


def test_every_row_regex_names_something_specific() -> None:
    # A regex that any message matches proves nothing: each must hold a literal of at
    # least three characters (the bad value, a field or file name, or a limit).
    for row in CATALOGUE:
        literal = re.sub(r"\\.|[.*+?()\[\]|^$]", " ", row.match)
        assert any(len(w) >= 3 for w in literal.split()) or re.search(r"\d|'", row.match), row.match


def test_the_snapshot_sees_a_change(tmp_path: Path) -> None:
    # The proof of "unchanged" must be able to fail: a call that does change the
    # scheduler changes the snapshot.
    s, ids = fleet()
    before = snapshot(s, ids, tmp_path)
    s.set_pressure("small", 0.5, now=0.3)
    assert snapshot(s, ids, tmp_path) != before


def test_the_catalogue_covers_every_group_and_entry_point() -> None:
    groups = {r.group for r in CATALOGUE}
    assert len(groups) == 13
    entries = " ".join(r.entry for r in CATALOGUE)
    for name in ("Scheduler(", "Config(", "from_toml", "from_env", "InferenceRequest(", "submit(", "submit_many(",
                 "step(", "complete(", "complete_many(", "fail(", "cancel(", "set_clock(", "set_pressure(",
                 "restore(", "journal=", "checkpoint(", "load_job(", "JobRunner(", "capsched jobs",
                 "capsched simulate", "parse_fleet(", "simulate(devices"):
        assert name in entries, name
    bad = " ".join(r.bad for r in CATALOGUE)
    for word in ("NaN", "inf", "negative", "huge", "string", "unknown", "duplicate", "cycle", "truncated",
                 "corrupt", "newer format version", "unknown device"):
        assert word in bad, word


def test_the_doc_is_generated_from_the_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    expected = render(tmp_path)
    assert "**NO**" not in expected
    actual = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
    assert actual == expected, "docs/bad_inputs.md is stale: run python tools/gen_bad_inputs.py"
