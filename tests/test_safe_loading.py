"""Safe loading: checkpoints, journals, job files and configs are parsed as data, and a
hostile, truncated or mutated file gives a capsched error naming the file.

The property tests take a valid file and damage it (truncate it anywhere, change any
byte, replace any value of a re-signed checkpoint by any JSON value) and check that the
loader either refuses it with its own error (``CheckpointError``, ``JobFileError``,
``ConfigError``) naming the file, or accepts it and builds a consistent object: never a
stray ``KeyError``, ``RecursionError``, ``RuntimeError`` or crash. docs/formats.md
describes each format.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import capsched
import capsched.checkpoint as checkpoint_mod
import capsched.config as config_mod
import capsched.jobs as jobs_mod
import capsched.journal as journal_mod
from capsched import Config, Device, InferenceRequest, Scheduler
from capsched.checkpoint import _canonical
from capsched.errors import CapschedError, CheckpointError, ConfigError
from capsched.jobs import JobCycleError, JobFileError, load_job

PACKAGE = Path(capsched.__file__).resolve().parent
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --------------------------------------------------------------------------- the audit


_FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "yaml", "dill", "cloudpickle", "jsonpickle"}
_FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}


def _audit(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in _FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _FORBIDDEN_MODULES:
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FORBIDDEN_CALLS:
            found.append(f"{node.func.id}() at line {node.lineno}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
            "load", "loads", "unsafe_load", "full_load"
        ) and isinstance(node.func.value, ast.Name) and node.func.value.id in _FORBIDDEN_MODULES:
            found.append(f"{node.func.value.id}.{node.func.attr}() at line {node.lineno}")
    return found


def test_no_module_of_the_package_unpickles_evaluates_or_imports_by_name() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    findings = {str(p.relative_to(PACKAGE)): f for p in files if (f := _audit(p))}
    assert findings == {}


def test_the_audit_would_see_pickle_and_eval(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nfrom yaml import load\nx = eval('1')\ny = pickle.loads(b'')\n")
    assert len(_audit(bad)) == 4


# --------------------------------------------------------------------------- checkpoints


def _busy() -> Scheduler:
    s = Scheduler([Device("a", 2.0, kv_tokens=10_000), Device("b", 1.0, tenants=("t",))], max_batch_size=2,
                  config=Config(retry_base=0.5))
    ids = [s.submit(InferenceRequest(prompt_tokens=5 + i, tenant="t" if i % 3 == 0 else None,
                                     timeout=30.0 if i % 2 else None, request_class="chat" if i % 4 == 0 else None),
                    now=0.1 * i) for i in range(8)]
    s.submit(InferenceRequest(prompt_tokens=3, depends_on=[ids[0], ids[1]]), now=1.0)
    r = s.step(now=1.0)
    s.complete(r.dispatched[0], now=1.2, output_tokens=4)
    s.fail(r.dispatched[1], now=1.3, retryable=True, error="oom")
    s.cancel(ids[-1])
    return s


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("ckpt") / "good.ckpt"
    _busy().checkpoint(path)
    return path.read_bytes()


def _restore_or_refuse(path: Path) -> Any:
    """Restore ``path``: a CheckpointError naming it, or a consistent scheduler."""
    try:
        s = Scheduler.restore(path)
    except CheckpointError as exc:
        assert repr(str(path)) in str(exc) or str(path) in str(exc), str(exc)
        return exc
    assert s.check_invariants()
    assert s.stats()["conservation_ok"]
    return s


@FAST
@given(cut=st.integers(min_value=0, max_value=10**9))
def test_a_truncated_checkpoint_is_refused(good_checkpoint: bytes, tmp_path: Path, cut: int) -> None:
    cut %= len(good_checkpoint)  # every proper prefix
    path = tmp_path / "cut.ckpt"
    path.write_bytes(good_checkpoint[:cut])
    assert isinstance(_restore_or_refuse(path), CheckpointError)


@FAST
@given(at=st.integers(min_value=0, max_value=10**9), byte=st.integers(min_value=0, max_value=255))
def test_a_checkpoint_with_any_byte_changed_is_refused(good_checkpoint: bytes, tmp_path: Path, at: int,
                                                        byte: int) -> None:
    at %= len(good_checkpoint)
    assume(good_checkpoint[at] != byte)
    damaged = bytearray(good_checkpoint)
    damaged[at] = byte
    path = tmp_path / "flip.ckpt"
    path.write_bytes(bytes(damaged))
    assert isinstance(_restore_or_refuse(path), CheckpointError)


def _leaves(x: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON tree (containers included, so whole lists get replaced)."""
    out = [path]
    if isinstance(x, dict):
        for k, v in x.items():
            out += _leaves(v, path + (k,))
    elif isinstance(x, list):
        for i, v in enumerate(x[:6]):  # a few elements of each list are enough
            out += _leaves(v, path + (i,))
    return out


def _set(x: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = x
    for p in path[:-1]:
        parent = parent[p]
    parent[path[-1]] = value
    return x


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.sampled_from([0, -1, 1, 2**32, 2**63, 2**64, -(2**63) - 1, 10**30])
    | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
    | st.sampled_from([{"float": "nan"}, {"float": "inf"}, {"float": "-inf"}, {"float": "x"}]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_resigned_checkpoint_with_any_value_replaced_is_refused_or_consistent(
    good_checkpoint: bytes, tmp_path: Path, data: st.DataObject
) -> None:
    # A hostile file: valid JSON, valid checksum, any value replaced by any JSON value.
    doc = json.loads(good_checkpoint)
    paths = [("payload",) + p for p in _leaves(doc["payload"])]
    where = data.draw(st.sampled_from(paths), label="path")
    value = data.draw(JSON_VALUES, label="value")
    _set(doc, where, copy.deepcopy(value))
    try:
        doc["sha256"] = hashlib.sha256(_canonical(doc["payload"])).hexdigest()
    except (ValueError, TypeError):
        doc["sha256"] = "0" * 64
    path = tmp_path / "hostile.ckpt"
    path.write_text(json.dumps(doc))
    _restore_or_refuse(path)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[" * 50_000 + "]" * 50_000, "nested too deeply"),
        ('{"format": "capsched-checkpoint", "version": 1, "sha256": "00", "payload": {"a": NaN}}',
         "is not strict JSON: it holds the literal NaN"),
        ('{"format": "capsched-checkpoint", "version": 1e400}', "no integer 'version'"),
        ('{"format": "capsched-checkpoint", "version": true}', "no integer 'version'"),
        ('{"format": "capsched-checkpoint", "version": 0, "sha256": "", "payload": {}}', "unknown format version 0"),
        ('{"format": "capsched-checkpoint", "version": 1}', "lacks its payload or checksum"),
        ('{"format": "capsched-checkpoint", "version": 1, "sha256": "", "payload": {}, "exec": "x"}',
         r"unknown top-level key\(s\) \['exec'\]"),
        ('{"format": "capsched-checkpoint", "version": 1, "sha256": "00", "payload": []}', "payload or checksum"),
        ("", "not valid JSON"),
        ("\ufeff{}", "not a capsched checkpoint"),
        ("null", "not a capsched checkpoint"),
    ],
)
def test_hostile_checkpoints(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "h.ckpt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CheckpointError, match=fragment) as info:
        Scheduler.restore(path)
    assert str(path) in str(info.value)


def test_a_checkpoint_with_a_huge_array_is_refused_by_its_size_limit(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.ckpt"
    path.write_text('{"format": "capsched-checkpoint", "payload": [' + "0," * 100_000 + "0]}")
    monkeypatch.setattr(checkpoint_mod, "MAX_CHECKPOINT_BYTES", 100_000)
    with pytest.raises(CheckpointError, match=rf"is {path.stat().st_size} bytes, over the limit of 100000"):
        Scheduler.restore(path)


@pytest.mark.parametrize("key, value, fragment", [
    ("devices", {"a": 1}, "'devices' must be a list, got dict"),
    ("max_batch_size", True, "'max_batch_size' must be an integer, got bool"),
    ("max_batch_size", "32", "'max_batch_size' must be an integer, got str"),
    ("dynamic_batching", 1, "'dynamic_batching' must be a boolean, got int"),
    ("core", [], "'core' must be an object, got list"),
    ("journal_seq", -1, "journal_seq must be an integer >= 0, got -1"),
])
def test_payload_fields_of_the_wrong_type(good_checkpoint: bytes, tmp_path: Path, key: str, value: Any,
                                          fragment: str) -> None:
    doc = json.loads(good_checkpoint)
    doc["payload"][key] = value
    doc["sha256"] = hashlib.sha256(_canonical(doc["payload"])).hexdigest()
    path = tmp_path / "typed.ckpt"
    path.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=fragment):
        Scheduler.restore(path)


def test_a_checkpoint_without_journal_seq_is_read_as_seq_0(good_checkpoint: bytes, tmp_path: Path) -> None:
    doc = json.loads(good_checkpoint)
    del doc["payload"]["journal_seq"]
    doc["sha256"] = hashlib.sha256(_canonical(doc["payload"])).hexdigest()
    path = tmp_path / "old.ckpt"
    path.write_text(json.dumps(doc))
    assert Scheduler.restore(path).stats()["accepted"] == 9


# --------------------------------------------------------------------------- journals


@pytest.fixture(scope="module")
def journaled(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes, dict[str, Any]]:
    """A checkpoint, the journal written after it, and the final stats."""
    d = tmp_path_factory.mktemp("journal")
    s = _busy()
    s.checkpoint(d / "c.ckpt")
    s.open_journal(d / "j.log", sync=False)
    s.submit(InferenceRequest(prompt_tokens=4, tenant="new"), now=2.0)
    s.submit_many([1, 2, 3], priority=[0.1, 0.2, 0.3], timeout=[math.nan, 5.0, math.nan], now=2.1)
    r = s.step(now=2.2)
    s.complete_many(r.dispatched, now=2.5)
    s.set_pressure("a", 0.25, now=2.6)
    s.close_journal()
    return (d / "c.ckpt").read_bytes(), (d / "j.log").read_bytes(), s.stats()


def _replay(tmp_path: Path, ckpt: bytes, journal: bytes) -> Any:
    (tmp_path / "c.ckpt").write_bytes(ckpt)
    (tmp_path / "j.log").write_bytes(journal)
    try:
        s = Scheduler.restore(tmp_path / "c.ckpt", journal=tmp_path / "j.log", sync=False)
    except CheckpointError as exc:
        assert str(tmp_path / "j.log") in str(exc), str(exc)
        # Nothing was overwritten: the checkpoint and journal are as they were.
        assert (tmp_path / "c.ckpt").read_bytes() == ckpt and (tmp_path / "j.log").read_bytes() == journal
        return exc
    s.close_journal()
    assert s.check_invariants() and s.stats()["conservation_ok"]
    return s


def test_the_whole_journal_replays(journaled: tuple[bytes, bytes, dict[str, Any]], tmp_path: Path) -> None:
    ckpt, journal, stats = journaled
    s = _replay(tmp_path, ckpt, journal)
    assert isinstance(s, Scheduler)
    assert s.stats()["accepted"] == stats["accepted"] and s.stats()["completed"] == stats["completed"]


@FAST
@given(cut=st.integers(min_value=0, max_value=10**9))
def test_a_truncated_journal_replays_a_prefix(journaled: tuple[bytes, bytes, dict[str, Any]], tmp_path: Path,
                                              cut: int) -> None:
    ckpt, journal, stats = journaled
    cut %= len(journal) + 1
    s = _replay(tmp_path, ckpt, journal[:cut])
    # A torn tail is a crash while writing: what came before it is replayed.
    assert isinstance(s, Scheduler)
    assert s.stats()["accepted"] <= stats["accepted"]


@FAST
@given(at=st.integers(min_value=0, max_value=10**9), byte=st.integers(min_value=0, max_value=255))
def test_a_journal_with_any_byte_changed_is_refused_or_loses_only_its_last_line(
    journaled: tuple[bytes, bytes, dict[str, Any]], tmp_path: Path, at: int, byte: int
) -> None:
    ckpt, journal, _ = journaled
    at %= len(journal)
    assume(journal[at] != byte)
    damaged = bytearray(journal)
    damaged[at] = byte
    out = _replay(tmp_path, ckpt, bytes(damaged))
    last_line_start = journal.rstrip(b"\n").rfind(b"\n") + 1
    if at < last_line_start and byte != ord("\n") and journal[at] != ord("\n"):
        assert isinstance(out, CheckpointError)


def _line(seq: int, op: str, **fields: Any) -> bytes:
    body = json.dumps({"seq": seq, "op": op, **fields}, separators=(",", ":"))
    return f"{body}\t{hashlib.sha256(body.encode()).hexdigest()[:16]}\n".encode()


NAMES = {"tenants": [[None, 0], ["t", 1]], "classes": [[None, 0], ["chat", 1]]}


@pytest.mark.parametrize(
    "lines, fragment",
    [
        ([_line(1, "submit_many", args=[{"array": "|O", "values": [1]}])], r"dtype '\|O'"),
        ([_line(1, "submit_many", args=[{"array": "<i8", "values": [[1, 2]]}])], "flat list of numbers"),
        ([_line(1, "submit_many", args=[{"array": "<u8", "values": [-1]}])], "do not fit dtype <u8"),
        ([_line(1, "step", args=[{"float": "1e999"}])], "a float that is not nan, inf or -inf"),
        ([_line(1, "step", args=[{"import": "os"}])], r"unexpected object \{'import': 'os'\}"),
        ([_line(1, "step", args="now")], "'args' must be a list"),
        ([_line(True, "step", args=[1.0])], "lacks 'seq'"),
        ([_line(1, 5, args=[1.0])], "lacks 'seq'"),
        ([_line(1, "__class__", args=[])], "unknown call '__class__'"),
        ([_line(1, "names", tenants="x", classes=[])], "cannot replay 'names'"),
        ([_line(1, "step", args=[])], "cannot replay 'step': the core cannot take its arguments"),
        ([_line(1, "cancel", args=[10**30])], "cannot replay 'cancel'"),
        ([b'{"seq":1,"op":"step","args":[1.0]}\n', _line(2, "step", args=[2.0])], "line 1 is damaged"),
        ([b"\xff\xfe\n", _line(2, "step", args=[2.0])], "line 1 is damaged"),
        ([_line(1, "step", args=[5.0]), _line(1, "step", args=[5.0])], "seq 1 does not follow 1"),
    ],
)
def test_hostile_journals(journaled: tuple[bytes, bytes, dict[str, Any]], tmp_path: Path, lines: list[bytes],
                          fragment: str) -> None:
    ckpt, _, _ = journaled
    # Each hostile line is followed by a good one, so none is the (forgiven) torn last line.
    body = b"".join(lines) + _line(len(lines) + 1, "names", **NAMES)
    out = _replay(tmp_path, ckpt, body)
    assert isinstance(out, CheckpointError)
    assert re.search(fragment, str(out)), str(out)


def test_journal_size_and_line_limits(journaled: tuple[bytes, bytes, dict[str, Any]], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt, journal, _ = journaled
    longest = max(len(x) for x in journal.split(b"\n"))
    monkeypatch.setattr(journal_mod, "MAX_JOURNAL_LINE_BYTES", longest - 1)
    out = _replay(tmp_path, ckpt, journal)
    assert isinstance(out, CheckpointError) and f"longer than the limit of {longest - 1} bytes" in str(out)
    monkeypatch.setattr(journal_mod, "MAX_JOURNAL_LINE_BYTES", longest)
    assert isinstance(_replay(tmp_path, ckpt, journal), Scheduler)
    monkeypatch.setattr(journal_mod, "MAX_JOURNAL_BYTES", len(journal) - 1)
    out = _replay(tmp_path, ckpt, journal)
    assert isinstance(out, CheckpointError) and f"is {len(journal)} bytes, over the limit of {len(journal) - 1}" in str(out)


# --------------------------------------------------------------------------- job files


TASK_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5),
    st.lists(st.sampled_from(["a", "b", "c", "a#0", ""]), max_size=3),
)
TASKS = st.lists(
    st.dictionaries(
        st.sampled_from(list(jobs_mod.TASK_FIELDS) + ["task_id"] * 3 + ["extra"]),
        TASK_VALUES, max_size=5,
    ).map(lambda d: {**d, "task_id": d.get("task_id", "a")}),
    max_size=5,
)


@FAST
@given(tasks=TASKS, jsonl=st.booleans())
def test_random_job_files_load_or_give_a_job_file_error(tmp_path: Path, tasks: list[dict[str, Any]],
                                                        jsonl: bool) -> None:
    path = tmp_path / ("job.jsonl" if jsonl else "job.json")
    if jsonl:
        path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    else:
        path.write_text(json.dumps(tasks, indent=1))
    try:
        loaded = load_job(path)
    except (JobFileError, JobCycleError) as exc:
        assert str(path) in str(exc)
        return
    assert len(loaded) >= len(tasks)


GOOD_JOB = [
    {"task_id": "fetch", "prompt": "获取数据", "schedule_time": 1.0},
    {"task_id": "split", "prompt_tokens": 40, "depends_on": ["fetch"], "shards": 3},
    {"task_id": "merge", "payload": {"k": [1, 2]}, "depends_on": ["split"], "deadline": 90.0,
     "duration_estimate": 4.0},
]


@FAST
@given(cut=st.integers(min_value=0, max_value=10**9), jsonl=st.booleans())
def test_a_truncated_job_file_loads_whole_tasks_or_is_refused(tmp_path: Path, cut: int, jsonl: bool) -> None:
    text = "".join(json.dumps(t) + "\n" for t in GOOD_JOB) if jsonl else json.dumps(GOOD_JOB, indent=2)
    data = text.encode()
    cut %= len(data)
    path = tmp_path / ("job.jsonl" if jsonl else "job.json")
    path.write_bytes(data[:cut])
    try:
        tasks = load_job(path)
    except (JobFileError, JobCycleError) as exc:
        assert str(path) in str(exc)
        return
    # Only a JSONL file cut at a line boundary loads: whole tasks, in order.
    assert jsonl
    assert [t.task_id.split("#")[0] for t in tasks] == [
        t["task_id"] for t in GOOD_JOB for _ in range(t.get("shards", 1))
    ][: len(tasks)]


def test_job_file_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(GOOD_JOB))
    monkeypatch.setattr(jobs_mod, "MAX_JOB_FILE_BYTES", path.stat().st_size - 1)
    with pytest.raises(JobFileError, match=f"over the limit of {path.stat().st_size - 1:,} bytes"):
        load_job(path)
    monkeypatch.setattr(jobs_mod, "MAX_JOB_FILE_BYTES", path.stat().st_size)
    assert len(load_job(path)) == 5


@pytest.mark.parametrize("text, fragment", [
    ('[{"task_id": "a", "prompt_tokens": 1e400}]', "'prompt_tokens': must be an integer, got a number inf"),
    ('[{"task_id": "a", "prompt_tokens": 1, "priority": Infinity}]', "'priority': must be a finite number"),
    ('[{"task_id": "a", "prompt_tokens": 1, "task_id": "b"}]', "'task_id': given twice in one task"),
    ('{"tasks": [], "tasks": []}', "'tasks': given twice"),
    ('[{"task_id": "' + "x" * 300 + '", "prompt_tokens": 1}]', "1..256 characters"),
    ('[{"task_id": "a"}]', "'prompt': missing"),
    ("[" * 50_000 + "]" * 50_000, "nested too deeply"),
    ('{"tasks": 5}', "a job is a list of tasks"),
])
def test_hostile_job_files(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "job.json"
    path.write_text(text)
    with pytest.raises(JobFileError, match=re.escape(fragment)) as info:
        load_job(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- config files

GOOD_TOML = """[scheduler]
policy = "edf"
max_batch_size = 16
weight_urgency = 0.7
preferred_batch_sizes = [4, 8]

[[scheduler.devices]]
name = "gpu0"
capacity = 2.0

[[scheduler.devices]]
name = "gpu1"
"""


@FAST
@given(cut=st.integers(min_value=0, max_value=10**9), at=st.integers(min_value=0, max_value=10**9),
       byte=st.integers(min_value=0, max_value=255))
def test_a_truncated_or_changed_config_loads_or_gives_a_config_error(tmp_path: Path, cut: int, at: int,
                                                                     byte: int) -> None:
    from capsched.config import SchedulerConfig

    data = bytearray(GOOD_TOML.encode())
    data[at % len(data)] = byte
    data = data[: cut % (len(data) + 1)]
    path = tmp_path / "c.toml"
    path.write_bytes(bytes(data))
    try:
        cfg = SchedulerConfig.from_toml(path)
    except ConfigError as exc:
        assert str(path) in str(exc)
        return
    assert isinstance(cfg, SchedulerConfig)


@pytest.mark.parametrize("text, fragment", [
    ("a = " + "[" * 5000 + "]" * 5000, "nested too deeply"),
    ("[scheduler]\nmax_batch_size = inf\n", "max_batch_size must be an integer, got inf"),
    ("[scheduler]\nmax_batch_size = 1979-05-27\n", r"max_batch_size must be an integer, got datetime\.date"),
    ("[scheduler]\nweight_urgency = 1e400\n", "weight_urgency must be a finite number"),
    ("[scheduler]\npolicy = [\"edf\"]\n", r"unknown policy \['edf'\]"),
    ("[scheduler]\ndevices = \"gpu0\"\n", "devices must be a list of devices or 'auto'"),
    ("[scheduler]\ntokenizer = \"eval\"\n", r"unknown config key\(s\) \['tokenizer'\]"),
    ("[scheduler]\nweight_urgency = 0.5\nweight_urgency = 0.6\n", "not valid TOML"),
])
def test_hostile_configs(tmp_path: Path, text: str, fragment: str) -> None:
    from capsched.config import SchedulerConfig

    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment) as info:
        SchedulerConfig.from_toml(path)
    assert str(path) in str(info.value)


def test_config_file_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from capsched.config import SchedulerConfig

    path = tmp_path / "c.toml"
    path.write_text(GOOD_TOML)
    monkeypatch.setattr(config_mod, "MAX_CONFIG_BYTES", len(GOOD_TOML) - 1)
    with pytest.raises(ConfigError, match=f"over the limit of {len(GOOD_TOML) - 1} bytes"):
        SchedulerConfig.from_toml(path)
    monkeypatch.setattr(config_mod, "MAX_CONFIG_BYTES", len(GOOD_TOML))
    assert SchedulerConfig.from_toml(path).weight_urgency == 0.7


def test_every_loader_error_is_a_capsched_error() -> None:
    for exc in (CheckpointError, JobFileError, JobCycleError, ConfigError):
        assert issubclass(exc, CapschedError)
    assert os.fspath(PACKAGE)  # the package the audit reads is the one under test
